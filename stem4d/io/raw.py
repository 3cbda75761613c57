"""Readers for plain arrays: numpy ``.npy``, raw EMPAD frames and plain HDF5 datasets.

All three return a lazy (dask-backed) datacube built by :func:`stem4d.datacube` (or
:func:`stem4d.reshape_scan` for a flat ``(N, qx, qy)`` stack), chunked in whole scan
rows (:func:`stem4d.io.chunks.scan_row_chunks`). Calibration keywords (``r_step``,
``r_units``, ``q_step``, ``q_units``, ``beam_energy`` in eV, ``convergence_semiangle``
in mrad, ``origin`` in detector pixels, ``name``, ``attrs``) go to
:func:`stem4d.datacube`; without them the coordinates are in pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ..datacube import CUBE_DIMS, datacube, reshape_scan
from ._common import (
    DatasetNotFoundError,
    HDF5Array,
    existing_path,
    format_datasets,
    list_datasets,
    merge_attrs,
    open_h5,
)
from .chunks import scan_row_chunks

__all__ = ["read_npy", "read_empad", "read_hdf5"]


def _lazy(array: Any, chunks: Any, name: str) -> da.Array:
    """dask array over a memmap/HDF5 source, ``chunks="auto"`` meaning scan rows.

    ``name`` identifies the source; the dask name adds a token of the chunks.
    """
    if chunks is None or chunks == "auto":
        chunks = scan_row_chunks(array.shape, array.dtype.itemsize)
    name = f"{name}-{tokenize(chunks)}"
    return da.from_array(array, chunks=chunks, name=name,
                         meta=np.empty((0,) * array.ndim, dtype=array.dtype))


def _lazy_stack(array: Any, scan_shape: Sequence[int], chunks: Any, name: str) -> da.Array:
    """dask array over a flat ``(N, qx, qy)`` source, chunked in whole scan rows."""
    if chunks is None or chunks == "auto":
        ry = int(scan_shape[1])
        rows = scan_row_chunks(tuple(scan_shape) + tuple(array.shape[1:]),
                               array.dtype.itemsize)[0]
        chunks = (rows * ry,) + tuple(array.shape[1:])
    name = f"{name}-{tokenize(chunks)}"
    return da.from_array(array, chunks=chunks, name=name,
                         meta=np.empty((0,) * array.ndim, dtype=array.dtype))


def _check_scan_shape(scan_shape: Any, path: Any) -> tuple[int, int]:
    try:
        rx, ry = (int(s) for s in scan_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"scan_shape must be a pair (rx, ry) of scan rows and columns for {path}, "
            f"got {scan_shape!r}"
        ) from None
    if rx < 1 or ry < 1:
        raise ValueError(f"scan_shape must be positive, got {scan_shape!r} for {path}")
    return rx, ry


def _build(data: da.Array, scan_shape: Any, path: Any, what: str,
           calibration: dict[str, Any]) -> xr.DataArray:
    """Datacube from a 4D array, or from a 3D stack reshaped with ``scan_shape``."""
    if data.ndim == 4:
        if scan_shape is not None and tuple(_check_scan_shape(scan_shape, path)) != \
                tuple(data.shape[:2]):
            raise ValueError(
                f"scan_shape {tuple(scan_shape)} does not match the scan axes "
                f"{tuple(data.shape[:2])} of the 4-D {what} in {path}"
            )
        return datacube(data, **calibration)
    if data.ndim == 3:
        if scan_shape is None:
            raise ValueError(
                f"the {what} in {path} is 3-D {tuple(data.shape)} (N, qx, qy): pass "
                "scan_shape=(rx, ry) to reshape it into a datacube"
            )
        return reshape_scan(data, _check_scan_shape(scan_shape, path), **calibration)
    raise ValueError(
        f"the {what} in {path} has shape {tuple(data.shape)}: expected 4-D "
        "(rx, ry, qx, qy) or 3-D (N, qx, qy) with scan_shape"
    )


# ---------------------------------------------------------------------------- npy
def read_npy(
    path: str | os.PathLike,
    *,
    scan_shape: Sequence[int] | None = None,
    chunks: Any = "auto",
    **calibration: Any,
) -> xr.DataArray:
    """Read a numpy ``.npy`` file as a lazy datacube (memory-mapped, never loaded whole).

    Parameters
    ----------
    path
        ``.npy`` file holding a 4-D ``(rx, ry, qx, qy)`` array, or a 3-D ``(N, qx, qy)``
        stack of patterns in raster order (``ry`` fastest).
    scan_shape
        ``(rx, ry)``; required for a 3-D stack.
    chunks
        ``"auto"`` (whole scan rows, ~100 MB per chunk) or dask chunks.
    **calibration
        Keywords of :func:`stem4d.datacube` (``r_step`` Å, ``q_step`` 1/Å or mrad, ...).

    Returns
    -------
    Datacube DataArray backed by a dask array over a read-only ``np.memmap``.
    """
    p = existing_path(path)
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        size = p.stat().st_size
        raise ValueError(
            f"cannot read {p} as a .npy file ({size} bytes): it may be truncated or "
            f"corrupt ({err})"
        ) from err
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{p} is an .npz archive, not a single .npy array")
    name = f"npy-{tokenize(str(p.resolve()), p.stat().st_mtime_ns)}"
    if arr.ndim == 3 and scan_shape is not None:
        rx, ry = _check_scan_shape(scan_shape, p)
        if rx * ry == arr.shape[0]:
            data = _lazy_stack(arr, (rx, ry), chunks, name)
        else:
            data = _lazy(arr, chunks, name)
    else:
        data = _lazy(arr, chunks, name)
    merge_attrs(calibration, file=str(p.resolve()), format="npy")
    return _build(data, scan_shape, p, "array", calibration)


# -------------------------------------------------------------------------- EMPAD
def read_empad(
    path: str | os.PathLike,
    *,
    scan_shape: Sequence[int],
    detector_shape: Sequence[int] = (128, 128),
    dtype: Any = "float32",
    offset: int = 0,
    gap: int = 1024,
    chunks: Any = "auto",
    **calibration: Any,
) -> xr.DataArray:
    """Read a raw EMPAD file as a lazy datacube.

    The file holds ``offset`` header bytes, then ``rx * ry`` frames in raster order
    (``ry`` fastest), each ``detector_shape`` values of ``dtype`` followed by ``gap``
    bytes (EMPAD appends 2 rows of 128 float32 = 1024 bytes of metadata to every
    frame); the last frame's gap may be missing.

    Parameters
    ----------
    path
        The ``.raw`` file.
    scan_shape
        ``(rx, ry)``: scan rows and columns.
    detector_shape
        ``(qx, qy)`` of one frame, pixels.
    dtype
        Pixel type (EMPAD: little-endian ``float32``).
    offset
        Header bytes before the first frame.
    gap
        Bytes after each frame.
    chunks
        ``"auto"`` (whole scan rows) or dask chunks.
    **calibration
        Keywords of :func:`stem4d.datacube`.

    Returns
    -------
    Datacube DataArray backed by dask over a read-only memory map: a strided view of
    the file's bytes that skips the gaps, so nothing is read until computed.

    Raises
    ------
    ValueError
        Naming the file, the expected and the actual size, when the file does not
        hold exactly the frames of the given shapes (it is truncated, or the shapes
        are wrong).
    """
    p = existing_path(path)
    rx, ry = _check_scan_shape(scan_shape, p)
    try:
        dr, dc = (int(s) for s in detector_shape)
    except (TypeError, ValueError):
        raise ValueError(f"detector_shape must be a pair (qx, qy), got {detector_shape!r}") \
            from None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a numpy dtype such as 'float32', got {dtype!r}") from None
    if dr < 1 or dc < 1 or int(offset) < 0 or int(gap) < 0:
        raise ValueError(
            "detector_shape must be positive and offset, gap non-negative (bytes), got "
            f"detector_shape={detector_shape!r}, offset={offset!r}, gap={gap!r}"
        )
    offset, gap = int(offset), int(gap)
    frame = dr * dc * dt.itemsize
    record = frame + gap
    n = rx * ry
    full = offset + n * record
    minimum = full - gap
    size = p.stat().st_size
    if not minimum <= size <= full:
        problem = "too small: truncated, or" if size < minimum else "too large:"
        raise ValueError(
            f"EMPAD file {p} is {problem} the shapes are wrong: scan_shape={(rx, ry)}, "
            f"detector_shape={(dr, dc)}, dtype={dt}, offset={offset}, gap={gap} need "
            f"{full} bytes ({minimum} without the last gap), the file has {size} bytes"
        )
    raw = np.memmap(p, dtype=np.uint8, mode="r", offset=offset, shape=(size - offset,))
    frames = np.ndarray(
        shape=(rx, ry, dr, dc), dtype=dt, buffer=raw, offset=0,
        strides=(ry * record, record, dc * dt.itemsize, dt.itemsize),
    )
    token = tokenize(str(p.resolve()), size, p.stat().st_mtime_ns, dr, dc, dt.str,
                     offset, gap, rx, ry)
    name = f"empad-{token}"
    data = _lazy(frames, chunks, name)
    merge_attrs(calibration, file=str(p.resolve()), format="EMPAD raw")
    return datacube(data, **calibration)


# --------------------------------------------------------------------------- HDF5
def _selection_to_isel(selection: Any) -> dict[str, slice]:
    if not isinstance(selection, tuple):
        selection = (selection,)
    if len(selection) > 4:
        raise ValueError(
            f"selection must have at most 4 entries (rx, ry, qx, qy), got {selection!r}"
        )
    out: dict[str, slice] = {}
    for dim, sel in zip(CUBE_DIMS, selection, strict=False):
        if isinstance(sel, (int, np.integer)):
            sel = slice(int(sel), int(sel) + 1 if sel != -1 else None)
        if not isinstance(sel, slice):
            raise TypeError(
                f"selection entries must be slices or ints, got {sel!r} for {dim}"
            )
        out[dim] = sel
    return out


def read_hdf5(
    path: str | os.PathLike,
    key: str,
    *,
    selection: Any = None,
    scan_shape: Sequence[int] | None = None,
    chunks: Any = "auto",
    **calibration: Any,
) -> xr.DataArray:
    """Read one dataset of a plain HDF5 file as a lazy datacube.

    Parameters
    ----------
    path
        HDF5 file.
    key
        Path of the dataset in the file, e.g. ``"/entry/data/data"``.
    selection
        Optional tuple of slices/ints over ``(rx, ry, qx, qy)``, applied lazily (e.g.
        ``(slice(10, 50), slice(0, 64))`` crops the scan). An int keeps its axis
        with length 1, so the result is still a datacube; coordinates follow the
        selection (the calibration is that of the full array).
    scan_shape
        ``(rx, ry)``; required for a 3-D ``(N, qx, qy)`` dataset.
    chunks
        ``"auto"`` (whole scan rows) or dask chunks.
    **calibration
        Keywords of :func:`stem4d.datacube`.

    Returns
    -------
    Datacube DataArray backed by dask; the h5py file stays open while it is in use.
    """
    p = existing_path(path)
    import h5py

    with open_h5(p) as f:
        obj = f.get(key)
        if not isinstance(obj, h5py.Dataset):
            what = "is a group, not a dataset" if obj is not None else "is not in the file"
            raise DatasetNotFoundError(
                f"key {key!r} {what} {p}; its datasets are:\n"
                f"{format_datasets(list_datasets(f))}"
            )
        key = obj.name
    source = HDF5Array(p, key)
    if source.dtype.kind not in "biufc":
        raise ValueError(f"dataset {key!r} in {p} holds {source.dtype}, not numbers")
    name = f"hdf5-{tokenize(str(p.resolve()), key, p.stat().st_mtime_ns)}"
    if source.ndim == 3 and scan_shape is not None \
            and math.prod(_check_scan_shape(scan_shape, p)) == source.shape[0]:
        data = _lazy_stack(source, scan_shape, chunks, name)
    else:
        data = _lazy(source, chunks, name)
    merge_attrs(calibration, file=str(p.resolve()), format="HDF5", key=key)
    cube = _build(data, scan_shape, p, f"dataset {key!r}", calibration)
    if selection is not None:
        cube = cube.isel(_selection_to_isel(selection))
    return cube
