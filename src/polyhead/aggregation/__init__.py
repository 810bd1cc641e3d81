"""Label aggregation: Dawid-Skene soft labels from several annotators.

* `dawid_skene` / `dawid_skene_sparse`: EM on a label matrix or label triplets (repeated
  ratings, gold rows, annotator priors as pseudo-counts: `load_annotator_priors`);
* `majority_vote_labels` / `vote_fractions_labels`: hard and soft majority vote;
* `aggregate_masks`: ``image,annotator,mask`` CSV -> soft/hard GeoTIFFs, ``train.csv``,
  ``confusion.json``, plots (streaming, bounded memory; threads or a Dask cluster);
* `aggregate_labels`: ``item,annotator,label`` CSV -> ``labels.csv`` + ``confusion.json``.

The command line is ``polyhead aggregate`` (`polyhead.aggregation.cli`). Names here are
imported on first use, so ``polyhead --help`` stays quick.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from polyhead.lazy import lazy_exports

_LAZY = {
    "AggregationResult": "polyhead.aggregation.outputs",
    "DawidSkeneResult": "polyhead.aggregation.dawid_skene",
    "aggregate_labels": "polyhead.aggregation.labels",
    "aggregate_masks": "polyhead.aggregation.masks",
    "confusion_from_posteriors": "polyhead.aggregation.dawid_skene",
    "dawid_skene": "polyhead.aggregation.dawid_skene",
    "dawid_skene_sparse": "polyhead.aggregation.dawid_skene",
    "load_annotator_priors": "polyhead.aggregation.priors",
    "majority_vote_labels": "polyhead.aggregation.dawid_skene",
    "vote_fractions_labels": "polyhead.aggregation.dawid_skene",
}

__all__ = sorted(_LAZY)


class _Package(types.ModuleType):
    """``dawid_skene`` here is the function, as ``__all__`` says, not the submodule of that
    name (which the import system sets on the package when anything imports it)."""

    @property
    def dawid_skene(self) -> Any:
        if "_dawid_skene" in self.__dict__:  # set by a caller, e.g. a test's monkeypatch
            return self.__dict__["_dawid_skene"]
        return importlib.import_module("polyhead.aggregation.dawid_skene").dawid_skene

    @dawid_skene.setter
    def dawid_skene(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):
            self.__dict__["_dawid_skene"] = value


sys.modules[__name__].__class__ = _Package

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
