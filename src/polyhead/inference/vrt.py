"""GDAL VRT files written as XML: a window of rows of a raster, and a mosaic of row blocks.

rasterio reads VRTs but writes none (``rasterio.vrt`` only builds warped ones), and
``gdalbuildvrt`` is not installed, so the XML is written here with GDAL's standard elements
(``VRTDataset``, ``VRTRasterBand``, ``SimpleSource``; https://gdal.org/drivers/raster/vrt.html).
Sources are named relative to the VRT when they lie in its folder, so an output folder can
be moved or copied whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

from polyhead.errors import DataError
from polyhead.io import atomic_write, overview_factors

#: numpy dtype name -> GDAL data type name
GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


def _gdal_type(dtype: str) -> str:
    if dtype not in GDAL_TYPES:
        raise DataError(f"no GDAL VRT data type for {dtype!r}")
    return GDAL_TYPES[dtype]


def _nodata_text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def _dataset(width: int, height: int, crs: Any, transform: Any) -> ET.Element:
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS").text = crs.to_wkt()
    if transform is not None:
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    return root


def _source_name(source: Path, vrt_path: Path) -> tuple[str, str]:
    """``(name, relativeToVRT)``: relative when ``source`` lies in the VRT's folder tree."""
    source, folder = Path(os.path.abspath(source)), Path(os.path.abspath(vrt_path)).parent
    try:
        return source.relative_to(folder).as_posix(), "1"
    except ValueError:
        return str(source), "0"


def _simple_source(
    parent: ET.Element,
    source: Path,
    vrt_path: Path,
    band: int | str,
    src_rect: tuple[int, int, int, int],
    dst_rect: tuple[int, int, int, int],
) -> None:
    """A ``SimpleSource`` copying ``src_rect`` (x, y, w, h) of ``source``'s band to ``dst_rect``."""
    node = ET.SubElement(parent, "SimpleSource")
    name, relative = _source_name(source, vrt_path)
    ET.SubElement(node, "SourceFilename", relativeToVRT=relative).text = name
    ET.SubElement(node, "SourceBand").text = str(band)
    for tag, (x, y, w, h) in (("SrcRect", src_rect), ("DstRect", dst_rect)):
        ET.SubElement(node, tag, xOff=str(x), yOff=str(y), xSize=str(w), ySize=str(h))


def _write(root: ET.Element, path: Path) -> Path:
    ET.indent(root)
    with atomic_write(path, verify=_opens) as tmp:
        tmp.write_bytes(ET.tostring(root, encoding="utf-8"))
    return path


def _opens(tmp: Path) -> bool:
    with rasterio.open(tmp, driver="VRT") as src:
        src.read(1, window=Window(0, 0, 1, 1))
    return True


def write_window_vrt(image: Path, vrt_path: Path, row0: int, row1: int) -> Path:
    """A VRT of rows ``[row0, row1)`` of ``image`` (all columns and bands), georeferenced
    like that window; each band keeps its nodata value, colour interpretation (alpha) and a
    per-dataset mask, so the window reads exactly as those rows of ``image`` do."""
    with rasterio.open(image) as src:
        height, width = row1 - row0, src.width
        georeferenced = src.crs is not None or not src.transform.is_identity
        transform = src.window_transform(Window(0, row0, width, height))
        root = _dataset(width, height, src.crs, transform if georeferenced else None)
        rect = (0, row0, width, height), (0, 0, width, height)
        for band in range(1, src.count + 1):
            node = ET.SubElement(
                root, "VRTRasterBand", dataType=_gdal_type(src.dtypes[band - 1]), band=str(band)
            )
            if src.nodatavals[band - 1] is not None:
                ET.SubElement(node, "NoDataValue").text = _nodata_text(src.nodatavals[band - 1])
            if src.colorinterp[band - 1] == ColorInterp.alpha:
                ET.SubElement(node, "ColorInterp").text = "Alpha"
            _simple_source(node, Path(image), vrt_path, band, *rect)
        flags = src.mask_flag_enums[0]
        if MaskFlags.per_dataset in flags and not {MaskFlags.alpha, MaskFlags.nodata} & set(flags):
            mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
            _simple_source(mask, Path(image), vrt_path, "mask,1", *rect)
    return _write(root, vrt_path)


def _color_table(node: ET.Element, colormap: dict[int, Sequence[int]]) -> None:
    ET.SubElement(node, "ColorInterp").text = "Palette"
    table = ET.SubElement(node, "ColorTable")
    for k in range(max(colormap) + 1):
        rgba = colormap.get(k, (0, 0, 0, 0))
        ET.SubElement(table, "Entry", **{f"c{i + 1}": str(int(v)) for i, v in enumerate(rgba)})


def write_mosaic_vrt(parts: Sequence[Path], rows: Sequence[int], vrt_path: Path) -> Path:
    """A VRT stacking ``parts`` (GeoTIFFs of the same width, bands and data type) top to
    bottom: part ``i`` fills rows ``rows[i]`` to ``rows[i] + its height``. Georeference,
    nodata, band descriptions, the colour table and the metadata (run tag) come from the
    first part; when it has
    overviews (``predict --overviews``), the VRT declares its own (GDAL reads them from the
    parts' overviews). The result is checked to open before it is moved into place."""
    if not parts or len(parts) != len(rows):
        raise DataError(f"{vrt_path}: need one start row per part, got {len(parts)} and {rows}")
    with rasterio.open(parts[0]) as first:
        width, count, dtypes = first.width, first.count, first.dtypes
        nodata, names = first.nodatavals, first.descriptions
        crs, transform = first.crs, first.transform
        georeferenced = crs is not None or not transform.is_identity
        colormap = _colormap(first)
        resampling = first.tags(ns="rio_overview").get("resampling") if first.overviews(1) else None
        tags = first.tags()
        shapes = []
        for part in parts:
            with rasterio.open(part) as src:
                if (src.width, src.count, src.dtypes) != (width, count, dtypes):
                    raise DataError(f"{part}: width, bands or data type differ from {parts[0]}")
                shapes.append(src.height)
    height = rows[-1] + shapes[-1]
    origin = transform * transform.translation(0, -rows[0]) if georeferenced else None
    root = _dataset(width, height, crs, origin)
    if tags:
        metadata = ET.SubElement(root, "Metadata")
        for key, value in tags.items():
            ET.SubElement(metadata, "MDI", key=key).text = value
    for band in range(1, count + 1):
        node = ET.SubElement(
            root, "VRTRasterBand", dataType=_gdal_type(dtypes[band - 1]), band=str(band)
        )
        if names[band - 1]:
            ET.SubElement(node, "Description").text = names[band - 1]
        if nodata[band - 1] is not None:
            ET.SubElement(node, "NoDataValue").text = _nodata_text(nodata[band - 1])
        if band == 1 and colormap:
            _color_table(node, colormap)
        for part, row, h in zip(parts, rows, shapes, strict=True):
            _simple_source(node, part, vrt_path, band, (0, 0, width, h), (0, row, width, h))
    if resampling and overview_factors(height, width):  # the parts have overviews: so has this
        factors = " ".join(map(str, overview_factors(height, width)))
        ET.SubElement(root, "OverviewList", resampling=resampling).text = factors
    return _write(root, vrt_path)


def _colormap(src: Any) -> dict[int, Sequence[int]] | None:
    try:
        return src.colormap(1)
    except ValueError:  # no colour table
        return None
