"""Dense CRF on the synthetic scenes: mIoU and boundary F1 before/after, CRF time per MP.

Generates the synthetic dataset (4 bands, 4 classes, three simulated annotators), trains
a small dual-head model briefly (``train(demo_config(...))``, resnet18, random init),
predicts every validation scene with sliding windows (head ``average``), then refines the
probabilities with `dense_crf` (guided by the raw uint16 bands, percentile-stretched) for
a few parameter settings. Scores are against the true land cover (``truth/``): mIoU,
pixel accuracy and boundary F1 (all-class boundaries and the per-class mean) at 1 and
2 px tolerance. With ``--reference-python`` (an interpreter with ``pydensecrf`` from
``pydensecrf2`` and numpy) the same probabilities also go through the reference C++
implementation, with the same kernels and all bands as features, for agreement and time.

    uv run python benchmarks/crf_synthetic.py
    uv run python benchmarks/crf_synthetic.py --reference-python /tmp/crfvenv/bin/python

Then ``dense_crf`` alone on one large rendered scene (``--memory-size``, noisy one-hot
probabilities) in a fresh subprocess: seconds per megapixel and peak memory growth (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from polyhead.checkpoint import load_checkpoint
from polyhead.demo.run import demo_config
from polyhead.demo.synthetic import generate_synthetic_dataset
from polyhead.inference import BoundaryF1, dense_crf, predict_array
from polyhead.metrics import SegmentationMetrics
from polyhead.train import train

SETTINGS = {
    "default (sxy 80, srgb 13, w 10; gauss 3, w 3)": {},
    "local (sxy 20, srgb 10, w 5; gauss 3, w 3)": {
        "sxy_bilateral": 20,
        "srgb_bilateral": 10,
        "w_bilateral": 5,
    },
    "smooth only (gauss 3, w 3)": {"w_bilateral": 0},
}

REFERENCE = r"""
import json, sys, time, numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import create_pairwise_bilateral
d = np.load(sys.argv[1])
p, img = d["probs"], d["image"]
k, h, w = p.shape
t = time.perf_counter()
c = dcrf.DenseCRF2D(w, h, k)
c.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(p, 1e-8)).reshape(k, -1)))
c.addPairwiseGaussian(sxy=3, compat=3)
feats = create_pairwise_bilateral(sdims=(80, 80), schan=(13,) * img.shape[0],
                                  img=np.ascontiguousarray(img.transpose(1, 2, 0)), chdim=2)
c.addPairwiseEnergy(feats, compat=10)
q = np.array(c.inference(5), dtype=np.float32).reshape(k, h, w)
np.save(sys.argv[2], q)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


class Scores:
    """mIoU / accuracy (SegmentationMetrics) and boundary F1 at 1 and 2 px."""

    def __init__(self, k: int) -> None:
        self.seg = SegmentationMetrics(k, ignore_index=255)
        self.bf = {t: BoundaryF1(tolerance=t, num_classes=k) for t in (1, 2)}

    def update(self, probs: np.ndarray, truth: np.ndarray) -> None:
        self.seg.update(
            torch.from_numpy(probs)[None], torch.from_numpy(truth.astype(np.int64))[None]
        )
        for m in self.bf.values():
            m.update(probs.argmax(0), truth)

    def row(self) -> str:
        s = self.seg.compute()
        bf = {t: m.compute() for t, m in self.bf.items()}
        return (
            f"{float(s['mIoU']):.4f} {float(s['pixel_accuracy']):.4f} "
            f"{bf[1]['f1']:.4f} {bf[2]['f1']:.4f} {bf[2]['mean_class_f1']:.4f}"
        )


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def memory_child(size: int) -> None:
    """In a fresh process: dense_crf on one rendered ``size`` px scene; prints JSON."""
    from polyhead.demo.scenes import land_cover_map, render_scene

    rng = np.random.default_rng(0)
    truth = land_cover_map(rng, size, 4)
    image = render_scene(rng, truth, 4)
    logits = np.eye(4, dtype=np.float32)[truth].transpose(2, 0, 1)
    logits += rng.standard_normal(logits.shape, dtype=np.float32)
    probs = np.exp(logits)
    probs /= probs.sum(0)
    del logits
    base = _hwm_mib()
    start = time.perf_counter()
    refined = dense_crf(probs, image)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mib": _hwm_mib(),
                "base_mib": base,
                "acc_before": float((probs.argmax(0) == truth).mean()),
                "acc_after": float((refined.argmax(0) == truth).mean()),
            }
        )
    )


def memory_run(size: int, threads: int) -> None:
    res = subprocess.run(
        [sys.executable, __file__, "--threads", str(threads), "--memory-child", str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(res.stdout.strip().splitlines()[-1])
    mp = size * size / 1e6
    growth = r["peak_mib"] - r["base_mib"]
    print(
        f"dense_crf alone, rendered {size}x{size} scene (4 bands, 4 classes, noisy one-hot "
        f"probabilities): {r['seconds']:.1f} s = {r['seconds'] / mp:.2f} s/MP, peak memory "
        f"growth {growth:.0f} MiB = {growth * 2**20 / (size * size):.0f} B/px, pixel "
        f"accuracy {r['acc_before']:.3f} -> {r['acc_after']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=384, help="scene size (px)")
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--n-val", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference-python", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--memory-size", type=int, default=2048)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = Path(tmp)
        data = generate_synthetic_dataset(
            out / "data", n_train=args.n_train, n_val=args.n_val, size=args.size
        )
        cfg = demo_config(data, out, args.epochs, "resnet18", crop_size=128, samples_per_epoch=128)
        cfg["pl_trainer"].update(enable_progress_bar=False)
        start = time.perf_counter()
        result = train(cfg)
        print(
            f"trained resnet18 dual head for {args.epochs} epochs in "
            f"{time.perf_counter() - start:.0f} s (torch threads {args.threads})"
        )
        loaded = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
        model, normalize = loaded.model, loaded.normalize
        k = len(data.class_names)
        before = Scores(k)
        after = {name: Scores(k) for name in SETTINGS}
        crf_seconds = {name: 0.0 for name in SETTINGS}
        ref = {"seconds": 0.0, "agree": [], "mad": [], "scores": Scores(k)}
        pixels = 0
        for scene in data.val_scenes:
            image = _read(data.out_dir / "scenes" / f"{scene}.tif")
            truth = _read(data.out_dir / "truth" / f"{scene}.tif")[0]
            probs = predict_array(
                model, image.astype(np.float32), tile_size=256, overlap=32, normalize=normalize
            )
            pixels += truth.size
            before.update(probs, truth)
            for name, kwargs in SETTINGS.items():
                start = time.perf_counter()
                refined = dense_crf(probs, image, **kwargs)
                crf_seconds[name] += time.perf_counter() - start
                after[name].update(refined, truth)
            if args.reference_python:
                stretched = np.clip(_stretch(image), 0, 255).astype(np.uint8)
                np.savez(out / "in.npz", probs=probs, image=stretched)
                res = subprocess.run(
                    [
                        str(args.reference_python),
                        "-c",
                        REFERENCE,
                        str(out / "in.npz"),
                        str(out / "ref.npy"),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                ref["seconds"] += json.loads(res.stdout.strip().splitlines()[-1])["seconds"]
                q = np.load(out / "ref.npy")
                ref["scores"].update(q, truth)
                mine_u8 = dense_crf(probs, stretched)  # same uint8 features as the reference
                ref["agree"].append(float((q.argmax(0) == mine_u8.argmax(0)).mean()))
                ref["mad"].append(float(np.abs(q - mine_u8).mean()))
        mp = pixels / 1e6
        print(
            f"{len(data.val_scenes)} validation scenes of {args.size}x{args.size} px "
            f"({mp:.2f} MP), {data.bands} bands, {k} classes; scores against truth/"
        )
        print(
            "variant | mIoU | pixel acc | boundary F1 @1px | @2px | mean class BF1 @2px | CRF s/MP"
        )
        print(f"no CRF | {before.row()} | -")
        for name in SETTINGS:
            print(f"CRF {name} | {after[name].row()} | {crf_seconds[name] / mp:.2f}")
        if args.reference_python:
            print(
                f"pydensecrf (reference, default kernels) | {ref['scores'].row()} | "
                f"{ref['seconds'] / mp:.2f}"
            )
            print(
                f"agreement with the reference on the same uint8 features: argmax "
                f"{np.mean(ref['agree']):.4f}, mean |dQ| {np.mean(ref['mad']):.2e}"
            )
    if args.memory_size:
        memory_run(args.memory_size, args.threads)


def _stretch(image: np.ndarray) -> np.ndarray:
    """The 1-99 percentile stretch `dense_crf` applies to non-uint8 bands."""
    from polyhead.inference.crf import _stretch as stretch

    return stretch(image.astype(np.float32), None, False)


if __name__ == "__main__":
    main()
