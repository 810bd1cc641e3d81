import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from polyhead.callbacks import EMACallback


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen_at_val: list[torch.Tensor] = []

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, _):
        self.seen_at_val.append(self.layer.weight.detach().clone())
        x, y = batch
        self.log("loss/val", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Recorder(pl.Callback):
    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.weights.append(pl_module.layer.weight.detach().clone())


def test_ema_matches_hand_computed_average_and_is_used_for_val_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    module, rec = Tiny(), Recorder()
    init = module.layer.weight.detach().clone()
    ema = EMACallback(decay=0.5, warmup=False)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[rec, ema, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(data, batch_size=8))
    expected = init
    for w in rec.weights:  # 4 optimizer steps
        expected = 0.5 * expected + 0.5 * w
    assert not torch.allclose(expected, rec.weights[-1])
    torch.testing.assert_close(module.seen_at_val[-1], expected)  # validated on EMA weights
    torch.testing.assert_close(module.layer.weight, rec.weights[-1])  # training weights back
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]["layer.weight"]
    torch.testing.assert_close(saved, expected)


def test_warmup_decay_ramps():
    ema = EMACallback(decay=0.999)
    assert ema.current_decay() == 0.1
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999
