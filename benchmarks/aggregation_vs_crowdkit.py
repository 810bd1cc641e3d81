"""polyhead's Dawid-Skene against crowd-kit's ``DawidSkene`` on one 1 M-pixel problem.

Problem: 1 000 000 pixels, 3 annotators (accuracies 0.9, 0.75, 0.6, random
confusions), 6 classes, every pixel labelled by everyone (3 M annotations).

Each measurement runs in its own subprocess (fresh interpreter), which generates the
same problem from the seed, then times only the aggregation: for crowd-kit
``DawidSkene().fit`` on the ``task,worker,label`` DataFrame (built before the
clock starts); for polyhead the path from the ``[A, N]`` label arrays to per-pixel
posteriors ``[N, K]`` (pattern encoding + counting, EM on the patterns, lookup).
Peak RSS is the child's own ``ru_maxrss`` (whole process: interpreter, imports,
data, aggregation); "baseline" is the RSS once data and imports are in place.

Variants, interleaved ``--repeat`` times:

* ``crowdkit``: ``DawidSkene(n_iter=100, tol=1e-5)`` (crowd-kit's defaults);
* ``polyhead-same``: same iteration count as crowd-kit took, ``tol=0``,
  ``smoothing=0`` -- the identical computation; posteriors are compared;
* ``polyhead``: polyhead's defaults (``tol=1e-6``, ``smoothing=0.01``);
* ``polyhead-pixels``: ``dawid_skene`` on the 1 M x 3 label matrix without pattern
  collapsing (same iterations as crowd-kit), to show what the collapsing buys.

Results also go to ``benchmarks/results/aggregation_vs_crowdkit.md`` (``--results``).

    uv run --no-sync python benchmarks/aggregation_vs_crowdkit.py [--repeat 2] [--pixels 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K, ACCURACIES = 6, (0.9, 0.75, 0.6)


def make_problem(n: int, seed: int = 0) -> np.ndarray:
    """Annotator labels ``[A, N]`` uint8 drawn from random confusions."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(K, size=n, p=rng.dirichlet(np.ones(K) * 3))
    labels = []
    for acc in ACCURACIES:
        conf = np.zeros((K, K))
        for c in range(K):
            conf[c, np.arange(K) != c] = rng.dirichlet(np.ones(K - 1)) * (1 - acc)
            conf[c, c] = acc
        cum = np.cumsum(conf, axis=1)[truth]
        labels.append(np.minimum((rng.random(n)[:, None] > cum).sum(1), K - 1).astype(np.uint8))
    return np.stack(labels)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(variant: str, n: int, n_iter: int, out: Path) -> None:
    """Run one variant and print a JSON line with its timing and memory."""
    labels = make_problem(n)
    info: dict[str, float | int | str] = {"variant": variant}
    if variant == "crowdkit":
        import pandas as pd
        from crowdkit.aggregation import DawidSkene

        df = pd.DataFrame(
            {
                "task": np.repeat(np.arange(n), labels.shape[0]),
                "worker": np.tile(np.arange(labels.shape[0]), n),
                "label": labels.T.ravel().astype(np.int64),
            }
        )
        info["baseline_mib"] = _rss_mib()
        t = time.perf_counter()
        ds = DawidSkene(n_iter=100, tol=1e-5).fit(df)
        info["seconds"] = time.perf_counter() - t
        info["n_iter"] = len(ds.loss_history_)
        post = ds.probas_.sort_index()[list(range(K))].to_numpy()
    else:
        from polyhead.aggregation import dawid_skene
        from polyhead.aggregation.passes import LookupTable
        from polyhead.aggregation.patterns import PatternCodec

        same = dict(max_iter=n_iter, tol=0.0, smoothing=0.0)
        options = {} if variant == "polyhead" else same
        info["baseline_mib"] = _rss_mib()
        t = time.perf_counter()
        if variant == "polyhead-pixels":
            res = dawid_skene(labels.T.astype(np.int64), K, **options)
            post = res.posteriors
        else:
            codec = PatternCodec(K, labels.shape[0])
            codes = codec.encode(labels)
            uniq, counts = codec.count(codes)
            res = dawid_skene(codec.decode(uniq), K, counts=counts, **options)
            table = LookupTable.build(uniq, res.posteriors, res.labels, "float32", codec.n_codes)
            post = res.posteriors[table.index(codes)]  # the lookup pass 2 does
        info["seconds"] = time.perf_counter() - t
        info["n_iter"] = res.n_iter
    info["peak_mib"] = _rss_mib()
    np.save(out / f"{variant}.npy", post.astype(np.float64))
    print(json.dumps(info))


def run_child(variant: str, n: int, n_iter: int, out: Path) -> dict:
    """Spawn a fresh interpreter for one measurement."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--pixels",
        str(n),
        "--n-iter",
        str(n_iter),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n-iter", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--results", default="benchmarks/results/aggregation_vs_crowdkit.md")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.pixels, args.n_iter, Path(args.out))
        return
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="polyhead-vs-crowdkit-") as tmp:
        out = Path(tmp)
        diff = float("nan")
        for _ in range(args.repeat):
            ck = run_child("crowdkit", args.pixels, 0, out)
            runs.setdefault("crowdkit", []).append(ck)
            for variant in ("polyhead-same", "polyhead", "polyhead-pixels"):
                runs.setdefault(variant, []).append(
                    run_child(variant, args.pixels, int(ck["n_iter"]), out)
                )
            diff = float(
                np.abs(np.load(out / "crowdkit.npy") - np.load(out / "polyhead-same.npy")).max()
            )
    lines = [
        "# polyhead Dawid-Skene vs crowd-kit DawidSkene",
        "",
        f"{args.pixels / 1e6:g} M pixels, 3 annotators, {K} classes; median of {args.repeat} "
        "interleaved runs, each in a fresh subprocess; time of the aggregation only.",
        "",
        "| variant | iterations | time s | peak RSS MiB | baseline MiB | increment MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    med: dict[str, dict[str, float]] = {}
    for variant, rs in runs.items():
        m = {
            key: statistics.median(float(r[key]) for r in rs)
            for key in ("seconds", "peak_mib", "baseline_mib", "n_iter")
        }
        med[variant] = m
        lines.append(
            f"| {variant} | {m['n_iter']:.0f} | {m['seconds']:.3f} | {m['peak_mib']:.0f} | "
            f"{m['baseline_mib']:.0f} | {m['peak_mib'] - m['baseline_mib']:.0f} |"
        )
    ck, ph = med["crowdkit"], med["polyhead-same"]
    inc = (ck["peak_mib"] - ck["baseline_mib"]) / max(ph["peak_mib"] - ph["baseline_mib"], 1)
    lines += [
        "",
        f"- max |posterior difference| crowd-kit vs polyhead-same: {diff:.2e}",
        f"- time ratio crowd-kit / polyhead-same: {ck['seconds'] / ph['seconds']:.0f}x",
        f"- peak RSS ratio crowd-kit / polyhead-same: {ck['peak_mib'] / ph['peak_mib']:.1f}x "
        f"(increment over baseline: {inc:.0f}x)",
    ]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
