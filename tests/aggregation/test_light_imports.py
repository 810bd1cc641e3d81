"""`polyhead aggregate` runs without importing torch (numpy + rasterio only)."""

import subprocess
import sys

SCRIPT = """
import sys
from polyhead.cli import main
code = main(["aggregate", sys.argv[1], "--out", sys.argv[2], "--n-classes", "4", "--no-progress"])
heavy = [m for m in ("torch", "lightning", "torchmetrics", "albumentations") if m in sys.modules]
print(code, heavy)
"""


def test_aggregate_imports_no_torch(small_set, tmp_path):
    csv_path = small_set[0]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(csv_path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout + done.stderr
