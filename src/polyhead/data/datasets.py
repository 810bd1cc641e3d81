"""Segmentation dataset reading random (training) or grid (validation) crops from a CSV."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from polyhead.data import extra_targets as extra
from polyhead.data import raster_io
from polyhead.data.image_targets import ImageTargets
from polyhead.data.loader import loader_options, make_loader
from polyhead.data.scan import check_nonfinite_mode, nonfinite_pixels
from polyhead.data.transforms import SOFT_TARGET, build_augmentations, mask_is_transposed
from polyhead.data.validation import (
    CsvRow,
    DataSummary,
    read_csv_rows,
    validate_rows,
)
from polyhead.errors import ConfigError, DataError


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _grid_tiles(sizes: list[tuple[int, int]], crop: int) -> np.ndarray:
    """Row-major tiles (image, row_off, col_off, h, w) covering every pixel once."""
    tiles = [
        (i, r, c, min(crop, height - r), min(crop, width - c))
        for i, (height, width) in enumerate(sizes)
        for r in range(0, height, crop)
        for c in range(0, width, crop)
    ]
    return np.asarray(tiles, dtype=np.int64).reshape(-1, 5)


def _pad(array: np.ndarray, crop: int, value: float) -> np.ndarray:
    """Pad the last two axes of ``array`` at the bottom/right up to ``crop``."""
    h, w = array.shape[-2:]
    if h == crop and w == crop:
        return array
    widths = [(0, 0)] * (array.ndim - 2) + [(0, crop - h), (0, crop - w)]
    return np.pad(array, widths, mode="constant", constant_values=value)


def _tensor(array: Any) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    return torch.from_numpy(np.ascontiguousarray(array))


def _mask_dtype(hard: np.ndarray) -> np.dtype:
    # cv2-backed transforms reject int64; pick the smallest type holding the values.
    lo, hi = int(hard.min()), int(hard.max())
    if lo >= 0 and hi <= 255:
        return np.dtype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


class RandomCropSegmentationDataset(Dataset):
    """Crops of images, hard masks and optional soft masks listed in an ``image,mask[,soft_mask]`` CSV.

    Random mode (default): ``len()`` is ``samples_per_epoch``; each item picks an
    image with probability proportional to its number of valid crop positions and
    a uniform top-left, using torch's RNG. Grid mode: tiles of ``crop_size`` at
    stride ``crop_size`` cover every pixel exactly once; edge tiles are padded
    (image 0, hard mask ``ignore_index``, soft mask 0).

    Items are ``{"image": float32 [C, c, c], "targets": {"hard": int64 [c, c],
    "soft": float32 [K, c, c]}, "index": int}`` plus, in grid mode, ``"window"``:
    int64 ``[image_row, row_off, col_off, h, w]`` with the unpadded tile size.

    ``extra_targets`` (``{key: CSV column}``) adds rasters read with the same window and
    augmented as extra masks (padding 0), as float32 ``targets[key]`` ``[bands, c, c]``; see
    `polyhead.data.extra_targets` for how stored values are scaled.

    ``image_targets`` (``{key: spec}``) adds one value or vector per item from CSV columns,
    or computed from the crop (``fraction_of: hard``), as ``targets[key]``; see
    `polyhead.data.image_targets`.

    Targets that may be missing come with ``item["present"] = {target key: bool}`` (collated
    to ``Bool[B]``): ``soft`` when ``soft_labels`` (an empty ``soft_mask`` cell: soft target
    all 0) and every image-level key (an empty cell: placeholder 0).

    ``nonfinite``: what NaN/inf pixels of float images mean. ``"error"`` (default): the
    data check refuses the image, naming the row, the file and the pixel count (a crop
    holding one raises too when ``validate`` is off). ``"nodata"``: those pixels are
    ignored: image value 0, hard mask ``ignore_index``, soft mask all 0.
    """

    def __init__(
        self,
        input_csv_path: str | os.PathLike[str],
        crop_size: int,
        n_classes: int,
        samples_per_epoch: int | None = None,
        soft_labels: bool = False,
        augmentation_list: Any = None,
        data_loader: Any = None,
        grid_mode: bool = False,
        ignore_index: int = 255,
        validate: bool = True,
        extra_targets: Mapping[str, str] | None = None,
        nonfinite: str = "error",
        image_targets: Mapping[str, Any] | None = None,
    ) -> None:
        self.crop_size = _positive_int(crop_size, "crop_size")
        self.n_classes = _positive_int(n_classes, "n_classes")
        self.grid_mode = bool(grid_mode)
        self.soft_labels = bool(soft_labels)
        self.ignore_index = int(ignore_index)
        self.nonfinite = check_nonfinite_mode(nonfinite)
        if not self.grid_mode:
            if samples_per_epoch is None:
                raise ConfigError("samples_per_epoch is required when grid_mode is false")
            samples_per_epoch = _positive_int(samples_per_epoch, "samples_per_epoch")
        self.samples_per_epoch = samples_per_epoch
        self.loader_options = loader_options(data_loader)
        self.transform = build_augmentations(augmentation_list)
        self._soft_transposed = mask_is_transposed(self.transform)

        self.csv_path = Path(input_csv_path)
        self.rows: list[CsvRow] = read_csv_rows(self.csv_path, self.soft_labels)
        self.summary: DataSummary | None = None
        if validate:
            self.summary = validate_rows(
                self.csv_path,
                self.rows,
                self.n_classes,
                crop_size=self.crop_size,
                soft_labels=self.soft_labels,
                ignore_index=self.ignore_index,
                nonfinite=self.nonfinite,
            )
            self.image_sizes = [(im.height, im.width) for im in self.summary.images]
        else:
            self.image_sizes = [self._size_of(row) for row in self.rows]

        if self.grid_mode:
            self.tiles = _grid_tiles(self.image_sizes, self.crop_size)
        else:
            c = self.crop_size
            positions = [max(0, h - c + 1) * max(0, w - c + 1) for h, w in self.image_sizes]
            if sum(positions) == 0:
                raise DataError(f"{self.csv_path}: crop_size {c} is larger than every image")
            self._weights = torch.tensor(positions, dtype=torch.float64)
        self.extra = None
        if extra_targets:
            self.extra = extra.ExtraTargets(
                self.csv_path, self.rows, self.image_sizes, extra_targets
            )
            extra.register(self.transform, self.extra.keys)
        self.image_targets = None
        if image_targets:
            self.image_targets = ImageTargets(
                self.csv_path, self.rows, image_targets, self.n_classes
            )
            clash = sorted(
                set(self.image_targets.keys) & set(self.extra.keys if self.extra else [])
            )
            if clash:
                raise ConfigError(f"image_targets and extra_targets both name {clash}")
            if self.summary is not None:
                self.summary.target_counts.update(self.image_targets.counts())
        self._handles = raster_io.HandleCache()

    def _size_of(self, row: CsvRow) -> tuple[int, int]:
        try:
            info = raster_io.raster_info(row.image)
        except DataError as err:
            raise self._row_error(row, err) from err
        return info.height, info.width

    def _row_error(self, row: CsvRow, err: Exception) -> DataError:
        return DataError(f"{self.csv_path}: row {row.number} (image {row.image}): {err}")

    @property
    def image_paths(self) -> list[Path]:
        """Image path of every CSV row, in order (``window[0]`` indexes this list)."""
        return [row.image for row in self.rows]

    def __len__(self) -> int:
        return len(self.tiles) if self.grid_mode else int(self.samples_per_epoch or 0)

    def _random_window(self) -> tuple[int, int, int, int, int]:
        image = int(torch.multinomial(self._weights, 1).item())
        height, width = self.image_sizes[image]
        c = self.crop_size
        row_off = int(torch.randint(height - c + 1, ()).item())
        col_off = int(torch.randint(width - c + 1, ()).item())
        return image, row_off, col_off, c, c

    def _read(
        self, image: int, row_off: int, col_off: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        row = self.rows[image]
        cache = self._handles
        try:
            pixels = raster_io.read_window(row.image, row_off, col_off, h, w, cache)
            mask = raster_io.read_window(row.mask, row_off, col_off, h, w, cache)
            soft = None
            if self.soft_labels and row.soft_mask is not None:
                soft = raster_io.read_window(row.soft_mask, row_off, col_off, h, w, cache)
            elif self.soft_labels:  # an empty soft_mask cell: no soft target (present False)
                soft = np.zeros((self.n_classes, h, w), dtype=np.float32)
        except DataError as err:
            raise self._row_error(row, err) from err

        hard = mask[0]
        if np.issubdtype(hard.dtype, np.floating):
            hard = np.where(np.isfinite(hard), hard, self.ignore_index)
        hard = hard.astype(np.int64)
        if soft is not None:
            scale = raster_io.soft_scale(soft.dtype) or 1.0
            soft = soft.astype(np.float32)
            if scale != 1.0:
                soft /= np.float32(scale)
        bad = nonfinite_pixels(pixels)
        if bad is not None:
            pixels = self._ignore_nonfinite(row, bad, pixels, hard, soft, (row_off, col_off))
        return pixels, hard, soft

    def _ignore_nonfinite(
        self,
        row: CsvRow,
        bad: np.ndarray,
        pixels: np.ndarray,
        hard: np.ndarray,
        soft: np.ndarray | None,
        offset: tuple[int, int],
    ) -> np.ndarray:
        """NaN/inf pixels as ignored ones (``nonfinite="nodata"``), else a row error."""
        if self.nonfinite == "error":
            r, c = (int(v[0]) for v in np.nonzero(bad))
            raise self._row_error(
                row,
                DataError(
                    f"{int(bad.sum())} NaN/inf pixel(s) in the crop at pixel row "
                    f"{offset[0] + r}, col {offset[1] + c}; fix the file, or set the "
                    "dataset's nonfinite: nodata to ignore them"
                ),
            )
        hard[bad] = self.ignore_index
        if soft is not None:
            soft[:, bad] = 0.0
        return np.where(bad, pixels.dtype.type(0), pixels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index)
        if self.grid_mode:
            image, row_off, col_off, h, w = (int(v) for v in self.tiles[index])
        else:
            image, row_off, col_off, h, w = self._random_window()
        pixels, hard, soft = self._read(image, row_off, col_off, h, w)
        more: dict[str, np.ndarray] = {}
        if self.extra is not None:
            try:
                more = self.extra.read(image, row_off, col_off, h, w, self._handles)
            except DataError as err:
                raise self._row_error(self.rows[image], err) from err

        c = self.crop_size
        pixels = _pad(pixels, c, 0)
        hard = _pad(hard, c, self.ignore_index)
        if soft is not None:
            soft = _pad(soft, c, 0.0)
        more = extra.pad(more, c)

        if self.transform is None:
            image_t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
            hard_t = torch.from_numpy(hard)
            soft_t = torch.from_numpy(soft) if soft is not None else None
            more_t = extra.to_tensors(more)
        else:
            image_t, hard_t, soft_t, more_t = self._augment(pixels, hard, soft, index, more)

        item: dict[str, Any] = {
            "image": image_t,
            "targets": {"hard": hard_t},
            "index": index,
        }
        if soft_t is not None:
            item["targets"]["soft"] = soft_t
        item["targets"].update(more_t)
        present = {"soft": self.rows[image].soft_mask is not None} if self.soft_labels else {}
        if self.image_targets is not None:
            values, flags = self.image_targets.read(image, hard_t, self.ignore_index)
            item["targets"].update(values)
            present.update(flags)
        if present:
            item["present"] = present
        if self.grid_mode:
            item["window"] = torch.tensor([image, row_off, col_off, h, w], dtype=torch.int64)
        return item

    def _augment(
        self,
        pixels: np.ndarray,
        hard: np.ndarray,
        soft: np.ndarray | None,
        index: int,
        more: dict[str, np.ndarray],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        assert self.transform is not None
        # albumentations 2 keeps its own RNG: seed it from torch so torch.manual_seed and
        # Lightning's per-worker seeding make augmentations reproducible. Grid mode seeds
        # with the tile index so validation never consumes the global RNG.
        if hasattr(self.transform, "set_random_seed"):
            seed = index if self.grid_mode else int(torch.randint(2**31 - 1, ()).item())
            self.transform.set_random_seed(seed)

        image = pixels.transpose(1, 2, 0)
        if image.dtype not in (np.uint8, np.float32):
            image = image.astype(np.float32)
        inputs: dict[str, Any] = {
            "image": np.ascontiguousarray(image),
            "mask": hard.astype(_mask_dtype(hard)),
        }
        if soft is not None:
            inputs[SOFT_TARGET] = np.ascontiguousarray(soft.transpose(1, 2, 0))
        inputs.update(extra.as_inputs(more))
        out = self.transform(**inputs)

        # With or without ToTensorV2 in the pipeline, produce the same tensors.
        image_out = out["image"]
        if isinstance(image_out, torch.Tensor):
            image_t = image_out.float()  # ToTensorV2 already made it CHW
        else:
            image_out = image_out[..., None] if image_out.ndim == 2 else image_out
            image_t = _tensor(image_out.transpose(2, 0, 1)).float()
        hard_t = _tensor(out["mask"]).long()
        soft_t = None
        if soft is not None:
            soft_t = extra.mask_to_chw(out[SOFT_TARGET], self._soft_transposed)
        more_t = extra.from_outputs(out, list(more), self._soft_transposed)
        return image_t.contiguous(), hard_t.contiguous(), soft_t, more_t

    def make_loader(self, **overrides: Any) -> DataLoader:
        """A DataLoader with the ``data_loader`` options (``overrides`` win); see
        `polyhead.data.loader.make_loader`."""
        return make_loader(self, self.loader_options, **overrides)

    def close(self) -> None:
        """Close the raster handles this process opened."""
        self._handles.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = None  # GDAL handles must never cross process boundaries
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._handles = raster_io.HandleCache()
