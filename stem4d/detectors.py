"""Virtual detectors: ``(qx, qy)`` DataArrays on the detector grid of a cube.

Every geometry is given in the units of the cube's ``qx``/``qy`` coordinates (1/Å, mrad
or pixels): once the origin is set, ``center=(0, 0)`` is the mean origin, so a
bright-field detector is ``circle(cube, radius=...)`` in the units the user sees.
A pixel belongs to a geometric detector when its centre lies inside it (closed edges);
geometric detectors are boolean, user masks may be float weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .datacube import as_float

__all__ = ["point", "circle", "annulus", "rectangle", "from_mask", "bragg_lattice"]


def _grid_of(obj: Any) -> tuple[np.ndarray, np.ndarray, dict[str, xr.Variable]]:
    if not isinstance(obj, (xr.DataArray, xr.Dataset)):
        raise TypeError(
            "the first argument must be a cube or pattern DataArray with 'qx' and 'qy' "
            f"coordinates, got {type(obj).__name__}"
        )
    for dim in ("qx", "qy"):
        if dim not in obj.coords or obj.coords[dim].ndim != 1:
            raise ValueError(
                f"the object has no 1-D '{dim}' coordinate: expected a cube or pattern "
                f"with dims including ('qx', 'qy'), got dims {tuple(obj.dims)}"
            )
    qx = obj.coords["qx"]
    qy = obj.coords["qy"]
    coords = {"qx": qx.variable, "qy": qy.variable}
    qxg, qyg = np.meshgrid(qx.values, qy.values, indexing="ij")
    return qxg, qyg, coords


def _center(center: Any, argname: str = "center", units: str = "coordinate units"
            ) -> tuple[float, float]:
    """A finite ``(qx, qy)`` pair, or a ValueError naming ``argname`` (and ``units``)."""
    if np.ndim(center) != 1 or len(center) != 2:
        raise ValueError(f"{argname} must be a pair (qx, qy) in {units}, got {center!r}")
    c = (as_float(center[0], argname), as_float(center[1], argname))
    if not all(np.isfinite(c)):
        raise ValueError(f"{argname} must be finite, got {center!r}")
    return c


def _mask_array(
    mask: Any,
    shape: tuple[int, int],
    argname: str = "mask",
    *,
    bool_only: bool = False,
    require_any: bool = False,
    like: Any = None,
    hint: str = "",
) -> np.ndarray:
    """A user detector mask as a numpy ``(qx, qy)`` array, checked.

    ``mask`` is a DataArray with dims ``("qx", "qy")`` (either order; with ``like``, a
    cube or pattern, its coordinates must match those of ``like``) or an array of the
    detector ``shape``: bool, or real weights without NaN/inf (``bool_only``: bool only).
    ``require_any`` rejects a mask that selects nothing. Errors name ``argname``;
    ``hint`` is appended to the dims error. The values are returned as given (no cast).
    """
    kind = "a bool mask" if bool_only else "a detector mask"
    if isinstance(mask, xr.DataArray):
        if set(mask.dims) != {"qx", "qy"}:
            raise ValueError(
                f"{argname} must be {kind} with dims ('qx', 'qy'), got {tuple(mask.dims)}{hint}"
            )
        mask = mask.transpose("qx", "qy")
        if like is not None:
            from .virtual import _check_detector

            _check_detector(like, mask, argname)
        mask = mask.values
    values = np.asarray(mask)
    if values.shape != tuple(shape):
        must = "be a bool mask of" if bool_only else "have"
        raise ValueError(
            f"{argname} must {must} the detector shape {tuple(shape)} (qx, qy), "
            f"got shape {values.shape}"
        )
    if bool_only and values.dtype != bool:
        raise TypeError(f"{argname} must be a bool mask, got dtype {values.dtype}")
    if values.dtype != bool and (not np.issubdtype(values.dtype, np.number)
                                 or np.issubdtype(values.dtype, np.complexfloating)):
        raise TypeError(f"{argname} must be bool or real weights, got dtype {values.dtype}")
    if values.dtype != bool and not np.all(np.isfinite(values)):
        raise ValueError(f"{argname} contains NaN or inf weights")
    if require_any and not np.any(values):
        raise ValueError(f"{argname} selects no detector pixel (all weights are zero)")
    return values


def _positive(value: Any, argname: str, allow_zero: bool = False) -> float:
    v = as_float(value, argname)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{argname} must be {kind} and finite, got {value!r}")
    return v


def _detector(values: np.ndarray, coords: dict, kind: str, units: str, **geometry: Any
              ) -> xr.DataArray:
    if not np.any(values):
        raise ValueError(
            f"the {kind} detector {geometry} selects no detector pixel: check its geometry "
            f"against the detector coordinates (units {units!r})"
        )
    attrs = {"detector": kind, "units": units}
    attrs.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in geometry.items()})
    return xr.DataArray(values, dims=("qx", "qy"), coords=coords, name=kind, attrs=attrs)


def _units(coords: dict) -> str:
    return coords["qx"].attrs.get("units", "pixels")


def _pixel_step(coord: xr.Variable) -> float:
    """Pixel size of a 1-D detector coordinate (``attrs["step"]`` for one pixel, else 1)."""
    if coord.size >= 2:
        return float(abs(coord.values[1] - coord.values[0]))
    return float(abs(coord.attrs.get("step", 1.0)))


def point(obj: Any, center: Sequence[float]) -> xr.DataArray:
    """Single-pixel detector at the pixel nearest to ``center`` (coordinate units).

    ``center`` must lie on the detector: within half a pixel of the outermost pixel
    centres (closed edges, like the other detectors); a point further out raises.
    """
    qxg, qyg, coords = _grid_of(obj)
    cx, cy = _center(center)
    index = []
    for dim, c in (("qx", cx), ("qy", cy)):
        q = coords[dim].values.astype(float)
        half = 0.5 * _pixel_step(coords[dim])
        lo, hi = float(q.min()) - half, float(q.max()) + half
        if not lo - 1e-9 * half <= c <= hi + 1e-9 * half:
            raise ValueError(
                f"the point detector at center=({cx:.6g}, {cy:.6g}) selects no detector pixel: "
                f"its {dim} = {c:.6g} is more than half a pixel outside the detector, whose "
                f"{dim} spans [{lo:.6g}, {hi:.6g}] {_units(coords)!r} (pixel edges)"
            )
        index.append(int(np.argmin(np.abs(q - c))))
    ix, iy = index
    values = np.zeros(qxg.shape, dtype=bool)
    values[ix, iy] = True
    return _detector(values, coords, "point", _units(coords), center=(cx, cy))


def circle(obj: Any, radius: float, center: Sequence[float] = (0.0, 0.0)) -> xr.DataArray:
    """Disk detector of ``radius`` around ``center`` (coordinate units), e.g. bright field."""
    qxg, qyg, coords = _grid_of(obj)
    cx, cy = _center(center)
    r = _positive(radius, "radius")
    values = (qxg - cx) ** 2 + (qyg - cy) ** 2 <= r**2
    return _detector(values, coords, "circle", _units(coords), center=(cx, cy), radius=r)


def annulus(
    obj: Any, radii: Sequence[float], center: Sequence[float] = (0.0, 0.0)
) -> xr.DataArray:
    """Ring detector ``inner <= |q - center| <= outer`` (coordinate units), e.g. ADF."""
    qxg, qyg, coords = _grid_of(obj)
    cx, cy = _center(center)
    inner, outer = _radii(radii)
    values = _in_ring(qxg - cx, qyg - cy, inner, outer)
    return _detector(values, coords, "annulus", _units(coords), center=(cx, cy),
                     radii=(inner, outer))


def _radii(radii: Any) -> tuple[float, float]:
    """``(inner, outer)`` with ``0 <= inner < outer``, or a ValueError naming ``radii``."""
    if np.ndim(radii) != 1 or len(radii) != 2:
        raise ValueError(f"radii must be a pair (inner, outer), got {radii!r}")
    inner = _positive(radii[0], "radii[0] (inner)", allow_zero=True)
    outer = _positive(radii[1], "radii[1] (outer)")
    if inner >= outer:
        raise ValueError(f"radii must satisfy inner < outer, got {tuple(radii)!r}")
    return inner, outer


def _in_ring(dx: np.ndarray, dy: np.ndarray, inner: float, outer: float) -> np.ndarray:
    r2 = dx**2 + dy**2
    return (r2 >= inner**2) & (r2 <= outer**2)


def rectangle(
    obj: Any, qx_range: Sequence[float], qy_range: Sequence[float]
) -> xr.DataArray:
    """Rectangle ``qx_range[0] <= qx <= qx_range[1]`` and likewise in qy (coordinate units)."""
    qxg, qyg, coords = _grid_of(obj)
    for name, rng in (("qx_range", qx_range), ("qy_range", qy_range)):
        if np.ndim(rng) != 1 or len(rng) != 2 or not rng[0] < rng[1]:
            raise ValueError(f"{name} must be a pair (low, high) with low < high, got {rng!r}")
    values = ((qxg >= qx_range[0]) & (qxg <= qx_range[1])
              & (qyg >= qy_range[0]) & (qyg <= qy_range[1]))
    return _detector(values, coords, "rectangle", _units(coords),
                     qx_range=tuple(map(float, qx_range)), qy_range=tuple(map(float, qy_range)))


def from_mask(obj: Any, mask: Any) -> xr.DataArray:
    """A user mask (bool selects, float weights) as a detector on the grid of ``obj``."""
    qxg, _, coords = _grid_of(obj)
    values = _mask_array(mask, qxg.shape, "mask")
    return _detector(values, coords, "mask", _units(coords))


def bragg_lattice(
    obj: Any,
    g1: Sequence[float],
    g2: Sequence[float],
    radius: float,
    q_max: float,
    center: Sequence[float] = (0.0, 0.0),
    include_origin: bool = True,
) -> xr.DataArray:
    """Disks of ``radius`` at the lattice points ``center + h g1 + k g2`` within ``q_max``.

    A lattice point is kept when ``|h g1 + k g2| <= q_max`` (py4DSTEM's Bragg mask).

    ``g1``, ``g2`` are reciprocal lattice vectors ``(qx, qy)``, all lengths in coordinate
    units. ``include_origin=False`` leaves out the central (0, 0) disk (dark-field use).
    """
    qxg, qyg, coords = _grid_of(obj)
    cx, cy = _center(center)
    a = np.array([_center(g1, "g1"), _center(g2, "g2")], dtype=float).T  # columns g1, g2
    if abs(np.linalg.det(a)) < 1e-12 * max(np.abs(a).max() ** 2, 1e-300):
        raise ValueError(f"g1 and g2 must not be parallel, got g1={g1!r}, g2={g2!r}")
    r = _positive(radius, "radius")
    qmax = _positive(q_max, "q_max")
    # all (h, k) whose lattice point can lie within q_max
    hk_max = int(np.ceil(qmax * np.abs(np.linalg.inv(a)).sum(axis=1).max())) + 1
    h, k = np.meshgrid(np.arange(-hk_max, hk_max + 1), np.arange(-hk_max, hk_max + 1))
    hk = np.stack([h.ravel(), k.ravel()])
    g = a @ hk
    keep = np.hypot(g[0], g[1]) <= qmax
    if not include_origin:
        keep &= np.any(hk != 0, axis=0)
    values = np.zeros(qxg.shape, dtype=bool)
    for gx, gy in g[:, keep].T:
        values |= (qxg - cx - gx) ** 2 + (qyg - cy - gy) ** 2 <= r**2
    return _detector(values, coords, "bragg_lattice", _units(coords), center=(cx, cy),
                     g1=tuple(map(float, g1)), g2=tuple(map(float, g2)), radius=r,
                     q_max=qmax, include_origin=int(include_origin))
