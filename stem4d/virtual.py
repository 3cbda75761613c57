"""Virtual images and virtual diffraction patterns.

A virtual image is, for every scan position, the sum of the diffraction pattern
weighted by a detector (a ``(qx, qy)`` DataArray from :mod:`stem4d.detectors`). Several
detectors passed together cost one pass over the data. A virtual diffraction pattern
reduces the scan (mean, max or median pattern).

``shift_center=True`` uses the per-position origin (``qx0``/``qy0`` coordinates set by
:func:`stem4d.set_origin`): a virtual image's detector follows the beam, and a virtual
diffraction pattern is built from patterns moved so each origin lands on the mean
origin. Integer shifts round to the nearest pixel; ``subpixel=True`` interpolates the
detector bilinearly (virtual images) or shifts the patterns in Fourier space
(diffraction; periodic at the detector edges, like the integer ``np.roll`` shift).

numpy input gives numpy output; dask input gives a lazy result, computed chunk by
chunk over the scan (detector axes are merged into one chunk).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from . import _kernels
from ._dask import whole_patterns
from .datacube import SCAN_DIMS, q_pixel_size, validate_cube

__all__ = ["virtual_image", "virtual_diffraction"]


# ------------------------------------------------------------------- helpers
def _check_detector(cube: xr.DataArray, det: Any, argname: str) -> xr.DataArray:
    if not isinstance(det, xr.DataArray):
        raise TypeError(
            f"{argname} must be a (qx, qy) DataArray from stem4d.detectors, "
            f"got {type(det).__name__}"
        )
    if det.dims[-2:] != ("qx", "qy"):
        raise ValueError(f"{argname} must have dims (..., 'qx', 'qy'), got {tuple(det.dims)}")
    for dim in ("qx", "qy"):
        if det.sizes[dim] != cube.sizes[dim]:
            raise ValueError(
                f"{argname} has {det.sizes[dim]} pixels along {dim}, the cube has "
                f"{cube.sizes[dim]}: build the detector from this cube"
            )
        if dim in det.coords:
            du = det.coords[dim].attrs.get("units", "pixels")
            cu = cube.coords[dim].attrs.get("units", "pixels")
            if du != cu or not np.allclose(det.coords[dim].values, cube.coords[dim].values,
                                           rtol=1e-6, atol=1e-9 * max(1.0, float(
                                               np.abs(cube.coords[dim].values).max()))):
                raise ValueError(
                    f"{argname} coordinates along {dim} ({du}) do not match the cube's "
                    f"({cu}): the detector was built for another calibration or origin; "
                    "build it from this cube, e.g. stem4d.detectors.circle(cube, ...)"
                )
    values = np.asarray(det.values)
    if values.dtype != bool and not np.all(np.isfinite(values)):
        raise ValueError(f"{argname} contains NaN or inf weights")
    return det


def _scan_offsets(cube: xr.DataArray) -> np.ndarray:
    """Per-position origin offsets from the mean origin, pixels, shape ``(rx, ry, 2)``."""
    if "qx0" not in cube.coords or "qy0" not in cube.coords:
        raise ValueError(
            "shift_center=True needs a per-position origin, but the cube has no "
            "'qx0'/'qy0' coordinates: measure the origin and set it with "
            "stem4d.set_origin(cube, qx0, qy0)"
        )
    sx, sy, _ = q_pixel_size(cube)
    return np.stack([np.asarray(cube.coords["qx0"].values) / sx,
                     np.asarray(cube.coords["qy0"].values) / sy], axis=-1)


def _scan_coords(cube: xr.DataArray) -> dict[str, Any]:
    return {k: v.variable for k, v in cube.coords.items()
            if v.ndim == 0 or set(v.dims) <= set(SCAN_DIMS)}


def _detector_coords(cube: xr.DataArray) -> dict[str, Any]:
    return {k: v.variable for k, v in cube.coords.items()
            if v.ndim == 0 or set(v.dims) <= {"qx", "qy"}}


# ------------------------------------------------------------ virtual images
def _image_block(block: np.ndarray, offsets: np.ndarray | None, masks: np.ndarray,
                 subpixel: bool) -> np.ndarray:
    nrx, nry = block.shape[:2]
    stack = block.reshape((nrx * nry,) + block.shape[2:])
    flat_off = None if offsets is None else offsets.reshape(-1, 2)
    sums = _kernels.detector_sums(stack, masks, flat_off, subpixel)
    return sums.reshape(nrx, nry, masks.shape[0])


def virtual_image(
    cube: xr.DataArray,
    detector: xr.DataArray | Mapping[str, xr.DataArray] | Sequence[xr.DataArray],
    *,
    shift_center: bool = False,
    subpixel: bool = False,
) -> xr.DataArray | xr.Dataset:
    """Virtual image(s): each pattern summed over detector weights.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``.
    detector
        A ``(qx, qy)`` detector DataArray (from :mod:`stem4d.detectors`, or any mask on
        the cube's detector grid), a DataArray with one extra leading dim (a stack of
        detectors), or a dict/list of detectors. All are applied in one pass.
    shift_center
        Move the detector with the per-position origin (``qx0``/``qy0`` coordinates).
    subpixel
        With ``shift_center``, move the detector by the exact (bilinearly interpolated)
        offset instead of the nearest whole pixel.

    Returns
    -------
    ``(rx, ry)`` DataArray for one detector (``(rx, ry, <stack dim>)`` for a stack), or a
    Dataset with one image per detector for a dict/list; in the cube's intensity units,
    float32 (float64 for float64 data), lazy for a dask cube.
    """
    validate_cube(cube)
    if isinstance(detector, Mapping) or isinstance(detector, (list, tuple)):
        items = (list(detector.items()) if isinstance(detector, Mapping)
                 else [(d.name if isinstance(d, xr.DataArray) and d.name else f"detector{i}", d)
                       for i, d in enumerate(detector)])
        if not items:
            raise ValueError("detector is an empty collection: give at least one detector")
        names = [str(n) for n, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"detector names must be unique, got {names}")
        dets = [_check_detector(cube, d, f"detector[{n!r}]") for n, d in items]
        for n, d in zip(names, dets, strict=True):
            if d.ndim != 2:
                raise ValueError(
                    f"detector[{n!r}] must be 2-D (qx, qy) in a collection, got dims {d.dims}")
        masks = np.stack([np.asarray(d.values) for d in dets])
        images = _apply_masks(cube, masks, shift_center, subpixel)
        return xr.Dataset(
            {n: images.isel(detector=i, drop=True).rename(n).assign_attrs(_image_attrs(d))
             for i, (n, d) in enumerate(zip(names, dets, strict=True))}
        )
    det = _check_detector(cube, detector, "detector")
    if det.ndim == 2:
        images = _apply_masks(cube, np.asarray(det.values)[None], shift_center, subpixel)
        return images.isel(detector=0, drop=True).rename(det.name).assign_attrs(
            _image_attrs(det))
    if det.ndim != 3:
        raise ValueError(f"detector must be 2-D or 3-D, got dims {tuple(det.dims)}")
    stack_dim = det.dims[0]
    images = _apply_masks(cube, np.asarray(det.values), shift_center, subpixel)
    images = images.rename(detector=stack_dim)
    extra = {k: v.variable for k, v in det.coords.items() if v.dims == (stack_dim,)}
    return images.assign_coords(extra).rename(det.name).assign_attrs(_image_attrs(det))


def _image_attrs(det: xr.DataArray) -> dict[str, Any]:
    attrs = {(k if k == "detector" else f"detector_{k}"): v
             for k, v in det.attrs.items() if k != "units"}
    attrs["long_name"] = f"virtual image ({det.attrs.get('detector', 'mask')} detector)"
    return attrs


def _apply_masks(cube: xr.DataArray, masks: np.ndarray, shift_center: bool,
                 subpixel: bool) -> xr.DataArray:
    offsets = _scan_offsets(cube) if shift_center else None
    ndet = masks.shape[0]
    data = cube.data
    if isinstance(data, da.Array):
        data = whole_patterns(data)
        if offsets is None:
            out = data.map_blocks(_image_block, None, masks, subpixel,
                                  chunks=data.chunks[:2] + ((ndet,),), drop_axis=3,
                                  dtype=_kernels.work_dtype(data.dtype), meta=np.array((), "f4"))
        else:
            off = da.from_array(offsets, chunks=data.chunks[:2] + ((2,),))
            out = da.blockwise(_image_block, "ijd", data, "ijkl", off, "ijc", masks, None,
                               subpixel, None, new_axes={"d": ndet}, concatenate=True,
                               dtype=_kernels.work_dtype(data.dtype))
    else:
        out = _image_block(np.asarray(data), offsets, masks, subpixel)
    return xr.DataArray(out, dims=SCAN_DIMS + ("detector",), coords=_scan_coords(cube))


# ------------------------------------------------------- virtual diffraction
_METHODS = ("mean", "max", "median")


def _scan_weights(cube: xr.DataArray, mask: Any) -> np.ndarray | None:
    if mask is None:
        return None
    values = np.asarray(mask.values if isinstance(mask, xr.DataArray) else mask)
    scan_shape = (cube.sizes["rx"], cube.sizes["ry"])
    if values.shape != scan_shape:
        raise ValueError(
            f"mask must have the scan shape (rx, ry) = {scan_shape}, got {values.shape}"
        )
    if values.dtype == bool:
        if not values.any():
            raise ValueError("mask selects no scan position: nothing to reduce")
        return values.astype(np.float64)
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"mask must be bool (select) or float (weights), got {values.dtype}")
    if not np.all(np.isfinite(values)):
        raise ValueError("mask weights contain NaN or inf")
    if not np.any(values != 0):
        raise ValueError("mask weights are all zero: nothing to reduce")
    if abs(values.sum()) <= 1e-12 * np.abs(values).sum():
        raise ValueError(
            f"mask weights sum to zero ({values.sum()!r}): a weighted mean is undefined")
    return values.astype(np.float64)


def _shifted(stack: np.ndarray, offsets: np.ndarray | None, subpixel: bool,
             workers: int = -1) -> np.ndarray:
    if offsets is None:
        return stack
    if subpixel:
        return _kernels.fourier_shift_stack(stack, -offsets, workers=workers)
    return _kernels.integer_shift_stack(stack, -offsets)


def _diffraction_partial(block: np.ndarray, weights: np.ndarray | None,
                         offsets: np.ndarray | None, method: str, subpixel: bool,
                         workers: int = -1) -> np.ndarray:
    """Partial reduction of a scan block, shape ``(1, 1, qx, qy)``.

    ``workers`` is the FFT thread count: 1 inside dask tasks (dask parallelizes).
    """
    nrx, nry = block.shape[:2]
    stack = block.reshape((nrx * nry,) + block.shape[2:])
    w = None if weights is None else weights.reshape(-1)
    off = None if offsets is None else offsets.reshape(-1, 2)
    if w is not None and method == "max" and np.all((w == 0) | (w == 1)):
        keep = np.flatnonzero(w)
        stack, w = stack[keep], None
        off = None if off is None else off[keep]
    if method == "mean":
        if off is not None and subpixel:
            return _kernels.fourier_shifted_sum(stack, -off, w, workers)[None, None]
        if off is not None:
            # shift in cache-sized pieces, then accumulate
            size = 4 * _kernels._block_size(stack.shape[1:], stack.dtype.itemsize)
            total = np.zeros(stack.shape[1:], dtype=np.float64)
            for s in range(0, stack.shape[0], size):
                part = _shifted(stack[s:s + size], off[s:s + size], subpixel, workers)
                total += _kernels.weighted_pattern_sum(
                    part, None if w is None else w[s:s + size])
        else:
            total = _kernels.weighted_pattern_sum(stack, w)
        return total[None, None]
    # max
    if stack.shape[0] == 0:
        return np.full((1, 1) + block.shape[2:], -np.inf, dtype=_kernels.work_dtype(block.dtype))
    return _kernels.pattern_max(_shifted(stack, off, subpixel, workers), w)[None, None]


def virtual_diffraction(
    cube: xr.DataArray,
    method: str = "mean",
    *,
    mask: Any = None,
    shift_center: bool = False,
    subpixel: bool = False,
) -> xr.DataArray:
    """Mean, max or median diffraction pattern over the scan.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)``.
    method
        ``"mean"``, ``"max"`` or ``"median"``.
    mask
        Optional ``(rx, ry)`` real-space mask: bool selects positions; float weights the
        patterns (weighted mean; for max each pattern is multiplied by its weight;
        median needs a bool mask).
    shift_center
        Move each pattern so its origin (``qx0``/``qy0``) lands on the mean origin first.
    subpixel
        With ``shift_center``, shift by the exact offset (Fourier shift) instead of
        whole pixels.

    Returns
    -------
    ``(qx, qy)`` DataArray with the cube's detector coordinates; float32 for mean and
    median (float64 for float64 data), the data's dtype for an unweighted max. The
    median of a dask cube rechunks it along the detector (all positions per chunk).
    A NaN pixel in any selected pattern makes that pixel NaN in the mean and median;
    the max is that of the finite values (mask bad pixels with
    :func:`stem4d.median_filter_masked_pixels` first).
    """
    validate_cube(cube)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    weights = _scan_weights(cube, mask)
    if method == "median" and weights is not None and not np.all((weights == 0) |
                                                                  (weights == 1)):
        raise ValueError("method='median' needs a bool mask (selection), not float weights")
    offsets = _scan_offsets(cube) if shift_center else None
    data = cube.data
    out_dtype = _kernels.work_dtype(data.dtype)
    if method == "median":
        result = _median(data, weights, offsets, subpixel)
    elif isinstance(data, da.Array):
        data = whole_patterns(data)
        args: list[Any] = [data, "ijkl"]
        for extra in (weights, offsets):
            if extra is None:
                args += [None, None]
            else:
                idx = "ij" if extra.ndim == 2 else "ijc"
                chunks = data.chunks[:2] if extra.ndim == 2 else data.chunks[:2] + ((2,),)
                args += [da.from_array(extra, chunks=chunks), idx]
        partial = da.blockwise(
            _diffraction_partial, "ijkl", *args, method, None, subpixel, None, 1, None,
            concatenate=True, adjust_chunks={"i": 1, "j": 1},
            dtype=np.float64 if method == "mean" else out_dtype,
        )
        result = partial.sum(axis=(0, 1)) if method == "mean" else partial.max(axis=(0, 1))
    else:
        result = _diffraction_numpy(np.asarray(data), weights, offsets, method, subpixel)
    if method == "mean":
        norm = float(np.prod(data.shape[:2])) if weights is None else float(weights.sum())
        result = (result / norm).astype(out_dtype)
    return xr.DataArray(result, dims=("qx", "qy"), coords=_detector_coords(cube),
                        name=f"{method}_diffraction",
                        attrs={"long_name": f"{method} diffraction pattern"})


def _diffraction_numpy(data: np.ndarray, weights: np.ndarray | None,
                       offsets: np.ndarray | None, method: str, subpixel: bool
                       ) -> np.ndarray:
    if method == "mean" or data.shape[0] < 4 or data.nbytes < 64 * 2**20:
        return _diffraction_partial(data, weights, offsets, method, subpixel)[0, 0]
    # max: numpy's reduction is single-threaded; split the scan over two threads
    from concurrent.futures import ThreadPoolExecutor

    half = data.shape[0] // 2
    parts = [(slice(0, half)), (slice(half, None))]
    with ThreadPoolExecutor(2) as pool:
        res = list(pool.map(lambda s: _diffraction_partial(
            data[s], None if weights is None else weights[s],
            None if offsets is None else offsets[s], method, subpixel)[0, 0], parts))
    return np.maximum(res[0], res[1])


def _median(data: Any, weights: np.ndarray | None, offsets: np.ndarray | None,
            subpixel: bool) -> Any:
    nrx, nry, nqx, nqy = data.shape
    stack = data.reshape(nrx * nry, nqx, nqy)
    if weights is not None:
        keep = np.flatnonzero(weights.reshape(-1))
        stack = stack[keep]
        offsets = None if offsets is None else offsets.reshape(-1, 2)[keep]
    elif offsets is not None:
        offsets = offsets.reshape(-1, 2)
    if isinstance(stack, da.Array):
        stack = stack.rechunk({1: -1, 2: -1})
        if offsets is not None:
            off = da.from_array(offsets, chunks=(stack.chunks[0], (2,)))
            stack = da.blockwise(_shifted, "nkl", stack, "nkl", off, "nc", subpixel, None,
                                 1, None, concatenate=True, dtype=_kernels.work_dtype(stack.dtype)
                                 if subpixel else stack.dtype)
        stack = stack.rechunk({0: -1, 1: "auto", 2: -1})
        return da.map_blocks(lambda b: np.median(b, axis=0)
                             .astype(_kernels.work_dtype(b.dtype)), stack, drop_axis=0,
                             dtype=_kernels.work_dtype(stack.dtype))
    stack = _shifted(np.asarray(stack), offsets, subpixel)
    return np.median(stack, axis=0).astype(_kernels.work_dtype(stack.dtype))
