"""The scan-to-detector orientation: store it once, convert it to and from other tools.

stem4d's convention (pinned)
----------------------------
A vector ``v = (vx, vy)`` of the **scan frame** (``x`` along ``rx``, the slow scan rows;
``y`` along ``ry``, the fast scan columns) appears on the detector as ``Q @ v`` in
``(qx, qy)`` components (``qx`` the detector rows, ``qy`` the columns), with::

    Q = R(scan_rotation) @ diag(1, -1 if scan_flip else 1)
    R(a) = [[cos a, -sin a], [sin a, cos a]]

The flip acts first, on the scan ``y`` component. On a cube it is stored as two 0-d
coordinates: ``scan_rotation`` (float, ``attrs["units"] = "rad"``) and ``scan_flip``
(bool) (:func:`set_orientation`, :func:`get_orientation`). It is the convention of
:func:`stem4d.simulate.crystal` and :func:`stem4d.simulate.phase_object`, whose
``scan_rotation``/``scan_flip`` arguments mean exactly this. A centre-of-mass shift
``C_det`` measured on the detector is ``Q @ C_scan``: a positive phase gradient along
scan ``x`` deflects the beam towards ``Q @ (1, 0)`` on the detector (forward transform
``exp(-2 pi i k.r)``, see :func:`stem4d.simulate.phase_object`).

Other tools, as found in their source and checked by running them
-------------------------------------------------------------------
Every formula below is written as "scan-frame vector from detector vector", the way
each tool applies its parameters to centre-of-mass vectors; ``T = [[0, 1], [1, 0]]``
exchanges the two components (a transpose), ``F = diag(1, -1)``, and
``T = R(90°) @ F``, so a transpose is a flip plus a 90° rotation.

**py4DSTEM 0.14** (``QR_rotation_degrees`` = θ, ``QR_flip``). Read in
``py4DSTEM/process/phase/phase_base_class.py``
(``_solve_for_center_of_mass_relative_rotation``: the CoM ``(x = Qx, y = Qy)`` is
rotated as ``x' = cos θ x - sin θ y``, ``y' = sin θ x + cos θ y``; with the transpose
flag the components are exchanged first), in
``py4DSTEM/braggvectors/braggvectors.py`` (the calibrated Bragg vectors are
``R(θ) @ (qx, qy)``, or ``R(θ) @ (qy, qx)`` when ``QR_flip``), and in
``py4DSTEM/process/calibration/rotation.py`` (``get_Rvector_from_Qvector`` is
``R(θ) @ v_Q``). Its DPC / parallax / ptychography classes call the flag
``_rotation_best_transpose`` and report the angle as ``_rotation_best_rad``; their curl
is ``d(com_y)/d(Rx) - d(com_x)/d(Ry)`` with ``x`` the first scan axis, the same scan
frame as stem4d. So ``v_scan = R(θ) @ T^flip @ v_det``, i.e. ``Q = T^flip @ R(-θ)``::

    QR_flip False:  scan_rotation = -θ,          scan_flip = False
    QR_flip True:   scan_rotation = θ + 90°,     scan_flip = True

py4DSTEM's DPC fits ``com_scan = +grad(phase) / (2 pi)`` (``py4DSTEM/process/phase/
dpc.py``: ``obj_dx = phi(x - 1) - phi(x + 1)`` is added to ``com_x``), the same sign as
stem4d, but its curl search runs over -89°..90° only and does not resolve the 180°
ambiguity: its reported angle may be ``θ`` or ``θ - 180°`` of the physical one (the
phase then comes out negated). Checked by running py4DSTEM's ``DPC(...).preprocess()``
(default plane fit of the CoM) and ``reconstruct()`` on
:func:`stem4d.simulate.phase_object` data (24 x 24 scan, 64 x 64 patterns, 300 kV,
noise-free). The table lists stem4d's ``(scan_rotation, scan_flip)``, py4DSTEM's
``(_rotation_best_rad in degrees, _rotation_best_transpose)``, the correlation of its
reconstructed phase with the true phase, and what :func:`to_py4dstem` gives::

    stem4d          py4DSTEM DPC     phase corr   to_py4dstem
    ( 23°, False)   (-23°, False)    +0.965       (-23°, False)
    (117°, False)   ( 63°, False)    -0.965       (-117°, False)   63 = -117 + 180
    (-150°, False)  (-30°, False)    -0.965       (150°, False)   -30 = 150 - 180
    ( 23°, True)    (-67°, True)     +0.965       (-67°, True)
    (117°, True)    ( 27°, True)     +0.965       ( 27°, True)
    (-150°, True)   (-60°, True)     -0.965       (120°, True)    -60 = 120 - 180

py4DSTEM agrees modulo 180°, and exactly where its angle is 180° from the converted one
its phase comes out negated: the converter holds including the sign of the phase. The
table (with the LiberTEM columns below and stem4d's own :func:`stem4d.find_orientation`)
is printed by ``/work/peers/bin/python benchmarks/check_orientation_peers.py``, which
runs both tools on freshly simulated data and exits non-zero on any disagreement.

**LiberTEM 0.16** (``scan_rotation`` = a in degrees, ``flip_y``). Read in
``libertem/corrections/coordinates.py`` (``rotate(a) = [[cos, sin], [-sin, cos]]`` on
``(y, x)`` pairs, ``flip_y() = diag(-1, 1)``) and ``libertem/udf/com.py``
(``apply_correction``: ``rotate_deg(a) @ flip_y`` applied to the detector shift
``(y, x)`` = (row, column) = stem4d ``(qx, qy)``; the field's ``(y, x)`` are the scan
rows and columns = stem4d ``(x, y)``). So ``v_scan = R(-a) @ diag(-1, 1)^flip_y @ v_det``,
``Q = diag(-1, 1)^flip_y @ R(a)``; since ``diag(-1, 1) = R(180°) @ F``::

    flip_y False:   scan_rotation = a,           scan_flip = False
    flip_y True:    scan_rotation = 180° - a,    scan_flip = True

LiberTEM's "flip_y" negates the detector *row* component (its y is the row); it is not
a transpose, and it differs from py4DSTEM's ``QR_flip`` (a transpose) by a 90° rotation.
Run on the same data (CoM in pixels from the detector centre),
``libertem.udf.com.guess_corrections`` (which resolves the 180° with the divergence
histogram) returned, for the six cases of the table above in order,
``(scan_rotation, flip_y)`` = (23, False), (117, False), (-150, False), (157, True),
(63, True), (-30, True): exactly :func:`to_libertem` (157 = 180 - 23, 63 = 180 - 117,
-30 ≡ 180 + 150).

**PtyRAD / PtychoShelves / fold_slice** (``meas_flipT = [flipud, fliplr, transpose]``,
and ``pos_scan_affine = [scale, asymmetry, rotation, shear]``). Read in PtyRAD's
``Initializer._meas_flipT`` (``ptyrad/init/initializer.py``): on the stack
``(N, ky, kx)``, ``flipud`` reverses axis 1 (the rows, stem4d's ``qx``), then ``fliplr``
reverses axis 2 (``qy``), then ``transpose`` exchanges them. A pattern feature at
detector offset ``p`` (rows, columns from the centre) moves to ``M p`` with
``M = T^transpose @ diag(1, -1)^fliplr @ diag(-1, 1)^flipud``. PtyRAD's forward model
(``ptyrad/core/forward.py``) is ``fftshift(fft2(probe * object_patch))`` on ``(y, x)``
arrays with positions ``(y, x)`` = (slow, fast) scan index, so after ``meas_flipT`` the
patterns must be in the scan frame up to the position rotation: ``pos_scan_affine``
rotation ρ (degrees, ``compose_affine_matrix`` in ``ptyrad/utils/math_ops.py``,
applied as ``pos @ A3`` on ``(y, x)`` rows with ``A3 = [[cos, sin], [-sin, cos]]``) puts
scan vector ``v`` at ``R(ρ) v`` in the object. So ``M Q = R(ρ)``, ``Q = M^-1 R(ρ)``.
The eight ``meas_flipT`` values are the eight ``M`` (four with a flip); an arbitrary
``Q`` is one ``M`` plus a residual rotation ρ, which :func:`to_ptyrad` keeps within
±45°. (``pos_scan_flipT`` flips the positions and is not modelled; PtyRAD recommends
leaving it null.) PtyRAD was read in its repository (github.com/chiahao3/ptyrad), not
run (it needs PyTorch): ``tests/test_orientation.py`` applies its ``meas_flipT``
operations to simulated patterns recorded with ``Q = from_ptyrad(flipT)`` and gets the
patterns of ``Q = I``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .datacube import rotation_matrix, scan_to_detector_matrix

__all__ = [
    "rotation_matrix",
    "scan_to_detector_matrix",
    "orientation_from_matrix",
    "set_orientation",
    "get_orientation",
    "detector_to_scan",
    "scan_to_detector",
    "from_py4dstem",
    "to_py4dstem",
    "from_libertem",
    "to_libertem",
    "from_ptyrad",
    "to_ptyrad",
    "ptyrad_flip_matrix",
]

ROTATION_COORD = "scan_rotation"
FLIP_COORD = "scan_flip"
_SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])
_F = np.diag([1.0, -1.0])


def _wrap(angle: float) -> float:
    """Angle wrapped to ``[-pi, pi)``."""
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _check_angle(value: Any, argname: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be a number, got {type(value).__name__}") from None
    if not np.isfinite(out):
        raise ValueError(f"{argname} must be finite, got {value!r}")
    return out


def _check_flag(value: Any, argname: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, xr.DataArray) and value.ndim == 0:
        return _check_flag(value.values.item(), argname)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _check_flag(value.item(), argname)
    raise TypeError(f"{argname} must be a bool (or 0/1), got {value!r}")


def orientation_from_matrix(matrix: Any) -> tuple[float, bool]:
    """``(scan_rotation, scan_flip)`` of a scan-to-detector matrix ``Q``.

    Parameters
    ----------
    matrix
        2x2 orthogonal matrix (a rotation, or a rotation times a reflection): detector
        ``(qx, qy)`` components of the scan ``x`` and ``y`` unit vectors in its columns.

    Returns
    -------
    ``(scan_rotation in [-pi, pi) rad, scan_flip)`` with
    ``Q = R(scan_rotation) @ diag(1, -1 if scan_flip else 1)``.
    """
    q = np.asarray(matrix, dtype=float)
    if q.shape != (2, 2) or not np.all(np.isfinite(q)):
        raise ValueError(f"matrix must be a finite 2x2 array, got shape {q.shape}")
    if not np.allclose(q @ q.T, np.eye(2), atol=1e-6):
        raise ValueError(
            "matrix must be orthogonal (a rotation, possibly with a flip; no scale or "
            f"shear), got {q.tolist()}"
        )
    flip = bool(np.linalg.det(q) < 0)
    rot = q @ _F if flip else q
    return _wrap(np.arctan2(rot[1, 0], rot[0, 0])), flip


# ------------------------------------------------------------------ on xarray objects
def set_orientation(obj: xr.DataArray | xr.Dataset, scan_rotation: float,
                    scan_flip: bool) -> xr.DataArray | xr.Dataset:
    """Return ``obj`` with the scan-to-detector orientation stored as coordinates.

    Parameters
    ----------
    obj
        A cube, a centre-of-mass Dataset or any xarray object.
    scan_rotation
        Rotation, rad (stored wrapped to ``[-pi, pi)``).
    scan_flip
        Flip of the scan ``y`` component before the rotation.

    Returns
    -------
    ``obj`` with 0-d coordinates ``scan_rotation`` (``units`` "rad") and ``scan_flip``.
    """
    if not isinstance(obj, (xr.DataArray, xr.Dataset)):
        raise TypeError(f"obj must be an xarray DataArray or Dataset, got {type(obj).__name__}")
    angle = _check_angle(scan_rotation, "scan_rotation")
    if abs(angle) > 2 * np.pi:
        warnings.warn(
            f"scan_rotation={angle!r} is more than a full turn in radians: stem4d's angles are "
            f"in radians (from degrees: np.radians({angle!r}) = {np.radians(angle):.4f}); "
            f"storing it wrapped to {_wrap(angle):.4f} rad", UserWarning, stacklevel=2)
    rot = _wrap(angle)
    flip = _check_flag(scan_flip, "scan_flip")
    return obj.assign_coords({
        ROTATION_COORD: xr.Variable((), rot, attrs={"units": "rad"}),
        FLIP_COORD: xr.Variable((), flip),
    })


def get_orientation(obj: xr.DataArray | xr.Dataset) -> tuple[float, bool]:
    """``(scan_rotation rad, scan_flip)`` stored on ``obj`` (see :func:`set_orientation`).

    Raises ``ValueError`` naming the coordinates when they are absent.
    """
    if not isinstance(obj, (xr.DataArray, xr.Dataset)):
        raise TypeError(f"obj must be an xarray DataArray or Dataset, got {type(obj).__name__}")
    missing = [c for c in (ROTATION_COORD, FLIP_COORD) if c not in obj.coords]
    if missing:
        raise ValueError(
            f"no scan-to-detector orientation: the object has no {missing} coordinate(s). "
            "Find it with stem4d.find_orientation(center_of_mass(cube)) and store it with "
            "stem4d.set_orientation(obj, scan_rotation, scan_flip), or pass "
            "scan_rotation= and scan_flip= explicitly"
        )
    rot_coord = obj.coords[ROTATION_COORD]
    units = rot_coord.attrs.get("units", "rad")
    rot = _check_angle(rot_coord.values.item(), ROTATION_COORD)
    if units in ("deg", "degrees", "°"):
        rot = np.radians(rot)
    elif units != "rad":
        raise ValueError(f"coordinate {ROTATION_COORD!r} has units {units!r}, expected 'rad'")
    return rot, _check_flag(obj.coords[FLIP_COORD].values.item(), FLIP_COORD)


def detector_to_scan(vx: Any, vy: Any, scan_rotation: float,
                     scan_flip: bool) -> tuple[Any, Any]:
    """Scan-frame components ``(x, y)`` of detector-frame vectors ``(qx, qy)``: ``Q^-1 v``.

    Works on numbers, numpy/dask arrays and DataArrays (component-wise arithmetic).
    """
    c, s = np.cos(scan_rotation), np.sin(scan_rotation)
    x = c * vx + s * vy
    y = -s * vx + c * vy
    return (x, -y) if _check_flag(scan_flip, "scan_flip") else (x, y)


def scan_to_detector(vx: Any, vy: Any, scan_rotation: float,
                     scan_flip: bool) -> tuple[Any, Any]:
    """Detector components ``(qx, qy)`` of scan-frame vectors ``(x, y)``: ``Q v``."""
    if _check_flag(scan_flip, "scan_flip"):
        vy = -vy
    c, s = np.cos(scan_rotation), np.sin(scan_rotation)
    return c * vx - s * vy, s * vx + c * vy


# ------------------------------------------------------------------------ py4DSTEM
def from_py4dstem(qr_rotation_degrees: float, qr_flip: bool) -> tuple[float, bool]:
    """stem4d ``(scan_rotation rad, scan_flip)`` from py4DSTEM's calibration.

    py4DSTEM maps a detector vector to the scan frame as ``R(θ) @ T^QR_flip @ v``
    (``T`` exchanges ``qx``, ``qy``; θ = ``QR_rotation_degrees``), see the module
    docstring: ``(θ, False) -> (-θ, False)``, ``(θ, True) -> (θ + 90°, True)``.
    """
    theta = np.radians(_check_angle(qr_rotation_degrees, "qr_rotation_degrees"))
    flip = _check_flag(qr_flip, "qr_flip")
    return (_wrap(theta + np.pi / 2), True) if flip else (_wrap(-theta), False)


def to_py4dstem(scan_rotation: float, scan_flip: bool) -> tuple[float, bool]:
    """py4DSTEM ``(QR_rotation_degrees in [-180, 180), QR_flip)`` from stem4d's orientation."""
    rot = _check_angle(scan_rotation, "scan_rotation")
    flip = _check_flag(scan_flip, "scan_flip")
    theta = rot - np.pi / 2 if flip else -rot
    return float(np.degrees(_wrap(theta))), flip


# ------------------------------------------------------------------------ LiberTEM
def from_libertem(scan_rotation_degrees: float, flip_y: bool) -> tuple[float, bool]:
    """stem4d ``(scan_rotation rad, scan_flip)`` from LiberTEM's CoM parameters.

    LiberTEM maps a detector shift ``(y, x)`` = ``(qx, qy)`` to the scan frame as
    ``rotate(a) @ flip_y() @ v`` = ``R(-a) @ diag(-1, 1)^flip_y @ v`` (a =
    ``scan_rotation`` in degrees): ``(a, False) -> (a, False)``,
    ``(a, True) -> (180° - a, True)``.
    """
    a = np.radians(_check_angle(scan_rotation_degrees, "scan_rotation_degrees"))
    flip = _check_flag(flip_y, "flip_y")
    return (_wrap(np.pi - a), True) if flip else (_wrap(a), False)


def to_libertem(scan_rotation: float, scan_flip: bool) -> tuple[float, bool]:
    """LiberTEM ``(scan_rotation degrees in [-180, 180), flip_y)`` from stem4d's."""
    rot = _check_angle(scan_rotation, "scan_rotation")
    flip = _check_flag(scan_flip, "scan_flip")
    a = np.pi - rot if flip else rot
    return float(np.degrees(_wrap(a))), flip


# -------------------------------------------------------------------------- PtyRAD
def ptyrad_flip_matrix(flipT: Sequence[Any]) -> np.ndarray:
    """The matrix ``M`` by which PtyRAD's ``meas_flipT`` moves a pattern feature.

    ``flipT = [flipud, fliplr, transpose]`` (0/1 or bools) acts on patterns stored
    ``(ky, kx)`` = stem4d ``(qx, qy)``: a feature at offset ``p = (row, column)`` from
    the pattern centre moves to ``M @ p``,
    ``M = T^transpose @ diag(1, -1)^fliplr @ diag(-1, 1)^flipud`` (flips first, as
    PtyRAD applies them).
    """
    try:
        flags = [_check_flag(v, "flipT") for v in flipT]
    except TypeError:
        raise TypeError(
            f"flipT must be three 0/1 values [flipud, fliplr, transpose], got {flipT!r}"
        ) from None
    if len(flags) != 3:
        raise ValueError(
            f"flipT must be three 0/1 values [flipud, fliplr, transpose], got {flipT!r}")
    m = np.eye(2)
    if flags[0]:
        m = np.diag([-1.0, 1.0]) @ m
    if flags[1]:
        m = np.diag([1.0, -1.0]) @ m
    if flags[2]:
        m = _SWAP @ m
    return m


_FLIPT_ALL = [[u, lr, t] for t in (0, 1) for u in (0, 1) for lr in (0, 1)]


def from_ptyrad(flipT: Sequence[Any], rotation_degrees: float = 0.0) -> tuple[float, bool]:
    """stem4d ``(scan_rotation rad, scan_flip)`` from PtyRAD's ``meas_flipT``.

    Parameters
    ----------
    flipT
        ``meas_flipT = [flipud, fliplr, transpose]`` (PtyRAD / PtychoShelves), applied to
        patterns stored as the cube's ``(qx, qy)``.
    rotation_degrees
        The rotation of PtyRAD's ``pos_scan_affine`` (degrees, third entry), 0 if unused.

    Returns
    -------
    ``Q = M^-1 @ R(rotation)`` as ``(scan_rotation, scan_flip)`` (module docstring).
    """
    m = ptyrad_flip_matrix(flipT)
    rho = np.radians(_check_angle(rotation_degrees, "rotation_degrees"))
    return orientation_from_matrix(m.T @ rotation_matrix(rho))


def to_ptyrad(scan_rotation: float, scan_flip: bool) -> tuple[list[int], float]:
    """PtyRAD ``(meas_flipT, pos_scan_affine rotation in degrees)`` for stem4d's orientation.

    Of the four ``meas_flipT`` with the right handedness, the one leaving the smallest
    residual rotation (``|rotation| <= 45°``) is returned; for a rotation that is a
    multiple of 90° the residual is 0 and ``meas_flipT`` alone is the answer.
    """
    rot = _check_angle(scan_rotation, "scan_rotation")
    flip = _check_flag(scan_flip, "scan_flip")
    q = scan_to_detector_matrix(rot, flip)
    best: tuple[float, list[int], float] | None = None
    for flags in _FLIPT_ALL:
        m = ptyrad_flip_matrix(flags)
        if (np.linalg.det(m) < 0) != flip:
            continue
        r = m @ q
        rho = float(np.degrees(np.arctan2(r[1, 0], r[0, 0])))
        key = round(abs(rho), 9)
        if best is None or key < best[0]:
            best = (key, list(flags), rho)
    assert best is not None
    return best[1], best[2]
