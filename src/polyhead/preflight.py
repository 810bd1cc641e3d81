"""Preflight: the built parts of a training run checked against each other before it starts.

Each part is right on its own (the data check has read every file; the model is built), but
they must agree: the images must have the bands the model reads, and the model's class-map
heads, the datasets, the losses' class weights and the metrics must count the same classes.
A mismatch is otherwise found after training started (a raw traceback, or silently wrong
metrics) with a run folder left behind. Application layer: called by `polyhead.train` after
the datasets and the task are built, before the trainer exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polyhead.data import raster_io
from polyhead.data.validation import DataSummary
from polyhead.errors import ConfigError, DataError
from polyhead.inference.raster_inputs import model_in_channels

SPLITS = ("train_dataset", "val_dataset", "test_dataset")
#: attributes of a loss module holding one weight per class
CLASS_WEIGHT_ATTRS = ("weight", "class_weights")
HINT = "configs/train.yaml sets every one of them from num_classes"


@dataclass(frozen=True)
class Part:
    """One part's class count and the config key that sets it."""

    what: str
    classes: int
    key: str

    def __str__(self) -> str:
        return f"{self.what}: {self.classes} ({self.key})"


def named_datasets(datasets: Any) -> dict[str, Any]:
    """``{name: dataset}`` of a mapping, or of a DataModule's ``*_dataset`` attributes."""
    if isinstance(datasets, Mapping):
        return {str(k): v for k, v in datasets.items() if v is not None}
    found = {name: getattr(datasets, name, None) for name in SPLITS}
    return {name: ds for name, ds in found.items() if ds is not None}


def _image_bands(dataset: Any) -> Iterator[tuple[int, Path, int]]:
    """``(row, image, bands)`` of a segmentation dataset's images: every image when its data
    check summary has them, else the first row's image (its header is read)."""
    summary = getattr(dataset, "summary", None)
    if isinstance(summary, DataSummary) and summary.images:
        yield from ((im.row, im.image, im.bands) for im in summary.images)
        return
    rows = getattr(dataset, "rows", None) or []
    if rows and hasattr(rows[0], "image"):
        row = rows[0]
        try:
            info = raster_io.raster_info(row.image)
        except DataError as err:
            where = f"{dataset.csv_path}: row {row.number} (image {row.image})"
            raise DataError(f"{where}: {err}") from err
        yield row.number, row.image, info.count


def check_bands(model: nn.Module, datasets: Any) -> None:
    """DataError when an image's band count is not the model's ``in_channels``, naming the
    CSV, the row, the file, both counts and the key to change."""
    expected = model_in_channels(model)
    if expected is None:
        return
    for name, dataset in named_datasets(datasets).items():
        for row, image, bands in _image_bands(dataset):
            if bands != expected:
                raise DataError(
                    f"{getattr(dataset, 'csv_path', name)}: row {row} (image {image}) has "
                    f"{bands} band(s), but the model reads {expected} (model.in_channels); "
                    f"set model.in_channels: {bands} (configs/train.yaml: in_channels) or "
                    f"list {expected}-band images in the {name} CSV"
                )


def _model_parts(model: nn.Module) -> list[Part]:
    model = getattr(model, "model", model)  # a Predictor
    heads = getattr(model, "heads", None)
    if heads is None or not hasattr(model, "class_map_heads"):
        return []
    parts = []
    for name in model.class_map_heads():
        classes = getattr(heads[name], "classes", None)
        if classes is not None:
            key = f"model.classes or model.heads.{name}.classes"
            parts.append(Part(f"model head {name}", int(classes), key))
    return parts


def _dataset_parts(datasets: Any) -> list[Part]:
    parts = []
    for name, dataset in named_datasets(datasets).items():
        classes = getattr(dataset, "n_classes", None)
        if isinstance(classes, int):
            parts.append(Part(name, classes, f"{name}.n_classes"))
    return parts


def _loss_parts(losses: Any, model: nn.Module) -> list[Part]:
    """One part per class-weight vector in ``losses`` (losses of non-class-map heads, such
    as an uncertainty head's, are skipped)."""
    if not isinstance(losses, nn.Module):
        return []
    heads = getattr(getattr(model, "model", model), "heads", None) or {}
    other = {n for n, h in heads.items() if not getattr(h, "class_map", True)}
    parts = []
    for path, module in losses.named_modules():
        if not type(module).__name__.endswith("Loss") or set(path.split(".")) & other:
            continue
        for attr in CLASS_WEIGHT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, torch.Tensor) and value.ndim == 1:
                where = f"loss {path or type(module).__name__}"
                parts.append(Part(f"{where} {attr}", value.numel(), f"the loss's {attr} list"))
    return parts


def _metric_parts(metrics: Any, num_classes: int | None) -> list[Part]:
    parts = []
    if num_classes is not None:
        parts.append(Part("task", int(num_classes), "task.num_classes"))
    if isinstance(metrics, nn.ModuleDict | Mapping):
        found = list(metrics.items())
    else:
        found = [("", metrics)] if metrics is not None else []
    for name, metric in found:
        classes = getattr(metric, "num_classes", None)
        if isinstance(classes, int):
            label = f"metrics {name}".strip()
            parts.append(Part(label, classes, "task.num_classes"))
    return parts


def check_classes(
    model: nn.Module,
    datasets: Any,
    num_classes: int | None = None,
    losses: Any = None,
    metrics: Any = None,
) -> None:
    """ConfigError unless the model's class-map heads, the datasets' ``n_classes``, the
    losses' class weights, ``num_classes`` and the metrics count one number of classes;
    the message names each part's count and the config key that sets it. Only segmentation
    models (class-map heads) are checked."""
    model_parts = _model_parts(model)
    if not model_parts:
        return
    parts = [
        *model_parts,
        *_dataset_parts(datasets),
        *_loss_parts(losses, model),
        *_metric_parts(metrics, num_classes),
    ]
    if len({p.classes for p in parts}) > 1:
        listed = "; ".join(map(str, _dedupe(parts)))
        raise ConfigError(
            f"the parts of this run count different numbers of classes: {listed}; "
            f"set one class count everywhere ({HINT})"
        )


def _dedupe(parts: list[Part]) -> list[Part]:
    """Parts in order, those repeating an earlier one's count and key (metrics per head) once."""
    seen: set[tuple[int, str]] = set()
    out = []
    for part in parts:
        if part.what.startswith("metrics") and (part.classes, part.key) in seen:
            continue
        seen.add((part.classes, part.key))
        out.append(part)
    return out


def check_run(
    model: nn.Module,
    datasets: Any,
    num_classes: int | None = None,
    losses: Any = None,
    metrics: Any = None,
) -> None:
    """Every preflight check: `check_bands`, then `check_classes`. ``datasets``: a
    DataModule or ``{name: dataset}``; parts that do not say a count are not checked."""
    check_bands(model, datasets)
    check_classes(model, datasets, num_classes, losses, metrics)


def check_task(task: nn.Module, datasets: Any) -> None:
    """`check_run` on a built task: its ``model``, ``criterion`` and ``val_metrics``."""
    check_run(
        task.model,
        datasets,
        losses=getattr(task, "criterion", None),
        metrics=getattr(task, "val_metrics", None),
    )
