"""Reader for py4DSTEM files (EMD 1.0 over HDF5, as written by py4DSTEM 0.14).

Layout (checked against files written by py4DSTEM 0.14.18, see
``tests/data/make_py4dstem_file.py``)::

    /                                  attrs emd_group_type='file', version_major=1
    /<tree>_root                       attrs emd_group_type='root'
    /<tree>_root/<name>                attrs emd_group_type='array', python_class='DataCube'
        data                           (Rx, Ry, Qx, Qy) array
        dim0 .. dim3                   [start, step] or full vectors, attrs name, units
    /<tree>_root/metadatabundle/calibration    python_class='Calibration'
        R_pixel_size, R_pixel_units, Q_pixel_size, Q_pixel_units   0-d datasets
        qx0, qy0              origin, detector pixels: (Rx, Ry) arrays or numbers
        qx0_mean, qy0_mean    their means; qx0_shift, qy0_shift: deviations from them
        QR_rotation (rad), QR_rotation_degrees, QR_flip, ...   (-> scan_rotation, scan_flip)

Each calibration dataset has a ``type`` attr (``number``, ``string``, ``array``,
``bool``). py4DSTEM's dim vectors for Q are computed as ``-origin_pixels + i * step``,
mixing pixels with calibrated units, so the Q coordinates here are rebuilt from the
calibration group and the dim vectors are ignored.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ..datacube import _Q_UNITS, _R_UNITS, datacube, set_beam, set_origin
from ..orientation import from_py4dstem, set_orientation
from ._common import (
    DatasetNotFoundError,
    HDF5Array,
    as_text,
    existing_path,
    open_h5,
)
from .chunks import scan_row_chunks

__all__ = ["read_py4dstem", "is_py4dstem_file"]

_BEAM_ENERGY_KEYS = ("beam_energy", "accelerating_voltage", "accel_voltage", "energy")
_CONVERGENCE_KEYS = ("convergence_semiangle_mrad",)


def _group_type(obj: Any) -> str | None:
    value = as_text(obj.attrs.get("emd_group_type"))
    return value if isinstance(value, str) else None


def is_py4dstem_file(h5file: Any) -> bool:
    """True if an open h5py file is an EMD 1.0 file (root attr emd_group_type='file')."""
    return _group_type(h5file) == "file"


def _find_datacubes(h5file: Any) -> list[str]:
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and _group_type(obj) == "array" \
                and as_text(obj.attrs.get("python_class")) == "DataCube" and "data" in obj:
            found.append("/" + name)

    h5file.visititems(visit)
    return found


def _emd_groups(h5file: Any) -> list[str]:
    """``path (python_class)`` of the EMD groups in a file (for error messages)."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        kind = as_text(obj.attrs.get("python_class"))
        if _group_type(obj) in ("array", "pointlist", "pointlistarray") and len(found) < 30:
            found.append(f"/{name} ({kind})")

    h5file.visititems(visit)
    return found


def _find_root(h5file: Any, group_path: str) -> str | None:
    """Path of the nearest ancestor group with emd_group_type='root'."""
    parts = group_path.strip("/").split("/")
    for i in range(len(parts) - 1, 0, -1):
        candidate = "/" + "/".join(parts[:i])
        if _group_type(h5file[candidate]) == "root":
            return candidate
    return None


def _read_calibration(h5file: Any, group_paths: list[str]) -> dict[str, Any]:
    """Values of the first ``<group>/metadatabundle/calibration`` found (datasets only)."""
    import h5py

    for group in group_paths:
        path = f"{group.rstrip('/')}/metadatabundle/calibration"
        if path not in h5file:
            continue
        out: dict[str, Any] = {}
        for key, obj in h5file[path].items():
            if not isinstance(obj, h5py.Dataset) or key.startswith("_"):
                continue
            value = as_text(obj[()])
            if isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out
    return {}


def _units(value: Any, table: dict, what: str, path: Any) -> tuple[str, float] | None:
    units = as_text(value)
    if isinstance(units, str) and units.strip() in table:
        return units.strip(), 1.0
    warnings.warn(
        f"{path}: unknown {what} units {units!r} in the py4DSTEM calibration; "
        "using pixels", stacklevel=3,
    )
    return None


def _step(value: Any, what: str) -> Any:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0 or arr.size == 2:
        if np.all(np.isfinite(arr)) and np.all(arr > 0):
            return float(arr) if arr.ndim == 0 else tuple(arr.tolist())
    warnings.warn(f"ignoring invalid py4DSTEM {what} {value!r}", stacklevel=3)
    return None


def _origin(cal: dict[str, Any], scan_shape: tuple[int, int], path: Any) -> tuple | None:
    """``(qx0, qy0)`` in detector pixels: per-position arrays or numbers, or None."""
    for kx, ky in (("qx0", "qy0"), ("qx0_mean", "qy0_mean")):
        if kx not in cal or ky not in cal:
            continue
        qx0 = np.asarray(cal[kx], dtype=float)
        qy0 = np.asarray(cal[ky], dtype=float)
        if qx0.ndim == 0 and qy0.ndim == 0:
            return float(qx0), float(qy0)
        if qx0.shape == scan_shape and qy0.shape == scan_shape:
            return qx0, qy0
        warnings.warn(
            f"{path}: py4DSTEM origin {kx}/{ky} has shape {qx0.shape}/{qy0.shape}, not the "
            f"scan shape {scan_shape}; using its mean", stacklevel=3,
        )
        return float(np.mean(qx0)), float(np.mean(qy0))
    return None


def _orientation(cal: dict[str, Any], path: Any) -> tuple[float, bool] | None:
    """stem4d ``(scan_rotation, scan_flip)`` from py4DSTEM's QR calibration, or None."""
    if "QR_rotation_degrees" in cal:
        degrees = cal["QR_rotation_degrees"]
    elif "QR_rotation" in cal:
        degrees = np.degrees(cal["QR_rotation"]) if isinstance(
            cal["QR_rotation"], (int, float)) else None
    else:
        return None
    flip = cal.get("QR_flip", False)
    if not isinstance(degrees, (int, float)) or not np.isfinite(degrees) \
            or not isinstance(flip, (bool, np.bool_, int)):
        warnings.warn(
            f"{path}: ignoring the py4DSTEM orientation QR_rotation_degrees={degrees!r}, "
            f"QR_flip={flip!r} (not a number and a bool)", stacklevel=3)
        return None
    return from_py4dstem(float(degrees), bool(flip))


def read_py4dstem(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    chunks: Any = "auto",
) -> xr.DataArray:
    """Read a DataCube from a py4DSTEM (EMD 1.0) HDF5 file as a lazy datacube.

    Parameters
    ----------
    path
        File written by ``py4DSTEM.save`` (py4DSTEM 0.14, EMD 1.0).
    name
        Name (or HDF5 path) of the DataCube group to read. By default the first
        DataCube in the file's (alphabetical) group order is read, with a warning
        listing the others when there are several.
    chunks
        ``"auto"`` (whole scan rows, ~100 MB each) or dask chunks.

    Returns
    -------
    Datacube DataArray (dask-backed; the file stays open while it is in use) with:

    * ``rx``, ``ry`` from ``R_pixel_size``/``R_pixel_units`` (``A`` → Å, ``nm`` → Å);
    * ``qx``, ``qy`` from ``Q_pixel_size``/``Q_pixel_units`` (``A^-1`` → 1/Å, ``mrad``,
      ``pixels``), centred on the origin;
    * the origin from ``qx0``/``qy0`` (detector pixels; per-position arrays become the
      ``qx0``/``qy0`` coordinates, see :func:`stem4d.set_origin`), or from
      ``qx0_mean``/``qy0_mean``;
    * the scan-to-detector orientation, when the calibration holds ``QR_rotation_degrees``
      (or ``QR_rotation``), as stem4d's 0-d coordinates ``scan_rotation`` (rad) and
      ``scan_flip`` (:func:`stem4d.set_orientation`), converted from py4DSTEM's
      ``(QR_rotation_degrees, QR_flip)`` by :func:`stem4d.orientation.from_py4dstem`
      (``QR_flip`` alone, which py4DSTEM always writes, is no orientation); and
      ``beam_energy`` (eV) / ``convergence_semiangle`` (mrad) when the calibration holds
      them;
    * ``attrs["py4dstem_calibration"]``: every scalar calibration value of the file,
      including the original ``QR_rotation_degrees`` and ``QR_flip``.

    Units not known to stem4d fall back to pixels with a warning.
    """
    p = existing_path(path)
    with open_h5(p) as f:
        if not is_py4dstem_file(f):
            raise ValueError(
                f"{p} is not a py4DSTEM/EMD 1.0 file (no root attr emd_group_type='file')"
            )
        cubes = _find_datacubes(f)
        if not cubes:
            raise DatasetNotFoundError(
                f"{p} holds no py4DSTEM DataCube; its EMD groups are: {_emd_groups(f)}"
            )
        if name is not None:
            wanted = [c for c in cubes if c.rsplit("/", 1)[-1] == name
                      or c.strip("/") == str(name).strip("/")]
            if not wanted:
                raise DatasetNotFoundError(
                    f"{p} has no DataCube named {name!r}; it has {cubes}"
                )
            group = wanted[0]
        else:
            group = cubes[0]
            if len(cubes) > 1:
                warnings.warn(
                    f"{p} holds {len(cubes)} DataCubes {cubes}; reading {group!r} "
                    "(pass name= to choose)", stacklevel=2,
                )
        root = _find_root(f, group)
        cal = _read_calibration(f, [g for g in (root, group) if g is not None])
    source = HDF5Array(p, f"{group}/data")
    if source.ndim != 4:
        raise ValueError(f"DataCube {group!r} in {p} is {source.ndim}-D, expected 4-D")
    if chunks is None or chunks == "auto":
        chunks = scan_row_chunks(source.shape, source.dtype.itemsize)
    data = da.from_array(
        source, chunks=chunks,
        name=f"py4dstem-{tokenize(str(p.resolve()), group, p.stat().st_mtime_ns, chunks)}",
        meta=np.empty((0, 0, 0, 0), dtype=source.dtype),
    )

    kwargs: dict[str, Any] = {}
    r_units = _units(cal.get("R_pixel_units", "pixels"), _R_UNITS, "R pixel", p)
    r_step = _step(cal.get("R_pixel_size", 1.0), "R_pixel_size")
    if r_units is not None and r_step is not None:
        kwargs.update(r_step=r_step, r_units=r_units[0])
    q_units = _units(cal.get("Q_pixel_units", "pixels"), _Q_UNITS, "Q pixel", p)
    q_step = _step(cal.get("Q_pixel_size", 1.0), "Q_pixel_size")
    if q_units is not None and q_step is not None:
        kwargs.update(q_step=q_step, q_units=q_units[0])
    scalars = {k: v for k, v in cal.items()
               if isinstance(v, (int, float, str, bool))}
    attrs = {"source_file": str(p.resolve()), "source_format": "py4DSTEM EMD 1.0",
             "source_key": group, "py4dstem_calibration": scalars}
    cube = datacube(data, name=group.rsplit("/", 1)[-1], attrs=attrs, **kwargs)

    origin = _origin(cal, source.shape[:2], p)
    if origin is not None:
        cube = set_origin(cube, *origin)
    orientation = _orientation(cal, p)
    if orientation is not None:
        cube = set_orientation(cube, *orientation)
    energy = next((cal[k] for k in _BEAM_ENERGY_KEYS if k in cal), None)
    conv = next((cal[k] for k in _CONVERGENCE_KEYS if k in cal), None)
    if isinstance(energy, (int, float)) and energy > 0:
        energy = float(energy) * (1000.0 if energy < 1000 else 1.0)  # kV -> eV
    else:
        energy = None
    conv = float(conv) if isinstance(conv, (int, float)) and conv > 0 else None
    if energy is not None or conv is not None:
        cube = set_beam(cube, beam_energy=energy, convergence_semiangle=conv)
    return cube
