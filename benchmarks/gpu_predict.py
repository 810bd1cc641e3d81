"""predict_raster throughput against its two ceilings, on a GPU (or the CPU with --smoke).

Self-contained (polyhead.inference / polyhead.models, torch, numpy, rasterio). It writes a
square 4-band uint8 GeoTIFF (tiled 512, uncompressed) in a temp folder and measures, with
the variants interleaved round by round after one warm-up run each:

  1. floor: read every window predict_raster reads + write a uint8 class map (rasterio),
     vs predict_raster with a 1x1 conv 4 -> 4 (model cost ~0): the pipeline's own overhead;
     and that conv's own forward over the same number of tiles (what "~0" costs here), and
     the least compute any tiled prediction needs with it (uint8 -> float, the conv, an
     arg-max per pixel; no IO, no blending): the floor's time over that one is the best
     ratio a pipeline could reach if every read and write were hidden;
  2. the ResNet-34 dual-head UPerNet (random init, 6 classes), tiles 512, overlap 64:
     predict_raster vs the model's own forward (``model(x)`` on random batches of the same
     size, the same number of tiles, the same precision / memory format), per variant
     (fp32, bf16, bf16 + channels_last on CUDA; fp32 on the CPU by default).

Ratios are medians of the per-round ratios; MP/s are medians. CUDA timings synchronise
before and after. Prints a markdown table and writes it to --out.

    python benchmarks/gpu_predict.py --out /tmp/gpu_predict.md            # H200: ~1-2 min
    python benchmarks/gpu_predict.py --smoke --out /tmp/smoke.md          # CPU, tiny sizes
    python benchmarks/gpu_predict.py --out /tmp/g.md --profile /tmp/prof  # + profiler traces
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from sliding_window import write_raster  # benchmarks/ (this script's folder) is on sys.path

from polyhead.allocator import keep_freed_memory
from polyhead.inference import n_tiles, predict_raster
from polyhead.inference.pipeline import argmax_classes, auto_io_threads
from polyhead.inference.raster_inputs import gdal_env
from polyhead.inference.tiling import band_layout, tile_starts
from polyhead.models import UPerNetDualHead

TILE, OVERLAP = 512, 64
VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16+cl": ("bf16", True)}
_INPUTS: dict[tuple[int, str], torch.Tensor] = {}


def floor_run(path: Path, out: Path, block_size: int, threads: int = 1) -> None:
    """Read the windows predict_raster reads (one per strip of each band), then write a
    uint8 class map (tiled 256, deflate, like polyhead's) of the same size, with the GDAL
    worker threads predict_raster gets on the device (``threads``)."""
    with gdal_env(threads), rasterio.open(path) as src:
        size = src.width
        ys = tile_starts(src.height, TILE, OVERLAP)
        for _, _, xs in band_layout(size, TILE, OVERLAP, block_size):
            for y0 in ys:
                src.read(window=Window(xs[0], y0, xs[-1] + TILE - xs[0], TILE))
    profile = dict(
        driver="GTiff", width=size, height=size, count=1, dtype="uint8", tiled=True,
        blockxsize=256, blockysize=256, compress="deflate", predictor=2, BIGTIFF="IF_SAFER",
    )  # fmt: skip
    classes = np.zeros((1, TILE, size), np.uint8)
    with gdal_env(threads), rasterio.open(out, "w", **profile) as dst:
        for row in range(0, size, TILE):
            h = min(TILE, size - row)
            classes[0, :h] = (np.arange(size)[None] // 97 + row // 89) % 6
            dst.write(classes[:, :h], window=Window(0, row, size, h))


def forward_run(model, tiles: int, batch: int, device, precision: str, cl: bool) -> None:
    """``model(x)`` on random ``[batch, 4, 512, 512]`` batches covering ``tiles`` tiles."""
    key = (batch, str(device))
    if key not in _INPUTS:  # made once: drawing random numbers is not the model's cost
        _INPUTS[key] = torch.rand((batch, 4, TILE, TILE), device=device)
    x = _INPUTS[key]
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
        for start in range(0, tiles, batch):
            model(x[: min(batch, tiles - start)])


def minimal_run(model, tiles: int, batch: int, device) -> None:
    """The least any tiled prediction with ``model`` computes, IO and blending left out:
    uint8 tiles converted to float32, the model, and the arg-max of one stride x stride
    crop per tile (the tiles' crops cover the raster about once), handed to the host."""
    key = (batch, str(device), "uint8")
    if key not in _INPUTS:
        _INPUTS[key] = torch.randint(0, 255, (batch, 4, TILE, TILE), device=device).byte()
    x, crop = _INPUTS[key], TILE - OVERLAP
    with torch.inference_mode():
        for start in range(0, tiles, batch):
            scores = model(x[: min(batch, tiles - start)].float())
            for tile in scores:
                argmax_classes(tile[:, :crop, :crop]).cpu()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of ``fn()``, synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], object]], rounds: int, device) -> dict:
    """One warm-up of each, then ``rounds`` rounds of each in turn: ``{name: [s, ...]}``."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    return times


def profiled(fn: Callable[[], object], device: torch.device, folder: Path) -> None:
    """``fn()`` under torch.profiler: ``ops.txt`` (by device time, else CPU time) and
    ``trace.json`` (chrome://tracing, Perfetto) in ``folder``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        timed(fn, device)
    folder.mkdir(parents=True, exist_ok=True)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    (folder / "ops.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=40))
    prof.export_chrome_trace(str(folder / "trace.json"))


def _waits(res) -> str:
    w = res.waits
    return f"{w.read:.3f} / {w.write:.3f} / {w.commit:.3f}"


def _ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(num, den, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU-friendly")
    parser.add_argument("--conv-size", type=int, default=8192, help="1x1-conv raster side")
    parser.add_argument("--real-size", type=int, default=8192, help="ResNet-34 raster side")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 CUDA, 4 CPU")
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--compress", action="store_true", help="deflate-compressed input (default: none)"
    )
    parser.add_argument(
        "--profile", type=Path, default=None,
        help="folder: one more ResNet-34 predict per variant under torch.profiler "
        "(op table by device time and a Chrome trace)",
    )  # fmt: skip
    parser.add_argument(
        "--cli-allocator", action="store_true",
        help="glibc's raised mmap/trim thresholds, as `polyhead predict` sets them "
        "(polyhead.allocator; default: the allocator a Python caller of predict_raster has)",
    )  # fmt: skip
    parser.add_argument(
        "--no-mkldnn",
        action="store_true",
        help="oneDNN off (at 2+ CPU threads it runs the 4-channel 1x1 conv ~20x slower)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cli_allocator:
        keep_freed_memory()
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    if args.smoke:
        args.conv_size, args.real_size, args.rounds = 1024, 512, min(args.rounds, 2)
    batch = args.batch_size or (16 if device.type == "cuda" else 4)
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else ["fp32"])
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        conv_path = write_raster(Path(tmp) / "conv.tif", args.conv_size, args.compress)
        real_path = conv_path
        if args.real_size != args.conv_size:
            real_path = write_raster(Path(tmp) / "real.tif", args.real_size, args.compress)
        out = Path(tmp) / "out.tif"
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(4, 4, 1)
        results = {}

        def predict(model, path, precision="fp32", cl=False) -> Callable[[], object]:
            def run() -> None:
                results[path] = predict_raster(
                    model, path, out, tile_size=TILE, overlap=OVERLAP, batch_size=batch,
                    device=device, progress=False, block_size=args.block_size,
                    precision=precision, channels_last=cl,
                )  # fmt: skip

            return run

        conv_tiles = n_tiles(args.conv_size, args.conv_size, TILE, OVERLAP)
        t = interleaved(
            {
                "floor": lambda: floor_run(
                    conv_path, out, args.block_size, auto_io_threads(None, device)
                ),
                "conv": predict(conv, conv_path),
                "conv forward": lambda: forward_run(conv, conv_tiles, batch, device, "fp32", False),
                "conv minimal": lambda: minimal_run(conv, conv_tiles, batch, device),
            },
            args.rounds,
            device,
        )
        mp = args.conv_size**2 / 1e6
        res = results[conv_path]
        rows.append(("read+write floor", "-", mp / statistics.median(t["floor"]), "1.00", "-", "-"))
        rows.append(
            (
                "model forward only, 1x1 conv 4->4", "fp32",
                mp / statistics.median(t["conv forward"]),
                f"{_ratio(t['floor'], t['conv forward']):.2f} of floor", f"{conv_tiles} tiles", "-",
            )
        )  # fmt: skip
        rows.append(
            (
                "least compute: uint8 -> float, 1x1 conv, arg-max (no IO, no blend)", "fp32",
                mp / statistics.median(t["conv minimal"]),
                f"{_ratio(t['floor'], t['conv minimal']):.2f} of floor", f"{conv_tiles} tiles", "-",
            )
        )  # fmt: skip
        rows.append(
            (
                "predict, 1x1 conv 4->4", "fp32", mp / statistics.median(t["conv"]),
                f"{_ratio(t['floor'], t['conv']):.2f} of floor",
                f"{res.n_tiles_run}/{res.n_tiles} = {res.n_tiles_run / res.n_tiles:.2f}x",
                _waits(res),
            )
        )  # fmt: skip
        torch.manual_seed(0)
        model = UPerNetDualHead(
            encoder_name="resnet34", encoder_weights=None, in_channels=4, classes=6
        ).to(device)
        model.eval()
        tiles = n_tiles(args.real_size, args.real_size, TILE, OVERLAP)
        mp = args.real_size**2 / 1e6
        for name in variants:
            precision, cl = VARIANTS[name]
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            t = interleaved(
                {
                    "forward": lambda p=precision, c=cl: forward_run(model, tiles, batch, device, p, c),
                    "predict": predict(model, real_path, precision, cl),
                },
                args.rounds,
                device,
            )  # fmt: skip
            res = results[real_path]
            rows.append(
                (
                    "model forward only, ResNet-34 UPerNet", name,
                    mp / statistics.median(t["forward"]), "1.00", f"{tiles} tiles", "-",
                )
            )  # fmt: skip
            rows.append(
                (
                    "predict, ResNet-34 UPerNet", name, mp / statistics.median(t["predict"]),
                    f"{_ratio(t['forward'], t['predict']):.2f} of forward",
                    f"{res.n_tiles_run}/{res.n_tiles} = {res.n_tiles_run / res.n_tiles:.2f}x",
                    _waits(res),
                )
            )  # fmt: skip
            if args.profile:
                profiled(predict(model, real_path, precision, cl), device, args.profile / name)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"predict_raster throughput on {gpu} (torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}{', oneDNN off' if args.no_mkldnn else ''}"
        f"{', the CLI allocator' if args.cli_allocator else ''}): 1x1-conv raster {args.conv_size}^2, ResNet-34 raster "
        f"{args.real_size}^2, 4-band uint8 ({'deflate' if args.compress else 'uncompressed'}), "
        f"tiles {TILE}, overlap {OVERLAP}, batch {batch}, io_threads "
        f"{auto_io_threads(None, device)}, "
        f"block_size {args.block_size}; medians of {args.rounds} interleaved rounds after one "
        "warm-up each; ratios = median of per-round time ratios.",
        "",
        "| measurement | precision | MP/s | ratio | tiles run / grid | waits read/write/commit s |",
        "|---|---|---:|---:|---|---|",
        *(f"| {a} | {b} | {c:.2f} | {d} | {e} | {f} |" for a, b, c, d, e, f in rows),
        "",
        "waits: seconds the compute thread of the last predict run waited for the reader "
        "thread, for the writer thread, and to close/check/rename the files "
        "(`PredictionResult.waits`).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
