"""Training-step time of UPerNetDualHead vs a single-head SMP UPerNet and vs its parts.

The ideal dual-head cost is one encoder step plus two decoder steps, each measured alone; the
dual head should land close to it, and at (1 + decoder share) times the single head.
Variants run interleaved, round after round, so machine load affects them alike; medians and
ratios are reported.

    uv run python benchmarks/train_step.py --encoder resnet18 --size 256 --batch 4 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from polyhead.models import UPerNetDualHead


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--decoder-channels", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    kw = dict(
        encoder_name=args.encoder,
        encoder_weights=None,
        classes=args.classes,
        decoder_channels=args.decoder_channels,
    )
    single = smp.UPerNet(**kw).to(device).train()
    dual = UPerNetDualHead(**kw).to(device).train()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    soft = torch.softmax(
        torch.randn(args.batch, args.classes, args.size, args.size, device=device), 1
    )
    with torch.no_grad():
        feats = [f.detach() for f in dual.encoder(x)]

    def step_single():
        F.cross_entropy(single(x), y).backward()

    def step_dual():
        out = dual.forward_heads(x)
        loss = F.cross_entropy(out["A"], y) - (soft * out["B"].log_softmax(1)).sum(1).mean()
        loss.backward()

    def step_encoder():
        sum(f.float().mean() for f in dual.encoder(x)).backward()

    def step_decoder():
        F.cross_entropy(dual.heads["A"](feats), y).backward()

    variants = {
        "single": step_single,
        "dual": step_dual,
        "encoder": step_encoder,
        "decoder": step_decoder,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ideal = med["encoder"] + 2 * med["decoder"]
    print(
        f"device={device} threads={torch.get_num_threads()} encoder={args.encoder} "
        f"input={args.batch}x3x{args.size}x{args.size} rounds={args.rounds}"
    )
    for k, v in med.items():
        print(f"  {k:8s} median {v * 1000:8.1f} ms")
    print(f"  ideal (encoder + 2 decoders) {ideal * 1000:8.1f} ms")
    print(f"ratio dual/single = {med['dual'] / med['single']:.3f}")
    print(f"ratio dual/ideal  = {med['dual'] / ideal:.3f}")
    print(f"decoder share of single step = {med['decoder'] / med['single']:.3f}")


if __name__ == "__main__":
    main()
