"""Does the dual head keep its promise? Dual head vs the simple alternatives, then calibrated.

Synthetic scenes with known true classes (`polyhead.study.data`: the demo's generator and
annotators, ``standard``; two border-focused annotators, ``harder``), separate train / val /
test scenes. Every row trains the same resnet18 + UPerNet network (random init) with the same
plain torch loop, budget and seeds:

1. hard head on the majority vote;  2. hard head on the Dawid-Skene arg-max;
3. soft head on the Dawid-Skene posteriors;  4. hard head, label smoothing 0.1 (majority vote);
5. dual head (A: DS arg-max, B: DS posteriors, JS consistency 0.1, as the demo): A, B and
   average; 5b. the same on the majority vote and the vote fractions (the generator's masks);
6. the dual head with learned balancing (`polyhead.losses.balancing.UncertaintyWeighting`,
   skipped when it cannot be imported);  7. rows 1 and 5 after temperature scaling (T fitted on
   the validation logits against the hard mask the row trained on, evaluated on test).

Writes ``<out>/dual_head_study.jsonl`` (one record per row, head and seed),
``<out>/dual_head_study.md`` (also ``--md``) and ``<out>/reliability_<setting>.png``.

    uv run --no-sync python benchmarks/dual_head_study.py --smoke          # CPU, < 90 s
    python3 benchmarks/dual_head_study.py --device cuda --workers 8 --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()


@dataclass(frozen=True)
class Method:
    """One trained row: heads (name -> role), the target each key reads, loss options."""

    row: str
    heads: dict[str, str]
    targets: dict[str, str]
    label_smoothing: float = 0.0
    consistency: float = 0.0
    balanced: bool = False
    calibrate: bool = False


DUAL = {"A": "hard", "B": "soft"}
DUAL_TARGETS = {"hard": "ds", "soft": "soft"}
METHODS: dict[str, Method] = {
    "mv": Method("1. hard, majority vote", {"main": "hard"}, {"hard": "mv"}, calibrate=True),
    "ds_hard": Method("2. hard, DS arg-max", {"main": "hard"}, {"hard": "ds"}),
    "ds_soft": Method("3. soft, DS posteriors", {"main": "soft"}, {"soft": "soft"}),
    "smooth": Method("4. hard MV, smoothing 0.1", {"main": "hard"}, {"hard": "mv"}, 0.1),
    "dual": Method("5. dual", DUAL, DUAL_TARGETS, consistency=0.1, calibrate=True),
    "dual_mv": Method(
        "5b. dual on MV + vote fractions", DUAL, {"hard": "mv", "soft": "vf"}, 0.0, 0.1
    ),
    "dual_uw": Method("6. dual, learned balance", DUAL, DUAL_TARGETS, 0.0, 0.1, balanced=True),
}


@dataclass(frozen=True)
class Config:
    """Budget and sizes shared by every job."""

    device: str = "cpu"
    threads: int = 2
    size: int = 128
    n_train: int = 48
    n_val: int = 8
    n_test: int = 16
    n_classes: int = 6
    epochs: int = 16
    batch_size: int = 8
    lr: float = 2e-3
    decoder_channels: int = 64
    encoder: str = "resnet18"
    seeds: tuple[int, ...] = (0, 1, 2)
    settings: tuple[str, ...] = ("standard", "harder")
    methods: tuple[str, ...] = tuple(METHODS)

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


@lru_cache(maxsize=2)
def study_data(setting: str, seed: int, cfg: Config) -> Any:
    from polyhead.study.data import make_study_data

    return make_study_data(setting, seed, cfg.split_sizes(), cfg.size, cfg.n_classes)


def balancer_class() -> tuple[Any, str]:
    """``(UncertaintyWeighting, "")`` or ``(None, why it is unavailable)``."""
    try:
        from polyhead.losses.balancing import UncertaintyWeighting
    except ImportError as err:
        return None, f"polyhead.losses.balancing.UncertaintyWeighting not importable ({err})"
    return UncertaintyWeighting, ""


def build(method: Method, cfg: Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model (same encoder and decoder per head for every row) and its MultiHeadLoss."""
    from polyhead.losses import MultiHeadLoss
    from polyhead.models import MultiHeadSegmentationModel

    spec = {"decoder": "upernet", "decoder_channels": cfg.decoder_channels}
    model = MultiHeadSegmentationModel(
        heads={n: {**spec, "role": role} for n, role in method.heads.items()},
        encoder_name=cfg.encoder,
        encoder_weights=None,
        in_channels=4,
        classes=cfg.n_classes,
    )
    losses = {}
    if method.label_smoothing:
        losses["hard"] = torch.nn.CrossEntropyLoss(label_smoothing=method.label_smoothing)
    options: dict[str, Any] = {}
    if method.balanced:  # learnable log-variances of the A, B and consistency terms
        options["balancing"] = balancer_class()[0]()
    loss = MultiHeadLoss(
        model.heads,
        losses=losses,
        consistency_weight=method.consistency,
        ignore_index=255,
        **options,
    )
    return model, loss


def augment(x: torch.Tensor, targets: dict[str, torch.Tensor], gen: torch.Generator) -> tuple:
    """The same random flip and quarter turn for a batch's images and targets."""
    k, flip = (int(v) for v in torch.randint(0, 4, (2,), generator=gen))

    def op(t: torch.Tensor) -> torch.Tensor:
        t = torch.rot90(t, k, dims=(-2, -1))
        return t.flip(-1) if flip % 2 else t

    return op(x), {key: op(v) for key, v in targets.items()}


def train(method: Method, cfg: Config, data: Any, seed: int) -> tuple[torch.nn.Module, float]:
    """Train one row; returns the model and the mean wall time of an epoch (after the first)."""
    device = torch.device(cfg.device)
    torch.manual_seed(seed)
    model, loss = build(method, cfg)
    model, loss = model.to(device), loss.to(device)
    groups = [{"params": list(model.parameters())}]
    if list(loss.parameters()):  # the balancer's log-variances: no weight decay
        groups.append({"params": list(loss.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=1e-4)
    train_split = data.splits["train"]
    x_all = train_split["image"].to(device)
    t_all = {key: train_split[src].to(device) for key, src in method.targets.items()}
    n = x_all.shape[0]
    steps = math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    times = []
    model.train()
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size].to(device)
            x, t = augment(x_all[idx], {k: v[idx] for k, v in t_all.items()}, gen)
            total, _ = loss(model.forward_heads(x), t, epoch=epoch + i / steps)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    epoch_s = sum(times[1:]) / max(len(times) - 1, 1) if len(times) > 1 else times[0]
    return model.eval(), epoch_s


@torch.no_grad()
def scene_logits(model: Any, images: torch.Tensor, cfg: Config) -> dict[str, torch.Tensor]:
    """``{selection: logits [S, K, H, W]}`` on CPU for each class-map head and ``average``."""
    heads = model.class_map_heads()
    selections = heads + ["average"] if len(heads) > 1 else heads
    out: dict[str, list[torch.Tensor]] = {s: [] for s in selections}
    for i in range(0, images.shape[0], cfg.batch_size):
        raw = model.forward_heads(images[i : i + cfg.batch_size].to(cfg.device))
        for s in selections:
            out[s].append(model.class_logits(raw, s).float().cpu())
    return {s: torch.cat(v) for s, v in out.items()}


def evaluate_job(method_key: str, cfg: Config, setting: str, seed: int) -> list[dict[str, Any]]:
    """Train one (setting, method, seed) job and evaluate it on the test scenes."""
    from polyhead.inference.calibration import fit_temperature
    from polyhead.study.metrics import evaluate

    method = METHODS[method_key]
    data = study_data(setting, seed, cfg)
    model, epoch_s = train(method, cfg, data, seed)
    test, val = data.splits["test"], data.splits["val"]
    test_logits = scene_logits(model, test["image"], cfg)
    val_logits = scene_logits(model, val["image"], cfg) if method.calibrate else {}
    records = []
    for sel, logits in test_logits.items():
        temps = [1.0]
        if method.calibrate:
            z = val_logits[sel].permute(0, 2, 3, 1).reshape(-1, cfg.n_classes)
            temps.append(fit_temperature(z, val[method.targets["hard"]].reshape(-1)))
        for j, temp in enumerate(temps):
            probs = torch.softmax(logits / temp, dim=1)
            truth, bins = evaluate(probs, test["truth"])
            soft, _ = evaluate(probs, test["soft"])
            row = method.row if sel == "main" else f"{method.row} {sel}"
            if j:
                row = f"7. {row[3:]} + T"
            records.append(
                dict(setting=setting, method=method_key, row=row, head=sel, seed=seed,
                     calibrated=bool(j), temperature=temp, epoch_s=epoch_s,
                     truth=truth, soft=soft, bins=bins.tolist())
            )  # fmt: skip
    return records


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolutions once


def _job(args: tuple[str, Config, str, int]) -> tuple[tuple, list[dict[str, Any]] | str]:
    """Run one job; an error comes back as its message so the other jobs go on."""
    method_key, cfg, setting, seed = args
    try:
        return args, evaluate_job(method_key, cfg, setting, seed)
    except Exception as err:  # noqa: BLE001 - reported per job, the study goes on
        return args, f"{type(err).__name__}: {err}"


def run_jobs(cfg: Config, workers: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every (setting, method, seed) job, in ``workers`` spawned processes (1: in this one)."""
    jobs = [(m, cfg, s, seed) for seed in cfg.seeds for s in cfg.settings for m in cfg.methods]
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("jobs", total=len(jobs))
        if workers <= 1:
            _init_worker(cfg.threads)
            results = (_job(j) for j in jobs)
            pool = None
        else:
            ctx = torch.multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(workers, ctx, _init_worker, (cfg.threads,))
            results = (f.result() for f in as_completed([pool.submit(_job, j) for j in jobs]))
        try:
            for (m, _, s, seed), out in results:
                if isinstance(out, str):
                    failures.append(f"{s}/{m}/seed {seed}: {out}")
                    progress.console.print(f"[red]failed[/] {s} {m} seed {seed}: {out}")
                else:
                    records += out
                    first = out[0]["truth"]
                    progress.console.print(
                        f"{s:8} {m:8} seed {seed}: mIoU {first['miou']:.3f} "
                        f"ECE {first['ece']:.4f} ({out[0]['epoch_s']:.2f} s/epoch)"
                    )
                progress.advance(task)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return records, failures


def parse_config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--workers", type=int, default=1, help="parallel job processes (spawn)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: auto)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dual_head_study"))
    ap.add_argument("--md", type=Path, default=Path("benchmarks/results/dual_head_study.md"))
    ap.add_argument("--smoke", action="store_true", help="1 seed, 2 methods, tiny sizes (CPU)")
    ap.add_argument("--seeds", type=int, default=3)
    settings = ["standard", "harder"]
    ap.add_argument("--settings", nargs="+", default=settings, choices=settings)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    for name, default in (("size", 128), ("n-train", 48), ("n-val", 8), ("n-test", 16), ("epochs", 16), ("batch-size", 8)):  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument(
        "--report-only",
        type=Path,
        help="re-aggregate this JSONL of an earlier run (same size options) without training",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.methods, args.size, args.epochs = 1, ["mv", "dual"], 64, 2
        args.n_train, args.n_val, args.n_test, args.batch_size = 4, 2, 2, 4
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if args.workers < 1 or args.seeds < 1 or args.epochs < 1 or args.size % 32:
        ap.error("--workers, --seeds and --epochs must be >= 1 and --size a multiple of 32")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    methods = list(args.methods)
    if "dual_uw" in methods and balancer_class()[0] is None:
        console.print(f"[yellow]row 6 skipped:[/] {balancer_class()[1]}")
        methods.remove("dual_uw")
    cfg = Config(
        device=args.device, threads=threads, size=args.size, n_train=args.n_train,
        n_val=args.n_val, n_test=args.n_test, epochs=args.epochs, batch_size=args.batch_size,
        encoder=args.encoder, seeds=tuple(range(args.seeds)), settings=tuple(args.settings),
        methods=tuple(methods),
    )  # fmt: skip
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    from polyhead.io import write_text
    from polyhead.study.report import markdown, reliability_figure

    cfg, args = parse_config(argv)
    start = time.perf_counter()
    gpu = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else platform.processor()
    console.print(f"dual-head study on {cfg.device} ({gpu}), {args.workers} workers: {cfg}")
    if args.report_only:
        records = [json.loads(line) for line in args.report_only.read_text().splitlines()]
        failures: list[str] = []
    else:
        records, failures = run_jobs(cfg, args.workers)
    if not records:
        raise SystemExit("every job failed:\n" + "\n".join(failures))
    quality = {s: study_data(s, 0, cfg).label_quality for s in cfg.settings}
    total = time.perf_counter() - start
    skipped = [] if "dual_uw" in cfg.methods or "dual_uw" not in args.methods else ["row 6"]
    header = "\n".join(
        [
            "# Dual-head study (`benchmarks/dual_head_study.py`)",
            "",
            f"Command: `python benchmarks/dual_head_study.py {' '.join(argv or sys.argv[1:])}`",
            f"Re-aggregated from `{args.report_only}` (device and times: that run's log)."
            if args.report_only
            else f"Device: {cfg.device} ({gpu}), {args.workers} workers x {cfg.threads} threads; "
            f"total wall time {total:.0f} s.",
            f"Budget: {json.dumps(asdict(cfg), default=str)}",
            "",
            "Mean ± sample std over seeds. `s / epoch`: mean wall time of an epoch after the "
            "first, jobs run concurrently (compare within one run only). T: softmax temperature.",
            f"Skipped: {', '.join(skipped) or 'none'}. Failed jobs: {len(failures)}"
            + "".join(f"\n- {f}" for f in failures),
        ]
    )  # fmt: skip
    text = markdown(records, header, quality)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    write_text(args.out / "dual_head_study.jsonl", lines)
    write_text(args.out / "dual_head_study.md", text)
    if args.md.resolve() != (args.out / "dual_head_study.md").resolve():
        write_text(args.md, text)
    for setting in cfg.settings:
        recs = [r for r in records if r["setting"] == setting]
        if recs:
            title = f"Reliability vs the true classes, setting {setting} (test, seeds pooled)"
            reliability_figure(args.out / f"reliability_{setting}.png", recs, title)
    print(text)
    console.print(f"total {time.perf_counter() - start:.1f} s; wrote {args.out} and {args.md}")


if __name__ == "__main__":
    main()
