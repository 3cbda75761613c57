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


class _ShiftedMasks:
    """Detector masks translated by integer pixel shifts, as (pattern slices, crop)."""

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks
        self.shape = masks.shape[1:]
        self.bboxes = [nonzero_bbox(m) for m in masks]
        self._cache: dict[tuple[int, int, int], tuple[slice, slice, np.ndarray] | None] = {}

    def get(self, det: int, dx: int, dy: int) -> tuple[slice, slice, np.ndarray] | None:
        key = (det, dx, dy)
        if key not in self._cache:
            x0, x1, y0, y1 = self.bboxes[det]
            nx, ny = self.shape
            # the mask moves by (dx, dy): pattern pixel p sees mask pixel p - shift
            px0, px1 = max(x0 + dx, 0), min(x1 + dx, nx)
            py0, py1 = max(y0 + dy, 0), min(y1 + dy, ny)
            if px1 <= px0 or py1 <= py0:
                self._cache[key] = None
            else:
                crop = self.masks[det, px0 - dx:px1 - dx, py0 - dy:py1 - dy]
                self._cache[key] = (slice(px0, px1), slice(py0, py1), crop)
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
    """
    n = patterns.shape[0]
    dtype = work_dtype(patterns.dtype)
    masks = np.ascontiguousarray(masks, dtype=dtype)
    ndet = masks.shape[0]
    full = masks.shape[1] * masks.shape[2]
    shifted = _ShiftedMasks(masks)
    terms = _corner_terms(offsets, n, subpixel)
    out = np.zeros((n, ndet), dtype=dtype)
    block = _block_size(patterns.shape[1:], patterns.dtype.itemsize)
    for start in range(0, n, block):
        stop = min(start + block, n)
        blk = patterns[start:stop]
        if blk.dtype != dtype:
            blk = blk.astype(dtype)
        flat = blk.reshape(stop - start, -1) if blk.flags.c_contiguous else None
        keys = np.stack([np.concatenate([t[0][start:stop] for t in terms]),
                         np.concatenate([t[1][start:stop] for t in terms])], axis=1)
        weights = np.concatenate([t[2][start:stop] for t in terms])
        rows_all = np.tile(np.arange(stop - start), len(terms))
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for u, (dx, dy) in enumerate(uniq):
            sel = inverse == u
            rows, w = rows_all[sel], weights[sel].astype(dtype)
            whole = rows.size == stop - start and np.all(rows == np.arange(stop - start))
            sub = blk if whole else blk[rows]
            for d in range(ndet):
                hit = shifted.get(d, int(dx), int(dy))
                if hit is None:
                    continue
                sx, sy, crop = hit
                if crop.size == full and whole and flat is not None:
                    vals = flat @ crop.reshape(-1)
                else:
                    vals = np.tensordot(sub[:, sx, sy], crop, axes=2)
                if whole and np.all(w == 1):
                    out[start:stop, d] += vals
                else:
                    np.add.at(out[start:stop, d], rows, w * vals)
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
    """Pixel-wise max over a stack (each pattern multiplied by its weight if given)."""
    if weights is None:
        return patterns.max(axis=0)
    block = _block_size(patterns.shape[1:], patterns.dtype.itemsize)
    dtype = work_dtype(patterns.dtype)
    best = np.full(patterns.shape[1:], -np.inf, dtype=dtype)
    for start in range(0, patterns.shape[0], block):
        blk = patterns[start:start + block].astype(dtype, copy=False)
        w = np.asarray(weights[start:start + block], dtype=dtype)[:, None, None]
        np.maximum(best, (blk * w).max(axis=0), out=best)
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
    ramp = np.exp(-2j * np.pi * (shifts[:, 0, None, None] * kx + shifts[:, 1, None, None] * ky))
    spectrum *= ramp.astype(ctype)
    return scipy.fft.irfft2(spectrum, s=(nx, ny), workers=workers).astype(dtype, copy=False)


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
