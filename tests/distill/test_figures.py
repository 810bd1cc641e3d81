import numpy as np
import pytest
from PIL import Image

from polyhead.distill.figures import read_epoch_metrics, save_agreement_curves
from polyhead.errors import DataError

HEADER = (
    "epoch,step,loss/train,val/uncertainty/pearson,val/uncertainty/mean_pred,"
    "val/uncertainty/mean_target,val/uncertainty/std_pred,val/uncertainty/std_target\n"
)


def _log(path, rows):
    path.write_text(HEADER + "".join(rows))
    return path


def test_read_epoch_metrics_keeps_only_rows_with_the_column(tmp_path):
    csv = _log(
        tmp_path / "metrics.csv",
        [
            "0,9,1.5,,,,,\n",
            "0,9,,0.2,0.5,0.1,0.01,0.05\n",
            "1,19,1.1,,,,,\n",
            "1,19,,0.6,0.2,0.1,0.04,0.05\n",
        ],
    )
    m = read_epoch_metrics(csv)
    np.testing.assert_allclose(m["val/uncertainty/pearson"], [0.2, 0.6])
    np.testing.assert_allclose(m["val/uncertainty/pearson@epoch"], [0, 1])
    np.testing.assert_allclose(m["loss/train"], [1.5, 1.1])


def test_agreement_curves_png_and_missing_column(tmp_path):
    csv = _log(
        tmp_path / "a.csv", ["0,9,,0.2,0.5,0.1,0.01,0.05\n", "1,19,,0.6,0.2,0.1,0.04,0.05\n"]
    )
    out = save_agreement_curves(tmp_path / "curves.png", {"a": csv, "b": csv}, title="t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 800
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,val/uncertainty/pearson\n0,0.3\n")
    with pytest.raises(DataError, match="bad.csv.*mean_pred"):
        save_agreement_curves(tmp_path / "x.png", {"bad": bad})
