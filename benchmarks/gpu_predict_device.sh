#!/usr/bin/env bash
# predict_raster on one GPU against its two ceilings (benchmarks/gpu_predict.py), with
# torch.profiler tables and traces per variant, into $OUT. The device machine has torch but
# not rasterio or SMP: their wheels travel in .whl/ (carry it) and are installed first.
#   run: bash benchmarks/gpu_predict_device.sh      (carry [".whl"]; about 5-6 minutes)
# Then the same with a deflate-compressed input (bf16), and GDAL threads 1 vs the CPUs.
set -eo pipefail
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install --quiet --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="src:benchmarks:/tmp/site:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_predict.py --out "$OUT/gpu_predict.md" --rounds 3 \
    --profile "$OUT/profile" 2>&1 | tee "$OUT/gpu_predict.log"
python3 benchmarks/gpu_predict.py --out "$OUT/gpu_predict_deflate.md" --rounds 3 --compress \
    --variants bf16 2>&1 | tee "$OUT/gpu_predict_deflate.log"
python3 benchmarks/io_threads.py --size 8192 --threads "$(nproc)" --device cuda --rounds 3 \
    --out "$OUT/io_threads.md" 2>&1 | tee "$OUT/io_threads.log"
