"""stem4d's own files: netCDF-4 (HDF5, through h5netcdf) and zarr.

A stem4d file is what xarray writes for a Dataset or DataTree, plus a few root attrs:

* ``stem4d_saved_as``: ``"DataArray"``, ``"Dataset"`` or ``"DataTree"``, so that
  :func:`stem4d.open` returns the kind of object that was saved;
* ``stem4d_saved_name``: the JSON-encoded name of a saved DataArray (or DataTree root);
* ``stem4d_version``: the version of stem4d that wrote the file.

A DataArray is stored as the single data variable ``__stem4d_dataarray__`` of a
Dataset, with its own attrs on that variable. Attribute values netCDF/zarr cannot hold
as they are (bool, None, dict, list, tuple, complex, and for zarr numpy scalars and
arrays) are stored as JSON text; each attrs dict that has some lists their names in
the attr ``stem4d_json_attrs``, so reading restores the original Python values. Complex
data need HDF5 compound types, which netCDF-C does not read: such files are written with
h5netcdf's ``invalid_netcdf=True`` (xarray, h5py and h5netcdf read them).

Saving is atomic: the file (or zarr directory) is written under a temporary name in
the target directory and renamed into place only when complete, so an interrupted or
failing save leaves any existing file untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .chunks import auto_chunks

__all__ = ["save", "open_native", "read_root_attrs", "NETCDF_SUFFIXES", "ZARR_SUFFIXES"]

NETCDF_SUFFIXES = (".nc", ".h5", ".hdf5")
ZARR_SUFFIXES = (".zarr",)
TYPE_ATTR = "stem4d_saved_as"
NAME_ATTR = "stem4d_saved_name"
VERSION_ATTR = "stem4d_version"
JSON_ATTRS = "stem4d_json_attrs"
DATAARRAY_VAR = "__stem4d_dataarray__"
_MARK_ATTRS = (TYPE_ATTR, NAME_ATTR, VERSION_ATTR)
_ZARR_OPTIONS = {"zarr_format": 3, "consolidated": False}


# ----------------------------------------------------------------------- attrs
def _to_jsonable(value: Any, where: str) -> Any:
    """Recursively turn ``value`` into JSON types, tagging what JSON cannot say."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, float)) and not isinstance(value, np.generic):
        return value
    if isinstance(value, (complex, np.complexfloating)):
        return {"__complex__": [float(value.real), float(value.imag)]}
    if isinstance(value, np.generic):
        return {"__npscalar__": _to_jsonable(value.item(), where), "dtype": value.dtype.str}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufcUS":
            raise TypeError(f"{where}: arrays of dtype {value.dtype} cannot be saved")
        return {"__ndarray__": _to_jsonable(value.tolist(), where), "dtype": value.dtype.str,
                "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_jsonable(v, where) for v in value]}
    if isinstance(value, list):
        return [_to_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: dict attrs need string keys, got {list(value)!r}")
        return {"__dict__": {k: _to_jsonable(v, where) for k, v in value.items()}}
    raise TypeError(f"{where}: values of type {type(value).__name__} cannot be saved")


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__complex__" in value:
        re, im = value["__complex__"]
        return complex(re, im)
    if "__npscalar__" in value:
        return np.dtype(value["dtype"]).type(_from_jsonable(value["__npscalar__"]))
    if "__ndarray__" in value:
        arr = np.array(_from_jsonable(value["__ndarray__"]), dtype=np.dtype(value["dtype"]))
        return arr.reshape(value["shape"])
    if "__tuple__" in value:
        return tuple(_from_jsonable(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _from_jsonable(v) for k, v in value["__dict__"].items()}
    return value


def _native_attr(value: Any, fmt: str) -> bool:
    """Whether the backend stores ``value`` as it is and gives the same value back."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, str):
        return True
    if fmt == "zarr":  # JSON attrs: numpy types would come back as plain Python ones
        return isinstance(value, (int, float)) and not isinstance(value, np.generic)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    # netCDF attrs of length 1 come back as scalars: only longer 1-D numeric arrays
    return (isinstance(value, np.ndarray) and value.ndim == 1 and value.size > 1
            and value.dtype.kind in "iuf")


def _encode_attrs(attrs: Mapping[Hashable, Any], fmt: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    encoded: list[str] = []
    for key, value in attrs.items():
        key = str(key)
        if key == JSON_ATTRS:
            continue
        if _native_attr(value, fmt):
            out[key] = value
            continue
        try:
            out[key] = json.dumps(_to_jsonable(value, f"{where} attr {key!r}"))
        except TypeError as err:
            warnings.warn(f"{err}; saving its str() instead", stacklevel=4)
            out[key] = str(value)
            continue
        encoded.append(key)
    if encoded:
        out[JSON_ATTRS] = json.dumps(encoded)
    return out


def _decode_attrs(attrs: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
    out = dict(attrs)
    keys = out.pop(JSON_ATTRS, None)
    if keys is None:
        return out
    for key in json.loads(keys):
        if key in out:
            out[key] = _from_jsonable(json.loads(out[key]))
    return out


# ---------------------------------------------------------------------- saving
def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in NETCDF_SUFFIXES:
        return "netcdf"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    raise ValueError(
        f"cannot save to {path}: unknown suffix {path.suffix!r}; stem4d.save writes "
        f"netCDF-4/HDF5 ({', '.join(NETCDF_SUFFIXES)}) or zarr ({', '.join(ZARR_SUFFIXES)})"
    )


def _regular(chunks: tuple[tuple[int, ...], ...]) -> bool:
    """Dask chunks that zarr can store: equal sizes, a smaller last one allowed."""
    return all(len(set(c[:-1])) <= 1 and (len(c) < 2 or c[-1] <= c[0]) for c in chunks)


def _prepare_dataset(ds: xr.Dataset, fmt: str, where: str) -> xr.Dataset:
    """Shallow copy of ``ds`` with encodable attrs, fresh encodings and zarr chunks."""
    ds = ds.copy(deep=False)
    ds.attrs = _encode_attrs(ds.attrs, fmt, where)
    rechunked: dict[Hashable, xr.Variable] = {}
    for name, var in ds.variables.items():
        var.attrs = _encode_attrs(var.attrs, fmt, f"{where} variable {name!r}")
        var.encoding = {}
        if fmt != "zarr" or var.ndim == 0 or name in ds.indexes:
            continue
        wanted = auto_chunks(var.dims, var.shape, var.dtype.itemsize)
        if var.chunks is not None:  # dask: keep its chunks unless zarr cannot store them
            if not _regular(var.chunks):
                rechunked[name] = var.chunk(wanted)
        elif all(isinstance(v, int) for v in wanted.values()):
            var.encoding["chunks"] = tuple(
                s if c == -1 else c for s, c in zip(var.shape, wanted.values(), strict=True)
            )
    coords = {k: v for k, v in rechunked.items() if k in ds.coords}
    data_vars = {k: v for k, v in rechunked.items() if k not in ds.coords}
    return ds.assign_coords(coords).assign(data_vars)


def _has_complex(ds: xr.Dataset) -> bool:
    return any(v.dtype.kind == "c" for v in ds.variables.values())


def _marks(kind: str, name: Hashable | None) -> dict[str, Any]:
    from .. import __version__

    marks = {TYPE_ATTR: kind, VERSION_ATTR: __version__}
    if name is not None:
        marks[NAME_ATTR] = json.dumps(_to_jsonable(name, "name"))
    return marks


@contextlib.contextmanager
def _drained_thread_pool():
    """Run dask's local threaded writes on a private pool that is drained on exit.

    When one chunk fails, dask raises at once while other threads may still be
    writing chunks; cleaning up before they stop would leave a half-written
    temporary store behind. Other schedulers (synchronous, processes, a
    ``dask.distributed`` client) are left as they are.
    """
    import dask
    import dask.threaded
    from dask.base import get_scheduler

    if get_scheduler() not in (None, dask.threaded.get):
        yield
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=dask.system.CPU_COUNT)
    try:
        with dask.config.set(scheduler="threads", pool=pool):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write(obj: xr.Dataset | xr.DataTree, target: Path, fmt: str, kwargs: dict) -> None:
    if fmt == "zarr":
        options = {**_ZARR_OPTIONS, **kwargs}
        with _drained_thread_pool():
            obj.to_zarr(target, mode="w", **options)
        return
    if isinstance(obj, xr.DataTree):
        complex_data = any(_has_complex(n.dataset) for n in obj.subtree)
    else:
        complex_data = _has_complex(obj)
    options = dict(kwargs)
    if complex_data:
        options.setdefault("invalid_netcdf", True)
    with warnings.catch_warnings(), _drained_thread_pool():
        warnings.filterwarnings("ignore", message=".*invalid netcdf features.*")
        obj.to_netcdf(target, engine="h5netcdf", **options)


def _remove(path: Path, settle: int = 0, wait_s: float = 0.05) -> None:
    """Remove a file or directory tree. ``settle`` > 0: after a failed write, check up to
    that many times, ``wait_s`` apart, that no writer still running elsewhere (a
    ``dask.distributed`` worker) re-created it, and remove it again if one did."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        for _ in range(settle):
            time.sleep(wait_s)
            if not path.exists():
                return
            shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; a replaced directory is removed only afterwards."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    if not path.is_dir() and not tmp.is_dir():
        os.replace(tmp, path)  # atomic for files
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def _refuse_to_replace_foreign(path: Path, fmt: str) -> None:
    """Never replace a directory that is not a zarr store, nor a file by a zarr store."""
    if not path.exists():
        return
    if fmt != "zarr" and path.is_dir():
        raise IsADirectoryError(
            f"cannot save a {fmt} file to {path}: it is an existing directory "
            "(stem4d will not replace a directory with a file)")
    if fmt == "zarr":
        if not path.is_dir():
            raise FileExistsError(
                f"cannot save a zarr store to {path}: it is an existing file, not a directory")
        if not any((path / marker).exists() for marker in ("zarr.json", ".zgroup", ".zarray")):
            raise FileExistsError(
                f"cannot save a zarr store to {path}: the existing directory is not a zarr "
                "store (no zarr.json/.zgroup), and stem4d will not delete it")


def save(
    obj: xr.DataArray | xr.Dataset | xr.DataTree,
    path: str | os.PathLike,
    *,
    overwrite: bool = True,
    **kwargs: Any,
) -> Path:
    """Save a DataArray, Dataset or DataTree to a stem4d file, atomically.

    Parameters
    ----------
    obj
        The object to save. Data, all coordinates (1-D, 2-D such as ``qx0``/``qy0``,
        and 0-d such as ``beam_energy``), their attrs, the object's attrs and name, and
        complex or bool data all round-trip through :func:`stem4d.open`. Dask-backed
        data are written chunk by chunk, never loaded whole.
    path
        Target file: ``.nc``, ``.h5`` or ``.hdf5`` for netCDF-4/HDF5 (h5netcdf engine),
        ``.zarr`` for a zarr (format 3) directory store.
    overwrite
        Replace an existing file (default). If False and ``path`` exists,
        ``FileExistsError`` is raised.
    **kwargs
        Passed to ``to_netcdf``/``to_zarr`` (e.g. ``encoding`` for compression).

    Returns
    -------
    The path written.

    Notes
    -----
    The file is written under a temporary name in the same directory and renamed into
    place when complete (a zarr directory replaces the old one, which is deleted only
    after the new one is in place). A failing or interrupted save leaves any existing
    file as it was, and removes its temporary file.
    """
    path = Path(path).expanduser()
    fmt = _format_for(path)
    if isinstance(obj, xr.DataArray):
        ds = obj.to_dataset(name=DATAARRAY_VAR, promote_attrs=False)
        ds = _prepare_dataset(ds, fmt, "DataArray")
        ds.attrs = _marks("DataArray", obj.name)
        out: xr.Dataset | xr.DataTree = ds
    elif isinstance(obj, xr.Dataset):
        out = _prepare_dataset(obj, fmt, "Dataset")
        if set(out.attrs) & set(_MARK_ATTRS):
            raise ValueError(f"obj.attrs must not use the reserved names {_MARK_ATTRS}")
        out.attrs.update(_marks("Dataset", None))
    elif isinstance(obj, xr.DataTree):
        nodes = {
            node.path: _prepare_dataset(node.to_dataset(inherit=False), fmt,
                                        f"DataTree node {node.path!r}")
            for node in obj.subtree
        }
        nodes["/"].attrs.update(_marks("DataTree", obj.name))
        out = xr.DataTree.from_dict(nodes, name=obj.name)
    else:
        raise TypeError(
            "obj must be an xarray DataArray, Dataset or DataTree, "
            f"got {type(obj).__name__}"
        )
    if kwargs.get("compute", True) is not True:
        raise ValueError("stem4d.save writes the whole file now: compute=False is not supported")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: directory {path.parent} does not exist")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    _refuse_to_replace_foreign(path, fmt)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        _write(out, tmp, fmt, kwargs)
        _swap_into_place(tmp, path)
    except BaseException:
        _remove(tmp, settle=20)
        raise
    return path


# --------------------------------------------------------------------- opening
def read_root_attrs(path: Path, fmt: str) -> dict[str, Any]:
    """Root attrs of a netCDF/HDF5 (``fmt="netcdf"``) or zarr file, without xarray."""
    if fmt == "zarr":
        import zarr

        try:
            return dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception as err:
            raise ValueError(f"cannot read {path}: not a readable zarr store ({err})") from err
    from ._common import as_text, open_h5

    with open_h5(path) as f:
        return {k: as_text(v) for k, v in f.attrs.items()}


def _chunk_auto(ds: xr.Dataset) -> xr.Dataset:
    """Dask-back every data variable with scan-row chunks; load the small coordinates."""
    ds = ds.copy(deep=False)
    for name in list(ds.coords):
        var = ds.variables[name]
        if name not in ds.indexes and var.nbytes <= 64 * 2**20:
            var.load()
    for name in list(ds.data_vars):
        var = ds.variables[name]
        chunks = auto_chunks(var.dims, var.shape, var.dtype.itemsize,
                             previous=var.encoding.get("preferred_chunks"))
        ds[name] = var.chunk(chunks)
    return ds


def _finish(ds: xr.Dataset, chunks: Any, path: Path) -> xr.Dataset:
    for dim, index in ds.indexes.items():
        values = np.asarray(index)
        if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
            raise ValueError(
                f"cannot read {path}: its coordinate {dim!r} holds NaN or inf; the file is "
                "incomplete or damaged (e.g. a zarr store copied without all its chunk files)"
            )
    if chunks == "auto":
        ds = _chunk_auto(ds)
    ds.attrs = {k: v for k, v in _decode_attrs(ds.attrs).items() if k not in _MARK_ATTRS}
    for var in ds.variables.values():
        var.attrs = _decode_attrs(var.attrs)
    return ds


def _decoded_name(attrs: Mapping[str, Any]) -> Hashable | None:
    if NAME_ATTR not in attrs:
        return None
    return _from_jsonable(json.loads(attrs[NAME_ATTR]))


def open_native(
    path: Path,
    fmt: str,
    *,
    chunks: Any = "auto",
    key: str | None = None,
    **kwargs: Any,
) -> xr.DataArray | xr.Dataset | xr.DataTree:
    """Open a stem4d netCDF/zarr file (or any xarray-written one) lazily.

    ``chunks="auto"`` gives dask arrays in whole-scan-row chunks (see
    :func:`stem4d.io.chunks.scan_row_chunks`); other values go to xarray (``None``:
    lazily indexed, not dask). ``key`` opens one group of a DataTree file as a Dataset.
    """
    root = read_root_attrs(path, fmt)
    kind = root.get(TYPE_ATTR, "Dataset")
    engine = "zarr" if fmt == "zarr" else "h5netcdf"
    options = dict(kwargs)
    if fmt == "zarr" and TYPE_ATTR in root:
        options.setdefault("consolidated", False)
    xr_chunks = None if chunks == "auto" else chunks
    try:
        if kind == "DataTree" and key is None:
            tree = xr.open_datatree(path, engine=engine, chunks=xr_chunks, **options)
        else:
            ds = xr.open_dataset(path, engine=engine, chunks=xr_chunks, group=key, **options)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        what = f"group {key!r} of " if key is not None else ""
        raise ValueError(
            f"cannot read {what}{path} as a {fmt} file ({type(err).__name__}: {err})"
        ) from err
    if kind == "DataTree" and key is None:
        nodes = {node.path: _finish(node.to_dataset(inherit=False), chunks, path)
                 for node in tree.subtree}
        return xr.DataTree.from_dict(nodes, name=_decoded_name(root))
    ds = _finish(ds, chunks, path)
    if kind == "DataArray" and key is None and DATAARRAY_VAR in ds.data_vars:
        da = ds[DATAARRAY_VAR]
        da.name = _decoded_name(root)
        return da
    return ds

