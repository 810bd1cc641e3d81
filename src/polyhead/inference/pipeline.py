"""The sliding window's work on the model's device: normalisation, precision, batch size.

`DeviceNormalize` applies a per-band mean/std normalisation (albumentations ``Normalize``
steps, alone or in a ``Compose``, as `polyhead.checkpoint.inference_normalization` builds
them) as one tensor op on the device; any other callable runs per tile on the CPU, as
before. `autocast` runs the model at ``fp32``/``bf16``/``fp16``; `auto_batch_size` picks a
batch size for the device when the caller gives None, `auto_io_threads` GDAL's threads for
decoding the input and compressing the outputs.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from polyhead.errors import ConfigError
from polyhead.inference.tiling import Normalize, normalize_tile

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: batch size on a CPU when the caller gives None
CPU_BATCH_SIZE = 4
#: share of the free GPU memory a batch may take (activations of the model at that batch)
CUDA_MEMORY_SHARE = 0.5
MAX_AUTO_BATCH = 64


def checked_count(value: Any, name: str, least: int) -> int:
    """``value`` when it is an integer of at least ``least``, else ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def auto_io_threads(io_threads: int | None, device: torch.device) -> int:
    """GDAL worker threads that decode the input's blocks and compress the outputs'.

    ``io_threads`` when given (at least 1). None: 1 on a CPU, whose cores run the model
    (a busy extra thread slows torch's own threads); on an accelerator, the CPUs this
    process may use, shared among the processes of its machine (``LOCAL_WORLD_SIZE``, set
    by torchrun and Lightning): there the CPUs are otherwise idle, and one thread decoding
    a compressed input (about 80 MP/s) or deflating probabilities (5-20 MP/s) runs below a
    GPU's pace (`benchmarks/results/io_threads_cpu.md`)."""
    if io_threads is not None:
        return checked_count(io_threads, "io_threads", 1)
    if device.type == "cpu":
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, (cpus or 1) // local)


def auto_vector_workers(workers: int | None, device: torch.device) -> int:
    """Worker processes that polygonise class maps (`polyhead.inference.vector_jobs`):
    ``workers`` when given (0: in the calling process). None: 0 on a CPU, whose cores run
    the model; on an accelerator, half the CPUs `auto_io_threads` gives the process (the
    other half decode and compress)."""
    if workers is not None:
        return checked_count(workers, "vector_workers", 0)
    if device.type == "cpu":
        return 0
    return max(1, auto_io_threads(None, device) // 2)


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError for an unknown precision, or fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision 'fp16' needs a CUDA device, got {device}; use 'bf16'")


def autocast(precision: str, device: torch.device) -> Any:
    """An autocast context for ``precision`` on ``device`` (none for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _albumentations_steps(normalize: Any) -> list[Any] | None:
    """The ``Normalize`` steps of an albumentations ``Normalize`` or ``Compose`` of them, when
    each is an always-applied standard normalisation; else None."""
    if not type(normalize).__module__.startswith("albumentations"):
        return None
    steps = list(getattr(normalize, "transforms", [normalize]))
    if getattr(normalize, "p", 1.0) != 1.0:
        return None
    for step in steps:
        if (
            type(step).__name__ != "Normalize"
            or getattr(step, "normalization", None) != "standard"
            or getattr(step, "p", None) != 1.0
            or not hasattr(step, "mean_np")
            or not hasattr(step, "denominator")
        ):
            return None
    return steps


class DeviceNormalize:
    """Normalise tiles ``[B, C, h, w]`` (float32, on ``device``) as the training did.

    Albumentations standard ``Normalize`` steps become ``(x - mean) * (1 / std)`` per band on
    the device (their own float32 constants, so the values match); other callables get each
    tile as float32 HWC numpy on the CPU (`normalize_tile`).
    """

    def __init__(self, normalize: Normalize | None, channels: int, device: torch.device) -> None:
        self.fallback: Normalize | None = None
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        if normalize is None:
            return
        steps = _albumentations_steps(normalize)
        if steps is None or not all(self._fits(s, channels) for s in steps):
            self.fallback = normalize
            return
        for step in steps:
            mean = np.broadcast_to(np.asarray(step.mean_np, np.float32), (channels,))
            den = np.broadcast_to(np.asarray(step.denominator, np.float32), (channels,))
            self.steps.append(
                (
                    torch.from_numpy(mean.copy()).to(device).view(1, -1, 1, 1),
                    torch.from_numpy(den.copy()).to(device).view(1, -1, 1, 1),
                )
            )

    @staticmethod
    def _fits(step: Any, channels: int) -> bool:
        sizes = {np.asarray(step.mean_np).size, np.asarray(step.denominator).size}
        return sizes <= {1, channels}

    @property
    def on_device(self) -> bool:
        """Whether it runs as tensor ops (no CPU round trip)."""
        return self.fallback is None

    def __call__(self, tiles: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """The normalised float32 ``tiles`` (overwritten when ``inplace``)."""
        if self.fallback is not None:
            hwc = tiles.permute(0, 2, 3, 1).cpu().numpy()
            out = np.stack([normalize_tile(self.fallback, t) for t in hwc]).transpose(0, 3, 1, 2)
            return torch.from_numpy(np.ascontiguousarray(out)).to(tiles.device)
        for mean, den in self.steps:
            tiles = tiles.sub_(mean).mul_(den) if inplace else (tiles - mean) * den
        return tiles


def argmax_classes(proba: torch.Tensor) -> torch.Tensor:
    """``[1, h, w]`` uint8 index of the largest of ``proba [K, h, w]`` (the first on ties).

    A pairwise tournament of elementwise ops (K - 1 comparisons and selects, K - 2 maxima):
    a reduction over the outer axis is far slower on a CPU, and the winner of a tie is the
    lower index at every round, so the result is the first maximum like ``argmax``."""
    return _tournament(proba, 0, keep_max=False)[1][None]


def _tournament(
    proba: torch.Tensor, first: int, keep_max: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(max, argmax)`` over the planes of ``proba`` (indexes offset by ``first``; the max
    only when ``keep_max``)."""
    k = proba.shape[0]
    if k == 1:
        index = torch.full(proba.shape[1:], first, dtype=torch.uint8, device=proba.device)
        return proba[0], index
    if k == 2:
        higher = proba[1] > proba[0]
        best = torch.maximum(proba[0], proba[1]) if keep_max else None
        return best, higher.to(torch.uint8).add_(first)
    half = (k + 1) // 2
    low, low_index = _tournament(proba[:half], first)
    high, high_index = _tournament(proba[half:], first + half)
    assert low is not None and high is not None
    higher = high > low  # a tie keeps the lower index
    best = torch.maximum(low, high) if keep_max else None
    return best, torch.where(higher, high_index, low_index)


def pad_tiles(tiles: torch.Tensor, tile_size: int, pad_mode: str) -> torch.Tensor:
    """Tiles of a raster smaller than a tile, padded to ``tile_size`` with numpy's
    ``pad_mode`` (bottom and right; numpy's modes also pad past a one-pixel edge)."""
    _, _, h, w = tiles.shape
    if h == tile_size and w == tile_size:
        return tiles
    pad = ((0, 0), (0, 0), (0, tile_size - h), (0, tile_size - w))
    out = np.pad(tiles.cpu().numpy(), pad, mode=pad_mode)
    return torch.from_numpy(out).to(tiles.device)


@contextmanager
def model_on(model: Any, device: torch.device, channels_last: bool) -> Iterator[None]:
    """Move an ``nn.Module`` to ``device`` in eval mode (channels-last weights if asked);
    restore each submodule's train/eval mode and the memory format afterwards (a fresh
    `Predictor` around an eval-mode model must not put it in train mode)."""
    module = model if isinstance(model, torch.nn.Module) else None
    modes = [(m, m.training) for m in module.modules()] if module is not None else []
    if module is not None:
        module.to(device).eval()
        if channels_last:
            module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if module is not None and channels_last:
            module.to(memory_format=torch.contiguous_format)
        for m, training in modes:
            m.training = training


#: batch sizes found per predictor: ``{maps_fn: {(device, shape, precision, cl): n}}``
_AUTO_BATCH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def auto_batch_size(
    maps_fn: Callable[[torch.Tensor], Any],
    device: torch.device,
    shape: Sequence[int],
    precision: str,
    channels_last: bool,
) -> int:
    """A batch size for ``device``: `CPU_BATCH_SIZE` on a CPU; on CUDA, the batches whose
    activations fit in `CUDA_MEMORY_SHARE` of the free memory, from the peak memory of
    one probe tile ``shape = (C, tile, tile)`` (at most `MAX_AUTO_BATCH`). The probe runs
    once per predictor, device, shape and precision: the files of one run share it."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    key = (str(device), tuple(shape), precision, channels_last)
    try:
        known = _AUTO_BATCH.setdefault(maps_fn, {})
    except TypeError:  # a callable that takes no weak reference: probe every time
        known = {}
    if key not in known:
        known[key] = _probe_batch_size(maps_fn, device, shape, precision, channels_last)
    return known[key]


def _probe_batch_size(
    maps_fn: Callable[[torch.Tensor], Any],
    device: torch.device,
    shape: Sequence[int],
    precision: str,
    channels_last: bool,
) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    x = torch.zeros((1, *shape), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(precision, device):
        maps_fn(x)
    torch.cuda.synchronize(device)
    per_tile = max(torch.cuda.max_memory_allocated(device) - before, 1)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_AUTO_BATCH, CUDA_MEMORY_SHARE * free // per_tile)))
