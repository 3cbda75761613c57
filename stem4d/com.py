"""Centre of mass (CoM), DPC, the scan-to-detector orientation and iDPC phase.

Physics and conventions
-----------------------
For a thin specimen ``exp(i phi(r))`` and any probe ``P``, the centre of mass of the
diffraction pattern at probe position ``r_p`` (forward transform ``exp(-2 pi i k.r)``)
is ``C(r_p) = (|P|^2 * grad phi)(r_p) / (2 pi)`` plus a constant from the probe's own
aberrations: the beam is deflected *towards* a positive phase (an attractive, positive
potential). The CoM is measured on the detector, ``C_det = Q @ C_scan`` with the
orientation ``Q`` of :mod:`stem4d.orientation`, so the scan-frame field
``Q^-1 C_det`` is a gradient field (zero curl) only for the right ``Q``.

* :func:`center_of_mass` — ``com_qx``, ``com_qy`` (detector frame, the cube's q units,
  relative to each position's origin) and ``com_magnitude``; one pass over the data.
* :func:`dpc` — segmented-detector DPC: segment images and their normalized difference
  signals (the CoM itself is the DPC signal of a pixelated detector).
* :func:`find_orientation` — the scan rotation and flip: the RMS curl of the rotated
  field ``F^flip R(-θ) C_det`` is a quadratic form in ``(cos θ, sin θ)``, so its minimum
  over θ is found exactly (the eigenvector of the smallest eigenvalue of a 2x2 matrix,
  no grid search), for each flip; the flip with the smaller minimum curl wins. The curl
  cannot tell θ from θ + 180° (the field only changes sign): stem4d keeps the one whose
  integrated phase has **positive skewness**, because a positive potential made of atoms
  gives a phase of sharp positive peaks over a flat background (equivalently, the
  divergence of the CoM field is negative at the atoms). The result says so in
  ``attrs["ambiguity_resolved_by"]``. ``method="contrast"`` maximizes the standard
  deviation of the integrated phase instead (also a quadratic form; the same
  ambiguity and resolution).
* :func:`integrate_com` (alias :func:`idpc`) — rotate the CoM into the scan frame and
  integrate ``grad phi = 2 pi C`` (C in 1/Å, the scan step in Å; mrad are converted with
  the beam energy) by Fourier integration,
  ``phi_hat = (kx Gx_hat + ky Gy_hat) / (2 pi i (|k|^2 + k_hp^2))``, on the field
  mirrored to twice its size (odd/even reflections keep it a gradient field without
  edge jumps); ``k_hp`` is a high-pass regularization (1/Å). The mean phase is lost
  (set to zero).

Centre of mass works on numpy and dask cubes (lazy for dask). Finding the orientation
and integrating need the whole ``(rx, ry)`` CoM maps, which are small: a lazy CoM is
computed there.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask
import numpy as np
import scipy.fft
import xarray as xr

from .datacube import (
    CUBE_DIMS,
    SCAN_DIMS,
    _axis_origin_px,
    _axis_step,
    _require_origin,
    as_float,
    electron_wavelength,
    validate_cube,
)
from .detectors import _mask_array
from .orientation import detector_to_scan, get_orientation, set_orientation
from .virtual import virtual_image

__all__ = [
    "center_of_mass",
    "dpc",
    "rotate_com",
    "find_orientation",
    "integrate_com",
    "idpc",
]

_METHODS = ("curl", "contrast")


# ------------------------------------------------------------------ helpers
def _detector_mask(cube: xr.DataArray, mask: Any) -> np.ndarray:
    shape = (cube.sizes["qx"], cube.sizes["qy"])
    if mask is None:
        return np.ones(shape)
    return _mask_array(mask, shape, "mask", require_any=True, like=cube).astype(float)


def _as_com(com: Any, argname: str = "com") -> xr.Dataset:
    """A CoM Dataset (computing it when a cube is passed), checked."""
    if isinstance(com, xr.DataArray) and tuple(com.dims) == CUBE_DIMS:
        com = center_of_mass(com)
    if not isinstance(com, xr.Dataset):
        raise TypeError(
            f"{argname} must be the Dataset of stem4d.center_of_mass (com_qx, com_qy over "
            f"rx, ry) or a datacube, got {type(com).__name__}"
        )
    for var in ("com_qx", "com_qy"):
        if var not in com.data_vars:
            raise ValueError(
                f"{argname} has no {var!r} variable: expected the output of "
                f"stem4d.center_of_mass, got variables {list(com.data_vars)}"
            )
        if set(com[var].dims) != set(SCAN_DIMS):
            raise ValueError(
                f"{argname}[{var!r}] must have dims {SCAN_DIMS}, got {tuple(com[var].dims)}")
    if min(com.sizes["rx"], com.sizes["ry"]) < 3:
        raise ValueError(
            f"{argname} must cover at least 3 x 3 scan positions, got "
            f"{(com.sizes['rx'], com.sizes['ry'])}"
        )
    return com


def _com_arrays(com: xr.Dataset, argname: str = "com") -> tuple[np.ndarray, np.ndarray]:
    """``(com_qx, com_qy)`` as float64 ``(rx, ry)`` arrays.

    A lazy CoM is computed with one ``dask.compute`` of both maps, so their shared
    graph (the cube) is read once, not once per component.
    """
    cx, cy = dask.compute(com["com_qx"].transpose(*SCAN_DIMS).data,
                          com["com_qy"].transpose(*SCAN_DIMS).data)
    cx, cy = np.asarray(cx, dtype=float), np.asarray(cy, dtype=float)
    if not (np.all(np.isfinite(cx)) and np.all(np.isfinite(cy))):
        raise ValueError(
            f"{argname} contains NaN/inf centre-of-mass values (patterns with no "
            "intensity in the mask?); crop the scan or fill them first"
        )
    return cx, cy


def _scan_steps(com: xr.Dataset) -> tuple[float, float, str]:
    units = com.coords["rx"].attrs.get("units", "pixels") if "rx" in com.coords else "pixels"
    dx = _axis_step(com, "rx") if "rx" in com.coords else 1.0
    dy = _axis_step(com, "ry") if "ry" in com.coords else 1.0
    return abs(dx), abs(dy), units


def _orientation_args(com: xr.Dataset, scan_rotation: Any, scan_flip: Any
                      ) -> tuple[float, bool]:
    if scan_rotation is None and scan_flip is None:
        return get_orientation(com)
    if scan_rotation is None or scan_flip is None:
        raise ValueError(
            "give both scan_rotation (rad) and scan_flip, or neither (then they are read "
            f"from the coordinates), got scan_rotation={scan_rotation!r}, "
            f"scan_flip={scan_flip!r}"
        )
    check = set_orientation(xr.Dataset(), scan_rotation, scan_flip)
    return get_orientation(check)


def _curl(fx: np.ndarray, fy: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``d fy / dx - d fx / dy`` by central differences on the interior (x = axis 0)."""
    return ((fy[2:, 1:-1] - fy[:-2, 1:-1]) / (2 * dx)
            - (fx[1:-1, 2:] - fx[1:-1, :-2]) / (2 * dy))


def _integrate(gx: np.ndarray, gy: np.ndarray, dx: float, dy: float,
               high_pass: float) -> np.ndarray:
    """Phase whose gradient is ``(gx, gy)`` (per unit of ``dx``/``dy``), mean zero.

    The field is mirrored to ``(2 nx, 2 ny)``: ``gx`` odd along x and even along y,
    ``gy`` even along x and odd along y, the gradient of the even extension of the
    phase, so the periodic FFT sees no jump at the edges.
    """
    nx, ny = gx.shape
    ex = np.block([[gx, gx[:, ::-1]], [-gx[::-1], -gx[::-1, ::-1]]])
    ey = np.block([[gy, -gy[:, ::-1]], [gy[::-1], -gy[::-1, ::-1]]])
    kx = np.fft.fftfreq(2 * nx, d=dx)[:, None]
    ky = np.fft.fftfreq(2 * ny, d=dy)[None, :]
    denom = 2j * np.pi * (kx**2 + ky**2 + high_pass**2)
    denom[0, 0] = np.inf
    spec = (kx * scipy.fft.fft2(ex) + ky * scipy.fft.fft2(ey)) / denom
    return np.real(scipy.fft.ifft2(spec))[:nx, :ny]


def _default_high_pass(shape: tuple[int, int], dx: float, dy: float) -> float:
    """Half the lowest spatial frequency of the (unmirrored) field of view."""
    return 0.5 / max(shape[0] * dx, shape[1] * dy)


def _flip_fields(cx: np.ndarray, cy: np.ndarray, flip: bool
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Basis fields A, B with ``F^flip R(-θ) C = cos θ A + sin θ B`` (scan frame)."""
    sign = -1.0 if flip else 1.0
    return (cx, sign * cy), (cy, -sign * cx)


def _skewness(values: np.ndarray) -> float:
    centred = values - values.mean()
    std = centred.std()
    return float(np.mean(centred**3) / std**3) if std > 0 else 0.0


# ------------------------------------------------------------------ centre of mass
def center_of_mass(
    cube: xr.DataArray,
    *,
    mask: Any = None,
    origin_subtracted: bool = True,
) -> xr.Dataset:
    """Centre of mass of every diffraction pattern.

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)`` (numpy or dask).
    mask
        Optional ``(qx, qy)`` detector weights (bool or float; DataArray or array), e.g.
        ``stem4d.detectors.circle(cube, radius=...)`` for the bright-field disk only.
    origin_subtracted
        Subtract the per-position origin (``qx0``/``qy0`` coordinates) when the cube has
        one. The CoM is always in the cube's q coordinates, whose zero is the (mean)
        origin once :func:`stem4d.set_origin` has been applied (before that, zero is the
        first detector pixel).

    Returns
    -------
    Dataset over ``(rx, ry)``: ``com_qx``, ``com_qy`` (detector frame, the cube's q units,
    e.g. 1/Å), ``com_magnitude`` and ``intensity`` (the masked sum), float32 for integer
    and float32 data (with or without a per-position origin), float64 for float64 data;
    NaN where a pattern has no intensity. Scan and 0-d coordinates
    (calibration, orientation) are kept. Lazy for a dask cube.
    """
    validate_cube(cube)
    if not isinstance(origin_subtracted, (bool, np.bool_)):
        raise TypeError(f"origin_subtracted must be a bool, got {origin_subtracted!r}")
    weights = _detector_mask(cube, mask)
    qxg, qyg = np.meshgrid(cube.coords["qx"].values, cube.coords["qy"].values, indexing="ij")
    dets = xr.DataArray(
        np.stack([weights, weights * qxg, weights * qyg]),
        dims=("moment", "qx", "qy"),
        coords={"qx": cube.coords["qx"].variable, "qy": cube.coords["qy"].variable},
        name="moments",
    )
    sums = virtual_image(cube, dets)
    total = sums.isel(moment=0, drop=True)
    valid = total != 0
    com_qx = (sums.isel(moment=1, drop=True) / total).where(valid)
    com_qy = (sums.isel(moment=2, drop=True) / total).where(valid)
    if origin_subtracted and "qx0" in sums.coords and "qy0" in sums.coords:
        # the float64 origin coordinates would promote float32 sums: keep the work dtype
        com_qx = (com_qx - sums.coords["qx0"].reset_coords(drop=True)).astype(sums.dtype)
        com_qy = (com_qy - sums.coords["qy0"].reset_coords(drop=True)).astype(sums.dtype)
    units = cube.coords["qx"].attrs.get("units", "pixels")
    out = xr.Dataset(
        {
            "com_qx": com_qx.assign_attrs(units=units, long_name="centre of mass along qx"),
            "com_qy": com_qy.assign_attrs(units=units, long_name="centre of mass along qy"),
            "com_magnitude": np.hypot(com_qx, com_qy).assign_attrs(
                units=units, long_name="centre-of-mass shift magnitude"),
            "intensity": total.assign_attrs(long_name="intensity in the mask"),
        },
        attrs={"source": "stem4d.center_of_mass", "mask": mask is not None,
               "origin_subtracted": bool(origin_subtracted)},
    )
    return out.transpose(*SCAN_DIMS)


def dpc(
    cube: xr.DataArray,
    *,
    segments: int = 4,
    inner: float = 0.0,
    outer: float | None = None,
    offset: float | None = None,
) -> xr.Dataset:
    """Segmented-detector differential phase contrast.

    The detector is split into ``segments`` equal angular sectors of the annulus
    ``inner <= |q| <= outer`` around the origin; segment ``s`` covers azimuths
    ``offset + 2 pi s / n`` to ``offset + 2 pi (s + 1) / n`` (rad from ``qx`` towards
    ``qy``) and has the centre direction ``u_s``. The origin is required: with a
    per-position origin (``qx0``/``qy0`` coordinates, :func:`stem4d.apply_origin`) the
    segmented detector follows the beam (``virtual_image(..., shift_center=True,
    subpixel=True)``), so a drifting beam does not read as a deflection; otherwise it is
    centred on ``q = 0`` (the origin set by :func:`stem4d.set_origin`).

    Parameters
    ----------
    cube
        Datacube ``(rx, ry, qx, qy)`` with its origin set.
    segments
        Number of sectors (>= 3; 4 is the classic quadrant detector).
    inner, outer
        Annulus radii in the cube's q units (``outer=None``: the whole detector).
    offset
        Azimuth of the start of segment 0, rad. Default ``-pi / segments`` (segment 0
        centred on ``+qx``).

    Returns
    -------
    Dataset over ``(rx, ry)``: ``segment_images`` ``(segment, rx, ry)`` and the
    normalized difference signals ``dpc_qx``, ``dpc_qy`` = ``sum_s I_s u_s / sum_s I_s``
    (dimensionless, detector frame; for four segments A, B, C, D centred on +qx, +qy, -qx,
    -qy this is ``((A - C), (B - D)) / (A + B + C + D)``). Lazy for a dask cube.
    """
    validate_cube(cube)
    if isinstance(segments, bool) or not isinstance(segments, (int, np.integer)) \
            or segments < 3:
        raise ValueError(f"segments must be an integer >= 3, got {segments!r}")
    units = cube.coords["qx"].attrs.get("units", "pixels")
    inner = as_float(inner, "inner")
    if not np.isfinite(inner) or inner < 0:
        raise ValueError(f"inner must be >= 0 ({units}), got {inner!r}")
    if outer is not None:
        outer = as_float(outer, "outer")
        if not np.isfinite(outer) or outer <= inner:
            raise ValueError(f"outer must be larger than inner={inner} ({units}), got {outer!r}")
    offset = -np.pi / segments if offset is None else as_float(offset, "offset")
    _require_origin(cube, "cube", "dpc (the segments are centred on the origin)")
    follow = "qx0" in cube.coords and "qy0" in cube.coords
    qxg, qyg = np.meshgrid(cube.coords["qx"].values, cube.coords["qy"].values, indexing="ij")
    radius = np.hypot(qxg, qyg)
    ring = (radius >= inner) & (radius <= (np.inf if outer is None else outer))
    sector = np.floor(((np.arctan2(qyg, qxg) - offset) % (2 * np.pi))
                      / (2 * np.pi / segments)).astype(int) % segments
    masks = np.stack([ring & (sector == s) for s in range(segments)])
    empty = [s for s in range(segments) if not masks[s].any()]
    if empty:
        ox, oy = _axis_origin_px(cube, "qx"), _axis_origin_px(cube, "qy")
        reach = float(radius.max())
        raise ValueError(
            f"segments {empty} contain no detector pixel: the annulus inner={inner:g}, "
            f"outer={outer if outer is None else format(outer, 'g')} ({units}) around the "
            f"origin at pixel ({ox:.1f}, {oy:.1f}) misses them (the detector reaches "
            f"{reach:.4g} {units} from the origin); check inner/outer"
        )
    dets = xr.DataArray(masks, dims=("segment", "qx", "qy"),
                        coords={"qx": cube.coords["qx"].variable,
                                "qy": cube.coords["qy"].variable,
                                "segment": np.arange(segments)},
                        name="segments")
    images = virtual_image(cube, dets, shift_center=follow, subpixel=follow)
    images = images.transpose("segment", *SCAN_DIMS)
    centres = offset + 2 * np.pi * (np.arange(segments) + 0.5) / segments
    ux = xr.DataArray(np.cos(centres), dims="segment")
    uy = xr.DataArray(np.sin(centres), dims="segment")
    total = images.sum("segment")
    valid = total != 0
    return xr.Dataset(
        {
            "segment_images": images.assign_attrs(long_name="segment intensity"),
            "dpc_qx": ((images * ux).sum("segment") / total).where(valid).assign_attrs(
                units="", long_name="DPC signal along qx"),
            "dpc_qy": ((images * uy).sum("segment") / total).where(valid).assign_attrs(
                units="", long_name="DPC signal along qy"),
        },
        coords={"segment_angle": ("segment", centres, {"units": "rad"})},
        attrs={"source": "stem4d.dpc", "inner": float(inner), "follows_origin": int(follow),
               "outer": float("inf") if outer is None else float(outer)},
    )


# ------------------------------------------------------------------ orientation
def rotate_com(com: xr.Dataset, *, scan_rotation: float | None = None,
               scan_flip: bool | None = None) -> xr.Dataset:
    """The CoM in the scan frame: ``(com_rx, com_ry) = Q^-1 (com_qx, com_qy)``.

    ``scan_rotation`` (rad) / ``scan_flip`` default to the coordinates of ``com``
    (stored by :func:`stem4d.set_orientation` on the cube). Returns a Dataset with
    ``com_rx`` (along the scan rows axis ``rx``), ``com_ry`` and ``com_magnitude``, in
    the CoM units, with the orientation used as coordinates. Lazy for a lazy ``com``.
    """
    com = _as_com(com)
    rot, flip = _orientation_args(com, scan_rotation, scan_flip)
    x, y = detector_to_scan(com["com_qx"], com["com_qy"], rot, flip)
    units = com["com_qx"].attrs.get("units", "")
    out = xr.Dataset({
        "com_rx": x.assign_attrs(units=units, long_name="centre of mass along rx"),
        "com_ry": y.assign_attrs(units=units, long_name="centre of mass along ry"),
        "com_magnitude": np.hypot(x, y).assign_attrs(units=units),
    }, attrs={"source": "stem4d.rotate_com"})
    return set_orientation(out, rot, flip)


def find_orientation(
    com: xr.Dataset,
    *,
    flips: tuple[bool, ...] = (False, True),
    method: str = "curl",
    resolve_ambiguity: bool = True,
    high_pass: float | None = None,
) -> xr.Dataset:
    """Scan-to-detector rotation and flip from the centre-of-mass field.

    Parameters
    ----------
    com
        Dataset of :func:`center_of_mass` (or a datacube, whose CoM is computed). The
        specimen should give a non-uniform, curl-free deflection (atomic-resolution or
        other structured phase contrast, no magnetic field).
    flips
        Flips to try (``(False,)`` or ``(True,)`` when the flip is known).
    method
        ``"curl"``: minimize the RMS curl of the rotated field (central differences,
        interior positions). ``"contrast"``: maximize the standard deviation of its
        integrated phase. Both are exact minimizations of a quadratic form in
        ``(cos θ, sin θ)`` (module docstring).
    resolve_ambiguity
        Choose between θ and θ + 180° by the sign of the skewness of the integrated phase
        (positive for a positive potential made of atoms). ``False``: θ in ``[-90°, 90°)``.
    high_pass
        High-pass regularization of the phase integration, in reciprocal scan units
        (default: half the lowest frequency of the field of view).

    Returns
    -------
    Dataset with 0-d coordinates ``scan_rotation`` (rad, in ``[-pi, pi)``) and
    ``scan_flip`` (pass it to :func:`stem4d.set_orientation` / :func:`get_orientation`),
    and, over ``(flip, angle)`` (angle in rad, 1° steps): ``curl`` (RMS curl of the
    rotated CoM field, CoM units per scan unit) and ``phase_std`` (standard deviation
    of its integrated phase, rad when the CoM is in 1/Å and the scan in Å, else
    arbitrary units). ``attrs``: ``method``, ``ambiguity_resolved_by``,
    ``phase_skewness`` (of the chosen solution), ``curl_min`` and ``phase_std_max`` per
    flip, ``flip_contrast`` (ratio of the figure of merit of the rejected flip to the
    chosen one: > 1 means the flip is well determined).
    """
    com = _as_com(com)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    flips_t = tuple(flips)
    if not flips_t or len(set(flips_t)) != len(flips_t) \
            or not all(isinstance(f, (bool, np.bool_)) for f in flips_t):
        raise ValueError(f"flips must be distinct bools, e.g. (False, True), got {flips!r}")
    cx, cy = _com_arrays(com)
    dx, dy, _ = _scan_steps(com)
    hp = (_default_high_pass(cx.shape, dx, dy) if high_pass is None
          else as_float(high_pass, "high_pass"))
    if not np.isfinite(hp) or hp < 0:
        raise ValueError(f"high_pass must be >= 0 (reciprocal scan units), got {high_pass!r}")
    cx, cy = cx - cx.mean(), cy - cy.mean()
    scale = 2 * np.pi if com["com_qx"].attrs.get("units") == "1/Å" else 1.0

    angles = np.radians(np.arange(-180.0, 180.0, 1.0))
    basis = np.stack([np.cos(angles), np.sin(angles)])  # (2, angle)
    results = {}
    for flip in flips_t:
        (ax, ay), (bx, by) = _flip_fields(cx, cy, bool(flip))
        c_ab = np.stack([_curl(ax, ay, dx, dy).ravel(), _curl(bx, by, dx, dy).ravel()])
        p_ab = np.stack([_integrate(scale * ax, scale * ay, dx, dy, hp),
                         _integrate(scale * bx, scale * by, dx, dy, hp)])
        p_flat = p_ab.reshape(2, -1)
        p_flat = p_flat - p_flat.mean(axis=1, keepdims=True)
        m_curl = c_ab @ c_ab.T / c_ab.shape[1]
        m_phase = p_flat @ p_flat.T / p_flat.shape[1]
        curve_curl = np.sqrt(np.maximum(np.einsum("ia,ij,ja->a", basis, m_curl, basis), 0))
        curve_std = np.sqrt(np.maximum(np.einsum("ia,ij,ja->a", basis, m_phase, basis), 0))
        w_c, v_c = np.linalg.eigh(m_curl)
        w_p, v_p = np.linalg.eigh(m_phase)
        u = v_c[:, 0] if method == "curl" else v_p[:, 1]
        results[bool(flip)] = {
            "curl": curve_curl, "phase_std": curve_std, "u": u, "phases": p_ab,
            "curl_min": float(np.sqrt(max(w_c[0], 0.0))),
            "phase_std_max": float(np.sqrt(max(w_p[1], 0.0))),
        }
    if method == "curl":
        best = min(results, key=lambda f: results[f]["curl_min"])
    else:
        best = max(results, key=lambda f: results[f]["phase_std_max"])
    res = results[best]
    u = res["u"]
    theta = float(np.arctan2(u[1], u[0]))
    theta = (theta + np.pi / 2) % np.pi - np.pi / 2  # [-90°, 90°)
    phase = np.cos(theta) * res["phases"][0] + np.sin(theta) * res["phases"][1]
    skew = _skewness(phase)
    if resolve_ambiguity:
        if skew < 0:
            theta, skew = theta + np.pi, -skew
        how = ("phase_skewness: of theta and theta + 180°, the rotation whose integrated "
               "phase has positive skewness was kept (a positive potential of atoms gives "
               "sharp positive phase peaks; equivalently the CoM divergence is negative at "
               "the atoms)")
        if abs(skew) < 0.05:
            warnings.warn(
                f"the integrated phase is nearly symmetric (skewness {skew:.3f}): the "
                "choice between scan_rotation and scan_rotation + 180° is unreliable",
                UserWarning, stacklevel=2)
    else:
        how = "none: scan_rotation is only known modulo 180° (returned in [-90°, 90°))"
    others = [f for f in results if f != best]
    if others:
        other = results[others[0]]
        ratio = (other["curl_min"] / max(res["curl_min"], 1e-300) if method == "curl"
                 else res["phase_std_max"] / max(other["phase_std_max"], 1e-300))
    else:
        ratio = float("nan")
    flip_values = list(results)
    out = xr.Dataset(
        {
            "curl": (("flip", "angle"), np.stack([results[f]["curl"] for f in flip_values]),
                     {"long_name": "RMS curl of the rotated CoM field"}),
            "phase_std": (("flip", "angle"),
                          np.stack([results[f]["phase_std"] for f in flip_values]),
                          {"long_name": "standard deviation of the integrated phase"}),
        },
        coords={"flip": ("flip", np.array(flip_values, dtype=bool)),
                "angle": ("angle", angles, {"units": "rad"})},
        attrs={
            "source": "stem4d.find_orientation",
            "method": method,
            "ambiguity_resolved_by": how,
            "phase_skewness": float(skew),
            "curl_min": [results[f]["curl_min"] for f in flip_values],
            "phase_std_max": [results[f]["phase_std_max"] for f in flip_values],
            "flip_contrast": float(ratio),
        },
    )
    return set_orientation(out, theta, best)


# ------------------------------------------------------------------ integration
def integrate_com(
    com: xr.Dataset,
    *,
    scan_rotation: float | None = None,
    scan_flip: bool | None = None,
    high_pass: float | None = None,
) -> xr.DataArray:
    """Integrated centre of mass (iDPC): the phase whose gradient is ``2 pi C_scan``.

    Parameters
    ----------
    com
        Dataset of :func:`center_of_mass` (or a datacube) with q units ``1/Å`` (or
        ``mrad`` and a ``beam_energy`` coordinate) and scan coordinates in Å.
    scan_rotation, scan_flip
        Orientation (rad, bool); default: the ``scan_rotation``/``scan_flip``
        coordinates of ``com`` (the cube's, see :func:`stem4d.set_orientation`).
    high_pass
        Regularization frequency ``k_hp``, 1/Å: the integration divides by
        ``|k|^2 + k_hp^2``. Default: half the lowest frequency of the field of view.

    Returns
    -------
    ``(rx, ry)`` DataArray ``idpc_phase``, rad, mean zero: ``phi * |P|^2`` of a thin
    specimen (the phase blurred by the probe intensity), up to a constant. The mean CoM
    (a uniform tilt, or an offset of the origin) is removed before integrating.
    """
    com = _as_com(com)
    rot, flip = _orientation_args(com, scan_rotation, scan_flip)
    cx, cy = _com_arrays(com)
    dx, dy, r_units = _scan_steps(com)
    q_units = com["com_qx"].attrs.get("units", "pixels")
    if r_units != "Å":
        raise ValueError(
            f"integrating the CoM into a phase needs the scan step in Å, but rx has units "
            f"{r_units!r}: calibrate the cube with stem4d.set_r_calibration")
    if q_units == "mrad":
        if "beam_energy" not in com.coords:
            raise ValueError(
                "the CoM is in mrad: converting it to 1/Å needs the beam energy; set it "
                "on the cube with stem4d.set_beam(cube, beam_energy=...) (eV)")
        factor = 1.0 / (1000.0 * electron_wavelength(float(com.coords["beam_energy"])))
    elif q_units == "1/Å":
        factor = 1.0
    else:
        raise ValueError(
            f"integrating the CoM into a phase needs it in 1/Å or mrad, got units "
            f"{q_units!r}: calibrate the detector with stem4d.set_q_calibration")
    hp = (_default_high_pass(cx.shape, dx, dy) if high_pass is None
          else as_float(high_pass, "high_pass"))
    if not np.isfinite(hp) or hp < 0:
        raise ValueError(f"high_pass must be >= 0 (1/Å), got {high_pass!r}")
    cx, cy = (cx - cx.mean()) * factor, (cy - cy.mean()) * factor
    x, y = detector_to_scan(cx, cy, rot, flip)
    phase = _integrate(2 * np.pi * x, 2 * np.pi * y, dx, dy, float(hp))
    coords = {k: v.variable for k, v in com.coords.items()
              if v.ndim == 0 or set(v.dims) <= set(SCAN_DIMS)}
    out = xr.DataArray(
        phase - phase.mean(), dims=SCAN_DIMS, coords=coords, name="idpc_phase",
        attrs={"units": "rad", "long_name": "integrated centre-of-mass phase (iDPC)",
               "high_pass": float(hp), "high_pass_units": "1/Å"},
    )
    return set_orientation(out, rot, flip)


idpc = integrate_com
