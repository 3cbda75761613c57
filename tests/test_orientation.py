"""Tests of stem4d.orientation: the pinned scan-to-detector convention and converters.

Each converter is pinned against the formula of the tool it converts to (quoted with the
source file it comes from) and checked on simulated data with a known orientation.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import xarray as xr

from stem4d.orientation import (
    detector_to_scan,
    from_libertem,
    from_ptyrad,
    from_py4dstem,
    get_orientation,
    orientation_from_matrix,
    ptyrad_flip_matrix,
    rotation_matrix,
    scan_to_detector,
    scan_to_detector_matrix,
    set_orientation,
    to_libertem,
    to_ptyrad,
    to_py4dstem,
)
from stem4d.simulate import phase_object

EIGHT = [(np.radians(a), f) for a in (0, 90, 180, -90) for f in (False, True)]
ARBITRARY = [(np.radians(a), f) for a in (23.0, 117.0, -150.0, 44.9, -0.3, 179.5)
             for f in (False, True)]
SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])


def same_angle(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs((a - b + np.pi) % (2 * np.pi) - np.pi) < tol


@functools.cache
def simulated(rot_deg: float, flip: bool, detector: int = 64):
    return phase_object((12, 12), (detector, detector), scan_rotation=np.radians(rot_deg),
                        scan_flip=flip)


def measured_com(cube: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy CoM (qx, qy components) relative to q = 0, 1/Å."""
    data = cube.values.astype(float)
    total = data.sum(axis=(2, 3))
    cx = np.einsum("abij,i->ab", data, cube.qx.values) / total
    cy = np.einsum("abij,j->ab", data, cube.qy.values) / total
    return cx, cy


# ------------------------------------------------------------------ the convention
def test_matrix_is_the_pinned_convention():
    # rotation 90°, no flip: scan x (rx) appears along detector qy
    np.testing.assert_allclose(scan_to_detector_matrix(np.pi / 2, False) @ [1, 0], [0, 1],
                               atol=1e-15)
    # the flip acts first, on scan y
    np.testing.assert_allclose(scan_to_detector_matrix(0.0, True) @ [0, 1], [0, -1])
    np.testing.assert_allclose(scan_to_detector_matrix(0.3, True),
                               rotation_matrix(0.3) @ np.diag([1, -1]))


@pytest.mark.parametrize("rot, flip", EIGHT + ARBITRARY)
def test_matrix_round_trip(rot, flip):
    got_rot, got_flip = orientation_from_matrix(scan_to_detector_matrix(rot, flip))
    assert got_flip is flip and same_angle(got_rot, rot)
    assert -np.pi <= got_rot < np.pi


def test_transpose_is_flip_plus_90():
    rot, flip = orientation_from_matrix(SWAP)
    assert flip is True and same_angle(rot, np.pi / 2)


def test_matrix_errors():
    with pytest.raises(ValueError, match="orthogonal"):
        orientation_from_matrix([[2.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="2x2"):
        orientation_from_matrix(np.eye(3))


def test_vectors_both_ways_on_dataarrays():
    vx = xr.DataArray(np.array([1.0, 0.0, 0.3]), dims="p")
    vy = xr.DataArray(np.array([0.0, 1.0, -2.0]), dims="p")
    for rot, flip in ARBITRARY:
        qx, qy = scan_to_detector(vx, vy, rot, flip)
        q = scan_to_detector_matrix(rot, flip)
        np.testing.assert_allclose(np.stack([qx, qy]), q @ np.stack([vx, vy]))
        bx, by = detector_to_scan(qx, qy, rot, flip)
        np.testing.assert_allclose(bx, vx, atol=1e-12)
        np.testing.assert_allclose(by, vy, atol=1e-12)
        assert isinstance(bx, xr.DataArray)


# ------------------------------------------------------------ stored on objects
def test_set_and_get_orientation():
    cube, _ = simulated(0.0, False)
    with pytest.warns(UserWarning, match="more than a full turn in radians"):
        out = set_orientation(cube, np.radians(370.0), True)
    assert "scan_rotation" not in cube.coords  # nothing mutated
    rot, flip = get_orientation(out)
    assert same_angle(rot, np.radians(10.0)) and flip is True
    assert -np.pi <= float(out.scan_rotation) < np.pi
    assert out.scan_rotation.attrs["units"] == "rad"
    assert out.scan_flip.dtype == bool
    # survives arithmetic and reductions, as coordinates do
    assert get_orientation((out * 2).mean("rx")) == (rot, flip)
    ds = set_orientation(xr.Dataset(), 0.5, 0)
    assert get_orientation(ds) == (0.5, False)
    degrees = ds.assign_coords(scan_rotation=xr.Variable((), 90.0, {"units": "deg"}))
    assert same_angle(get_orientation(degrees)[0], np.pi / 2)


def test_orientation_errors():
    cube, _ = simulated(0.0, False)
    with pytest.raises(ValueError, match=r"no \['scan_rotation', 'scan_flip'\] coordinate"):
        get_orientation(cube)
    with pytest.raises(ValueError, match=r"\['scan_flip'\]"):
        get_orientation(cube.assign_coords(scan_rotation=0.1))
    with pytest.raises(TypeError, match="scan_flip must be a bool"):
        set_orientation(cube, 0.1, "yes")
    with pytest.raises(ValueError, match="scan_rotation must be finite"):
        set_orientation(cube, np.nan, False)
    with pytest.raises(TypeError, match="scan_rotation must be a number"):
        set_orientation(cube, "ten", False)
    # degrees given where radians are expected: warned with the conversion
    with pytest.warns(UserWarning, match=r"np.radians\(90.0\) = 1.5708"):
        set_orientation(cube, 90.0, False)
    with pytest.raises(TypeError, match="obj must be an xarray"):
        set_orientation(np.zeros(3), 0.0, False)
    with pytest.raises(ValueError, match="units 'grad'"):
        get_orientation(set_orientation(cube, 0.1, False).assign_coords(
            scan_rotation=xr.Variable((), 0.1, {"units": "grad"})))


# ------------------------------------------------------------------------ py4DSTEM
def py4dstem_detector_to_scan(theta_deg: float, qr_flip: bool) -> np.ndarray:
    """py4DSTEM's map of a detector vector to the scan frame, as a matrix.

    ``py4DSTEM/braggvectors/braggvectors.py`` (BraggVectors calibration, rotate step)::

        R = [[cos θ, -sin θ], [sin θ, cos θ]]
        positions = R @ vstack((qy, qx)) if flip else R @ vstack((qx, qy))

    and ``py4DSTEM/process/phase/phase_base_class.py``
    (``_solve_for_center_of_mass_relative_rotation``): ``x' = cos θ x - sin θ y``,
    ``y' = sin θ x + cos θ y`` on ``(com_x, com_y)``, or on ``(com_y, com_x)`` when
    transposed.
    """
    t = np.radians(theta_deg)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return r @ SWAP if qr_flip else r


@pytest.mark.parametrize("rot, flip", EIGHT + ARBITRARY)
def test_py4dstem_round_trip(rot, flip):
    deg, qr_flip = to_py4dstem(rot, flip)
    assert -180 <= deg < 180 and qr_flip is flip
    back = from_py4dstem(deg, qr_flip)
    assert back[1] is flip and same_angle(back[0], rot)
    # py4DSTEM's own formula undoes Q
    np.testing.assert_allclose(
        py4dstem_detector_to_scan(deg, qr_flip) @ scan_to_detector_matrix(rot, flip),
        np.eye(2), atol=1e-12)


def test_py4dstem_pinned_numbers():
    """(QR_rotation_degrees, QR_flip) = (30, False): v_scan = R(30°) v_det, so Q = R(-30°);
    (30, True): v_scan = R(30°) T v_det, Q = T R(-30°) = R(120°) diag(1, -1)."""
    rot, flip = from_py4dstem(30.0, False)
    assert flip is False and rot == pytest.approx(np.radians(-30.0))
    rot, flip = from_py4dstem(30.0, True)
    assert flip is True and rot == pytest.approx(np.radians(120.0))
    np.testing.assert_allclose(scan_to_detector_matrix(rot, flip),
                               SWAP @ rotation_matrix(np.radians(-30.0)), atol=1e-12)
    assert to_py4dstem(np.radians(120.0), True) == pytest.approx((30.0, True))


def test_py4dstem_formula_on_simulated_data():
    """py4DSTEM's rotation of the measured CoM gives the scan-frame field of the truth."""
    for rot_deg, flip in ((117.0, True), (-150.0, False)):
        cube, truth = simulated(rot_deg, flip)
        cx, cy = measured_com(cube)
        deg, qr_flip = to_py4dstem(np.radians(rot_deg), flip)
        scan = np.einsum("ij,jab->iab", py4dstem_detector_to_scan(deg, qr_flip),
                         np.stack([cx, cy]))
        expected = np.einsum("ji,jab->iab", truth.scan_to_detector.values,
                             np.stack([truth.com_qx.values, truth.com_qy.values]))
        np.testing.assert_allclose(scan, expected, atol=2e-5)


# ------------------------------------------------------------------------ LiberTEM
def libertem_detector_to_scan(scan_rotation_deg: float, flip_y: bool) -> np.ndarray:
    """LiberTEM's correction of a detector shift ``(y, x)`` = (row, column), as a matrix.

    ``libertem/corrections/coordinates.py``::

        rotate(r) = [[cos r, sin r], [-sin r, cos r]]     # "y, x instead of x, y"
        flip_y()  = [[-1, 0], [0, 1]]

    ``libertem/udf/com.py`` (``apply_correction``)::

        transform = rotate_deg(scan_rotation) @ (flip_y() if flip_y else identity())
        y_transformed, x_transformed = transform @ (y_centers, x_centers)
    """
    r = np.radians(scan_rotation_deg)
    rotate = np.array([[np.cos(r), np.sin(r)], [-np.sin(r), np.cos(r)]])
    return rotate @ (np.array([[-1.0, 0.0], [0.0, 1.0]]) if flip_y else np.eye(2))


@pytest.mark.parametrize("rot, flip", EIGHT + ARBITRARY)
def test_libertem_round_trip(rot, flip):
    deg, flip_y = to_libertem(rot, flip)
    assert -180 <= deg < 180 and flip_y is flip
    back = from_libertem(deg, flip_y)
    assert back[1] is flip and same_angle(back[0], rot)
    np.testing.assert_allclose(
        libertem_detector_to_scan(deg, flip_y) @ scan_to_detector_matrix(rot, flip),
        np.eye(2), atol=1e-12)


def test_libertem_pinned_numbers():
    """(scan_rotation, flip_y) = (30, False): v_scan = rotate(30°) v = R(-30°) v, Q = R(30°);
    (30, True): Q = diag(-1, 1) R(30°) = R(150°) diag(1, -1)."""
    rot, flip = from_libertem(30.0, False)
    assert flip is False and rot == pytest.approx(np.radians(30.0))
    rot, flip = from_libertem(30.0, True)
    assert flip is True and rot == pytest.approx(np.radians(150.0))
    np.testing.assert_allclose(scan_to_detector_matrix(rot, flip),
                               np.diag([-1.0, 1.0]) @ rotation_matrix(np.radians(30.0)),
                               atol=1e-12)
    # LiberTEM's flip_y (negate the row) and py4DSTEM's QR_flip (transpose) differ
    assert from_libertem(0.0, True) != from_py4dstem(0.0, True)


def test_libertem_formula_on_simulated_data():
    for rot_deg, flip in ((23.0, True), (117.0, False)):
        cube, truth = simulated(rot_deg, flip)
        cx, cy = measured_com(cube)
        deg, flip_y = to_libertem(np.radians(rot_deg), flip)
        scan = np.einsum("ij,jab->iab", libertem_detector_to_scan(deg, flip_y),
                         np.stack([cx, cy]))
        expected = np.einsum("ji,jab->iab", truth.scan_to_detector.values,
                             np.stack([truth.com_qx.values, truth.com_qy.values]))
        np.testing.assert_allclose(scan, expected, atol=2e-5)


# -------------------------------------------------------------------------- PtyRAD
def ptyrad_meas_flipT(meas: np.ndarray, flipT: list[int]) -> np.ndarray:
    """PtyRAD's ``Initializer._meas_flipT`` (``ptyrad/init/initializer.py``) on
    ``(N, ky, kx)``::

        if flipT_axes[0]: meas = np.flip(meas, axis=1)
        if flipT_axes[1]: meas = np.flip(meas, axis=2)
        if flipT_axes[2]: meas = np.transpose(meas, (0, 2, 1))
    """
    if flipT[0]:
        meas = np.flip(meas, axis=1)
    if flipT[1]:
        meas = np.flip(meas, axis=2)
    if flipT[2]:
        meas = np.transpose(meas, (0, 2, 1))
    return meas


ALL_FLIPT = [[u, lr, t] for u in (0, 1) for lr in (0, 1) for t in (0, 1)]


def test_ptyrad_flip_matrix_moves_features_like_ptyrad():
    pattern = np.zeros((1, 7, 7))
    pattern[0, 3 + 2, 3 + 1] = 1.0  # feature at offset (row 2, column 1) from the centre
    for flipT in ALL_FLIPT:
        moved = ptyrad_meas_flipT(pattern, flipT)[0]
        row, col = np.argwhere(moved == 1)[0] - 3
        np.testing.assert_array_equal(ptyrad_flip_matrix(flipT) @ [2, 1], [row, col])


def test_ptyrad_eight_cases_are_distinct_multiples_of_90():
    seen = set()
    for flipT in ALL_FLIPT:
        rot, flip = from_ptyrad(flipT)
        quarter = np.degrees(rot) / 90.0
        assert abs(quarter - round(quarter)) < 1e-12
        seen.add((round(quarter) % 4, flip))
        assert flip is bool(np.linalg.det(ptyrad_flip_matrix(flipT)) < 0)
        back, residual = to_ptyrad(rot, flip)
        assert residual == pytest.approx(0.0, abs=1e-9)
        np.testing.assert_allclose(ptyrad_flip_matrix(back), ptyrad_flip_matrix(flipT))
    assert len(seen) == 8


def test_ptyrad_pinned_numbers():
    """After meas_flipT the patterns must be in the scan frame: M Q = R(rho). transpose
    only: M = T, Q = T = R(90°) diag(1, -1); flipud only: M = diag(-1, 1), Q = M =
    R(180°) diag(1, -1); flipud + fliplr: Q = -I = R(180°)."""
    rot, flip = from_ptyrad([0, 0, 1])
    assert flip is True and rot == pytest.approx(np.pi / 2)
    rot, flip = from_ptyrad([1, 0, 0])
    assert flip is True and same_angle(rot, np.pi)
    rot, flip = from_ptyrad([True, True, False])
    assert flip is False and same_angle(rot, np.pi)
    # pos_scan_affine rotation rho: positions (y, x) @ [[c, s], [-s, c]] = R(rho) p
    rot, flip = from_ptyrad([0, 0, 0], rotation_degrees=12.0)
    assert flip is False and rot == pytest.approx(np.radians(12.0))


@pytest.mark.parametrize("rot, flip", EIGHT + ARBITRARY)
def test_ptyrad_round_trip(rot, flip):
    flipT, residual = to_ptyrad(rot, flip)
    assert abs(residual) <= 45.0 + 1e-9
    assert all(v in (0, 1) for v in flipT) and len(flipT) == 3
    back = from_ptyrad(flipT, residual)
    assert back[1] is flip and same_angle(back[0], rot)


def test_ptyrad_flipT_on_simulated_patterns():
    """Patterns recorded with Q = from_ptyrad(flipT) become, after PtyRAD's meas_flipT,
    the patterns of the same specimen with Q = I (odd detector: flips keep the centre)."""
    ref_cube, _ = simulated(0.0, False, 33)
    ref = ref_cube.values.reshape(-1, 33, 33)
    for flipT in ([0, 0, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]):
        rot, flip = from_ptyrad(flipT)
        cube, _ = simulated(round(np.degrees(rot), 6), flip, 33)
        moved = ptyrad_meas_flipT(cube.values.reshape(-1, 33, 33), flipT)
        # equal up to the resampling of the object on the rotated grid (< 1 %)
        np.testing.assert_allclose(moved, ref, atol=1e-2 * ref.max())
        wrong = ptyrad_meas_flipT(cube.values.reshape(-1, 33, 33), [0, 0, 0])
        assert np.abs(wrong - ref).max() > 0.1 * ref.max()


def test_ptyrad_errors():
    with pytest.raises(ValueError, match=r"three 0/1 values \[flipud, fliplr, transpose\]"):
        from_ptyrad([1, 0])
    with pytest.raises(TypeError, match="flipT must be three 0/1 values"):
        from_ptyrad([1, 0, 2])
    with pytest.raises(ValueError, match="rotation_degrees must be finite"):
        from_ptyrad([0, 0, 0], np.inf)
