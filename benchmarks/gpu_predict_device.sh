#!/usr/bin/env bash
# predict_raster on one GPU against its two ceilings (benchmarks/gpu_predict.py), with
# torch.profiler tables and traces per variant, into $OUT. The device machine has torch but
# not rasterio or SMP: their wheels travel in .whl/ (carry it) and are installed first.
#   run: bash benchmarks/gpu_predict_device.sh      (carry [".whl"]; about 3-4 minutes)
set -eo pipefail
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install --quiet --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="src:benchmarks:/tmp/site:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_predict.py --out "$OUT/gpu_predict.md" --rounds 3 \
    --profile "$OUT/profile" 2>&1 | tee "$OUT/gpu_predict.log"
