"""``polyhead demo``: synthetic scenes -> dual-head training on CPU -> metrics table and figure."""

from __future__ import annotations

import logging
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
from polyhead.config import build
from polyhead.data import RandomCropSegmentationDataset
from polyhead.demo.figures import save_prediction_figure
from polyhead.demo.synthetic import SyntheticDataset, generate_synthetic_dataset
from polyhead.evaluate import evaluate_heads
from polyhead.inference.predictor import PROBABILITIES, Predictor
from polyhead.io import write_text
from polyhead.train import train

REFLECTANCE_SCALE = 10000.0  # the synthetic scenes store reflectance x 10000 as uint16


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
    crop_size: int = 128,
    samples_per_epoch: int = 128,
    train_csv: Path | None = None,
    val_csv: Path | None = None,
) -> dict[str, Any]:
    """The demo's training config: the same ``_target_`` tree a YAML file would hold.

    ``train_csv``/``val_csv`` default to the generator's CSVs (majority-vote hard masks,
    vote-fraction soft masks); the demo passes Dawid-Skene ones.
    """
    train_csv = train_csv or data.train_csv
    val_csv = val_csv or data.val_csv
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
        "model": {
            "_target_": "polyhead.models.UPerNetDualHead",
            "encoder_name": encoder_name,
            "encoder_weights": None,
            "in_channels": data.bands,
            "classes": n_classes,
            "decoder_channels": 64,
            "inference_head": "average",
        },
        "loss": {"_target_": "torch.nn.CrossEntropyLoss", "ignore_index": 255},
        "task": {"consistency_weight": 0.1, "consistency_warmup_epochs": 1},
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "_partial_": True,
            "lr": 2e-3,
            "weight_decay": 1e-4,
        },
        "scheduler": {
            "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "_partial_": True,
            "T_max": epochs,
        },
        "train_dataset": {
            **dataset,
            "input_csv_path": str(train_csv),
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
            "input_csv_path": str(val_csv),
            "grid_mode": True,
            "augmentation_list": [normalize],
            "data_loader": {"batch_size": 8, "num_workers": 0},
        },
        "callbacks": [
            {"_target_": "polyhead.callbacks.EMACallback", "decay": 0.99},
            {
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                "monitor": "loss/val",
                "mode": "min",
                "save_top_k": 1,
                "save_last": True,
            },
        ],
        "pl_trainer": {
            "max_epochs": epochs,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 4,
            "enable_model_summary": False,
        },
    }


def dawid_skene_csvs(data: SyntheticDataset, console: Console) -> tuple[Path, Path]:
    """Aggregate the annotators' masks with Dawid-Skene; split its CSV into train and val."""
    out = data.out_dir / "dawid_skene"
    result = aggregate_masks(data.annotator_csv, out, len(data.class_names), progress=False)
    estimated = {
        a: float(np.diag(result.confusion[i]).mean()) for i, a in enumerate(result.annotators)
    }
    console.print(
        f"[bold]Dawid-Skene[/bold]: {result.n_iter} EM iterations; estimated "
        "mean per-class accuracy of each annotator "
        + ", ".join(f"{a} {v:.2f}" for a, v in estimated.items())
    )
    header, *rows = (out / "train.csv").read_text().splitlines()
    val_stems = set(data.val_scenes)
    split = {"train": [], "val": []}
    for row in rows:
        stem = Path(row.split(",")[0]).stem
        split["val" if stem in val_stems else "train"].append(row)
    paths = []
    for name, lines in split.items():
        path = out / f"{name}_split.csv"
        write_text(path, "\n".join([header, *lines]) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def metrics_table(results: dict[str, dict[str, torch.Tensor]], title: str) -> Table:
    table = Table(title=title)
    cols = ["head", "mIoU", "pixel accuracy", "ECE (15 bins)"]
    soft = all("soft_KL" in m for m in results.values())
    if soft:
        cols.append("KL to soft mask")
    for col in cols:
        table.add_column(col, justify="right" if col != "head" else "left")
    for head, m in results.items():
        row = [head, f"{m['mIoU']:.3f}", f"{m['pixel_accuracy']:.3f}", f"{m['ECE']:.3f}"]
        table.add_row(*row, *([f"{m['soft_KL']:.3f}"] if soft else []))
    return table


def run_demo(
    out_dir: str | Path = "polyhead-demo",
    n_train: int = 8,
    n_val: int = 2,
    size: int = 256,
    epochs: int = 6,
    encoder_name: str = "resnet18",
    console: Console | None = None,
) -> dict[str, Any]:
    """Generate data, aggregate its annotators (Dawid-Skene), train the dual head, evaluate
    heads A/B/average, write a figure."""
    console = console or Console()
    out_dir = Path(out_dir)
    # Lightning's start-up notices (accelerators found, logger tips) are noise here
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    start = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = generate_synthetic_dataset(out_dir / "data", n_train=n_train, n_val=n_val, size=size)
    console.print(
        f"[bold]data[/bold]: {n_train} training and {n_val} validation scenes of "
        f"{size}x{size} px, {data.bands} bands, classes {list(data.class_names)}, "
        "annotator accuracy vs truth "
        + ", ".join(f"{k} {v:.2f}" for k, v in data.measured_accuracy.items())
    )
    train_csv, val_csv = dawid_skene_csvs(data, console)
    cfg = demo_config(
        data,
        out_dir,
        epochs,
        encoder_name,
        crop_size=min(128, size),
        train_csv=train_csv,
        val_csv=val_csv,
    )
    result = train(cfg)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    model = load_checkpoint(checkpoint).model
    val = RandomCropSegmentationDataset(
        val_csv,
        crop_size=min(128, size),
        n_classes=len(data.class_names),
        soft_labels=True,
        grid_mode=True,
        augmentation_list=build(cfg["val_dataset"]["augmentation_list"], "augmentation_list"),
    )
    results = evaluate_heads(model, val, len(data.class_names))
    console.print(metrics_table(results, "validation metrics per head (best checkpoint, EMA)"))
    figure = out_dir / "predictions.png"
    _write_figure(figure, model, val, data)
    console.print(
        f"checkpoint: {checkpoint}\nfigure:     {figure}\n"
        f"done in {time.perf_counter() - start:.0f} s"
    )
    return {"checkpoint": checkpoint, "figure": figure, "metrics": results, "data": data}


def _write_figure(path: Path, model, val: RandomCropSegmentationDataset, data: SyntheticDataset):
    """Image, hard and soft mask, and heads A/B/average for the first validation tiles."""
    items = [val[i] for i in range(min(2, len(val)))]
    image = torch.stack([it["image"] for it in items])
    with torch.inference_mode():
        preds = {
            f"head {h}" if h != "average" else h: Predictor(model, head=h)(image)[PROBABILITIES]
            .argmax(1)
            .numpy()
            for h in ("A", "B", "average")
        }
    raw = []
    for it in items:  # undo Normalize for display
        row, r0, c0, h, w = (int(v) for v in it["window"])
        with rasterio.open(val.image_paths[row]) as src:
            window = rasterio.windows.Window(c0, r0, w, h)
            tile = np.zeros((data.bands, image.shape[-2], image.shape[-1]), np.float32)
            tile[:, :h, :w] = src.read(window=window)
            raw.append(tile)
    save_prediction_figure(
        path,
        np.stack(raw),
        np.stack([it["targets"]["hard"].numpy() for it in items]),
        np.stack([it["targets"]["soft"].numpy() for it in items]),
        preds,
        data.class_names,
    )
