"""dask plumbing shared by the modules: detection and whole-pattern chunks."""

from __future__ import annotations

from typing import Any


def is_dask(data: Any) -> bool:
    """True for a dask array (checked without importing dask)."""
    return type(data).__module__.split(".")[0] == "dask"


def whole_patterns(data: Any) -> Any:
    """Rechunk a 4-D dask cube so each chunk holds whole diffraction patterns.

    The detector axes become one chunk; the scan chunks are re-balanced ("auto") so
    chunks do not grow by the number of detector chunks merged.
    """
    if len(data.chunks[2]) == 1 and len(data.chunks[3]) == 1:
        return data
    return data.rechunk({0: "auto", 1: "auto", 2: -1, 3: -1})
