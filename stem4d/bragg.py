"""Bragg disk detection: template matching of every diffraction pattern.

:func:`find_bragg_disks` finds the Bragg disks of every pattern of a datacube (or of
some positions) and returns them as a *peaks Dataset* (the format shared with
:mod:`stem4d.bragg_vectors` and :mod:`stem4d.strain`):

* data variables ``qx``, ``qy`` (positions in the cube's q coordinate units: with an
  origin set, 0 is the *mean* origin; a per-position origin stays in the ``qx0``/``qy0``
  coordinates, for :mod:`stem4d.bragg_vectors` to subtract), ``intensity`` (the
  correlation at the peak, ``"a.u."``) and ``refinement_flag`` (int8) over
  ``(rx, ry, peak)``, NaN-padded (flag -1) beyond each position's peaks, sorted by
  decreasing intensity along ``peak``, and ``count`` over ``(rx, ry)``;
* the cube's scan coordinates, 0-d calibrations (beam energy, convergence angle,
  scan rotation/flip, ellipse), ``(rx, ry)`` coordinates (the per-position origin
  ``qx0``/``qy0``), and the detector grid as index coordinates ``detector_qx`` and
  ``detector_qy`` (pixel index = ``(qx - detector_qx[0]) / step``);
* ``attrs``: ``stem4d_type = "bragg_peaks"``, the detection parameters and, with a
  template, ``template_radius`` (pixels, the radius of its half-maximum area).

The algorithm, per batch of patterns (many patterns per FFT call, float32/complex64)
-------------------------------------------------------------------------------------
1. *Preprocessing*: ``filter_function`` (each pattern), radial background subtraction
   (the ring medians about each pattern's origin, :func:`stem4d.radial_background`).
2. *Correlation* with the template ``t`` (a kernel centred on the array corner
   ``[0, 0]``, e.g. :func:`stem4d.probe.kernel`): ``M = P · conj(T) · G(sigma_pattern)``
   with ``P``, ``T`` the real FFTs of pattern and template and ``G(s)`` the Fourier
   transform of a Gaussian of ``s`` pixels; then ``M · |M|^(corr_power - 1)`` (1: cross
   correlation, 0: phase correlation, between: hybrid). Without a template ``M`` is the
   (smoothed) pattern's own spectrum. The correlation ``c = irfft2(M · G(sigma_corr))``
   is computed on a grid zero-padded by the kernel's main lobe (its pixels above 1 % of
   its largest value) plus three smoothing widths, so a disk near one detector edge is
   not correlated with the content of the opposite edge (a plain FFT correlation is
   periodic); the padded sizes are fast FFT lengths (128 -> 144 for a 5-pixel disk).
   Phase correlation locates the dominant disk of a pattern (a single disk very
   sharply); for patterns of many disks use a hybrid power (0.5 - 0.9) or 1.
3. *Maxima*: pixels of ``c`` not smaller than their 8 neighbours, at least
   ``edge_boundary`` pixels from the detector edge (never on the outermost row or
   column), with ``c > min_absolute_intensity`` and ``c >= min_relative_intensity`` times
   the ``relative_to_peak``-th brightest kept peak (0: the brightest); of peaks closer
   than ``min_spacing`` pixels the brighter is kept (greedy, brightest first, as a
   fixed point over the batch); then at most ``max_num_peaks`` by intensity.
4. *Subpixel refinement*:

   * ``"none"``: the pixel maximum;
   * ``"poly"``: the vertex of the parabola through the maximum and its two neighbours,
     along each axis, on ``c``;
   * ``"multicorr"``: the maximum of the *unsmoothed* correlation ``irfft2(M)`` (the
     smoothing only helps to find the peaks) evaluated by a matrix DFT of ``M`` on a
     grid ``1 / upsample_factor`` pixel fine, in a window of 3 x 5 fine steps
     (qx x qy: the cost grows with the first) centred on the parabolic estimate, then
     a parabola through the finest-grid maximum and its neighbours. When the window's
     maximum lies on its edge the true maximum is outside it: the window moves there
     and is evaluated again (``refinement_flag = 1``), for up to 2 pixels from the
     pixel maximum; a peak whose maximum is not found within that distance falls back
     to the parabolic estimate with ``refinement_flag = 2``.
     A result is therefore never clipped to a search window silently (py4DSTEM's
     multicorr searches ±0.75 pixel and returns the window edge).

   ``refinement_flag`` is 0 for a peak refined in its first window (and for ``"none"``
   and ``"poly"``). Peak intensities are the correlation at the refined maximum: of
   ``c`` for ``"none"``/``"poly"``, of the unsmoothed correlation for ``"multicorr"``;
   the thresholds of step 3 act on ``c`` at the pixel maxima.

Parallelism: a numpy cube is processed in batches on ``workers`` threads (each batch
single-threaded, BLAS limited to one thread during the call); a dask cube gives a lazy
result computed per scan chunk (``dask.array.blockwise``), so it runs on a
``dask.distributed`` cluster as it does on a laptop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.fft
import xarray as xr

from ._dask import is_dask, whole_patterns
from .datacube import _axis_step, validate_cube

__all__ = ["find_bragg_disks", "SUBPIXEL_MODES"]

SUBPIXEL_MODES: tuple[str, ...] = ("none", "poly", "multicorr")
PEAKS_TYPE = "bragg_peaks"
_PEAK_VARS = ("qx", "qy", "intensity")
_NFIELDS = 4  # per peak: qx, qy (pixels), intensity, refinement flag
_BATCH_BYTES = 2**20  # float32 patterns per batch (cache-sized: 16 of 128 x 128)
_PROGRESS_PATTERNS = 4096  # progress=None shows a bar above this many patterns (numpy)
_NMS_ELEMENTS = 2**22  # pairwise-distance elements per spacing-suppression chunk
_RADII = (1, 2)  # half-widths of the multicorr window (qx, qy), in fine-grid steps
_MAX_SHIFT = 2.0  # pixels: multicorr gives up (flag 2) beyond this from the pixel maximum
FLAG_OK, FLAG_MOVED, FLAG_FALLBACK = 0, 1, 2


# ============================================================ BLAS threads
_blas_lock = threading.Lock()
_blas_state: dict[str, Any] = {"users": 0, "limiter": None}


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while any detection runs in this process.

    Detection parallelizes over batches itself (threads, dask tasks); a multi-threaded
    BLAS inside each of them oversubscribes the cores badly. The limit is reference
    counted, so overlapping calls (dask threads) restore the user's setting only when
    the last one ends. Without ``threadpoolctl`` nothing is changed.
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            try:
                from threadpoolctl import threadpool_limits

                _blas_state["limiter"] = threadpool_limits(limits=1, user_api="blas")
            except Exception:  # threadpoolctl missing or failing: leave BLAS alone
                _blas_state["limiter"] = None
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0 and _blas_state["limiter"] is not None:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


# ============================================================ settings
@dataclass
class _Settings:
    """Everything a batch kernel needs (picklable: it travels in the dask graph)."""

    shape: tuple[int, int]  # detector
    fft_shape: tuple[int, int]  # zero-padded FFT grid
    filt: np.ndarray | None  # complex64 half spectrum: conj(T) G(sigma_pattern), or None
    smooth: np.ndarray | None  # float32 half spectrum: G(sigma_corr), or None
    need_fft: bool
    power: float
    subpixel: str
    upsample: int
    min_abs: float
    min_rel: float
    rel_peak: int
    spacing: float
    edge: float
    max_peaks: int
    batch: int
    filter_function: Callable[[np.ndarray], Any] | None
    rings: Any  # calibrate._Rings (radial background) or None
    tables: dict[str, np.ndarray] | None  # multicorr DFT tables


def _gaussian_spectrum(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Half-plane Fourier transform of a unit-sum Gaussian of ``sigma`` pixels."""
    kx = np.fft.fftfreq(shape[0])[:, None]
    ky = np.fft.rfftfreq(shape[1])[None, :]
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (kx**2 + ky**2))


def _dft_tables(shape: tuple[int, int], upsample: int) -> dict[str, Any]:
    """Fourier factors of the multicorr matrix DFT on an FFT grid ``shape``.

    A fine-grid position ``c = q * upsample + f`` (``q`` pixels, ``0 <= f < upsample``)
    factors as ``exp(2 pi i k c / (n upsample)) = A[q, k] B[f, k]``, so the per-peak
    factors are row gathers from small tables and one product.
    """
    nx, ny = shape
    nyh = ny // 2 + 1
    my = 2 * _RADII[1] + 1
    kx = np.rint(np.fft.fftfreq(nx) * nx)
    ky = np.arange(nyh, dtype=float)
    steps_y = np.arange(-_RADII[1], _RADII[1] + 1, dtype=float)
    frac = np.arange(upsample, dtype=float)
    ax = np.exp(2j * np.pi * np.arange(nx)[:, None] * kx[None, :] / nx)  # (nx, nx)
    bx = np.exp(2j * np.pi * frac[:, None] * kx[None, :] / (nx * upsample))  # (upsample, nx)
    ay = np.exp(2j * np.pi * np.arange(ny)[:, None] * ky[None, :] / ny)  # (ny, nyh)
    by = np.exp(2j * np.pi * frac[:, None] * ky[None, :] / (ny * upsample))  # (upsample, nyh)
    wy = np.full(nyh, 2.0)  # the half spectrum stands for both halves
    wy[0] = 1.0
    if ny % 2 == 0:
        wy[-1] = 1.0
    offy = wy[:, None] * np.exp(2j * np.pi * ky[:, None] * steps_y[None, :] / (ny * upsample))
    real = np.empty((2 * nyh, my), dtype=np.float32)  # Re(u @ offy) = [u_r, u_i] @ real
    real[0::2] = offy.real
    real[1::2] = -offy.imag
    c64 = np.complex64
    return {"ax": ax.astype(c64), "bx": bx.astype(c64), "ay": ay.astype(c64),
            "by": by.astype(c64), "real": real, "upsample": int(upsample),
            "norm": float(nx * ny)}


# ============================================================ batch kernels
def _apply_power(spec: np.ndarray, power: float) -> None:
    """``spec <- spec |spec|^(power - 1)`` in place (0 where ``spec`` is 0)."""
    mag = np.abs(spec)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = np.where(mag > 0, mag ** np.float32(power - 1.0), np.float32(0.0))
    spec *= scale.astype(mag.dtype, copy=False)


def _padded_rfft2(p: np.ndarray, fft_shape: tuple[int, int]) -> np.ndarray:
    """``rfft2`` of ``(B, nx, ny)`` zero-padded to ``fft_shape`` (the zero rows are not
    transformed along the second axis)."""
    spec = scipy.fft.rfft(p, n=fft_shape[1], axis=2, workers=1)
    return scipy.fft.fft(spec, n=fft_shape[0], axis=1, workers=1, overwrite_x=True)


def _cropped_irfft2(spec: np.ndarray, fft_shape: tuple[int, int], shape: tuple[int, int]
                    ) -> np.ndarray:
    """The ``shape`` corner of ``irfft2(spec, fft_shape)`` (only those rows are
    transformed along the second axis)."""
    rows = scipy.fft.ifft(spec, axis=1, workers=1)[:, :shape[0]]
    return scipy.fft.irfft(rows, n=fft_shape[1], axis=2, workers=1,
                           overwrite_x=True)[:, :, :shape[1]]


def _vertex(fm: np.ndarray, f0: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offset (in [-0.5, 0.5] at a maximum) and height gain of the parabola through
    ``(-1, fm), (0, f0), (1, fp)``; zero where it is not concave."""
    denom = fm - 2.0 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = denom < 0
        delta = np.where(ok, 0.5 * (fm - fp) / denom, 0.0)
        gain = np.where(ok, -0.125 * (fp - fm) ** 2 / denom, 0.0)
    return np.clip(delta, -0.5, 0.5), gain


def _local_maxima(corr: np.ndarray, s: _Settings) -> tuple[np.ndarray, ...]:
    """Pixel maxima of a batch ``(B, nx, ny)`` inside the edge boundary and above the
    absolute (and, for ``relative_to_peak = 0``, the relative) threshold.

    Returns flat ``(b, x, y, value)`` sorted by pattern, then by decreasing value.
    """
    nb, nx, ny = corr.shape
    e = max(1, int(np.ceil(s.edge - 1e-9)))
    if nx - 2 * e < 1 or ny - 2 * e < 1:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0, dtype=corr.dtype)
    c = corr[:, e - 1:nx - e + 1, e - 1:ny - e + 1]
    h = np.maximum(c[:, :, :-2], c[:, :, 1:-1])
    np.maximum(h, c[:, :, 2:], out=h)
    v = np.maximum(h[:, :-2], h[:, 1:-1])
    np.maximum(v, h[:, 2:], out=v)
    centre = c[:, 1:-1, 1:-1]
    ok = centre >= v
    ok &= centre > s.min_abs
    flat = np.flatnonzero(ok)  # faster than a 3-D nonzero
    b, rest = np.divmod(flat, ok.shape[1] * ok.shape[2])
    x, y = np.divmod(rest, ok.shape[2])
    val = centre[b, x, y]
    x += e
    y += e
    if b.size and s.rel_peak == 0 and s.min_rel > 0:
        # the brightest maximum always survives the spacing filter: threshold now
        counts = np.bincount(b, minlength=nb)
        starts = np.cumsum(counts) - counts
        present = counts > 0
        vmax = np.full(nb, np.inf, dtype=val.dtype)
        vmax[present] = np.maximum.reduceat(val, starts[present])
        keep = val >= s.min_rel * vmax[b]
        b, x, y, val = b[keep], x[keep], y[keep], val[keep]
    order = np.lexsort((-val, b))
    return b[order], x[order], y[order], val[order]


def _padded(b: np.ndarray, nb: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scatter flat per-pattern lists (``b`` sorted) into ``(nb, K)`` arrays + validity."""
    counts = np.bincount(b, minlength=nb)
    k = int(counts.max()) if b.size else 0
    rank = np.arange(b.size) - (np.cumsum(counts) - counts)[b]
    valid = np.zeros((nb, k), dtype=bool)
    valid[b, rank] = True
    out = []
    for arr in arrays:
        pad = np.zeros((nb, k), dtype=arr.dtype)
        pad[b, rank] = arr
        out.append(pad)
    return (valid, *out)


def _suppress_close(x: np.ndarray, y: np.ndarray, valid: np.ndarray, spacing: float
                    ) -> np.ndarray:
    """Greedy minimum-spacing filter on ``(B, K)`` peaks sorted by decreasing value.

    A peak is kept unless a brighter *kept* peak lies closer than ``spacing`` pixels.
    Solved as the fixed point of ``keep_i = not any_j<i (close_ij and keep_j)`` (exact:
    the system is triangular), vectorized over the patterns of a chunk.
    """
    nb, k = valid.shape
    keep = valid.copy()
    if spacing <= 0 or k < 2:
        return keep
    s2 = spacing * spacing
    tri = np.tri(k, k, -1, dtype=bool)  # [i, j]: j brighter than i
    chunk = max(1, _NMS_ELEMENTS // (k * k))
    for start in range(0, nb, chunk):
        sl = slice(start, start + chunk)
        dx = (x[sl, :, None] - x[sl, None, :]).astype(np.float64)
        dy = (y[sl, :, None] - y[sl, None, :]).astype(np.float64)
        close = (dx * dx + dy * dy < s2) & tri & valid[sl, None, :]
        rows = np.flatnonzero(close.any(axis=(1, 2)))
        if rows.size == 0:
            continue
        close = close[rows]
        vrows = valid[sl][rows]
        cur = vrows.copy()
        for _ in range(k + 1):
            new = vrows & ~np.any(close & cur[:, None, :], axis=2)
            if np.array_equal(new, cur):
                break
            cur = new
        keep[start + rows] = cur
    return keep


def _select(corr: np.ndarray, s: _Settings) -> tuple[np.ndarray, ...]:
    """The peaks of a batch after every filter: flat ``(b, x, y, value)``, sorted by
    pattern then by decreasing value, at most ``max_peaks`` per pattern."""
    nb = corr.shape[0]
    b, x, y, val = _local_maxima(corr, s)
    if b.size == 0:
        return b, x, y, val
    valid, xp, yp, vp = _padded(b, nb, x, y, val)
    keep = _suppress_close(xp, yp, valid, s.spacing)
    # compact the kept peaks to the front (order preserved)
    order = np.argsort(~keep, axis=1, kind="stable")
    keep = np.take_along_axis(keep, order, 1)
    xp, yp, vp = (np.take_along_axis(a, order, 1) for a in (xp, yp, vp))
    nkept = keep.sum(axis=1)
    if s.min_rel > 0 and s.rel_peak > 0:
        ref_col = np.clip(np.minimum(s.rel_peak, nkept - 1), 0, None)
        ref = vp[np.arange(nb), ref_col]
        keep &= vp >= s.min_rel * ref[:, None]
    keep[:, s.max_peaks:] = False
    bb, kk = np.nonzero(keep)
    return bb, xp[bb, kk], yp[bb, kk], vp[bb, kk]


def _poly(corr: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parabolic vertex (pixels) and value at pixel maxima ``(b, x, y)`` of ``corr``."""
    f0 = corr[b, x, y].astype(np.float64)
    dx, gx = _vertex(corr[b, x - 1, y].astype(np.float64), f0,
                     corr[b, x + 1, y].astype(np.float64))
    dy, gy = _vertex(corr[b, x, y - 1].astype(np.float64), f0,
                     corr[b, x, y + 1].astype(np.float64))
    return x + dx, y + dy, f0 + gx + gy


def _x_rows(spec: np.ndarray, b: np.ndarray, cx: np.ndarray, tables: dict[str, Any]
            ) -> np.ndarray:
    """First stage of the matrix DFT: ``spec[b]`` transformed along qx at fine rows ``cx``.

    ``cx`` is ``(n, r)`` fine-grid positions (``pixel * upsample``) for the ``n`` peaks
    of patterns ``b`` (sorted). The peaks of a pattern share one complex matrix product
    with its spectrum, batched over the patterns (zero-padded to the largest count).
    Returns ``(n, r, ny_half)`` complex64.
    """
    nbatch, nx, nyh = spec.shape
    n, r = cx.shape
    q, f = np.divmod(cx, tables["upsample"])
    factors = tables["ax"][q % nx] * tables["bx"][f]  # (n, r, nx)
    pats, first, counts = np.unique(b, return_index=True, return_counts=True)
    k = int(counts.max())
    sub = spec if pats.size == nbatch else spec[pats]
    if np.all(counts == k):
        ex = factors.reshape(pats.size, k * r, nx)
        return np.matmul(ex, sub).reshape(n, r, nyh)
    slot = np.arange(n) - np.repeat(first, counts)
    row = np.repeat(np.arange(pats.size), counts)
    ex = np.zeros((pats.size, k, r, nx), dtype=factors.dtype)
    ex[row, slot] = factors
    out = np.matmul(ex.reshape(pats.size, k * r, nx), sub).reshape(pats.size, k, r, nyh)
    return out[row, slot]


def _y_window(rows: np.ndarray, cy: np.ndarray, tables: dict[str, Any]) -> np.ndarray:
    """Second stage: the real correlation at the ``my`` fine columns around ``cy`` of each
    peak's rows ``(n, r, ny_half)``, one real matrix product for all peaks; ``(n, r, my)``."""
    n, r, nyh = rows.shape
    q, f = np.divmod(cy, tables["upsample"])
    u = rows * (tables["ay"][q % tables["ay"].shape[0]] * tables["by"][f])[:, None, :]
    fine = u.view(np.float32).reshape(n * r, 2 * nyh) @ tables["real"]
    return fine.reshape(n, r, -1) / np.float32(tables["norm"])


def _dft_window(spec: np.ndarray, b: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                tables: dict[str, Any]) -> np.ndarray:
    """Correlation ``irfft2(spec[b])`` on ``mx x my`` fine-grid windows centred on
    ``(cx, cy)`` (fine-grid steps); ``(n, mx, my)`` float32."""
    steps = np.arange(-_RADII[0], _RADII[0] + 1)
    return _y_window(_x_rows(spec, b, cx[:, None] + steps, tables), cy, tables)


def _multicorr(spec: np.ndarray, b: np.ndarray, x0: np.ndarray, y0: np.ndarray,
               v0: np.ndarray, xpix: np.ndarray, ypix: np.ndarray, s: _Settings
               ) -> tuple[np.ndarray, ...]:
    """Hill-climbing DFT refinement (see the module docstring): ``(x, y, value, flag)``.

    The rows of each window (qx positions, the costly first DFT stage) are kept: a
    window moving along qx computes only its new row, one moving along qy none.
    """
    uf = s.upsample
    rx, ry = _RADII
    mx, my = 2 * rx + 1, 2 * ry + 1
    steps = np.arange(-rx, rx + 1)
    cx = np.rint(x0 * uf).astype(np.int64)
    cy = np.rint(y0 * uf).astype(np.int64)
    rows = _x_rows(spec, b, cx[:, None] + steps, s.tables)  # (n, mx, nyh)
    out_x, out_y, out_v = x0.astype(np.float64), y0.astype(np.float64), v0.astype(np.float64)
    flag = np.zeros(b.size, dtype=np.int8)
    active = np.arange(b.size)
    max_iter = int(np.ceil(_MAX_SHIFT * uf / min(_RADII))) + 2
    for _ in range(max_iter):
        if active.size == 0:
            break
        fine = _y_window(rows[active], cy[active], s.tables).astype(np.float64)
        best = fine.reshape(active.size, -1).argmax(axis=1)
        a, c = np.divmod(best, my)
        inner = (a > 0) & (a < mx - 1) & (c > 0) & (c < my - 1)
        if inner.any():
            idx = active[inner]
            ai, ci = a[inner], c[inner]
            f = fine[inner]
            k = np.arange(idx.size)
            f0 = f[k, ai, ci]
            dx, gx = _vertex(f[k, ai - 1, ci], f0, f[k, ai + 1, ci])
            dy, gy = _vertex(f[k, ai, ci - 1], f0, f[k, ai, ci + 1])
            out_x[idx] = (cx[idx] + ai - rx + dx) / uf
            out_y[idx] = (cy[idx] + ci - ry + dy) / uf
            out_v[idx] = f0 + gx + gy
        moved = active[~inner]
        shift_x = a[~inner] - rx
        cx[moved] += shift_x
        cy[moved] += c[~inner] - ry
        flag[moved] = FLAG_MOVED
        far = np.hypot(cx[moved] / uf - xpix[moved], cy[moved] / uf - ypix[moved]) > _MAX_SHIFT
        flag[moved[far]] = FLAG_FALLBACK
        keep = ~far
        moved, shift_x = moved[keep], shift_x[keep]
        along = shift_x != 0
        if along.any():  # reuse the rows still inside the window, compute the others
            mv, sx = moved[along], shift_x[along]
            old = rows[mv]
            src = steps[None, :] + sx[:, None]  # old row index holding each new row
            reuse = (src >= -rx) & (src <= rx)
            new_rows = np.empty_like(old)
            ii, jj = np.nonzero(reuse)
            new_rows[ii, jj] = old[ii, src[ii, jj] + rx]
            ii, jj = np.nonzero(~reuse)
            order = np.argsort(mv[ii], kind="stable")  # _x_rows wants sorted patterns
            ii, jj = ii[order], jj[order]
            fresh = _x_rows(spec, b[mv[ii]], (cx[mv[ii]] + steps[jj])[:, None], s.tables)
            new_rows[ii, jj] = fresh[:, 0]
            rows[mv] = new_rows
        active = moved
    flag[active] = FLAG_FALLBACK  # did not converge: keep the parabolic estimate
    failed = flag == FLAG_FALLBACK
    out_x[failed], out_y[failed], out_v[failed] = x0[failed], y0[failed], v0[failed]
    return out_x, out_y, out_v, flag


def _detect_batch(p: np.ndarray, s: _Settings, ox: Any = 0.0, oy: Any = 0.0) -> np.ndarray:
    """Peaks of a batch of patterns ``(B, nx, ny)`` (float32, modified in place).

    Returns ``(B, max_peaks, 4)`` float32: row, column (pixels), intensity, flag; NaN
    padded, sorted by decreasing intensity.
    """
    nb, nx, ny = p.shape
    if s.filter_function is not None:
        for i in range(nb):
            filtered = np.asarray(s.filter_function(p[i]))
            if filtered.shape != (nx, ny):
                raise ValueError(f"filter_function must return a pattern of shape {(nx, ny)}, "
                                 f"got shape {filtered.shape}")
            p[i] = filtered
    if s.rings is not None:
        from .calibrate import _rings_block

        p = _rings_block(p, ox, oy, s.rings, 0.0, "subtract")
    spec = None
    if s.need_fft:
        spec = _padded_rfft2(p, s.fft_shape)
        if s.filt is not None:
            spec *= s.filt
        if s.power != 1.0:
            _apply_power(spec, s.power)
        corr = _cropped_irfft2(spec * s.smooth if s.smooth is not None else spec,
                               s.fft_shape, (nx, ny))
    else:
        corr = p
    out = np.full((nb, s.max_peaks, _NFIELDS), np.nan, dtype=np.float32)
    b, x, y, val = _select(corr, s)
    if b.size == 0:
        return out
    if s.subpixel == "none":
        qx, qy, inten = x.astype(np.float64), y.astype(np.float64), val.astype(np.float64)
        flag = np.zeros(b.size, dtype=np.int8)
    else:
        qx, qy, inten = _poly(corr, b, x, y)
        flag = np.zeros(b.size, dtype=np.int8)
        if s.subpixel == "multicorr":
            qx, qy, inten, flag = _multicorr(spec, b, qx, qy, inten, x.astype(np.float64),
                                             y.astype(np.float64), s)
    # sort each pattern's peaks by their final intensity
    order = np.lexsort((-inten, b))
    b, qx, qy, inten, flag = b[order], qx[order], qy[order], inten[order], flag[order]
    counts = np.bincount(b, minlength=nb)
    rank = np.arange(b.size) - (np.cumsum(counts) - counts)[b]
    out[b, rank, 0] = qx
    out[b, rank, 1] = qy
    out[b, rank, 2] = inten
    out[b, rank, 3] = flag
    return out


def _detect_stack(stack: np.ndarray, index: np.ndarray | None, s: _Settings,
                  ox: np.ndarray | float, oy: np.ndarray | float, out: np.ndarray,
                  workers: int, progress: bool = False) -> None:
    """Detect the peaks of ``stack[index]`` (all patterns when ``index`` is None) into
    ``out[index]`` (``(N, max_peaks, 4)``), batch by batch on ``workers`` threads, with
    a tqdm progress bar in patterns when ``progress``."""
    n = stack.shape[0] if index is None else index.size
    starts = range(0, n, s.batch)
    scalar_origin = np.ndim(ox) == 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="Bragg disks", unit="pattern")

    def job(start: int) -> None:
        sel = (slice(start, min(start + s.batch, n)) if index is None
               else index[start:start + s.batch])
        p = np.array(stack[sel], dtype=np.float32)
        bad = ~np.isfinite(p)
        if bad.any():
            p[bad] = 0.0
        bx = ox if scalar_origin else ox[sel]
        by = oy if scalar_origin else oy[sel]
        out[sel] = _detect_batch(p, s, bx, by)

    def done(start: int) -> None:
        if bar is not None:
            bar.update(min(s.batch, n - start))

    try:
        with _single_threaded_blas():
            if workers <= 1 or len(starts) <= 1:
                for start in starts:
                    job(start)
                    done(start)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = {pool.submit(job, start): start for start in starts}
                    for fut in as_completed(futures):
                        fut.result()
                        done(futures[fut])
    finally:
        if bar is not None:
            bar.close()


def _detect_block(block: np.ndarray, sel: np.ndarray | None, ox: Any, oy: Any,
                  settings: _Settings) -> np.ndarray:
    """dask block ``(a, b, nx, ny)`` -> ``(a, b, max_peaks, 4)`` (one thread)."""
    a, b, nx, ny = block.shape
    out = np.full((a * b, settings.max_peaks, _NFIELDS), np.nan, dtype=np.float32)
    index = None if sel is None else np.flatnonzero(np.asarray(sel).reshape(-1))
    oxf = ox if np.ndim(ox) == 0 else np.asarray(ox, dtype=float).reshape(-1)
    oyf = oy if np.ndim(oy) == 0 else np.asarray(oy, dtype=float).reshape(-1)
    if index is None or index.size:
        _detect_stack(block.reshape(a * b, nx, ny), index, settings, oxf, oyf, out, 1)
    return out.reshape(a, b, settings.max_peaks, _NFIELDS)


# ============================================================ input checks
def _number(value: Any, argname: str, *, minimum: float | None = None,
            strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argname} must be a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"{argname} must be finite, got {value!r}")
    if minimum is not None and (out < minimum or (strict and out == minimum)):
        relation = ">" if strict else ">="
        raise ValueError(f"{argname} must be {relation} {minimum}, got {value!r}")
    return out


def _integer(value: Any, argname: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{argname} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _template_setup(template: Any, shape: tuple[int, int]
                    ) -> tuple[np.ndarray, float, float, str]:
    """``(values, disk radius, main-lobe radius, kind)`` of a checked template.

    The disk radius (pixels) is that of the disk of equal area to the pixels above half
    the maximum; the main lobe reaches the farthest pixel above 1 % of the largest
    absolute value (the zero padding of the correlation covers it).
    """
    if isinstance(template, xr.DataArray):
        if set(template.dims) != {"qx", "qy"} or template.ndim != 2:
            raise ValueError(
                "template must be a (qx, qy) kernel DataArray centred on the array corner "
                f"(e.g. stem4d.probe.kernel(probe, 'flat')), got dims {tuple(template.dims)}")
        kind = str(template.attrs.get("kernel", "custom"))
        values = np.asarray(template.transpose("qx", "qy").values)
    elif isinstance(template, np.ndarray):
        kind = "array"
        values = template
    else:
        raise TypeError("template must be a (qx, qy) DataArray (e.g. from stem4d.probe.kernel) "
                        f"or None, got {type(template).__name__}")
    if values.ndim != 2 or values.shape != tuple(shape):
        raise ValueError(f"template must have the detector shape (qx, qy) = {tuple(shape)}, "
                         f"got shape {values.shape}")
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool) or np.iscomplexobj(
            values):
        raise TypeError(f"template must hold real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("template contains NaN or inf values")
    if not np.any(values > 0):
        raise ValueError("template has no positive values: nothing to correlate with")
    # the kernel must be centred on the array corner [0, 0] (periodic centre of |t|)
    weights = np.abs(values)
    for axis, n in enumerate(shape):
        marginal = weights.sum(axis=1 - axis)
        z = marginal @ np.exp(2j * np.pi * np.arange(n) / n)
        centre = np.angle(z) * n / (2 * np.pi) if abs(z) > 1e-6 * marginal.sum() else 0.0
        if abs(centre) > 1.5:
            raise ValueError(
                "template must be centred on the array corner [0, 0] (a correlation kernel, "
                "e.g. stem4d.probe.kernel(probe, 'flat')), but its centre along "
                f"{('qx', 'qy')[axis]} is {centre:.1f} pixels from it: a probe image must be "
                "turned into a kernel first")
    radius = float(np.sqrt(np.count_nonzero(values > 0.5 * values.max()) / np.pi))
    signed = [np.rint(np.fft.fftfreq(n) * n) for n in shape]
    dist = np.hypot(signed[0][:, None], signed[1][None, :])
    lobe = float(dist[weights > 1e-2 * weights.max()].max())
    return values, radius, lobe, kind


def _embed(values: np.ndarray, fft_shape: tuple[int, int]) -> np.ndarray:
    """A corner-centred kernel moved onto a larger periodic grid (signed offsets kept)."""
    out = np.zeros(fft_shape, dtype=values.dtype)
    ix = np.rint(np.fft.fftfreq(values.shape[0]) * values.shape[0]).astype(np.int64)
    iy = np.rint(np.fft.fftfreq(values.shape[1]) * values.shape[1]).astype(np.int64)
    out[np.ix_(ix % fft_shape[0], iy % fft_shape[1])] = values
    return out


def _scan_selection(cube: xr.DataArray, positions: Any, mask: Any
                    ) -> tuple[xr.DataArray, np.ndarray | None, str]:
    """``(cube, selection mask or None, mode)``; a single position crops the cube."""
    nrx, nry = cube.sizes["rx"], cube.sizes["ry"]
    if positions is not None and mask is not None:
        raise ValueError("give positions or mask, not both")
    if mask is not None:
        if isinstance(mask, xr.DataArray):
            if set(mask.dims) != {"rx", "ry"}:
                raise ValueError(f"mask must be a real-space (rx, ry) mask, got dims "
                                 f"{tuple(mask.dims)}")
            mask = mask.transpose("rx", "ry").values
        sel = np.asarray(mask)
        if sel.shape != (nrx, nry):
            raise ValueError(f"mask must have the scan shape (rx, ry) = {(nrx, nry)}, got "
                             f"{sel.shape}")
        if sel.dtype != bool:
            raise TypeError(f"mask must be a bool (rx, ry) array, got dtype {sel.dtype}")
        if not sel.any():
            raise ValueError("mask selects no scan position")
        return cube, sel, "mask"
    if positions is None:
        return cube, None, "all"
    pos = np.asarray(positions)
    if pos.dtype == object or not np.issubdtype(pos.dtype, np.integer) or pos.size == 0 or (
            pos.ndim not in (1, 2)) or pos.shape[-1] != 2:
        raise ValueError("positions must be one (rx, ry) pair of integer scan indices or a "
                         f"list of such pairs, got {positions!r}")
    pts = pos.reshape(-1, 2)
    bad = (pts[:, 0] < 0) | (pts[:, 0] >= nrx) | (pts[:, 1] < 0) | (pts[:, 1] >= nry)
    if bad.any():
        raise ValueError(f"positions {pts[bad].tolist()} are outside the {nrx} x {nry} scan")
    if pos.ndim == 1:
        i, j = int(pts[0, 0]), int(pts[0, 1])
        return cube.isel(rx=[i], ry=[j]), None, "position"
    sel = np.zeros((nrx, nry), dtype=bool)
    sel[pts[:, 0], pts[:, 1]] = True
    return cube, sel, "positions"


# ============================================================ public function
def find_bragg_disks(
    cube: xr.DataArray,
    template: xr.DataArray | np.ndarray | None = None,
    *,
    positions: Any = None,
    mask: Any = None,
    filter_function: Callable[[np.ndarray], Any] | None = None,
    radial_background: bool = False,
    sigma_pattern: float = 0.0,
    corr_power: float = 1.0,
    sigma_corr: float = 1.0,
    subpixel: str = "multicorr",
    upsample_factor: int = 16,
    min_absolute_intensity: float = 0.0,
    min_relative_intensity: float = 0.005,
    relative_to_peak: int = 0,
    min_spacing: float | None = None,
    edge_boundary: float | None = None,
    max_num_peaks: int = 70,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> xr.Dataset:
    """Find the Bragg disks of every diffraction pattern by template matching.

    The algorithm (correlation, maxima, filters, subpixel refinement and its
    ``refinement_flag``) is described in the :mod:`stem4d.bragg` module docstring.
    Positions and lengths given here are in detector **pixels**.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed (dask: lazy result).
    template
        Correlation kernel ``(qx, qy)`` with the detector's shape, centred on the array
        corner ``[0, 0]`` (:func:`stem4d.probe.kernel`; a probe image centred elsewhere
        is refused). ``None``: peaks are found on the (smoothed) patterns themselves.
    positions
        One scan position ``(i, j)`` (integer indices): the result has ``rx``/``ry`` of
        length 1 (that position's coordinates). Or a list of ``(i, j)`` pairs: only
        those are searched.
    mask
        Bool ``(rx, ry)`` mask of the scan positions to search (instead of
        ``positions``).
    filter_function
        Applied to each pattern (a 2-D float32 array; returns one of the same shape)
        before anything else.
    radial_background
        Subtract each pattern's radial background (median over rings about its origin,
        as :func:`stem4d.subtract_radial_background`; needs the origin set).
    sigma_pattern
        Gaussian smoothing of the patterns, pixels (0: none; periodic).
    corr_power
        1: cross-correlation; 0: phase correlation; between: hybrid (needs a template).
    sigma_corr
        Gaussian smoothing of the correlation used to find the maxima, pixels (0: none).
    subpixel
        ``"none"``, ``"poly"`` or ``"multicorr"``.
    upsample_factor
        ``"multicorr"``: fine-grid steps per pixel (integer >= 2).
    min_absolute_intensity
        Keep maxima with correlation above this.
    min_relative_intensity, relative_to_peak
        Keep maxima with correlation >= ``min_relative_intensity`` times the
        ``relative_to_peak``-th brightest kept maximum of the pattern (0: the brightest;
        the weakest kept one if the pattern has fewer).
    min_spacing
        Of two maxima closer than this (pixels) keep the brighter. Default: the
        template's disk radius (radius of the pixels above half its maximum), or 2.
    edge_boundary
        Keep maxima at least this many pixels from the detector edge (pixel centres;
        at least 1). Default: ``floor(radius - 0.5)`` for the template's disk radius
        (every disk lying wholly on the detector is kept), or 1 without a template.
    max_num_peaks
        Most peaks per pattern (the length of the ``peak`` dim).
    batch_size
        Patterns per FFT batch (default: about 1 MB of float32 patterns).
    workers
        Threads for a numpy cube (default: all cores). A dask cube runs one thread per
        task and parallelizes over its scan chunks.
    progress
        Progress bar (tqdm) for a numpy cube: ``None`` shows it for more than 4096
        patterns, ``True`` always, ``False`` never. A dask cube is computed later: use
        dask's progress bar (``dask.diagnostics.ProgressBar``) or the distributed
        dashboard.

    Returns
    -------
    Peaks Dataset (format in the module docstring): ``qx``, ``qy`` in the cube's q units,
    ``intensity``, ``refinement_flag`` (int8, -1 padding) over ``(rx, ry, peak)`` and
    ``count`` over ``(rx, ry)``. For a list of positions or a mask the result spans the
    whole scan, with ``count = 0`` and NaN at the positions not searched, and a bool
    ``(rx, ry)`` coordinate ``searched``.
    """
    validate_cube(cube)
    shape = (cube.sizes["qx"], cube.sizes["qy"])
    if not (np.issubdtype(cube.dtype, np.number) or cube.dtype == bool) or np.issubdtype(
            cube.dtype, np.complexfloating):
        raise TypeError(f"cube must hold real numbers, got dtype {cube.dtype}")
    if min(shape) < 3:
        raise ValueError(f"cube's detector must be at least 3 x 3 pixels, got {shape}")
    if subpixel not in SUBPIXEL_MODES:
        raise ValueError(f"subpixel must be one of {SUBPIXEL_MODES}, got {subpixel!r}")
    if filter_function is not None and not callable(filter_function):
        raise TypeError(f"filter_function must be callable or None, got "
                        f"{type(filter_function).__name__}")
    sigma_pattern = _number(sigma_pattern, "sigma_pattern", minimum=0.0)
    sigma_corr = _number(sigma_corr, "sigma_corr", minimum=0.0)
    corr_power = _number(corr_power, "corr_power")
    if not 0.0 <= corr_power <= 1.0:
        raise ValueError(f"corr_power must be in [0, 1] (1 cross-, 0 phase correlation), got "
                         f"{corr_power!r}")
    upsample_factor = _integer(upsample_factor, "upsample_factor", 2)
    min_abs = _number(min_absolute_intensity, "min_absolute_intensity")
    min_rel = _number(min_relative_intensity, "min_relative_intensity", minimum=0.0)
    relative_to_peak = _integer(relative_to_peak, "relative_to_peak", 0)
    max_num_peaks = _integer(max_num_peaks, "max_num_peaks", 1)
    if template is None and corr_power != 1.0:
        raise ValueError(f"corr_power={corr_power} needs a template (hybrid and phase "
                         "correlation whiten the template's cross-power spectrum)")

    values = None
    radius = None
    lobe = 0.0
    kind = "none"
    if template is not None:
        values, radius, lobe, kind = _template_setup(template, shape)
    # zero padding so the periodic correlation never wraps the kernel's main lobe or
    # the smoothing across the detector edge
    pad = int(np.ceil(lobe + 3.0 * (sigma_corr + sigma_pattern))) + 1
    fft_shape = (min(2 * shape[0], scipy.fft.next_fast_len(shape[0] + pad, real=True)),
                 min(2 * shape[1], scipy.fft.next_fast_len(shape[1] + pad, real=True)))
    filt = None
    if values is not None:
        filt = np.conj(np.fft.rfft2(_embed(values, fft_shape)))
    if sigma_pattern > 0:
        g = _gaussian_spectrum(fft_shape, sigma_pattern)
        filt = g if filt is None else filt * g
    if min_spacing is None:
        min_spacing = radius if radius is not None else 2.0
    min_spacing = _number(min_spacing, "min_spacing", minimum=0.0)
    if edge_boundary is None:
        edge_boundary = max(1.0, float(np.floor(radius - 0.5))) if radius is not None else 1.0
    edge_boundary = _number(edge_boundary, "edge_boundary", minimum=0.0)
    if batch_size is None:
        batch_size = max(1, _BATCH_BYTES // (4 * shape[0] * shape[1]))
    batch_size = _integer(batch_size, "batch_size", 1)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = _integer(workers, "workers", 1)

    cube, sel, mode = _scan_selection(cube, positions, mask)
    rings = None
    ox: Any = 0.0
    oy: Any = 0.0
    if radial_background:
        from .calibrate import _origin_offsets, _require_origin, _Rings

        _require_origin(cube, "cube", "radial_background=True")
        oxa, oya = _origin_offsets(cube)
        ox, oy = np.asarray(oxa.values, dtype=float), np.asarray(oya.values, dtype=float)
        rings = _Rings(cube, None, True, None, ox, oy)

    need_fft = (template is not None or sigma_pattern > 0 or sigma_corr > 0
                or subpixel == "multicorr")
    settings = _Settings(
        shape=shape, fft_shape=fft_shape,
        filt=None if filt is None else filt.astype(np.complex64),
        smooth=(None if sigma_corr == 0 else
                _gaussian_spectrum(fft_shape, sigma_corr).astype(np.float32)),
        need_fft=need_fft, power=corr_power, subpixel=subpixel, upsample=upsample_factor,
        min_abs=min_abs, min_rel=min_rel, rel_peak=relative_to_peak, spacing=min_spacing,
        edge=edge_boundary, max_peaks=max_num_peaks, batch=batch_size,
        filter_function=filter_function, rings=rings,
        tables=_dft_tables(fft_shape, upsample_factor) if subpixel == "multicorr" else None,
    )

    nrx, nry = cube.sizes["rx"], cube.sizes["ry"]
    data = cube.data
    if is_dask(data):
        data = whole_patterns(data)
        args: list[Any] = [data, "ijab"]
        scan_chunks = data.chunks[:2]
        sel_arg = None if sel is None else da.from_array(sel, chunks=scan_chunks)
        args += [sel_arg, None if sel_arg is None else "ij"]
        for o in (ox, oy):
            if np.ndim(o) == 2:
                args += [da.from_array(o, chunks=scan_chunks), "ij"]
            else:
                args += [float(o), None]
        # the settings (template spectrum, DFT tables) enter the graph once, as one key
        # that every task depends on (shipped once per worker on a cluster)
        args += [dask.delayed(settings, pure=True, traverse=False), None]
        result = da.blockwise(
            _detect_block, "ijpf", *args, new_axes={"p": max_num_peaks, "f": _NFIELDS},
            concatenate=True, dtype=np.float32, meta=np.empty((0, 0, 0, 0), dtype=np.float32))
    else:
        arr = np.asarray(data)
        stack = arr.reshape(nrx * nry, *shape)
        out = np.full((nrx * nry, max_num_peaks, _NFIELDS), np.nan, dtype=np.float32)
        index = None if sel is None else np.flatnonzero(sel.reshape(-1))
        oxf = ox if np.ndim(ox) == 0 else np.broadcast_to(ox, (nrx, nry)).reshape(-1)
        oyf = oy if np.ndim(oy) == 0 else np.broadcast_to(oy, (nrx, nry)).reshape(-1)
        n_patterns = stack.shape[0] if index is None else index.size
        show = n_patterns > _PROGRESS_PATTERNS if progress is None else bool(progress)
        _detect_stack(stack, index, settings, oxf, oyf, out, workers, show)
        result = out.reshape(nrx, nry, max_num_peaks, _NFIELDS)

    xp = da if is_dask(result) else np
    intensity = result[..., 2] if is_dask(result) else np.ascontiguousarray(result[..., 2])
    count = (~xp.isnan(intensity)).sum(axis=-1).astype(np.int32)
    flag = xp.where(xp.isnan(result[..., 3]), -1, result[..., 3]).astype(np.int8)
    attrs = {
        "template": kind, "subpixel": subpixel, "upsample_factor": upsample_factor,
        "corr_power": corr_power, "sigma_pattern": sigma_pattern, "sigma_corr": sigma_corr,
        "radial_background": int(bool(radial_background)),
        "filter_function": "" if filter_function is None else getattr(
            filter_function, "__name__", type(filter_function).__name__),
        "min_absolute_intensity": min_abs, "min_relative_intensity": min_rel,
        "relative_to_peak": relative_to_peak, "min_spacing": min_spacing,
        "edge_boundary": edge_boundary, "max_num_peaks": max_num_peaks,
        "selection": mode,
    }
    if radius is not None:
        attrs["template_radius"] = radius  # pixels, from the template's half-maximum area
    flag_var = xr.Variable(("rx", "ry", "peak"), flag, {
        "long_name": "subpixel refinement: 0 first window, 1 window moved to the maximum, "
                     "2 not found within 2 pixels (parabolic estimate kept), -1 padding"})
    ds = _peaks_dataset(result[..., 0], result[..., 1], intensity, count, cube,
                        attrs=attrs, extra={"refinement_flag": flag_var})
    ds["intensity"].attrs["long_name"] = "correlation at the peak"
    if sel is not None:
        ds = ds.assign_coords(searched=(("rx", "ry"), sel, {
            "long_name": "scan positions searched for peaks"}))
    return ds


# ============================================================ the peaks Dataset
def _carried_coords(cube: xr.DataArray | xr.Dataset) -> dict[str, xr.Variable]:
    """Coordinates of a cube (or peaks Dataset) that travel with the peaks."""
    out: dict[str, xr.Variable] = {}
    for name, coord in cube.coords.items():
        dims = set(coord.dims)
        if name in ("qx", "qy"):
            continue
        if coord.ndim == 0 or dims <= {"rx", "ry"} or name in ("detector_qx", "detector_qy"):
            out[name] = coord.variable
    if "detector_qx" not in out:  # from a cube: its detector grid
        for dim in ("qx", "qy"):
            c = cube.coords[dim]
            attrs = dict(c.attrs)
            attrs.setdefault("units", "pixels")
            attrs["step"] = float(_axis_step(cube, dim))
            out[f"detector_{dim}"] = xr.Variable((f"detector_{dim}",),
                                                  np.asarray(c.values, dtype=float), attrs)
    return out


def _detector_map(ds: xr.Dataset | xr.DataArray) -> tuple[float, float, float, float]:
    """``(qx_start, qx_step, qy_start, qy_step)`` of the detector grid of a cube or peaks."""
    out = []
    for dim in ("qx", "qy"):
        name = f"detector_{dim}" if f"detector_{dim}" in ds.coords else dim
        c = ds.coords[name]
        if c.size >= 2:
            step = float(c.values[1] - c.values[0])
        else:
            step = float(c.attrs.get("step", 1.0))
        out += [float(c.values[0]), step]
    return out[0], out[1], out[2], out[3]


def _peaks_dataset(
    qx: Any,
    qy: Any,
    intensity: Any,
    count: Any,
    cube: xr.DataArray | xr.Dataset,
    *,
    pixels: bool = True,
    attrs: dict[str, Any] | None = None,
    intensity_units: str = "a.u.",
    extra: dict[str, Any] | None = None,
    scan_index: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Build the pinned Bragg-peaks Dataset.

    Parameters
    ----------
    qx, qy, intensity
        ``(rx, ry, peak)`` arrays (numpy or dask), NaN beyond each position's count,
        sorted by decreasing intensity along ``peak``. With ``pixels=True`` ``qx``/``qy``
        are fractional detector pixel indices (converted here to the cube's q units);
        with ``pixels=False`` they are already in the cube's q units.
    count
        ``(rx, ry)`` integer number of real peaks per position.
    cube
        The source datacube (or a peaks Dataset): its scan coordinates, 0-d and
        ``(rx, ry)`` coordinates and detector grid (``detector_qx``/``detector_qy``) are
        carried over.
    attrs
        Detection parameters stored in ``attrs`` (values must be netCDF-friendly).
    extra
        More ``(rx, ry, peak)`` or ``(rx, ry)`` data variables (e.g. ``refinement_flag``).
    scan_index
        Optional ``{"rx": indexer, "ry": indexer}`` (``isel`` indexers keeping the
        dims) when the arrays cover a sub-block of the cube's scan.
    """
    src = cube
    if scan_index is not None:
        src = cube.isel(scan_index)
    coords = _carried_coords(src)
    x0, sx, y0, sy = _detector_map(cube)
    if pixels:
        qx = x0 + qx * sx
        qy = y0 + qy * sy
    units_x = coords["detector_qx"].attrs.get("units", "pixels")
    units_y = coords["detector_qy"].attrs.get("units", "pixels")
    dims3 = ("rx", "ry", "peak")
    data_vars: dict[str, Any] = {
        "qx": xr.Variable(dims3, qx, {"units": units_x}),
        "qy": xr.Variable(dims3, qy, {"units": units_y}),
        "intensity": xr.Variable(dims3, intensity, {"units": intensity_units}),
        "count": xr.Variable(("rx", "ry"), count, {"units": "peaks"}),
    }
    for name, value in (extra or {}).items():
        data_vars[name] = value if isinstance(value, xr.Variable) else xr.Variable(
            dims3[:np.ndim(value)], value)
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = {"stem4d_type": PEAKS_TYPE, **(attrs or {})}
    return ds


def _validate_peaks(ds: Any, argname: str = "peaks") -> xr.Dataset:
    """Check that ``ds`` is a Bragg-peaks Dataset (the pinned format) and return it.

    Raises ``TypeError``/``ValueError`` naming ``argname``: not a Dataset, missing
    ``qx``/``qy``/``intensity`` over ``(rx, ry, peak)`` or ``count`` over ``(rx, ry)``,
    or no detector grid coordinates ``detector_qx``/``detector_qy``.
    """
    hint = "(make it with stem4d.find_bragg_disks)"
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{argname} must be a Bragg peaks xarray.Dataset {hint}, got "
                        f"{type(ds).__name__}")
    for name in _PEAK_VARS:
        if name not in ds.data_vars:
            raise ValueError(f"{argname} has no '{name}' variable: expected a Bragg peaks "
                             f"Dataset with qx, qy, intensity over (rx, ry, peak) {hint}")
        if tuple(ds[name].dims) != ("rx", "ry", "peak"):
            raise ValueError(f"{argname}['{name}'] must have dims ('rx', 'ry', 'peak'), got "
                             f"{tuple(ds[name].dims)}")
    if "count" not in ds.data_vars or tuple(ds["count"].dims) != ("rx", "ry"):
        got = tuple(ds["count"].dims) if "count" in ds.data_vars else "missing"
        raise ValueError(f"{argname} must have a 'count' variable over ('rx', 'ry'), got {got}")
    for name in ("detector_qx", "detector_qy"):
        if name not in ds.coords:
            raise ValueError(f"{argname} has no '{name}' coordinate (the detector grid the "
                             f"peaks were found on) {hint}")
    return ds


def _peaks_to_pixels(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """Peak positions of a peaks Dataset as fractional detector pixel indices."""
    x0, sx, y0, sy = _detector_map(ds)
    return (ds["qx"] - x0) / sx, (ds["qy"] - y0) / sy
