"""Preprocessing a datacube: binning, cropping, padding, resampling, thinning, bad pixels.

Every function takes a datacube (see :mod:`stem4d.datacube`) first and returns a *new*
DataArray; the input is never modified. numpy-backed cubes give numpy results,
dask-backed cubes give lazy dask results (the work is mapped over scan chunks with
whole diffraction patterns in each chunk; nothing computes the 4D data, except that
:func:`filter_hot_pixels` computes the 2-D mean pattern).

Conventions
-----------
* **Coordinates follow the data.** Cropping and thinning keep the coordinates of the
  kept pixels/positions. Binning gives each new pixel the *mean coordinate of the
  pixels it merges*, so the pixel size is multiplied by the factor and ``q = 0`` stays
  at the same physical place (an origin at pixel ``o`` lands at ``(o - (f-1)/2) / f``
  binned pixels). Padding extends the coordinates linearly with the same step.
  Resampling puts new detector pixel ``j`` at old (fractional) pixel ``j * n / N``
  (pixel 0 stays put, the convention of Fourier interpolation), so the pixel size is
  divided by the actual scale ``N / n`` and ``q = 0`` keeps its physical place.
* **Per-position origins** ``qx0``/``qy0`` are physical q offsets, so detector
  operations leave them unchanged; scan operations select (crop, thin) or average
  (``bin_r``) them. They stay relative to the parent cube's ``q = 0``: after cropping
  or binning the scan their mean may drift slightly from zero, and the q coordinates
  are deliberately not re-centred (so crops of one cube share coordinates).
* Other coordinates along a binned dim are block-averaged when numeric and dropped
  otherwise; non-index coordinates along qx/qy are dropped by :func:`pad_q` and
  :func:`resample_q`. 0-d coordinates (``beam_energy`` …), attrs and name are kept.
* **Steps.** Every axis a function returns carries its spacing in
  ``coords[dim].attrs["step"]`` (binning/thinning multiply it, resampling divides it,
  cropping/padding keep it), so an axis later reduced to a single pixel (``isel``)
  still reports the right pixel size through :func:`stem4d.r_pixel_size` /
  :func:`stem4d.q_pixel_size`.
* **Output dtypes of binning** (``dtype=None``): float input stays float with at least
  32 bits (float16/float32 → float32, float64 → float64); ``reduce="sum"`` of integer
  (or bool) input gives the narrowest integer of the same signedness, at least 32
  bits and never narrower than the input, that cannot overflow (uint16 binned by 2 →
  uint32), float64 if none can; ``reduce="mean"`` of integers gives float32 (≤ 16-bit
  input) or float64. An explicit integer ``dtype`` is checked, never wrapped: binned
  values outside its range raise a ValueError (for dask input when the chunk is
  computed).
* **Hot pixels** (:func:`filter_hot_pixels`): a pixel of the mean pattern is compared
  with a reference taken from its 8 neighbours (the ``ind_compare``-th brightest), and
  the excess is a robust z-score (local median absolute deviation of the residual map,
  floored by the global one); see that function for the exact formula.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.fft as sfft
import xarray as xr

from ._dask import is_dask, whole_patterns
from .datacube import (
    CUBE_DIMS,
    DETECTOR_DIMS,
    SCAN_DIMS,
    _axis_step,
    validate_cube,
)
from .detectors import _mask_array

__all__ = [
    "bin_q",
    "bin_r",
    "crop_q",
    "crop_r",
    "pad_q",
    "resample_q",
    "thin_r",
    "filter_hot_pixels",
    "median_filter_masked_pixels",
]

_PAD_MODES = (
    "constant", "edge", "linear_ramp", "maximum", "mean", "median", "minimum",
    "reflect", "symmetric", "wrap",
)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # stem4d/
_BATCH_BYTES = 64 * 2**20  # output bytes per batch of patterns for numpy input
_HOT_WINDOW = 7  # side of the window of the local residual statistics (hot pixels)
_MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD -> std for Gaussian noise
_MEANDEV_TO_SIGMA = 1.2533141373155001  # sqrt(pi/2): mean |dev| -> std for Gaussian noise


# =============================================================== argument checking
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _int_pair(value: Any, argname: str, dims: tuple[str, str]) -> tuple[int, int]:
    """A positive int or a pair of them, one per dim of ``dims``."""
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    expected = f"a positive int or a pair of positive ints {dims}"
    if len(pair) != 2:
        raise ValueError(f"{argname} must be {expected}, got {value!r}")
    if not all(_is_int(v) for v in pair):
        raise TypeError(f"{argname} must be {expected}, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{argname} must be {expected}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _factor_pair(
    cube: xr.DataArray, factor: Any, dims: tuple[str, str], argname: str = "factor"
) -> tuple[int, int]:
    """Integer factors for ``dims``, each at most the axis length."""
    fx, fy = _int_pair(factor, argname, dims)
    for dim, f in zip(dims, (fx, fy), strict=True):
        if f > cube.sizes[dim]:
            raise ValueError(
                f"{argname} along {dim!r} must be at most the axis length "
                f"{cube.sizes[dim]}, got {f}"
            )
    return fx, fy


def _float_pair(value: Any, argname: str) -> tuple[float, float]:
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    expected = "a positive number or a pair of positive numbers (qx, qy)"
    if len(pair) != 2:
        raise ValueError(f"{argname} must be {expected}, got {value!r}")
    try:
        out = (float(pair[0]), float(pair[1]))
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be {expected}, got {value!r}") from None
    if not all(np.isfinite(out)) or min(out) <= 0:
        raise ValueError(f"{argname} must be {expected}, got {value!r}")
    return out


def _output_shape(
    cube: xr.DataArray, factor: Any, output_size: Any, func: str
) -> tuple[int, int]:
    """Detector shape from exactly one of ``factor`` / ``output_size``."""
    if (factor is None) == (output_size is None):
        raise ValueError(
            f"{func} needs exactly one of factor= or output_size=, got "
            f"factor={factor!r}, output_size={output_size!r}"
        )
    n = (cube.sizes["qx"], cube.sizes["qy"])
    if output_size is not None:
        return _int_pair(output_size, "output_size", DETECTOR_DIMS)
    fx, fy = _float_pair(factor, "factor")
    shape = (int(round(n[0] * fx)), int(round(n[1] * fy)))
    if min(shape) < 1:
        raise ValueError(
            f"factor={factor!r} leaves no detector pixels (shape {n} -> {shape})"
        )
    return shape


def _index_range(value: Any, n: int, argname: str, dim: str) -> slice:
    """A ``(start, stop)`` pixel-index pair → a non-empty slice within ``[0, n]``."""
    if value is None:
        return slice(0, n)
    expected = (
        f"a (start, stop) pair of {dim} pixel indices with 0 <= start < stop <= {n} "
        "(negative values count from the end, None means the axis end)"
    )
    if np.ndim(value) != 1 or len(value) != 2:
        raise ValueError(f"{argname} must be {expected}, got {value!r}")
    start, stop = value
    for v in (start, stop):
        if v is not None and not _is_int(v):
            raise TypeError(f"{argname} must be {expected}, got {value!r}")
    start = 0 if start is None else int(start)
    stop = n if stop is None else int(stop)
    start = start + n if start < 0 else start
    stop = stop + n if stop < 0 else stop
    if not (0 <= start < stop <= n):
        raise ValueError(
            f"{argname} must be {expected}, got {value!r}, which selects no pixels "
            f"or goes beyond the axis of length {n}"
        )
    return slice(start, stop)


def _as_dtype(dtype: Any) -> np.dtype:
    try:
        out = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a numpy dtype or None, got {dtype!r}") from None
    if out.kind not in "biufc":
        raise TypeError(f"dtype must be a numeric or bool dtype, got {out}")
    return out


def _check_reduce(reduce: Any) -> str:
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    return reduce


# =================================================================== dtype rules
def _float_dtype(dtype: np.dtype) -> np.dtype:
    """Working float dtype: float32, or float64/complex for such input."""
    if dtype.kind in "fc":
        return np.result_type(dtype, np.float32)
    if dtype.kind in "iu" and dtype.itemsize >= 4:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _bin_dtype(dtype: np.dtype, reduce: str, nmerge: int) -> np.dtype:
    """Default output dtype of a binning (see the module docstring)."""
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    if dtype.kind in "fc" or reduce == "mean":
        return _float_dtype(dtype)
    info = np.iinfo(dtype)
    candidates = (np.uint32, np.uint64) if dtype.kind == "u" else (np.int32, np.int64)
    for cand in map(np.dtype, candidates):
        ci = np.iinfo(cand)
        if (cand.itemsize >= dtype.itemsize and info.max * nmerge <= ci.max
                and info.min * nmerge >= ci.min):
            return cand
    return np.dtype(np.float64)


# ================================================================ dask plumbing
def _map_patterns(
    data: Any, func: Callable[[np.ndarray], np.ndarray], out_q: tuple[int, int],
    dtype: np.dtype,
) -> Any:
    """Apply ``func`` (``(..., qx, qy) -> (..., out_qx, out_qy)``) to numpy or dask data.

    numpy data are processed in batches of scan rows (about ``_BATCH_BYTES`` of output
    each) so temporaries stay small; dask data chunk by chunk, whole patterns per chunk.
    """
    if not is_dask(data):
        data = np.asarray(data)
        per_row = data.shape[1] * out_q[0] * out_q[1] * max(np.dtype(dtype).itemsize, 8)
        rows = max(1, _BATCH_BYTES // max(per_row, 1))
        if rows >= data.shape[0]:
            return func(data)
        out = np.empty(data.shape[:2] + tuple(out_q), dtype=dtype)
        for start in range(0, data.shape[0], rows):
            out[start:start + rows] = func(data[start:start + rows])
        return out
    data = whole_patterns(data)
    chunks = data.chunks[:2] + ((out_q[0],), (out_q[1],))
    return data.map_blocks(func, chunks=chunks, dtype=dtype, meta=np.empty((0,) * 4, dtype))


def _multiple_chunks(data: Any, axes: tuple[int, int], factors: tuple[int, int]) -> Any:
    """Rechunk dask ``data`` so every chunk along ``axes`` is a multiple of its factor.

    The axis lengths must already be multiples of the factors.
    """
    new = {}
    for ax, f in zip(axes, factors, strict=True):
        chunks = data.chunks[ax]
        if any(c % f for c in chunks):
            new[ax] = max(f, (max(chunks) // f) * f)
    return data.rechunk(new) if new else data


# ============================================================ kernels (plain arrays)
def _block_reduce(
    a: np.ndarray, axes: tuple[int, int], factors: tuple[int, int], reduce: str,
    acc: np.dtype, out: np.dtype,
) -> np.ndarray:
    """Sum or mean over ``fx x fy`` blocks of two consecutive axes (lengths divisible)."""
    ax, fx, fy = axes[0], factors[0], factors[1]
    s = a.shape
    a = a.reshape(s[:ax] + (s[ax] // fx, fx, s[ax + 1] // fy, fy) + s[ax + 2:])
    red = (ax + 1, ax + 3)
    res = a.sum(axis=red, dtype=acc) if reduce == "sum" else a.mean(axis=red, dtype=acc)
    if out.kind in "iub" and res.dtype != out:
        if res.dtype.kind in "fc":
            res = np.rint(res)
        if not (res.dtype.kind in "iu" and np.can_cast(res.dtype, out, "safe")):
            _check_fits(res, out)
    elif out.kind == "f" and out.itemsize < res.dtype.itemsize and res.size:
        biggest = float(np.nanmax(np.abs(res))) if np.isfinite(res).any() else 0.0
        if biggest > float(np.finfo(out).max):
            raise ValueError(
                f"dtype={out} cannot hold the binned values: they reach "
                f"{_fmt_number(biggest)} in magnitude, but {out} holds up to "
                f"{_fmt_number(float(np.finfo(out).max))}; pass a wider dtype or dtype=None")
    return res.astype(out, copy=False)


def _check_fits(values: np.ndarray, out: np.dtype) -> None:
    """Raise a ValueError when integer (or bool) dtype ``out`` cannot hold ``values``."""
    if values.size == 0:
        return
    lo, hi = (0, 1) if out.kind == "b" else (np.iinfo(out).min, np.iinfo(out).max)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        found = "include NaN or infinity"
    else:
        vmin, vmax = values.min().item(), values.max().item()
        if lo <= vmin and vmax <= hi:
            return
        found = f"range from {_fmt_number(vmin)} to {_fmt_number(vmax)}"
    raise ValueError(
        f"dtype={out} cannot hold the binned values: they {found}, but {out} holds "
        f"{lo} to {hi}; pass a wider dtype or dtype=None (the default never overflows)"
    )


def _fmt_number(value: float) -> str:
    """An integral number without a decimal point, anything else with 6 digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _fourier_resample_axis(
    a: np.ndarray, axis: int, n_out: int, keep_values: bool, workers: int
) -> np.ndarray:
    """Trigonometric interpolation of real ``a`` along ``axis`` to ``n_out`` samples.

    New sample ``j`` is the band-limited interpolant at old sample ``j * n / n_out``.
    The half spectrum is zero-padded or truncated; an even-length Nyquist bin is split
    (upsampling) or folded (downsampling) so the result is the exact interpolant.
    Values are preserved when ``keep_values`` (mean kept), else sums.
    """
    n = a.shape[axis]
    if n_out == n:
        return a
    spec = sfft.rfft(a, axis=axis, workers=workers)
    m = min(n, n_out)
    shape = list(spec.shape)
    shape[axis] = n_out // 2 + 1
    new = np.zeros(shape, dtype=spec.dtype)
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(0, m // 2 + 1)
    new[tuple(idx)] = spec[tuple(idx)]
    if m % 2 == 0:
        idx[axis] = slice(m // 2, m // 2 + 1)
        new[tuple(idx)] *= 2.0 if n_out < n else 0.5
    out = sfft.irfft(new, n=n_out, axis=axis, workers=workers)
    if keep_values:
        out *= n_out / n
    return out


def _resample_fourier(
    block: np.ndarray, out_q: tuple[int, int], conserve: bool, work: np.dtype,
    workers: int,
) -> np.ndarray:
    a = block.astype(work, copy=False)
    a = _fourier_resample_axis(a, -2, out_q[0], not conserve, workers)
    a = _fourier_resample_axis(a, -1, out_q[1], not conserve, workers)
    return a.astype(work, copy=False)


def _linear_weights(n: int, n_out: int, dtype: np.dtype) -> np.ndarray:
    """``(n_out, n)`` matrix of linear interpolation at old pixels ``j * n / n_out``.

    Positions past the last pixel take its value (edge extension).
    """
    x = np.minimum(np.arange(n_out) * (n / n_out), n - 1)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    frac = x - i0
    w = np.zeros((n_out, n), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1 - frac)
    np.add.at(w, (rows, i1), frac)
    return w.astype(dtype)


def _resample_bilinear(
    block: np.ndarray, out_q: tuple[int, int], conserve: bool, work: np.dtype
) -> np.ndarray:
    a = block.astype(work, copy=False)
    nx, ny = a.shape[-2:]
    wx = _linear_weights(nx, out_q[0], work)
    wy = _linear_weights(ny, out_q[1], work)
    lead = a.shape[:-2]
    out = (a.reshape(-1, ny) @ wy.T).reshape(lead + (nx, out_q[1]))
    out = np.matmul(wx, out)
    if conserve:
        s_in = a.sum(axis=(-2, -1), keepdims=True, dtype=np.float64)
        s_out = out.sum(axis=(-2, -1), keepdims=True, dtype=np.float64)
        ratio = np.divide(s_in, s_out, out=np.ones_like(s_in), where=s_out != 0)
        out = out * ratio.astype(work)
    return out.astype(work, copy=False)


def _masked_median_plan(
    mask: np.ndarray, kernel_width: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Group masked pixels by their number of usable (unmasked, in-detector) neighbours.

    Returns ``[(targets, neighbours), ...]`` with flat detector indices, ``targets`` of
    shape ``(m,)`` and ``neighbours`` of shape ``(m, c)`` (same ``c`` in a group), and
    the number of masked pixels that have no usable neighbour.
    """
    nx, ny = mask.shape
    h = kernel_width // 2
    d = np.arange(-h, h + 1)
    ox, oy = (g.ravel() for g in np.meshgrid(d, d, indexing="ij"))
    keep = (ox != 0) | (oy != 0)
    ox, oy = ox[keep], oy[keep]
    bx, by = np.nonzero(mask)
    px, py = bx[:, None] + ox, by[:, None] + oy
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    pxc, pyc = np.clip(px, 0, nx - 1), np.clip(py, 0, ny - 1)
    valid = inside & ~mask[pxc, pyc]
    flat_nb = pxc * ny + pyc
    flat_target = bx * ny + by
    counts = valid.sum(axis=1)
    order = np.argsort(~valid, axis=1, kind="stable")  # usable neighbours first
    flat_nb = np.take_along_axis(flat_nb, order, axis=1)
    groups = []
    for c in np.unique(counts):
        if c == 0:
            continue
        rows = counts == c
        groups.append((flat_target[rows], flat_nb[rows, :c]))
    return groups, int(np.sum(counts == 0))


def _median_fill(
    block: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Replace target pixels of each pattern by the median of their neighbour pixels."""
    out = np.array(block, copy=True, order="C")
    flat = out.reshape(out.shape[:-2] + (-1,))
    work = _float_dtype(out.dtype)
    for targets, nbrs in groups:
        med = np.median(flat[..., nbrs].astype(work, copy=False), axis=-1)
        if out.dtype.kind in "iub":
            med = np.rint(med)
        flat[..., targets] = med.astype(out.dtype, copy=False)
    return out


def _neighbour_reference(dp: np.ndarray, ind_compare: int) -> np.ndarray:
    """The ``ind_compare``-th brightest of the 8 neighbours of each pixel (0 = brightest).

    Pixels outside the detector do not count; where fewer than ``ind_compare + 1``
    neighbours exist (corners), the dimmest existing neighbour is used.
    """
    nx, ny = dp.shape
    padded = np.full((nx + 2, ny + 2), -np.inf)
    padded[1:-1, 1:-1] = np.where(np.isfinite(dp), dp, -np.inf)
    shifts = [
        padded[1 + dx:1 + dx + nx, 1 + dy:1 + dy + ny]
        for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)
    ]
    ordered = -np.sort(-np.stack(shifts), axis=0)  # descending, -inf last
    ref = ordered[ind_compare]
    n_real = np.isfinite(ordered).sum(axis=0)
    fallback = np.take_along_axis(ordered, np.maximum(n_real - 1, 0)[None], axis=0)[0]
    return np.where(np.isfinite(ref), ref, fallback)


def _hot_pixel_mask(dp: np.ndarray, threshold: float, ind_compare: int) -> np.ndarray:
    """Boolean mask of pixels of the mean pattern ``dp`` that stick out (see docstring)."""
    from scipy.ndimage import median_filter

    dp = np.asarray(dp, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        resid = dp - _neighbour_reference(dp, ind_compare)
    finite = np.isfinite(resid)
    if not finite.any():
        return np.zeros(dp.shape, dtype=bool)
    dev_all = np.abs(resid[finite] - np.median(resid[finite]))
    sigma_global = _MAD_TO_SIGMA * np.median(dev_all)
    if sigma_global == 0:
        sigma_global = _MEANDEV_TO_SIGMA * np.mean(dev_all)
    if sigma_global == 0:  # the residual is constant: nothing sticks out
        return np.zeros(dp.shape, dtype=bool)
    filled = np.where(finite, resid, np.median(resid[finite]))
    size = min(_HOT_WINDOW, *dp.shape)
    local_med = median_filter(filled, size=size, mode="reflect")
    dev = np.abs(filled - local_med)
    sigma = np.maximum(_MAD_TO_SIGMA * median_filter(dev, size=size, mode="reflect"),
                       sigma_global)
    return finite & ((filled - local_med) > threshold * sigma)


def _warn_user(message: str) -> None:
    """``warnings.warn(message, UserWarning)`` attributed to the user's line of code: the
    first caller outside the stem4d package (so also through the ``.stem`` accessor)."""
    frame, level = sys._getframe(1), 2  # stacklevel 2 = the caller of this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
            _PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


# ============================================================ coordinate helpers
def _coord_with_step(var: xr.Variable, step: float) -> xr.Variable:
    """``var`` with ``attrs["step"] = step`` (the axis spacing, same units as ``var``).

    Set on every axis a function returns, whatever its length, so a stale step copied
    from the input never survives (it is what a later single-element selection reads).
    """
    attrs = dict(var.attrs, step=float(step))
    return xr.Variable(var.dims, var.data, attrs=attrs)


def _coarsened_coords(
    cube: xr.DataArray, factors: dict[str, int]
) -> dict[str, xr.Variable]:
    """Coordinates after block binning along ``factors`` dims (remainder trimmed).

    Index and other numeric coords along a binned dim become block means; non-numeric
    ones are dropped; all others are kept as they are.
    """
    out: dict[str, xr.Variable] = {}
    for name, coord in cube.coords.items():
        var = coord.variable
        hit = [d for d in var.dims if d in factors]
        if not hit:
            out[name] = var
            continue
        if var.dtype.kind not in "iuf":
            continue
        windows = {d: factors[d] for d in hit}
        new = var.astype(np.float64).coarsen(windows, "mean", boundary="trim")
        new = xr.Variable(var.dims, new.data, attrs=dict(var.attrs))  # lazy stays lazy
        if name in factors:
            new = _coord_with_step(new, _axis_step(cube, name) * factors[name])
        out[name] = new
    return out


def _detector_replaced_coords(
    cube: xr.DataArray, qx: xr.Variable, qy: xr.Variable
) -> dict[str, xr.Variable]:
    """Coordinates of ``cube`` with new qx/qy; other coords on qx/qy are dropped."""
    out = {
        name: c.variable for name, c in cube.coords.items()
        if not set(c.dims) & set(DETECTOR_DIMS)
    }
    out["qx"], out["qy"] = qx, qy
    return out


def _new_cube(cube: xr.DataArray, data: Any, coords: dict[str, xr.Variable]) -> xr.DataArray:
    return xr.DataArray(data, dims=CUBE_DIMS, coords=coords, name=cube.name,
                        attrs=dict(cube.attrs))


def _isel_keep_steps(
    cube: xr.DataArray, sel: dict[str, slice], step_factor: dict[str, int]
) -> xr.DataArray:
    """``cube.isel(sel)`` with ``attrs["step"]`` of each selected axis set to its new
    spacing (the old one times ``step_factor[dim]``, default 1), also for a single value."""
    out = cube.isel(sel)
    fixes = {}
    for dim in sel:
        step = _axis_step(cube, dim) * step_factor.get(dim, 1)
        fixes[dim] = _coord_with_step(out.coords[dim].variable, step)
    return out.assign_coords(fixes)


# ================================================================= public: binning
def bin_q(
    cube: xr.DataArray,
    factor: int | Sequence[int],
    *,
    reduce: str = "sum",
    dtype: Any = None,
) -> xr.DataArray:
    """Bin the detector by merging ``factor x factor`` pixels.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    factor
        Pixels merged along qx and qy: a positive int or a pair ``(fx, fy)``, each at
        most the detector size. Trailing rows/columns that do not fill a bin are dropped.
    reduce
        ``"sum"`` (default, counts add up, as in py4DSTEM) or ``"mean"``.
    dtype
        Output dtype. Default: float input → float32 (float64 stays float64); integer
        sums → the narrowest ≥32-bit integer that cannot overflow (uint16 → uint32);
        integer means → float32 (≤16-bit input) or float64. An explicit integer (or
        bool) dtype never wraps around: values are rounded, and a ValueError naming
        both ranges is raised if they do not fit; for dask input each chunk is checked
        when it is computed, so the error comes at compute time.

    Returns
    -------
    New cube with ``qx``/``qy`` pixel size multiplied by the factor (same units). Each
    binned pixel's coordinate is the mean of the merged pixels' coordinates, so
    ``q = 0`` keeps its physical place (origin pixel ``o`` → ``(o - (f-1)/2) / f``).
    Per-position ``qx0``/``qy0`` (physical q units) are unchanged. Dask in, dask out.
    """
    validate_cube(cube)
    fx, fy = _factor_pair(cube, factor, DETECTOR_DIMS)
    reduce = _check_reduce(reduce)
    return _bin(cube, DETECTOR_DIMS, (fx, fy), reduce, dtype)


def bin_r(
    cube: xr.DataArray,
    factor: int | Sequence[int],
    *,
    reduce: str = "mean",
    dtype: Any = None,
) -> xr.DataArray:
    """Bin the scan by merging ``factor x factor`` probe positions.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    factor
        Positions merged along rx and ry: a positive int or a pair ``(fx, fy)``, each at
        most the scan size. Trailing rows/columns that do not fill a bin are dropped.
    reduce
        ``"mean"`` (default: patterns keep their dose per position) or ``"sum"``.
    dtype
        Output dtype; default and overflow check as for :func:`bin_q` (integer
        means → float; values that do not fit an explicit integer dtype raise a
        ValueError, at compute time for dask input).

    Returns
    -------
    New cube with the scan step multiplied by the factor (same units); ``rx``/``ry`` and
    per-position ``qx0``/``qy0`` are the means over the merged positions. Dask in,
    dask out (scan chunks are made multiples of the factor when needed).
    """
    validate_cube(cube)
    fx, fy = _factor_pair(cube, factor, SCAN_DIMS)
    reduce = _check_reduce(reduce)
    return _bin(cube, SCAN_DIMS, (fx, fy), reduce, dtype)


def _bin(
    cube: xr.DataArray, dims: tuple[str, str], factors: tuple[int, int], reduce: str,
    dtype: Any,
) -> xr.DataArray:
    data = cube.data
    in_dtype = np.dtype(data.dtype)
    default = _bin_dtype(in_dtype, reduce, factors[0] * factors[1])
    out_dtype = default if dtype is None else _as_dtype(dtype)
    if in_dtype.kind == "c" and out_dtype.kind != "c":
        raise TypeError(
            f"dtype must be a complex dtype (or None) to bin complex data, got {dtype!r}"
        )
    # accumulate in at least single precision (float16 sums overflow and lose digits)
    acc = (np.promote_types(out_dtype, np.float32 if out_dtype.kind == "f" else np.complex64)
           if out_dtype.kind in "fc" else default)
    axes = (CUBE_DIMS.index(dims[0]), CUBE_DIMS.index(dims[1]))
    trim = [slice(None)] * 4
    for ax, f in zip(axes, factors, strict=True):
        trim[ax] = slice(0, (data.shape[ax] // f) * f)
    data = data[tuple(trim)]

    def kernel(block: np.ndarray) -> np.ndarray:
        return _block_reduce(block, axes, factors, reduce, acc, out_dtype)

    if is_dask(data):
        data = _multiple_chunks(data, axes, factors)
        chunks = list(data.chunks)
        for ax, f in zip(axes, factors, strict=True):
            chunks[ax] = tuple(c // f for c in chunks[ax])
        binned = data.map_blocks(kernel, chunks=tuple(chunks), dtype=out_dtype,
                                 meta=np.empty((0,) * 4, out_dtype))
    else:
        binned = kernel(np.asarray(data))
    coords = _coarsened_coords(cube, dict(zip(dims, factors, strict=True)))
    return _new_cube(cube, binned, coords)


def thin_r(cube: xr.DataArray, factor: int | Sequence[int]) -> xr.DataArray:
    """Keep every ``factor``-th probe position (positions 0, f, 2f, …).

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    factor
        A positive int or a pair ``(fx, fy)`` for rx and ry, each at most the scan size.

    Returns
    -------
    New cube; the kept positions keep their coordinates, so the scan step is
    multiplied by the factor. Per-position coordinates are thinned alike.
    """
    validate_cube(cube)
    fx, fy = _factor_pair(cube, factor, SCAN_DIMS)
    return _isel_keep_steps(
        cube, {"rx": slice(None, None, fx), "ry": slice(None, None, fy)},
        {"rx": fx, "ry": fy},
    )


# =================================================================== public: crop
def crop_q(
    cube: xr.DataArray,
    qx_range: tuple[int | None, int | None] | None,
    qy_range: tuple[int | None, int | None] | None,
) -> xr.DataArray:
    """Keep the detector pixels ``qx_range[0]:qx_range[1]``, ``qy_range[0]:qy_range[1]``.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    qx_range, qy_range
        ``(start, stop)`` detector pixel indices (stop excluded; negative values count
        from the end, ``None`` means the axis end); ``None`` keeps the whole axis.

    Returns
    -------
    New cube whose kept pixels keep their q coordinates (so ``q = 0`` and the pixel
    size are unchanged); per-position ``qx0``/``qy0`` are kept.
    """
    validate_cube(cube)
    sel = {
        "qx": _index_range(qx_range, cube.sizes["qx"], "qx_range", "qx"),
        "qy": _index_range(qy_range, cube.sizes["qy"], "qy_range", "qy"),
    }
    return _isel_keep_steps(cube, sel, {})


def crop_r(
    cube: xr.DataArray,
    rx_range: tuple[int | None, int | None] | None,
    ry_range: tuple[int | None, int | None] | None,
) -> xr.DataArray:
    """Keep the probe positions ``rx_range[0]:rx_range[1]``, ``ry_range[0]:ry_range[1]``.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    rx_range, ry_range
        ``(start, stop)`` scan indices (stop excluded; negative values count from the
        end, ``None`` means the axis end); ``None`` keeps the whole axis.

    Returns
    -------
    New cube whose kept positions keep their r coordinates and per-position
    ``qx0``/``qy0`` (still relative to the uncropped cube's ``q = 0``).
    """
    validate_cube(cube)
    sel = {
        "rx": _index_range(rx_range, cube.sizes["rx"], "rx_range", "rx"),
        "ry": _index_range(ry_range, cube.sizes["ry"], "ry_range", "ry"),
    }
    return _isel_keep_steps(cube, sel, {})


# ==================================================================== public: pad
def pad_q(
    cube: xr.DataArray,
    *,
    factor: float | Sequence[float] | None = None,
    output_size: int | Sequence[int] | None = None,
    mode: str = "constant",
    value: float = 0,
) -> xr.DataArray:
    """Pad the detector symmetrically to a larger size.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    factor
        Size multiplier ≥ 1 (one number or ``(qx, qy)``); the new size is
        ``round(factor * n)``. Give this or ``output_size``.
    output_size
        New detector shape ``(nqx, nqy)`` (or one int for both), each ≥ the current size.
    mode
        A :func:`numpy.pad` mode: ``"constant"`` (fill with ``value``), ``"edge"``,
        ``"reflect"``, ``"symmetric"``, ``"wrap"``, ``"linear_ramp"``, ``"mean"``, …
    value
        Fill value for ``mode="constant"``, in the data's intensity units.

    Returns
    -------
    New cube of the same dtype. ``(N - n) // 2`` pixels go before and the rest after
    (the extra pixel of an odd difference at the end). Coordinates are extended with
    the same pixel size, so ``q = 0`` and the original pixels keep their coordinates.
    """
    validate_cube(cube)
    shape = _output_shape(cube, factor, output_size, "pad_q")
    n = (cube.sizes["qx"], cube.sizes["qy"])
    for dim, old, new in zip(DETECTOR_DIMS, n, shape, strict=True):
        if new < old:
            raise ValueError(
                f"pad_q cannot shrink the detector: new {dim} size {new} < current {old} "
                "(use crop_q or resample_q)"
            )
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {list(_PAD_MODES)}, got {mode!r}")
    dtype = np.dtype(cube.dtype)
    if mode == "constant" and dtype.kind in "iub":
        fv = float(value)
        if not (np.isfinite(fv) and fv.is_integer()):
            raise ValueError(
                f"value must be an integer to pad {dtype} data, got {value!r}"
            )
    widths = [(0, 0), (0, 0)]
    for old, new in zip(n, shape, strict=True):
        widths.append(((new - old) // 2, new - old - (new - old) // 2))
    kwargs: dict[str, Any] = {"constant_values": value} if mode == "constant" else {}

    def kernel(block: np.ndarray) -> np.ndarray:
        return np.pad(block, widths, mode=mode, **kwargs)

    data = _map_patterns(cube.data, kernel, shape, dtype)
    new_q = {}
    for dim, (before, after) in zip(DETECTOR_DIMS, widths[2:], strict=True):
        old = cube.coords[dim]
        step = _axis_step(cube, dim)
        vals = np.concatenate([
            old.values[0] - step * np.arange(before, 0, -1),
            old.values,
            old.values[-1] + step * np.arange(1, after + 1),
        ])
        new_q[dim] = _coord_with_step(xr.Variable((dim,), vals, attrs=dict(old.attrs)), step)
    coords = _detector_replaced_coords(cube, new_q["qx"], new_q["qy"])
    return _new_cube(cube, data, coords)


# =============================================================== public: resample
def resample_q(
    cube: xr.DataArray,
    *,
    factor: float | Sequence[float] | None = None,
    output_size: int | Sequence[int] | None = None,
    method: str = "fourier",
    conserve_array_sums: bool = False,
) -> xr.DataArray:
    """Change the detector sampling (up- or down-sample each diffraction pattern).

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)`` of real numbers, numpy- or dask-backed.
    factor
        Sampling multiplier > 0 (one number or ``(qx, qy)``): new size
        ``round(factor * n)``. Give this or ``output_size``.
    output_size
        New detector shape ``(nqx, nqy)`` (or one int for both).
    method
        ``"fourier"`` (default): band-limited (trigonometric) interpolation by
        zero-padding or truncating each pattern's spectrum (real FFTs, batched over
        all patterns of a chunk); patterns are treated as periodic, so values near
        an edge feel the opposite edge. ``"bilinear"``: linear interpolation along
        each axis (positions past the last pixel take its value); no anti-aliasing
        when downsampling (use :func:`bin_q` for that).
    conserve_array_sums
        If True, each pattern's sum is kept (intensity per pixel scales with the
        pixel area); otherwise intensity per pixel is kept (the mean, for
        ``"fourier"`` exactly).

    Returns
    -------
    New float cube (float32; float64 for float64 or ≥32-bit integer input). New pixel
    ``j`` samples old pixel ``j * n / N``, so the pixel size is divided by the actual
    scale ``N / n`` and ``q = 0`` keeps its physical place; ``qx0``/``qy0`` unchanged.
    """
    validate_cube(cube)
    if method not in ("fourier", "bilinear"):
        raise ValueError(f"method must be 'fourier' or 'bilinear', got {method!r}")
    shape = _output_shape(cube, factor, output_size, "resample_q")
    in_dtype = np.dtype(cube.dtype)
    if in_dtype.kind == "c":
        raise TypeError(f"resample_q needs real data, got dtype {in_dtype}")
    work = _float_dtype(in_dtype)
    conserve = bool(conserve_array_sums)
    lazy = is_dask(cube.data)

    if method == "fourier":
        workers = 1 if lazy else -1

        def kernel(block: np.ndarray) -> np.ndarray:
            return _resample_fourier(block, shape, conserve, work, workers)
    else:
        def kernel(block: np.ndarray) -> np.ndarray:
            return _resample_bilinear(block, shape, conserve, work)

    data = _map_patterns(cube.data, kernel, shape, work)
    new_q = {}
    for dim, new in zip(DETECTOR_DIMS, shape, strict=True):
        old = cube.coords[dim]
        step = _axis_step(cube, dim) * cube.sizes[dim] / new
        vals = float(old.values[0]) + step * np.arange(new)
        new_q[dim] = _coord_with_step(xr.Variable((dim,), vals, attrs=dict(old.attrs)), step)
    coords = _detector_replaced_coords(cube, new_q["qx"], new_q["qy"])
    return _new_cube(cube, data, coords)


# ============================================================== public: bad pixels
def _as_detector_mask(cube: xr.DataArray, mask: Any) -> np.ndarray:
    """``mask`` as a bool numpy array of the detector shape (True = bad pixel; 0/1 numbers
    accepted); dims, shape and finiteness are checked by ``detectors._mask_array``."""
    arr = _mask_array(mask, (cube.sizes["qx"], cube.sizes["qy"]), "mask")
    if arr.dtype != bool:
        if not np.all((arr == 0) | (arr == 1)):
            raise TypeError(
                f"mask must be boolean (True = bad pixel), got dtype {arr.dtype} "
                "with values other than 0/1"
            )
        arr = arr.astype(bool)
    return arr


def median_filter_masked_pixels(
    cube: xr.DataArray, mask: Any, *, kernel_width: int = 3
) -> xr.DataArray:
    """Replace masked detector pixels by the median of their unmasked neighbours.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    mask
        Bad-pixel mask: bool array or DataArray of the detector shape ``(qx, qy)``,
        True where a pixel is bad (the same pixels in every pattern).
    kernel_width
        Odd width ≥ 3 of the square neighbourhood, in detector pixels.

    Returns
    -------
    New cube of the same dtype and coordinates; in every pattern each masked pixel
    holds the median of the other pixels of its ``kernel_width x kernel_width``
    window that are inside the detector and not masked (rounded for integer data).
    A masked pixel with no such neighbour is left unchanged (with a warning).
    """
    validate_cube(cube)
    width = _check_kernel_width(kernel_width)
    return _median_filter(cube, _as_detector_mask(cube, mask), width, "masked")


def _check_kernel_width(kernel_width: Any) -> int:
    if not _is_int(kernel_width) or kernel_width < 3 or kernel_width % 2 == 0:
        raise ValueError(f"kernel_width must be an odd int >= 3, got {kernel_width!r}")
    return int(kernel_width)


def _median_filter(
    cube: xr.DataArray, bad: np.ndarray, kernel_width: int, what: str
) -> xr.DataArray:
    """Median-fill the ``bad`` detector pixels (``what`` names them in the warning)."""
    groups, lonely = _masked_median_plan(bad, kernel_width)
    if lonely:
        _warn_user(
            f"{lonely} {what} pixel(s) have no usable neighbour (inside the detector and "
            f"not {what}) within kernel_width={kernel_width} and are left unchanged; "
            f"pass a larger kernel_width (e.g. kernel_width={kernel_width + 2})"
        )
    if not groups:
        return cube.copy(deep=False)
    dtype = np.dtype(cube.dtype)
    shape = (cube.sizes["qx"], cube.sizes["qy"])

    def kernel(block: np.ndarray) -> np.ndarray:
        return _median_fill(block, groups)

    data = _map_patterns(cube.data, kernel, shape, dtype)
    return _new_cube(cube, data, {k: v.variable for k, v in cube.coords.items()})


def filter_hot_pixels(
    cube: xr.DataArray,
    threshold: float,
    *,
    ind_compare: int = 1,
    kernel_width: int = 3,
    return_mask: bool = False,
) -> xr.DataArray | tuple[xr.DataArray, xr.DataArray]:
    """Find hot (too bright) detector pixels in the mean pattern and repair them.

    Detection uses the mean diffraction pattern ``m`` (the one pass over the data that
    is computed, also for a dask cube; the 4D result stays lazy):

    1. ``ref`` = the ``ind_compare``-th brightest of each pixel's 8 neighbours
       (0 = brightest; the default 1 also catches hot pixels in adjacent pairs);
    2. residual ``r = m - ref``; ``r_loc`` = median of ``r`` over the 7 x 7 window
       around the pixel and ``sigma_loc = 1.4826 * median(|r - r_loc|)`` over that
       window (a robust local standard deviation, so bright disks with more shot
       noise are not flagged); ``sigma = max(sigma_loc, sigma_glob)`` with
       ``sigma_glob`` the same statistic over the whole detector (if that is zero, as
       in noise-free data, ``1.2533 * mean(|r - median(r)|)``);
    3. a pixel is hot where ``r - r_loc > threshold * sigma``.

    A bright feature narrower than 2 pixels in the *mean* pattern looks like a hot
    pixel; raise ``ind_compare`` or ``threshold`` for such data. Hot pixels are
    replaced in every pattern as in :func:`median_filter_masked_pixels` (median of
    the ``kernel_width x kernel_width`` neighbours, excluding itself and other hot
    pixels).

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    threshold
        A robust z-score (> 0), in units of the local robust spread ``sigma``: a pixel
        is hot when its excess over its neighbours is more than ``threshold * sigma``
        above the typical excess, whatever the intensity scale. It is *not* py4DSTEM's
        ``thresh`` (an intensity excess in the mean pattern's units). Typical: 8-20.
    ind_compare
        Which neighbour is the reference: 0 (brightest) to 7 (dimmest).
    kernel_width
        Odd width ≥ 3 of the square window whose other, not-hot pixels give the
        replacement median, in detector pixels (detection always uses the 8
        neighbours). Widen it if a warning reports hot pixels with no usable neighbour.
    return_mask
        Also return the hot-pixel mask.

    Returns
    -------
    The filtered cube (same dtype and coordinates), and with ``return_mask=True`` the
    bool ``(qx, qy)`` DataArray ``hot_pixels`` (True = hot).
    """
    validate_cube(cube)
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(
            f"threshold must be a positive number (robust z-score), got {threshold!r}"
        ) from None
    if not np.isfinite(thr) or thr <= 0:
        raise ValueError(
            f"threshold must be a positive number (robust z-score), got {threshold!r}"
        )
    if not _is_int(ind_compare) or not 0 <= ind_compare <= 7:
        raise ValueError(
            f"ind_compare must be an int from 0 (brightest neighbour) to 7, "
            f"got {ind_compare!r}"
        )
    width = _check_kernel_width(kernel_width)
    dp_mean = cube.mean(SCAN_DIMS, dtype=np.float64).data
    if is_dask(dp_mean):
        dp_mean = dp_mean.compute()
    hot = _hot_pixel_mask(np.asarray(dp_mean), thr, int(ind_compare))
    out = _median_filter(cube, hot, width, "hot")
    if not return_mask:
        return out
    mask = xr.DataArray(
        hot, dims=DETECTOR_DIMS, name="hot_pixels",
        coords={d: cube.coords[d].variable for d in DETECTOR_DIMS},
    )
    return out, mask
