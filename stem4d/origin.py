"""Measure, fit and apply the origin (the unscattered beam) of every diffraction pattern.

The origin of a pattern is the centre of its central (bright-field) disk, in **detector
pixels**: a fractional ``(row, column)`` index of the detector, pixel ``(i, j)`` having
its centre at ``(i, j)`` (``docs/conventions.md``). The steps are

1. :func:`measure_origin` — per scan position, by centre of mass (``"com"``), by the
   maximum of the filtered pattern (``"max"``) or by cross-correlation with a probe
   template (``"xcorr"``); returns a Dataset ``qx0``, ``qy0`` (and a quality figure) over
   ``(rx, ry)``;
2. :func:`fit_origin` — a smooth model of the measured origin over the scan (plane,
   parabola or 2-D Bézier surface), with a mask and robust refitting;
3. :func:`apply_origin` — the cube with that per-position origin set
   (:func:`stem4d.set_origin`): ``qx = qy = 0`` becomes the mean origin and
   ``virtual_image(..., shift_center=True)`` follows the beam.

Measuring works on numpy and dask cubes (a dask cube gives a lazy result, computed
chunk by chunk over the scan). Fitting and applying need the measured ``(rx, ry)`` maps,
which are small: a lazy origin Dataset is computed there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from . import _kernels
from ._kernels import parabolic_vertex as _parabolic
from .datacube import SCAN_DIMS, as_float, set_origin, validate_cube
from .detectors import _mask_array

__all__ = ["measure_origin", "fit_origin", "apply_origin"]

_METHODS = ("com", "max", "xcorr")
_MODELS = ("plane", "parabola", "bezier")
_BATCH_BYTES = 16 * 2**20  # float32 patterns per batch of the kernels
_QUALITY = {
    "com": "fraction of the pattern's intensity inside the final centre-of-mass window",
    "max": "maximum of the median-filtered, Gaussian-smoothed pattern (intensity units)",
    "xcorr": "normalized cross-correlation at the peak, sum(P T) / (|P| |T|), in [-1, 1]",
}


# ============================================================ kernels (plain arrays)
def _moments(w: np.ndarray, ii: np.ndarray, jj: np.ndarray) -> tuple[np.ndarray, ...]:
    """Total, and centre of mass (rows, columns) of a stack of weights ``(N, nx, ny)``."""
    total = w.sum(axis=(1, 2), dtype=np.float64)
    mx = w.sum(axis=2, dtype=np.float64) @ ii
    my = w.sum(axis=1, dtype=np.float64) @ jj
    with np.errstate(divide="ignore", invalid="ignore"):
        return total, mx / total, my / total


def _median3x3(p: np.ndarray) -> np.ndarray:
    """3 x 3 median filter of each pattern of ``p`` ``(N, nx, ny)`` (edges: nearest pixel).

    Equal to ``scipy.ndimage.median_filter(p, size=(1, 3, 3), mode="nearest")`` and about
    20 times faster: the column triples are sorted once, and the median of a 3 x 3 window
    is the median of (largest column minimum, median of the column medians, smallest
    column maximum). Runs over a few patterns at a time, so the temporaries stay in cache.
    """
    out = np.empty_like(p)
    ny = p.shape[2]
    step = max(1, 2**18 // max(p.shape[1] * ny, 1))
    for start in range(0, p.shape[0], step):
        q = np.pad(p[start:start + step], ((0, 0), (1, 1), (1, 1)), mode="edge")
        a, b, c = q[:, :-2], q[:, 1:-1], q[:, 2:]  # the vertical triple of every pixel
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        mid = np.minimum(hi, c)
        hi = np.maximum(hi, c)
        lo, mid = np.minimum(lo, mid), np.maximum(lo, mid)
        c0, c1, c2 = slice(0, ny), slice(1, ny + 1), slice(2, ny + 2)
        big_lo = np.maximum(np.maximum(lo[..., c0], lo[..., c1]), lo[..., c2])
        small_hi = np.minimum(np.minimum(hi[..., c0], hi[..., c1]), hi[..., c2])
        m0, m1, m2 = mid[..., c0], mid[..., c1], mid[..., c2]
        med = np.maximum(np.minimum(m0, m1), np.minimum(np.maximum(m0, m1), m2))
        out[start:start + step] = np.maximum(np.minimum(big_lo, med),
                                             np.minimum(np.maximum(big_lo, med), small_hi))
    return out


def _half_max_radius(p: np.ndarray, maximum: np.ndarray) -> np.ndarray:
    """Radius (pixels) of the disk of equal area to the pixels above half the maximum.

    A coarse per-pattern size, batched over many patterns, that only sets the default
    window (``"com"``) and smoothing (``"max"``); :func:`stem4d.probe.measure_disk` is the
    measurement of a disk (a threshold sweep of one image, far too slow per pattern).
    """
    half = (p >= (0.5 * maximum).astype(p.dtype)[:, None, None]).sum(axis=(1, 2))
    return np.sqrt(half / np.pi)


def _com_kernel(p: np.ndarray, threshold: float, radius: float | None, iterations: int
                ) -> np.ndarray:
    """Centre of mass of the central disk of each pattern of ``p`` (N, nx, ny).

    Returns ``(N, 3)``: origin row, column (pixels) and the fraction of intensity in
    the final window.
    """
    n, nx, ny = p.shape
    ii = np.arange(nx, dtype=np.float64)
    jj = np.arange(ny, dtype=np.float64)
    med = _median3x3(p)
    robust_max = med.max(axis=(1, 2))
    level = (threshold * robust_max).astype(p.dtype)[:, None, None]
    # 1. first estimate: centre of mass of the median-filtered intensity above the
    # threshold (hot pixels are not in it, so they cannot pull it off the disk)
    _, cx, cy = _moments(np.clip(med - level, 0, None), ii, jj)
    if radius is None:  # the window adds room for the blurred edge
        rad = _half_max_radius(med, robust_max) + 1.5
    else:
        rad = np.full(n, float(radius))
    total_all = p.sum(axis=(1, 2), dtype=np.float64)
    inside = np.full(n, np.nan)
    todo = np.isfinite(cx) & np.isfinite(cy)
    rad32 = rad.astype(np.float32)[:, None, None]
    i32 = np.arange(nx, dtype=np.float32)[None, :, None]
    j32 = np.arange(ny, dtype=np.float32)[None, None, :]

    def window(idx: np.ndarray) -> np.ndarray:
        dist = np.sqrt((i32 - cx[idx, None, None].astype(np.float32)) ** 2
                       + (j32 - cy[idx, None, None].astype(np.float32)) ** 2)
        return np.clip(rad32[idx] + 0.5 - dist, 0, 1)

    # 2. centre of mass inside a soft-edged disk window around the estimate, iterated
    for _ in range(iterations):
        idx = np.flatnonzero(todo)
        if idx.size == 0:
            break
        tot, nx_, ny_ = _moments(p[idx] * window(idx), ii, jj)
        ok = np.isfinite(nx_) & np.isfinite(ny_) & (tot > 0)
        moved = np.hypot(nx_ - cx[idx], ny_ - cy[idx])
        cx[idx] = np.where(ok, nx_, np.nan)
        cy[idx] = np.where(ok, ny_, np.nan)
        inside[idx] = tot
        todo[idx] = ok & (moved > 1e-4)
    idx = np.flatnonzero(np.isnan(inside) & np.isfinite(cx) & np.isfinite(cy))
    if idx.size:  # no refinement: the window around the first estimate gives the quality
        inside[idx] = (p[idx] * window(idx)).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        quality = inside / total_all
    return np.stack([cx, cy, quality], axis=-1)


def _max_kernel(p: np.ndarray, sigma: float | None, subpixel: bool) -> np.ndarray:
    """Argmax of each 3 x 3 median-filtered, Gaussian-smoothed pattern, parabolic
    refinement; ``(N, 3)``.

    The median filter removes hot pixels before the smoothing spreads them.
    ``sigma=None``: per pattern, half the half-maximum disk radius rounded to whole
    pixels (patterns sharing a value are filtered together).
    """
    n, nx, ny = p.shape
    med = _median3x3(p)
    if sigma is None:
        sigmas = np.round(_half_max_radius(med, med.max(axis=(1, 2)))) / 2.0
        s = np.empty_like(med)
        for value in np.unique(sigmas):
            sel = np.flatnonzero(sigmas == value)
            s[sel] = (ndimage.gaussian_filter(med[sel], (0, value, value), mode="nearest")
                      if value > 0 else med[sel])
    elif sigma > 0:
        s = ndimage.gaussian_filter(med, (0, sigma, sigma), mode="nearest")
    else:
        s = med
    flat = s.reshape(n, -1).argmax(axis=1)
    ix, iy = np.divmod(flat, ny)
    rows = np.arange(n)
    peak = s[rows, ix, iy].astype(np.float64)
    cx, cy = ix.astype(np.float64), iy.astype(np.float64)
    if subpixel:
        xm, xp = np.clip(ix - 1, 0, nx - 1), np.clip(ix + 1, 0, nx - 1)
        ym, yp = np.clip(iy - 1, 0, ny - 1), np.clip(iy + 1, 0, ny - 1)
        inx = (ix > 0) & (ix < nx - 1)
        iny = (iy > 0) & (iy < ny - 1)
        cx += np.where(inx, _parabolic(s[rows, xm, iy], s[rows, ix, iy], s[rows, xp, iy]), 0)
        cy += np.where(iny, _parabolic(s[rows, ix, ym], s[rows, ix, iy], s[rows, ix, yp]), 0)
    return np.stack([cx, cy, peak], axis=-1)


def _xcorr_kernel(p: np.ndarray, t_spec: np.ndarray, t_norm: float, ref: np.ndarray,
                  subpixel: bool, upsample: int, workers: int) -> np.ndarray:
    """Cross-correlation peak of each pattern with the template; ``(N, 3)``.

    ``t_spec`` is the conjugated real FFT of the template, ``ref`` the template's
    reference pixel; the origin is ``ref + shift`` of the correlation peak (modulo the
    detector, into ``[-0.5, n - 0.5)``).
    """
    n, nx, ny = p.shape
    shifts, peak = _kernels.xcorr_peaks(p, t_spec, subpixel=subpixel, upsample=upsample,
                                        workers=workers)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.sqrt(np.einsum("nij,nij->n", p, p, dtype=np.float64)) * t_norm
        quality = peak / norm
    ox = np.mod(ref[0] + shifts[:, 0] + 0.5, nx) - 0.5
    oy = np.mod(ref[1] + shifts[:, 1] + 0.5, ny) - 0.5
    return np.stack([ox, oy, quality], axis=-1)


def _origin_block(block: np.ndarray, weights: np.ndarray | None, method: str,
                  params: dict[str, Any]) -> np.ndarray:
    """Origins of a scan block ``(a, b, nx, ny)`` -> ``(a, b, 3)`` (row, column, quality)."""
    a, b, nx, ny = block.shape
    stack = block.reshape(a * b, nx, ny)
    batch = max(1, _BATCH_BYTES // (4 * nx * ny))
    out = np.empty((a * b, 3), dtype=np.float64)
    for start in range(0, a * b, batch):
        p = stack[start:start + batch].astype(np.float32)  # a copy: free to modify
        bad = ~np.isfinite(p)
        if bad.any():
            p[bad] = 0
        if weights is not None:
            p *= weights
        if method == "com":
            res = _com_kernel(p, params["threshold"], params["radius"], params["iterations"])
        elif method == "max":
            res = _max_kernel(p, params["sigma"], params["subpixel"])
        else:
            res = _xcorr_kernel(p, params["t_spec"], params["t_norm"], params["ref"],
                                params["subpixel"], params["upsample"], params["workers"])
        empty = ~(np.abs(p).sum(axis=(1, 2)) > 0)
        res[empty, :2] = np.nan
        out[start:start + batch] = res
    return out.reshape(a, b, 3)


# ============================================================ measure_origin
def _whole(value: Any, argname: str, minimum: int) -> int:
    """A whole number ``>= minimum``, or a ValueError naming ``argname``."""
    v = as_float(value, argname)
    if isinstance(value, bool) or not np.isfinite(v) or v != int(v) or v < minimum:
        kind = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise ValueError(f"{argname} must be {kind}, got {value!r}")
    return int(v)


def _whole_int(value: Any, argname: str) -> int:
    v = as_float(value, argname)
    if isinstance(value, bool) or v != int(v) or v == 0:
        raise ValueError(f"{argname} must be a nonzero integer (-1: all cores), got {value!r}")
    return int(v)


def _detector_weights(cube: xr.DataArray, mask: Any) -> np.ndarray | None:
    if mask is None:
        return None
    values = _mask_array(mask, (cube.sizes["qx"], cube.sizes["qy"]), "mask", require_any=True,
                         hint="; to leave scan positions out of a fit use "
                              "fit_origin(..., mask=...)")
    return values.astype(np.float32)


def _template_setup(cube: xr.DataArray, template: Any) -> dict[str, Any]:
    shape = (cube.sizes["qx"], cube.sizes["qy"])
    if template is None:
        raise ValueError(
            "method='xcorr' needs a template: a (qx, qy) DataArray of the probe, e.g. "
            "stem4d.simulate.probe_disk(detector_shape, radius) or a vacuum probe image"
        )
    if isinstance(template, xr.DataArray):
        if tuple(template.dims) != ("qx", "qy"):
            raise ValueError(f"template must have dims ('qx', 'qy'), got {tuple(template.dims)}")
        values = np.asarray(template.values, dtype=np.float64)
    elif isinstance(template, np.ndarray):
        values = np.asarray(template, dtype=np.float64)
    else:
        raise TypeError(f"template must be a (qx, qy) DataArray or numpy array, got "
                        f"{type(template).__name__}")
    if values.shape != shape:
        raise ValueError(
            f"template must have the detector shape (qx, qy) = {shape}, got {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("template contains NaN or inf")
    if not np.any(values):
        raise ValueError("template is all zero: nothing to correlate with")
    # reference point: the periodic centre of mass of the template's bright part (exact
    # for a symmetric probe or kernel, wherever it sits, including centred on the array
    # corner); values below 10 % of the maximum (noise, the ringing of a Fourier-shifted
    # probe, a kernel's negative trench) would pull it off centre
    weights = np.clip(values - 0.1 * values.max(), 0.0, None)
    ref_arr = np.empty(2)
    for axis, n in enumerate(shape):
        marginal = weights.sum(axis=1 - axis)
        z = marginal @ np.exp(2j * np.pi * np.arange(n) / n)
        if not abs(z) > 1e-9 * marginal.sum():
            raise ValueError(
                "template has no well-defined centre (its weight is spread evenly along "
                f"{('qx', 'qy')[axis]}): give an image of the probe disk"
            )
        ref_arr[axis] = np.angle(z) * n / (2 * np.pi)
    return {"t_spec": _kernels.reference_spectrum(values, np.float32),
            "t_norm": float(np.sqrt((values**2).sum())), "ref": ref_arr}


def measure_origin(
    cube: xr.DataArray,
    method: str = "com",
    *,
    template: xr.DataArray | np.ndarray | None = None,
    mask: Any = None,
    radius: float | None = None,
    threshold: float = 0.5,
    iterations: int = 10,
    sigma: float | None = None,
    subpixel: bool = True,
    upsample: int = 16,
    workers: int | None = None,
) -> xr.Dataset:
    """Origin (centre of the unscattered beam) of every pattern, in detector pixels.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    method
        * ``"com"``: centre of mass of the central disk, in two steps. (1) A first
          estimate is the centre of mass of ``max(Im - threshold * M, 0)``, ``Im`` the
          pattern filtered by a 3 x 3 median and ``M`` its maximum (so the central disk,
          brighter than the Bragg disks, dominates, and hot pixels, which the median
          removes, neither set ``M`` nor pull the estimate). (2) The centre of mass of
          the (unfiltered) intensity inside a disk window of ``radius`` pixels (soft,
          one pixel wide edge) around the estimate, repeated up to ``iterations`` times
          until it moves by less than 1e-4 pixel. Accurate for a disk among Bragg disks
          as long as the window holds the whole central disk and little of its
          neighbours (a hot pixel inside the window does bias it: hide it with ``mask``).
        * ``"max"``: argmax of the pattern filtered by a 3 x 3 median (which removes hot
          pixels) and smoothed by a Gaussian of ``sigma`` pixels, refined by a parabola
          through the neighbouring pixels (``subpixel``). Fast; on noisy flat-topped
          disks it needs ``sigma`` of about half the disk radius (the default), and is
          then good to ~0.1 pixel.
        * ``"xcorr"``: peak of the cross-correlation of each pattern with ``template``
          (computed by real FFTs, many patterns per call), refined by a matrix DFT on a
          grid ``1/upsample`` pixel fine and a final parabola (``upsample=1``: parabola
          on the integer correlation). The correlation is periodic at the detector edge.
    template
        ``"xcorr"`` only: probe image ``(qx, qy)`` with the detector's shape, e.g.
        :func:`stem4d.simulate.probe_disk`, a vacuum probe or a correlation kernel from
        :mod:`stem4d.probe`. Its reference point is the periodic centre of mass of its
        absolute value (per axis, the phase of the first Fourier coefficient), so a
        probe anywhere on the array, or a kernel centred on the array corner, works;
        its coordinates are not used.
    mask
        Detector mask ``(qx, qy)`` (bool, or float weights) multiplied into every pattern
        first, e.g. to hide a beamstop or hot pixels. Non-finite pixels are always
        ignored.
    radius
        ``"com"``: window radius, pixels. Default: per pattern, the radius of the disk
        of equal area to the pixels of the median-filtered pattern above half its
        maximum, plus 1.5 pixels.
    threshold
        ``"com"``: fraction of the median-filtered maximum subtracted for the first
        estimate.
    iterations
        ``"com"``: maximum number of window refinements (0: threshold step only).
    sigma
        ``"max"``: Gaussian smoothing, pixels (0: the median-filtered pattern itself).
        Default: per pattern, half the radius of the disk of equal area to the pixels of
        the median-filtered pattern above half its maximum, rounded to 0.5.
    subpixel
        ``"max"``/``"xcorr"``: refine the integer peak.
    upsample
        ``"xcorr"``: DFT upsampling factor of the peak refinement (integer >= 1).
    workers
        Threads of each FFT call (``scipy.fft`` ``workers``) on a numpy cube; default -1
        (all cores). Inside the tasks of a dask cube the FFTs always use one thread
        (dask runs the scan chunks in parallel).

    Returns
    -------
    Dataset over ``(rx, ry)`` (the cube's scan coordinates) with ``qx0``, ``qy0``: the
    origin, fractional detector row and column index (``units`` ``"pixels"``; NaN for an
    empty pattern), and ``quality``: ``"com"`` the fraction of the intensity inside the
    final window, ``"max"`` the filtered peak value, ``"xcorr"`` the normalized
    cross-correlation peak. Lazy (dask) for a dask cube. Use :func:`fit_origin` to
    smooth it and :func:`apply_origin` to put it on the cube.
    """
    validate_cube(cube)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if template is not None and method != "xcorr":
        raise ValueError(f"template is used by method='xcorr' only, got method={method!r}")
    if radius is not None:
        radius = as_float(radius, "radius")
        if not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"radius must be a positive number of pixels or None, got "
                             f"{radius!r}")
    threshold = as_float(threshold, "threshold")
    if not (np.isfinite(threshold) and 0 <= threshold < 1):
        raise ValueError(f"threshold must be a fraction of the maximum in [0, 1), got "
                         f"{threshold!r}")
    iterations = _whole(iterations, "iterations", 0)
    if sigma is not None:
        sigma = as_float(sigma, "sigma")
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be >= 0 (pixels), got {sigma!r}")
    upsample = _whole(upsample, "upsample", 1)
    workers = -1 if workers is None else _whole_int(workers, "workers")
    if not np.issubdtype(cube.dtype, np.number) and cube.dtype != bool:
        raise TypeError(f"cube must hold numbers, got dtype {cube.dtype}")
    weights = _detector_weights(cube, mask)
    params: dict[str, Any] = {"threshold": float(threshold), "radius": radius,
                              "iterations": int(iterations), "subpixel": bool(subpixel),
                              "sigma": None if sigma is None else float(sigma),
                              "upsample": int(upsample), "workers": int(workers)}
    if method == "xcorr":
        params.update(_template_setup(cube, template))
    data = cube.data
    if isinstance(data, da.Array):
        if len(data.chunks[2]) > 1 or len(data.chunks[3]) > 1:
            data = data.rechunk({2: -1, 3: -1})
        params["workers"] = 1  # one thread per task: dask parallelizes over the chunks
        out = data.map_blocks(_origin_block, weights, method, params,
                              chunks=data.chunks[:2] + ((3,),), drop_axis=3,
                              dtype=np.float64, meta=np.array((), np.float64))
    else:
        from .datacube import _reject_all_nan

        _reject_all_nan(np.asarray(data), "cube")
        out = _origin_block(np.asarray(data), weights, method, params)
    coords = {k: v.variable for k, v in cube.coords.items()
              if k not in ("qx0", "qy0") and (v.ndim == 0 or set(v.dims) <= set(SCAN_DIMS))}
    px = {"units": "pixels"}
    ds = xr.Dataset(
        {
            "qx0": (SCAN_DIMS, out[..., 0],
                    {**px, "long_name": "origin, detector row (fractional pixel index)"}),
            "qy0": (SCAN_DIMS, out[..., 1],
                    {**px, "long_name": "origin, detector column (fractional pixel index)"}),
            "quality": (SCAN_DIMS, out[..., 2], {"long_name": _QUALITY[method]}),
        },
        coords=coords,
        attrs={"method": method, "detector_shape": [cube.sizes["qx"], cube.sizes["qy"]],
               "convention": "detector pixels: pixel (i, j) has its centre at (i, j)"},
    )
    return ds


# ============================================================ fit_origin
def _bernstein(order: int, u: np.ndarray) -> np.ndarray:
    """Bernstein polynomials ``B_k^order(u)``, ``k = 0..order``, shape ``(u.size, order+1)``."""
    from scipy.special import comb

    k = np.arange(order + 1)
    return comb(order, k)[None, :] * u[:, None] ** k * (1 - u[:, None]) ** (order - k)


def _design(model: str, i: np.ndarray, j: np.ndarray, shape: tuple[int, int],
            order: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Design matrix of ``model`` at scan indices ``i``, ``j``, and its term names."""
    if model == "plane":
        return np.stack([np.ones_like(i), i, j], axis=1), ["1", "i", "j"]
    if model == "parabola":
        return (np.stack([np.ones_like(i), i, j, i * i, i * j, j * j], axis=1),
                ["1", "i", "j", "i^2", "i*j", "j^2"])
    u = i / max(shape[0] - 1, 1)
    v = j / max(shape[1] - 1, 1)
    bu, bv = _bernstein(order[0], u), _bernstein(order[1], v)
    mat = (bu[:, :, None] * bv[:, None, :]).reshape(i.size, -1)
    names = [f"B{p},{q}" for p in range(order[0] + 1) for q in range(order[1] + 1)]
    return mat, names


def _lstsq(mat: np.ndarray, rhs: np.ndarray, model: str) -> np.ndarray:
    scale = np.linalg.norm(mat, axis=0)
    scale[scale == 0] = 1.0
    coef, _, rank, _ = np.linalg.lstsq(mat / scale, rhs, rcond=None)
    if rank < mat.shape[1]:
        raise ValueError(
            f"the positions used do not determine the {model} model (rank {rank} < "
            f"{mat.shape[1]} terms): they lie on a line or too few rows/columns are used; "
            "use more positions or a simpler model"
        )
    return coef / scale[:, None]


def _scan_data(obj: Any, name: str) -> Any:
    """The data of an ``(rx, ry)`` map, not computed; a DataArray is aligned by its dims."""
    if isinstance(obj, xr.DataArray):
        if set(obj.dims) != set(SCAN_DIMS):
            raise ValueError(f"{name} must be an (rx, ry) map with dims {SCAN_DIMS} (either "
                             f"order), got dims {tuple(obj.dims)}")
        return obj.transpose(*SCAN_DIMS).data
    return obj


def _scan_values(obj: Any, name: str, shape: tuple[int, int] | None) -> np.ndarray:
    """An ``(rx, ry)`` map as numpy (see :func:`_scan_data`), checked against ``shape``."""
    values = np.asarray(_scan_data(obj, name))
    if shape is not None and values.shape != shape:
        raise ValueError(f"{name} must have the scan shape (rx, ry) = {shape}, got "
                         f"{values.shape}")
    return values


def _bezier_order(value: Any) -> tuple[int, int]:
    """``(order along rx, order along ry)`` from one integer or a pair of them."""
    items = [value] if np.ndim(value) == 0 else list(np.ravel(np.asarray(value, dtype=object)))
    if len(items) not in (1, 2):
        raise ValueError(f"bezier_order must be an integer >= 1 or a pair (along rx, along ry) "
                         f"of them, got {value!r} ({len(items)} values)")
    orders = [_whole(v, "bezier_order", 1) for v in items]
    return (orders[0], orders[-1])


def fit_origin(
    origin_ds: xr.Dataset,
    model: str = "plane",
    *,
    mask: Any = None,
    robust: bool = False,
    robust_steps: int = 3,
    robust_k: float = 2.0,
    bezier_order: int | Sequence[int] = 2,
) -> xr.Dataset:
    """Fit a smooth model to the measured origin over the scan.

    Parameters
    ----------
    origin_ds
        Dataset with ``qx0``, ``qy0`` over ``(rx, ry)``, pixels (from
        :func:`measure_origin`). A lazy Dataset is computed (it is 2-D). Non-finite
        values are left out of the fit.
    model
        With ``i``, ``j`` the scan row and column index:

        * ``"plane"``: ``a + b i + c j``;
        * ``"parabola"``: ``a + b i + c j + d i² + e i j + f j²``;
        * ``"bezier"``: tensor-product Bézier surface
          ``Σ c_pq B_p(u) B_q(v)`` of Bernstein polynomials of order ``bezier_order``,
          ``u = i / (nrx - 1)``, ``v = j / (nry - 1)``.
    mask
        Bool ``(rx, ry)`` array, or DataArray with dims ``rx`` and ``ry`` (in either
        order; it is transposed): **True** marks the positions used in the fit (e.g. a
        vacuum or thin region); the fit is evaluated everywhere.
    robust
        Refit ``robust_steps`` times, each time using only the positions (of ``mask``)
        whose residuals in ``qx0`` and ``qy0`` are both within ``robust_k`` times the RMS
        residual of the positions used in the previous fit.
    robust_steps, robust_k
        Number of refits; outlier threshold in standard deviations.
    bezier_order
        Order of the Bézier surface along ``rx`` and ``ry`` (one integer or a pair).

    Returns
    -------
    Dataset over ``(rx, ry)``: ``qx0``, ``qy0`` the fitted origin (pixels, ready for
    :func:`apply_origin`); ``qx0_measured``, ``qy0_measured`` the input;
    ``qx0_residual``, ``qy0_residual`` measured − fitted; ``used`` (bool) the positions
    of the final fit; ``qx0_coefficients``, ``qy0_coefficients`` over ``term`` (the
    model's terms in ``i``, ``j`` for plane/parabola, Bézier control values ``Bp,q``);
    ``qx0_rms``, ``qy0_rms`` the RMS residual over the used positions (pixels).

    Raises
    ------
    ValueError
        For fewer usable positions than the model has terms, or positions that do not
        determine it.
    """
    if not isinstance(origin_ds, xr.Dataset):
        raise TypeError(f"origin_ds must be an xarray.Dataset with qx0, qy0 (rx, ry) from "
                        f"measure_origin, got {type(origin_ds).__name__}")
    for name in ("qx0", "qy0"):
        if name not in origin_ds.data_vars and name not in origin_ds.coords:
            raise ValueError(f"origin_ds has no {name!r} variable: expected the Dataset "
                             "returned by measure_origin")
        if tuple(origin_ds[name].dims) != SCAN_DIMS:
            raise ValueError(f"origin_ds[{name!r}] must have dims {SCAN_DIMS}, got "
                             f"{tuple(origin_ds[name].dims)}")
        units = origin_ds[name].attrs.get("units", "pixels")
        if units != "pixels":
            raise ValueError(f"origin_ds[{name!r}] must be in pixels, got units {units!r}")
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}")
    robust_steps = _whole(robust_steps, "robust_steps", 0)
    robust_k = as_float(robust_k, "robust_k")
    if not (np.isfinite(robust_k) and robust_k > 0):
        raise ValueError(f"robust_k must be a positive number of standard deviations, got "
                         f"{robust_k!r}")
    order = _bezier_order(bezier_order)

    # one compute for all the lazy inputs: the maps of a lazy measure_origin (and a mask
    # made from its quality) share one graph, which separate computes would each re-run,
    # reading the cube once per map
    qx0, qy0, mask = dask.compute(origin_ds["qx0"].data, origin_ds["qy0"].data,
                                  _scan_data(mask, "mask"))
    qx0 = np.asarray(qx0, dtype=np.float64)
    qy0 = np.asarray(qy0, dtype=np.float64)
    shape = qx0.shape
    base = np.isfinite(qx0) & np.isfinite(qy0)
    if mask is not None:
        mvals = _scan_values(mask, "mask", shape)
        if mvals.dtype != bool:
            raise TypeError(f"mask must be bool (True = use the position), got dtype "
                            f"{mvals.dtype}")
        base &= mvals
    ii, jj = np.meshgrid(np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float),
                         indexing="ij")
    i_all, j_all = ii.ravel(), jj.ravel()
    full, names = _design(model, i_all, j_all, shape, order)
    nterms = full.shape[1]
    rhs_all = np.stack([qx0.ravel(), qy0.ravel()], axis=1)

    def check_count(sel: np.ndarray, when: str) -> None:
        count = int(sel.sum())
        if count < nterms:
            raise ValueError(
                f"too few positions for the {model} fit{when}: {count} usable (finite, in "
                f"mask), the model has {nterms} terms"
            )

    check_count(base, "")
    used = base.ravel().copy()
    coef = _lstsq(full[used], rhs_all[used], model)
    steps = int(robust_steps) if robust else 0
    for _ in range(steps):
        res = rhs_all - full @ coef
        rms = np.sqrt(np.mean(res[used] ** 2, axis=0))
        limit = np.maximum(robust_k * rms, 1e-9)
        new = base.ravel() & np.all(np.abs(np.nan_to_num(res, nan=np.inf)) <= limit, axis=1)
        check_count(new, f" after dropping outliers beyond {robust_k} standard deviations")
        if np.array_equal(new, used):
            break
        used = new
        coef = _lstsq(full[used], rhs_all[used], model)
    fitted = (full @ coef).reshape(shape + (2,))
    residual = np.stack([qx0, qy0], axis=-1) - fitted
    used2 = used.reshape(shape)
    rms = np.sqrt(np.mean(residual[used2] ** 2, axis=0))

    px = {"units": "pixels"}
    coords = {k: v.variable for k, v in origin_ds.coords.items()
              if k not in ("qx0", "qy0") and (v.ndim == 0 or set(v.dims) <= set(SCAN_DIMS))}
    coords["term"] = ("term", names)
    basis = ("i, j: scan row and column index" if model != "bezier" else
             f"Bernstein polynomials of order {order} in u = i/(nrx-1), v = j/(nry-1)")
    return xr.Dataset(
        {
            "qx0": (SCAN_DIMS, fitted[..., 0], {**px, "long_name": f"fitted origin row ({model})"}),
            "qy0": (SCAN_DIMS, fitted[..., 1],
                    {**px, "long_name": f"fitted origin column ({model})"}),
            "qx0_measured": (SCAN_DIMS, qx0, {**px, "long_name": "measured origin row"}),
            "qy0_measured": (SCAN_DIMS, qy0, {**px, "long_name": "measured origin column"}),
            "qx0_residual": (SCAN_DIMS, residual[..., 0],
                             {**px, "long_name": "measured - fitted origin row"}),
            "qy0_residual": (SCAN_DIMS, residual[..., 1],
                             {**px, "long_name": "measured - fitted origin column"}),
            "used": (SCAN_DIMS, used2, {"long_name": "positions used in the final fit"}),
            "qx0_coefficients": (("term",), coef[:, 0], {**px, "basis": basis}),
            "qy0_coefficients": (("term",), coef[:, 1], {**px, "basis": basis}),
            "qx0_rms": ((), float(rms[0]), {**px, "long_name": "RMS residual (used positions)"}),
            "qy0_rms": ((), float(rms[1]), {**px, "long_name": "RMS residual (used positions)"}),
        },
        coords=coords,
        attrs={"model": model, "robust": int(bool(robust)), "robust_steps": steps,
               "robust_k": float(robust_k),
               **({"bezier_order": list(order)} if model == "bezier" else {}),
               "n_used": int(used.sum())},
    )


# ============================================================ apply_origin
def apply_origin(cube: xr.DataArray, origin: xr.Dataset | Sequence[Any]) -> xr.DataArray:
    """Return ``cube`` with a per-position origin (see :func:`stem4d.set_origin`).

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)`` (numpy or dask; the data are not touched).
    origin
        A Dataset with ``qx0``, ``qy0`` in pixels (from :func:`measure_origin` or, better
        smoothed, :func:`fit_origin`), or a pair ``(qx0, qy0)`` of ``(rx, ry)`` arrays or
        numbers, detector pixels (fractional row and column index). A lazy origin is
        computed (it is 2-D).

    Returns
    -------
    The cube with ``qx``/``qy`` re-centred on the mean origin and the 2-D ``qx0``/``qy0``
    coordinates (q units, offsets from the mean), so that
    ``virtual_image(..., shift_center=True)`` follows the beam.
    """
    validate_cube(cube)
    if isinstance(origin, xr.Dataset):
        for name in ("qx0", "qy0"):
            if name not in origin:
                raise ValueError(f"origin has no {name!r} variable: expected the Dataset of "
                                 "measure_origin or fit_origin")
            units = origin[name].attrs.get("units", "pixels")
            if units != "pixels":
                raise ValueError(f"origin[{name!r}] must be in pixels, got units {units!r}")
        qx0, qy0 = origin["qx0"], origin["qy0"]
    elif isinstance(origin, (tuple, list)) and len(origin) == 2:
        qx0, qy0 = origin
    else:
        raise TypeError("origin must be a Dataset with qx0/qy0 (pixels) or a pair "
                        f"(qx0, qy0) of arrays, got {type(origin).__name__}")
    scan_shape = (cube.sizes["rx"], cube.sizes["ry"])
    pair = []
    for name, v in (("qx0", qx0), ("qy0", qy0)):
        if isinstance(v, xr.DataArray):
            if v.ndim and tuple(v.dims) != SCAN_DIMS:
                raise ValueError(f"{name} must have dims {SCAN_DIMS}, got {tuple(v.dims)}")
            v = v.data
        pair.append(v)
    values = []
    # both maps in one compute: a lazy origin's maps share one graph (the cube)
    for name, v in zip(("qx0", "qy0"), dask.compute(*pair), strict=True):
        arr = np.asarray(v, dtype=float)
        if arr.ndim and arr.shape != scan_shape:
            raise ValueError(f"{name} must have the scan shape (rx, ry) = {scan_shape}, got "
                             f"{arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{name} has {int((~np.isfinite(arr)).sum())} NaN/inf value(s): fit the "
                "measured origin with fit_origin (it fills every position) before applying it"
            )
        values.append(arr)
    return set_origin(cube, values[0], values[1])
