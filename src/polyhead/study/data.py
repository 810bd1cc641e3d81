"""In-memory scene sets of the dual-head study: images, true classes, annotators, aggregates.

Scenes come from the demo's generator (`polyhead.demo.scenes`); annotators are the demo's
(``standard``: three annotators, `corrupt_mask`) or the harder border-focused pair
(``harder``: `polyhead.study.annotators`). Hard masks are the majority vote and the
Dawid-Skene arg-max, soft masks the Dawid-Skene posteriors or the vote fractions; Dawid-Skene is fitted once on the
annotations of all scenes (label patterns weighted by their pixel counts; the truth is never
used). Nothing is written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from polyhead.aggregation import dawid_skene
from polyhead.demo.scenes import land_cover_map, render_scene
from polyhead.demo.synthetic import (
    DEFAULT_ANNOTATORS,
    confusion_for,
    corrupt_mask,
    majority_vote,
    vote_fractions,
)
from polyhead.errors import ConfigError
from polyhead.study.annotators import HARDER_ANNOTATORS, annotate

SETTINGS = ("standard", "harder")
SPLITS = ("train", "val", "test")
REFLECTANCE_SCALE = 10000.0


@dataclass
class StudyData:
    """Per split: ``image`` ``[S, C, H, W]`` (normalised), ``truth``, ``mv``, ``ds`` ``[S, H, W]``
    (int64), ``soft`` ``[S, K, H, W]`` (Dawid-Skene posteriors) and ``vf`` (vote fractions)."""

    splits: dict[str, dict[str, torch.Tensor]]
    n_classes: int
    annotators: tuple[str, ...]
    label_quality: dict[str, float] = field(default_factory=dict)
    """Pixel accuracy against the truth of each annotator and aggregate (all scenes)."""


def _annotations(
    setting: str, truth: np.ndarray, rng: np.random.Generator, confusions: dict[str, np.ndarray]
) -> np.ndarray:
    if setting == "standard":
        return np.stack(
            [corrupt_mask(truth, r, confusions[a], rng) for a, r in DEFAULT_ANNOTATORS.items()]
        )
    return annotate(truth, HARDER_ANNOTATORS, confusions, rng)


def _reliabilities(setting: str) -> dict[str, float]:
    if setting == "standard":
        return dict(DEFAULT_ANNOTATORS)
    return {a: spec.reliability for a, spec in HARDER_ANNOTATORS.items()}


def dawid_skene_masks(stacks: np.ndarray, n_classes: int) -> np.ndarray:
    """Dawid-Skene posteriors ``[S, K, H, W]`` float32 of annotator masks ``[S, A, H, W]``,
    fitted on the distinct label patterns weighted by their pixel counts."""
    s, a, h, w = stacks.shape
    labels = stacks.transpose(0, 2, 3, 1).reshape(-1, a).astype(np.int64)
    patterns, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    result = dawid_skene(patterns, n_classes, counts=counts)
    post = result.posteriors[inverse.ravel()].astype(np.float32)
    return post.reshape(s, h, w, n_classes).transpose(0, 3, 1, 2)


def make_study_data(
    setting: str,
    seed: int,
    n_scenes: dict[str, int],
    size: int = 128,
    n_classes: int = 6,
    bands: int = 4,
) -> StudyData:
    """Generate ``n_scenes`` (per split) scenes of ``setting`` from ``seed``, aggregate their
    annotations and normalise the images with the training scenes' band statistics."""
    if setting not in SETTINGS:
        raise ConfigError(f"setting must be one of {SETTINGS}, got {setting!r}")
    missing = [s for s in SPLITS if n_scenes.get(s, 0) < 1]
    if missing:
        raise ConfigError(f"every split needs at least one scene; none for {missing}")
    root = np.random.SeedSequence([seed, SETTINGS.index(setting)])
    conf_rng = np.random.default_rng(root.spawn(1)[0])
    reliabilities = _reliabilities(setting)
    names = tuple(reliabilities)
    confusions = {a: confusion_for(conf_rng, n_classes) for a in names}
    tie_order = sorted(range(len(names)), key=lambda i: -reliabilities[names[i]])
    total = sum(n_scenes[s] for s in SPLITS)
    images, truths, stacks = [], [], []
    for ss in root.spawn(total + 1)[1:]:
        rng = np.random.default_rng(ss)
        truth = land_cover_map(rng, size, n_classes)
        images.append(render_scene(rng, truth, bands).astype(np.float32) / REFLECTANCE_SCALE)
        truths.append(truth.astype(np.int64))
        stacks.append(_annotations(setting, truth, rng, confusions))
    stack = np.stack(stacks)
    truth_all = np.stack(truths)
    soft = dawid_skene_masks(stack, n_classes)
    mv = np.stack([majority_vote(m, n_classes, tie_order) for m in stack]).astype(np.int64)
    ds = soft.argmax(1).astype(np.int64)
    vf = np.stack([vote_fractions(m, n_classes) for m in stack])
    image = np.stack(images)
    n_train = n_scenes["train"]
    mean = image[:n_train].mean(axis=(0, 2, 3), keepdims=True)
    std = image[:n_train].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    image = (image - mean) / std
    quality = {a: float((stack[:, i] == truth_all).mean()) for i, a in enumerate(names)}
    quality |= {"majority vote": float((mv == truth_all).mean())}
    quality |= {"Dawid-Skene arg-max": float((ds == truth_all).mean())}
    arrays = {"image": image, "truth": truth_all, "mv": mv, "ds": ds, "soft": soft, "vf": vf}
    splits, start = {}, 0
    for split in SPLITS:
        stop = start + n_scenes[split]
        splits[split] = {
            k: torch.from_numpy(np.ascontiguousarray(v[start:stop])) for k, v in arrays.items()
        }
        start = stop
    return StudyData(splits, n_classes, names, quality)
