"""``check-data`` on a training config: every mapping with an ``input_csv_path``, checked.

Works on a plain, resolved tree; loading and resolving a YAML file is the application
layer's job (`polyhead.config.check_data_from_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polyhead.data.validation import DataSummary, check_data
from polyhead.errors import ConfigError

Found = tuple[Mapping[str, Any], tuple[Mapping[str, Any], ...]]


def _find_data_configs(node: Any, parents: tuple[Mapping[str, Any], ...] = ()) -> list[Found]:
    """Every mapping holding ``input_csv_path``, with its enclosing mappings (outermost first)."""
    found = []
    if isinstance(node, Mapping):
        if "input_csv_path" in node:
            found.append((node, parents))
        children = [(v, (*parents, node)) for v in node.values()]
    elif isinstance(node, list):
        children = [(v, parents) for v in node]
    else:
        children = []
    for child, child_parents in children:
        found += _find_data_configs(child, child_parents)
    return found


def _lookup(key: str, chain: list[Mapping[str, Any]], default: Any = None) -> Any:
    return next((m[key] for m in chain if m.get(key) is not None), default)


def check_data_in_config(
    tree: Mapping[str, Any], base_dir: Path | None = None
) -> list[DataSummary]:
    """Check every mapping in a plain config tree that has ``input_csv_path``.

    Each such mapping (at any depth) is checked with its ``n_classes``, ``crop_size``,
    ``soft_labels``, ``ignore_index`` and ``nonfinite``; a key missing there is taken from the nearest
    enclosing mapping. Relative CSV paths resolve against the working directory, then
    against ``base_dir`` (the YAML file's folder).
    """
    found = _find_data_configs(tree)
    if not found:
        raise ConfigError("no mapping with an input_csv_path key found in the config")
    summaries = []
    for node, parents in found:
        chain = [node, *reversed(parents)]
        n_classes = _lookup("n_classes", chain)
        if n_classes is None:
            raise ConfigError(f"input_csv_path {node['input_csv_path']}: no n_classes set for it")
        csv_path = Path(str(node["input_csv_path"])).expanduser()
        if base_dir is not None and not csv_path.exists() and (base_dir / csv_path).exists():
            csv_path = base_dir / csv_path
        crop, soft = _lookup("crop_size", chain), _lookup("soft_labels", chain)
        summary = check_data(
            csv_path,
            int(n_classes),
            crop_size=int(crop) if crop is not None else None,
            soft_labels=bool(soft) if soft is not None else None,
            ignore_index=int(_lookup("ignore_index", chain, 255)),
            nonfinite=str(_lookup("nonfinite", chain, "error")),
        )
        summaries.append(summary)
    return summaries
