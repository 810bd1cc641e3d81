"""Lightning checkpoints whole-or-absent: written through `polyhead.io.atomic_write`.

Lightning's own `TorchCheckpointIO` serialises into memory and moves a temp file into place,
but through fsspec, whose temp may sit on another filesystem (``$TMPDIR``): a killed run or a
full disk can then leave a truncated checkpoint under its final name. `AtomicCheckpointIO`
streams ``torch.save`` into a temp beside the target (same folder, same filesystem), flushes
it to disk and renames it; on any failure the temp is deleted and the previous file stays.

``storage_options={"weights_only": True}`` (what `polyhead.callbacks.RunCheckpoint` passes for
its best checkpoints) drops the training state (optimizer, schedulers, callbacks, precision
plugin) and keeps the weights, loops, epoch/step and the run config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from polyhead.io import WriteError, atomic_write

#: what a full checkpoint holds beyond the weights: what resuming needs, and nothing else does
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks")
PRECISION_SUFFIX = "Precision"  # precision plugins store their state under their class name


def weights_only_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``checkpoint`` without its training state (see `TRAINING_STATE_KEYS`)."""
    return {
        k: v
        for k, v in checkpoint.items()
        if k not in TRAINING_STATE_KEYS and not k.endswith(PRECISION_SUFFIX)
    }


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes through `polyhead.io.atomic_write` (see module docs) and
    reads (to resume) with ``torch.load(weights_only=True)``: tensors and plain data only."""

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        from polyhead.checkpoint import SAFE_TYPES  # paths a run config may hold

        with torch.serialization.safe_globals(list(SAFE_TYPES)):
            return super().load_checkpoint(
                path,
                map_location=map_location or (lambda storage, loc: storage),
                weights_only=True if weights_only is None else weights_only,
            )

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        options = dict(storage_options or {})
        if options.pop("weights_only", False):
            checkpoint = weights_only_checkpoint(checkpoint)
        if options:
            raise TypeError(f"{type(self).__name__}: unknown storage_options {sorted(options)}")
        path = Path(path)
        try:
            with atomic_write(path) as tmp:
                torch.save(checkpoint, tmp)
        except WriteError:
            raise
        except (OSError, RuntimeError) as err:  # e.g. disk full while torch.save streams
            raise WriteError(f"could not write {path}: {err}") from err
