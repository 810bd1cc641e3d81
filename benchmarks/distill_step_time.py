"""Training-step time of a distillation student: cached teacher targets vs a live ensemble.

Cached: each batch reads the teacher's probabilities and uncertainty maps from disk
(``distill-targets`` output) with the crops. Live: the batch has only image and masks and the
M-member ensemble runs on it every step (``DistillationTask(teacher=...)``). One step = loading
the batch + teacher targets + student forward/backward + optimizer step. The two modes run
interleaved, round after round, so machine load hits both alike; medians and their ratio are
reported. Teachers are random-init (time does not depend on their weights).

    uv run python benchmarks/distill_step_time.py --rounds 12       # distill_synthetic's setup
    uv run python benchmarks/distill_step_time.py --rounds 12 --append \
        --student-encoder tu-mobilenetv3_large_100 --student-decoder deeplabv3plus \
        --teachers upernet fpn unet                                  # the thread's student
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from polyhead.demo.distill_configs import TEACHER_DECODERS, student_config
from polyhead.demo.synthetic import generate_synthetic_dataset
from polyhead.distill.targets import write_distillation_targets
from polyhead.distill.teacher import EnsembleTeacher
from polyhead.inference.predictor import Predictor
from polyhead.models import MultiHeadSegmentationModel
from polyhead.tasks.distillation import DistillationTask

RESULTS = Path(__file__).resolve().parent / "results"


def _teacher(decoders: list[str], bands: int, classes: int, normalize) -> EnsembleTeacher:
    torch.manual_seed(0)
    nets = [
        MultiHeadSegmentationModel(
            {"A": {"decoder": d, **TEACHER_DECODERS[d]}},
            encoder_name="resnet18",
            in_channels=bands,
            classes=classes,
        )
        for d in decoders
    ]
    return EnsembleTeacher([Predictor(n.eval()) for n in nets], normalize=normalize)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/polyhead-distill-steptime")
    ap.add_argument(
        "--teachers",
        nargs="+",
        default=["unet", "unet", "unet"],
        help="teacher decoders (resnet18 encoders)",
    )
    ap.add_argument("--student-encoder", default="resnet18")
    ap.add_argument("--student-decoder", default="unet")
    ap.add_argument("--append", action="store_true", help="append to --out")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "distill_step_time.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = generate_synthetic_dataset(work / "data", n_train=4, n_val=1, size=128, seed=0)
    classes = len(data.class_names)
    cfg = student_config(
        data,
        work / "targets" / "distill.csv",
        work / "targets" / "distill.csv",
        work / "student",
        crop_size=args.crop,
        batch_size=args.batch,
        encoder_name=args.student_encoder,
        decoder=args.student_decoder,
    )
    normalize = instantiate(cfg["train_dataset"]["augmentation_list"][-1])
    teacher = _teacher(args.teachers, data.bands, classes, lambda x: normalize(image=x)["image"])
    t = time.perf_counter()
    write_distillation_targets(teacher, data.train_csv, work / "targets", tile_size=128, overlap=0)
    cache_s = time.perf_counter() - t

    cached_ds = instantiate(cfg["train_dataset"], _convert_="all")
    live_cfg = {k: v for k, v in cfg["train_dataset"].items() if k != "extra_targets"}
    live_ds = instantiate({**live_cfg, "input_csv_path": str(data.train_csv)}, _convert_="all")
    loaders = {"cached": iter(cached_ds.make_loader()), "live": iter(live_ds.make_loader())}
    tasks = {}
    for mode in loaders:
        torch.manual_seed(0)
        model = instantiate(cfg["model"], _convert_="all")
        task = DistillationTask(model, teacher=teacher if mode == "live" else None)
        tasks[mode] = (task, torch.optim.AdamW(task.model.parameters(), lr=1e-3))

    def step(mode: str) -> float:
        task, opt = tasks[mode]
        start = time.perf_counter()
        batch = next(loaders[mode])
        loss, *_ = task.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {m: [] for m in loaders}
    for r in range(args.warmup + args.rounds):
        for mode in ("cached", "live") if r % 2 == 0 else ("live", "cached"):
            dt = step(mode)
            if r >= args.warmup:
                times[mode].append(dt)
    med = {m: statistics.median(v) for m, v in times.items()}
    ratio = med["live"] / med["cached"]
    # what caching costs up front, in steps of the cached student
    table = "\n".join(
        [
            "| mode | median step s | min s | max s |",
            "|---|---|---|---|",
            *(f"| {m} | {med[m]:.3f} | {min(v):.3f} | {max(v):.3f} |" for m, v in times.items()),
            "",
            f"live / cached step-time ratio (M={len(args.teachers)}): **{ratio:.2f}x**",
            "",
            f"Settings: student {args.student_encoder} + 2 {args.student_decoder} heads; teachers "
            f"resnet18 + {'/'.join(args.teachers)}, M={len(args.teachers)}; crops "
            f"{args.crop} px, batch {args.batch}, CPU, torch threads {torch.get_num_threads()}, "
            f"{args.rounds} interleaved rounds after {args.warmup} warm-up rounds. Writing the "
            f"cached targets for the 4 training scenes (128 px) took {cache_s:.1f} s "
            f"({cache_s / med['cached']:.0f} cached steps).",
        ]
    )
    print(table)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    if args.append and out.is_file():
        out.write_text(out.read_text() + "\n" + table + "\n")
    else:
        out.write_text(
            "# Distillation step time: cached targets vs live ensemble\n\n" + table + "\n"
        )


if __name__ == "__main__":
    main()
