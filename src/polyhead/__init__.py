"""polyhead: one shared encoder, several heads, each supervised by a different kind of label."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_checkpoint(path: Any, overrides: Any = ()) -> Any:
    """A trained model back from a checkpoint or ``.safetensors`` export: ``.model`` (eval
    mode), ``.normalize`` (the training's input normalisation) and ``.config``; see
    `polyhead.checkpoint.load_checkpoint` (imported on first call: ``import polyhead`` stays
    light)."""
    from polyhead.checkpoint import load_checkpoint as load

    return load(path, overrides)
