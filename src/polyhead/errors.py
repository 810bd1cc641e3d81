"""Typed errors that say what to change."""


class PolyheadError(Exception):
    """Base class of every error polyhead raises on purpose."""


class ConfigError(PolyheadError, ValueError):
    """A configuration value or key is wrong; the message names the key."""


class DataError(PolyheadError, ValueError):
    """Input data is wrong; the message names the CSV row, file and problem."""


class WeightsError(PolyheadError, RuntimeError):
    """Pretrained weights cannot be loaded; the message says how to pass a local file."""
