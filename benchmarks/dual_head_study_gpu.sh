#!/usr/bin/env bash
# The dual-head study on one GPU (docs/dual-head.md): 2 settings x 6 rows x 3 seeds in 8
# processes; results, markdown and reliability PNGs (5 files) into $OUT. Needs PYTHONPATH=src
# and the wheels of segmentation_models_pytorch and rasterio installed first.
set -eo pipefail
export PYTHONUNBUFFERED=1
python3 benchmarks/dual_head_study.py --device cuda --workers 8 --out "$OUT" \
    --md "$OUT/dual_head_study.md" --size 128 --n-train 96 --n-val 12 --n-test 24 \
    --epochs 40 --seeds 3 2>&1 | tee "$OUT/dual_head_study.log"
