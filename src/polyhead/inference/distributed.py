"""Prediction on several processes, GPUs or machines: files and row blocks split over ranks.

Every rank computes the same plan from the inputs' sizes (`plan_parts`): a deterministic,
balanced split by pixel count (`assign`, largest first to the least loaded rank). A raster
too big for one rank's share (fewer rasters than ranks, or more pixels than total / ranks)
is cut into row blocks at tile ends of the sliding window's grid (`row_cuts`). A block is
predicted from a window of the raster that adds the context rows of every tile touching it
(`context_rows`): that window starts on a tile of the global grid, so its own grid is the
global grid's tiles, run in the same order and blended alike, and its rows equal the
single-process prediction. Blocks are written as ``<stem>_part-XXXX_<kind>.tif``; once every
rank is done, rank 0 writes ``<stem>_<kind>.vrt`` mosaics of them (`polyhead.inference.vrt`).

Processes come from Lightning Fabric (`launch`: ``strategy="ddp"``, gloo on CPU, nccl on
GPU), which starts them itself or joins those torchrun or SLURM started.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio

from polyhead.errors import ConfigError, PolyheadError
from polyhead.inference.tiling import tile_starts
from polyhead.inference.vrt import write_mosaic_vrt, write_window_vrt
from polyhead.io import Staging

ACCELERATORS = ("cpu", "gpu", "auto")


@dataclass(frozen=True)
class Part:
    """One unit of work: rows ``[row0, row1)`` of ``image`` (all of it when ``n_parts == 1``)."""

    image: Path
    index: int
    n_parts: int
    row0: int
    row1: int
    width: int

    @property
    def pixels(self) -> int:
        return (self.row1 - self.row0) * self.width

    @property
    def whole(self) -> bool:
        return self.n_parts == 1

    def stem(self) -> str:
        """Output stem: the image's, plus ``_part-XXXX`` for a row block."""
        return self.image.stem if self.whole else f"{self.image.stem}_part-{self.index:04d}"


def row_cuts(height: int, n_parts: int, tile_size: int, overlap: int) -> list[int]:
    """Row edges ``[0, ..., height]`` of at most ``n_parts`` blocks of about equal height.

    Cuts lie where a tile of the grid ends (``start + tile_size``), so the tile ending there
    is run by the block above only and one tile row at most is run by both blocks."""
    ys = tile_starts(height, tile_size, overlap)
    ends = sorted({y + tile_size for y in ys[:-1] if 0 < y + tile_size < height})
    cuts: list[int] = []
    for i in range(1, n_parts):
        if not ends:
            break
        target = i * height / n_parts
        best = min(ends, key=lambda e: (abs(e - target), e))
        if not cuts or best > cuts[-1]:
            cuts.append(best)
    return [0, *sorted(set(cuts)), height]


def context_rows(
    height: int, row0: int, row1: int, tile_size: int, overlap: int
) -> tuple[int, int]:
    """Rows ``[a, b)`` to read to predict rows ``[row0, row1)`` as the whole raster does: from
    the first to the end of the last tile of the global grid that touches them."""
    ys = tile_starts(height, tile_size, overlap)
    touching = [y for y in ys if y < row1 and y + tile_size > row0]
    return touching[0], min(touching[-1] + tile_size, height)


def plan_parts(
    sizes: Sequence[tuple[Path, int, int]],
    world_size: int,
    tile_size: int,
    overlap: int,
    split: bool = True,
) -> list[Part]:
    """The parts of ``sizes`` (``(image, height, width)``) for ``world_size`` ranks.

    With ``split``, a raster gets about ``ceil(pixels * ranks / total)`` row blocks when there
    are fewer rasters than ranks or its pixels exceed total / ranks; other rasters are whole.
    """
    total = sum(h * w for _, h, w in sizes)
    parts: list[Part] = []
    for image, height, width in sizes:
        pixels = height * width
        large = (
            split and world_size > 1 and (len(sizes) < world_size or pixels * world_size > total)
        )
        n = max(1, -(-pixels * world_size // max(total, 1))) if large else 1
        edges = row_cuts(height, n, tile_size, overlap) if n > 1 else [0, height]
        n = len(edges) - 1
        parts += [
            Part(Path(image), i, n, r0, r1, width)
            for i, (r0, r1) in enumerate(zip(edges, edges[1:], strict=False))
        ]
    return parts


def assign(parts: Sequence[Part], world_size: int) -> list[list[Part]]:
    """Parts per rank: largest first, each to the least loaded rank (lowest rank on ties);
    the same on every rank. Each rank's parts keep the input order."""
    loads = [0] * world_size
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    order = sorted(range(len(parts)), key=lambda i: (-parts[i].pixels, i))
    for i in order:
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += parts[i].pixels
        ranks[rank].append(i)
    return [[parts[i] for i in sorted(idx)] for idx in ranks]


#: ``predict_one(input, out_dir, stem, **options)`` writes ``<out_dir>/<stem>_<kind>.tif``
#: files (a row block passes ``rows=``) and returns the `PredictionResult`
PredictOne = Callable[..., Any]


def predict_part(
    part: Part, predict_one: PredictOne, output_dir: Path, tile_size: int, overlap: int
) -> list[Path]:
    """Predict ``part`` into ``output_dir``; returns the files written.

    A whole image goes straight to ``predict_one``. A row block is predicted from a VRT
    window of the image with its context rows (`context_rows`, in a scratch folder removed
    whatever happens), and ``predict_one(..., rows=own rows)`` writes only its own rows, to
    ``<stem>_part-XXXX_<kind>.tif``; all of a block's files are committed together."""
    if part.whole:
        predict_one(part.image, output_dir, part.image.stem)
        return [output_dir / f"{part.image.stem}_classes.tif"]
    with rasterio.open(part.image) as src:
        height = src.height
    a, b = context_rows(height, part.row0, part.row1, tile_size, overlap)
    stem = part.stem()
    with Staging(output_dir / stem) as scratch:
        window = write_window_vrt(part.image, scratch.path(f"{stem}.vrt"), a, b)
        result = predict_one(window, output_dir, stem, rows=(part.row0 - a, part.row1 - a))
    paths = (
        result.class_map_path,
        result.probabilities_path,
        result.uncertainty_path,
        result.spread_path,
    )
    return [path for path in paths if path is not None]


def write_mosaics(
    parts: Sequence[Part], output_dir: Path, kinds: Sequence[str] | None = None
) -> dict[str, Path]:
    """``{kind: <stem>_<kind>.vrt}`` over the row blocks of one image for each of ``kinds``
    (``classes``, ``proba``, ...; default: the kinds of file its first block has)."""
    first = parts[0]
    if kinds is None:
        prefix = f"{first.stem()}_"
        kinds = sorted(p.name[len(prefix) : -4] for p in output_dir.glob(f"{prefix}*.tif"))
    written = {}
    for kind in kinds:
        files = [output_dir / f"{p.stem()}_{kind}.tif" for p in parts]
        vrt = output_dir / f"{first.image.stem}_{kind}.vrt"
        written[kind] = write_mosaic_vrt(files, [p.row0 for p in parts], vrt)
    return written


class Group:
    """The ranks of a run: this one's ``rank``, ``world_size``, ``device``, and `exchange`,
    which gives every rank what each rank reports. One process: rank 0 of 1."""

    rank, world_size, device = 0, 1, None

    def exchange(self, report: Any) -> list[Any]:
        """Every rank's ``report`` (picklable), in rank order; also a barrier."""
        return [report]


class FabricGroup(Group):
    """The ranks of a `lightning.fabric.Fabric` run (after ``launch``)."""

    def __init__(self, fabric: Any) -> None:
        self.fabric = fabric
        self.rank, self.world_size = fabric.global_rank, fabric.world_size
        self.device = fabric.device

    def exchange(self, report: Any) -> list[Any]:
        import torch.distributed as dist

        reports: list[Any] = [None] * self.world_size
        dist.all_gather_object(reports, report)
        return reports


def launch(devices: int = 1, num_nodes: int = 1, accelerator: str = "auto") -> Group:
    """Start (or join) ``devices`` processes per machine on ``num_nodes`` machines.

    One process in all: a plain `Group`, no process group. Otherwise Lightning Fabric with
    ``strategy="ddp"``: run from a shell it starts the other local processes by running the
    same command again; under torchrun or SLURM (``srun``) it joins the processes those
    started (their environment says the ranks). ConfigError for bad counts or accelerator.
    """
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
    for name, value in (("devices", devices), ("num_nodes", num_nodes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if devices * num_nodes == 1:
        return Group()
    from lightning.fabric import Fabric

    try:
        fabric = Fabric(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp"
        )
    except (ValueError, RuntimeError) as err:  # e.g. devices that SLURM's allocation lacks
        raise ConfigError(f"cannot start {devices} x {num_nodes} processes: {err}") from None
    fabric.launch()
    return FabricGroup(fabric)


def gather(group: Group, work: Callable[[], Any]) -> list[Any]:
    """``work()`` on this rank, then every rank's result, in rank order.

    A rank whose work failed raises its own error once every rank has finished; the others
    raise `PolyheadError` saying how many failed (no rank waits for ever on a failed one)."""
    error: BaseException | None = None
    result = None
    try:
        result = work()
    except Exception as err:  # reported after the others have been told
        error = err
    reports = group.exchange((error is not None, result))
    if error is not None:
        raise error
    failed = sum(bad for bad, _ in reports)
    if failed:
        raise PolyheadError(f"{failed} of {group.world_size} prediction processes failed")
    return [result for _, result in reports]


def run_parts(
    parts: Sequence[Part],
    group: Group,
    predict_one: PredictOne,
    output_dir: Path,
    tile_size: int,
    overlap: int,
    after_class_map: Callable[[Path], Any] | None = None,
) -> list[Path]:
    """Predict this rank's share of ``parts``, then (rank 0, once every rank succeeded) the
    mosaics of split images. Returns every image's class map (``.tif`` or ``.vrt``), in
    input order, on every rank. ``after_class_map(path)`` runs on each finished class map
    (a whole image's on the rank that predicted it, a mosaic on rank 0); when it has a
    ``wait`` (work queued in the background), that is awaited before the rank reports and
    before returning.

    A rank that fails raises its own error after the others have finished theirs; the others
    raise `PolyheadError` saying how many failed, and no mosaic is written."""

    def predict_mine() -> dict[str, list[str]]:
        kinds: dict[str, list[str]] = {}  # kinds of file written per row block (image|index)
        for part in assign(parts, group.world_size)[group.rank]:
            files = predict_part(part, predict_one, output_dir, tile_size, overlap)
            if part.whole and after_class_map is not None:
                after_class_map(output_dir / f"{part.image.stem}_classes.tif")
            elif not part.whole:
                cut = len(part.stem()) + 1
                kinds[f"{part.image}|{part.index}"] = [f.name[cut:-4] for f in files]
        _wait(after_class_map)
        return kinds

    written = {key: value for done in gather(group, predict_mine) for key, value in done.items()}
    by_image: dict[Path, list[Part]] = {}
    for part in parts:
        by_image.setdefault(part.image, []).append(part)
    results = []
    for image, blocks in by_image.items():
        if len(blocks) == 1:
            results.append(output_dir / f"{image.stem}_classes.tif")
            continue
        vrt = output_dir / f"{image.stem}_classes.vrt"
        if group.rank == 0:  # the kinds every block wrote in this run
            done = [set(written[f"{image}|{p.index}"]) for p in blocks]
            write_mosaics(blocks, output_dir, sorted(set.intersection(*done)))
            if after_class_map is not None:
                after_class_map(vrt)
        results.append(vrt)
    _wait(after_class_map)
    return results


def _wait(after_class_map: Callable[[Path], Any] | None) -> None:
    """Wait for ``after_class_map``'s work when it runs in the background (it has ``wait``:
    `polyhead.inference.vector_jobs.VectorJobs`); its first error is raised here."""
    wait = getattr(after_class_map, "wait", None)
    if wait is not None:
        wait()
