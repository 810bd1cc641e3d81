"""Annotator priors (pseudo-counts on confusion matrices) from a small YAML/JSON file.

Format: a mapping from annotator name to its prior; the key ``"*"`` applies to every
annotator not named. Each prior is ``accuracy`` (probability of the right label, the rest
spread evenly over the other classes) or ``confusion`` (``K x K``, rows: true class, each row
normalised), plus ``strength``: pseudo-counts per true class, i.e. how many ratings the prior
is worth for each row of the matrix::

    expert: {accuracy: 0.95, strength: 20}
    novice: {confusion: [[0.8, 0.2], [0.3, 0.7]], strength: 5}
    "*": {accuracy: 0.7, strength: 2}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polyhead.errors import ConfigError

DEFAULT_KEY = "*"


def load_yaml_or_json(path: Path) -> Any:
    """Parsed content of a ``.json`` (JSON) or any other (YAML) file; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as err:  # yaml and json raise their own error types
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from err


def prior_matrix(spec: Any, n_classes: int, where: str) -> np.ndarray:
    """Pseudo-count matrix ``[K, K]`` of one annotator's prior ``spec``."""
    k = int(n_classes)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with accuracy or confusion, and strength")
    unknown = sorted(set(spec) - {"accuracy", "confusion", "strength"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; use accuracy|confusion, strength")
    if ("accuracy" in spec) == ("confusion" in spec):
        raise ConfigError(f"{where}: give exactly one of accuracy or confusion")
    strength = spec.get("strength")
    if not isinstance(strength, int | float) or isinstance(strength, bool) or strength < 0:
        raise ConfigError(f"{where}: strength must be a number >= 0 (pseudo-counts per class)")
    if "accuracy" in spec:
        acc = spec["accuracy"]
        if not isinstance(acc, int | float) or isinstance(acc, bool) or not 0 <= acc <= 1:
            raise ConfigError(f"{where}: accuracy must be a number in [0, 1], got {acc!r}")
        conf = np.full((k, k), (1.0 - acc) / (k - 1))
        np.fill_diagonal(conf, acc)
    else:
        try:
            conf = np.asarray(spec["confusion"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: confusion is not a {k} x {k} matrix of numbers") from err
        if conf.shape != (k, k) or not np.all(np.isfinite(conf)) or np.any(conf < 0):
            raise ConfigError(
                f"{where}: confusion must be {k} x {k} non-negative numbers, got shape {conf.shape}"
            )
        sums = conf.sum(axis=1, keepdims=True)
        if np.any(sums <= 0):
            raise ConfigError(f"{where}: confusion row {int(np.argmin(sums))} sums to 0")
        conf = conf / sums
    return conf * float(strength)


def load_annotator_priors(
    path: str | os.PathLike[str] | Mapping[str, Any], annotators: Sequence[str], n_classes: int
) -> np.ndarray:
    """Pseudo-counts ``[A, K, K]`` (``[a, true, given]``) from a priors file or mapping.

    Annotators neither named nor covered by ``"*"`` get zeros. A name that is no annotator
    of the input raises a `ConfigError` naming the file and the key.
    """
    where = "priors" if isinstance(path, Mapping) else str(path)
    doc = path if isinstance(path, Mapping) else load_yaml_or_json(Path(path))
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: expected a mapping annotator -> {{accuracy|confusion, ...}}")
    names = {str(a): i for i, a in enumerate(annotators)}
    out = np.zeros((len(annotators), n_classes, n_classes))
    for key in doc:
        if str(key) != DEFAULT_KEY and str(key) not in names:
            raise ConfigError(
                f"{where}: key {key!r} is no annotator of the input (annotators: "
                f"{', '.join(names)}; '*' = every other annotator)"
            )
    for name, i in names.items():
        spec = doc.get(name, doc.get(DEFAULT_KEY))
        key = name if name in doc else DEFAULT_KEY
        if spec is not None:
            out[i] = prior_matrix(spec, n_classes, f"{where}, key {key!r}")
    return out
