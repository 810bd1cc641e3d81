"""Atomic output files: written beside their final path, checked, then renamed into place.

The lowest layer of polyhead (numpy, rasterio and the standard library only): every file
polyhead writes goes through it. See `polyhead.io.atomic` for the temp naming and stale rules.
"""

from polyhead.io.atomic import (
    TEMP_MARKER,
    AtomicPath,
    Staging,
    WriteError,
    atomic_write,
    clean_output_folder,
    remove_stale_temp_files,
    stale_temp_files,
    temp_owner,
    temp_path,
)
from polyhead.io.files import (
    save_figure,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)
from polyhead.io.geotiff import (
    DEFLATE_LEVEL,
    OVERVIEW_RESAMPLING,
    AtomicGeoTiff,
    BlockRows,
    geotiff_profile,
    overview_factors,
    verify_geotiff,
)

__all__ = [
    "DEFLATE_LEVEL",
    "OVERVIEW_RESAMPLING",
    "TEMP_MARKER",
    "AtomicGeoTiff",
    "AtomicPath",
    "BlockRows",
    "Staging",
    "WriteError",
    "atomic_write",
    "geotiff_profile",
    "overview_factors",
    "clean_output_folder",
    "remove_stale_temp_files",
    "save_figure",
    "stale_temp_files",
    "temp_owner",
    "temp_path",
    "verify_geotiff",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]
