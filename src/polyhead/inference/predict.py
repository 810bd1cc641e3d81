"""Predict GeoTIFF maps for image files, folders or CSVs with a built model."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rasterio.errors import RasterioError

from polyhead.classes import ClassTable
from polyhead.errors import ConfigError, DataError
from polyhead.inference import distributed
from polyhead.inference.crf_raster import check_crf_size, predict_raster_crf
from polyhead.inference.image_level import (
    check_image_level,
    image_level_rows,
    write_image_level_csv,
)
from polyhead.inference.pipeline import auto_io_threads, auto_vector_workers
from polyhead.inference.pipeline_writers import PROBABILITY_DTYPES
from polyhead.inference.predictor import Predictor, has_uncertainty_head
from polyhead.inference.raster_inputs import check_bands, open_raster
from polyhead.inference.rasters import predict_raster
from polyhead.inference.resume import RUN_TAG, finished_by_rank0, run_tag
from polyhead.inference.tiling import Normalize
from polyhead.inference.vector_jobs import VectorJobs, polygonize_beside
from polyhead.paths import open_csv, resolve_cell

#: the image-level heads' outputs, one row per image, beside the rasters
IMAGE_LEVEL_CSV = "image_level.csv"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def _csv_images(path: Path) -> list[Path]:
    """The ``image`` column of a CSV (UTF-8, BOM or not), resolved against its folder."""
    with open_csv(path) as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "image" not in columns:
            raise DataError(f"{path}: no 'image' column (columns: {columns})")
        reader.fieldnames = columns
        cells = [(row.get("image") or "").strip() for row in reader]
    return [resolve_cell(cell, path.parent).resolve() for cell in cells if cell]


def _check_names(images: list[Path]) -> None:
    """DataError listing inputs whose outputs would share a name (``<stem>_classes.tif``)."""
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.stem.casefold(), []).append(image)
    clashes = [paths for paths in by_stem.values() if len(paths) > 1]
    if clashes:
        listed = "; ".join(" and ".join(map(str, paths)) for paths in clashes[:5])
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise DataError(
            f"inputs with the same name would write the same output files: {listed}{more}; "
            "predict them into separate output folders, or rename them"
        )


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image paths from files, folders (their images, sorted) and CSVs (``image`` column).

    A file listed twice is predicted once. DataError when an image is missing, none is found,
    or two inputs share a file name stem (their outputs would overwrite each other).
    """
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.suffix.lower() == ".csv":
            images += _csv_images(item)
        else:
            images.append(item)
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise DataError(f"input image(s) not found: {', '.join(missing[:10])}")
    if not images:
        raise DataError(f"no images found in {[str(i) for i in inputs]}")
    unique: dict[Path, Path] = {}
    for path in images:
        unique.setdefault(path.resolve(), path)  # a file listed twice is predicted once
    _check_names(list(unique.values()))
    return list(unique.values())


def check_inputs(model: Any, images: Sequence[Path]) -> None:
    """Before anything is predicted: every image opens and has the model's band count.

    DataError, one line naming the first file that fails (and how many more do); the band
    count is checked when the model says it (`model_in_channels`)."""
    errors = []
    for image in images:
        try:
            with ExitStack() as stack:
                check_bands(image, open_raster(stack, image).count, model)
        except DataError as err:
            errors.append(str(err))
        except RasterioError as err:
            errors.append(f"cannot read {image}: {err}")
    if errors:
        more = f" (and {len(errors) - 1} more input(s))" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)


def vector_writer(
    vector: str | None, classes: ClassTable | None, min_area: float, simplify: float
) -> Callable[[Path], Any] | None:
    """``write(class_map)``: polygons of a class map into ``<stem>_classes.gpkg`` beside it
    (`polyhead.inference.vector.polygonize_raster`); None without ``vector``. ConfigError
    before any work when the format or the vector module is missing."""
    if vector is None:
        return None
    if vector != "gpkg":
        raise ConfigError(f"vector output must be 'gpkg', got {vector!r}")
    try:
        import polyhead.inference.vector  # noqa: F401  (polygonize_beside imports it)
    except ImportError as err:
        raise ConfigError(f"vector output needs polyhead.inference.vector ({err})") from None
    return partial(polygonize_beside, classes=classes, min_area=min_area, simplify=simplify)


def _raster_sizes(images: Sequence[Path]) -> list[tuple[Path, int, int]]:
    """``(image, height, width)`` of each input (headers only)."""
    sizes = []
    for image in images:
        with ExitStack() as stack:
            src = open_raster(stack, image)
            sizes.append((image, src.height, src.width))
    return sizes


def _image_level_csv(
    model: Any,
    images: Sequence[Path],
    names: list[str],
    out_csv: Path,
    group: distributed.Group,
    options: dict,
) -> None:
    """``image_level.csv`` of every image: each rank runs its share of the images (whole
    images balanced by pixels, as `distributed.assign` shares rasters) and rank 0 writes the
    rows in input order."""
    whole = [distributed.Part(i, 0, 1, 0, h, w) for i, h, w in _raster_sizes(images)]
    mine = [p.image for p in distributed.assign(whole, group.world_size)[group.rank]]

    def rows() -> dict[str, list]:
        return dict(
            zip(map(str, mine), image_level_rows(model, mine, names, **options), strict=True)
        )

    by_image = {key: row for done in distributed.gather(group, rows) for key, row in done.items()}
    if group.rank == 0:
        write_image_level_csv(out_csv, model, names, [by_image[str(i)] for i in images])


#: `predict_raster`'s options that change what is written (not where, or how fast): with
#: the head, TTA, CRF and vector options, they make the run tag (`polyhead.inference.resume`)
SHAPING_OPTIONS = (
    "tile_size", "overlap", "normalize", "precision", "channels_last", "classes", "overviews",
    "probabilities_dtype",
)  # fmt: skip

#: ``run``'s keyword for each output file other than the class map, by file kind
OUTPUT_KEYWORDS = {
    "proba": "probabilities_path",
    "uncertainty": "uncertainty_path",
    "spread": "spread_path",
}


def _predict_one(
    run: Callable[..., Any],
    predictor: Predictor,
    options: dict[str, Any],
    image: Path,
    out: Path,
    stem: str,
    **override: Any,
) -> Any:
    """``run`` (predict_raster or its CRF variant) writing ``<out>/<stem>_<kind>.tif``
    (``override``: options that replace ``options``' for this call)."""
    paths = {keyword: out / f"{stem}_{kind}.tif" for kind, keyword in OUTPUT_KEYWORDS.items()}
    return run(predictor, image, out / f"{stem}_classes.tif", **paths, **{**options, **override})


def _check_options(
    images: Sequence[Path], device: str, io_threads: int | None, dtype: str, crf: bool
) -> None:
    """`predict_files`'s options that can be wrong, checked before anything runs."""
    auto_io_threads(io_threads, torch.device(device))
    if dtype not in PROBABILITY_DTYPES:
        raise ConfigError(
            f"probabilities_dtype must be one of {list(PROBABILITY_DTYPES)}, got {dtype!r}"
        )
    if crf:
        for image in images:
            check_crf_size(image)


def _write_previews(
    class_maps: Sequence[Path], images: Sequence[Path], classes: ClassTable | None
) -> None:
    """``<stem>_preview.png`` beside each class map (`polyhead.inference.preview`)."""
    from polyhead.inference.preview import write_preview

    sources = {image.stem: image for image in images}
    for class_map in class_maps:
        stem = class_map.name.removesuffix(class_map.suffix).removesuffix("_classes")
        png = class_map.with_name(f"{stem}_preview.png")
        write_preview(class_map, png, classes=classes, image_path=sources.get(stem))


def predict_files(
    model: Any,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    normalize: Normalize | None = None,
    head: str | None = None,
    tta: str | Mapping[str, Any] | None = None,
    crf: bool = False,
    write_probabilities: bool = False,
    write_uncertainty: bool = False,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    classes: ClassTable | None = None,
    vector: str | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
    preview: bool = False,
    io_threads: int | None = None,
    overviews: bool = False,
    probabilities_dtype: str = "float32",
    skip_existing: bool = False,
    on_skipped: Callable[[list[Path]], Any] | None = None,
    vector_workers: int | None = 0,
) -> list[Path]:
    """Write ``<stem>_classes.tif`` (and ``_proba.tif``, ``_uncertainty.tif``) per image;
    returns the class maps' paths. A model with image-level heads also gets
    ``image_level.csv`` (one row per image; `polyhead.inference.image_level`).

    ``model``: a polyhead model (e.g. `polyhead.checkpoint.load_checkpoint(path).model`);
    ``normalize``: the input normalisation it was trained with. ``head``: the class-map head
    that answers, or ``"average"`` (default: the model's ``inference_head``); only the heads
    it needs are run. ``tta``: a test-time augmentation spec (``"flips"``,
    ``"flips+scales=0.75,1,1.25"``); maps are averaged over the views. ``crf``: refine each
    image's blended probabilities with a dense CRF (whole image in memory, so every input
    must have at most 4096 x 4096 pixels: checked before anything is predicted).
    ``write_uncertainty``: also write ``<stem>_uncertainty.tif`` (float32): the model's
    uncertainty head when it has one, else the predictive entropy normalised by log K.
    ``batch_size`` None: chosen for the device (`polyhead.inference.pipeline.auto_batch_size`).
    ``precision`` (``fp32``, ``bf16``, ``fp16``), ``channels_last`` and ``classes`` (names
    and colours of the class map and probability bands) reach `predict_raster`. ``vector="gpkg"``:
    also polygonise each class map into ``<stem>_classes.gpkg`` (``min_area``, ``simplify``
    in CRS units; `polyhead.inference.vector`), in ``vector_workers`` spawned processes
    while the next files are predicted (0: in this process, between files; None: 0 on a
    CPU, half the process's CPUs on a GPU; a script calling this with workers needs the
    ``if __name__ == "__main__":`` guard of any spawned process). ``preview``: also
    ``<stem>_preview.png``, a quick look of each class map with class names beside the
    image's RGB stretch (`polyhead.inference.preview`). ``io_threads``: GDAL worker threads decoding the inputs
    and compressing the outputs (default: 1 on a CPU, the process's CPUs on a GPU;
    `polyhead.inference.pipeline.auto_io_threads`). ``overviews``: every GeoTIFF written
    gets internal overviews (`predict_raster`). ``probabilities_dtype``: ``float32``, or
    ``uint8`` (x 255: 4x smaller, written about 4x faster). Every raster written carries
    the run's tag (`polyhead.inference.resume`: the model's weights and these options).
    ``skip_existing``: images whose every requested output is already in ``output_dir``,
    written by a run with the same tag, are not predicted again (`finished_outputs`; to
    resume a long run), and their class maps are returned with the others
    (``on_skipped(images)`` is told which); image-level CSVs are still computed for every
    image.

    ``devices`` x ``num_nodes`` > 1: several processes (Lightning Fabric, DDP; see
    `polyhead.inference.distributed`) share the files by pixel count; a raster larger than
    one process's share is predicted in row blocks, ``<stem>_part-XXXX_<kind>.tif``, with a
    ``<stem>_<kind>.vrt`` mosaic (returned for its class map) equal to a single process's
    output. Without torchrun or SLURM, Fabric starts the other processes by running this
    program again, so call it from a script or the CLI.

    Before any tile runs (and before ``output_dir`` is created) every input is checked:
    it exists and opens, it has the model's band count (``in_channels``), and no two inputs
    share a file name stem: same-named images from different folders (``a/x.tif``,
    ``b/x.tif``) would write the same ``x_classes.tif``, so they are refused with a
    `DataError` listing each clash (predict them into separate output folders); a file
    listed twice is predicted once. The inputs' nodata pixels (nodata value, mask, NaN/inf)
    are nodata in every output (`polyhead.inference.rasters`).
    """
    images = expand_inputs(inputs)  # fail on bad input before any tile runs
    check_inputs(model, images)
    _check_options(images, device, io_threads, probabilities_dtype, crf)
    image_heads = []  # image_level.csv's heads, checked before any tile runs
    if hasattr(model, "image_level_heads") and model.image_level_heads():
        image_heads = check_image_level(model, None, images)
    run = predict_raster_crf if crf else predict_raster
    after = vector_writer(vector, classes, min_area, simplify)
    auto_vector_workers(vector_workers, torch.device(device))  # a bad count fails here
    group = distributed.launch(devices, num_nodes, accelerator)
    workers = auto_vector_workers(vector_workers, group.device or torch.device(device))
    own_uncertainty = write_uncertainty and has_uncertainty_head(model)
    predictor = Predictor(model, head=head, tta=tta, uncertainty=own_uncertainty)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    options = dict(
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=group.device or device,
        write_probabilities=write_probabilities,
        write_uncertainty=write_uncertainty,
        normalize=normalize,
        progress=progress and group.rank == 0,
        precision=precision,
        channels_last=channels_last,
        classes=classes,
        io_threads=io_threads,
        overviews=overviews,
        probabilities_dtype=probabilities_dtype,
    )
    shaping = {k: options[k] for k in SHAPING_OPTIONS}
    shaping.update(head=predictor.head, tta=tta, crf=crf, min_area=min_area, simplify=simplify)
    tag = run_tag(model, shaping)
    options["tags"] = {RUN_TAG: tag}
    skipped: dict[Path, Path] = {}
    if skip_existing:
        kinds = (write_probabilities, write_uncertainty, vector, preview)
        skipped = finished_by_rank0(group, images, output_dir, kinds, tag)
        if on_skipped is not None:
            on_skipped(list(skipped))
    todo = [image for image in images if image not in skipped]
    parts = distributed.plan_parts(
        _raster_sizes(todo), group.world_size, tile_size, overlap, split=not crf
    )
    with VectorJobs(after, workers) if after is not None else nullcontext() as jobs:
        written = distributed.run_parts(
            parts,
            group,
            partial(_predict_one, run, predictor, options),
            output_dir,
            tile_size,
            overlap,
            after_class_map=jobs,
        )
    if preview and group.rank == 0:
        _write_previews(written, images, classes)  # the new ones: a skipped image has its own
    if image_heads:
        image_options = dict(normalize=normalize, tile_size=tile_size, batch_size=batch_size or 4)
        image_options.update(device=group.device or device, progress=progress and group.rank == 0)
        csv_path = output_dir / IMAGE_LEVEL_CSV
        _image_level_csv(model, images, image_heads, csv_path, group, image_options)
    by_image = {**dict(zip(todo, written, strict=True)), **skipped}
    return [by_image[image] for image in images]
