"""Learned loss balancing under ``strategy: ddp`` (2 CPU processes, gloo)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, Dataset
    from polyhead.losses.balancing import DynamicWeightAveraging, UncertaintyWeighting
    from polyhead.models import MultiHeadSegmentationModel
    from polyhead.tasks import SegmentationTask

    class Random(Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            hard = torch.randint(0, 3, (32, 32), generator=g)
            return {
                "image": torch.randn(3, 32, 32, generator=g),
                "targets": {
                    "hard": hard,
                    "soft": torch.nn.functional.one_hot(hard, 3).permute(2, 0, 1).float(),
                    "cover": torch.rand(2, generator=g),
                },
                # rank 0 sees samples 0, 2, ...: the soft target is missing on every other one
                "present": {"soft": i % 4 != 0, "cover": i % 2 == 1},
            }

    out, kind = sys.argv[1], sys.argv[2]
    pl.seed_everything(0)
    heads = {
        "A": {"decoder": "fpn", "role": "hard", "decoder_segmentation_channels": 32},
        "B": {"decoder": "fpn", "role": "soft", "decoder_segmentation_channels": 32},
        "cover": {"role": "regression", "classes": 2},
    }
    model = MultiHeadSegmentationModel(heads, encoder_name="resnet18", classes=3)
    balancing = UncertaintyWeighting() if kind == "uncertainty" else DynamicWeightAveraging()
    task = SegmentationTask(model, balancing=balancing, consistency_warmup_epochs=0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(task, DataLoader(Random(), batch_size=2))
    state = {k: v.tolist() for k, v in task.criterion.balancer.state_dict().items()}
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as fh:
        json.dump(state, fh)
    """
)


@pytest.mark.slow  # two processes starting torch and Lightning, 3 epochs: about a minute each
@pytest.mark.parametrize("kind", ["uncertainty", "dwa"])
def test_balancer_state_is_identical_on_both_ddp_ranks(kind, tmp_path):
    script = tmp_path / "ddp_balance.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), kind],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    if kind == "uncertainty":
        values = [ranks[0][f"log_vars.{t}"] for t in ("A", "B", "cover", "consistency")]
        assert all(v != 0.0 for v in values)  # learnt (gradients reached them) ...
        assert all(-4.0 <= v <= 4.0 for v in values)  # ... and bounded
    else:
        assert all(v == v for v in ranks[0]["history"][1])  # epoch means, reduced: no NaN
