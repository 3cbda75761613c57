"""Building and calibrating a 4D-STEM datacube.

A datacube is a plain :class:`xarray.DataArray` with dims ``("rx", "ry", "qx", "qy")``:
``rx`` is the slow scan axis (rows), ``ry`` the fast one, ``qx``/``qy`` the detector
rows and columns. **The coordinates are the calibration**:

* ``rx``, ``ry`` hold probe positions, ``attrs["units"]`` is ``"Å"`` (or ``"pixels"``);
* ``qx``, ``qy`` hold reciprocal-space positions in ``"1/Å"``, ``"mrad"`` or
  ``"pixels"``; once the origin is set, ``qx = qy = 0`` is the mean origin
  (before that, ``0`` is the first detector pixel);
* a per-position origin is the pair of 2-D coordinates ``qx0(rx, ry)``, ``qy0(rx, ry)``
  holding the origin's position *in the cube's own q coordinates* (same units);
* scalar calibrations are 0-d coordinates with a ``units`` attr: ``beam_energy`` (eV),
  ``convergence_semiangle`` (mrad); the elliptical distortion ``ellipse_a``, ``ellipse_b``,
  ``ellipse_theta`` (see :mod:`stem4d.calibrate`) is defined in the q coordinates.

Functions that change the q coordinates (:func:`set_q_calibration`,
:func:`convert_q_units`, :func:`flip_q`, :func:`transpose_q`) re-express the stored
ellipse in the new coordinates and, like :func:`set_origin`, drop the ellipse-corrected
coordinates ``qx_c``/``qy_c`` (recompute them with ``stem4d.correct_ellipse(obj)``).
Axis coordinates must be ascending and uniformly spaced (:func:`validate_cube`).

Every function here returns a new DataArray and mutates nothing. Origins passed in are
in detector pixels (fractional row/column index), the natural output of a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "CUBE_DIMS",
    "SCAN_DIMS",
    "DETECTOR_DIMS",
    "electron_wavelength",
    "interaction_parameter",
    "datacube",
    "validate_cube",
    "r_pixel_size",
    "q_pixel_size",
    "get_origin",
    "rotation_matrix",
    "scan_to_detector_matrix",
    "set_r_calibration",
    "set_q_calibration",
    "set_origin",
    "set_beam",
    "convert_q_units",
    "calibration_summary",
    "reshape_scan",
    "swap_rq",
    "transpose_r",
    "transpose_q",
    "flip_r",
    "flip_q",
]

SCAN_DIMS: tuple[str, str] = ("rx", "ry")
DETECTOR_DIMS: tuple[str, str] = ("qx", "qy")
CUBE_DIMS: tuple[str, str, str, str] = SCAN_DIMS + DETECTOR_DIMS

# CODATA 2018
_H = 6.62607015e-34  # J s
_C = 299792458.0  # m / s
_E = 1.602176634e-19  # C
_M0 = 9.1093837015e-31  # kg

_PIXELS = {"pixels": ("pixels", 1.0), "pixel": ("pixels", 1.0), "px": ("pixels", 1.0),
           "pix": ("pixels", 1.0)}
R_UNITS = {  # spelling -> (canonical, factor to canonical)
    "Å": ("Å", 1.0), "A": ("Å", 1.0), "angstrom": ("Å", 1.0), "Angstrom": ("Å", 1.0),
    "ang": ("Å", 1.0), "nm": ("Å", 10.0), "pm": ("Å", 0.01), "µm": ("Å", 1e4),
    "μm": ("Å", 1e4), "um": ("Å", 1e4), "mm": ("Å", 1e7), "m": ("Å", 1e10), **_PIXELS,
}
Q_UNITS = {
    "1/Å": ("1/Å", 1.0), "1/A": ("1/Å", 1.0), "A^-1": ("1/Å", 1.0), "Å^-1": ("1/Å", 1.0),
    "A-1": ("1/Å", 1.0), "1/angstrom": ("1/Å", 1.0), "1/nm": ("1/Å", 0.1),
    "nm^-1": ("1/Å", 0.1), "1/pm": ("1/Å", 100.0), "pm^-1": ("1/Å", 100.0),
    "mrad": ("mrad", 1.0), "rad": ("mrad", 1000.0), "µrad": ("mrad", 1e-3),
    "urad": ("mrad", 1e-3), **_PIXELS,
}
_R_UNITS, _Q_UNITS = R_UNITS, Q_UNITS


# --------------------------------------------------------------------------- physics
def electron_wavelength(beam_energy: float | np.ndarray) -> float | np.ndarray:
    """Relativistic electron wavelength.

    Parameters
    ----------
    beam_energy
        Kinetic energy of the electrons, eV (e.g. ``300e3`` for 300 kV).

    Returns
    -------
    Wavelength λ = h c / sqrt(E (2 m0 c² + E)), Å (300 kV → 0.019687 Å).
    """
    energy_j = np.asarray(beam_energy, dtype=float) * _E
    if np.any(energy_j <= 0):
        raise ValueError(f"beam_energy must be positive (eV), got {beam_energy!r}")
    lam = _H * _C / np.sqrt(energy_j * (2 * _M0 * _C**2 + energy_j)) * 1e10
    return float(lam) if lam.ndim == 0 else lam


def interaction_parameter(beam_energy: float) -> float:
    """Relativistic interaction parameter σ = 2π m e λ / h², rad / (V Å).

    Multiply by 1000 for the mrad V⁻¹ Å⁻¹ of tables (300 kV → 0.6526).
    """
    lam_m = electron_wavelength(beam_energy) * 1e-10
    gamma = 1 + beam_energy * _E / (_M0 * _C**2)
    return 2 * np.pi * gamma * _M0 * _E * lam_m / _H**2 * 1e-10


# --------------------------------------------------------------------- unit helpers
def normalize_units(units: Any, table: dict, argname: str) -> tuple[str, float]:
    """``(canonical units, factor to them)`` for a spelling in ``R_UNITS``/``Q_UNITS``."""
    if not isinstance(units, str) or units.strip() not in table:
        allowed = sorted({v[0] for v in table.values()})
        raise ValueError(
            f"{argname} must be one of {allowed} (or a common spelling of them), got {units!r}"
        )
    return table[units.strip()]


def as_float(value: Any, argname: str) -> float:
    """``float(value)``, or a ValueError naming ``argname`` and what was given."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argname} must be a number, got {value!r}") from None


def _pair(value: Any, argname: str) -> tuple[float, float]:
    if np.ndim(value) == 0:
        value = (value, value)
    try:
        if len(value) != 2:
            raise TypeError
        out = (float(value[0]), float(value[1]))
    except (TypeError, ValueError):
        raise ValueError(
            f"{argname} must be a number or a pair of numbers, got {value!r}") from None
    if not all(np.isfinite(out)) or min(out) <= 0:
        raise ValueError(f"{argname} must be positive and finite, got {value!r}")
    return out


def _axis_coord(name: str, n: int, step: float, origin_px: float, units: str) -> xr.Variable:
    """Linear coordinate ``(i - origin_px) * step``; ``attrs["step"]`` keeps the step for
    axes later reduced to a single element (it is read only then)."""
    values = (np.arange(n, dtype=float) - origin_px) * step
    return xr.Variable((name,), values, attrs={"units": units, "step": float(step)})


def _axis_step(obj: xr.DataArray | xr.Dataset, dim: str) -> float:
    coord = obj.coords[dim]
    if coord.size >= 2:
        return float(coord.values[1] - coord.values[0])
    if "step" in coord.attrs:
        return float(coord.attrs["step"])
    return 1.0


def _axis_units(obj: xr.DataArray | xr.Dataset, dim: str) -> str:
    return obj.coords[dim].attrs.get("units", "pixels")


def _axis_origin_px(obj: xr.DataArray | xr.Dataset, dim: str) -> float:
    """Fractional pixel index where the coordinate ``dim`` is zero."""
    return float(-obj.coords[dim].values[0] / _axis_step(obj, dim))


def _scalar_coord(value: float, units: str) -> xr.Variable:
    return xr.Variable((), float(value), attrs={"units": units})


def _half_turn(angle: float) -> float:
    """``angle`` (rad) wrapped into ``(-pi/2, pi/2]``: an axis direction, defined mod pi."""
    return float(np.pi / 2 - np.mod(np.pi / 2 - angle, np.pi))


_ELLIPSE_COORDS = ("ellipse_a", "ellipse_b", "ellipse_theta")
_CORRECTED_COORDS = ("qx_c", "qy_c")


def _remap_ellipse(obj: xr.DataArray | xr.Dataset, linear: np.ndarray
                   ) -> xr.DataArray | xr.Dataset:
    """Re-express the stored ellipse after the q coordinates change as ``q' = linear @ q``.

    A ring ``q^T M q = r^2`` becomes ``q'^T L^-T M L^-1 q' = r^2``: a mirror maps
    ``ellipse_theta`` to ``-ellipse_theta``, a transpose to ``pi/2 - ellipse_theta`` (the
    semi-axes keep their directions), an isotropic scale changes nothing and an
    anisotropic one changes the shape (renormalized to ``ellipse_a * ellipse_b = 1``).
    The ellipse-corrected coordinates ``qx_c``/``qy_c`` are dropped.
    """
    obj = obj.drop_vars([k for k in _CORRECTED_COORDS if k in obj.coords])
    if not all(k in obj.coords and obj.coords[k].ndim == 0 for k in _ELLIPSE_COORDS):
        return obj
    a, b, theta = (float(obj.coords[k].values) for k in _ELLIPSE_COORDS)
    gram = linear.T @ linear
    if (abs(gram[0, 1]) <= 1e-9 * gram[0, 0]
            and abs(gram[0, 0] - gram[1, 1]) <= 1e-9 * gram[0, 0]):  # rotation/mirror x scale
        direction = linear @ np.array([np.cos(theta), np.sin(theta)])
        theta = float(np.arctan2(direction[1], direction[0]))
    else:
        rot = rotation_matrix(theta)
        inv = np.linalg.inv(linear)
        metric = inv.T @ rot @ np.diag([1 / a**2, 1 / b**2]) @ rot.T @ inv
        evals, evecs = np.linalg.eigh(metric)  # ascending: the first is along a
        a, b = 1 / np.sqrt(evals[0]), 1 / np.sqrt(evals[1])
        scale = np.sqrt(a * b)
        a, b = float(a / scale), float(b / scale)
        theta = float(np.arctan2(evecs[1, 0], evecs[0, 0]))
    new = {k: xr.Variable((), v, attrs=dict(obj.coords[k].attrs))
           for k, v in zip(_ELLIPSE_COORDS, (a, b, _half_turn(theta)), strict=True)}
    return obj.assign_coords(new)


def _check_axis_coord(cube: xr.DataArray, dim: str, argname: str) -> None:
    """Raise unless ``cube.coords[dim]`` is ascending and uniformly spaced.

    Uniform means every step within ``1e-3`` of the mean step (plus a few float
    roundings of the values, so float32 coordinates pass). Reads the coordinate only.
    """
    values = np.asarray(cube.coords[dim].values)
    if values.size < 2:
        return
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            f"{argname}.coords['{dim}'] must hold numbers, got dtype {values.dtype}"
        )
    v = values.astype(float)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{argname}.coords['{dim}'] contains NaN or inf")
    units = cube.coords[dim].attrs.get("units", "")
    steps = np.diff(v)
    mean_step = (v[-1] - v[0]) / (v.size - 1)
    scan = dim in SCAN_DIMS
    flip = f"stem4d.flip_{'r' if scan else 'q'}(cube, '{dim}')"
    if np.all(steps < 0):
        raise ValueError(
            f"{argname}.coords['{dim}'] is descending (from {v[0]:.6g} to {v[-1]:.6g} "
            f"{units}): stem4d needs ascending, uniformly spaced coordinates. To reverse an "
            f"axis use {flip}, which keeps the coordinates ascending and updates the "
            "scan-to-detector orientation, not an xarray reversal such as "
            f"cube.isel({dim}=slice(None, None, -1))"
        )
    eps = np.finfo(values.dtype).eps if values.dtype.kind == "f" else np.finfo(float).eps
    tol = 1e-3 * abs(mean_step) + 4 * eps * float(np.abs(v).max())
    if not (mean_step > 0 and np.all(steps > 0)) or np.abs(steps - mean_step).max() > tol:
        fix = ("select positions with stem4d.crop_r (a contiguous range) or stem4d.thin_r "
               "(every n-th)" if scan else
               "select pixels with stem4d.crop_q (a contiguous range) or change the sampling "
               "with stem4d.bin_q / resample_q")
        raise ValueError(
            f"{argname}.coords['{dim}'] is not ascending and uniformly spaced: steps range "
            f"from {steps.min():.6g} to {steps.max():.6g} {units} (mean {mean_step:.6g}), as "
            "after indexing with a list of indices or concatenating. stem4d needs ascending, "
            f"uniformly spaced coordinates: {fix}, not a list of indices; reverse an axis "
            f"with {flip}"
        )


# ------------------------------------------------ shared private helpers (patterns)
def _pixel_coords(shape: tuple[int, int], center: tuple[float, float] = (0.0, 0.0)
                  ) -> dict[str, xr.Variable]:
    """Detector coordinates in pixels, zero at the fractional index ``center``."""
    return {dim: xr.Variable((dim,), np.arange(n, dtype=float) - c, {"units": "pixels"})
            for dim, n, c in zip(DETECTOR_DIMS, shape, center, strict=True)}


def _as_pattern(image: Any, argname: str) -> xr.DataArray:
    """A 2-D ``(qx, qy)`` pattern as a DataArray, or a TypeError/ValueError naming ``argname``.

    A DataArray must have dims ``("qx", "qy")`` (in either order; it is transposed) and
    keeps its coordinates; a missing ``qx``/``qy`` coordinate, or a plain 2-D numpy/dask
    array, gets pixel coordinates from 0 (no origin). The data are not computed.
    """
    hint = ""
    if isinstance(image, xr.DataArray):
        if image.ndim == 2 and set(image.dims) == set(DETECTOR_DIMS):
            image = image.transpose(*DETECTOR_DIMS)
            missing = {k: v for k, v in _pixel_coords(image.shape).items()
                       if k not in image.coords}
            return image.assign_coords(missing) if missing else image
        if image.ndim == 4:
            hint = ("; it is a datacube: reduce it first, e.g. "
                    "stem4d.virtual_diffraction(cube, 'mean')")
        raise ValueError(
            f"{argname} must be a 2-D pattern with dims ('qx', 'qy'), got dims "
            f"{tuple(image.dims)} with shape {tuple(image.shape)}{hint}"
        )
    if isinstance(image, xr.Dataset) or not (hasattr(image, "ndim") and hasattr(image, "dtype")):
        raise TypeError(
            f"{argname} must be a (qx, qy) DataArray (e.g. stem4d.virtual_diffraction(cube)) "
            f"or a 2-D numpy/dask array, got {type(image).__name__}"
        )
    if image.ndim != 2:
        if image.ndim == 4:
            hint = "; a 4-D datacube must be reduced first (stem4d.virtual_diffraction)"
        raise ValueError(
            f"{argname} must be a 2-D (qx, qy) pattern, got {image.ndim}-D with shape "
            f"{tuple(image.shape)}{hint}"
        )
    return xr.DataArray(image, dims=DETECTOR_DIMS, coords=_pixel_coords(image.shape))


def _require_origin(obj: xr.DataArray | xr.Dataset, argname: str, purpose: str) -> None:
    """Raise unless the origin (``q = 0``) is set and lies on the detector.

    ``purpose`` says what needs it, e.g. ``"dpc"``; the message names ``argname`` and
    how to set the origin.
    """
    ox, oy = _axis_origin_px(obj, "qx"), _axis_origin_px(obj, "qy")
    nx, ny = obj.sizes["qx"], obj.sizes["qy"]
    if ox == 0.0 and oy == 0.0:
        raise ValueError(
            f"{purpose} needs the origin, but {argname} has no origin set (q = 0 is the first "
            "detector pixel): measure it (stem4d.measure_origin / fit_origin) and set it with "
            "stem4d.apply_origin(cube, origin) or stem4d.set_origin(obj, qx0, qy0) (pixels)"
        )
    if not (-0.5 <= ox <= nx - 0.5 and -0.5 <= oy <= ny - 0.5):
        raise ValueError(
            f"{purpose} needs the origin on the detector, but {argname}'s origin "
            f"({ox:.2f}, {oy:.2f}) pixels is outside the {nx} x {ny} detector"
        )


def _origin_offsets(obj: xr.DataArray | xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """Per-position origin relative to ``q = 0``, coordinate units (``(rx, ry)`` or 0-d)."""
    if "qx0" in obj.coords and "qy0" in obj.coords:
        return (obj.coords["qx0"].reset_coords(drop=True).astype(float),
                obj.coords["qy0"].reset_coords(drop=True).astype(float))
    return xr.DataArray(0.0), xr.DataArray(0.0)


# ------------------------------------------------------------------------ building
def datacube(
    data: Any,
    *,
    r_step: float | Sequence[float] = 1.0,
    r_units: str = "pixels",
    q_step: float | Sequence[float] = 1.0,
    q_units: str = "pixels",
    beam_energy: float | None = None,
    convergence_semiangle: float | None = None,
    origin: tuple[Any, Any] | None = None,
    name: str = "datacube",
    attrs: dict | None = None,
) -> xr.DataArray:
    """Build a validated, calibrated 4D datacube.

    Parameters
    ----------
    data
        numpy or dask array of shape ``(rx, ry, qx, qy)``: scan rows (slow), scan
        columns (fast), detector rows, detector columns.
    r_step
        Scan step, in ``r_units`` per probe position (one number or ``(rx, ry)``).
    r_units
        ``"Å"``, ``"nm"`` (converted to Å) or ``"pixels"``.
    q_step
        Detector pixel size in ``q_units`` per pixel (one number or ``(qx, qy)``).
    q_units
        ``"1/Å"``, ``"1/nm"`` (converted), ``"mrad"`` or ``"pixels"``.
    beam_energy
        Electron kinetic energy, eV.
    convergence_semiangle
        Probe convergence semiangle, mrad.
    origin
        ``(qx0, qy0)`` of the unscattered beam in detector pixels: two numbers, or two
        ``(rx, ry)`` arrays for a per-position origin. See :func:`set_origin`.
    name, attrs
        Name and attrs of the returned DataArray.

    Returns
    -------
    DataArray with dims ``("rx", "ry", "qx", "qy")`` and calibrated coordinates.
    """
    if isinstance(data, xr.DataArray):
        raise TypeError(
            "data is already a DataArray: its coordinates would be replaced. Change its "
            "calibration with stem4d.set_r_calibration / set_q_calibration / set_origin, "
            "or pass data.data to build a new cube"
        )
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(
            "data must be 4-D (rx, ry, qx, qy): scan rows, scan columns, detector rows, "
            f"detector columns; got {data.ndim}-D with shape {tuple(data.shape)}. "
            "For a flat scan (N, qx, qy) use stem4d.reshape_scan."
        )
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise TypeError(f"data must hold numbers, got dtype {data.dtype}")
    if min(data.shape) < 1:
        raise ValueError(f"data must not be empty, got shape {tuple(data.shape)}")
    _reject_all_nan(data, "data")
    r_units_c, r_fac = normalize_units(r_units, R_UNITS, "r_units")
    q_units_c, q_fac = normalize_units(q_units, Q_UNITS, "q_units")
    rs = _pair(r_step, "r_step")
    qs = _pair(q_step, "q_step")
    coords = {
        "rx": _axis_coord("rx", data.shape[0], rs[0] * r_fac, 0.0, r_units_c),
        "ry": _axis_coord("ry", data.shape[1], rs[1] * r_fac, 0.0, r_units_c),
        "qx": _axis_coord("qx", data.shape[2], qs[0] * q_fac, 0.0, q_units_c),
        "qy": _axis_coord("qy", data.shape[3], qs[1] * q_fac, 0.0, q_units_c),
    }
    cube = xr.DataArray(data, dims=CUBE_DIMS, coords=coords, name=name, attrs=dict(attrs or {}))
    if beam_energy is not None or convergence_semiangle is not None:
        cube = set_beam(cube, beam_energy=beam_energy,
                        convergence_semiangle=convergence_semiangle)
    if origin is not None:
        if len(origin) != 2:
            raise ValueError(f"origin must be a pair (qx0, qy0) in pixels, got {origin!r}")
        cube = set_origin(cube, origin[0], origin[1])
    return cube


def _reject_all_nan(data: Any, argname: str) -> None:
    """Raise if a numpy float array is entirely NaN (cheap when it is not).

    dask arrays are not scanned (that would read all the data); an all-NaN dask cube
    gives NaN results.
    """
    if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.floating):
        return
    step = max(1, data.size // 4096)
    if not np.all(np.isnan(data.reshape(-1)[::step])):
        return
    if np.all(np.isnan(data)):
        raise ValueError(f"{argname} is entirely NaN: there is nothing to analyse")


def validate_cube(cube: Any, argname: str = "cube") -> xr.DataArray:
    """Check that ``cube`` is a 4D datacube DataArray and return it.

    Raises ``TypeError``/``ValueError`` naming ``argname`` when it is not an
    ``xarray.DataArray`` with dims ``("rx", "ry", "qx", "qy")`` and unit-carrying,
    ascending, uniformly spaced coordinates (every step within 1e-3 of the mean). Only the
    coordinates are read, never the data (beyond a sparse all-NaN check of numpy data).
    """
    if not isinstance(cube, xr.DataArray):
        raise TypeError(
            f"{argname} must be an xarray.DataArray with dims {CUBE_DIMS} "
            f"(see stem4d.datacube), got {type(cube).__name__}"
        )
    if tuple(cube.dims) != CUBE_DIMS:
        raise ValueError(f"{argname} must have dims {CUBE_DIMS}, got {tuple(cube.dims)}")
    for dim in CUBE_DIMS:
        if dim not in cube.coords:
            raise ValueError(
                f"{argname} has no '{dim}' coordinate: build it with stem4d.datacube"
            )
        allowed = ("Å", "pixels") if dim in SCAN_DIMS else ("1/Å", "mrad", "pixels")
        units = cube.coords[dim].attrs.get("units")
        if units is None:
            raise ValueError(
                f"{argname}.coords['{dim}'] has no 'units' attr: expected one of {allowed}"
            )
        if units not in allowed:
            raise ValueError(
                f"{argname}.coords['{dim}'] has units {units!r}: expected one of {allowed} "
                "(set them with stem4d.set_r_calibration / set_q_calibration)"
            )
        _check_axis_coord(cube, dim, argname)
    _reject_all_nan(cube.data, argname)
    return cube


# ---------------------------------------------------------------------- reading
def r_pixel_size(cube: xr.DataArray) -> tuple[float, float, str]:
    """Scan step ``(along rx, along ry, units)``."""
    return _axis_step(cube, "rx"), _axis_step(cube, "ry"), _axis_units(cube, "rx")


def q_pixel_size(obj: xr.DataArray | xr.Dataset) -> tuple[float, float, str]:
    """Detector pixel size ``(along qx, along qy, units)`` of a cube or pattern."""
    return _axis_step(obj, "qx"), _axis_step(obj, "qy"), _axis_units(obj, "qx")


def get_origin(obj: xr.DataArray | xr.Dataset) -> tuple[Any, Any]:
    """Origin in detector pixels (fractional row, column index).

    Returns two floats (the mean origin, where ``qx = qy = 0``) or, when the cube has
    a per-position origin, two ``(rx, ry)`` DataArrays.
    """
    ox, oy = _axis_origin_px(obj, "qx"), _axis_origin_px(obj, "qy")
    if "qx0" in obj.coords and "qy0" in obj.coords:
        sx, sy = _axis_step(obj, "qx"), _axis_step(obj, "qy")
        qx0 = (obj.coords["qx0"] / sx + ox).rename("qx0")
        qy0 = (obj.coords["qy0"] / sy + oy).rename("qy0")
        qx0.attrs, qy0.attrs = {"units": "pixels"}, {"units": "pixels"}
        return qx0.reset_coords(drop=True), qy0.reset_coords(drop=True)
    return ox, oy


def calibration_summary(obj: xr.DataArray | xr.Dataset) -> dict[str, Any]:
    """Calibrations of a stem4d object as a plain dict (for printing)."""
    out: dict[str, Any] = {}
    for dim in ("rx", "ry", "qx", "qy"):
        if dim in obj.coords and obj.coords[dim].ndim == 1:
            out[f"{dim} step"] = f"{_axis_step(obj, dim):.6g} {_axis_units(obj, dim)}"
    if "qx" in obj.coords and "qy" in obj.coords:
        ox, oy = get_origin(obj)
        if np.ndim(ox) == 0:
            out["origin (pixels)"] = f"({ox + 0.0:.3f}, {oy + 0.0:.3f})"
        else:
            out["origin (pixels)"] = (
                f"per position, mean ({float(ox.mean()):.3f}, {float(oy.mean()):.3f})"
            )
    for name, var in obj.coords.items():
        if var.ndim == 0:
            value = var.values.item()
            text = f"{value:.8g}" if isinstance(value, float) else repr(value)
            out[str(name)] = f"{text} {var.attrs.get('units', '')}".strip()
    return out


# ---------------------------------------------------------------------- calibrating
def set_r_calibration(
    cube: xr.DataArray, step: float | Sequence[float], units: str = "Å"
) -> xr.DataArray:
    """Return ``cube`` with scan step ``step`` (``units`` per position, or a pair)."""
    units_c, fac = normalize_units(units, R_UNITS, "units")
    sx, sy = _pair(step, "step")
    return cube.assign_coords(
        rx=_axis_coord("rx", cube.sizes["rx"], sx * fac, 0.0, units_c),
        ry=_axis_coord("ry", cube.sizes["ry"], sy * fac, 0.0, units_c),
    )


def set_q_calibration(
    obj: xr.DataArray | xr.Dataset, pixel_size: float | Sequence[float], units: str = "1/Å"
) -> xr.DataArray | xr.Dataset:
    """Return ``obj`` with detector pixel size ``pixel_size`` (``units`` per pixel).

    The origin (in pixels) is kept; ``qx0``/``qy0`` are rescaled. A stored ellipse
    (``ellipse_*``, dimensionless) is unchanged by an isotropic rescaling and re-expressed
    in the new coordinates when the aspect ratio of the pixels changes; the
    ellipse-corrected ``qx_c``/``qy_c`` are dropped (``stem4d.correct_ellipse(obj)``
    recomputes them).
    """
    units_c, fac = normalize_units(units, Q_UNITS, "units")
    sx, sy = _pair(pixel_size, "pixel_size")
    sx, sy = sx * fac, sy * fac
    old_sx, old_sy = _axis_step(obj, "qx"), _axis_step(obj, "qy")
    out = obj.assign_coords(
        qx=_axis_coord("qx", obj.sizes["qx"], sx, _axis_origin_px(obj, "qx"), units_c),
        qy=_axis_coord("qy", obj.sizes["qy"], sy, _axis_origin_px(obj, "qy"), units_c),
    )
    if "qx0" in obj.coords:
        out = out.assign_coords(
            qx0=_with_units(obj.coords["qx0"] * (sx / old_sx), units_c),
            qy0=_with_units(obj.coords["qy0"] * (sy / old_sy), units_c),
        )
    return _remap_ellipse(out, np.diag([sx / old_sx, sy / old_sy]))


def _with_units(coord: xr.DataArray, units: str) -> xr.DataArray:
    coord = coord.reset_coords(drop=True) if coord.ndim else coord
    coord.attrs = {"units": units}
    return coord.variable


def set_origin(
    obj: xr.DataArray | xr.Dataset, qx0: Any, qy0: Any
) -> xr.DataArray | xr.Dataset:
    """Return ``obj`` with the origin set and ``qx``/``qy`` re-centred on it.

    Parameters
    ----------
    qx0, qy0
        Origin in detector pixels (fractional row and column index): numbers for one
        origin, or arrays/DataArrays of shape ``(rx, ry)`` for a per-position origin.
        A per-position origin is stored as the 2-D coordinates ``qx0``/``qy0`` (in the
        q units, relative to the mean origin, which becomes ``qx = qy = 0``).
        Ellipse-corrected coordinates ``qx_c``/``qy_c``, which depend on the origin, are
        dropped (recompute them with ``stem4d.ellipse_corrected_coordinates``).
    """
    for nm, v in (("qx0", qx0), ("qy0", qy0)):
        try:
            arr = np.asarray(v.data if isinstance(v, xr.DataArray) else v, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{nm} must be numbers (detector pixels), got {v!r}") from None
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{nm} must be finite detector pixel positions, got NaN/inf")
    per_position = np.ndim(qx0) > 0 or np.ndim(qy0) > 0
    # ellipse-corrected coordinates are measured from the old origin: drop them
    out = obj.drop_vars([v for v in ("qx0", "qy0", "qx_c", "qy_c") if v in obj.coords])
    sx, sy, units = q_pixel_size(obj)
    if not per_position:
        return out.assign_coords(
            qx=_axis_coord("qx", obj.sizes["qx"], sx, float(qx0), units),
            qy=_axis_coord("qy", obj.sizes["qy"], sy, float(qy0), units),
        )
    if "rx" not in obj.dims or "ry" not in obj.dims:
        raise ValueError("a per-position origin needs an object with 'rx' and 'ry' dims")
    scan_shape = (obj.sizes["rx"], obj.sizes["ry"])
    for nm, given in (("qx0", qx0), ("qy0", qy0)):
        if np.ndim(given) > 0 and np.shape(given) != scan_shape:
            raise ValueError(
                f"{nm} must have the scan shape {scan_shape} (rx, ry), got {np.shape(given)}"
            )
    qx0a = np.broadcast_to(np.asarray(getattr(qx0, "values", qx0), float), scan_shape)
    qy0a = np.broadcast_to(np.asarray(getattr(qy0, "values", qy0), float), scan_shape)
    mx, my = float(qx0a.mean()), float(qy0a.mean())
    out = out.assign_coords(
        qx=_axis_coord("qx", obj.sizes["qx"], sx, mx, units),
        qy=_axis_coord("qy", obj.sizes["qy"], sy, my, units),
    )
    return out.assign_coords(
        qx0=xr.Variable(SCAN_DIMS, (qx0a - mx) * sx, attrs={"units": units}),
        qy0=xr.Variable(SCAN_DIMS, (qy0a - my) * sy, attrs={"units": units}),
    )


def set_beam(
    obj: xr.DataArray | xr.Dataset,
    beam_energy: float | None = None,
    convergence_semiangle: float | None = None,
) -> xr.DataArray | xr.Dataset:
    """Return ``obj`` with ``beam_energy`` (eV) and/or ``convergence_semiangle`` (mrad)."""
    new = {}
    if beam_energy is not None:
        beam_energy = as_float(beam_energy, "beam_energy")
        if not np.isfinite(beam_energy) or beam_energy <= 0:
            raise ValueError(f"beam_energy must be positive, in eV, got {beam_energy!r}")
        if beam_energy < 1000:
            raise ValueError(
                f"beam_energy is in eV (e.g. 300e3 for 300 kV), got {beam_energy!r}"
            )
        new["beam_energy"] = _scalar_coord(beam_energy, "eV")
    if convergence_semiangle is not None:
        convergence_semiangle = as_float(convergence_semiangle, "convergence_semiangle")
        if not np.isfinite(convergence_semiangle) or convergence_semiangle <= 0:
            raise ValueError(
                "convergence_semiangle must be positive, in mrad, "
                f"got {convergence_semiangle!r}"
            )
        new["convergence_semiangle"] = _scalar_coord(convergence_semiangle, "mrad")
    return obj.assign_coords(new)


def convert_q_units(obj: xr.DataArray | xr.Dataset, units: str) -> xr.DataArray | xr.Dataset:
    """Express the detector coordinates in ``units`` (``"1/Å"``, ``"mrad"``, ``"pixels"``).

    1/Å ↔ mrad uses α = 1000 λ k with the relativistic wavelength of the
    ``beam_energy`` coordinate. Converting from pixels needs a pixel size: use
    :func:`set_q_calibration` instead. As there, ``qx_c``/``qy_c`` are dropped and the
    stored ellipse is kept (re-expressed if the pixels' aspect ratio changes).
    """
    target, _ = normalize_units(units, Q_UNITS, "units")
    sx, sy, current = q_pixel_size(obj)
    if target == current:
        return obj
    if target == "pixels":
        factor_x, factor_y = 1 / sx, 1 / sy
    elif current == "pixels":
        raise ValueError(
            f"cannot convert q coordinates from pixels to {target}: the pixel size is "
            "unknown; set it with stem4d.set_q_calibration"
        )
    else:
        if "beam_energy" not in obj.coords:
            raise ValueError(
                f"converting q from {current} to {target} needs the beam energy: "
                "set it with stem4d.set_beam(obj, beam_energy=...) (eV)"
            )
        lam = electron_wavelength(float(obj.coords["beam_energy"]))
        factor_x = factor_y = 1000 * lam if target == "mrad" else 1 / (1000 * lam)
    return set_q_calibration(obj, (sx * factor_x, sy * factor_y), target)


# ------------------------------------------------- scan-to-detector orientation
_ROT_COORD, _FLIP_COORD = "scan_rotation", "scan_flip"


def rotation_matrix(angle: float | np.ndarray) -> np.ndarray:
    """``R(angle) = [[cos, -sin], [sin, cos]]`` (angle in rad; arrays give ``(..., 2, 2)``)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def scan_to_detector_matrix(scan_rotation: float = 0.0, scan_flip: bool = False) -> np.ndarray:
    """``Q = R(scan_rotation) @ diag(1, -1 if scan_flip else 1)``: a scan-frame vector
    ``(v_rx, v_ry)`` appears on the detector as ``Q @ v`` in ``(qx, qy)`` components."""
    return rotation_matrix(scan_rotation) @ np.diag([1.0, -1.0 if scan_flip else 1.0])


def _reorient(obj: xr.DataArray, left: np.ndarray | None = None,
              right: np.ndarray | None = None) -> xr.DataArray:
    """Update ``scan_rotation``/``scan_flip`` after an axis operation, if present.

    The new scan-to-detector matrix is ``left @ Q @ right``: ``left`` maps old detector
    components to new ones, ``right`` maps new scan components to old ones.
    """
    if _ROT_COORD not in obj.coords or _FLIP_COORD not in obj.coords:
        return obj
    q = scan_to_detector_matrix(float(obj.coords[_ROT_COORD]), bool(obj.coords[_FLIP_COORD]))
    q = (np.eye(2) if left is None else left) @ q @ (np.eye(2) if right is None else right)
    flip = bool(np.linalg.det(q) < 0)
    rotation = float(np.arctan2(q[1, 0], q[0, 0]))
    return obj.assign_coords({
        _ROT_COORD: xr.Variable((), rotation, attrs=dict(obj.coords[_ROT_COORD].attrs)),
        _FLIP_COORD: xr.Variable((), flip, attrs=dict(obj.coords[_FLIP_COORD].attrs)),
    })


_SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])  # exchange of the two components
_MIRROR = {0: np.diag([-1.0, 1.0]), 1: np.diag([1.0, -1.0])}  # reverse one component


# ------------------------------------------------------------------- reshaping
def reshape_scan(stack: Any, scan_shape: tuple[int, int], **calibration: Any) -> xr.DataArray:
    """Reshape a flat scan ``(N, qx, qy)`` into a datacube ``(rx, ry, qx, qy)``.

    ``stack`` is an array or a DataArray with dims ``("scan", "qx", "qy")``; positions
    are in raster order with ``ry`` fastest. Detector coordinates of a DataArray are
    kept; ``calibration`` keywords go to :func:`datacube`.
    """
    data = stack.data if isinstance(stack, xr.DataArray) else stack
    if not hasattr(data, "ndim"):
        data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(
            f"stack must be 3-D (N, qx, qy), got {data.ndim}-D with shape {tuple(data.shape)}"
        )
    if len(scan_shape) != 2 or scan_shape[0] * scan_shape[1] != data.shape[0]:
        raise ValueError(
            f"scan_shape {tuple(scan_shape)} must multiply to the number of patterns "
            f"{data.shape[0]}"
        )
    cube = datacube(data.reshape(tuple(scan_shape) + tuple(data.shape[1:])), **calibration)
    if isinstance(stack, xr.DataArray):
        keep = {k: v for k, v in stack.coords.items() if set(v.dims) <= {"qx", "qy"}}
        cube = cube.assign_coords(keep)
        cube.attrs.update(stack.attrs)
    return cube


def _renamed(var: xr.Variable, mapping: dict[str, str]) -> xr.Variable:
    return xr.Variable(tuple(mapping.get(d, d) for d in var.dims), var.data, attrs=var.attrs)


def _exchange_dims(obj: xr.DataArray, a: str, b: str) -> xr.DataArray:
    """Transpose the data between dims ``a`` and ``b``; every coordinate moves with it.

    Coordinates on ``a`` go to ``b`` and vice versa (values kept, 2-D ones transposed),
    so positions keep their calibrated values: a transpose of the data, not a relabel.
    """
    mapping = {a: b, b: a}
    order = [mapping.get(d, d) for d in obj.dims]
    data = obj.transpose(*order).data
    new = xr.DataArray(data, dims=obj.dims, name=obj.name, attrs=obj.attrs)
    coords = {}
    for name, coord in obj.coords.items():
        var = _renamed(coord.variable, mapping)
        if var.ndim > 1:
            var = var.transpose(*[d for d in new.dims if d in var.dims])
        coords[mapping.get(name, name)] = var
    return new.assign_coords(coords)


def swap_rq(cube: xr.DataArray) -> xr.DataArray:
    """Exchange the scan and detector axes of the data (a file stored ``(qx, qy, rx, ry)``).

    Each axis keeps the calibration step, units and start of the axis of the same name
    (``rx`` stays a scan axis); the origin, the scan-to-detector orientation and the
    ellipse, which no longer refer to the same pixels, are dropped.
    """
    validate_cube(cube)
    data = cube.data.transpose(2, 3, 0, 1)
    new = xr.DataArray(data, dims=CUBE_DIMS, name=cube.name, attrs=cube.attrs)
    coords = {}
    for dim in CUBE_DIMS:
        step = _axis_step(cube, dim)
        start = 0.0 if dim in DETECTOR_DIMS else float(cube.coords[dim].values[0])
        coords[dim] = _axis_coord(dim, new.sizes[dim], step, -start / step,
                                  _axis_units(cube, dim))
    scalars = {k: v.variable for k, v in cube.coords.items()
               if v.ndim == 0 and k not in (_ROT_COORD, _FLIP_COORD, *_ELLIPSE_COORDS)}
    return new.assign_coords({**coords, **scalars})


def transpose_r(cube: xr.DataArray) -> xr.DataArray:
    """Transpose the scan (``rx`` stays the slow axis); coordinates and origin follow."""
    validate_cube(cube)
    return _reorient(_exchange_dims(cube, "rx", "ry"), right=_SWAP)


def transpose_q(obj: xr.DataArray) -> xr.DataArray:
    """Transpose the detector of a cube or pattern (``qx`` ↔ ``qy``); origin follows.

    The stored ellipse follows the data (``ellipse_theta`` → ``pi/2 - ellipse_theta``,
    semi-axes unchanged); ``qx_c``/``qy_c`` are dropped. The scan-to-detector orientation
    is updated.
    """
    if "qx" not in obj.dims or "qy" not in obj.dims:
        raise ValueError(f"obj must have 'qx' and 'qy' dims, got {tuple(obj.dims)}")
    src = obj.drop_vars([k for k in _CORRECTED_COORDS if k in obj.coords])
    out = _exchange_dims(src, "qx", "qy")
    if "qx0" in obj.coords and "qy0" in obj.coords:  # the origin components swap too
        out = out.assign_coords(qx0=obj.coords["qy0"].variable, qy0=obj.coords["qx0"].variable)
    return _reorient(_remap_ellipse(out, _SWAP), left=_SWAP)


def flip_r(cube: xr.DataArray, axis: str) -> xr.DataArray:
    """Reverse the scan along ``axis`` (``"rx"`` or ``"ry"``); coordinates stay ascending.

    Per-position coordinates (e.g. ``qx0``) follow the data; the scan-to-detector
    orientation is updated (a mirror of the scan).
    """
    validate_cube(cube)
    if axis not in SCAN_DIMS:
        raise ValueError(f"axis must be 'rx' or 'ry', got {axis!r}")
    flipped = cube.isel({axis: slice(None, None, -1)})
    flipped = flipped.assign_coords({axis: cube.coords[axis].variable})
    return _reorient(flipped, right=_MIRROR[SCAN_DIMS.index(axis)])


def flip_q(obj: xr.DataArray, axis: str) -> xr.DataArray:
    """Reverse the detector along ``axis`` (``"qx"`` or ``"qy"``) of a cube or pattern.

    The data are mirrored; the origin follows the data (pixel ``i`` → ``n-1-i``) and the
    coordinates are re-centred on it, so they stay ascending. The scan-to-detector
    orientation is updated (a mirror of the detector), the stored ellipse follows the data
    (``ellipse_theta`` → ``-ellipse_theta``) and ``qx_c``/``qy_c`` are dropped.
    """
    if axis not in DETECTOR_DIMS:
        raise ValueError(f"axis must be 'qx' or 'qy', got {axis!r}")
    ox, oy = get_origin(obj)
    n = obj.sizes[axis]
    flipped = obj.isel({axis: slice(None, None, -1)})
    sx, sy, units = q_pixel_size(obj)
    flipped = flipped.drop_vars([v for v in ("qx0", "qy0") if v in flipped.coords])
    flipped = flipped.assign_coords(
        qx=_axis_coord("qx", obj.sizes["qx"], sx, 0.0, units),
        qy=_axis_coord("qy", obj.sizes["qy"], sy, 0.0, units),
    )
    if axis == "qx":
        ox = (n - 1) - ox
    else:
        oy = (n - 1) - oy
    mirror = _MIRROR[DETECTOR_DIMS.index(axis)]
    return _reorient(_remap_ellipse(set_origin(flipped, ox, oy), mirror), left=mirror)
