"""Measurement preprocessing for ptychography: from a file or array to calibrated patterns.

Every function here is pure (it returns a new DataArray and mutates nothing) and takes
either a datacube ``(rx, ry, qx, qy)`` (see :mod:`stem4d.datacube`) or a stack of
patterns ``("scan", "qx", "qy")`` made by :func:`to_stack`, and returns the same kind.
numpy data give numpy results; dask data give lazy results for every per-pattern step.
Steps that need a global number (the minimum, the mean pattern, the mean total
intensity) compute that small reduction (one pass over the data) and say so.

The chain and its order
-----------------------
:func:`prepare_measurements` applies, in this fixed order (PtyRAD's order):

1. **load** – a path (read with :func:`stem4d.open`), a numpy/dask array or a DataArray;
2. **permute** – reorder the axes of the array *as stored* (``numpy.transpose`` order);
3. **reshape** – ``numpy.reshape`` of the array (e.g. ``(-1, ky, kx)``);
4. **to a cube** – a 3-D ``(N, qx, qy)`` array is split into the scan ``scan_shape =
   (slow, fast)`` (raster order, fast axis fastest); data become float32;
5. **origin** – unless the input already has one, ``q = 0`` is put on the detector centre
   pixel ``(n // 2, n // 2)`` of the data as loaded (the zero frequency of an
   ``fftshift``-ed pattern); it then moves with the data;
6. **flipT** – ``[flipud, fliplr, transpose]`` of every pattern (:func:`flip_transpose`);
7. **calibration** – :func:`stem4d.calibrate_q` on the full (uncropped) detector, so
   ``fitRBF`` sees the whole bright-field disk; later steps carry the pixel size along
   (crop and pad keep it, resampling by ``f`` divides it by ``f``);
8. **crop** in scan and detector (:func:`crop`);
9. **negative values** (:func:`remove_negative`, always: default ``"clip_neg"``);
10. **normalization** (:func:`normalize`, always: default ``"max_at_one"``);
11. **pad** the detector (:func:`pad`);
12. **resample** the detector (:func:`resample`);
13. **source-size blur** across scan positions (:func:`source_size_blur`);
14. **detector blur** of each pattern (:func:`detector_blur`);
15. **Poisson noise** at a dose (:func:`poisson_noise`);
16. a final clip of negative values and a cast to float32; the result is a stack
    ``("scan", "qx", "qy")`` (default) or the 4D cube.

Axes and orientation
--------------------
PtyRAD names its 4D input ``(Ry, Rx, ky, kx)``: slow scan, fast scan, detector rows,
detector columns. stem4d's cube is ``(rx, ry, qx, qy)`` in the same order, so
``Ry ↔ rx`` (slow), ``Rx ↔ ry`` (fast), ``ky ↔ qx`` (rows) and ``kx ↔ qy`` (columns):
the letters cross, the axis positions do not. A PtyRAD ``(N, ky, kx)`` stack is a
stem4d ``("scan", "qx", "qy")`` stack, scan index ``i = i_rx * n_ry + i_ry``.
``flipT = [flipud, fliplr, transpose]`` (PtychoShelves/PtyRAD) is, in that order,
``flip_q(·, "qx")``, ``flip_q(·, "qy")``, ``transpose_q(·)``: numpy's
``flip(axis=-2)``, ``flip(axis=-1)``, ``swapaxes(-2, -1)`` on the patterns, with the
origin and the scan-to-detector orientation following the data.

Stacks
------
A stack is a DataArray with dims ``("scan", "qx", "qy")``, the detector coordinates
``qx``/``qy``, non-index coordinates ``rx(scan)``/``ry(scan)`` (the raster position of
each pattern, Å or pixels, ``attrs["step"]`` holds the step) and the scan shape as the
0-d integer coordinates ``n_rx`` (slow) and ``n_ry`` (fast). 0-d coordinates of the cube
(``beam_energy``, ``convergence_semiangle``, ``scan_rotation``, ...) are kept.

Detector calibration
--------------------
``stem4d.calibrate_q`` (the one implementation, in :mod:`stem4d.calibrate`) sets square
detector pixels of ``dk`` (1/Å per pixel) from one
of PtyRAD's modes, with ``N`` the number of detector pixels (square detector), λ the
relativistic wavelength (Å) and α the convergence semiangle (mrad):

=============  =========  ============================================================
mode           value      pixel size
=============  =========  ============================================================
``dx``         Å          real-space pixel of the reconstruction; ``dk = 1 / (N dx)``
``dk``         1/Å        ``dk``
``kMax``       1/Å        half-width of the detector, ``kMax = N dk / 2`` (so
                          ``dx = 1 / (2 kMax)``): ``dk = 2 kMax / N``
``da``         mrad       ``dk = da / (1000 λ)``
``angleMax``   mrad       half-width in angle, ``angleMax = N da / 2``
``n_alpha``    1          ``angleMax = n_alpha · α``
``RBF``        pixels     bright-field disk radius: ``da = α / RBF``
``fitRBF``     (none)     RBF measured on the mean pattern (bright-field flux)
=============  =========  ============================================================

Intensity bookkeeping
---------------------
:func:`normalize` divides the data by a constant and records the cumulative divisor in
the 0-d coordinate ``intensity_scale`` (raw intensity = data × ``intensity_scale``).
:func:`poisson_noise` records ``electrons_per_unit`` (electron counts = data ×
``electrons_per_unit``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .._dask import is_dask
from ..calibrate import _CALIBRATION_MODES, calibrate_q
from ..datacube import (
    CUBE_DIMS,
    _axis_coord,
    _axis_origin_px,
    _axis_step,
    datacube,
    flip_q,
    set_beam,
    set_origin,
    set_r_calibration,
    transpose_q,
    validate_cube,
)
from ..preprocess import crop_q, crop_r, pad_q, resample_q

__all__ = [
    "STACK_DIMS",
    "CALIBRATION_MODES",
    "NEGATIVE_MODES",
    "NORMALIZATION_MODES",
    "PAD_KINDS",
    "permute",
    "reshape",
    "as_cube",
    "to_stack",
    "to_cube",
    "scan_shape",
    "flip_transpose",
    "crop",
    "remove_negative",
    "normalize",
    "fit_background",
    "pad",
    "resample",
    "source_size_blur",
    "detector_blur",
    "poisson_noise",
    "prepare_measurements",
    "prepare_from_params",
]

STACK_DIMS: tuple[str, str, str] = ("scan", "qx", "qy")
CALIBRATION_MODES = _CALIBRATION_MODES
NEGATIVE_MODES = ("clip_neg", "subtract_min", "clip_value", "subtract_value")
NORMALIZATION_MODES = (
    "max_at_one", "mean_at_one", "sum_to_one", "max_total_intensity",
    "target_intensity", "divide_const",
)
PAD_KINDS = ("constant", "edge", "linear_ramp", "exp", "power")
_EXEC_MODES = ("precompute", "on_the_fly")
_TRUNCATE = 4.0  # Gaussian kernels reach 4 standard deviations (scipy's default)


# ====================================================================== checking
def _kind(meas: Any, argname: str = "meas") -> str:
    """``"cube"`` or ``"stack"``; a clear error for anything else."""
    if not isinstance(meas, xr.DataArray):
        raise TypeError(
            f"{argname} must be an xarray.DataArray with dims {CUBE_DIMS} (a datacube) "
            f"or {STACK_DIMS} (a stack), got {type(meas).__name__}"
        )
    dims = tuple(meas.dims)
    if dims == CUBE_DIMS:
        validate_cube(meas, argname)
        return "cube"
    if dims == STACK_DIMS:
        for d in ("qx", "qy"):
            if d not in meas.coords:
                raise ValueError(f"{argname} has no {d!r} coordinate: build it with to_stack")
        return "stack"
    raise ValueError(
        f"{argname} must have dims {CUBE_DIMS} or {STACK_DIMS}, got {dims}"
    )


def _positive(value: Any, argname: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        what = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{argname} must be a {what} finite number, got {value!r}")
    return v


def _choice(value: Any, allowed: Sequence[str], argname: str) -> str:
    if value not in allowed:
        raise ValueError(f"{argname} must be one of {list(allowed)}, got {value!r}")
    return value


def _work_dtype(dtype: Any) -> np.dtype:
    """float32, or float64 for float64 input."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _compute(x: Any) -> Any:
    return x.compute() if is_dask(x) else x


def _with_data(meas: xr.DataArray, data: Any) -> xr.DataArray:
    """``meas`` with new data of the same shape (coordinates, attrs and name kept)."""
    return meas.copy(deep=False, data=data)


def _mean_pattern(meas: xr.DataArray) -> np.ndarray:
    """Mean diffraction pattern as a float64 numpy array (computed for dask data)."""
    lead = tuple(range(meas.ndim - 2))
    return np.asarray(_compute(meas.data.mean(axis=lead, dtype=np.float64)))


def _on_cube(meas: xr.DataArray, func: Callable[[xr.DataArray], xr.DataArray],
             argname: str = "meas") -> xr.DataArray:
    """Apply a cube function to a cube, or to a stack through :func:`to_cube`."""
    if _kind(meas, argname) == "cube":
        return func(meas)
    return to_stack(func(to_cube(meas)))


def _map_patterns(data: Any, func: Callable[[np.ndarray], np.ndarray],
                  dtype: np.dtype) -> Any:
    """Apply a shape-preserving per-pattern ``func`` to numpy or (lazily) dask data."""
    if not is_dask(data):
        return func(np.asarray(data))
    if len(data.chunks[-1]) > 1 or len(data.chunks[-2]) > 1:
        data = data.rechunk({data.ndim - 2: -1, data.ndim - 1: -1})
    return data.map_blocks(func, dtype=dtype, meta=np.empty((0,) * data.ndim, dtype))


def _as_lazy(meas: xr.DataArray, chunk_size: int) -> xr.DataArray:
    """``meas`` backed by dask (chunks of about ``chunk_size`` patterns), if it is not."""
    if is_dask(meas.data):
        return meas
    import dask.array as da

    if meas.ndim == 4:
        rows = max(1, chunk_size // max(meas.sizes["ry"], 1))
        chunks: tuple = (rows, -1, -1, -1)
    else:
        chunks = (chunk_size, -1, -1)
    return _with_data(meas, da.from_array(np.asarray(meas.data), chunks=chunks))


def _scan_step_angstrom(meas: xr.DataArray, argname: str) -> tuple[float, float]:
    """Scan step (along rx, along ry) in Å of a cube or stack; error if uncalibrated."""
    for dim in ("rx", "ry"):
        if dim not in meas.coords or meas.coords[dim].attrs.get("units") != "Å":
            raise ValueError(
                f"{argname} needs the scan step in Å: meas has no {dim!r} coordinate in Å "
                "(set it with stem4d.set_r_calibration, or prepare_measurements("
                "scan_step=...))"
            )
    if meas.dims[0] == "rx":
        return _axis_step(meas, "rx"), _axis_step(meas, "ry")
    return (float(meas.coords["rx"].attrs.get("step", 1.0)),
            float(meas.coords["ry"].attrs.get("step", 1.0)))


# ==================================================================== raw arrays
def permute(data: Any, order: Sequence[int]) -> Any:
    """Reorder the axes of a raw array, as :func:`numpy.transpose` (lazy for dask).

    Parameters
    ----------
    data
        numpy or dask array as stored (a DataArray's ``.data`` is used).
    order
        A permutation of ``range(data.ndim)``; e.g. ``(2, 3, 0, 1)`` turns
        ``(ky, kx, Ry, Rx)`` into ``(Ry, Rx, ky, kx)``.
    """
    data = _raw(data)
    try:
        order_t = tuple(int(i) for i in order)
    except (TypeError, ValueError):
        raise TypeError(f"permute must be a sequence of axis indices, got {order!r}") from None
    if sorted(order_t) != list(range(data.ndim)):
        raise ValueError(
            f"permute must be a permutation of {list(range(data.ndim))} for the "
            f"{data.ndim}-D data of shape {tuple(data.shape)}, got {list(order_t)}"
        )
    return data.transpose(order_t)


def reshape(data: Any, shape: Sequence[int]) -> Any:
    """Reshape a raw array, as :func:`numpy.reshape` (one ``-1`` allowed; lazy for dask).

    ``(-1, ky, kx)`` flattens a 4D ``(slow, fast, ky, kx)`` scan into ``(N, ky, kx)``;
    ``(slow, fast, ky, kx)`` splits a flat scan (raster order, fast axis fastest).
    """
    data = _raw(data)
    try:
        shape_t = tuple(int(i) for i in shape)
    except (TypeError, ValueError):
        raise TypeError(f"reshape must be a sequence of ints, got {shape!r}") from None
    if len(shape_t) not in (3, 4) or shape_t.count(-1) > 1 or any(
            s < 1 and s != -1 for s in shape_t):
        raise ValueError(
            f"reshape must be 3 or 4 positive ints (one may be -1), got {list(shape)}"
        )
    known = math.prod(s for s in shape_t if s != -1)
    if (-1 in shape_t and data.size % known) or (-1 not in shape_t and known != data.size):
        raise ValueError(
            f"reshape {list(shape_t)} does not fit the data of shape {tuple(data.shape)} "
            f"({data.size} values)"
        )
    return data.reshape(shape_t)


def _raw(data: Any) -> Any:
    if isinstance(data, xr.DataArray):
        data = data.data
    if not (hasattr(data, "shape") and hasattr(data, "dtype")):
        data = np.asarray(data)
    if not np.issubdtype(np.dtype(data.dtype), np.number):
        raise TypeError(f"the measurements must hold numbers, got dtype {data.dtype}")
    return data


def as_cube(
    data: Any,
    scan_shape: Sequence[int] | None = None,
    **calibration: Any,
) -> xr.DataArray:
    """A float cube ``(rx, ry, qx, qy)`` from a raw 4D array or a 3D ``(N, qx, qy)`` one.

    Parameters
    ----------
    data
        numpy or dask array: ``(slow, fast, rows, cols)`` or ``(N, rows, cols)``.
    scan_shape
        ``(slow, fast)`` = ``(n_rx, n_ry)``; required for 3-D data (raster order, fast
        axis fastest), checked against 4-D data.
    **calibration
        Keywords of :func:`stem4d.datacube` (``r_step`` Å, ``q_step``, ``beam_energy``
        eV, ``convergence_semiangle`` mrad, ...).

    Returns
    -------
    Datacube of dtype float32 (float64 input stays float64).
    """
    data = _raw(data)
    if data.ndim == 3:
        if scan_shape is None:
            raise ValueError(
                f"scan_shape=(slow, fast) is needed to split the 3-D data of shape "
                f"{tuple(data.shape)} (N, qx, qy) into a scan"
            )
        shape = _scan_shape_arg(scan_shape)
        if shape[0] * shape[1] != data.shape[0]:
            raise ValueError(
                f"scan_shape {shape} must multiply to the number of patterns "
                f"{data.shape[0]}, got {shape[0] * shape[1]}"
            )
        data = data.reshape(shape + tuple(data.shape[1:]))
    elif data.ndim == 4:
        if scan_shape is not None and _scan_shape_arg(scan_shape) != tuple(data.shape[:2]):
            raise ValueError(
                f"scan_shape {tuple(scan_shape)} does not match the scan axes "
                f"{tuple(data.shape[:2])} of the 4-D data"
            )
    else:
        raise ValueError(
            "the measurements must be 4-D (slow, fast, qx, qy) or 3-D (N, qx, qy) after "
            f"permute/reshape, got shape {tuple(data.shape)}"
        )
    data = data.astype(_work_dtype(data.dtype), copy=False)
    return datacube(data, **calibration)


def _scan_shape_arg(value: Any) -> tuple[int, int]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"scan_shape must be (slow, fast) ints, got {value!r}") from None
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"scan_shape must be two positive ints (slow, fast), got {value!r}")
    return shape


# ======================================================================== stacks
def to_stack(cube: xr.DataArray) -> xr.DataArray:
    """Flatten a cube ``(rx, ry, qx, qy)`` into a stack ``("scan", "qx", "qy")``.

    Scan index ``i = i_rx * n_ry + i_ry`` (raster order, ``ry`` fastest, as PtyRAD's
    ``(N, ky, kx)``). The stack keeps the detector coordinates, gets ``rx(scan)`` and
    ``ry(scan)`` (positions, with ``attrs["step"]``), the scan shape as the 0-d
    coordinates ``n_rx``/``n_ry``, per-position ``qx0``/``qy0`` flattened, and every
    0-d coordinate. Lazy for dask data.
    """
    validate_cube(cube, "cube")
    nrx, nry, nqx, nqy = (cube.sizes[d] for d in CUBE_DIMS)
    data = cube.data.reshape((nrx * nry, nqx, nqy))
    coords: dict[str, Any] = {"qx": cube.coords["qx"].variable, "qy": cube.coords["qy"].variable}
    for dim, values in (("rx", np.repeat(cube.coords["rx"].values, nry)),
                        ("ry", np.tile(cube.coords["ry"].values, nrx))):
        attrs = dict(cube.coords[dim].attrs, step=_axis_step(cube, dim))
        coords[dim] = xr.Variable(("scan",), values, attrs=attrs)
    for name in ("qx0", "qy0"):
        if name in cube.coords:
            var = cube.coords[name].variable.transpose("rx", "ry")
            coords[name] = xr.Variable(("scan",), np.asarray(var.values).reshape(-1),
                                       attrs=dict(var.attrs))
    for name, var in cube.coords.items():
        if var.ndim == 0 and name not in ("n_rx", "n_ry"):
            coords[name] = var.variable
    coords["n_rx"] = xr.Variable((), nrx, attrs={"units": "positions", "axis": "slow"})
    coords["n_ry"] = xr.Variable((), nry, attrs={"units": "positions", "axis": "fast"})
    return xr.DataArray(data, dims=STACK_DIMS, coords=coords, name=cube.name,
                        attrs=dict(cube.attrs))


def scan_shape(meas: xr.DataArray) -> tuple[int, int]:
    """``(n_rx, n_ry)`` (slow, fast) of a cube or of a stack made by :func:`to_stack`."""
    if _kind(meas) == "cube":
        return meas.sizes["rx"], meas.sizes["ry"]
    if "n_rx" not in meas.coords or "n_ry" not in meas.coords:
        raise ValueError(
            "meas is a stack without its scan shape (0-d coordinates 'n_rx', 'n_ry'): "
            "make it with to_stack, or use to_cube(meas, scan_shape=(slow, fast))"
        )
    return int(meas.coords["n_rx"]), int(meas.coords["n_ry"])


def to_cube(stack: xr.DataArray, scan_shape: Sequence[int] | None = None) -> xr.DataArray:
    """Inverse of :func:`to_stack`: a cube ``(rx, ry, qx, qy)`` from a stack.

    Parameters
    ----------
    stack
        DataArray ``("scan", "qx", "qy")`` in raster order.
    scan_shape
        ``(slow, fast)``; default: the stack's ``n_rx``/``n_ry`` coordinates.
    """
    if _kind(stack, "stack") != "stack":
        raise ValueError(f"stack must have dims {STACK_DIMS}, got {tuple(stack.dims)}")
    if scan_shape is None:
        if "n_rx" not in stack.coords or "n_ry" not in stack.coords:
            raise ValueError(
                "stack has no scan shape (0-d coordinates 'n_rx', 'n_ry'): pass "
                "scan_shape=(slow, fast)"
            )
        shape = (int(stack.coords["n_rx"]), int(stack.coords["n_ry"]))
    else:
        shape = _scan_shape_arg(scan_shape)
    if shape[0] * shape[1] != stack.sizes["scan"]:
        raise ValueError(
            f"scan_shape {shape} must multiply to the number of patterns "
            f"{stack.sizes['scan']}"
        )
    nqx, nqy = stack.sizes["qx"], stack.sizes["qy"]
    data = stack.data.reshape(shape + (nqx, nqy))
    coords: dict[str, Any] = {"qx": stack.coords["qx"].variable, "qy": stack.coords["qy"].variable}
    for dim, n, pick in (("rx", shape[0], slice(None, None, shape[1])),
                         ("ry", shape[1], slice(0, shape[1]))):
        if dim in stack.coords:
            var = stack.coords[dim].variable
            coords[dim] = xr.Variable((dim,), np.asarray(var.values)[pick],
                                      attrs=dict(var.attrs))
        else:
            coords[dim] = _axis_coord(dim, n, 1.0, 0.0, "pixels")
    for name in ("qx0", "qy0"):
        if name in stack.coords:
            var = stack.coords[name].variable
            coords[name] = xr.Variable(("rx", "ry"), np.asarray(var.values).reshape(shape),
                                       attrs=dict(var.attrs))
    for name, var in stack.coords.items():
        if var.ndim == 0 and name not in ("n_rx", "n_ry"):
            coords[name] = var.variable
    return xr.DataArray(data, dims=CUBE_DIMS, coords=coords, name=stack.name,
                        attrs=dict(stack.attrs))


# =================================================================== orientation
def flip_transpose(meas: xr.DataArray, flipT: Sequence[int] | None) -> xr.DataArray:
    """PtyRAD's ``meas_flipT = [flipud, fliplr, transpose]`` on every pattern.

    Applied in that order: ``flipud`` reverses the detector rows (``qx``, PtyRAD's
    ``ky``), ``fliplr`` the columns (``qy``, PtyRAD's ``kx``), then ``transpose`` swaps
    them; i.e. numpy ``flip(axis=-2)``, ``flip(axis=-1)``, ``swapaxes(-2, -1)``. The
    origin and the scan-to-detector orientation follow the data (see
    :func:`stem4d.flip_q`, :func:`stem4d.transpose_q`); coordinates stay ascending.

    Parameters
    ----------
    meas
        Cube or stack.
    flipT
        Three 0/1 flags, or None (no change).
    """
    _kind(meas)
    if flipT is None:
        return meas.copy(deep=False)
    try:
        flags = [int(v) for v in flipT]
    except (TypeError, ValueError):
        raise TypeError(f"flipT must be three 0/1 flags, got {flipT!r}") from None
    if len(flags) != 3 or any(f not in (0, 1) for f in flags):
        raise ValueError(f"flipT must be three 0/1 flags [flipud, fliplr, transpose], "
                         f"got {flipT!r}")

    def apply(cube: xr.DataArray) -> xr.DataArray:
        out = cube
        if flags[0]:
            out = flip_q(out, "qx")
        if flags[1]:
            out = flip_q(out, "qy")
        if flags[2]:
            out = transpose_q(out)
        return out

    return _on_cube(meas, apply)


# ========================================================================== crop
def crop(
    meas: xr.DataArray,
    rx: tuple[int | None, int | None] | None = None,
    ry: tuple[int | None, int | None] | None = None,
    qx: tuple[int | None, int | None] | None = None,
    qy: tuple[int | None, int | None] | None = None,
) -> xr.DataArray:
    """Crop the scan and the detector (PtyRAD's ``meas_crop``).

    Parameters
    ----------
    meas
        Cube or stack (a stack needs its scan shape).
    rx, ry
        ``(start, stop)`` scan indices along the slow/fast axis (PtyRAD's ``N_slow``,
        ``N_fast``); None keeps the axis.
    qx, qy
        ``(start, stop)`` detector pixel indices along rows/columns (PtyRAD's ``ky``,
        ``kx``); None keeps the axis.

    Returns
    -------
    Cropped cube or stack; kept pixels/positions keep their coordinates, so the pixel
    size and ``q = 0`` are unchanged (see :func:`stem4d.crop_q`, :func:`stem4d.crop_r`).
    """
    def apply(cube: xr.DataArray) -> xr.DataArray:
        out = cube
        if rx is not None or ry is not None:
            out = crop_r(out, rx, ry)
        if qx is not None or qy is not None:
            out = crop_q(out, qx, qy)
        return out

    return _on_cube(meas, apply)


# =============================================================== negative values
def remove_negative(
    meas: xr.DataArray,
    mode: str = "clip_neg",
    value: float | None = None,
    *,
    force: bool = False,
) -> xr.DataArray:
    """Remove negative intensities (PtyRAD's ``meas_remove_neg_values``).

    Parameters
    ----------
    meas
        Cube or stack.
    mode
        ``"clip_neg"``: negative values become 0; ``"subtract_min"``: subtract the
        dataset minimum (when it is negative); ``"clip_value"``: values below ``value``
        become 0; ``"subtract_value"``: subtract ``value`` from everything.
    value
        Threshold or offset for ``"clip_value"``/``"subtract_value"``, in the data's
        intensity units.
    force
        Apply ``mode`` even when the data hold no negative value (otherwise such data
        are returned unchanged).

    Returns
    -------
    Float data (float32, float64 stays) with no negative value: whatever ``mode`` leaves
    negative is clipped to 0. The check for negatives (and ``subtract_min``'s minimum)
    computes one reduction of dask data; the result stays lazy.
    """
    _kind(meas)
    _choice(mode, NEGATIVE_MODES, "mode")
    if mode in ("clip_value", "subtract_value"):
        if value is None:
            raise ValueError(f"mode={mode!r} needs value= (intensity units)")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value!r}")
    data = meas.data.astype(_work_dtype(meas.dtype), copy=False)
    minimum = float(_compute(data.min()))
    if not math.isfinite(minimum):
        raise ValueError("meas holds NaN or infinite values: remove them first")
    if minimum >= 0 and not force:
        return _with_data(meas, data)
    if mode == "clip_neg":
        pass  # the final clip does it
    elif mode == "subtract_min":
        data = data - data.dtype.type(minimum)
    elif mode == "clip_value":
        data = data * (data >= value)
    else:
        data = data - data.dtype.type(value)
    data = _clip_negative(data)
    return _with_data(meas, data)


def _clip_negative(data: Any) -> Any:
    if is_dask(data):
        import dask.array as da

        return da.maximum(data, data.dtype.type(0))
    return np.maximum(data, data.dtype.type(0))


# ================================================================= normalization
def normalize(
    meas: xr.DataArray,
    mode: str = "max_at_one",
    value: float | None = None,
) -> xr.DataArray:
    """Divide the intensities by one constant (PtyRAD's ``meas_normalization``).

    Parameters
    ----------
    meas
        Cube or stack.
    mode
        What becomes 1 (or ``value``):

        * ``"max_at_one"``: the maximum of the mean pattern;
        * ``"mean_at_one"``: the mean of the mean pattern (mean pixel value);
        * ``"sum_to_one"``: the sum of the mean pattern (= mean total intensity per
          pattern);
        * ``"max_total_intensity"``: the largest total intensity of one pattern
          (the brightest pattern, ideally vacuum, sums to 1);
        * ``"target_intensity"``: the mean total intensity per pattern becomes ``value``;
        * ``"divide_const"``: divide by ``value``.
    value
        Target (``"target_intensity"``) or divisor (``"divide_const"``), intensity units.

    Returns
    -------
    Float data divided by the constant, with the 0-d coordinate ``intensity_scale``
    multiplied by it (raw intensity = data × ``intensity_scale``). The constant comes
    from one reduction (computed for dask data); the division stays lazy.
    """
    _kind(meas)
    _choice(mode, NORMALIZATION_MODES, "mode")
    if mode in ("target_intensity", "divide_const"):
        if value is None:
            raise ValueError(f"mode={mode!r} needs value= (intensity units)")
        value = _positive(value, "value")
    data = meas.data.astype(_work_dtype(meas.dtype), copy=False)
    if mode == "divide_const":
        const = value
    elif mode == "max_total_intensity":
        lead = tuple(range(meas.ndim - 2))
        totals = data.sum(axis=(-2, -1), dtype=np.float64)
        const = float(_compute(totals.max(axis=lead)))
    else:
        mean = _mean_pattern(meas)
        const = {"max_at_one": mean.max(), "mean_at_one": mean.mean(),
                 "sum_to_one": mean.sum(),
                 "target_intensity": mean.sum() / (value or 1.0)}[mode]
        const = float(const)
    if not math.isfinite(const) or const <= 0:
        raise ValueError(
            f"cannot normalize with mode={mode!r}: the normalization constant is {const!r} "
            "(is meas empty, all zero or NaN?)"
        )
    out = _with_data(meas, data / data.dtype.type(const))
    previous = float(meas.coords["intensity_scale"]) if "intensity_scale" in meas.coords else 1.0
    return out.assign_coords(intensity_scale=xr.Variable(
        (), previous * const,
        attrs={"units": "raw intensity per unit", "long_name": "raw = data * intensity_scale"},
    ))


# ======================================================================= padding
def _center_px(meas: xr.DataArray, center: Any) -> tuple[float, float]:
    """Detector position of q = 0 in pixels, or the centre pixel when no origin is set."""
    if center is not None:
        try:
            cx, cy = (float(c) for c in center)
        except (TypeError, ValueError):
            raise TypeError(f"center must be (row, column) pixels, got {center!r}") from None
        return cx, cy
    ox, oy = _axis_origin_px(meas, "qx"), _axis_origin_px(meas, "qy")
    if ox == 0 and oy == 0:  # no origin set: the detector centre
        return float(meas.sizes["qx"] // 2), float(meas.sizes["qy"] // 2)
    return ox, oy


def _radius(shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    i = np.arange(shape[0])[:, None] - center[0]
    j = np.arange(shape[1])[None, :] - center[1]
    return np.sqrt(i**2 + j**2) + 1e-10


def fit_background(
    pattern: Any,
    kind: str = "power",
    threshold: float = 70.0,
    *,
    center: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Fit the radial fall-off of a pattern's tail (PtyRAD's ``meas_pad`` fit).

    Pixels whose value is above the ``threshold`` percentile (the bright-field disk,
    strong Bragg disks) are excluded; the amplitude ``√I`` of the others is fitted by
    least squares with ``α r^-β`` (``"power"``) or ``α exp(-β r)`` (``"exp"``), ``r`` the
    distance from ``center`` in pixels, as PtyRAD does. Returned as the intensity
    model ``I(r) = a r^-b`` or ``a exp(-b r)`` (``a = α²``, ``b = 2β``).

    Parameters
    ----------
    pattern
        2-D array or ``(qx, qy)`` DataArray (e.g. the mean pattern); a cube or stack is
        averaged first.
    kind
        ``"power"`` or ``"exp"``.
    threshold
        Percentile (0-100) above which pixels are excluded from the fit.
    center
        ``(row, column)`` of ``r = 0``, pixels; default the origin of a DataArray's q
        coordinates, else (or when no origin is set) the pixel ``(n // 2, n // 2)``.

    Returns
    -------
    ``(a, b)``: ``a`` in the pattern's intensity units (at ``r = 1`` pixel for
    ``"power"``, at ``r = 0`` for ``"exp"``); ``b`` dimensionless (power) or per pixel
    (exp).
    """
    from scipy.optimize import curve_fit

    _choice(kind, ("power", "exp"), "kind")
    thr = float(threshold)
    if not 0 < thr <= 100:
        raise ValueError(f"threshold must be a percentile in (0, 100], got {threshold!r}")
    if isinstance(pattern, xr.DataArray):
        if pattern.ndim > 2:
            img = _mean_pattern(pattern)
        else:
            img = np.asarray(_compute(pattern.transpose("qx", "qy").data), dtype=np.float64)
        cen = _center_px(pattern, center)
    else:
        img = np.asarray(_compute(pattern), dtype=np.float64)
        if img.ndim != 2:
            raise ValueError(f"pattern must be 2-D (qx, qy), got shape {img.shape}")
        cen = (img.shape[0] // 2, img.shape[1] // 2) if center is None else tuple(center)
    amp = np.sqrt(np.clip(img, 0, None))
    mask = amp <= np.percentile(amp, thr)
    r = _radius(img.shape, cen)
    rm, am = r[mask], amp[mask]
    good = am > 0
    if good.sum() < 3:
        raise ValueError(
            "fit_background found fewer than 3 positive pixels below the threshold "
            f"percentile {thr}: raise threshold"
        )
    x = np.log(rm[good]) if kind == "power" else rm[good]
    slope, intercept = np.polyfit(x, np.log(am[good]), 1)
    p0 = [float(np.exp(intercept)), max(float(-slope), 1e-6)]

    def model(rr: np.ndarray, alpha: float, beta: float) -> np.ndarray:
        return alpha * (rr ** -beta if kind == "power" else np.exp(-beta * rr))

    try:
        popt, _ = curve_fit(model, rm, am, p0=p0, bounds=([0, 0], [np.inf, np.inf]),
                            maxfev=10000)
    except RuntimeError as err:
        raise ValueError(f"fit_background: the {kind} fit did not converge ({err})") from err
    return float(popt[0] ** 2), float(2 * popt[1])


def pad(
    meas: xr.DataArray,
    target: int | Sequence[int],
    kind: str = "power",
    *,
    value: float = 0.0,
    threshold: float = 70.0,
    mode: str = "precompute",
    center: Sequence[float] | None = None,
    chunk_size: int = 256,
) -> xr.DataArray:
    """Pad every pattern to ``target`` pixels with a background (PtyRAD's ``meas_pad``).

    The measured pixels are kept; the added border holds the same background in every
    pattern, made from the mean pattern (computed; one pass over dask data), as in
    PtyRAD (which works on the amplitude ``√I``):

    * ``"constant"``: intensity ``value``;
    * ``"edge"``: the edge pixels of the mean pattern, extended outwards;
    * ``"linear_ramp"``: the amplitude goes linearly from the mean pattern's edge to
      ``√value`` at the new border;
    * ``"exp"`` / ``"power"``: the tail of the mean pattern fitted by
      :func:`fit_background` (pixels above the ``threshold`` percentile excluded) and
      extended: ``a exp(-b r)`` / ``a r^-b``.

    Parameters
    ----------
    meas
        Cube or stack (its intensities already normalized, as the background is added
        in the same units).
    target
        New detector size ``N`` (or ``(Nqx, Nqy)``), ≥ the current size; ``(N - n) // 2``
        pixels go before, the rest after (as :func:`stem4d.pad_q`).
    kind
        One of ``"constant"``, ``"edge"``, ``"linear_ramp"``, ``"exp"``, ``"power"``.
    value
        Background intensity for ``"constant"``/``"linear_ramp"`` (≥ 0; PtyRAD's
        ``value`` is the amplitude, i.e. ``√value``).
    threshold
        Percentile for the ``"exp"``/``"power"`` fits.
    mode
        ``"precompute"``: pad now (numpy stays numpy, dask stays lazy);
        ``"on_the_fly"``: return dask-backed data (chunks of ``chunk_size`` patterns)
        padded only when a batch is read, so the padded array is never held whole.
    center
        ``(row, column)`` pixel of ``r = 0`` for the fits; default the origin (the
        detector centre when none is set).
    chunk_size
        Patterns per chunk for ``mode="on_the_fly"`` with numpy data.

    Returns
    -------
    Padded cube or stack; coordinates extended with the same pixel size.
    """
    _kind(meas)
    _choice(kind, PAD_KINDS, "kind")
    _choice(mode, _EXEC_MODES, "mode")
    value = _positive(value, "value", allow_zero=True)
    n = (meas.sizes["qx"], meas.sizes["qy"])
    tshape = _target_shape(target, n)
    widths = tuple(((t - m) // 2, t - m - (t - m) // 2) for t, m in zip(tshape, n, strict=True))
    src = _as_lazy(meas, chunk_size) if mode == "on_the_fly" else meas
    padded = _on_cube(src, lambda c: pad_q(c, output_size=tshape, mode="constant", value=0.0))
    if kind == "constant" and value == 0:
        return padded
    if kind == "constant":
        background = np.full(tshape, value)
    else:
        mean = _mean_pattern(meas)
        amp = np.sqrt(np.clip(mean, 0, None))
        if kind == "edge":
            background = np.pad(amp, widths, mode="edge") ** 2
        elif kind == "linear_ramp":
            background = np.pad(amp, widths, mode="linear_ramp",
                                end_values=math.sqrt(value)) ** 2
        else:
            cen = _center_px(meas, center)
            a, b = fit_background(mean, kind, threshold, center=cen)
            r = _radius(tshape, (cen[0] + widths[0][0], cen[1] + widths[1][0]))
            background = a * (r ** -b if kind == "power" else np.exp(-b * r))
    background = np.array(background, dtype=np.float64)
    background[widths[0][0]:widths[0][0] + n[0], widths[1][0]:widths[1][0] + n[1]] = 0
    background = background.astype(padded.dtype)
    return _with_data(padded, padded.data + background)


def _target_shape(target: Any, n: tuple[int, int]) -> tuple[int, int]:
    pair = (target, target) if np.ndim(target) == 0 else tuple(target)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise TypeError(f"target must be an int or a pair of ints (pixels), got {target!r}")
    out = (int(pair[0]), int(pair[1]))
    if out[0] < n[0] or out[1] < n[1]:
        raise ValueError(
            f"target {out} must be at least the detector size {n} (use crop to shrink)"
        )
    return out


# ==================================================================== resampling
def resample(
    meas: xr.DataArray,
    factor: float | Sequence[float],
    *,
    method: str = "bilinear",
    mode: str = "precompute",
    chunk_size: int = 256,
) -> xr.DataArray:
    """Resample the detector by ``factor`` (PtyRAD's ``meas_resample``).

    Parameters
    ----------
    meas
        Cube or stack.
    factor
        Zoom > 0 (one number, or ``(qx, qy)``): new size ``round(factor · n)``; 2 halves
        the pixel size (in 1/Å), so the reconstruction's field of view doubles and
        its pixel size ``dx`` is unchanged.
    method
        ``"bilinear"`` (default, as PtyRAD: no overshoot) or ``"fourier"``; see
        :func:`stem4d.resample_q`. Intensity per pixel is kept (sums scale by the
        pixel-count ratio).
    mode
        ``"precompute"`` or ``"on_the_fly"`` (dask-backed, resampled when a batch is
        read; see :func:`pad`).
    chunk_size
        Patterns per chunk for ``mode="on_the_fly"`` with numpy data.
    """
    _kind(meas)
    _choice(mode, _EXEC_MODES, "mode")
    src = _as_lazy(meas, chunk_size) if mode == "on_the_fly" else meas
    return _on_cube(src, lambda c: resample_q(c, factor=factor, method=method))


# ========================================================================= blurs
def detector_blur(meas: xr.DataArray, sigma: float) -> xr.DataArray:
    """Gaussian blur of every pattern (a detector point-spread function).

    Parameters
    ----------
    meas
        Cube or stack.
    sigma
        Standard deviation of the Gaussian, detector pixels (≥ 0; 0 changes nothing).
        Kernel truncated at 4 σ, edges mirrored (``scipy.ndimage.gaussian_filter``,
        ``mode="reflect"``), so each pattern's sum is kept.

    Returns
    -------
    Float data, lazy for dask (pattern by pattern).
    """
    from scipy.ndimage import gaussian_filter

    _kind(meas)
    s = _positive(sigma, "sigma", allow_zero=True)
    dtype = _work_dtype(meas.dtype)
    data = meas.data.astype(dtype, copy=False)
    if s == 0:
        return _with_data(meas, data)
    sig = (0.0,) * (meas.ndim - 2) + (s, s)

    def kernel(block: np.ndarray) -> np.ndarray:
        return gaussian_filter(block, sig, mode="reflect", truncate=_TRUNCATE).astype(dtype)

    return _with_data(meas, _map_patterns(data, kernel, dtype))


def source_size_blur(meas: xr.DataArray, sigma: float) -> xr.DataArray:
    """Gaussian blur across scan positions (partial spatial coherence, source size).

    Each pattern becomes a Gaussian-weighted mix of the patterns at nearby positions,
    the usual approximation of a finite effective source.

    Parameters
    ----------
    meas
        Cube, or stack with its scan shape; the scan step must be in Å.
    sigma
        Standard deviation of the source image in the specimen plane, Å (≥ 0); divided
        by the scan step along each axis. Truncated at 4 σ, edges mirrored
        (``scipy.ndimage.gaussian_filter`` over the two scan axes, ``mode="reflect"``).

    Returns
    -------
    Float data; lazy for dask (scan chunks overlap by the kernel radius).
    """
    _kind(meas)
    s = _positive(sigma, "sigma", allow_zero=True)
    step = _scan_step_angstrom(meas, "source_size_blur")
    sig = (s / step[0], s / step[1])

    def apply(cube: xr.DataArray) -> xr.DataArray:
        dtype = _work_dtype(cube.dtype)
        data = cube.data.astype(dtype, copy=False)
        if s == 0:
            return _with_data(cube, data)
        return _with_data(cube, _scan_gaussian(data, sig, dtype))

    return _on_cube(meas, apply)


def _scan_gaussian(data: Any, sig: tuple[float, float], dtype: np.dtype) -> Any:
    from scipy.ndimage import gaussian_filter

    full = (sig[0], sig[1], 0.0, 0.0)

    def kernel(block: np.ndarray) -> np.ndarray:
        return gaussian_filter(block, full, mode="reflect", truncate=_TRUNCATE).astype(dtype)

    if not is_dask(data):
        return kernel(np.asarray(data))
    import dask.array as da

    depth: dict[int, int] = {2: 0, 3: 0}
    rechunk: dict[int, int] = {}
    for ax in (0, 1):
        radius = int(_TRUNCATE * sig[ax] + 0.5)
        n = data.shape[ax]
        if radius == 0 or len(data.chunks[ax]) == 1:
            depth[ax] = 0
        elif radius >= min(data.chunks[ax]):  # every chunk must hold the overlap
            size = max(2 * radius, max(data.chunks[ax]))
            rechunk[ax] = n if (size >= n or n % size and n % size <= radius) else size
            depth[ax] = 0 if rechunk[ax] == n else radius
        else:
            depth[ax] = radius
    if rechunk:
        data = data.rechunk(rechunk)
    boundary = {0: "reflect", 1: "reflect", 2: "none", 3: "none"}
    return da.map_overlap(kernel, data, depth=depth, boundary=boundary, dtype=dtype,
                          meta=np.empty((0,) * 4, dtype), trim=True)


# ================================================================= Poisson noise
def poisson_noise(
    meas: xr.DataArray,
    dose: float,
    unit: str = "total_e_per_pattern",
    *,
    seed: int | None = None,
    keep_scale: bool = True,
) -> xr.DataArray:
    """Draw Poisson-distributed electron counts at a dose (PtyRAD's ``meas_add_poisson_noise``).

    The data are scaled so the *mean* total intensity per pattern equals the electrons
    per pattern ``E`` (one constant for all patterns, so relative intensities are kept),
    counts are drawn, and (``keep_scale``) scaled back to the input's units.

    Parameters
    ----------
    meas
        Cube or stack of non-negative intensities.
    dose
        ``E`` itself for ``unit="total_e_per_pattern"`` (electrons per pattern), or the
        areal dose in e/Å² for ``unit="e_per_A2"`` (``E = dose · step_rx · step_ry``,
        the scan step in Å; PtyRAD's spelling ``"e_per_Ang2"`` is accepted).
    seed
        Seed of the random generator (``numpy.random.default_rng``); dask data draw per
        chunk from ``(seed, chunk index)``, so a result does not depend on the order
        chunks are computed in (numpy and dask results differ for the same seed).
    keep_scale
        True: counts × (mean total / E), in the input's units (as PtyRAD); False: the
        counts themselves (electrons).

    Returns
    -------
    Float data (lazy for dask) with the 0-d coordinate ``electrons_per_unit`` (counts =
    data × ``electrons_per_unit``) and ``dose_e_per_pattern`` (``E``). The mean total
    intensity is computed (one pass over dask data).
    """
    _kind(meas)
    unit = "e_per_A2" if unit == "e_per_Ang2" else unit
    _choice(unit, ("total_e_per_pattern", "e_per_A2"), "unit")
    d = _positive(dose, "dose")
    if unit == "e_per_A2":
        sx, sy = _scan_step_angstrom(meas, "poisson_noise with unit='e_per_A2'")
        electrons = d * sx * sy
    else:
        electrons = d
    dtype = _work_dtype(meas.dtype)
    data = meas.data.astype(dtype, copy=False)
    n_patterns = math.prod(meas.shape[:-2])
    total, minimum = _compute(data.sum(dtype=np.float64)), _compute(data.min())
    total, minimum = float(total), float(minimum)
    mean_total = total / n_patterns
    if not math.isfinite(total) or mean_total <= 0:
        raise ValueError("meas must have a positive total intensity to add Poisson noise")
    if minimum < -1e-5 * abs(total / data.size):
        raise ValueError(
            f"meas must be non-negative to add Poisson noise, got a minimum of {minimum:.4g}: "
            "use remove_negative first"
        )
    to_counts = electrons / mean_total
    back = 1.0 / to_counts if keep_scale else 1.0
    entropy = np.random.SeedSequence(seed).entropy

    def draw(block: np.ndarray, block_id: tuple[int, ...] = ()) -> np.ndarray:
        rng = np.random.default_rng([entropy, *block_id]) if block_id else \
            np.random.default_rng(entropy)
        lam = np.clip(block.astype(np.float64), 0, None) * to_counts
        return (rng.poisson(lam) * back).astype(dtype)

    if is_dask(data):
        noisy = data.map_blocks(lambda b, block_info=None: draw(
            b, tuple(block_info[0]["chunk-location"]) if block_info else (0,)),
            dtype=dtype, meta=np.empty((0,) * data.ndim, dtype))
    else:
        noisy = draw(np.asarray(data))
    out = _with_data(meas, noisy)
    # a stale dose attr (the simulator's "none") goes: dose_e_per_pattern says it now
    out.attrs = {k: v for k, v in meas.attrs.items() if k != "dose"}
    return out.assign_coords(
        electrons_per_unit=xr.Variable((), 1.0 if not keep_scale else to_counts,
                                       attrs={"units": "electrons per unit",
                                              "long_name": "counts = data * electrons_per_unit"}),
        dose_e_per_pattern=xr.Variable((), electrons, attrs={"units": "electrons"}),
    )


# =================================================================== calibration
# ====================================================================== pipeline
# the pipeline's keyword arguments share these names
_permute, _reshape, _crop, _remove_negative = permute, reshape, crop, remove_negative
_pad, _resample, _detector_blur = pad, resample, detector_blur


# readers that take scan_shape= (flat pattern stacks); stem4d and py4DSTEM files carry
# their own scan shape, and a stored stack is reshaped by to_cube afterwards
_READERS_WITH_SCAN_SHAPE = ("npy", "empad", "hdf5")


def _load(source: Any, key: str | None, open_kwargs: Mapping[str, Any],
          scan_shape_: Any, raw_ops: bool) -> Any:
    """The source as a DataArray (cube/stack) or a raw array."""
    if isinstance(source, (str, os.PathLike)):
        from .. import io

        kwargs = dict(open_kwargs)
        if key is not None:
            kwargs["key"] = key
        if not raw_ops and scan_shape_ is not None \
                and io.detect_format(source, key=key) in _READERS_WITH_SCAN_SHAPE:
            kwargs.setdefault("scan_shape", tuple(scan_shape_))
        try:
            obj = io.open(source, **kwargs)
        except ValueError as err:
            if raw_ops and str(source).lower().endswith(".npy") and "3-D" in str(err):
                return np.load(source, mmap_mode="r", allow_pickle=False)
            raise
        if not isinstance(obj, xr.DataArray):
            raise ValueError(
                f"source {source!s} holds a {type(obj).__name__}, not one array of "
                "measurements: open it and pass the DataArray"
            )
        return obj
    if isinstance(source, xr.DataArray):
        return source
    if hasattr(source, "shape") and hasattr(source, "dtype"):
        return source
    if isinstance(source, (list, tuple)):
        return np.asarray(source)
    raise TypeError(
        "source must be a path, a numpy/dask array or an xarray.DataArray, got "
        f"{type(source).__name__}"
    )


def _opts(value: Any, argname: str, first: str) -> dict[str, Any]:
    """An option given as a dict, or as its first field alone."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return {first: value}


def prepare_measurements(
    source: Any,
    *,
    key: str | None = None,
    open_kwargs: Mapping[str, Any] | None = None,
    permute: Sequence[int] | None = None,
    reshape: Sequence[int] | None = None,
    scan_shape: Sequence[int] | None = None,
    scan_step: float | Sequence[float] | None = None,
    beam_energy: float | None = None,
    convergence_semiangle: float | None = None,
    flipT: Sequence[int] | None = None,
    center: str | Sequence[float] | None = "auto",
    calibration: Mapping[str, Any] | str | None = None,
    crop: Mapping[str, Any] | Sequence[Any] | None = None,
    remove_negative: Mapping[str, Any] | str | None = "clip_neg",
    normalization: Mapping[str, Any] | str | None = "max_at_one",
    pad: Mapping[str, Any] | None = None,
    resample: Mapping[str, Any] | float | None = None,
    source_size: float | None = None,
    detector_blur: float | None = None,
    poisson: Mapping[str, Any] | None = None,
    output: str = "stack",
) -> xr.DataArray:
    """Load measurements and apply the whole preprocessing chain (module docstring order).

    Parameters
    ----------
    source
        Path (any format :func:`stem4d.open` reads), numpy/dask array, or DataArray
        (cube ``(rx, ry, qx, qy)`` or stack ``("scan", "qx", "qy")``).
    key, open_kwargs
        Dataset key and other keywords for :func:`stem4d.open`.
    permute, reshape
        Applied to the array as stored (:func:`permute`, :func:`reshape`); a
        DataArray's 1-D coordinates are then dropped (its 0-d ones kept).
    scan_shape
        ``(slow, fast)`` positions: needed for 3-D data.
    scan_step
        Scan step, Å (one number or ``(rx, ry)``); default: the source's calibration.
    beam_energy, convergence_semiangle
        eV and mrad; default: the source's coordinates.
    flipT
        ``[flipud, fliplr, transpose]`` (:func:`flip_transpose`).
    center
        ``"auto"``: keep the source's origin, or, when none is set, put ``q = 0`` on the
        detector centre pixel ``(n // 2, n // 2)``; ``None``: leave the coordinates; or
        ``(row, column)`` pixels of the origin. Pixels of the data as loaded (after
        permute/reshape, before flipT; the origin then follows the flips).
    calibration
        ``{"mode": ..., "value": ...}`` (or a mode name alone, e.g. ``"fitRBF"``) for
        :func:`stem4d.calibrate_q`. Without it the source must already be calibrated in
        1/Å or mrad (converted to 1/Å).
    crop
        ``[[slow_i, slow_f], [fast_i, fast_f], [qx_i, qx_f], [qy_i, qy_f]]`` (PtyRAD's
        ``meas_crop``, any entry None) or a dict with keys ``rx``, ``ry``, ``qx``, ``qy``.
    remove_negative
        Mode name or dict of :func:`remove_negative` arguments; None skips it.
    normalization
        Mode name or dict of :func:`normalize` arguments; None skips it.
    pad
        Dict of :func:`pad` arguments (``target`` required, e.g.
        ``{"target": 128, "kind": "power", "threshold": 70}``).
    resample
        Zoom factor, or dict of :func:`resample` arguments (``factor`` required).
    source_size
        Source-size blur σ, Å (:func:`source_size_blur`).
    detector_blur
        Detector blur σ, pixels (:func:`detector_blur`).
    poisson
        Dict of :func:`poisson_noise` arguments (``dose`` required; ``unit``, ``seed``).
    output
        ``"stack"`` (default): ``("scan", "qx", "qy")`` (see :func:`to_stack`);
        ``"cube"``: ``(rx, ry, qx, qy)``.

    Returns
    -------
    Float32 DataArray with ``qx``/``qy`` in 1/Å, the scan positions and shape, the beam
    coordinates, ``intensity_scale`` and (with noise) ``electrons_per_unit``. Lazy when
    the source is dask-backed (or read lazily from a file), except for the small
    reductions the steps document (mean pattern, minimum, totals).
    """
    _choice(output, ("stack", "cube"), "output")
    raw_ops = permute is not None or reshape is not None
    obj = _load(source, key, open_kwargs or {}, scan_shape, raw_ops)

    # 2-4: raw array operations and the cube
    scalars: dict[str, xr.Variable] = {}
    if isinstance(obj, xr.DataArray) and not raw_ops:
        kind = _kind(obj, "source")
        cube = obj if kind == "cube" else to_cube(obj, scan_shape)
        cube = cube.astype(_work_dtype(cube.dtype), copy=False)
    else:
        if isinstance(obj, xr.DataArray):
            scalars = {k: v.variable for k, v in obj.coords.items() if v.ndim == 0}
        data = _raw(obj)
        if permute is not None:
            data = _permute(data, permute)
        if reshape is not None:
            data = _reshape(data, reshape)
        cube = as_cube(data, scan_shape).assign_coords(scalars)
    if scan_step is not None:
        cube = set_r_calibration(cube, scan_step, "Å")
    if beam_energy is not None or convergence_semiangle is not None:
        cube = set_beam(cube, beam_energy=beam_energy, convergence_semiangle=convergence_semiangle)

    # 5-7: origin (in the frame of the data as loaded), orientation, calibration
    if center is not None:
        if isinstance(center, str):
            _choice(center, ("auto",), "center")
            ox, oy = _axis_origin_px(cube, "qx"), _axis_origin_px(cube, "qy")
            if ox == 0 and oy == 0 and "qx0" not in cube.coords:
                cube = set_origin(cube, cube.sizes["qx"] // 2, cube.sizes["qy"] // 2)
        else:
            cx, cy = _center_px(cube, center)
            cube = set_origin(cube, cx, cy)
    cube = flip_transpose(cube, flipT)
    if calibration is not None:
        cal = _opts(calibration, "calibration", "mode")
        if "mode" not in cal:
            raise ValueError(f"calibration needs a 'mode' (one of {list(CALIBRATION_MODES)})")
        cal.pop("threshold", None)
        cube = calibrate_q(cube, cal.pop("mode"), cal.pop("value", None), units="1/Å", **cal)
    else:
        units = cube.coords["qx"].attrs.get("units")
        if units == "mrad":
            from ..datacube import convert_q_units

            cube = convert_q_units(cube, "1/Å")
        elif units != "1/Å":
            raise ValueError(
                "the detector is not calibrated (q in pixels): pass calibration="
                "{'mode': ..., 'value': ...} (modes " + ", ".join(CALIBRATION_MODES) + ")"
            )

    # 8-12: crop, negative values, normalization, pad, resample
    if crop is not None:
        if isinstance(crop, Mapping):
            unknown = set(crop) - {"rx", "ry", "qx", "qy"}
            if unknown:
                raise ValueError(f"crop keys must be rx, ry, qx, qy, got {sorted(unknown)}")
            ranges = dict(crop)
        else:
            if len(crop) != 4:
                raise ValueError(
                    "crop must be 4 ranges [[slow_i, slow_f], [fast_i, fast_f], [qx_i, qx_f], "
                    f"[qy_i, qy_f]] (None keeps an axis), got {crop!r}"
                )
            ranges = dict(zip(("rx", "ry", "qx", "qy"), crop, strict=True))
        ranges = {k: (tuple(v) if v is not None else None) for k, v in ranges.items()}
        cube = _crop(cube, **ranges)
    if remove_negative is not None:
        cube = _remove_negative(cube, **_opts(remove_negative, "remove_negative",
                                                          "mode"))
    if normalization is not None:
        cube = normalize(cube, **_opts(normalization, "normalization", "mode"))
    if pad is not None:
        opts = _opts(pad, "pad", "target")
        if "target" not in opts:
            raise ValueError("pad needs 'target' (the new detector size, pixels)")
        cube = _pad(cube, opts.pop("target"), **opts)
    if resample is not None:
        opts = _opts(resample, "resample", "factor")
        if "factor" not in opts:
            raise ValueError("resample needs 'factor' (zoom of the detector sampling)")
        cube = _resample(cube, opts.pop("factor"), **opts)

    # 13-16: simulated imperfections, final guard
    if source_size:
        cube = source_size_blur(cube, source_size)
    if detector_blur:
        cube = _detector_blur(cube, detector_blur)
    if poisson is not None:
        opts = _opts(poisson, "poisson", "dose")
        if "dose" not in opts:
            raise ValueError("poisson needs 'dose' (electrons per pattern, or e/Å² with "
                             "unit='e_per_A2')")
        cube = poisson_noise(cube, opts.pop("dose"), **opts)
    cube = _with_data(cube, _clip_negative(cube.data.astype(np.float32, copy=False)))
    return to_stack(cube) if output == "stack" else cube


def _selection(value: Any) -> Any:
    """YAML-style ``[[start, stop(, step)] | null, ...]`` as a tuple of slices."""
    if value is None or isinstance(value, tuple):
        return value
    return tuple(slice(None) if v is None else slice(*v) if isinstance(v, (list, tuple))
                 else v for v in value)


def prepare_from_params(
    params: Any,
    source: Any = None,
    *,
    base_dir: str | os.PathLike | None = None,
) -> xr.DataArray:
    """The measurements a parameter set describes, loaded and preprocessed.

    Parameters
    ----------
    params
        :class:`~stem4d.ptycho.params.PtychoParams` (or anything
        :func:`~stem4d.ptycho.params.load_params` accepts, e.g. a PtyRAD file): its
        ``measurements`` are keywords of :func:`prepare_measurements`; the beam energy,
        convergence semiangle and scan step come from ``params.probe``/``params.scan``,
        the scan shape from ``measurements.scan_shape`` (the shape as stored, before any
        crop) or ``params.scan.shape``, the Poisson-noise seed from ``params.seed``.
    source
        The measurements themselves (array, DataArray or path), replacing
        ``measurements.source``.
    base_dir
        Folder against which a relative ``measurements.source`` is also tried when it is
        not found from the working directory (e.g. the parameter file's folder).

    Returns
    -------
    The stack ``("scan", "qx", "qy")`` of :func:`prepare_measurements`.
    """
    from .params import PtychoParams, load_params

    if not isinstance(params, PtychoParams):
        params = load_params(params)
    opts = dict(params.measurements)
    given = opts.pop("source", None)
    source = given if source is None else source
    if source is None:
        raise ValueError("no measurements: set measurements.source to a file (PtyRAD: "
                         "init_params.meas_params.path) or pass source=...")
    if isinstance(source, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(source))
        if (not os.path.exists(path) and not os.path.isabs(path) and base_dir is not None
                and os.path.exists(os.path.join(base_dir, path))):
            path = os.path.join(base_dir, path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"measurements file {source!s} does not exist")
        source = path
    open_kwargs = dict(opts.pop("open_kwargs", None) or {})
    if "selection" in open_kwargs:
        open_kwargs["selection"] = _selection(open_kwargs["selection"])
    if "poisson" in opts and isinstance(opts["poisson"], Mapping):
        opts["poisson"] = {"seed": params.seed, **opts["poisson"]}
    return prepare_measurements(
        source,
        open_kwargs=open_kwargs,
        scan_shape=opts.pop("scan_shape", None) or params.scan.shape,
        scan_step=params.scan.step,
        beam_energy=params.probe.beam_energy,
        convergence_semiangle=params.probe.convergence_semiangle,
        **opts,
    )
