"""DataLoader options shared by every polyhead dataset: checked one way, built one way."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader, Dataset

from polyhead.errors import ConfigError

#: the keyword arguments ``torch.utils.data.DataLoader`` accepts besides the dataset
LOADER_KEYS = frozenset(inspect.signature(DataLoader.__init__).parameters) - {"self", "dataset"}


def loader_options(data_loader: Mapping[str, Any] | None, where: str = "data_loader") -> dict:
    """``data_loader`` as a plain dict, its keys checked against DataLoader's arguments."""
    if data_loader is None:
        return {}
    if not isinstance(data_loader, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data_loader).__name__}")
    options = dict(data_loader)
    unknown = sorted(map(str, set(options) - LOADER_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"torch DataLoader accepts {', '.join(sorted(LOADER_KEYS))}"
        )
    return options


def make_loader(dataset: Dataset, options: Mapping[str, Any], **overrides: Any) -> DataLoader:
    """A DataLoader over ``dataset`` with ``options`` (``overrides`` win).

    ``persistent_workers`` defaults to True when ``num_workers > 0``.
    """
    merged = {**options, **overrides}
    if merged.get("num_workers", 0) > 0:
        merged.setdefault("persistent_workers", True)
    return DataLoader(dataset, **merged)
