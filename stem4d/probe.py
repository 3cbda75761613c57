"""The probe: vacuum and synthetic probes, disk measurement, correlation kernels.

Every function returns ``(qx, qy)`` DataArrays on the detector grid (and with the
detector coordinates) of its source, or a small :class:`xarray.Dataset` of numbers with
units. Positions and lengths given to or returned by this module are in **detector
pixels**: a centre is a fractional ``(row, column)`` index (pixel ``(i, j)`` has its
centre at ``(i, j)``), like :func:`stem4d.set_origin`; calibrated copies (in the units of
the ``qx``/``qy`` coordinates) are added where the source is calibrated.

* :func:`vacuum_probe` averages a vacuum image or stack (no alignment) and zeroes
  everything outside a mask made by thresholding, opening and expanding;
* :func:`probe_from_cube` averages a region of a datacube, optionally aligning the
  patterns by subpixel cross-correlation first;
* :func:`synthetic_probe` draws a disk with a logistic edge;
* :func:`measure_disk` / :func:`probe_size` find the central disk's radius and centre
  with a threshold sweep;
* :func:`kernel` turns a probe into a template-matching kernel centred on the array
  corner ``[0, 0]`` (``flat``, ``gaussian``, ``sigmoid``, ``sigmoid_log``).

Robust maximum
    Thresholds are fractions of the image's range ``[lo, hi]``, where ``lo``/``hi`` are
    the minimum/maximum of the 3 x 3 median-filtered image: a single hot pixel does not
    set the scale. For a probe on a zero background this is the plain maximum.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.special import expit

from . import _kernels
from .datacube import _as_pattern, _pixel_coords, as_float, validate_cube
from .detectors import _center as _pair_center
from .detectors import _mask_array, _positive
from .origin import _median3x3, _moments
from .virtual import _detector_coords as _virtual_detector_coords

__all__ = [
    "vacuum_probe",
    "probe_from_cube",
    "synthetic_probe",
    "measure_disk",
    "probe_size",
    "kernel",
    "KERNEL_MODES",
]

KERNEL_MODES: tuple[str, ...] = ("flat", "gaussian", "sigmoid", "sigmoid_log")
_UPSAMPLE = 16  # subpixel cross-correlation: search grid step 1/_UPSAMPLE pixel


# ------------------------------------------------------------------ input helpers
def _numeric(values: Any, argname: str) -> None:
    dtype = np.dtype(values.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype.kind == "b") or np.issubdtype(
            dtype, np.complexfloating):
        raise TypeError(f"{argname} must hold real numbers, got dtype {dtype}")


def _finite(values: np.ndarray, argname: str) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{argname} contains NaN or inf values; replace or mask them first")


def _detector_coords(obj: xr.DataArray | xr.Dataset) -> dict[str, xr.Variable]:
    """The detector and scalar coordinates of ``obj``; pixel ``qx``/``qy`` where missing."""
    shape = (obj.sizes["qx"], obj.sizes["qy"])
    return {**_pixel_coords(shape), **_virtual_detector_coords(obj)}


def _as_image(obj: Any, argname: str) -> tuple[np.ndarray, dict[str, xr.Variable]]:
    """A 2-D pattern as ``(values, coords)``; a dask-backed pattern is computed (2-D)."""
    if not isinstance(obj, (xr.DataArray, xr.Dataset)) and not hasattr(obj, "ndim"):
        obj = np.asarray(obj)  # nested lists
    pattern = _as_pattern(obj, argname)
    _numeric(pattern, argname)
    values = np.asarray(pattern.values)
    if min(values.shape) < 3:
        raise ValueError(f"{argname} must be at least 3 x 3 pixels, got shape {values.shape}")
    _finite(values, argname)
    return values, _detector_coords(pattern)


def _center(value: Any, argname: str) -> tuple[float, float]:
    return _pair_center(value, argname, "detector pixels")


def _check_fraction(value: Any, argname: str) -> float:
    v = as_float(value, argname)
    if not (np.isfinite(v) and 0 <= v < 1):
        raise ValueError(f"{argname} must be a fraction of the maximum in [0, 1), got {value!r}")
    return v


def _check_count(value: Any, argname: str) -> int:
    v = as_float(value, argname)
    if isinstance(value, bool) or not np.isfinite(v) or int(v) != v or v < 0:
        raise ValueError(f"{argname} must be a non-negative whole number of pixels, "
                         f"got {value!r}")
    return int(v)


def _robust_range(values: np.ndarray) -> tuple[float, float, tuple[int, int]]:
    """``(lo, hi, argmax)`` of the 3 x 3 median-filtered image."""
    filt = ndimage.median_filter(values.astype(np.float64, copy=False), size=3,
                                 mode="nearest")
    seed = np.unravel_index(int(np.argmax(filt)), filt.shape)
    return float(filt.min()), float(filt.max()), (int(seed[0]), int(seed[1]))


def _disk_structure(radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1)
    return x[:, None] ** 2 + x[None, :] ** 2 <= radius**2


def _probe_mask(probe: np.ndarray, threshold: float, expansion: int, opening: int
                ) -> np.ndarray:
    """Region ``probe > threshold * max``, opened by a disk of radius ``opening``, then
    expanded by ``expansion`` pixels (Euclidean distance)."""
    _, hi, _ = _robust_range(probe)
    region = probe > threshold * hi
    if opening > 0:
        region = ndimage.binary_opening(region, structure=_disk_structure(opening))
    if not region.any():
        raise ValueError(
            f"the probe mask is empty: no region above threshold={threshold} x max survives "
            f"an opening of {opening} pixels; lower threshold or opening"
        )
    if expansion > 0:
        region = ndimage.distance_transform_edt(~region) <= expansion
    return region


def _probe_result(probe: np.ndarray, coords: dict, name: str, attrs: dict) -> xr.DataArray:
    return xr.DataArray(probe, dims=("qx", "qy"), coords=coords, name=name, attrs=attrs)


# ------------------------------------------------------------------ vacuum probes
def vacuum_probe(
    data: Any,
    *,
    mask: Any = None,
    threshold: float = 0.2,
    expansion: int = 12,
    opening: int = 3,
) -> xr.DataArray:
    """Vacuum probe from a vacuum image or a stack of vacuum patterns (no alignment).

    Parameters
    ----------
    data
        A ``(qx, qy)`` image, or a stack: a DataArray whose last dims are ``qx``, ``qy``
        (every other dim is averaged, e.g. ``(scan, qx, qy)`` or a whole vacuum
        datacube), or a 2-D / 3-D ``(N, qx, qy)`` array. The beam is assumed stationary;
        use :func:`probe_from_cube` to align the patterns first. A dask-backed stack is
        reduced lazily and only the 2-D mean is computed.
    mask
        Optional ``(qx, qy)`` detector mask (bool or float weights) multiplied into the
        mean pattern first.
    threshold
        Fraction of the (3 x 3 median-filtered) maximum: pixels above it form the
        probe region.
    expansion
        The region is grown by this many pixels (Euclidean binary dilation) to take in
        the probe's tails.
    opening
        Radius, pixels, of the disk used to open the region *before* the expansion,
        removing stray bright pixels (a hot pixel dilated first would survive).

    Returns
    -------
    ``(qx, qy)`` DataArray, zero outside the expanded region, with the detector
    coordinates of ``data`` (pixels from 0 for a plain array); float32 (float64 for
    float64 data).

    Notes
    -----
    py4DSTEM's ``Probe.from_vacuum_data`` takes the same parameters but tapers the mask
    with a cosine over ``expansion`` pixels; here the mask is hard (1 inside the
    expanded region, 0 outside), so the probe inside is the plain mean.
    """
    threshold = _check_fraction(threshold, "threshold")
    expansion = _check_count(expansion, "expansion")
    opening = _check_count(opening, "opening")
    if isinstance(data, xr.DataArray):
        if data.ndim < 2 or tuple(data.dims[-2:]) != ("qx", "qy"):
            raise ValueError(
                f"data must have dims (..., 'qx', 'qy'), got {tuple(data.dims)}"
            )
        _numeric(data, "data")
        coords = _detector_coords(data)
        lead = list(data.dims[:-2])
        mean = data.astype(_kernels.work_dtype(data.dtype)).mean(lead) if lead else data
        values = np.asarray(mean.values)
        n = int(np.prod([data.sizes[d] for d in lead])) if lead else 1
    else:
        arr = data if hasattr(data, "ndim") and hasattr(data, "dtype") else np.asarray(data)
        if arr.ndim not in (2, 3):
            hint = (" (a 4-D datacube: use stem4d.probe.probe_from_cube, or a DataArray)"
                    if arr.ndim == 4 else "")
            raise ValueError(
                f"data must be a 2-D vacuum image (qx, qy) or a 3-D stack (N, qx, qy), got "
                f"{arr.ndim}-D with shape {tuple(arr.shape)}{hint}"
            )
        _numeric(arr, "data")
        wd = _kernels.work_dtype(arr.dtype)
        mean = arr.astype(wd).mean(axis=0) if arr.ndim == 3 else arr.astype(wd)
        values = np.asarray(mean.compute() if isinstance(mean, da.Array) else mean)
        coords = _pixel_coords(values.shape[-2:])
        n = arr.shape[0] if arr.ndim == 3 else 1
    if min(values.shape) < 3:
        raise ValueError(f"data patterns must be at least 3 x 3 pixels, got {values.shape}")
    _finite(values, "data")
    values = values.astype(_kernels.work_dtype(values.dtype), copy=True)
    if mask is not None:
        values = (values * _mask_array(mask, values.shape)).astype(values.dtype)
    region = _probe_mask(values, threshold, expansion, opening)
    return _probe_result(
        np.where(region, values, 0).astype(values.dtype), coords, "probe",
        {"source": "stem4d.probe.vacuum_probe", "n_patterns": n, "aligned": 0,
         "threshold": threshold, "expansion": expansion, "opening": opening},
    )


def _scan_index(value: Any, argname: str) -> int:
    v = as_float(value, argname)
    if isinstance(value, bool) or not np.isfinite(v) or v != int(v):
        raise ValueError(f"{argname} must be a whole scan index, got {value!r}")
    return int(v)


def _roi_mask(cube: xr.DataArray, roi: Any) -> np.ndarray:
    """A bool ``(rx, ry)`` selection from ``roi`` (None, bool mask, 2 slices/ranges, or
    ``(rx_min, rx_max, ry_min, ry_max)``)."""
    shape = (cube.sizes["rx"], cube.sizes["ry"])
    if roi is None:
        return np.ones(shape, bool)
    if isinstance(roi, xr.DataArray) or (isinstance(roi, np.ndarray) and roi.ndim == 2):
        values = (roi.transpose("rx", "ry").values if isinstance(roi, xr.DataArray)
                  else roi)
        values = np.asarray(values)
        if values.dtype != bool:
            raise TypeError(f"roi as an array must be a bool (rx, ry) mask, got {values.dtype}")
        if values.shape != shape:
            raise ValueError(f"roi must have the scan shape (rx, ry) = {shape}, "
                             f"got {values.shape}")
        sel = values.copy()
    elif isinstance(roi, (tuple, list)) and len(roi) == 2:
        sel = np.zeros(shape, bool)
        index = []
        for axis, n, part in zip(("rx", "ry"), shape, roi, strict=True):
            if isinstance(part, slice):
                ends = [v for v in (part.start, part.stop) if v is not None]
            elif isinstance(part, range):
                ends = [part[0], part[-1]] if len(part) else []
            else:
                raise TypeError(
                    f"roi[{axis}] must be a slice or range of scan indices, got {part!r}"
                )
            bad = [v for v in ends if not -n <= v <= n or (isinstance(part, range) and v == n)]
            if bad:
                raise ValueError(
                    f"roi[{axis}] = {part!r} reaches outside the scan: {axis} has {n} "
                    f"positions (scan shape {shape}), so its indices run from 0 to {n - 1} "
                    f"(slice ends up to {n})"
                )
            index.append(part if isinstance(part, slice) else np.asarray(part, dtype=np.int64))
        rows = np.arange(shape[0])[index[0]]
        cols = np.arange(shape[1])[index[1]]
        sel[np.ix_(rows, cols)] = True
    elif isinstance(roi, (tuple, list)) and len(roi) == 4:
        x0, x1, y0, y1 = (_scan_index(v, f"roi[{i}]") for i, v in enumerate(roi))
        if not (0 <= x0 < x1 <= shape[0] and 0 <= y0 < y1 <= shape[1]):
            raise ValueError(
                f"roi = (rx_min, rx_max, ry_min, ry_max) = {tuple(roi)!r} does not fit the "
                f"scan shape (rx, ry) = {shape}: it needs 0 <= rx_min < rx_max <= {shape[0]} "
                f"and 0 <= ry_min < ry_max <= {shape[1]} (half-open)"
            )
        sel = np.zeros(shape, bool)
        sel[x0:x1, y0:y1] = True
    else:
        raise TypeError(
            "roi must be None, a bool (rx, ry) mask, a pair of slices/ranges "
            f"(rx, ry), or (rx_min, rx_max, ry_min, ry_max), got {roi!r}"
        )
    if not sel.any():
        raise ValueError(f"roi selects no scan position (scan shape {shape}): got {roi!r}")
    return sel


def _disk_centroids(stack: np.ndarray) -> np.ndarray:
    """Centre (pixels) of the brightest disk of each pattern of ``stack`` ``(N, nx, ny)``.

    The centre of mass of the 3 x 3 median-filtered pattern above half its maximum (the
    first estimate of :func:`stem4d.measure_origin`'s ``"com"``, blind to hot pixels);
    ``(N, 2)``, NaN for a pattern with nothing above that level.
    """
    nx, ny = stack.shape[1:]
    med = _median3x3(stack)
    level = (0.5 * med.max(axis=(1, 2))).astype(stack.dtype)[:, None, None]
    _, cx, cy = _moments(np.clip(med - level, 0, None), np.arange(nx, dtype=np.float64),
                         np.arange(ny, dtype=np.float64))
    return np.stack([cx, cy], axis=-1)


def _aligned_sum_block(block: np.ndarray, sel: np.ndarray, weights: np.ndarray | None,
                       align: str | np.ndarray | None, workers: int) -> np.ndarray:
    """One scan block ``(a, b, nx, ny)`` -> ``(1, 1, nx * ny + 4)``.

    The sum of the selected patterns (``sel[..., 0, 0]``), each first moved (Fourier
    shift) by minus its shift ``s``, followed by the sums of ``s`` along qx and qy, of
    ``|s|**2``, and the number of shifts summed. ``align``: ``None``, no shift;
    ``"centroid"``, ``s`` is the pattern's own disk centre (:func:`_disk_centroids`;
    patterns without one are not moved nor counted); a reference spectrum
    (:func:`stem4d._kernels.reference_spectrum`), ``s`` is the cross-correlation shift
    against that reference.
    """
    nx, ny = block.shape[2:]
    out = np.zeros((1, 1, nx * ny + 4))
    stack = block[np.asarray(sel, bool).reshape(block.shape[:2])]
    if stack.shape[0] == 0:
        return out
    wd = _kernels.work_dtype(stack.dtype)
    stack = stack.astype(wd, copy=False)
    _finite(stack, "cube (selected patterns)")
    if weights is not None:
        stack = stack * weights.astype(wd)
    counted = np.ones(stack.shape[0], bool)
    if align is None:
        total = stack.sum(axis=0, dtype=np.float64)
        shifts = np.zeros((stack.shape[0], 2))
    else:
        if isinstance(align, str):
            shifts = _disk_centroids(stack)
            counted = np.all(np.isfinite(shifts), axis=1)
            shifts[~counted] = 0.0
            # the reference is summed in float64: float32 sums would depend on the
            # chunking at 1e-7, and the shifts measured against it at ~1e-6 pixel
            total = _kernels.fourier_shifted_sum(stack.astype(np.float64), -shifts, None,
                                                 workers=workers)
        else:
            shifts, _ = _kernels.xcorr_peaks(stack, align, upsample=_UPSAMPLE,
                                             workers=workers)
            total = _kernels.fourier_shifted_sum(stack, -shifts, None, workers=workers)
    out[0, 0, :nx * ny] = total.reshape(-1)
    out[0, 0, nx * ny:] = (shifts[:, 0].sum(), shifts[:, 1].sum(), (shifts**2).sum(),
                           counted.sum())
    return out


def probe_from_cube(
    cube: xr.DataArray,
    *,
    roi: Any = None,
    mask: Any = None,
    align: bool = True,
    threshold: float = 0.2,
    expansion: int = 12,
    opening: int = 3,
) -> xr.DataArray:
    """Vacuum probe from a region of a datacube, aligning the patterns first.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``, numpy- or dask-backed.
    roi
        Scan positions to use: ``None`` (all), a bool ``(rx, ry)`` mask, a pair
        ``(rx_slice_or_range, ry_slice_or_range)`` of scan indices, or the four indices
        ``(rx_min, rx_max, ry_min, ry_max)`` (half-open).
    mask
        Optional ``(qx, qy)`` detector mask multiplied into every pattern before
        alignment and averaging.
    align
        Align the patterns before averaging: each is cross-correlated with a reference,
        the correlation peak located to 1/16 pixel by an upsampled DFT and a parabola,
        and the pattern moved by that shift in Fourier space (periodic at the detector
        edges). The reference is the average of the patterns each moved onto its own
        disk centre (centre of mass of the 3 x 3 median-filtered pattern above half its
        maximum, blind to hot pixels).
        The mean shift is removed, so the result sits where the beam was on average
        over the region.
    threshold, expansion, opening
        Final masking step, as in :func:`vacuum_probe` (default threshold 0.2 of the
        maximum, like py4DSTEM; ``threshold=0`` keeps every positive pixel).

    Returns
    -------
    ``(qx, qy)`` DataArray with the cube's detector coordinates and scalar
    calibrations; attrs ``n_patterns``, ``aligned`` and ``shift_rms`` (pixels, the RMS
    alignment shift).

    Notes
    -----
    What is computed: the selected patterns are read once (``align=False``) or twice
    (the reference, then the alignment), each pass reduced scan block by scan block
    (the blocks of the bounding box of ``roi``; a dask cube's scan chunks, with the
    detector axes merged) to one ``(qx, qy)`` sum and four numbers per block. Only
    those small sums are computed, so a dask cube of any size is never loaded whole
    and the blocks run in parallel on a dask scheduler.
    """
    validate_cube(cube)
    threshold = _check_fraction(threshold, "threshold")
    expansion = _check_count(expansion, "expansion")
    opening = _check_count(opening, "opening")
    _numeric(cube, "cube")
    sel = _roi_mask(cube, roi)
    rows, cols = np.flatnonzero(sel.any(1)), np.flatnonzero(sel.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    nx, ny = cube.sizes["qx"], cube.sizes["qy"]
    wd = _kernels.work_dtype(cube.dtype)
    weights = None if mask is None else _mask_array(mask, (nx, ny)).astype(wd)
    data, sel_box = cube.data[box], sel[box]
    lazy = isinstance(data, da.Array)
    if lazy:
        data = data.rechunk({2: -1, 3: -1})
        sel_lazy = da.from_array(sel_box[:, :, None, None],
                                 chunks=data.chunks[:2] + ((1,), (1,)))

    def one_pass(how: str | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One read of the patterns, ``_aligned_sum_block(..., how)`` summed over blocks.

        Returns the sum moved onto the mean shift (``sum_i shift(p_i, -s_i)`` moved by
        ``+mean`` is ``sum_i shift(p_i, -(s_i - mean))``) and the four summed numbers.
        """
        if not lazy:
            res = _aligned_sum_block(np.asarray(data), sel_box, weights, how, -1)[0, 0]
        else:
            res = da.map_blocks(
                _aligned_sum_block, data, sel_lazy, weights, how, 1, drop_axis=3,
                chunks=(tuple(1 for _ in data.chunks[0]), tuple(1 for _ in data.chunks[1]),
                        (nx * ny + 4,)),
                dtype=np.float64, meta=np.array((), np.float64)).sum(axis=(0, 1)).compute()
        total, count = res[:nx * ny].reshape(1, nx, ny), int(round(res[-1]))
        mean_shift = res[nx * ny:nx * ny + 2] / max(count, 1)
        if how is not None:
            total = _kernels.fourier_shift_stack(total, mean_shift[None], workers=-1)
        return total[0], res[nx * ny:]

    n = int(sel_box.sum())
    shift_rms = 0.0
    if align and n > 1:
        # Two passes, the minimum: a cross-correlation alignment needs a reference, and
        # a reference that does not blur the disk (unlike the plain mean of a drifting
        # beam) needs the patterns aligned. Pass 1 moves every pattern onto its own disk
        # centre (no reference needed) and sums: the reference, at the mean centre.
        # Pass 2 cross-correlates every pattern with it and sums the aligned patterns.
        # Both are per-pattern operations and sums, so the result does not depend on the
        # chunking. (Aligning against the plain mean needs a third pass: the plain mean,
        # then the alignment, then the alignment against the sharper aligned mean.)
        reference, _ = one_pass("centroid")
        total, sums = one_pass(_kernels.reference_spectrum(reference, wd))
        mean_shift = sums[:2] / n
        shift_rms = float(np.sqrt(max(sums[2] / n - mean_shift @ mean_shift, 0.0)))
    else:
        total, _ = one_pass(None)
    probe = total / n
    probe = probe.astype(wd)
    region = _probe_mask(probe, threshold, expansion, opening)
    return _probe_result(
        np.where(region, probe, 0).astype(wd), _detector_coords(cube), "probe",
        {"source": "stem4d.probe.probe_from_cube", "n_patterns": n,
         "aligned": int(bool(align and n > 1)), "shift_rms": shift_rms,
         "threshold": threshold, "expansion": expansion, "opening": opening},
    )


# ------------------------------------------------------------------ synthetic probe
def synthetic_probe(
    obj_or_shape: Any,
    radius: float,
    width: float,
    *,
    center: Sequence[float] | None = None,
    dtype: Any = "float32",
) -> xr.DataArray:
    """A disk with a logistic edge: ``1 / (1 + exp((r - radius) / width))``.

    Parameters
    ----------
    obj_or_shape
        A cube or pattern (its detector grid and coordinates are used) or a plain
        ``(qx, qy)`` shape.
    radius
        Disk radius, pixels: the 50 % contour.
    width
        Logistic edge scale, pixels: the value falls from 73 % to 27 % over
        ``radius +- width`` (py4DSTEM's ``generate_synthetic_probe`` width is 4x this).
    center
        Disk centre, detector pixels (fractional ``(row, column)`` index). Default: where
        the coordinates are zero (the origin) for a cube or pattern, the detector centre
        ``((nqx - 1) / 2, (nqy - 1) / 2)`` for a shape.
    dtype
        Data type of the result.

    Returns
    -------
    ``(qx, qy)`` DataArray with values in ``(0, 1)``: the source's detector coordinates,
    or pixel coordinates zero at the centre for a shape.
    """
    if isinstance(obj_or_shape, (xr.DataArray, xr.Dataset)):
        for dim in ("qx", "qy"):
            if dim not in obj_or_shape.dims:
                raise ValueError(
                    f"obj_or_shape must have 'qx' and 'qy' dims, got {tuple(obj_or_shape.dims)}"
                )
        shape = (obj_or_shape.sizes["qx"], obj_or_shape.sizes["qy"])
        coords = _detector_coords(obj_or_shape)
        default = tuple(float(-coords[d].values[0] / (coords[d].values[1] - coords[d].values[0]))
                        if coords[d].size > 1 else 0.0 for d in ("qx", "qy"))
    else:
        try:
            shape = tuple(int(v) for v in obj_or_shape)
        except (TypeError, ValueError) as err:
            raise ValueError(
                "obj_or_shape must be a cube/pattern DataArray or a (qx, qy) pair of positive "
                f"ints, got {obj_or_shape!r}"
            ) from err
        if len(shape) != 2 or min(shape) < 1 or any(int(v) != v for v in obj_or_shape):
            raise ValueError(f"obj_or_shape must be a pair of positive ints, got {obj_or_shape!r}")
        default = ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
        coords = None
    radius = _positive(radius, "radius")
    width = _positive(width, "width")
    c = default if center is None else _center(center, "center")
    if coords is None:
        coords = _pixel_coords(shape, c)
    ix = np.arange(shape[0]) - c[0]
    iy = np.arange(shape[1]) - c[1]
    rho = np.hypot(ix[:, None], iy[None, :])
    values = expit((radius - rho) / width).astype(dtype)
    return _probe_result(values, coords, "probe", {
        "source": "stem4d.probe.synthetic_probe", "radius": float(radius),
        "width": float(width), "center": [float(c[0]), float(c[1])],
        "profile": "1 / (1 + exp((r - radius) / width)), pixels"})


# ------------------------------------------------------------------ disk measurement
def _component(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    if not mask[seed]:
        return np.zeros_like(mask)
    labels, _ = ndimage.label(mask)
    return labels == labels[seed]


_SUB = 4  # subpixel factor of the bilinear area estimate


def _interp_matrix(n: int, f: int) -> np.ndarray:
    """``(f n, n)`` bilinear interpolation onto ``f`` sub-pixel centres per pixel."""
    pos = (np.arange(n * f) + 0.5) / f - 0.5
    pos = np.clip(pos, 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(int), n - 2) if n > 1 else np.zeros(pos.size, int)
    w = pos - i0
    mat = np.zeros((n * f, n))
    mat[np.arange(pos.size), i0] = 1 - w
    if n > 1:
        mat[np.arange(pos.size), i0 + 1] += w
    return mat


def _disk_sweep(values: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
    """Threshold sweep of the connected bright region holding the brightest pixel.

    Areas are measured on a bilinear interpolant of the image (``_SUB`` x ``_SUB``
    sub-pixels per pixel, within the region grown by one pixel), so they vary smoothly
    with the threshold instead of in whole-pixel steps.
    """
    lo, hi, seed = _robust_range(values)
    if not hi > lo:
        raise ValueError("image is flat (after a 3 x 3 median filter): no disk to measure")
    levels = lo + ts * (hi - lo)
    base = _component(values > levels[0], seed)
    if not base.any():
        base = _component(values >= values[seed], seed)
    x0, x1, y0, y1 = _kernels.nonzero_bbox(base)
    x0, y0 = max(x0 - 2, 0), max(y0 - 2, 0)
    x1, y1 = min(x1 + 2, values.shape[0]), min(y1 + 2, values.shape[1])
    box = values[x0:x1, y0:y1]
    up = _interp_matrix(box.shape[0], _SUB) @ box @ _interp_matrix(box.shape[1], _SUB).T
    grow = np.ones((3, 3), bool)
    areas = np.zeros(ts.size)
    border = np.zeros(ts.size, bool)
    regions = []
    for i, level in enumerate(levels):
        region = _component(values > level, seed)
        regions.append(region)
        border[i] = bool(region[0].any() or region[-1].any() or region[:, 0].any()
                         or region[:, -1].any())
        if not region.any():
            continue
        near = ndimage.binary_dilation(region[x0:x1, y0:y1], grow)
        near = np.repeat(np.repeat(near, _SUB, 0), _SUB, 1)
        areas[i] = np.count_nonzero(near & (up > level)) / _SUB**2
    radii = np.sqrt(areas / np.pi)
    valid = (areas > 0) & ~border
    if not valid.any():
        valid = areas > 0
        if valid.any():
            warnings.warn(
                "measure_disk: the bright region touches the border of the "
                f"{values.shape[0]} x {values.shape[1]} image at every threshold from "
                f"{ts[0]:.3g} to {ts[-1]:.3g}: the disk is at or over the detector edge, "
                "so its radius and centre are measured on a cut disk and are biased",
                UserWarning, stacklevel=3,
            )
    if valid.sum() < 3:
        raise ValueError(
            f"the threshold sweep over {ts.size} thresholds from {ts[0]:.3g} to {ts[-1]:.3g} "
            f"of the range [{lo:.4g}, {hi:.4g}] found {int(valid.sum())} usable thresholds, "
            "fewer than 3 (the disk is lost or fills the "
            f"{values.shape[0]} x {values.shape[1]} image): check the image or "
            "thresh_lower/thresh_upper"
        )
    deriv = np.gradient(radii, ts)
    k = max(3, ts.size // 10) | 1
    smooth = np.abs(ndimage.uniform_filter1d(deriv, k, mode="nearest"))
    smooth = np.where(valid, smooth, np.inf)
    i0 = int(np.argmin(smooth))
    tol = smooth[i0] + max(smooth[i0], 0.25 * float(np.median(smooth[valid])))
    lo_i = hi_i = i0
    while lo_i > 0 and smooth[lo_i - 1] <= tol:
        lo_i -= 1
    while hi_i < ts.size - 1 and smooth[hi_i + 1] <= tol:
        hi_i += 1
    run = slice(lo_i, hi_i + 1)
    t_star = float(ts[run].mean())
    level = lo + t_star * (hi - lo)
    edge = np.nan
    if ts[0] <= 0.25 and ts[-1] >= 0.75 and valid[(ts >= 0.25) & (ts <= 0.75)].all():
        edge = float((np.interp(0.25, ts, radii) - np.interp(0.75, ts, radii))
                     / (2 * np.log(3.0)))
    region = _component(values > level, seed)
    if not region.any():
        region = _component(values >= values[seed], seed)
    flux_radius, plateau, background = _flux_radius(values, region, edge)
    cx, cy = _disk_centre(values, region, edge, lo, hi)
    return {"radius": float(radii[run].mean()), "qx0": cx, "qy0": cy, "threshold": t_star,
            "edge_width": edge, "radii": radii, "stable": (lo_i, hi_i), "range": (lo, hi),
            "radius_flux": flux_radius, "plateau": plateau, "background": background}


_RING_PX = 6  # width of the ring (pixels) in which the disk centre's background is fitted


def _background_plane(values: np.ndarray, ring: np.ndarray, contrast: float
                      ) -> np.ndarray | None:
    """Plane ``c0 + c1 i + c2 j`` fitted to ``values`` on the pixels of ``ring``, robustly.

    Least squares first on the ring's lower three quarters (other disks and hot pixels
    are bright), then on all its pixels within 4 robust standard deviations (1.4826 MAD,
    at least ``1e-3 contrast``: noise-free data) of the last plane, until the set stops
    changing (at most 5 times). ``None`` when fewer than 12 pixels are left (or they do
    not determine a plane).
    """
    ii, jj = np.nonzero(ring)
    if ii.size < 12:
        return None
    i0, j0 = ii.mean(), jj.mean()
    design = np.stack([np.ones(ii.size), ii - i0, jj - j0], axis=1)
    v = values[ring]
    keep = v <= np.percentile(v, 75)
    coef = np.zeros(3)
    for _ in range(5):
        if keep.sum() < 12:
            return None
        coef, _, rank, _ = np.linalg.lstsq(design[keep], v[keep], rcond=None)
        if rank < 3:
            return None
        res = v - design @ coef
        spread = 1.4826 * float(np.median(np.abs(res[keep] - np.median(res[keep]))))
        new = np.abs(res) <= 4 * max(spread, 1e-3 * contrast)
        if np.array_equal(new, keep):
            break
        keep = new
    ig, jg = np.ogrid[:values.shape[0], :values.shape[1]]
    return coef[0] + coef[1] * (ig - i0) + coef[2] * (jg - j0)


def _disk_centre(values: np.ndarray, region: np.ndarray, edge: float, lo: float, hi: float
                 ) -> tuple[float, float]:
    """Centre of mass ``(row, column)`` of the disk whose stable-threshold region is
    ``region``.

    The weights are ``values - background`` over ``region`` grown by ``3 edge + 1`` pixels
    (rounded up; ``edge`` 1 when unknown), so the soft edge is taken in whole and not cut
    asymmetrically. ``background`` is a plane fitted robustly in the ring of
    ``_RING_PX`` pixels around that grown region (:func:`_background_plane`): a sloped
    background then adds no pull towards its bright side. When the ring is too small
    (a disk filling the image) or gives no positive total, the weights are
    ``max(values - lo, 0)``; ``lo``, ``hi`` are the image's robust range.
    """
    grow_px = int(np.ceil(3 * (edge if np.isfinite(edge) else 1.0) + 1))
    dist = ndimage.distance_transform_edt(~region)
    grown = dist <= grow_px
    plane = _background_plane(values, (dist > grow_px) & (dist <= grow_px + _RING_PX),
                              hi - lo)
    weight = None
    if plane is not None:
        weight = np.where(grown, values - plane, 0.0)
        if not weight.sum() > 0:
            weight = None
    if weight is None:
        weight = np.where(grown, np.maximum(values - lo, 0.0), 0.0)
    total = weight.sum()
    cx = float((weight.sum(1) @ np.arange(values.shape[0])) / total)
    cy = float((weight.sum(0) @ np.arange(values.shape[1])) / total)
    return cx, cy


def _flux_radius(values: np.ndarray, core: np.ndarray, edge: float
                 ) -> tuple[float, float, float]:
    """``(sqrt(F / (pi (I0 - bg))), I0, bg)`` of the disk whose half-height region is ``core``.

    ``w = max(3, 3.7 edge)`` pixels (2.5 standard deviations of an erf edge whose
    ``edge_width`` is ``edge``); ``I0`` is the plateau, the median of the ``core`` pixels
    more than ``w`` inside its edge (for a small disk, of those above 80 % of the core's
    smoothed maximum), ``bg`` the median beyond ``w + 3`` pixels of ``core`` and ``F`` the
    intensity above ``bg`` within ``w`` pixels of it. A blur that keeps the flux leaves
    this radius unchanged, so it is the radius of the unblurred disk; NaN when no plateau
    stands above ``bg`` or the flux is not positive.
    """
    reach = max(3.0, 3.7 * edge) if np.isfinite(edge) else 3.0
    deep = ndimage.distance_transform_edt(core) > reach
    if deep.sum() < 9:
        smooth = ndimage.gaussian_filter(values, 1.0)
        deep = core & (smooth > 0.8 * smooth[core].max())
    plateau = float(np.median(values[deep if deep.any() else core]))
    dist = ndimage.distance_transform_edt(~core)
    outside = dist > reach + 3
    background = float(np.median(values[outside])) if outside.any() else float(values.min())
    flux = float((values[dist <= reach] - background).sum())
    if not (plateau > background and flux > 0):
        return np.nan, plateau, background
    return float(np.sqrt(flux / (np.pi * (plateau - background)))), plateau, background


def measure_disk(
    image: Any,
    *,
    thresh_lower: float = 0.01,
    thresh_upper: float = 0.99,
    n: int = 100,
) -> xr.Dataset:
    """Radius and centre of the central (brightest) disk by a threshold sweep.

    For ``n`` thresholds ``t`` in ``linspace(thresh_lower, thresh_upper, n)`` (fractions of
    the image's robust range, see the module docstring) the connected region above
    ``t`` that holds the brightest pixel has area ``A(t)`` and effective radius
    ``sqrt(A / pi)``. The derivative ``dr/dt`` (smoothed over ``n // 10`` thresholds) is
    smallest where the radius is most stable; the radius is the mean over the run of
    thresholds around that minimum whose derivative is within ``max(2 x min, min +
    median / 4)``. For an edge symmetric about its half height (logistic, erf) this is
    the **50 % radius**, and the stable threshold is 0.5: for
    :func:`synthetic_probe` the ``radius`` itself; for
    :func:`stem4d.simulate.probe_disk` / ``crystal`` disks ``sqrt(radius**2 - s**2)``
    with ``s**2 = edge_width**2 + 1/12`` (0.02 px below ``radius`` for radius 8, edge
    0.5). Regions touching the image border are not used; when every threshold's region
    touches it (a disk at or over the detector edge) they are, with a ``UserWarning``: the
    radius and centre of a cut disk are biased.

    The centre is the centre of mass of ``image - background`` over the region above the
    stable threshold grown by ``3 edge_width + 1`` pixels (rounded up), so the whole soft
    edge is in and is not cut asymmetrically. ``background`` is a plane fitted robustly
    (iterated 4-MAD clipping, which leaves out other disks and hot pixels) in the 6-pixel
    ring around that grown region, so a sloped background does not pull the centre
    towards its bright side (measured, noise-free, background rising by 0.2 % of the
    disk per pixel: 0.0002 px instead of 0.1-0.28 px with a constant background); when the
    ring is too small, the background is the image's robust minimum.

    ``radius_flux`` is the radius of the *unblurred* disk, ``sqrt(F / (pi (I0 - bg)))``:
    ``I0`` the plateau (median more than ``w`` inside the 50 % region), ``F`` the
    intensity above the background ``bg`` within ``w = max(3, 3.7 edge_width)`` pixels
    of that region, ``bg`` the median beyond ``w + 3`` pixels. A blur (detector point spread,
    partial coherence) keeps the flux but pulls the 50 % contour of a curved edge
    inwards by about ``s**2 / (2 radius)`` for a Gaussian blur of ``s`` pixels
    (measured: -0.9 % at radius 9.3 px, s = 1.2; -2.4 % at s = 2), while
    ``radius_flux`` stays within 0.2 % (radius 9 to 22 px, s up to 2, with Poisson noise
    and a power-law background). It is the bright-field radius used for the
    convergence-angle calibration (:func:`stem4d.calibrate_q` ``"fitRBF"``).

    Parameters
    ----------
    image
        ``(qx, qy)`` DataArray or 2-D array: a probe or any diffraction pattern (e.g. the
        mean pattern); a dask-backed image is computed.
    thresh_lower, thresh_upper
        Range of thresholds, fractions in ``[0, 1]``.
    n
        Number of thresholds (>= 10).

    Returns
    -------
    Dataset of 0-d variables ``radius``, ``radius_flux`` (NaN when no plateau stands
    above the background), ``qx0``, ``qy0`` (centre as a fractional pixel
    index), ``edge_width`` (``(r(0.25) - r(0.75)) / (2 ln 3)``: the logistic ``width``
    of :func:`synthetic_probe`, ``0.674 s`` for an erf edge of standard deviation
    ``s``; edges sharper than ~0.5 px read about 0.3-0.4 px, the blur of the bilinear
    area estimate), all pixels, and ``threshold``; the sweep ``sweep_radius`` (pixels) along
    ``threshold_sweep``. For calibrated ``qx``/``qy`` (not pixels) also ``radius_q``,
    ``qx0_q``, ``qy0_q`` in those units (in mrad, ``radius_q`` is the convergence
    semiangle).
    """
    values, coords = _as_image(image, "image")
    lower, upper = as_float(thresh_lower, "thresh_lower"), as_float(thresh_upper, "thresh_upper")
    if not (np.isfinite(lower) and np.isfinite(upper) and 0 <= lower < upper <= 1):
        raise ValueError(
            "thresh_lower and thresh_upper must satisfy 0 <= thresh_lower < thresh_upper <= 1 "
            f"(fractions of the image's range), got {thresh_lower!r}, {thresh_upper!r}"
        )
    n_float = as_float(n, "n")
    if isinstance(n, bool) or n_float != int(n_float) or n_float < 10:
        raise ValueError(f"n must be an integer number of thresholds >= 10, got {n!r}")
    ts = np.linspace(lower, upper, int(n))
    res = _disk_sweep(values.astype(np.float64), ts)
    px = {"units": "pixels"}
    out = xr.Dataset(
        {
            "radius": ((), res["radius"], {**px, "long_name": "disk radius (50 % contour)"}),
            "radius_flux": ((), res["radius_flux"], {
                **px, "long_name": "disk radius from its flux, sqrt(F / (pi (I0 - bg)))"}),
            "qx0": ((), res["qx0"], {**px, "long_name": "disk centre, row index"}),
            "qy0": ((), res["qy0"], {**px, "long_name": "disk centre, column index"}),
            "edge_width": ((), res["edge_width"], {
                **px, "long_name": "edge width, (r(0.25) - r(0.75)) / (2 ln 3)"}),
            "threshold": ((), res["threshold"], {
                "units": "", "long_name": "stable threshold, fraction of the range"}),
            "sweep_radius": (("threshold_sweep",), res["radii"], px),
        },
        coords={"threshold_sweep": ("threshold_sweep", ts, {"units": ""})},
        attrs={"source": "stem4d.probe.measure_disk",
               "stable_range": [float(ts[res["stable"][0]]), float(ts[res["stable"][1]])],
               "intensity_range": [float(res["range"][0]), float(res["range"][1])],
               "plateau": float(res["plateau"]), "background": float(res["background"])},
    )
    units = coords["qx"].attrs.get("units", "pixels")
    if units != "pixels":
        qx, qy = coords["qx"].values, coords["qy"].values
        sx = float(qx[1] - qx[0]) if qx.size > 1 else 1.0
        sy = float(qy[1] - qy[0]) if qy.size > 1 else 1.0
        u = {"units": units}
        out["radius_q"] = ((), res["radius"] * float(np.sqrt(abs(sx * sy))), u)
        out["qx0_q"] = ((), float(qx[0] + res["qx0"] * sx), u)
        out["qy0_q"] = ((), float(qy[0] + res["qy0"] * sy), u)
    return out


def probe_size(
    cube: xr.DataArray,
    *,
    shift_center: bool = False,
    thresh_lower: float = 0.01,
    thresh_upper: float = 0.99,
    n: int = 100,
) -> xr.Dataset:
    """:func:`measure_disk` on the cube's mean diffraction pattern.

    Only the 2-D mean pattern is computed (lazily reduced for a dask cube). With
    ``shift_center=True`` the patterns are first moved onto the mean origin (Fourier
    shift, needs ``qx0``/``qy0`` coordinates), which keeps the disk edge sharp under beam
    drift. Returns the Dataset of :func:`measure_disk` (centre in pixels of the mean
    pattern, and in q units when calibrated).
    """
    from .virtual import virtual_diffraction

    validate_cube(cube)
    mean = virtual_diffraction(cube, "mean", shift_center=shift_center,
                               subpixel=shift_center)
    if isinstance(mean.data, da.Array):
        mean = mean.compute()
    out = measure_disk(mean, thresh_lower=thresh_lower, thresh_upper=thresh_upper, n=n)
    out.attrs["source"] = "stem4d.probe.probe_size"
    return out


# ------------------------------------------------------------------ kernels
def _wrapped_radius(shape: tuple[int, int]) -> np.ndarray:
    """Distance (pixels) from the array corner [0, 0], with wrap-around."""
    dx = np.abs(np.fft.fftfreq(shape[0]) * shape[0])
    dy = np.abs(np.fft.fftfreq(shape[1]) * shape[1])
    return np.hypot(dx[:, None], dy[None, :])


def _shift_to_corner(values: np.ndarray, origin: tuple[float, float], bilinear: bool
                     ) -> np.ndarray:
    """Move pixel ``origin`` of ``values`` to ``[0, 0]`` (periodic)."""
    if not bilinear:
        return _kernels.fourier_shift_stack(values[None], -np.asarray([origin]),
                                            workers=1)[0]
    base = np.floor(origin).astype(int)
    fx, fy = origin[0] - base[0], origin[1] - base[1]
    out = np.zeros_like(values)
    for ax, ay, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        if w:
            out += w * np.roll(values, (-(base[0] + ax), -(base[1] + ay)), axis=(0, 1))
    return out


def kernel(
    probe: Any,
    mode: str = "flat",
    *,
    origin: Sequence[float] | None = None,
    sigma: float | None = None,
    radii: Sequence[float] | None = None,
    bilinear: bool = False,
) -> xr.DataArray:
    """Template-matching kernel from a probe, centred on the array corner ``[0, 0]``.

    The probe is moved (periodically) so its centre ``origin`` lands on pixel ``[0, 0]``
    and normalized to sum 1; then, by ``mode``:

    * ``"flat"``: nothing more (sums to 1; best for structured probes);
    * ``"gaussian"``: minus a Gaussian of standard deviation ``sigma`` **pixels** centred
      on ``[0, 0]``, normalized to sum 1 (kernel sums to 0). py4DSTEM's ``sigma`` is
      relative to the probe's RMS radius instead: multiply it by that radius;
    * ``"sigmoid"``: minus a soft disk ``S(r)`` normalized to sum 1 (kernel sums to 0):
      ``S = 1`` inside ``r0 = radii[0]``, ``cos^2(pi/2 x)`` with
      ``x = (r - r0) / (r1 - r0)`` between ``r0`` and ``r1 = radii[1]``, and 0 beyond;
    * ``"sigmoid_log"``: the same soft disk with a logistic fall, centred on
      ``(r0 + r1) / 2`` with scale ``(r1 - r0) / 4`` and rescaled to exactly 1 at ``r0``
      and 0 at ``r1``.

    These are py4DSTEM's ``sigmoid`` kernels: with ``r0`` about the probe radius and
    ``r1`` beyond it, the kernel is the probe minus a slightly wider soft disk, so it is
    exactly 0 beyond ``r1`` (where the probe is 0), positive on the probe and negative
    in the annulus between the probe's edge and ``r1`` (the "trench"). Distances are
    measured from ``[0, 0]`` with wrap-around (the kernel is periodic, as in an FFT
    correlation).

    Parameters
    ----------
    probe
        ``(qx, qy)`` DataArray or 2-D array (e.g. from :func:`vacuum_probe`).
    mode
        One of :data:`KERNEL_MODES`.
    origin
        Probe centre, detector pixels (fractional index). Default: measured with
        :func:`measure_disk`.
    sigma
        Gaussian standard deviation, pixels (``mode="gaussian"`` only).
    radii
        ``(r0, r1)`` radii of the soft disk's fall, pixels, ``0 <= r0 < r1`` (sigmoid
        modes only).
    bilinear
        Move the probe by bilinear interpolation instead of a Fourier shift (the Fourier
        shift is exact for band-limited data but rings at hard edges; bilinear blurs).

    Returns
    -------
    ``(qx, qy)`` DataArray on the probe's grid, carrying the probe's detector
    coordinates (so it can be checked against a cube), with attrs ``kernel`` (mode),
    ``origin`` (pixels), ``sigma``/``radii`` and ``centered_at = "corner"``.
    """
    if mode not in KERNEL_MODES:
        raise ValueError(f"mode must be one of {KERNEL_MODES}, got {mode!r}")
    values, coords = _as_image(probe, "probe")
    if mode == "gaussian":
        if sigma is None:
            raise ValueError("mode='gaussian' needs sigma (pixels)")
        sigma = as_float(sigma, "sigma")
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be positive (pixels), got {sigma!r}")
    elif sigma is not None:
        raise ValueError(f"sigma is only used by mode='gaussian', got mode={mode!r}")
    if mode in ("sigmoid", "sigmoid_log"):
        if radii is None:
            raise ValueError(f"mode={mode!r} needs radii=(r0, r1) (pixels)")
        if np.ndim(radii) != 1 or len(radii) != 2:
            raise ValueError(f"radii must be (r0, r1) pixels with 0 <= r0 < r1, got {radii!r}")
        r = np.array([as_float(radii[0], "radii[0]"), as_float(radii[1], "radii[1]")])
        if r.shape != (2,) or not np.all(np.isfinite(r)) or r[0] < 0 or not r[1] > r[0]:
            raise ValueError(
                f"radii must be (r0, r1) pixels with 0 <= r0 < r1, got {radii!r}"
            )
    elif radii is not None:
        raise ValueError(f"radii is only used by the sigmoid modes, got mode={mode!r}")
    out_dtype = _kernels.work_dtype(values.dtype)
    work = values.astype(np.float64)
    if origin is None:
        disk = measure_disk(work)
        org = (float(disk["qx0"]), float(disk["qy0"]))
    else:
        org = _center(origin, "origin")
    shifted = _shift_to_corner(work, org, bool(bilinear))
    total = shifted.sum()
    if not total > 0:
        raise ValueError(f"probe must have a positive sum to be normalized, got {total!r}")
    out = shifted / total
    attrs: dict[str, Any] = {"kernel": mode, "origin": [org[0], org[1]],
                             "centered_at": "corner", "units": "",
                             "source": "stem4d.probe.kernel"}
    if mode != "flat":
        rho = _wrapped_radius(work.shape)
        if mode == "gaussian":
            soft = np.exp(-(rho**2) / (2 * float(sigma) ** 2))
            attrs["sigma"] = float(sigma)
        else:
            r0, r1 = float(r[0]), float(r[1])
            x = np.clip((rho - r0) / (r1 - r0), 0, 1)
            if mode == "sigmoid":
                soft = np.cos(0.5 * np.pi * x) ** 2
            else:  # logistic of scale (r1 - r0) / 4 about the mid radius: 4 x - 2
                at_r1, at_r0 = expit(-2.0), expit(2.0)
                soft = (expit(2.0 - 4.0 * x) - at_r1) / (at_r0 - at_r1)
            soft[rho >= r1] = 0.0
            attrs["radii"] = [r0, r1]
        ssum = soft.sum()
        if not ssum > 0:
            raise ValueError(
                f"the subtracted {mode} function is empty on a {work.shape} grid: "
                f"check {'sigma' if mode == 'gaussian' else 'radii'} (pixels)"
            )
        out = out - soft / ssum
    return xr.DataArray(out.astype(out_dtype), dims=("qx", "qy"), coords=coords,
                        name=f"kernel_{mode}", attrs=attrs)
