"""``stem4d.open``: pick the reader for a file; ``describe``: summarize a file.

Dispatch order:

1. a missing path → ``FileNotFoundError``;
2. ``.zarr`` (or a directory holding zarr metadata) → stem4d/xarray zarr store;
3. ``.npy`` → :func:`read_npy`; ``.raw`` → :func:`read_empad` (needs ``scan_shape``);
4. an HDF5 file (any suffix, found by its signature): with the root attr
   ``stem4d_saved_as`` → stem4d file; EMD 1.0 (root attr ``emd_group_type='file'``) →
   :func:`read_py4dstem`; with ``key=`` → :func:`read_hdf5`; a suffix RosettaSciIO
   reads (``.emd``, ``.hspy``, ...) → :func:`read_rsciio`; a netCDF-4 file written by
   other tools → xarray Dataset; otherwise a ``ValueError`` listing its datasets;
5. a classic netCDF ``.nc`` → xarray Dataset;
6. ``.nc``/``.h5``/``.hdf5`` that are none of these → ``ValueError`` (corrupt file);
7. any other suffix RosettaSciIO knows (dm3, dm4, mib, mrc, tvips, blo, ...) →
   :func:`read_rsciio`; else ``ValueError`` listing the supported suffixes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..datacube import calibration_summary
from ._common import existing_path, format_datasets, is_hdf5, is_netcdf3, list_datasets, open_h5
from .microscope import read_rsciio, rsciio_extensions
from .native import NETCDF_SUFFIXES, TYPE_ATTR, ZARR_SUFFIXES, open_native
from .py4dstem import is_py4dstem_file, read_py4dstem
from .raw import read_empad, read_hdf5, read_npy

__all__ = ["open", "describe", "detect_format"]

_HDF5_GENERIC = {".h5", ".hdf5", ".nc", ".he5", ".hdf"}


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zgroup",
                                                               ".zattrs", ".zarray"))


def _looks_like_netcdf4(h5file: Any) -> bool:
    if "_NCProperties" in h5file.attrs:
        return True
    return any(
        obj.attrs.get("CLASS") == b"DIMENSION_SCALE" for obj in h5file.values()
        if hasattr(obj, "shape")
    )


def detect_format(path: str | os.PathLike, *, key: str | None = None) -> str:
    """Name the reader :func:`open` uses for ``path``.

    Returns one of ``"stem4d-netcdf"``, ``"stem4d-zarr"``, ``"netcdf"``, ``"zarr"``,
    ``"npy"``, ``"empad"``, ``"py4dstem"``, ``"hdf5"``, ``"rsciio"``. Raises
    ``FileNotFoundError`` or a ``ValueError`` that names the file and the problem.
    """
    p = existing_path(path)
    suffix = p.suffix.lower()
    if suffix in ZARR_SUFFIXES or _is_zarr_dir(p):
        if not _is_zarr_dir(p):
            raise ValueError(f"{p} is not a zarr store (no zarr.json or .zgroup inside)")
        from .native import read_root_attrs

        return "stem4d-zarr" if TYPE_ATTR in read_root_attrs(p, "zarr") else "zarr"
    if p.is_dir():
        raise ValueError(f"{p} is a directory, not a data file or zarr store")
    if suffix == ".npy":
        return "npy"
    if suffix == ".raw":
        return "empad"
    rsciio_ext = suffix.lstrip(".") in rsciio_extensions()
    if is_hdf5(p):
        with open_h5(p) as f:
            if TYPE_ATTR in f.attrs:
                return "stem4d-netcdf"
            if is_py4dstem_file(f):
                return "py4dstem"
            if key is not None:
                return "hdf5"
            if rsciio_ext and suffix not in _HDF5_GENERIC:
                return "rsciio"
            if _looks_like_netcdf4(f):
                return "netcdf"
            listing = format_datasets(list_datasets(f))
        raise ValueError(
            f"{p} is an HDF5 file that is neither a stem4d file nor a py4DSTEM (EMD 1.0) "
            f"file: pass key= naming the dataset to read, e.g. stem4d.open(path, "
            f"key='/path/to/data'), or read it with stem4d.read_rsciio(path, reader=...). "
            f"Its datasets are:\n{listing}"
        )
    if suffix == ".nc" and is_netcdf3(p):
        return "netcdf"
    if suffix in NETCDF_SUFFIXES or suffix in _HDF5_GENERIC:
        size = p.stat().st_size
        raise ValueError(
            f"cannot read {p}: it is not an HDF5/netCDF file (no HDF5 signature in its "
            f"{size} bytes), it may be corrupt or not what its suffix says"
        )
    if rsciio_ext:
        return "rsciio"
    known = rsciio_extensions()
    hint = ", ".join(known) if known else (
        'none: RosettaSciIO is not installed (pip install "stem4d[formats]")')
    raise ValueError(
        f"cannot open {p}: unknown suffix {p.suffix!r}. stem4d reads .nc, .h5, .hdf5 "
        f"(stem4d, py4DSTEM, plain HDF5 with key=), .zarr, .npy, .raw (EMPAD); through "
        f"RosettaSciIO: {hint}"
    )


def open(
    path: str | os.PathLike,
    *,
    chunks: Any = "auto",
    key: str | None = None,
    **kwargs: Any,
) -> xr.DataArray | xr.Dataset | xr.DataTree:
    """Open a 4D-STEM file lazily, whatever its format.

    Parameters
    ----------
    path
        File to read: a stem4d ``.nc``/``.h5``/``.zarr`` file (the saved DataArray,
        Dataset or DataTree comes back), ``.npy``, EMPAD ``.raw``, a py4DSTEM EMD 1.0
        file, a plain HDF5 file (with ``key``), or any format RosettaSciIO reads.
    chunks
        ``"auto"``: dask arrays in chunks of whole scan rows with the whole detector,
        ~100 MB each (see :func:`stem4d.io.chunks.scan_row_chunks`). Other values are
        dask/xarray chunks (``None`` for stem4d files: lazily indexed, no dask).
    key
        Dataset path in a plain HDF5 file; for a stem4d DataTree file, a group to open
        as a Dataset.
    **kwargs
        Passed to the reader: calibration keywords and ``scan_shape`` for ``.npy``,
        ``.raw`` and HDF5 (see :func:`read_npy`, :func:`read_empad`, :func:`read_hdf5`),
        ``name`` for py4DSTEM, ``reader`` and plugin options for RosettaSciIO, and
        xarray options for stem4d files.

    Returns
    -------
    A DataArray (datacube ``(rx, ry, qx, qy)`` with calibrated coordinates for the
    readers), or the Dataset/DataTree a stem4d file holds.

    Raises
    ------
    FileNotFoundError
        Naming the missing file.
    ValueError
        Naming the file and what is wrong: an unknown suffix (with the supported ones),
        a truncated or corrupt file, an HDF5 file without ``key`` (with its datasets).
    """
    p = Path(path).expanduser()
    fmt = detect_format(p, key=key)
    if fmt in ("stem4d-netcdf", "netcdf"):
        if fmt == "netcdf" and not is_hdf5(p):  # classic netCDF
            return xr.open_dataset(p, chunks=None if chunks == "auto" else chunks, **kwargs)
        return open_native(p, "netcdf", chunks=chunks, key=key, **kwargs)
    if fmt in ("stem4d-zarr", "zarr"):
        return open_native(p, "zarr", chunks=chunks, key=key, **kwargs)
    if fmt == "npy":
        return read_npy(p, chunks=chunks, **kwargs)
    if fmt == "empad":
        if "scan_shape" not in kwargs:
            raise ValueError(
                f"reading the EMPAD raw file {p} needs scan_shape=(rx, ry) (and "
                "detector_shape=(qx, qy) if not (128, 128))"
            )
        return read_empad(p, chunks=chunks, **kwargs)
    if fmt == "py4dstem":
        return read_py4dstem(p, chunks=chunks, **kwargs)
    if fmt == "hdf5":
        return read_hdf5(p, key, chunks=chunks, **kwargs)
    return read_rsciio(p, chunks=chunks, **kwargs)


# ---------------------------------------------------------------------- describe
_KIND = {
    "stem4d-netcdf": "stem4d netCDF-4/HDF5 (h5netcdf)",
    "stem4d-zarr": "stem4d zarr",
    "netcdf": "netCDF (xarray)",
    "zarr": "zarr (xarray)",
    "npy": "numpy .npy (memory-mapped)",
    "empad": "EMPAD raw",
    "py4dstem": "py4DSTEM EMD 1.0 (HDF5)",
    "hdf5": "HDF5 dataset",
    "rsciio": "RosettaSciIO",
}


def _describe_array(da: xr.DataArray, indent: str) -> list[str]:
    lines = [
        f"{indent}dims: " + ", ".join(f"{d}={n}" for d, n in da.sizes.items()),
        f"{indent}shape: {tuple(da.shape)}  dtype: {da.dtype}",
    ]
    if da.chunks is not None:
        chunksize = tuple(c[0] if c else 0 for c in da.chunks)
        nchunks = int(np.prod([len(c) for c in da.chunks]))
        lines.append(f"{indent}chunks: {chunksize} ({nchunks} chunk{'s' * (nchunks != 1)}, "
                     f"{np.prod(chunksize) * da.dtype.itemsize / 2**20:.3g} MiB each)")
    else:
        lines.append(f"{indent}chunks: none (in memory or lazily indexed)")
    try:
        summary = calibration_summary(da)
    except Exception as err:  # a variable without the calibration coords
        summary = {"(calibration)": f"unavailable: {err}"}
    if summary:
        lines.append(f"{indent}calibration:")
        lines.extend(f"{indent}  {k}: {v}" for k, v in summary.items())
    return lines


def _describe_dataset(ds: xr.Dataset, indent: str) -> list[str]:
    lines = []
    for name, var in ds.data_vars.items():
        lines.append(f"{indent}variable {name!r}:")
        lines.extend(_describe_array(var, indent + "  "))
    if not ds.data_vars:
        lines.append(f"{indent}(no data variables)")
    return lines


def describe(path: str | os.PathLike, **kwargs: Any) -> str:
    """Text summary of a file for ``stem4d info FILE``.

    Lists the file, its format and kind of object, then for each array (each
    variable of a Dataset, each variable of each DataTree node) its dims, shape,
    dtype, chunks and calibrations (:func:`stem4d.calibration_summary`). ``kwargs``
    go to :func:`open` (e.g. ``scan_shape`` for EMPAD files).
    """
    p = Path(path).expanduser()
    fmt = detect_format(p, key=kwargs.get("key"))
    obj = open(p, **kwargs)
    lines = [f"file: {p}", f"format: {_KIND.get(fmt, fmt)}"]
    if isinstance(obj, xr.DataArray):
        lines.append(f"kind: DataArray {obj.name!r}")
        lines.extend(_describe_array(obj, "  "))
    elif isinstance(obj, xr.Dataset):
        lines.append(f"kind: Dataset with {len(obj.data_vars)} variable(s)")
        lines.extend(_describe_dataset(obj, "  "))
    else:
        lines.append(f"kind: DataTree with {len(list(obj.subtree))} node(s)")
        for node in obj.subtree:
            lines.append(f"  node {node.path}:")
            lines.extend(_describe_dataset(node.to_dataset(inherit=True), "    "))
    if obj.attrs:
        shown = ", ".join(f"{k}={v!r}" for k, v in list(obj.attrs.items())[:8]
                          if not isinstance(v, dict))
        if shown:
            lines.append(f"attrs: {shown}")
    return "\n".join(lines)
