"""Array kernels on plain numpy arrays, wrapped for xarray by the public modules.

Each kernel works on a stack of patterns ``(N, nqx, nqy)`` (a reshaped block of scan
positions) and walks it in cache-sized blocks, so every detector pixel is read from
memory once however many detectors or shifts are applied to it.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

_BLOCK_BYTES = 4 * 2**20


def work_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for float64 input, else float32 (integer detectors are cast per block)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _block_size(pattern_shape: tuple[int, int], itemsize: int) -> int:
    return max(1, _BLOCK_BYTES // (pattern_shape[0] * pattern_shape[1] * max(itemsize, 4)))


def nonzero_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, x1, y0, y1)`` bounding the nonzero pixels of a 2-D mask (empty → zeros)."""
    rows = np.flatnonzero(np.any(mask != 0, axis=1))
    cols = np.flatnonzero(np.any(mask != 0, axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class _ShiftedBands:
    """Detector masks translated by integer pixel shifts, as bands of whole rows.

    A band is ``(r0, r1, weights)``: the detector touches pattern rows ``r0:r1`` only,
    and ``weights`` is the flattened ``(r1 - r0, nqy)`` slice of the shifted mask, so
    that ``flat[:, r0 * nqy:r1 * nqy] @ weights`` (a strided view, no copy) is the sum.
    """

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks
        self.shape = masks.shape[1:]
        self.rows = [nonzero_bbox(m)[:2] for m in masks]
        self._cache: dict[tuple[int, int, int], tuple[int, int, np.ndarray] | None] = {}

    def get(self, det: int, dx: int, dy: int) -> tuple[int, int, np.ndarray] | None:
        key = (det, dx, dy)
        if key not in self._cache:
            x0, x1 = self.rows[det]
            nx, ny = self.shape
            # the mask moves by (dx, dy): pattern pixel p sees mask pixel p - shift
            r0, r1 = max(x0 + dx, 0), min(x1 + dx, nx)
            c0, c1 = max(dy, 0), min(ny + dy, ny)
            if r1 <= r0 or c1 <= c0 or x1 == x0:
                self._cache[key] = None
            else:
                band = np.zeros((r1 - r0, ny), dtype=self.masks.dtype)
                band[:, c0:c1] = self.masks[det, r0 - dx:r1 - dx, c0 - dy:c1 - dy]
                self._cache[key] = (r0, r1, band.reshape(-1)) if band.any() else None
        return self._cache[key]


def _corner_terms(
    offsets: np.ndarray | None, n: int, subpixel: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Integer shifts and weights whose weighted sum is the (sub)pixel shift.

    Returns a list of ``(dx, dy, weight)`` arrays of length ``n``: one term for no or
    integer shifts, four bilinear terms for subpixel shifts.
    """
    if offsets is None:
        zero = np.zeros(n, dtype=np.int64)
        return [(zero, zero, np.ones(n))]
    if not subpixel:
        ishift = np.rint(offsets).astype(np.int64)
        return [(ishift[:, 0], ishift[:, 1], np.ones(n))]
    base = np.floor(offsets)
    frac = offsets - base
    base = base.astype(np.int64)
    wx, wy = frac[:, 0], frac[:, 1]
    return [
        (base[:, 0], base[:, 1], (1 - wx) * (1 - wy)),
        (base[:, 0] + 1, base[:, 1], wx * (1 - wy)),
        (base[:, 0], base[:, 1] + 1, (1 - wx) * wy),
        (base[:, 0] + 1, base[:, 1] + 1, wx * wy),
    ]


def detector_sums(
    patterns: np.ndarray,
    masks: np.ndarray,
    offsets: np.ndarray | None = None,
    subpixel: bool = False,
) -> np.ndarray:
    """Weighted sums of each pattern over each detector.

    Parameters
    ----------
    patterns
        ``(N, nqx, nqy)`` stack of diffraction patterns.
    masks
        ``(ndet, nqx, nqy)`` detector weights.
    offsets
        Optional ``(N, 2)`` shifts, pixels: the detector of pattern ``i`` is moved by
        ``offsets[i]`` (it follows the beam). Rounded to integers unless ``subpixel``,
        in which case the detector is bilinearly interpolated (a weighted sum of the
        four neighbouring integer shifts).

    Returns
    -------
    ``(N, ndet)`` array in float32 (float64 for float64 patterns).

    Only the detector rows a mask touches are read (a BF disk reads a fraction of each
    pattern), and each cache-sized block of patterns is read from memory once for all
    detectors and shifts.
    """
    n, nx, ny = patterns.shape
    dtype = work_dtype(patterns.dtype)
    bands = _ShiftedBands(np.asarray(masks, dtype=dtype))
    ndet = masks.shape[0]
    terms = _corner_terms(offsets, n, subpixel)
    out = np.zeros((n, ndet), dtype=dtype)
    if offsets is None and ndet == 1 and patterns.dtype == dtype and patterns.flags.c_contiguous:
        # one detector, no shifts: a single (multi-threaded) BLAS call on a strided view
        band = bands.get(0, 0, 0)
        if band is not None:
            r0, r1, vec = band
            out[:, 0] = patterns.reshape(n, nx * ny)[:, r0 * ny:r1 * ny] @ vec
        return out
    block = _block_size((nx, ny), patterns.dtype.itemsize)
    for start in range(0, n, block):
        stop = min(start + block, n)
        size = stop - start
        blk = patterns[start:stop]
        if blk.dtype != dtype or not blk.flags.c_contiguous:
            blk = np.ascontiguousarray(blk, dtype=dtype)
        flat = blk.reshape(size, nx * ny)
        out_blk = out[start:stop]
        keys = np.stack([np.concatenate([t[0][start:stop] for t in terms]),
                         np.concatenate([t[1][start:stop] for t in terms])], axis=1)
        weights = np.concatenate([t[2][start:stop] for t in terms]).astype(dtype)
        rows_all = np.tile(np.arange(size), len(terms))
        if len(terms) == 1 and np.all(keys == keys[0]):
            groups = [(keys[0], None)]
        else:
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            groups = [(key, np.flatnonzero(inverse == u)) for u, key in enumerate(uniq)]
        for (dx, dy), members in groups:
            for d in range(ndet):
                band = bands.get(d, int(dx), int(dy))
                if band is None:
                    continue
                r0, r1, vec = band
                if members is None:  # every pattern of the block, weight 1
                    out_blk[:, d] += flat[:, r0 * ny:r1 * ny] @ vec
                    continue
                rows, w = rows_all[members], weights[members]
                if 4 * rows.size >= size:
                    vals = (flat[:, r0 * ny:r1 * ny] @ vec)[rows]
                else:
                    vals = flat[rows, r0 * ny:r1 * ny] @ vec
                out_blk[rows, d] += w * vals
    return out


def weighted_pattern_sum(patterns: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Σ_i w_i · pattern_i over a stack ``(N, nqx, nqy)``, accumulated in float64."""
    n = patterns.shape[0]
    dtype = work_dtype(patterns.dtype)
    total = np.zeros(patterns.shape[1] * patterns.shape[2], dtype=np.float64)
    block = 4 * _block_size(patterns.shape[1:], patterns.dtype.itemsize)
    w_all = np.ones(n, dtype=dtype) if weights is None else np.asarray(weights, dtype=dtype)
    for start in range(0, n, block):
        stop = min(start + block, n)
        blk = patterns[start:stop].reshape(stop - start, -1)
        if blk.dtype != dtype:
            blk = blk.astype(dtype)
        total += w_all[start:stop] @ blk
    return total.reshape(patterns.shape[1:])


def pattern_max(patterns: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Pixel-wise max over a stack (each pattern multiplied by its weight if given).

    NaN values are skipped (``np.fmax``); a pixel NaN in every pattern stays NaN.
    """
    block = 4 * _block_size(patterns.shape[1:], patterns.dtype.itemsize)
    best = None
    for start in range(0, patterns.shape[0], block):
        blk = patterns[start:start + block]
        if weights is not None:
            w = np.asarray(weights[start:start + block], dtype=work_dtype(blk.dtype))
            blk = blk * w[:, None, None]
        part = np.fmax.reduce(blk, axis=0)
        best = part if best is None else np.fmax(best, part, out=best)
    return best


def fourier_shift_stack(patterns: np.ndarray, shifts: np.ndarray, workers: int = -1) -> np.ndarray:
    """Shift each pattern by ``shifts[i]`` pixels (subpixel, periodic) with real FFTs.

    Output pixel ``p`` holds input pixel ``p - shift``; float32 for non-float64 input.
    """
    dtype = work_dtype(patterns.dtype)
    nx, ny = patterns.shape[1:]
    kx = np.fft.fftfreq(nx)[:, None]
    ky = np.fft.rfftfreq(ny)[None, :]
    ctype = np.complex128 if dtype == np.float64 else np.complex64
    spectrum = scipy.fft.rfft2(patterns.astype(dtype, copy=False), workers=workers)
    spectrum *= np.exp(-2j * np.pi * shifts[:, 0, None, None] * kx).astype(ctype)
    spectrum *= np.exp(-2j * np.pi * shifts[:, 1, None, None] * ky).astype(ctype)
    return scipy.fft.irfft2(spectrum, s=(nx, ny), workers=workers).astype(dtype, copy=False)


def fourier_shifted_sum(patterns: np.ndarray, shifts: np.ndarray,
                        weights: np.ndarray | None, workers: int = -1) -> np.ndarray:
    """Σ_i w_i · (pattern_i shifted by ``shifts[i]``), float64, with one inverse FFT.

    The shift is linear, so the shifted spectra are summed and transformed back once.
    """
    nx, ny = patterns.shape[1:]
    kx = np.fft.fftfreq(nx)[:, None]
    ky = np.fft.rfftfreq(ny)[None, :]
    total = np.zeros((nx, ny // 2 + 1), dtype=np.complex128)
    block = _block_size((nx, ny), 8)
    for start in range(0, patterns.shape[0], block):
        stop = min(start + block, patterns.shape[0])
        blk = patterns[start:stop].astype(work_dtype(patterns.dtype), copy=False)
        spectrum = scipy.fft.rfft2(blk, workers=workers)
        sh = shifts[start:stop]
        ramp_x = np.exp(-2j * np.pi * sh[:, 0, None] * kx[None, :, 0])  # separable ramp
        ramp_y = np.exp(-2j * np.pi * sh[:, 1, None] * ky[None, 0, :])
        if weights is not None:
            ramp_x *= np.asarray(weights[start:stop], dtype=float)[:, None]
        ramp_x = ramp_x.astype(spectrum.dtype)
        ramp_y = ramp_y.astype(spectrum.dtype)
        total += np.einsum("nij,ni,nj->ij", spectrum, ramp_x, ramp_y, optimize=True)
    return scipy.fft.irfft2(total, s=(nx, ny), workers=workers)


def integer_shift_stack(patterns: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each pattern by integer ``shifts[i]`` pixels (periodic, like ``np.roll``)."""
    out = np.empty_like(patterns)
    ishift = np.rint(shifts).astype(np.int64)
    uniq, inverse = np.unique(ishift, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for u, (dx, dy) in enumerate(uniq):
        rows = np.flatnonzero(inverse == u)
        out[rows] = np.roll(patterns[rows], (int(dx), int(dy)), axis=(1, 2))
    return out


# ------------------------------------------------- subpixel cross-correlation peaks
_XCORR_BLOCK_BYTES = 32 * 2**20


def parabolic_vertex(fm: np.ndarray, f0: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Vertex offset of the parabola through ``(-1, fm), (0, f0), (1, fp)``.

    Clipped to ±0.5; 0 where the three points do not make a maximum.
    """
    denom = fm - 2.0 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(denom < 0, 0.5 * (fm - fp) / denom, 0.0)
    return np.clip(np.nan_to_num(delta), -0.5, 0.5)


def reference_spectrum(ref: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
    """``conj(rfft2(ref))``: the reference of :func:`xcorr_peaks`, computed once."""
    return np.conj(scipy.fft.rfft2(np.asarray(ref, dtype=dtype)))


def _upsampled_peaks(spec: np.ndarray, sx: np.ndarray, sy: np.ndarray, shape: tuple[int, int],
                     upsample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine integer correlation peaks ``(sx, sy)`` on a grid ``1/upsample`` pixel fine.

    The correlation is evaluated from its half spectrum ``spec`` ``(n, nx, ny//2+1)`` by
    a matrix DFT at ``s + o`` for offsets ``o`` within ±1 pixel; the finest-grid maximum
    is then refined by a parabola. Returns the shifts and the peak values.
    """
    nx, ny = shape
    n = spec.shape[0]
    offs = np.arange(-upsample, upsample + 1) / upsample  # (m,)
    kx = np.fft.fftfreq(nx)  # cycles / pixel
    ky = np.fft.rfftfreq(ny)
    hermitian = np.full(ky.size, 2.0)  # the half spectrum stands for both halves
    hermitian[0] = 1.0
    if ny % 2 == 0:
        hermitian[-1] = 1.0
    ctype = np.complex128 if spec.dtype == np.complex128 else np.complex64
    ex = np.exp(2j * np.pi * (sx[:, None, None] + offs[None, :, None]) * kx).astype(ctype)
    ey = (np.exp(2j * np.pi * ky[None, :, None] * (sy[:, None, None] + offs[None, None, :]))
          * hermitian[None, :, None]).astype(ctype)
    fine = np.matmul(np.matmul(ex, spec), ey).real / (nx * ny)  # (n, m, m)
    m = offs.size
    a, b = np.divmod(fine.reshape(n, -1).argmax(axis=1), m)
    rows = np.arange(n)
    peak = fine[rows, a, b].astype(np.float64)
    am, ap = np.clip(a - 1, 0, m - 1), np.clip(a + 1, 0, m - 1)
    bm, bp = np.clip(b - 1, 0, m - 1), np.clip(b + 1, 0, m - 1)
    da_ = np.where((a > 0) & (a < m - 1),
                   parabolic_vertex(fine[rows, am, b], peak, fine[rows, ap, b]), 0.0)
    db_ = np.where((b > 0) & (b < m - 1),
                   parabolic_vertex(fine[rows, a, bm], peak, fine[rows, a, bp]), 0.0)
    return sx + offs[a] + da_ / upsample, sy + offs[b] + db_ / upsample, peak


def xcorr_peaks(
    patterns: np.ndarray,
    ref_spectrum: np.ndarray,
    *,
    subpixel: bool = True,
    upsample: int = 16,
    workers: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Shift of each pattern relative to a reference, by periodic cross-correlation.

    Parameters
    ----------
    patterns
        ``(N, nx, ny)`` stack (float32 work; float64 input stays float64).
    ref_spectrum
        :func:`reference_spectrum` of the reference ``(nx, ny)``.
    subpixel
        Refine the integer peak: with ``upsample > 1`` by a matrix DFT of the
        cross-power spectrum on a grid ``1/upsample`` pixel fine over ±1 pixel, then a
        parabola through the best grid point; with ``upsample == 1`` by a parabola
        through the integer correlation.
    workers
        Threads of each FFT call (1 inside dask tasks).

    Returns
    -------
    ``(shifts, peaks)``: ``(N, 2)`` pixels ``d`` with ``patterns[i](p) ~ ref(p - d)``,
    each component in ``[-n/2, n/2)`` (periodic), and the ``(N,)`` correlation values
    ``sum_p patterns[i](p + d) ref(p)`` at the peaks (float64).
    """
    n, nx, ny = patterns.shape
    dtype = work_dtype(patterns.dtype)
    shifts = np.empty((n, 2))
    peaks = np.empty(n)
    block = max(1, _XCORR_BLOCK_BYTES // (nx * ny * 16))
    for start in range(0, n, block):
        stop = min(start + block, n)
        p = patterns[start:stop].astype(dtype, copy=False)
        spec = scipy.fft.rfft2(p, workers=workers)
        spec *= ref_spectrum.astype(spec.dtype, copy=False)
        cc = scipy.fft.irfft2(spec, s=(nx, ny), workers=workers)
        ix, iy = np.divmod(cc.reshape(stop - start, -1).argmax(axis=1), ny)
        rows = np.arange(stop - start)
        sx, sy = ix.astype(np.float64), iy.astype(np.float64)
        peak = cc[rows, ix, iy].astype(np.float64)
        if subpixel and upsample <= 1:
            sx += parabolic_vertex(cc[rows, (ix - 1) % nx, iy], cc[rows, ix, iy],
                                   cc[rows, (ix + 1) % nx, iy])
            sy += parabolic_vertex(cc[rows, ix, (iy - 1) % ny], cc[rows, ix, iy],
                                   cc[rows, ix, (iy + 1) % ny])
        elif subpixel:
            sx = np.where(sx >= (nx + 1) // 2, sx - nx, sx)
            sy = np.where(sy >= (ny + 1) // 2, sy - ny, sy)
            sx, sy, peak = _upsampled_peaks(spec, sx, sy, (nx, ny), int(upsample))
        shifts[start:stop, 0] = np.mod(sx + nx / 2, nx) - nx / 2
        shifts[start:stop, 1] = np.mod(sy + ny / 2, ny) - ny / 2
        peaks[start:stop] = peak
    return shifts, peaks


def bilinear_histogram(fx: np.ndarray, fy: np.ndarray, weights: np.ndarray,
                       shape: tuple[int, int]) -> np.ndarray:
    """2-D histogram with bilinear deposition at fractional bin positions.

    Each weight is shared between the four bins around ``(fx, fy)`` (bin ``i`` centred
    at ``i``); non-finite positions and zero weights are skipped; bins outside ``shape``
    get nothing. Returns a float64 array of ``shape``.
    """
    nx, ny = shape
    ok = np.isfinite(fx) & np.isfinite(fy) & (weights != 0)
    fx, fy, w = fx[ok], fy[ok], weights[ok]
    ix, iy = np.floor(fx), np.floor(fy)
    dx, dy = fx - ix, fy - iy
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    hist = np.zeros(nx * ny)
    for ox, wx in ((0, 1 - dx), (1, dx)):
        for oy, wy in ((0, 1 - dy), (1, dy)):
            jx, jy = ix + ox, iy + oy
            inside = (jx >= 0) & (jx < nx) & (jy >= 0) & (jy < ny)
            hist += np.bincount(jx[inside] * ny + jy[inside], (w * wx * wy)[inside],
                                minlength=nx * ny)
    return hist.reshape(nx, ny)
