"""Helpers shared by the readers: paths, HDF5 access, error messages."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_H5_LOCK = threading.RLock()


class DatasetNotFoundError(KeyError):
    """A key (HDF5 dataset, py4DSTEM DataCube, group) that a file does not hold.

    A ``KeyError`` whose message prints as plain text.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def existing_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path`; ``FileNotFoundError`` naming it if absent."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(p))
    return p


def is_hdf5(path: Path) -> bool:
    """True if ``path`` starts with the HDF5 signature (at 0 or a userblock offset)."""
    if not path.is_file():
        return False
    size = path.stat().st_size
    with path.open("rb") as fh:
        offset = 0
        while offset + 8 <= size:
            fh.seek(offset)
            if fh.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def is_netcdf3(path: Path) -> bool:
    """True if ``path`` starts with the classic netCDF magic ``CDF\\x01``/``\\x02``."""
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        head = fh.read(4)
    return head[:3] == b"CDF" and head[3:4] in (b"\x01", b"\x02", b"\x05")


def open_h5(path: Path) -> Any:
    """Open an HDF5 file read-only; a clear ``ValueError`` naming it when unreadable."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"cannot read {path}: not a readable HDF5 file, it may be truncated or "
            f"corrupt (size {path.stat().st_size} bytes; HDF5 says: {err})"
        ) from err


def as_text(value: Any) -> Any:
    """Decode bytes (and 0-d byte arrays) that h5py returns for strings."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def list_datasets(h5file: Any, limit: int = 40) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, shape, dtype)`` of every dataset in an open h5py file (first ``limit``)."""
    import h5py

    found: list[tuple[str, tuple[int, ...], str]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and len(found) < limit:
            found.append(("/" + name, tuple(obj.shape), str(obj.dtype)))

    h5file.visititems(visit)
    return found


def format_datasets(datasets: list[tuple[str, tuple[int, ...], str]]) -> str:
    """One indented line per dataset: ``name  shape  dtype``."""
    if not datasets:
        return "  (no datasets)"
    return "\n".join(f"  {n}  shape={s}  dtype={d}" for n, s, d in datasets)


class HDF5Array:
    """A lazily opened HDF5 dataset that dask can slice (``da.from_array``).

    The h5py file is opened on first use and kept open for the lifetime of this
    object (and so of the dask graph that holds it). Pickling keeps only the path and
    key, so the array can be shipped to dask workers, which reopen the file.
    """

    def __init__(self, path: str | os.PathLike, key: str) -> None:
        self.path = str(path)
        self.key = key
        self._file: Any = None
        ds = self._dataset()
        self.shape: tuple[int, ...] = tuple(ds.shape)
        self.dtype: np.dtype = ds.dtype
        self.ndim: int = ds.ndim

    def _dataset(self) -> Any:
        import h5py

        with _H5_LOCK:
            if self._file is None or not self._file.id.valid:
                self._file = h5py.File(self.path, "r")
            return self._file[self.key]

    def __getitem__(self, index: Any) -> np.ndarray:
        with _H5_LOCK:
            return np.asarray(self._dataset()[index])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "shape": self.shape,
                "dtype": self.dtype, "ndim": self.ndim}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file = None

    def __repr__(self) -> str:
        return f"HDF5Array({self.path!r}, {self.key!r}, shape={self.shape}, dtype={self.dtype})"


def merge_attrs(calibration: dict[str, Any], **source: Any) -> dict[str, Any]:
    """Add ``source_*`` provenance attrs to the ``attrs`` calibration keyword."""
    attrs = {f"source_{k}": v for k, v in source.items()}
    attrs.update(calibration.get("attrs") or {})
    calibration["attrs"] = attrs
    return calibration
