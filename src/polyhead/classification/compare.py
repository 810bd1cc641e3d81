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
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

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


def load_config(
    config: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """A YAML path or mapping, with ``key=value`` overrides, as a resolved plain dict."""
    cfg = (
        OmegaConf.load(config)
        if isinstance(config, str | os.PathLike)
        else OmegaConf.create(dict(config))
    )
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(cfg, resolve=True)


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


def _eval_dataset(cfg: Mapping[str, Any], k: int) -> tuple[Any, str]:
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
    return instantiate({**spec, "data_loader": loader}, _convert_="all"), split.split("_")[0]


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


def run_compare(
    config: str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    runs: int | None = None,
    threads: int | None = None,
) -> Comparison:
    """Train baseline and multi-head, score both, write ``comparison.md`` and ``.png``.

    ``threads`` sets torch's CPU threads for the whole comparison (restored afterwards).
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _compare(config, out_dir, overrides, runs)
    finally:
        torch.set_num_threads(previous_threads)


def _compare(config: Any, out_dir: Any, overrides: Sequence[str], runs: int | None) -> Comparison:
    from polyhead.checkpoint import load_model
    from polyhead.train import to_plain_config, train

    cfg = to_plain_config(load_config(config, overrides))
    options = cfg.get("compare") or {}
    out = Path(out_dir or options.get("output_dir") or cfg["output_dir"])
    runs = int(runs or options.get("runs", 50))
    tasks, k = task_rules(cfg)
    configs = dict(zip((MULTI, BASELINE), derive_configs(cfg, out), strict=True))
    checkpoints = {}
    for name, run_cfg in configs.items():
        result = train(run_cfg)
        checkpoints[name] = result.best_checkpoint or result.last_checkpoint
        if checkpoints[name] is None:
            raise ConfigError(f"compare: the {name} run wrote no checkpoint")
    models = {name: load_model(path)[0] for name, path in checkpoints.items()}
    dataset, split = _eval_dataset(cfg, k)
    size = dataset.image_size
    latency = measure_latency(
        models, [row.path for row in dataset.rows], size, dataset.mean, dataset.std, runs=runs
    )
    reports = {}
    for name, model in models.items():
        precision, recall = task_scores(model, dataset, tasks, single=name == BASELINE)
        onnx_path = export_model(model, out / "onnx" / f"{name}.onnx", size)
        heads = getattr(model, "head_outputs", {})
        label = (
            f"single {k}-class head"
            if name == BASELINE
            else f"{len(heads)} heads, split at {configs[MULTI]['model'].get('split_at')}"
        )
        reports[name] = ModelReport(
            label,
            precision,
            recall,
            1000.0 * latency[name],
            sum(p.numel() for p in model.parameters()),
            onnx_path.stat().st_size / 1024.0,
            checkpoints[name],
        )
    result = Comparison(
        reports[BASELINE], reports[MULTI], tasks, split, len(dataset), runs, torch.get_num_threads()
    )
    model_cfg = configs[MULTI]["model"]
    weights = (configs[MULTI].get("task") or {}).get("head_weights")
    result.notes = [
        f"backbone {model_cfg.get('backbone')}, input {size} px, seed {cfg['seed']}, "
        f"{cfg['pl_trainer'].get('max_epochs')} epochs, head loss weights {weights or 'equal'}",
        "decision rules: baseline says task t when argmax is one of t's classes; the "
        "multi-head model uses head t's own decision (argmax, or logit > 0)",
    ]
    result.markdown = write_markdown(result, out / "comparison.md")
    result.figure = write_figure(result, out / "comparison.png")
    return result
