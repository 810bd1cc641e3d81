"""One LightningDataModule for every polyhead dataset: it owns the training, validation and
test loaders.

Each dataset keeps its own ``data_loader`` options (``dataset.loader_options``, checked by
`polyhead.data.loader`); ``batch_size`` and ``num_workers`` given here apply to every loader
whose dataset does not set them, so the per-dataset value is the more specific one. The
training loader shuffles unless its dataset's ``data_loader`` says ``shuffle: false``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from polyhead.data.loader import make_loader
from polyhead.errors import ConfigError


class DataModule(pl.LightningDataModule):
    """Loaders for built datasets (segmentation or classification).

    Args:
        train_dataset: the training dataset.
        val_dataset: the validation dataset (no validation loop without it).
        test_dataset: the test dataset, for ``trainer.test``.
        batch_size: loader batch size where a dataset's ``data_loader`` sets none.
        num_workers: loader worker processes where a dataset's ``data_loader`` sets none.
    """

    def __init__(
        self,
        train_dataset: Dataset,
        val_dataset: Dataset | None = None,
        test_dataset: Dataset | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        if train_dataset is None:
            raise ConfigError("DataModule: train_dataset is required")
        for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < least
            ):
                raise ConfigError(
                    f"DataModule: {name} must be an integer >= {least}, got {value!r}"
                )
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.test_dataset = test_dataset
        self.defaults: dict[str, Any] = {
            k: v
            for k, v in (("batch_size", batch_size), ("num_workers", num_workers))
            if v is not None
        }

    def loader(self, dataset: Dataset, **defaults: Any) -> DataLoader:
        """A loader over ``dataset``: its own options over ``defaults`` over this module's."""
        own = dict(getattr(dataset, "loader_options", None) or {})
        return make_loader(dataset, {**self.defaults, **defaults, **own})

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self.loader(self.val_dataset) if self.val_dataset is not None else []

    def test_dataloader(self) -> DataLoader | list:
        return self.loader(self.test_dataset) if self.test_dataset is not None else []
