"""Fixtures of the trust suite: small full filesystems and hand-made checkpoints."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a tmpfs of ``size`` (e.g. "64k"); needs root and mount (skipped
    otherwise). Unmounted at the end."""
    mounted = []

    def make(size: str = "64k"):
        if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("a small tmpfs needs root and mount")
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        mounted.append(disk)
        return disk

    yield make
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=False)


def write_scene(path, bands=4, size=256, seed=0, dtype="float32"):
    """A random georeferenced raster ``[bands, size, size]``."""
    rng = np.random.default_rng(seed)
    data = rng.random((bands, size, size)).astype(dtype)
    profile = dict(driver="GTiff", height=size, width=size, count=bands, dtype=dtype)
    profile.update(crs="EPSG:32631", transform=from_origin(500000, 4000000, 1, 1))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def conv_checkpoint(tmp_path):
    """A checkpoint of a 1x1 conv (4 bands -> 3 classes) with its stored config."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 3, 1)
    path = tmp_path / "conv.ckpt"
    model = {"_target_": "torch.nn.Conv2d", "in_channels": 4, "out_channels": 3}
    model["kernel_size"] = 1
    torch.save(
        {
            "polyhead_config": {"model": model},
            "state_dict": {f"model.{k}": v for k, v in conv.state_dict().items()},
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def trained_dual(synthetic, tmp_path_factory):
    """A dual-head checkpoint trained for one tiny epoch."""
    from polyhead.demo.run import demo_config
    from polyhead.train import train

    out = tmp_path_factory.mktemp("dual")
    cfg = demo_config(synthetic, out, 1, "resnet18", crop_size=32, samples_per_epoch=8)
    cfg["model"]["decoder_channels"] = 16
    cfg["train_dataset"]["data_loader"]["batch_size"] = 4
    cfg["pl_trainer"].update(enable_progress_bar=False, enable_model_summary=False)
    result = train(cfg)
    return result.best_checkpoint or result.last_checkpoint
