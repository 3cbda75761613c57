"""Shared test helpers."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import xarray as xr


class ChunkReads:
    """A dask-backed cube whose chunk reads are counted.

    ``reads.cube`` is ``cube`` with every chunk passed through a counting identity:
    ``reads.count`` is the number of chunks read so far, ``reads.passes`` that number
    in whole passes over the data (``reads.chunks`` reads each).
    """

    def __init__(self, cube: xr.DataArray) -> None:
        assert isinstance(cube.data, da.Array), "ChunkReads needs a dask-backed cube"
        self.count = 0
        self.chunks = cube.data.npartitions
        self._lock = threading.Lock()  # tasks run on several threads
        self.cube = cube.copy(data=cube.data.map_blocks(
            self._read, dtype=cube.dtype, meta=np.array((), cube.dtype)))

    def _read(self, block: np.ndarray) -> np.ndarray:
        with self._lock:
            self.count += 1
        return block

    @property
    def passes(self) -> float:
        return self.count / self.chunks


@pytest.fixture(name="ChunkReads")
def chunk_reads_class() -> type[ChunkReads]:
    """The :class:`ChunkReads` counter, for tests that check how often data are read."""
    return ChunkReads
