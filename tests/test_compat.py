import pytest

from polyhead.compat import resolve_aliases
from polyhead.errors import ConfigError


def test_aliases_rewrite_and_report_once():
    lines = []
    cfg = {
        "model": {
            "_target_": "pytorch_segmentation_models_trainer.custom_models."
            "upernet_dual_head.UPerNetDualHead"
        },
        "callbacks": [
            {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint"},
            {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint"},
            {"_target_": "torch.nn.Identity"},
        ],
    }
    out = resolve_aliases(cfg, report=lines.append)
    assert out["model"]["_target_"] == "polyhead.models.UPerNetDualHead"
    assert out["callbacks"][0]["_target_"] == "lightning.pytorch.callbacks.ModelCheckpoint"
    assert out["callbacks"][2]["_target_"] == "torch.nn.Identity"
    assert len(lines) == 2
    assert cfg["callbacks"][0]["_target_"].startswith("pytorch_lightning")  # input untouched


def test_unknown_seed_target_lists_supported():
    with pytest.raises(ConfigError, match="supported seed targets"):
        resolve_aliases({"_target_": "pytorch_segmentation_models_trainer.other.Thing"})
