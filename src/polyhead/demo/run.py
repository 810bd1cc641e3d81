"""``polyhead demo``: synthetic scenes -> Dawid-Skene soft masks -> dual-head training on CPU
-> metrics against the truth and the hard mask, and a figure.

Sized to finish in about a minute on 2 quiet CPU cores (a few minutes when they are busy): 6
training scenes of 192 px, 96 px crops, 5 short epochs of a ResNet-18 with 32-channel UPerNet
decoders, validation once at the end, and one checkpoint written (the final EMA weights).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rich.console import Console
from rich.table import Table

from polyhead.aggregation import aggregate_masks
from polyhead.checkpoint import load_checkpoint
from polyhead.classes import ClassTable
from polyhead.config import build
from polyhead.data import RandomCropSegmentationDataset
from polyhead.demo.figures import save_prediction_figure
from polyhead.demo.synthetic import SyntheticDataset, generate_synthetic_dataset
from polyhead.evaluate import evaluate_heads
from polyhead.io import write_csv
from polyhead.progress import RunProgress, TrainingProgress
from polyhead.train import train

REFLECTANCE_SCALE = 10000.0  # the synthetic scenes store reflectance x 10000 as uint16
#: the demo's stages and their share of the progress bar (about their share of the time)
STAGES = {"data": 4.0, "aggregation": 4.0, "training": 80.0, "evaluation": 6.0, "figures": 6.0}


def band_statistics(dataset: SyntheticDataset) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the training scenes, in reflectance units."""
    stack = []
    for scene in dataset.train_scenes:
        with rasterio.open(dataset.out_dir / "scenes" / f"{scene}.tif") as src:
            stack.append(src.read().reshape(src.count, -1) / REFLECTANCE_SCALE)
    values = np.concatenate(stack, axis=1)
    return values.mean(1).round(4).tolist(), values.std(1).round(4).tolist()


def demo_config(
    data: SyntheticDataset,
    out_dir: Path,
    epochs: int,
    encoder_name: str,
    crop_size: int = 96,
    samples_per_epoch: int = 96,
    train_csv: Path | None = None,
    val_csv: Path | None = None,
    lean: bool = False,
) -> dict[str, Any]:
    """The demo's training config: the same ``_target_`` tree a YAML file would hold.

    Validation and ``last.ckpt`` every epoch (the best on ``loss/val`` too); ``lean`` (what
    ``polyhead demo`` runs): validation and one checkpoint write after the last epoch only.

    ``train_csv``/``val_csv`` default to the generator's CSVs (majority-vote hard masks,
    vote-fraction soft masks); the demo passes its own (Dawid-Skene soft masks).
    ``classes`` names the synthetic classes with their colours (stored in the checkpoint).
    """
    mean, std = band_statistics(data)
    n_classes = len(data.class_names)
    normalize = {
        "_target_": "albumentations.Normalize",
        "mean": mean,
        "std": std,
        "max_pixel_value": REFLECTANCE_SCALE,
    }
    dataset = {
        "_target_": "polyhead.data.RandomCropSegmentationDataset",
        "crop_size": crop_size,
        "n_classes": n_classes,
        "soft_labels": True,
    }
    return {
        "output_dir": str(out_dir / "run"),
        "seed": 0,
        "classes": ClassTable.from_config(list(data.class_names), n_classes).to_config(),
        "model": {
            "_target_": "polyhead.models.UPerNetDualHead",
            "encoder_name": encoder_name,
            "encoder_weights": None,
            "in_channels": data.bands,
            "classes": n_classes,
            "decoder_channels": 32,
            "inference_head": "average",
        },
        "loss": {"_target_": "torch.nn.CrossEntropyLoss", "ignore_index": 255},
        "task": {"consistency_weight": 0.1, "consistency_warmup_epochs": 1},
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-3},
        "scheduler": {
            "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "_partial_": True,
            "T_max": epochs,
        },
        "train_dataset": {
            **dataset,
            "input_csv_path": str(train_csv or data.train_csv),
            "samples_per_epoch": samples_per_epoch,
            "augmentation_list": [
                {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
                {"_target_": "albumentations.RandomRotate90", "p": 0.5},
                normalize,
            ],
            "data_loader": {"batch_size": 8, "shuffle": True, "num_workers": 0, "drop_last": True},
        },
        "val_dataset": {
            **dataset,
            "input_csv_path": str(val_csv or data.val_csv),
            "grid_mode": True,
            "augmentation_list": [normalize],
            "data_loader": {"batch_size": 8, "num_workers": 0},
        },
        "callbacks": [
            {"_target_": "polyhead.callbacks.EMACallback", "decay": 0.98},
            {  # lean: one write, at the end (the final EMA weights): a write is slow
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                **(
                    {"save_top_k": 0, "every_n_epochs": epochs}
                    if lean
                    else {"monitor": "loss/val", "mode": "min", "save_top_k": 1}
                ),
            },
        ],
        "pl_trainer": {
            "max_epochs": epochs,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 4,
            "check_val_every_n_epoch": epochs if lean else 1,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
            "enable_progress_bar": False,  # the demo's own one-line progress instead
        },
    }


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def training_csvs(data: SyntheticDataset, console: Console) -> dict[str, Path]:
    """Dawid-Skene posteriors of the annotators' masks (`polyhead.aggregation`) as soft masks
    beside the majority-vote hard masks: ``train``/``val`` CSVs (``image,mask,soft_mask``), and
    ``truth`` (validation scenes with their true classes as ``mask``)."""
    out = data.out_dir / "dawid_skene"
    result = aggregate_masks(data.annotator_csv, out, len(data.class_names), progress=False)
    estimated = {
        a: float(np.diag(result.confusion[i]).mean()) for i, a in enumerate(result.annotators)
    }
    console.print(
        f"[bold]Dawid-Skene[/bold]: {result.n_iter} EM iterations; estimated mean per-class "
        "accuracy of each annotator " + ", ".join(f"{a} {v:.2f}" for a, v in estimated.items())
    )
    root = data.out_dir

    def row(scene: str, mask: str) -> list[str]:
        soft = out / "soft" / f"{scene}.tif"
        return [f"scenes/{scene}.tif", f"{mask}/{scene}.tif", _rel(soft, root)]

    header = ("image", "mask", "soft_mask")
    splits = {
        "train": [row(s, "masks/hard") for s in data.train_scenes],
        "val": [row(s, "masks/hard") for s in data.val_scenes],
        "truth": [row(s, "truth") for s in data.val_scenes],
    }
    return {
        name: write_csv(root / f"demo_{name}.csv", header, rows) for name, rows in splits.items()
    }


def metrics_table(truth: dict[str, dict], hard: dict[str, dict], title: str) -> Table:
    """Per head: mIoU against the true classes, ECE (15 bins) against the true classes and
    against the majority-vote hard mask, KL to the Dawid-Skene soft mask (fits 80 columns)."""
    table = Table(title=title)
    cols = ["head", "mIoU vs truth", "ECE vs truth", "ECE vs hard mask"]
    soft = all("soft_KL" in m for m in truth.values())
    cols += ["KL to soft mask"] if soft else []
    for col in cols:
        table.add_column(col, justify="left" if col == "head" else "right")
    for head, m in truth.items():
        row = [head, f"{m['mIoU']:.3f}", f"{m['ECE']:.3f}"]
        row.append(f"{hard[head]['ECE']:.3f}")
        table.add_row(*row, *([f"{m['soft_KL']:.3f}"] if soft else []))
    return table


def run_demo(
    out_dir: str | Path = "polyhead-demo",
    n_train: int = 6,
    n_val: int = 2,
    size: int = 192,
    epochs: int = 5,
    encoder_name: str = "resnet18",
    console: Console | None = None,
    crop_size: int = 96,
    samples_per_epoch: int = 96,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Generate data, aggregate its annotators (Dawid-Skene), train the dual head (A on the
    majority-vote hard masks, B on the Dawid-Skene soft masks), evaluate heads A/B/average
    against the truth and the hard masks, write a figure. One progress line throughout.

    ``threads``: torch threads while it runs (None: torch's default). One by default: beside
    other busy processes, two threads on two cores ran the demo 10x slower than one."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(out_dir, n_train, n_val, size, epochs, encoder_name, console,
                         crop_size, samples_per_epoch)  # fmt: skip
    finally:
        torch.set_num_threads(previous)


def _run_demo(out_dir, n_train, n_val, size, epochs, encoder_name, console, crop_size,
              samples_per_epoch) -> dict[str, Any]:  # fmt: skip
    console = console or Console()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with RunProgress(STAGES, console=console) as progress:
        progress.stage("data", f"{n_train + n_val} scenes of {size} px")
        data = generate_synthetic_dataset(out_dir / "data", n_train=n_train, n_val=n_val, size=size)
        console.print(
            f"[bold]data[/bold]: {n_train} training and {n_val} validation scenes of "
            f"{size}x{size} px, {data.bands} bands, classes {list(data.class_names)}, "
            "annotator accuracy vs truth "
            + ", ".join(f"{k} {v:.2f}" for k, v in data.measured_accuracy.items())
        )
        progress.stage("aggregation", "Dawid-Skene")
        csvs = training_csvs(data, console)
        crop = min(crop_size, size)
        cfg = demo_config(data, out_dir, epochs, encoder_name, crop, samples_per_epoch,
                          csvs["train"], csvs["val"], lean=True)  # fmt: skip
        result = train(cfg, callbacks=[TrainingProgress(progress)])
        checkpoint = result.best_checkpoint or result.last_checkpoint
        progress.stage("evaluation", "heads A, B, average")
        model = load_checkpoint(checkpoint).model
        normalize = build(cfg["val_dataset"]["augmentation_list"], "augmentation_list")
        k = len(data.class_names)
        classes = ClassTable.from_config(cfg["classes"], k)
        scores = {}
        for name in ("truth", "val"):
            val = RandomCropSegmentationDataset(
                csvs[name], crop, k, soft_labels=True, grid_mode=True, augmentation_list=normalize
            )
            scores[name] = evaluate_heads(model, val, k)
        progress.stage("figures", "predictions.png")
        figure = write_figure(out_dir / "predictions.png", model, data, normalize[-1], classes)
    console.print(
        metrics_table(scores["truth"], scores["val"], "validation scenes, final EMA weights")
    )
    console.print(
        f"hard mask: majority vote of the annotators; soft mask: Dawid-Skene posteriors; "
        f"chance mIoU for {k} classes is about {1 / k:.2f} or less\n"
        f"checkpoint: {checkpoint}\nfigure:     {figure}\n"
        f"done in {time.perf_counter() - start:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in progress.durations().items())
        + ")"
    )
    return {
        "checkpoint": checkpoint,
        "figure": figure,
        "metrics": scores["truth"],
        "metrics_vs_hard_mask": scores["val"],
        "data": data,
        "run_dir": result.run_dir,
        "seconds": progress.durations(),
    }


def predict_scene(model: torch.nn.Module, image: np.ndarray, normalize: Any) -> dict[str, Any]:
    """Class maps ``{head: [H, W]}`` of heads A, B and average for a whole ``[C, H, W]``
    scene (reflectance x 10000), padded to a multiple of 32 for the encoder."""
    from polyhead.inference.predictor import PROBABILITIES, Predictor

    x = normalize(image=np.moveaxis(image, 0, -1).astype(np.float32))["image"]
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0)))[None]
    h, w = x.shape[-2:]
    pad = (0, -w % 32, 0, -h % 32)
    x = torch.nn.functional.pad(x, pad, mode="reflect") if any(pad) else x
    with torch.inference_mode():
        return {
            head: Predictor(model, head=head)(x)[PROBABILITIES][0, :, :h, :w].argmax(0).numpy()
            for head in ("A", "B", "average")
        }


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def write_figure(
    path: Path, model: torch.nn.Module, data: SyntheticDataset, normalize: Any, classes: ClassTable
) -> Path:
    """``predictions.png``: one row per validation scene (named at the left): image, true
    classes, majority-vote hard mask, Dawid-Skene soft mask (colour mix), heads A, B, average."""
    scenes = data.val_scenes or data.train_scenes[:1]
    root = data.out_dir
    images = [_read(root / "scenes" / f"{s}.tif") for s in scenes]
    preds = [predict_scene(model, image, normalize) for image in images]
    columns = {
        "A": "head A\n(trained on hard mask)",
        "B": "head B\n(trained on soft mask)",
        "average": "average of A and B\n(the model's default)",
    }
    return save_prediction_figure(
        path,
        images,
        np.stack([_read(root / "masks/hard" / f"{s}.tif")[0] for s in scenes]),
        np.stack([_read(root / "dawid_skene/soft" / f"{s}.tif") for s in scenes]),
        {columns[h]: np.stack([p[h] for p in preds]) for h in columns},
        classes.names,
        row_titles=scenes,
        truth=np.stack([_read(root / "truth" / f"{s}.tif")[0] for s in scenes]),
        classes=classes,
        column_titles={"soft": "soft mask, Dawid-Skene\n(colours mixed by probability)"},
    )
