"""``polyhead compare``: a single K-class head against the multi-head model, as in the article.

From one multi-head config whose data heads are binary tasks read off a class-id column
(``{task: {from: label, positive: [...]}}``), two runs are derived with the same data split,
seed and trainer settings:

- ``multihead``: the config as given;
- ``baseline``: the same backbone with one K-class head (``split_at: null``) trained on the
  class ids; it is selected on the same per-task metric, logged through
  ``ClassificationTask(derived_tasks=...)`` with the decision ``argmax in classes(t)``.

Both best checkpoints are then scored on ``test_dataset`` (else ``val_dataset``): per task
precision and recall at the decision rule each model implies (multi-head: the task head's own
decision; baseline: argmax in the task's classes), latency per image on the CPU at batch 1
including reading/preprocessing the image and the softmax (median of ``runs``, the two models
interleaved run by run), parameter count and exported ONNX size. Results go to
``comparison.md`` and ``comparison.png`` in the output folder.

This module derives the two run configs and measures built models (`compare_models`); the
application layer (`polyhead.classification.cli.run_compare`) loads the config, trains the
runs and builds the models and the scored dataset.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polyhead.classification.export import export_model
from polyhead.data.classification import IMAGENET_MEAN, IMAGENET_STD, load_image, to_tensor
from polyhead.errors import ConfigError
from polyhead.models.classifier import head_decisions, head_probabilities
from polyhead.tasks.classification import derived_decisions

BASELINE_HEAD = "classes"
MULTI, BASELINE = "multihead", "baseline"


@dataclass
class ModelReport:
    """One row of the comparison table."""

    name: str
    precision: dict[str, float]
    recall: dict[str, float]
    latency_ms: float
    parameters: int
    onnx_kb: float
    checkpoint: Path | None = None


@dataclass
class Comparison:
    """What :func:`run_compare` measured and where it wrote it."""

    baseline: ModelReport
    multihead: ModelReport
    tasks: dict[str, tuple[int, ...]]
    eval_split: str
    n_images: int
    runs: int
    threads: int
    markdown: Path | None = None
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def latency_ratio(self) -> float:
        """Multi-head latency over baseline latency."""
        return self.multihead.latency_ms / self.baseline.latency_ms


def task_rules(cfg: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], int]:
    """``({task: positive class ids}, K)`` from the training data's head rules."""
    data = cfg.get("train_dataset") or {}
    tasks = {}
    for name, spec in (data.get("heads") or {}).items():
        if not isinstance(spec, Mapping) or "from" not in spec or spec.get("positive") is None:
            raise ConfigError(
                f"compare: train_dataset.heads.{name} must be a task read off the class-id "
                "column ({from: label, positive: [...]}) so a K-class baseline can be derived"
            )
        positive = spec["positive"]
        tasks[name] = tuple(int(p) for p in ([positive] if isinstance(positive, int) else positive))
    classes = (cfg.get("compare") or {}).get("classes", data.get("classes"))
    if not tasks or classes is None:
        raise ConfigError(
            "compare: needs train_dataset.heads (binary tasks) and "
            "train_dataset.classes (K, the number of class ids)"
        )
    return tasks, int(classes)


def derive_configs(cfg: Mapping[str, Any], out_dir: Path) -> tuple[dict, dict]:
    """(multi-head config, single K-class baseline config), both writing under ``out_dir``."""
    tasks, k = task_rules(cfg)
    multi = copy.deepcopy(dict(cfg))
    multi["output_dir"] = str(out_dir / MULTI)
    base = copy.deepcopy(dict(cfg))
    base["output_dir"] = str(out_dir / BASELINE)
    base["model"] = {**base["model"], "heads": {BASELINE_HEAD: k}, "split_at": None}
    for key in ("train_dataset", "val_dataset", "test_dataset"):
        if base.get(key):
            base[key] = {**base[key], "heads": {BASELINE_HEAD: {"from": "label"}}, "classes": k}
    task = {
        key: v
        for key, v in (base.get("task") or {}).items()
        if key not in ("head_weights", "loss_balancing", "derived_tasks")
    }
    task["derived_tasks"] = {
        t: {"head": BASELINE_HEAD, "positive": list(p)} for t, p in tasks.items()
    }
    base["task"] = task
    return multi, base


def eval_dataset_config(cfg: Mapping[str, Any], k: int) -> tuple[dict[str, Any], str]:
    """The scored split's dataset config (``test_dataset``, else ``val_dataset``) reading class
    ids under one ``classes`` head, without augmentation and in order; and the split name."""
    split = "test_dataset" if cfg.get("test_dataset") else "val_dataset"
    if not cfg.get(split):
        raise ConfigError("compare: the config needs a val_dataset (or test_dataset)")
    spec = {
        **cfg[split],
        "heads": {BASELINE_HEAD: {"from": "label"}},
        "classes": k,
        "augmentation_list": None,
    }
    loader = {**(spec.get("data_loader") or {}), "shuffle": False, "drop_last": False}
    return {**spec, "data_loader": loader}, split.split("_")[0]


@torch.inference_mode()
def task_scores(
    model: torch.nn.Module, dataset: Any, tasks: Mapping[str, Sequence[int]], single: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-task (precision, recall) on ``dataset`` (its targets are class ids)."""
    counts = {t: torch.zeros(3) for t in tasks}  # tp, fp, fn
    for batch in dataset.make_loader():
        logits = model(batch["image"])
        ids = batch["targets"][BASELINE_HEAD]
        for t, positive in tasks.items():
            if single:
                pred, target = derived_decisions(logits[BASELINE_HEAD], ids, positive)
            else:
                pred = head_decisions(logits[t])
                target = torch.isin(ids, torch.tensor(list(positive))).long()
                target = torch.where(ids < 0, ids, target)
            keep = target >= 0
            p, y = pred[keep].bool(), target[keep].bool()
            counts[t] += torch.tensor([(p & y).sum(), (p & ~y).sum(), (~p & y).sum()])
    precision = {t: float(c[0] / (c[0] + c[1])) if c[0] + c[1] else 0.0 for t, c in counts.items()}
    recall = {t: float(c[0] / (c[0] + c[2])) if c[0] + c[2] else 0.0 for t, c in counts.items()}
    return precision, recall


@torch.inference_mode()
def measure_latency(
    models: Mapping[str, torch.nn.Module],
    paths: Sequence[Path],
    image_size: Any,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    runs: int = 50,
    warmup: int = 5,
) -> dict[str, float]:
    """Median seconds per image (read, EXIF, RGB, resize, normalise, forward, softmax), batch
    1, the models interleaved run by run (the order alternating) so load affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(warmup + runs):
        path = paths[r % len(paths)]
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            x = to_tensor(load_image(path, image_size), mean, std).unsqueeze(0)
            out = models[name](x)
            _ = [head_probabilities(v) for v in out.values()]
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def markdown_table(result: Comparison) -> str:
    """The comparison as a markdown table (one row per model) with a header and notes."""
    tasks = list(result.tasks)
    cols = [
        "Model",
        *(f"{t} {m}" for t in tasks for m in ("precision", "recall")),
        f"Latency ms (median of {result.runs})",
        "Parameters",
        "ONNX KB",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in (result.baseline, result.multihead):
        cells = [
            row.name,
            *(f"{getattr(row, m)[t]:.3f}" for t in tasks for m in ("precision", "recall")),
            f"{row.latency_ms:.2f}",
            f"{row.parameters:,}",
            f"{row.onnx_kb:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rules = ", ".join(f"{t} = class {'/'.join(map(str, p))}" for t, p in result.tasks.items())
    return "\n".join(
        [
            f"Scored on the {result.eval_split} split ({result.n_images} images); tasks: {rules}.",
            "",
            *lines,
            "",
            f"Latency ratio multi-head / single head: {result.latency_ratio:.3f} (per image, batch 1, "
            f"CPU, {result.threads} thread(s), including image reading, preprocessing and softmax).",
            *(f"- {note}" for note in result.notes),
        ]
    )


def write_markdown(result: Comparison, path: Path) -> Path:
    """Write ``comparison.md``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Single K-class head vs multi-head\n\n" + markdown_table(result) + "\n")
    return path


def write_figure(result: Comparison, path: Path) -> Path:
    """Write ``comparison.png``: per-task precision/recall bars and the cost table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, rows = list(result.tasks), (result.baseline, result.multihead)
    fig, (ax, tab) = plt.subplots(2, 1, figsize=(8, 6.5), height_ratios=[3, 1.2])
    labels = [f"{t}\n{m}" for t in tasks for m in ("precision", "recall")]
    width = 0.38
    for i, row in enumerate(rows):
        values = [getattr(row, m)[t] for t in tasks for m in ("precision", "recall")]
        xs = [j + (i - 0.5) * width for j in range(len(values))]
        bars = ax.bar(xs, values, width, label=row.name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("score")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.set_title(f"{result.eval_split} split, {result.n_images} images")
    tab.axis("off")
    cells = [[r.name, f"{r.latency_ms:.2f}", f"{r.parameters:,}", f"{r.onnx_kb:.0f}"] for r in rows]
    table = tab.table(
        cellText=cells, colLabels=["model", "latency ms", "parameters", "ONNX KB"], loc="center"
    )
    table.scale(1, 1.4)
    tab.set_title(
        f"latency: median of {result.runs} runs, batch 1, CPU; multi/single = "
        f"{result.latency_ratio:.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _report(
    name: str, model: torch.nn.Module, scores: Any, latency_s: float, onnx: Path
) -> ModelReport:
    precision, recall = scores
    return ModelReport(
        name,
        precision,
        recall,
        1000.0 * latency_s,
        sum(p.numel() for p in model.parameters()),
        onnx.stat().st_size / 1024.0,
    )


def compare_models(
    models: Mapping[str, torch.nn.Module],
    dataset: Any,
    tasks: Mapping[str, tuple[int, ...]],
    classes: int,
    out: Path,
    split: str = "val",
    runs: int = 50,
    split_at: str | int | None = None,
    notes: Sequence[str] = (),
    checkpoints: Mapping[str, Path] | None = None,
) -> Comparison:
    """Score the trained ``{"multihead": model, "baseline": model}`` on ``dataset`` (a built
    `ClassificationCSVDataset` with the ``classes`` class ids under one head, see
    `eval_dataset_config`), time them, export both to ONNX and write ``comparison.md`` and
    ``comparison.png`` under ``out``. ``split_at``, ``notes`` and ``checkpoints`` describe the
    runs in the report."""
    size = dataset.image_size
    paths = [row.path for row in dataset.rows]
    latency = measure_latency(models, paths, size, dataset.mean, dataset.std, runs=runs)
    heads = getattr(models[MULTI], "head_outputs", {})
    names = {
        BASELINE: f"single {classes}-class head",
        MULTI: f"{len(heads)} heads, split at {split_at}",
    }
    reports = {}
    for key, model in models.items():
        scores = task_scores(model, dataset, tasks, single=key == BASELINE)
        onnx_path = export_model(model, out / "onnx" / f"{key}.onnx", size)
        reports[key] = _report(names[key], model, scores, latency[key], onnx_path)
        reports[key].checkpoint = (checkpoints or {}).get(key)
    result = Comparison(
        reports[BASELINE],
        reports[MULTI],
        dict(tasks),
        split,
        len(dataset),
        runs,
        torch.get_num_threads(),
    )
    result.notes = [
        *notes,
        "decision rules: baseline says task t when argmax is one of t's classes; the "
        "multi-head model uses head t's own decision (argmax, or logit > 0)",
    ]
    result.markdown = write_markdown(result, out / "comparison.md")
    result.figure = write_figure(result, out / "comparison.png")
    return result
