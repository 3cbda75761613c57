"""Bragg vectors: calibrated peak positions, Bragg vector maps, virtual images and origins.

Everything here takes the Bragg peaks Dataset of :func:`stem4d.find_bragg_disks` (the
pinned format: ``qx``, ``qy``, ``intensity`` over ``(rx, ry, peak)``, NaN-padded and
sorted by decreasing intensity, ``count`` over ``(rx, ry)``, positions in the cube's q
coordinate units relative to the *mean* origin, and the cube's calibration coordinates:
0-d ``beam_energy``, ``scan_rotation``/``scan_flip``, ``ellipse_a``/``ellipse_b``/
``ellipse_theta``, the per-position origin ``qx0``/``qy0`` (rx, ry) in q units, and the
detector grid ``detector_qx``/``detector_qy``).

Calibrated vectors (:func:`calibrate_vectors`)
-----------------------------------------------
Each step can be switched off; they are applied in this order to the position ``q`` of
a peak at scan position ``r`` (cube q units, relative to the mean origin):

1. ``center``: ``q - q0(r)``, ``q0`` the per-position origin (coordinates ``qx0``,
   ``qy0``; zero when the origin is the same everywhere). Needs an origin.
2. ``ellipse``: ``T (q - q0)``, ``T = R(theta) diag(1/ellipse_a, 1/ellipse_b) R(-theta)``
   (``ellipse_a * ellipse_b = 1``), the inverse of the stored distortion, the convention
   of :mod:`stem4d.calibrate` (its corrected coordinates are ``T q``, about the mean
   origin: with ``center=False`` this step gives exactly them).
3. ``units``: conversion to ``"1/Å"`` (default), ``"mrad"`` (``alpha = 1000 lambda k``,
   needs ``beam_energy``) or ``"pixels"``; peaks found on an uncalibrated (pixels) cube
   need ``pixel_size=`` (1/Å per pixel).
4. ``rotate``: scan-frame components ``Q^T v`` (``Q^-1 = Q^T``) with
   ``Q = R(scan_rotation) diag(1, -1 if scan_flip else 1)``, the scan-to-detector matrix
   of :mod:`stem4d.orientation`. The components are then along the scan axes and are
   named ``g_rx`` (along ``rx``, the slow scan rows) and ``g_ry`` (along ``ry``); without
   rotation they stay ``qx``, ``qy`` (detector rows and columns).

The result has ``attrs["stem4d_type"] = "bragg_vectors"`` and ``attrs["frame"]``
(``"scan"`` or ``"detector"``) and records the steps applied; functions that need raw
peaks refuse it.

Bragg vector map, masks, virtual images
---------------------------------------
:func:`bragg_vector_map` deposits each peak's intensity bilinearly onto the four bins
around it (so the map's intensity-weighted centroid of a peak is its exact position)
on the detector grid, or on a grid ``sampling`` times finer whose bin ``k`` is centred at
``detector_q[0] + k step / sampling``. :func:`mask_peaks` removes peaks by a detector
mask (Q) or a scan mask (R); :func:`vector_virtual_image` sums the intensities of the
peaks inside a circle or annulus.

Origin from the vectors
-----------------------
:func:`origin_from_vectors` picks the unscattered beam among the peaks of every position
(nearest to a guess, brightest, or best intensity-per-distance score) or, with a
beamstop, takes the mean midpoint of the conjugate pairs ``(g, -g)`` about the guess (which
``"beamstop"`` requires: ``center_guess`` or an origin stored on the peaks). It
returns the Dataset layout of :func:`stem4d.measure_origin` (``qx0``, ``qy0`` in
detector pixels), ready for :func:`stem4d.fit_origin` and :func:`stem4d.apply_origin`.

numpy- and dask-backed peaks both work; dask peaks give lazy results (computed per scan
chunk), except where a docstring says a small array is computed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ._kernels import bilinear_histogram
from .bragg import _detector_map, _validate_peaks
from .datacube import Q_UNITS, SCAN_DIMS, electron_wavelength, normalize_units
from .orientation import get_orientation

__all__ = [
    "calibrate_vectors",
    "bragg_vector_map",
    "mask_peaks",
    "vector_virtual_image",
    "origin_from_vectors",
]

VECTORS_TYPE = "bragg_vectors"
_ELLIPSE = ("ellipse_a", "ellipse_b", "ellipse_theta")
_ORIGIN_METHODS = ("nearest", "brightest", "weighted", "beamstop")
_PEAK_DIMS = ("rx", "ry", "peak")
_BATCH = 64  # positions per batch of the conjugate-pair search (P x P x 2 per position)


# ================================================================ input checks
def _is_vectors(ds: Any) -> bool:
    """Whether ``ds`` holds calibrated vectors (by its type marker or its frame attrs)."""
    if not isinstance(ds, xr.Dataset):
        return False
    return (ds.attrs.get("stem4d_type") == VECTORS_TYPE
            or (ds.attrs.get("frame") in ("scan", "detector") and "rotate" in ds.attrs))


def _raw_peaks(peaks: Any, argname: str = "peaks") -> xr.Dataset:
    """The validated raw peaks Dataset (calibrated vectors are refused)."""
    if _is_vectors(peaks):
        raise ValueError(
            f"{argname} holds calibrated vectors (from calibrate_vectors); this function "
            "needs the raw peaks of stem4d.find_bragg_disks (detector positions)"
        )
    return _validate_peaks(peaks, argname)


def _grid(peaks: xr.Dataset) -> tuple[float, float, int, float, float, int, str]:
    """``(x0, sx, nx, y0, sy, ny, units)`` of the detector grid the peaks were found on."""
    x0, sx, y0, sy = _detector_map(peaks)
    units = peaks.coords["detector_qx"].attrs.get("units", "pixels")
    return (x0, sx, peaks.sizes["detector_qx"], y0, sy, peaks.sizes["detector_qy"], units)


def _has_origin(peaks: xr.Dataset) -> bool:
    """True when ``q = 0`` is an origin (set on the cube), not the first detector pixel."""
    x0, _, _, y0, _, _, _ = _grid(peaks)
    return not (x0 == 0.0 and y0 == 0.0) or ("qx0" in peaks.coords and "qy0" in peaks.coords)


def _require_origin(peaks: xr.Dataset, argname: str, purpose: str) -> None:
    if not _has_origin(peaks):
        raise ValueError(
            f"{purpose} needs the origin, but {argname} carries none (q = 0 is the first "
            "detector pixel): set it on the cube (stem4d.set_origin / apply_origin) before "
            "finding the peaks, or measure it from the peaks with origin_from_vectors"
        )


def _origin_offsets(peaks: xr.Dataset) -> tuple[Any, Any]:
    """Per-position origin relative to the mean origin, q units (``(rx, ry)`` or 0)."""
    if "qx0" in peaks.coords and "qy0" in peaks.coords:
        return (peaks.coords["qx0"].reset_coords(drop=True).variable,
                peaks.coords["qy0"].reset_coords(drop=True).variable)
    return 0.0, 0.0


def _ellipse_matrix(peaks: xr.Dataset, argname: str) -> np.ndarray:
    missing = [k for k in _ELLIPSE if k not in peaks.coords]
    if missing:
        raise ValueError(
            f"ellipse=True needs the elliptical-distortion calibration, but {argname} has no "
            f"{missing} coordinate(s): store it on the cube with "
            "stem4d.correct_ellipse(cube, ellipse) before finding the peaks, or pass "
            "ellipse=False"
        )
    a, b, theta = (float(peaks.coords[k].values) for k in _ELLIPSE)
    if not (a > 0 and b > 0 and np.isfinite(theta)):
        raise ValueError(f"{argname}'s ellipse must have ellipse_a > 0, ellipse_b > 0 and a "
                         f"finite ellipse_theta, got {(a, b, theta)}")
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([1 / a, 1 / b]) @ rot.T


def _scan_array(value: Any, peaks: xr.Dataset, argname: str, *, boolean: bool) -> np.ndarray:
    """A ``(rx, ry)`` numpy array of a scan-shaped argument, checked."""
    shape = (peaks.sizes["rx"], peaks.sizes["ry"])
    if isinstance(value, xr.DataArray):
        if set(value.dims) != set(SCAN_DIMS):
            raise ValueError(f"{argname} must have dims ('rx', 'ry'), got {tuple(value.dims)}")
        value = value.transpose(*SCAN_DIMS).values
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{argname} must have the scan shape (rx, ry) = {shape}, got "
                         f"{arr.shape}")
    if boolean:
        if arr.dtype != bool:
            raise TypeError(f"{argname} must be a bool (rx, ry) array (True = keep the "
                            f"position), got dtype {arr.dtype}")
        return arr
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise TypeError(f"{argname} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{argname} must be finite, got {int((~np.isfinite(arr)).sum())} "
                         "NaN/inf value(s)")
    return arr


def _q_mask(mask_q: Any, peaks: xr.Dataset) -> np.ndarray | Callable:
    """A detector mask (float weights on the detector grid) or a callable, checked."""
    if callable(mask_q) and not isinstance(mask_q, (xr.DataArray, np.ndarray)):
        return mask_q
    shape = (peaks.sizes["detector_qx"], peaks.sizes["detector_qy"])
    if isinstance(mask_q, xr.DataArray):
        if set(mask_q.dims) != {"qx", "qy"}:
            raise ValueError(f"mask_q must have dims ('qx', 'qy'), got {tuple(mask_q.dims)}")
        mask_q = mask_q.transpose("qx", "qy")
        if "qx" in mask_q.coords and mask_q.sizes["qx"] == shape[0] and not np.allclose(
                mask_q.coords["qx"].values, peaks.coords["detector_qx"].values):
            raise ValueError("mask_q's qx coordinates differ from the peaks' detector grid "
                             "(detector_qx): build it on the cube the peaks were found on")
        mask_q = mask_q.values
    arr = np.asarray(mask_q)
    if arr.shape != shape:
        raise ValueError(f"mask_q must be a (qx, qy) mask of the detector shape {shape} or a "
                         f"function of (qx, qy), got shape {arr.shape}")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"mask_q must be bool or numbers (True/weight = keep), got {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("mask_q must be finite")
    return arr


def _q_mask_values(mask: np.ndarray | Callable, qx: np.ndarray, qy: np.ndarray,
                   grid: tuple) -> np.ndarray:
    """Weight of each peak (raw position ``qx``, ``qy`` in q units) under ``mask``."""
    x0, sx, nx, y0, sy, ny, _ = grid
    finite = np.isfinite(qx) & np.isfinite(qy)
    if callable(mask):
        with np.errstate(invalid="ignore"):
            out = np.asarray(mask(np.where(finite, qx, 0.0), np.where(finite, qy, 0.0)),
                             dtype=np.float64)
        if out.shape != qx.shape:
            raise ValueError(f"mask_q(qx, qy) must return an array of the shape of its "
                             f"arguments {qx.shape}, got {out.shape}")
        return np.where(finite, out, 0.0)
    with np.errstate(invalid="ignore"):
        ix = np.rint((qx - x0) / sx)
        iy = np.rint((qy - y0) / sy)
    ok = finite & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    ixi = np.where(ok, ix, 0).astype(np.intp)
    iyi = np.where(ok, iy, 0).astype(np.intp)
    return np.where(ok, mask[ixi, iyi], 0.0)


def _scan_coords(peaks: xr.Dataset) -> dict[str, xr.Variable]:
    """Scan and 0-d coordinates of the peaks (for ``(rx, ry)`` results)."""
    return {k: v.variable for k, v in peaks.coords.items()
            if v.ndim == 0 or set(v.dims) <= set(SCAN_DIMS)}


def _aligned(value: Any, like: Any) -> Any:
    """``value`` as an array chunked like the scan dims of ``like`` (if ``like`` is dask)."""
    arr = value.data if isinstance(value, (xr.DataArray, xr.Variable)) else value
    if isinstance(like, da.Array):
        return da.asarray(arr).rechunk(like.chunks[:2] + ((1,),) * (np.ndim(arr) - 2))
    return np.asarray(arr)


# ================================================================ calibrated vectors
def calibrate_vectors(
    peaks: xr.Dataset,
    *,
    center: bool = True,
    ellipse: bool | None = True,
    rotate: bool = True,
    units: str | None = "1/Å",
    pixel_size: float | Sequence[float] | None = None,
) -> xr.Dataset:
    """Calibrated Bragg vectors: origin-centred, ellipse-corrected, in 1/Å, in the scan frame.

    Parameters
    ----------
    peaks
        Raw Bragg peaks Dataset (:func:`stem4d.find_bragg_disks`), numpy or dask.
    center
        Subtract each position's origin (coordinates ``qx0``/``qy0``). Needs an origin.
    ellipse
        Undo the stored elliptical distortion (coordinates ``ellipse_a``, ``ellipse_b``,
        ``ellipse_theta`` from :func:`stem4d.correct_ellipse`): ``T = R(theta)
        diag(1/a, 1/b) R(-theta)`` about the origin. ``True`` requires it (error naming
        the coordinates when absent), ``None`` applies it when it is stored.
    rotate
        Express the vectors in the scan frame, ``Q^T v`` with the stored
        ``scan_rotation``/``scan_flip`` (:func:`stem4d.set_orientation`); the components
        are then named ``g_rx``, ``g_ry``.
    units
        ``"1/Å"``, ``"mrad"`` (both ways through ``beam_energy``), ``"pixels"`` (divide
        by the detector step) or ``None`` (keep the peaks' units).
    pixel_size
        1/Å per detector pixel (one number or ``(qx, qy)``), for peaks found on a cube
        whose q coordinates are in pixels (an error for peaks already in 1/Å or mrad).

    Returns
    -------
    Dataset over ``(rx, ry, peak)`` with the two components (``g_rx``/``g_ry`` when
    rotated, else ``qx``/``qy``; NaN padding kept), ``intensity`` and ``count``, the
    peaks' coordinates, and attrs ``stem4d_type = "bragg_vectors"``, ``frame``
    (``"scan"``/``"detector"``), ``center``, ``ellipse``, ``rotate``. Lazy for dask peaks.
    """
    peaks = _raw_peaks(peaks)
    for name, flag in (("center", center), ("rotate", rotate)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if ellipse is not None and not isinstance(ellipse, (bool, np.bool_)):
        raise TypeError(f"ellipse must be True, False or None (when stored), got {ellipse!r}")
    x0, sx, _, y0, sy, _, current = _grid(peaks)
    current = str(peaks["qx"].attrs.get("units", current))
    target = current if units is None else normalize_units(units, Q_UNITS, "units")[0]

    vx = peaks["qx"].variable.astype(np.float64)
    vy = peaks["qy"].variable.astype(np.float64)
    if ellipse is None:
        ellipse = all(k in peaks.coords for k in _ELLIPSE)
    if center or ellipse:
        _require_origin(peaks, "peaks",
                        "center=True" if center else "ellipse correction about the origin")
    if center:
        ox, oy = _origin_offsets(peaks)
        vx, vy = vx - ox, vy - oy
    if ellipse:
        t = _ellipse_matrix(peaks, "peaks")
        vx, vy = t[0, 0] * vx + t[0, 1] * vy, t[1, 0] * vx + t[1, 1] * vy

    fx, fy = _unit_factors(peaks, current, target, (sx, sy), pixel_size)
    if fx != 1.0 or fy != 1.0:
        vx, vy = vx * fx, vy * fy
    if rotate:
        try:
            rot, flip = get_orientation(peaks)
        except ValueError as err:
            raise ValueError(f"rotate=True: {err} (or pass rotate=False)") from None
        c, s = np.cos(rot), np.sin(rot)
        vx, vy = c * vx + s * vy, -s * vx + c * vy
        if flip:
            vy = -vy
        names = ("g_rx", "g_ry")
        long = ("component along rx (slow scan axis)", "component along ry (fast scan axis)")
    else:
        names = ("qx", "qy")
        long = ("component along qx (detector rows)", "component along qy (detector columns)")
    out = xr.Dataset(
        {
            names[0]: xr.Variable(_PEAK_DIMS, vx.data, {"units": target, "long_name": long[0]}),
            names[1]: xr.Variable(_PEAK_DIMS, vy.data, {"units": target, "long_name": long[1]}),
            "intensity": peaks["intensity"].variable,
            "count": peaks["count"].variable,
        },
        coords=peaks.coords,
    )
    out.attrs = {**peaks.attrs, "stem4d_type": VECTORS_TYPE,
                 "frame": "scan" if rotate else "detector", "center": int(bool(center)),
                 "ellipse": int(bool(ellipse)), "rotate": int(bool(rotate)),
                 "vector_units": target,
                 "convention": "v = Q^T [T (q - q0)] (steps switchable); see "
                               "stem4d.bragg_vectors"}
    return out


def _unit_factors(peaks: xr.Dataset, current: str, target: str, step: tuple[float, float],
                  pixel_size: Any) -> tuple[float, float]:
    """Factors taking the ``current`` units to ``target`` along qx and qy."""
    if pixel_size is not None and current != "pixels":
        raise ValueError(f"pixel_size is only for peaks in pixels; these peaks are in "
                         f"{current} already, got pixel_size={pixel_size!r}")
    if current == target:
        return 1.0, 1.0
    if target == "pixels":  # the grid step is in the current units
        return 1.0 / step[0], 1.0 / step[1]
    fx = fy = 1.0
    if current == "pixels":
        if pixel_size is None:
            raise ValueError(
                f"the peaks' q coordinates are in pixels and the pixel size is unknown, so "
                f"they cannot be converted to {target}: pass pixel_size= (1/Å per pixel), "
                "calibrate the cube with stem4d.set_q_calibration before finding the peaks, "
                "or pass units='pixels'"
            )
        px = np.asarray(pixel_size, dtype=float)
        if px.ndim == 0:
            px = np.array([px, px])
        if px.shape != (2,) or not np.all(np.isfinite(px)) or np.any(px <= 0):
            raise ValueError(f"pixel_size must be a positive number (1/Å per pixel) or a "
                             f"pair, got {pixel_size!r}")
        fx, fy = px[0] / step[0], px[1] / step[1]  # grid units (pixels) -> 1/Å
        current = "1/Å"
        if target == current:
            return float(fx), float(fy)
    if "beam_energy" not in peaks.coords:
        raise ValueError(f"converting the vectors from {current} to {target} needs the beam "
                         "energy, but the peaks have no 'beam_energy' coordinate: set it on "
                         "the cube with stem4d.set_beam(cube, beam_energy=...) (eV)")
    lam = electron_wavelength(float(peaks.coords["beam_energy"].values))
    k = 1000.0 * lam if target == "mrad" else 1.0 / (1000.0 * lam)
    return float(fx * k), float(fy * k)


# ================================================================ masks
def mask_peaks(peaks: xr.Dataset, *, mask_q: Any = None, mask_r: Any = None) -> xr.Dataset:
    """Remove peaks by a detector mask and/or a scan mask; returns new peaks.

    Parameters
    ----------
    peaks
        Raw Bragg peaks Dataset.
    mask_q
        Peaks to **keep** in Q: a bool ``(qx, qy)`` mask on the peaks' detector grid
        (``detector_qx``/``detector_qy``; a peak is kept when the pixel nearest to it is
        True, e.g. ``~stem4d.beamstop_mask(...)``), or a function ``f(qx, qy) -> bool``
        of raw positions in the cube's q units (relative to the mean origin).
    mask_r
        Bool ``(rx, ry)``: **True** keeps the position's peaks (like ``fit_origin``'s mask).

    Returns
    -------
    The peaks with the removed ones dropped: sorted by decreasing intensity again,
    ``count`` updated. Every per-peak variable over ``(rx, ry, peak)`` (``qx``, ``qy``,
    ``intensity``, ``refinement_flag``, any other) is reordered with its peak and padded
    with NaN (float), -1 (signed integers, the padding of ``refinement_flag``), 0
    (unsigned) or False (bool). Lazy for dask peaks.
    """
    peaks = _raw_peaks(peaks)
    qmask = None if mask_q is None else _q_mask(mask_q, peaks)
    rmask = None if mask_r is None else _scan_array(mask_r, peaks, "mask_r", boolean=True)
    if qmask is None and rmask is None:
        return peaks
    grid = _grid(peaks)
    qx, qy, inten = (peaks[k].data for k in ("qx", "qy", "intensity"))
    keep_r = np.ones(qx.shape[:2] + (1,), bool) if rmask is None else rmask[..., None]
    args = [qx, qy, inten, _aligned(keep_r, qx)]
    lazy = isinstance(qx, da.Array)
    if lazy:
        args = [a.rechunk(qx.chunks[:2] + (-1,)) if a.shape[2] > 1 else a for a in args]
        order = da.map_blocks(_mask_order, *args, qmask=qmask, grid=grid, dtype=np.int64,
                              chunks=args[0].chunks[:2] + ((qx.shape[2],), (2,)),
                              new_axis=3, meta=np.array((), np.int64))
    else:
        order = _mask_order(*[np.asarray(a) for a in args], qmask=qmask, grid=grid)
    index, kept = order[..., 0], order[..., 1]  # (rx, ry, peak) each
    result = peaks.copy()
    for name, var in peaks.variables.items():
        if name in peaks.dims or set(var.dims) != set(_PEAK_DIMS):
            continue
        var = var.transpose(*_PEAK_DIMS)
        data = var.data
        if lazy:
            data = da.asarray(data).rechunk(index.chunks)
            data = da.map_blocks(_reorder, data, index, kept, fill=_padding(var.dtype),
                                 dtype=var.dtype, meta=np.array((), var.dtype))
        else:
            data = _reorder(np.asarray(data), index, kept, fill=_padding(var.dtype))
        new = xr.Variable(_PEAK_DIMS, data, var.attrs, var.encoding)
        if name in peaks.coords:
            result = result.assign_coords({name: new})
        else:
            result[name] = new
    count = kept.sum(axis=-1)
    result["count"] = xr.Variable(SCAN_DIMS, count.astype(peaks["count"].dtype),
                                  peaks["count"].attrs)
    masks = [m for m, v in (("mask_q", mask_q), ("mask_r", mask_r)) if v is not None]
    result.attrs = {**peaks.attrs, "masked": masks}
    return result


def _padding(dtype: np.dtype) -> Any:
    """Padding value of a per-peak variable of this dtype (see :func:`mask_peaks`)."""
    if np.issubdtype(dtype, np.bool_):
        return False
    if np.issubdtype(dtype, np.signedinteger):
        return -1
    if np.issubdtype(dtype, np.unsignedinteger):
        return 0
    if np.issubdtype(dtype, np.inexact):
        return np.nan
    if np.issubdtype(dtype, np.str_):
        return ""
    return None


def _mask_order(qx: np.ndarray, qy: np.ndarray, inten: np.ndarray, keep_r: np.ndarray, *,
                qmask: Any, grid: tuple) -> np.ndarray:
    """``(a, b, P, 2)``: ``[..., 0]`` the peak order after masking (kept peaks by
    decreasing intensity first), ``[..., 1]`` 1 where the reordered slot holds a kept peak."""
    keep = np.isfinite(qx) & np.isfinite(qy) & np.isfinite(inten) & keep_r.astype(bool)
    if qmask is not None:
        keep &= _q_mask_values(qmask, qx, qy, grid) > 0
    key = np.where(keep, -inten, np.inf)
    order = np.argsort(key, axis=-1, kind="stable")
    kept = np.take_along_axis(keep, order, axis=-1)
    return np.stack([order, kept], axis=-1).astype(np.int64)


def _reorder(values: np.ndarray, index: np.ndarray, kept: np.ndarray, *, fill: Any
             ) -> np.ndarray:
    """``values`` (a, b, P) taken in the order ``index`` of :func:`_mask_order`; slots
    without a kept peak (``kept == 0``) are ``fill``."""
    out = np.take_along_axis(values, index, axis=-1)
    return np.where(kept.astype(bool), out, np.asarray(fill, dtype=values.dtype))


# ================================================================ Bragg vector map
def bragg_vector_map(
    peaks: xr.Dataset,
    *,
    sampling: float = 1,
    weights: Any = None,
    mask_q: Any = None,
    mask_r: Any = None,
    calibrated: bool = False,
) -> xr.DataArray:
    """Bragg vector map: 2-D histogram of the peaks' intensity-weighted positions.

    Parameters
    ----------
    peaks
        Raw Bragg peaks Dataset, numpy or dask.
    sampling
        Bins per detector pixel along each axis (> 0; 2 halves the bin size). Bin ``k``
        is centred at ``detector_q[0] + k * step / sampling``; the map spans the detector
        (``round(N * sampling)`` bins per axis).
    weights
        Per-position factors ``(rx, ry)`` multiplying the intensities (e.g. a virtual
        image to emphasise a grain).
    mask_q, mask_r
        Peaks to keep, as in :func:`mask_peaks` (the Q mask is evaluated at the raw
        positions).
    calibrated
        Histogram each peak relative to its position's origin (``q - q0``, undoing
        the scan's origin drift) and ellipse-corrected when an ellipse is stored, in the
        detector frame and the peaks' units. Needs an origin.

    Returns
    -------
    ``(qx, qy)`` DataArray on the (sampled) detector grid: coordinates in the peaks' q
    units (attr ``step`` the bin size), 0-d calibration coordinates carried. Each
    peak's intensity is shared bilinearly between the 4 bins around it; parts falling
    off the grid are dropped, so the total is the summed intensity of peaks inside it.
    Lazy (a sum of per-chunk histograms) for dask peaks.
    """
    peaks = _raw_peaks(peaks)
    try:
        sampling = float(sampling)
    except (TypeError, ValueError):
        raise TypeError(f"sampling must be a number of bins per pixel, got {sampling!r}") from None
    if not (np.isfinite(sampling) and sampling > 0):
        raise ValueError(f"sampling must be a positive number of bins per pixel, got {sampling}")
    if not isinstance(calibrated, (bool, np.bool_)):
        raise TypeError(f"calibrated must be True or False, got {calibrated!r}")
    grid = _grid(peaks)
    x0, sx, nx, y0, sy, ny, units = grid
    nbx, nby = max(1, int(round(nx * sampling))), max(1, int(round(ny * sampling))
                                                     )
    qmask = None if mask_q is None else _q_mask(mask_q, peaks)
    factor = np.ones((peaks.sizes["rx"], peaks.sizes["ry"]))
    if weights is not None:
        factor = factor * _scan_array(weights, peaks, "weights", boolean=False)
    if mask_r is not None:
        factor = factor * _scan_array(mask_r, peaks, "mask_r", boolean=True)
    t = np.eye(2)
    ox = oy = np.zeros_like(factor)
    if calibrated:
        _require_origin(peaks, "peaks", "calibrated=True")
        if "qx0" in peaks.coords and "qy0" in peaks.coords:
            ox = peaks.coords["qx0"].transpose(*SCAN_DIMS).values.astype(float)
            oy = peaks.coords["qy0"].transpose(*SCAN_DIMS).values.astype(float)
        if all(k in peaks.coords for k in _ELLIPSE):
            t = _ellipse_matrix(peaks, "peaks")
    qx, qy, inten = (peaks[k].data for k in ("qx", "qy", "intensity"))
    params = {"grid": grid, "qmask": qmask, "t": t, "bins": (nbx, nby),
              "bin": (sx / sampling, sy / sampling)}
    scan = np.stack([factor, ox, oy], axis=-1)
    if isinstance(qx, da.Array):
        args = [a.rechunk(qx.chunks[:2] + (-1,)) for a in (qx, qy, inten)]
        scan_d = da.asarray(scan).rechunk(args[0].chunks[:2] + ((3,),))
        nbr = (len(args[0].chunks[0]), len(args[0].chunks[1]))
        parts = da.map_blocks(_bvm_block, *args, scan_d, params=params, dtype=np.float64,
                              chunks=((1,) * nbr[0], (1,) * nbr[1], (nbx,), (nby,)),
                              new_axis=3, meta=np.array((), np.float64))
        hist = parts.sum(axis=(0, 1))
    else:
        hist = _bvm_block(np.asarray(qx), np.asarray(qy), np.asarray(inten), scan,
                          params=params)[0, 0]
    coords = {
        "qx": xr.Variable(("qx",), x0 + np.arange(nbx) * sx / sampling,
                          {"units": units, "step": sx / sampling}),
        "qy": xr.Variable(("qy",), y0 + np.arange(nby) * sy / sampling,
                          {"units": units, "step": sy / sampling}),
    }
    coords.update({k: v.variable for k, v in peaks.coords.items() if v.ndim == 0})
    return xr.DataArray(
        hist, dims=("qx", "qy"), coords=coords, name="bragg_vector_map",
        attrs={"units": peaks["intensity"].attrs.get("units", "a.u."),
               "long_name": "Bragg vector map (intensity per bin)", "sampling": sampling,
               "calibrated": int(bool(calibrated)),
               "deposition": "bilinear: each peak's intensity shared by the 4 nearest bins"},
    )


def _bvm_block(qx: np.ndarray, qy: np.ndarray, inten: np.ndarray, scan: np.ndarray, *,
               params: dict) -> np.ndarray:
    """Histogram of one block of peaks: ``(1, 1, nbx, nby)``."""
    x0, _, _, y0, _, _, _ = params["grid"]
    nbx, nby = params["bins"]
    bx, by = params["bin"]
    w = np.nan_to_num(inten.astype(np.float64), nan=0.0) * scan[..., 0:1]
    if params["qmask"] is not None:
        w = w * _q_mask_values(params["qmask"], qx, qy, params["grid"])
    px = qx - scan[..., 1:2]
    py = qy - scan[..., 2:3]
    t = params["t"]
    if not np.array_equal(t, np.eye(2)):
        px, py = t[0, 0] * px + t[0, 1] * py, t[1, 0] * px + t[1, 1] * py
    fx, fy = np.broadcast_arrays((px - x0) / bx, (py - y0) / by)
    hist = bilinear_histogram(fx.ravel(), fy.ravel(), np.broadcast_to(w, fx.shape).ravel(),
                              (nbx, nby))
    return hist.reshape(1, 1, nbx, nby)


# ================================================================ virtual image
def _positions(peaks: Any, shift_center: bool) -> tuple[xr.DataArray, xr.DataArray, str]:
    """Two components, in their units, of raw peaks (centred if asked) or of vectors."""
    if _is_vectors(peaks):
        names = ("g_rx", "g_ry") if peaks.attrs.get("frame") == "scan" else ("qx", "qy")
        for n in names:
            if n not in peaks:
                raise ValueError(f"peaks (calibrated vectors) has no {n!r} variable")
        return (peaks[names[0]], peaks[names[1]],
                str(peaks[names[0]].attrs.get("units", peaks.attrs.get("vector_units", ""))))
    peaks = _raw_peaks(peaks)
    vx, vy = peaks["qx"], peaks["qy"]
    if shift_center:
        _require_origin(peaks, "peaks", "shift_center=True")
        if "qx0" in peaks.coords and "qy0" in peaks.coords:
            vx = vx - peaks.coords["qx0"].reset_coords(drop=True)
            vy = vy - peaks.coords["qy0"].reset_coords(drop=True)
    return vx, vy, _grid(peaks)[6]


def vector_virtual_image(
    peaks: xr.Dataset,
    *,
    center: Sequence[float] = (0.0, 0.0),
    radius: float | None = None,
    radii: Sequence[float] | None = None,
    shift_center: bool = True,
) -> xr.DataArray:
    """Virtual image from the Bragg vectors: summed intensity of the peaks in a circle/annulus.

    Parameters
    ----------
    peaks
        Raw Bragg peaks, or calibrated vectors of :func:`calibrate_vectors` (then
        ``center``/radii are in their units and frame).
    center
        Centre of the detector, in the q units of ``peaks`` (``(0, 0)`` the origin).
    radius
        Circle: peaks with ``|q - center| <= radius`` (closed edge).
    radii
        Annulus ``(inner, outer)``: ``inner <= |q - center| <= outer``.
    shift_center
        Raw peaks: measure each position's peaks from its own origin (``qx0``/``qy0``),
        so the detector follows the beam. Needs an origin.

    Returns
    -------
    ``(rx, ry)`` DataArray in the peaks' intensity units; lazy for dask peaks.
    """
    if (radius is None) == (radii is None):
        raise ValueError("give either radius= (a circle) or radii=(inner, outer) (an annulus), "
                         f"got radius={radius!r}, radii={radii!r}")
    if radius is not None:
        try:
            r_in, r_out = 0.0, float(radius)
        except (TypeError, ValueError):
            raise TypeError(f"radius must be a number, got {radius!r}") from None
        if not (np.isfinite(r_out) and r_out > 0):
            raise ValueError(f"radius must be positive, got {radius!r}")
    else:
        try:
            r_in, r_out = (float(v) for v in radii)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise TypeError(f"radii must be a pair (inner, outer), got {radii!r}") from None
        if not (np.isfinite(r_out) and 0 <= r_in < r_out):
            raise ValueError(f"radii must satisfy 0 <= inner < outer, got {radii!r}")
    try:
        cx, cy = (float(v) for v in center)
    except (TypeError, ValueError):
        raise TypeError(f"center must be a pair of numbers (q units), got {center!r}") from None
    vx, vy, units = _positions(peaks, shift_center)
    dist = np.hypot(vx - cx, vy - cy)
    inside = (dist >= r_in) & (dist <= r_out)
    image = peaks["intensity"].where(inside, 0.0).sum("peak")
    image = image.reset_coords(drop=True).assign_coords(_scan_coords(peaks))
    shape = "circle" if radius is not None else "annulus"
    image.name = "vector_virtual_image"
    image.attrs = {"units": peaks["intensity"].attrs.get("units", "a.u."),
                   "long_name": f"summed Bragg peak intensity in a {shape}",
                   "detector": shape, "center": [cx, cy], "radii": [r_in, r_out],
                   "q_units": units}
    return image


# ================================================================ origin from vectors
def origin_from_vectors(
    peaks: xr.Dataset,
    method: str = "nearest",
    *,
    center_guess: Any = None,
    max_distance: float | None = None,
    distance_scale: float = 1.0,
    radii: Sequence[float] | None = None,
    pair_tolerance: float | None = None,
    iterations: int = 3,
) -> xr.Dataset:
    """Origin of every pattern measured from its Bragg peaks, in detector pixels.

    Parameters
    ----------
    peaks
        Raw Bragg peaks Dataset, numpy or dask.
    method
        * ``"nearest"``: the peak nearest to the guess;
        * ``"brightest"``: the most intense peak (within ``max_distance`` of the guess);
        * ``"weighted"``: the peak of highest ``intensity / (distance + distance_scale)``
          (distance to the guess, pixels), which prefers a bright peak near the guess;
        * ``"beamstop"`` (central beam blocked): conjugate pairs. Peak offsets ``d`` from
          the guess (within ``radii`` if given) are paired with the peak whose offset is
          closest to ``-d`` when each is the other's best match and
          ``|d_i + d_j| <= pair_tolerance``; the origin is the guess plus the mean of the
          pair midpoints ``(d_i + d_j) / 2``, and the search is repeated ``iterations``
          times about the new origin.
    center_guess
        Guess of the origin, detector pixels (fractional row, column): a pair of numbers
        or of ``(rx, ry)`` arrays. Default: the origin the peaks carry (per position
        when they have ``qx0``/``qy0``), else the maximum of the Bragg vector map smoothed
        by a 1-pixel Gaussian (which computes the map; persist dask peaks first).
        ``"beamstop"`` has no map fallback (with the central beam blocked the map's
        maximum is a diffracted spot): without a guess and without a stored origin it
        raises a ValueError.
    max_distance
        ``"nearest"``/``"brightest"``/``"weighted"``: ignore peaks farther than this from
        the guess, pixels (NaN where none is left). ``"beamstop"`` uses ``radii``.
    distance_scale
        ``"weighted"``: softening distance of the score, pixels.
    radii
        ``"beamstop"``: annulus ``(inner, outer)`` about the guess, pixels, holding the
        peaks used for pairs. Default: all peaks.
    pair_tolerance
        ``"beamstop"``: largest ``|d_i + d_j|`` of a pair, pixels. Default: per position,
        half the median nearest-neighbour distance between its peaks (a pair then cannot
        be confused with another lattice vector, and the guess may be off by up to a
        quarter of the shortest lattice vector).
    iterations
        ``"beamstop"``: number of pair searches (>= 1).

    Returns
    -------
    Dataset over ``(rx, ry)`` like :func:`stem4d.measure_origin`: ``qx0``, ``qy0`` (pixels,
    NaN where nothing was found) and ``quality`` (the chosen peak's intensity; for
    ``"beamstop"`` the number of pairs), with the peaks' scan and 0-d coordinates; feed it
    to :func:`stem4d.fit_origin` and :func:`stem4d.apply_origin`. Lazy for dask peaks.
    """
    peaks = _raw_peaks(peaks)
    if method not in _ORIGIN_METHODS:
        raise ValueError(f"method must be one of {_ORIGIN_METHODS}, got {method!r}")
    if max_distance is not None and not (np.isfinite(max_distance) and max_distance > 0):
        raise ValueError(f"max_distance must be a positive number of pixels or None, got "
                         f"{max_distance!r}")
    if not (np.isfinite(distance_scale) and distance_scale > 0):
        raise ValueError(f"distance_scale must be a positive number of pixels, got "
                         f"{distance_scale!r}")
    if pair_tolerance is not None and not (np.isfinite(pair_tolerance) and pair_tolerance > 0):
        raise ValueError(f"pair_tolerance must be a positive number of pixels or None, got "
                         f"{pair_tolerance!r}")
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    ring = (0.0, np.inf)
    if radii is not None:
        try:
            ring = tuple(float(v) for v in radii)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise TypeError(f"radii must be a pair (inner, outer) of pixels, got {radii!r}") \
                from None
        if len(ring) != 2 or not (0 <= ring[0] < ring[1]):
            raise ValueError(f"radii must satisfy 0 <= inner < outer (pixels), got {radii!r}")
    x0, sx, _, y0, sy, _, _ = _grid(peaks)
    gx, gy = _origin_guess(peaks, center_guess, method)
    qx, qy, inten = (peaks[k].data for k in ("qx", "qy", "intensity"))
    params = {"method": method, "map": (x0, sx, y0, sy), "max_distance": max_distance,
              "distance_scale": float(distance_scale), "ring": ring,
              "tolerance": pair_tolerance, "iterations": int(iterations)}
    guess = np.stack([gx, gy], axis=-1)
    if isinstance(qx, da.Array):
        args = [a.rechunk(qx.chunks[:2] + (-1,)) for a in (qx, qy, inten)]
        guess_d = da.asarray(guess).rechunk(args[0].chunks[:2] + ((2,),))
        out = da.map_blocks(_origin_block, *args, guess_d, params=params, dtype=np.float64,
                            chunks=args[0].chunks[:2] + ((3,),),
                            meta=np.array((), np.float64))
    else:
        out = _origin_block(np.asarray(qx), np.asarray(qy), np.asarray(inten), guess,
                            params=params)
    coords = {k: v for k, v in _scan_coords(peaks).items() if k not in ("qx0", "qy0")}
    px = {"units": "pixels"}
    quality = ("number of conjugate pairs used" if method == "beamstop"
               else "intensity of the peak taken as the origin")
    return xr.Dataset(
        {
            "qx0": (SCAN_DIMS, out[..., 0],
                    {**px, "long_name": "origin, detector row (fractional pixel index)"}),
            "qy0": (SCAN_DIMS, out[..., 1],
                    {**px, "long_name": "origin, detector column (fractional pixel index)"}),
            "quality": (SCAN_DIMS, out[..., 2], {"long_name": quality}),
        },
        coords=coords,
        attrs={"method": f"bragg_vectors:{method}",
               "detector_shape": [peaks.sizes["detector_qx"], peaks.sizes["detector_qy"]],
               "convention": "detector pixels: pixel (i, j) has its centre at (i, j)"},
    )


def _origin_guess(peaks: xr.Dataset, center_guess: Any, method: str = "nearest"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-position guess of the origin, detector pixels, two ``(rx, ry)`` arrays."""
    shape = (peaks.sizes["rx"], peaks.sizes["ry"])
    x0, sx, y0, sy = _detector_map(peaks)
    if center_guess is not None:
        if not isinstance(center_guess, (tuple, list, np.ndarray)) or len(center_guess) != 2:
            raise ValueError(f"center_guess must be a pair (qx0, qy0) of detector pixels "
                             f"(numbers or (rx, ry) arrays), got {center_guess!r}")
        out = []
        for i, v in enumerate(center_guess):
            if np.ndim(v) == 0:
                try:
                    val = float(v)
                except (TypeError, ValueError):
                    raise TypeError(f"center_guess[{i}] must be a number of pixels, got "
                                    f"{v!r}") from None
                if not np.isfinite(val):
                    raise ValueError(f"center_guess[{i}] must be finite, got {v!r}")
                out.append(np.full(shape, val))
            else:
                out.append(_scan_array(v, peaks, f"center_guess[{i}]", boolean=False))
        return out[0], out[1]
    if _has_origin(peaks):
        ox, oy = _origin_offsets(peaks)
        gx = np.broadcast_to((np.asarray(getattr(ox, "values", ox)) - x0) / sx, shape)
        gy = np.broadcast_to((np.asarray(getattr(oy, "values", oy)) - y0) / sy, shape)
        return np.array(gx, dtype=float), np.array(gy, dtype=float)
    if method == "beamstop":
        # The map's maximum is a diffracted spot when the central beam is blocked, and a
        # lattice is centrosymmetric about every half-lattice point, so no guess is safe.
        raise ValueError(
            "method='beamstop' needs a guess of the origin, but center_guess is None and "
            "peaks carries no origin (q = 0 is the first detector pixel; no qx0/qy0): with "
            "the central beam blocked, the maximum of the Bragg vector map (the other "
            "methods' default guess) is a diffracted spot. Pass center_guess=(qx0, qy0) in "
            "detector pixels (e.g. the beamstop's centre, within a quarter of the shortest "
            "lattice vector), or set the origin on the cube before finding the peaks")
    from scipy import ndimage

    bvm = np.asarray(bragg_vector_map(peaks).values, dtype=float)
    smooth = ndimage.gaussian_filter(bvm, 1.0, mode="constant")
    if not np.any(smooth > 0):
        raise ValueError("peaks has no peaks with positive intensity: cannot guess the origin; "
                         "pass center_guess=(qx0, qy0) in pixels")
    ix, iy = np.unravel_index(np.argmax(smooth), smooth.shape)
    return np.full(shape, float(ix)), np.full(shape, float(iy))


def _origin_block(qx: np.ndarray, qy: np.ndarray, inten: np.ndarray, guess: np.ndarray, *,
                  params: dict) -> np.ndarray:
    """``(a, b, 3)``: origin row, column (pixels) and quality of a block of positions."""
    x0, sx, y0, sy = params["map"]
    px = (qx.astype(np.float64) - x0) / sx
    py = (qy.astype(np.float64) - y0) / sy
    w = inten.astype(np.float64)
    gx, gy = guess[..., 0:1], guess[..., 1:2]
    valid = np.isfinite(px) & np.isfinite(py) & np.isfinite(w)
    out = np.full(qx.shape[:2] + (3,), np.nan)
    if qx.shape[2] == 0:  # no peaks at all
        if params["method"] == "beamstop":
            out[..., 2] = 0.0
        return out
    method = params["method"]
    if method == "beamstop":
        return _pairs(px, py, valid, guess, params, out)
    dist = np.hypot(px - gx, py - gy)
    if params["max_distance"] is not None:
        valid &= dist <= params["max_distance"]
    if method == "nearest":
        score = -dist
    elif method == "brightest":
        score = w.copy()
    else:
        score = w / (dist + params["distance_scale"])
    score = np.where(valid, score, -np.inf)
    best = np.argmax(score, axis=-1)[..., None]
    found = valid.any(axis=-1)
    for i, arr in enumerate((px, py, w)):
        out[..., i] = np.where(found, np.take_along_axis(arr, best, axis=-1)[..., 0], np.nan)
    return out


def _pairs(px: np.ndarray, py: np.ndarray, valid: np.ndarray, guess: np.ndarray,
           params: dict, out: np.ndarray) -> np.ndarray:
    """Conjugate-pair origin of each position (see :func:`origin_from_vectors`)."""
    shape = px.shape[:2]
    npk = px.shape[2]
    pts = np.stack([px, py], axis=-1).reshape(-1, npk, 2)
    ok_all = valid.reshape(-1, npk)
    centre = guess.reshape(-1, 2).astype(np.float64).copy()
    npairs = np.zeros(centre.shape[0])
    r_in, r_out = params["ring"]
    for start in range(0, pts.shape[0], _BATCH):
        sl = slice(start, start + _BATCH)
        p, ok = pts[sl], ok_all[sl]
        c = centre[sl]
        tol = params["tolerance"]
        if tol is None:  # half the median nearest-neighbour distance at each position
            sep = np.linalg.norm(p[:, :, None, :] - p[:, None, :, :], axis=-1)
            pair_ok = ok[:, :, None] & ok[:, None, :] & ~np.eye(npk, dtype=bool)
            sep = np.where(pair_ok, sep, np.inf).min(axis=-1)
            sep = np.where(np.isfinite(sep), sep, np.nan)
            with warnings.catch_warnings():  # positions without peaks: NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                tol_b = 0.5 * np.nanmedian(np.where(ok, sep, np.nan), axis=-1)
        else:
            tol_b = np.full(p.shape[0], float(tol))
        n_b = np.zeros(p.shape[0])
        for _ in range(params["iterations"]):
            d = p - c[:, None, :]
            rad = np.hypot(d[..., 0], d[..., 1])
            use = ok & (rad >= r_in) & (rad <= r_out)
            s = d[:, :, None, :] + d[:, None, :, :]  # (B, P, P, 2)
            mis = np.hypot(s[..., 0], s[..., 1])
            allowed = use[:, :, None] & use[:, None, :] & ~np.eye(npk, dtype=bool)
            mis = np.where(allowed, mis, np.inf)
            best = np.argmin(mis, axis=-1)  # (B, P)
            back = np.take_along_axis(best, best, axis=-1)
            idx = np.arange(npk)[None, :]
            best_mis = np.take_along_axis(mis, best[..., None], axis=-1)[..., 0]
            with np.errstate(invalid="ignore"):
                keep = (back == idx) & (idx < best) & (best_mis <= tol_b[:, None])
            mid = np.take_along_axis(s, best[..., None, None].repeat(2, -1), axis=2)[:, :, 0]
            n_b = keep.sum(axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                shift = np.where(keep[..., None], mid, 0.0).sum(axis=1) / (2.0 * n_b[:, None])
            c = np.where(n_b[:, None] > 0, c + np.nan_to_num(shift), c)
        c = np.where(n_b[:, None] > 0, c, np.nan)
        centre[sl] = c
        npairs[sl] = n_b
    out[..., 0] = centre[:, 0].reshape(shape)
    out[..., 1] = centre[:, 1].reshape(shape)
    out[..., 2] = npairs.reshape(shape)
    return out
