"""A small real image data set for the classifier demo: scikit-learn's bundled digits.

scikit-learn ships 1,797 handwritten digits (8 x 8 px, 16 grey levels) inside its wheel, so
nothing is downloaded. The article classifies photos into three classes that feed two
binary tasks: 0 = document, 1 = not a document, 2 = screen, with the tasks ``screen``
(label == 2, the main and harder one) and ``other`` (label == 1, secondary and easier).
The digits are mapped onto three classes the same way:

- class 2, "screen-like": digits 3 and 8, round closed shapes that are easily confused with
  5, 9, 6 and 0 (which stay in class 0): the main, harder task ``screen``;
- class 1, "other-like": digits 1 and 7, thin single strokes: the easier task ``other``;
- class 0, "neither": digits 0, 2, 4, 5, 6, 9 (the majority, like the article's documents).

:func:`write_digits` writes each digit as an 8 x 8 greyscale PNG and ``train.csv``,
``val.csv`` and ``test.csv`` (``path,label,digit``; the class-id column is ``label``),
split stratified by digit with a fixed seed.
"""

from __future__ import annotations

import copy
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLASS_NAMES = {0: "neither", 1: "other-like", 2: "screen-like"}
DIGIT_CLASS = {0: 0, 1: 1, 2: 0, 3: 2, 4: 0, 5: 0, 6: 0, 7: 1, 8: 2, 9: 0}
#: the two task heads, read off the class-id column as the article does
TASK_HEADS = {
    "screen": {"from": "label", "positive": [2]},
    "other": {"from": "label", "positive": [1]},
}
SPLITS = ("train", "val", "test")


@dataclass
class DigitsData:
    """Where :func:`write_digits` put the data, and how many images each split has."""

    out_dir: Path
    csv: dict[str, Path]
    counts: dict[str, int]

    @property
    def train_csv(self) -> Path:
        return self.csv["train"]

    @property
    def val_csv(self) -> Path:
        return self.csv["val"]

    @property
    def test_csv(self) -> Path:
        return self.csv["test"]


def write_digits(
    out_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
) -> DigitsData:
    """Write the digits as PNGs plus ``train/val/test.csv``; ``limit`` keeps a stratified
    subset of that many images (for quick tests)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    target = digits.target.astype(int)
    index = np.arange(len(target))
    if limit is not None and limit < len(index):
        index, _ = train_test_split(index, train_size=limit, stratify=target, random_state=seed)
    holdout = val_fraction + test_fraction
    train, rest = train_test_split(
        index, test_size=holdout, stratify=target[index], random_state=seed
    )
    val, test = train_test_split(
        rest, test_size=test_fraction / holdout, stratify=target[rest], random_state=seed
    )
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, members in zip(SPLITS, (train, val, test), strict=True):
        paths[split] = out / f"{split}.csv"
        with open(paths[split], "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "digit"])
            for i in sorted(int(j) for j in members):
                name = f"images/{i:04d}.png"
                Image.fromarray(images[i], mode="L").save(out / name)
                writer.writerow([name, DIGIT_CLASS[target[i]], target[i]])
    counts = {s: len(m) for s, m in zip(SPLITS, (train, val, test), strict=True)}
    return DigitsData(out, paths, counts)


def demo_config(
    data: DigitsData,
    out_dir: str | os.PathLike,
    epochs: int = 12,
    image_size: int = 48,
    backbone: str = "torchvision:shufflenet_v2_x0_5",
    split_at: str | int | None = "conv5",
    batch_size: int = 64,
) -> dict[str, Any]:
    """The demo's multi-head config (``configs/examples/classifier_digits.yaml`` as a dict)."""
    heads_data = {"classes": 3, "heads": copy.deepcopy(TASK_HEADS), "image_size": image_size}
    loader = {"batch_size": batch_size, "num_workers": 0}
    return {
        "output_dir": str(out_dir),
        "seed": 0,
        "model": {
            "_target_": "polyhead.models.MultiHeadClassifier",
            "backbone": backbone,
            "heads": {"screen": 2, "other": 2},
            "split_at": split_at,
            "encoder_weights": None,
        },
        "task": {
            "_target_": "polyhead.tasks.classification.ClassificationTask",
            "head_weights": {"screen": 2.0, "other": 1.0},
        },
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "_partial_": True,
            "lr": 0.003,
            "weight_decay": 0.0001,
        },
        "scheduler": {
            "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "_partial_": True,
            "T_max": epochs,
        },
        "train_dataset": {
            "_target_": "polyhead.data.classification.ClassificationCSVDataset",
            "input_csv_path": str(data.train_csv),
            **heads_data,
            "augmentation_list": [
                {"_target_": "torchvision.transforms.RandomRotation", "degrees": 10}
            ],
            "data_loader": {
                **loader,
                "batch_size": min(batch_size, data.counts["train"]),
                "shuffle": True,
                "drop_last": True,
            },
        },
        "val_dataset": {
            "_target_": "polyhead.data.classification.ClassificationCSVDataset",
            "input_csv_path": str(data.val_csv),
            **heads_data,
            "data_loader": loader,
        },
        "test_dataset": {
            "_target_": "polyhead.data.classification.ClassificationCSVDataset",
            "input_csv_path": str(data.test_csv),
            **heads_data,
            "data_loader": loader,
        },
        "callbacks": [
            {
                "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                "monitor": "val/screen/f1",
                "mode": "max",
                "save_top_k": 1,
                "save_last": True,
            }
        ],
        "pl_trainer": {
            "max_epochs": epochs,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 5,
            "enable_model_summary": False,
        },
        "compare": {"classes": 3, "runs": 50},
    }
