"""Multi-head classification tools: the single-vs-multi-head comparison, ONNX export and the
digits demo data (``polyhead compare`` / ``polyhead export``).

The model, data set and task live in :mod:`polyhead.models.classifier`,
:mod:`polyhead.data.classification` and :mod:`polyhead.tasks.classification`; the
config-reading and training side (`run_compare`, `export_checkpoint`) is the application layer
in :mod:`polyhead.classification.cli`. Names here are
imported on first use, so ``polyhead --help`` stays quick.
"""

from __future__ import annotations

from polyhead.lazy import lazy_exports

_LAZY = {
    "run_compare": "polyhead.classification.cli",
    "Comparison": "polyhead.classification.compare",
    "compare_models": "polyhead.classification.compare",
    "export_model": "polyhead.classification.export",
    "export_checkpoint": "polyhead.classification.cli",
    "compare_onnx": "polyhead.classification.export",
    "write_digits": "polyhead.classification.digits",
    "demo_config": "polyhead.classification.digits",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
