"""RandomCropSegmentationDataset: shapes, alignment, windowed reads, grid mode, loaders."""

from __future__ import annotations

import os
import pickle

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from omegaconf import OmegaConf

from polyhead.config import build
from polyhead.data import RandomCropSegmentationDataset, build_augmentations, raster_io
from polyhead.errors import ConfigError

from .conftest import HEIGHT, N_CLASSES, WIDTH, write_csv, write_tif

CROP = 16


def make_ds(data, **kwargs) -> RandomCropSegmentationDataset:
    options = {"crop_size": CROP, "n_classes": data.n_classes, "samples_per_epoch": 8}
    options.update(kwargs)
    return RandomCropSegmentationDataset(data.csv, **options)


def test_item_shapes_and_dtypes(seg_set):
    ds = make_ds(seg_set, soft_labels=True)
    assert len(ds) == 8
    item = ds[3]
    assert item["index"] == 3
    assert item["image"].shape == (4, CROP, CROP) and item["image"].dtype == torch.float32
    assert item["targets"]["hard"].shape == (CROP, CROP)
    assert item["targets"]["hard"].dtype == torch.int64
    assert item["targets"]["soft"].shape == (N_CLASSES, CROP, CROP)
    assert item["targets"]["soft"].dtype == torch.float32
    assert "window" not in item
    # No Normalize: raw uint16 values, just cast (some are far above 255).
    assert item["image"].max() > 255
    assert torch.equal(item["image"], item["image"].round())


def test_without_soft_labels_has_no_soft_target(seg_set):
    item = make_ds(seg_set)[0]
    assert set(item["targets"]) == {"hard"}


def test_random_mode_requires_samples_per_epoch(seg_set):
    with pytest.raises(ConfigError, match="samples_per_epoch"):
        RandomCropSegmentationDataset(seg_set.csv, crop_size=CROP, n_classes=N_CLASSES)


def test_random_crops_match_source_pixels(seg_set):
    """Every random crop is some window of some image, with the matching mask and soft mask."""
    ds = make_ds(seg_set, soft_labels=True, samples_per_epoch=6)
    for i in range(len(ds)):
        item = ds[i]
        image = item["image"].numpy()
        found = False
        for src, mask, soft in zip(seg_set.images, seg_set.masks, seg_set.softs, strict=True):
            hits = np.argwhere(src[0, : HEIGHT - CROP + 1, : WIDTH - CROP + 1] == image[0, 0, 0])
            for r, c in hits:
                if np.array_equal(src[:, r : r + CROP, c : c + CROP], image):
                    assert np.array_equal(
                        item["targets"]["hard"].numpy(), mask[r : r + CROP, c : c + CROP]
                    )
                    assert np.allclose(
                        item["targets"]["soft"].numpy(), soft[:, r : r + CROP, c : c + CROP]
                    )
                    found = True
        assert found, f"item {i} is not a window of any image"


def test_augmented_image_and_masks_stay_aligned(tmp_path):
    """Pixels encode their own (row, col); after flips/rotations all targets must agree."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([rows, cols, rows * 0 + 7]).astype(np.float32)
    hard = ((rows + 2 * cols) % N_CLASSES).astype(np.uint8)
    logits = np.stack([np.sin(rows * (k + 1) + cols * 0.3 * k) for k in range(N_CLASSES)])
    soft = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    write_tif(tmp_path / "img.tif", image)
    write_tif(tmp_path / "mask.tif", hard)
    write_tif(tmp_path / "soft.tif", soft)
    csv_path = write_csv(
        tmp_path / "d.csv", [["img.tif", "mask.tif", "soft.tif"]], ("image", "mask", "soft_mask")
    )
    ds = RandomCropSegmentationDataset(
        csv_path,
        crop_size=CROP,
        n_classes=N_CLASSES,
        samples_per_epoch=12,
        soft_labels=True,
        augmentation_list=[A.HorizontalFlip(p=0.5), A.RandomRotate90(p=1.0), A.Transpose(p=0.5)],
    )
    torch.manual_seed(0)
    seen_transformed = False
    for i in range(len(ds)):
        item = ds[i]
        r = item["image"][0].long().numpy()
        c = item["image"][1].long().numpy()
        assert np.array_equal(item["targets"]["hard"].numpy(), hard[r, c])
        assert np.allclose(item["targets"]["soft"].numpy(), soft[:, r, c])
        # the crop is not simply the source orientation for at least some items
        seen_transformed |= not np.array_equal(r[0], np.full(CROP, r[0, 0]))
    assert seen_transformed


def test_crops_read_only_their_window(seg_set, read_log):
    ds = make_ds(seg_set, soft_labels=True)
    read_log.clear()  # validation reads are checked in test_validation
    for i in range(len(ds)):
        ds[i]
    assert len(read_log) == 3 * len(ds)  # image, mask, soft per item
    assert {(h, w) for _, h, w in read_log} == {(CROP, CROP)}
    # handles are opened once per file and reused
    assert len(ds._handles) <= 3 * len(seg_set.images)


def test_grid_mode_covers_every_pixel_once(seg_set):
    ds = make_ds(seg_set, soft_labels=True, grid_mode=True, samples_per_epoch=None)
    tiles_per_image = -(-HEIGHT // CROP) * -(-WIDTH // CROP)
    assert len(ds) == tiles_per_image * len(seg_set.images)
    coverage = [np.zeros((HEIGHT, WIDTH), int) for _ in seg_set.images]
    previous = None
    saw_edge = False
    for i in range(len(ds)):
        item = ds[i]
        img, r, c, h, w = item["window"].tolist()
        assert item["window"].dtype == torch.int64
        if previous is not None and previous[0] == img:
            assert (r, c) > previous[1:]  # row-major order
        previous = (img, r, c)
        coverage[img][r : r + h, c : c + w] += 1
        assert np.array_equal(
            item["image"][:, :h, :w].numpy(), seg_set.images[img][:, r : r + h, c : c + w]
        )
        assert np.array_equal(
            item["targets"]["hard"][:h, :w].numpy(), seg_set.masks[img][r : r + h, c : c + w]
        )
        assert np.allclose(
            item["targets"]["soft"][:, :h, :w].numpy(), seg_set.softs[img][:, r : r + h, c : c + w]
        )
        if (h, w) != (CROP, CROP):
            saw_edge = True
            pad = torch.ones(CROP, CROP, dtype=torch.bool)
            pad[:h, :w] = False
            assert (item["targets"]["hard"][pad] == 255).all()
            assert (item["image"][:, pad] == 0).all()
            assert (item["targets"]["soft"][:, pad] == 0).all()
        assert item["image"].shape == (4, CROP, CROP)
    assert saw_edge
    for cov in coverage:
        assert (cov == 1).all()


def test_random_mode_is_reproducible_with_torch_seed(seg_set):
    ds = make_ds(seg_set, soft_labels=True, augmentation_list=[A.Rotate(limit=40, p=1.0)])

    def draw():
        return [ds[i] for i in range(4)]

    torch.manual_seed(123)
    first = draw()
    torch.manual_seed(123)
    second = draw()
    torch.manual_seed(124)
    third = draw()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["targets"]["soft"], b["targets"]["soft"])
    assert any(not torch.equal(a["image"], c["image"]) for a, c in zip(first, third, strict=True))


def test_images_are_drawn_in_proportion_to_crop_positions(tmp_path):
    write_tif(tmp_path / "big.tif", np.zeros((1, 40, 40), np.uint8))
    write_tif(tmp_path / "small.tif", np.zeros((1, CROP, CROP + 1), np.uint8))
    csv_path = write_csv(
        tmp_path / "d.csv", [["big.tif", "big.tif"], ["small.tif", "small.tif"]], ("image", "mask")
    )
    ds = RandomCropSegmentationDataset(csv_path, crop_size=CROP, n_classes=2, samples_per_epoch=1)
    torch.manual_seed(0)
    picks = np.array([ds._random_window()[0] for _ in range(3000)])
    expected = 2 / (25 * 25 + 2)
    assert abs((picks == 1).mean() - expected) < 0.01
    assert (picks == 1).any()


@pytest.mark.parametrize("soft", ["uint8", "npy"])
def test_soft_mask_formats(seg_factory, soft, monkeypatch):
    data = seg_factory(soft=soft)
    loads = []
    real_load = np.load
    monkeypatch.setattr(
        np, "load", lambda *a, **k: loads.append(k.get("mmap_mode")) or real_load(*a, **k)
    )
    ds = make_ds(data, soft_labels=True, grid_mode=True)
    item = ds[0]
    soft_out = item["targets"]["soft"].numpy()
    assert soft_out.dtype == np.float32 and soft_out.max() <= 1.0
    tol = 0.5 / 255 + 1e-6 if soft == "uint8" else 1e-6
    assert np.abs(soft_out - data.softs[0][:, :CROP, :CROP]).max() <= tol
    if soft == "npy":
        assert loads and set(loads) == {"r"}


def test_png_pair(png_set):
    ds = make_ds(png_set, grid_mode=True)
    item = ds[0]
    assert item["image"].shape == (3, CROP, CROP)
    assert np.array_equal(item["image"].numpy(), png_set.images[0][:, :CROP, :CROP])
    assert np.array_equal(item["targets"]["hard"].numpy(), png_set.masks[0][:CROP, :CROP])


def test_to_tensor_v2_does_not_change_output(seg_set):
    norm = A.Normalize(mean=(0.1,) * 4, std=(0.2,) * 4, max_pixel_value=4000.0)
    base = [A.HorizontalFlip(p=1.0), norm]
    variants = [base, [*base, ToTensorV2()], [*base, ToTensorV2(transpose_mask=True)]]
    outputs = []
    for augs in variants:
        ds = make_ds(seg_set, soft_labels=True, grid_mode=True, augmentation_list=augs)
        outputs.append(ds[1])
    ref = outputs[0]
    assert ref["image"].dtype == torch.float32 and abs(float(ref["image"].mean())) < 5
    for out in outputs[1:]:
        assert torch.equal(out["image"], ref["image"])
        assert torch.equal(out["targets"]["hard"], ref["targets"]["hard"])
        assert out["targets"]["hard"].dtype == torch.int64
        assert torch.equal(out["targets"]["soft"], ref["targets"]["soft"])


def test_normalize_leaves_soft_mask_alone_and_dict_specs_work(seg_set):
    specs = [
        {"_target_": "albumentations.HorizontalFlip", "p": 1.0},
        OmegaConf.create(
            {"_target_": "albumentations.Normalize", "mean": [0.0] * 4, "std": [1.0] * 4}
        ),
    ]
    # configs are built by the application layer; the dataset gets transforms
    built = [build(spec, "augmentation_list") for spec in specs]
    ds = make_ds(seg_set, soft_labels=True, grid_mode=True, augmentation_list=built)
    item = ds[0]
    soft_src = seg_set.softs[0][:, :CROP, :CROP][:, :, ::-1]
    assert np.allclose(item["targets"]["soft"].numpy(), soft_src)
    assert np.array_equal(item["targets"]["hard"].numpy(), seg_set.masks[0][:CROP, :CROP][:, ::-1])
    expected = seg_set.images[0][:, :CROP, :CROP][:, :, ::-1] / 255.0
    assert np.allclose(item["image"].numpy(), expected, atol=1e-4)


def test_build_augmentations_variants():
    assert build_augmentations(None) is None
    assert build_augmentations([]) is None
    user = A.Compose([A.HorizontalFlip(p=1.0)])
    built = build_augmentations(user)
    assert "soft_mask" in built.additional_targets
    assert "soft_mask" not in user.additional_targets  # caller's object untouched
    with pytest.raises(ConfigError, match=r"augmentation_list\[0\]"):
        build_augmentations([{"p": 1.0}])
    with pytest.raises(ConfigError, match="augmentation_list"):
        build_augmentations(["HorizontalFlip"])


def test_augmentation_configs_are_built_by_the_app_layer():
    with pytest.raises(ConfigError, match=r"augmentation_list\[0\].*polyhead.config.build"):
        build_augmentations([{"_target_": "torchvision.transforms.RandomRotation", "degrees": 5}])
    with pytest.raises(ConfigError, match=r"augmentation_list\[0\].*polyhead.config.build"):
        build_augmentations([{"_target_": "albumentations.HorizontalFlip", "p": 1.0}])
    built = build_augmentations([A.HorizontalFlip(p=1.0)])
    assert isinstance(built.transforms[0], A.HorizontalFlip)


def test_make_loader_batches(seg_set):
    cfg = OmegaConf.create({"batch_size": 4, "shuffle": False, "drop_last": True, "num_workers": 0})
    ds = make_ds(seg_set, soft_labels=True, samples_per_epoch=10, data_loader=cfg)
    assert type(ds.loader_options) is dict and ds.loader_options["batch_size"] == 4
    batches = list(ds.make_loader())
    assert len(batches) == 2
    batch = batches[0]
    assert batch["image"].shape == (4, 4, CROP, CROP)
    assert batch["targets"]["hard"].shape == (4, CROP, CROP)
    assert batch["targets"]["soft"].shape == (4, N_CLASSES, CROP, CROP)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert len(list(ds.make_loader(batch_size=5, drop_last=False))) == 2
    with pytest.raises(ConfigError, match="unknown key"):
        make_ds(seg_set, data_loader={"batchsize": 4})


def test_pickle_drops_handles(seg_set):
    ds = make_ds(seg_set, grid_mode=True)
    first = ds[0]
    assert len(ds._handles) > 0
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._handles) == 0
    assert torch.equal(clone[0]["image"], first["image"])


def test_handle_cache_is_per_process(seg_set, monkeypatch):
    ds = make_ds(seg_set, grid_mode=True)
    ds[0]
    parent = dict(ds._handles._handles)
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as seen from a forked worker
    assert len(ds._handles) == 0
    ds[0]
    assert all(ds._handles._handles[p] is not h for p, h in parent.items())


def test_loader_with_two_workers(seg_set):
    ds = make_ds(seg_set, soft_labels=True, grid_mode=True, data_loader={"batch_size": 9})
    ds[0]  # parent opens handles before the workers start
    loader = ds.make_loader(num_workers=2, multiprocessing_context="spawn")
    assert loader.persistent_workers
    batches = list(loader)
    windows = torch.cat([b["window"] for b in batches])
    assert windows.shape == (len(ds), 5)
    assert torch.equal(windows, torch.from_numpy(ds.tiles))
    assert torch.equal(batches[0]["image"][0], ds[0]["image"])


def test_raster_io_windows_match_full_reads(seg_set):
    path = seg_set.image_paths[0]
    window = raster_io.read_window(path, 5, 7, 10, 12)
    assert np.array_equal(window, seg_set.images[0][:, 5:15, 7:19])
    info = raster_io.raster_info(path)
    assert (info.height, info.width, info.count, info.dtype) == (HEIGHT, WIDTH, 4, "uint16")
