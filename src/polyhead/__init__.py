"""polyhead: one shared encoder, several heads, each supervised by a different kind of label."""

__version__ = "0.1.0"
