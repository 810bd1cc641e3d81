"""Inference latency of the two-headed classifier vs the single 3-class head (batch 1).

The article reports the two-headed ShuffleNetV2 x0.5 (each head with its own last conv layer,
pooling and linear layer) about 5-7% slower than the 3-output model on one image (RTX 3060,
256 px, including transforms and softmax). This measures the same pair here:

- ``single``: ShuffleNetV2 x0.5, one 3-class head (``split_at=None``);
- ``multi``: ShuffleNetV2 x0.5 split at ``conv5``, heads ``screen`` and ``other`` (2 each).

Timed per image: ``model`` = forward + softmax on a ready tensor; ``end-to-end`` = also
reading a JPEG from disk, EXIF transpose, RGB, resize and normalise (the article's
definition); ``onnxruntime`` = the exported graphs + softmax. The variants run interleaved,
round after round with alternating order, so machine load hits both alike; the report gives
medians, the ratio of medians and the median of the per-round ratios.

    uv run python benchmarks/classifier_latency.py --size 256 --rounds 300 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polyhead.classification.export import export_model
from polyhead.data.classification import IMAGENET_MEAN, IMAGENET_STD, load_image, to_tensor
from polyhead.models import MultiHeadClassifier
from polyhead.models.classifier import head_probabilities


def _photo(path: Path, seed: int = 0) -> Path:
    """A 1024 x 768 JPEG with smooth structure (a stand-in for a phone photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(small).resize((1024, 768), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def _softmax_all(out) -> None:
    _ = [head_probabilities(v) for v in out.values()]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="torchvision:shufflenet_v2_x0_5")
    ap.add_argument("--split-at", default="conv5")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--weights", default=None, help="local backbone weights file (optional)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime timings")
    ap.add_argument("--out", type=Path, help="also write the report to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {
        "single": MultiHeadClassifier(
            args.backbone, {"classes": 3}, split_at=None, encoder_weights=args.weights
        ).eval(),
        "multi": MultiHeadClassifier(
            args.backbone,
            {"screen": 2, "other": 2},
            split_at=args.split_at,
            encoder_weights=args.weights,
        ).eval(),
    }
    with torch.no_grad():  # heads start as copies; after training they differ (and ONNX
        for p in models["multi"].heads["other"].parameters():  # would share equal weights)
            p.add_(0.01 * torch.randn_like(p))
    tmp = Path(tempfile.mkdtemp(prefix="polyhead-latency-"))
    photo = _photo(tmp / "photo.jpg")
    x = to_tensor(load_image(photo, args.size), IMAGENET_MEAN, IMAGENET_STD).unsqueeze(0)

    def model_only(name: str) -> Callable[[], None]:
        return lambda: _softmax_all(models[name](x))

    def end_to_end(name: str) -> Callable[[], None]:
        def run() -> None:
            image = to_tensor(load_image(photo, args.size), IMAGENET_MEAN, IMAGENET_STD)
            _softmax_all(models[name](image.unsqueeze(0)))

        return run

    suites: dict[str, dict[str, Callable[[], None]]] = {
        "model": {n: model_only(n) for n in models},
        "end-to-end": {n: end_to_end(n) for n in models},
    }
    sizes = {}
    if not args.no_onnx:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sessions = {}
        for name, model in models.items():
            path = export_model(model, tmp / f"{name}.onnx", args.size)
            sizes[name] = path.stat().st_size / 1024
            sessions[name] = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
        xn = x.numpy()

        def onnx_run(name: str) -> Callable[[], None]:
            def run() -> None:
                for logits in sessions[name].run(None, {"image": xn}):
                    e = np.exp(logits - logits.max(-1, keepdims=True))
                    _ = e / e.sum(-1, keepdims=True)

            return run

        suites["onnxruntime"] = {n: onnx_run(n) for n in models}

    names = list(models)
    times = {s: {n: [] for n in names} for s in suites}
    with torch.inference_mode():
        for r in range(args.warmup + args.rounds):
            for suite, fns in suites.items():
                for name in names if r % 2 == 0 else names[::-1]:
                    start = time.perf_counter()
                    fns[name]()
                    if r >= args.warmup:
                        times[suite][name].append(time.perf_counter() - start)

    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    lines = [
        f"backbone={args.backbone} split_at={args.split_at} input=1x3x{args.size}x{args.size} "
        f"threads={torch.get_num_threads()} rounds={args.rounds} (warm-up {args.warmup}) "
        f"torch={torch.__version__}",
        f"parameters: single {params['single']:,}  multi {params['multi']:,}  "
        f"(x{params['multi'] / params['single']:.3f})"
        + (f"; ONNX KB: single {sizes['single']:.0f}  multi {sizes['multi']:.0f}" if sizes else ""),
        f"{'suite':<12} {'single ms':>10} {'multi ms':>10} {'p10-p90 single':>16} "
        f"{'p10-p90 multi':>16} {'ratio':>7} {'paired':>7}",
    ]
    for suite, by_name in times.items():
        s, m = by_name["single"], by_name["multi"]
        paired = statistics.median(b / a for a, b in zip(s, m, strict=True))
        lines.append(
            f"{suite:<12} {1e3 * statistics.median(s):>10.3f} {1e3 * statistics.median(m):>10.3f} "
            f"{1e3 * _percentile(s, 10):>7.2f}-{1e3 * _percentile(s, 90):<7.2f} "
            f"{1e3 * _percentile(m, 10):>7.2f}-{1e3 * _percentile(m, 90):<7.2f} "
            f"{statistics.median(m) / statistics.median(s):>7.3f} {paired:>7.3f}"
        )
    lines.append("ratio = median multi / median single; paired = median of per-round ratios")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
