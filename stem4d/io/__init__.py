"""Reading and writing 4D-STEM data.

``open``/``save`` handle stem4d's own files (netCDF-4/HDF5 through h5netcdf, and
zarr), lazily and atomically; ``open`` also dispatches to the readers for other
formats: numpy ``.npy``, raw EMPAD ``.raw``, plain HDF5 datasets, py4DSTEM EMD 1.0
files and, through the optional RosettaSciIO, the common microscope formats.
Chunk sizes for lazy cubes come from :func:`stem4d.io.chunks.scan_row_chunks`.
"""

from __future__ import annotations

from .dispatch import describe, detect_format, open
from .microscope import read_rsciio
from .native import save
from .py4dstem import read_py4dstem
from .raw import read_empad, read_hdf5, read_npy

__all__ = [
    "open",
    "save",
    "read_npy",
    "read_empad",
    "read_hdf5",
    "read_py4dstem",
    "read_rsciio",
    "describe",
    "detect_format",
]
