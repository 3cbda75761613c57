"""Chunk sizes for lazy 4D-STEM arrays.

A 4D datacube ``(rx, ry, qx, qy)`` is read most efficiently in blocks of whole scan
rows with the whole detector in each chunk: every algorithm that works pattern by
pattern (virtual images, centre of mass, disk detection) then needs no data from
other chunks, and a row block is one contiguous run of bytes in C-ordered files.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_CHUNK_BYTES", "scan_row_chunks", "auto_chunks"]

#: Target size of one chunk, bytes (96 MiB, inside the 64-128 MB sweet spot of dask).
DEFAULT_CHUNK_BYTES: int = 96 * 2**20


def _balanced(n: int, size: int) -> int:
    """Largest-first balanced chunk size: same number of chunks, sizes as equal as can be."""
    size = max(1, min(int(size), n))
    nchunks = math.ceil(n / size)
    return math.ceil(n / nchunks)


def scan_row_chunks(
    shape: Sequence[int], itemsize: int, target_bytes: int | None = None
) -> tuple[int, ...]:
    """Chunk shape of whole scan rows (and the whole detector) of about ``target_bytes``.

    Parameters
    ----------
    shape
        Array shape, scan rows first: ``(rx, ry, qx, qy)`` for a datacube; any
        ``(n, ...)`` shape works (chunks along the first axis only).
    itemsize
        Bytes per element (``dtype.itemsize``).
    target_bytes
        Wanted chunk size, bytes (default :data:`DEFAULT_CHUNK_BYTES`, 96 MiB).

    Returns
    -------
    Chunk size per axis, e.g. ``(32, 256, 128, 128)``: a number of whole rows along the
    first axis, balanced so that all chunks have nearly the same size, and the full
    extent on every other axis. When a single scan row is more than twice
    ``target_bytes`` (huge detectors), a row is split along the second axis instead.
    """
    if target_bytes is None:
        target_bytes = DEFAULT_CHUNK_BYTES
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must hold non-negative sizes, got {shape}")
    if int(itemsize) <= 0:
        raise ValueError(f"itemsize must be a positive number of bytes, got {itemsize!r}")
    if int(target_bytes) <= 0:
        raise ValueError(f"target_bytes must be positive, got {target_bytes!r}")
    if not shape:
        return ()
    if min(shape) == 0:
        return tuple(max(1, s) for s in shape)
    row_bytes = math.prod(shape[1:]) * int(itemsize)
    if row_bytes <= 2 * target_bytes or len(shape) == 1:
        rows = _balanced(shape[0], max(1, target_bytes // row_bytes))
        return (rows,) + shape[1:]
    item_bytes = math.prod(shape[2:]) * int(itemsize)
    cols = _balanced(shape[1], max(1, target_bytes // item_bytes))
    return (1, cols) + shape[2:]


def auto_chunks(
    dims: Sequence[Hashable],
    shape: Sequence[int],
    itemsize: int,
    previous: Mapping[Hashable, Any] | None = None,
    target_bytes: int | None = None,
) -> dict[Hashable, int | str]:
    """Chunks (``{dim: size}``) for one variable of a stem4d file.

    A variable whose first dim is ``rx`` gets :func:`scan_row_chunks`; its row count is
    rounded to a multiple of the stored chunk along ``rx`` (``previous``, the
    ``preferred_chunks`` of the file) so no stored chunk is split. Other variables are
    one chunk when smaller than ``target_bytes`` and dask's ``"auto"`` otherwise.
    """
    if target_bytes is None:
        target_bytes = DEFAULT_CHUNK_BYTES
    dims = list(dims)
    shape = [int(s) for s in shape]
    if dims and dims[0] == "rx":
        sizes = list(scan_row_chunks(shape, itemsize, target_bytes))
        stored = (previous or {}).get("rx")
        if isinstance(stored, int) and 0 < stored < shape[0] and len(shape) > 1 \
                and sizes[1] == shape[1]:
            sizes[0] = max(stored, (sizes[0] // stored) * stored)
        return dict(zip(dims, sizes, strict=True))
    if math.prod(shape) * int(itemsize) <= target_bytes:
        return {d: -1 for d in dims}
    return {d: "auto" for d in dims}
