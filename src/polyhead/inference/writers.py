"""Moved to `polyhead.io`; re-exported until the remaining imports switch."""

from polyhead.io.geotiff import AtomicGeoTiff, geotiff_profile  # noqa: F401
