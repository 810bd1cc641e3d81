"""`polyhead aggregate` runs without importing torch (numpy + rasterio only), and without
dask unless ``--scheduler`` asks for it."""

import subprocess
import sys

HEAVY = ("torch", "lightning", "torchmetrics", "albumentations", "dask", "distributed")

CLI = """
import sys
from polyhead.cli import main
code = main(["aggregate", sys.argv[1], "--out", sys.argv[2], "--n-classes", "4", "--no-progress",
             "--class-names", "a,b,c,d"])
heavy = [m for m in {heavy!r} if m in sys.modules]
print(code, heavy)
"""

PACKAGE = """
import sys
import polyhead.aggregation as agg
agg.aggregate_masks, agg.aggregate_labels, agg.dawid_skene  # resolve the lazy names
heavy = [m for m in {heavy!r} if m in sys.modules]
print(heavy)
"""


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_aggregate_cli_imports_no_torch(small_set, tmp_path):
    csv_path = small_set[0]
    assert _run(CLI, str(csv_path), str(tmp_path / "out")) == "0 []"
    assert (tmp_path / "out" / "confusion_matrices.png").is_file()


def test_import_aggregation_imports_no_torch():
    assert _run(PACKAGE) == "[]"
