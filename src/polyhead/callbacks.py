"""Lightning callbacks: weight EMA, RNG state for exact resumes, the run's checkpoints."""

from __future__ import annotations

import random
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import numpy as np
import torch


class EMACallback(pl.Callback):
    """Exponential moving average of the module's weights, used for validation and checkpoints.

    After every optimizer step ``ema = d * ema + (1 - d) * weights`` over all floating-point
    entries of the state dict (parameters and BatchNorm statistics). With ``warmup`` the decay
    is ``min(decay, (1 + n) / (10 + n))`` at update ``n``, so short runs are not dominated by
    the random initial weights. Validation runs on the EMA weights (the training weights are
    restored afterwards) and every saved checkpoint's ``state_dict`` holds the EMA weights, so
    a checkpoint selected on ``loss/val`` is the model that was validated. A full checkpoint
    also keeps the training weights in this callback's state, so a resumed run continues from
    them (and from the EMA) exactly.
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
            own = checkpoint.get("callbacks", {}).get(self.state_key)
            if own is not None:  # a full checkpoint: keep the training weights for a resume
                own["training_weights"] = {k: state[k].detach().clone().cpu() for k in self.shadow}
            for k, v in self.shadow.items():
                state[k] = v.detach().clone().cpu()

    @torch.no_grad()
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Resuming: the loaded ``state_dict`` is the EMA; put the training weights back."""
        own = checkpoint.get("callbacks", {}).get(self.state_key) or {}
        training = own.get("training_weights")
        if not training:  # older checkpoints: training continues from the EMA weights
            return
        state = self._float_state(pl_module)
        self.shadow = {k: state[k].detach().clone() for k in training}
        for k, v in training.items():
            state[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict.get("num_updates", 0))


class RNGStateCallback(pl.Callback):
    """Saves the torch (CPU and CUDA), numpy and Python ``random`` generator states in every
    full checkpoint and sets them again when a run resumes from it, so its batches, crops and
    augmentations are those the uninterrupted run would have drawn.

    The states are taken when the checkpoint is written (after validation) and set while
    Lightning restores the checkpoint, before the first training batches are drawn (Lightning
    creates that epoch's loader iterator before ``on_train_start``). The sanity-check
    validation is made to draw nothing, fresh or resumed, so it cannot shift them.
    """

    def __init__(self) -> None:
        self._before_sanity_check: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_sanity_check = self.state_dict()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._before_sanity_check is not None:
            self.load_state_dict(self._before_sanity_check)
            self._before_sanity_check = None


class RunCheckpoint(pl.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` whose ``last.ckpt`` is always written in full (resumable) and whose
    monitored/top-k checkpoints hold only the weights when ``best_weights_only`` (the EMA
    weights when an `EMACallback` runs): about a third of a full AdamW checkpoint.

    Weights-only saves need `polyhead.checkpoint_io.AtomicCheckpointIO` on the trainer; with
    another checkpoint IO they are written in full.
    """

    def __init__(self, *args: Any, best_weights_only: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_last", True)
        super().__init__(*args, **kwargs)
        self.best_weights_only = best_weights_only or self.save_weights_only
        self.save_weights_only = False  # last.ckpt: always everything a resume needs

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_when_due(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_when_due(trainer)

    def _save_last_when_due(self, trainer: pl.Trainer) -> None:
        """``last.ckpt`` every ``every_n_epochs``, also when no top-k checkpoint was saved
        (Lightning >= 2.5 writes it only beside a new top-k one)."""
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):
            return
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        from polyhead.checkpoint_io import AtomicCheckpointIO

        slim = filepath != self.last_model_path and self.best_weights_only
        if not slim or not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            return super()._save_checkpoint(trainer, filepath)
        # a full dump (callbacks run, so the EMA weights are in it), written without the
        # training state: weights_only=True would skip the callbacks and store raw weights
        trainer.save_checkpoint(filepath, weights_only=False, storage_options=SLIM)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


#: storage options of a weights-only save (see `polyhead.checkpoint_io`)
SLIM = {"weights_only": True}
