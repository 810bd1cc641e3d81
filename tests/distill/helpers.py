"""Shared helpers of the distillation tests: tiny teachers trained with a plain loop."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from polyhead.demo.distill_configs import teacher_config

TEACHER_ENCODER = "tu-mobilenetv3_small_050"  # ~0.3 M parameters: quick on a busy CPU
FAST = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,
    "logger": False,
}


def train_teacher(data, out: Path, decoder: str, seed: int, steps: int = 40) -> Path:
    """A polyhead checkpoint trained with a plain loop (Lightning's start-up is not under test)."""
    cfg = teacher_config(data, out, decoder, seed, crop_size=32, samples_per_epoch=8 * steps)
    cfg["model"]["encoder_name"] = TEACHER_ENCODER
    torch.manual_seed(seed)
    model = instantiate(cfg["model"], _convert_="all")
    loader = instantiate(cfg["train_dataset"], _convert_="all").make_loader()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for batch in loader:
        loss = F.cross_entropy(
            model(batch["image"])["A"], batch["targets"]["hard"], ignore_index=255
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "teacher.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"polyhead_config": cfg, "state_dict": state}, path)
    return path
