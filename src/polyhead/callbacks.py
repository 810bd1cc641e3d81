"""Lightning callbacks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


class EMACallback(pl.Callback):
    """Exponential moving average of the module's weights, used for validation and checkpoints.

    After every optimizer step ``ema = d * ema + (1 - d) * weights`` over all floating-point
    entries of the state dict (parameters and BatchNorm statistics). With ``warmup`` the decay
    is ``min(decay, (1 + n) / (10 + n))`` at update ``n``, so short runs are not dominated by
    the random initial weights. Validation runs on the EMA weights (the training weights are
    restored afterwards) and every saved checkpoint's ``state_dict`` holds the EMA weights, so
    a checkpoint selected on ``loss/val`` is the model that was validated.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, every_n_steps: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMACallback: decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.every_n_steps = every_n_steps
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {}
        self._backup: dict[str, torch.Tensor] = {}

    @staticmethod
    def _float_state(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pl_module.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self._float_state(pl_module)
        if self.shadow.keys() != state.keys():  # fresh start, or a model that changed
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        else:  # resumed: move the loaded shadow next to the weights
            self.shadow = {k: v.to(state[k].device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        d = self.current_decay()
        state = self._float_state(pl_module)
        keys = list(self.shadow)
        shadow = [self.shadow[k] for k in keys]
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, [state[k].detach() for k in keys], alpha=1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        if not self.shadow or self._backup:
            return
        state = self._float_state(pl_module)
        self._backup = {k: state[k].detach().clone() for k in self.shadow}
        for k, v in self.shadow.items():
            state[k].copy_(v)

    @torch.no_grad()
    def _swap_out(self, pl_module: pl.LightningModule) -> None:
        state = self._float_state(pl_module)
        for k, v in self._backup.items():
            state[k].copy_(v)
        self._backup = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._swap_in(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.shadow:
            state = checkpoint["state_dict"]
            for k, v in self.shadow.items():
                state[k] = v.detach().clone().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict.get("num_updates", 0))
