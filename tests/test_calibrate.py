"""Detector calibrations (ellipse, pixel size, beamstop, radial background) against known
answers from stem4d's simulator."""

from __future__ import annotations

from typing import Any

import dask.array as da
import matplotlib
import numpy as np
import pytest
import xarray as xr

import stem4d as s4
from stem4d import calibrate as cal
from stem4d import simulate as sim

matplotlib.use("Agg")

LAM300 = s4.electron_wavelength(300e3)


def _rel(x: float, y: float) -> float:
    return abs(x / y - 1)


def _angle_deg(t1: float, t2: float) -> float:
    """Difference of two axis directions (mod 180 deg), degrees."""
    d = np.degrees(t1 - t2)
    return abs((d + 90) % 180 - 90)


# ================================================================= simulator
def test_ring_pattern_geometry_and_truth():
    ell = (1.05, 0.97, 0.3)
    p, t = sim.ring_pattern((96, 96), radius=30, width=2, center=(47.2, 48.6), ellipse=ell,
                            background=0.1)
    assert p.dims == ("qx", "qy") and p.shape == (96, 96) and p.dtype == np.float32
    assert s4.get_origin(p) == pytest.approx((47.2, 48.6))
    # the peak of the ring along phi lies at a * radius from the centre
    a_mat = sim.ellipse_matrix(*ell)
    for ang in (0.3, 1.2, 2.5):
        u = np.array([np.cos(ang), np.sin(ang)])
        peak = np.array([47.2, 48.6]) + a_mat @ (30 * u)
        i, j = np.rint(peak).astype(int)
        # model at that pixel centre, independently evaluated
        rho = np.linalg.norm(np.linalg.solve(a_mat, np.array([i, j]) - [47.2, 48.6]))
        assert p.values[i, j] == pytest.approx(np.exp(-(rho - 30) ** 2 / 8) + 0.1, rel=1e-5)
    assert float(t.ring_a) == pytest.approx(1.05 * 30)
    assert float(t.ring_b) == pytest.approx(0.97 * 30)
    assert float(t.ring_theta) == pytest.approx(0.3)
    # a < b: the major axis is perpendicular to phi, wrapped to (-pi/2, pi/2]
    _, t2 = sim.ring_pattern((32, 32), radius=8, width=1, ellipse=(0.9, 1.1, 1.0))
    assert float(t2.ring_a) == pytest.approx(8.8)
    assert float(t2.ring_theta) == pytest.approx(1.0 + np.pi / 2 - np.pi)


def test_ring_pattern_noise_cube_and_calibration():
    p, t = sim.ring_pattern((64, 64), radius=20, width=2, dose=400, background=(0.0, 10.0))
    assert float(p.max()) == pytest.approx(400, rel=0.25)
    assert np.all(p.values == np.round(p.values))
    cx = 31.5 + np.linspace(-1, 1, 12).reshape(3, 4)
    cube, t = sim.ring_pattern((48, 48), radius=12, width=2, center=(cx, 23.5),
                               scan_shape=(3, 4), q_pixel_size=0.02, dose=50, seed=3)
    assert cube.dims == s4.datacube(np.zeros((1, 1, 1, 1))).dims
    assert s4.q_pixel_size(cube) == pytest.approx((0.02, 0.02, "1/Å"))
    np.testing.assert_allclose(s4.get_origin(cube)[0].values, cx)
    np.testing.assert_allclose(t.qx0.values, cx)
    assert not np.array_equal(cube.values[0, 0], cube.values[0, 1])  # independent noise
    with pytest.raises(ValueError, match="width must be positive"):
        sim.ring_pattern(radius=10, width=0)
    with pytest.raises(ValueError, match="ellipse must be"):
        sim.ring_pattern(radius=10, width=1, ellipse=(1, -1, 0))
    with pytest.raises(ValueError, match="background"):
        sim.ring_pattern(radius=10, width=1, background=(1, 2, 3))


# ============================================================ ellipse fitting
@pytest.mark.parametrize("ell", [(1.04, 0.98, 0.5), (0.95, 1.03, -1.2), (1.02, 1.0, 2.0)])
def test_fit_ellipse_noise_free(ell):
    p, t = sim.ring_pattern((128, 128), radius=40, width=3, ellipse=ell, center=(63.3, 64.7))
    f = cal.fit_ellipse(p, radii=(28, 54))
    assert _rel(float(f.a), float(t.ring_a)) < 1e-4
    assert _rel(float(f.b), float(t.ring_b)) < 1e-4
    assert _rel(float(f.ratio), float(t.ring_a / t.ring_b)) < 1e-4
    assert _angle_deg(float(f.theta), float(t.ring_theta)) < 0.05
    assert -np.pi / 2 < float(f.theta) <= np.pi / 2
    assert abs(float(f.qx0_pixels) - 63.3) < 0.01 and abs(float(f.qy0_pixels) - 64.7) < 0.01
    assert abs(float(f.qx0)) < 0.01 and abs(float(f.qy0)) < 0.01  # origin is the centre
    assert _rel(float(f.width), 3 * np.sqrt(ell[0] * ell[1])) < 0.01
    assert f.a.attrs["units"] == "pixels" and f.theta.attrs["units"] == "rad"


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_ellipse_noisy(seed):
    p, t = sim.ring_pattern((128, 128), radius=40, width=3, ellipse=(1.04, 0.98, 0.5),
                            center=(63.3, 64.7), dose=100, seed=seed)
    # start the annulus off the true centre: the fit moves it
    f = cal.fit_ellipse(p, radii=(26, 54), center=(0.8, -0.6))
    assert _rel(float(f.a), float(t.ring_a)) < 0.005
    assert _rel(float(f.b), float(t.ring_b)) < 0.005
    assert _rel(float(f.ratio), float(t.ring_a / t.ring_b)) < 0.005
    assert _angle_deg(float(f.theta), float(t.ring_theta)) < 1.0
    assert abs(float(f.qx0_pixels) - 63.3) < 0.05 and abs(float(f.qy0_pixels) - 64.7) < 0.05


def test_fit_ellipse_small_ellipticity_units_pixels_exclude():
    """a/b = 1.02 in 1/Å coordinates, annulus given in pixels, a beamstop arm excluded."""
    p, t = sim.ring_pattern((128, 128), radius=40, width=2.5, ellipse=(1.01, 0.99, -0.7),
                            center=(60.6, 66.2), q_pixel_size=0.01, dose=2000, seed=4)
    arm = np.zeros(p.shape, bool)
    arm[58:64, 60:] = True
    blocked = p.where(~arm, 0.0)
    f = cal.fit_ellipse(blocked, radii=(30, 50), center=(60, 66), pixels=True,
                        exclude=xr.DataArray(arm, dims=("qx", "qy")))
    assert f.a.attrs["units"] == "1/Å"
    assert _rel(float(f.a), float(t.ring_a) * 0.01) < 0.005
    assert _rel(float(f.b), float(t.ring_b) * 0.01) < 0.005
    assert _rel(float(f.ratio), 1.01 / 0.99) < 0.002
    assert _angle_deg(float(f.theta), -0.7) < 1.0
    assert abs(float(f.qx0_pixels) - 60.6) < 0.05 and abs(float(f.qy0_pixels) - 66.2) < 0.05
    # without exclusion the zeroed arm biases the fit
    g = cal.fit_ellipse(blocked, radii=(30, 50), center=(60, 66), pixels=True)
    assert float(g.attrs["rms_residual"]) > float(f.attrs["rms_residual"])


def test_fit_ellipse_dask_image_and_bragg_vector_map_like_ring():
    """A ring of points (like a Bragg vector map of many grains), dask-backed."""
    img = np.zeros((96, 96))
    a_mat = sim.ellipse_matrix(1.03, 0.99, 0.25)
    for ang in np.linspace(0, 2 * np.pi, 720, endpoint=False):
        x, y = np.array([48.3, 47.6]) + a_mat @ (30 * np.array([np.cos(ang), np.sin(ang)]))
        img[int(round(x)), int(round(y))] += 1
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(img, 1.5)
    pattern = s4.set_origin(xr.DataArray(da.from_array(img, chunks=48), dims=("qx", "qy"),
                                         coords={"qx": ("qx", np.arange(96.0),
                                                        {"units": "pixels"}),
                                                 "qy": ("qy", np.arange(96.0),
                                                        {"units": "pixels"})}), 48, 48)
    f = cal.fit_ellipse(pattern, radii=(22, 38))
    assert _rel(float(f.a), 30.9) < 0.005 and _rel(float(f.b), 29.7) < 0.005
    assert _angle_deg(float(f.theta), 0.25) < 1.0


@pytest.fixture(scope="module")
def sharp_ring() -> tuple[xr.DataArray, xr.Dataset]:
    return sim.ring_pattern((128, 128), radius=35, width=1.5, ellipse=(1.03, 0.98, 0.4),
                            dose=500, seed=2)


@pytest.mark.parametrize("radii", [(20, 36), (36, 50), (26, 41), (32, 36)])
def test_fit_ellipse_annuli_that_hold_the_ring(sharp_ring, radii):
    """Annuli holding the ring's peak (even at their edge) fit it: a = 36.05, b = 34.3."""
    p, t = sharp_ring
    f = cal.fit_ellipse(p, radii=radii)
    assert _rel(float(f.a), float(t.ring_a)) < 0.003
    assert _rel(float(f.b), float(t.ring_b)) < 0.003
    assert float(f.amplitude) > 0 and f.attrs["amplitude_snr"] > 10  # measured 16 to 700


@pytest.mark.parametrize(("radii", "match"), [
    # the fit returned a ~ 18, 68 and 23 (true 36) with a negative amplitude, converged=1
    ((10, 25), "no bright ring in the annulus radii=\\(10.0, 25.0\\).*amplitude -13"),
    ((50, 60), "no bright ring in the annulus radii=\\(50.0, 60.0\\).*a = 68"),
    ((5, 12), "no bright ring.*must be positive"),
    # a noise ripple (amplitude 0.7 of a ring of 500): a = 45.8, inside the annulus
    ((44, 52), "no significant ring.*at least 5 standard errors"),
    # only the ring's inner tail in the annulus: a = 36.35 (0.8 % off)
    ((38, 46), "peak lies outside the annulus.*only its tail"),
    # the ring's peak just beyond the outer radius: b = 34.25 > 33
    ((29, 33), "reaching outside the annulus"),
])
def test_fit_ellipse_rejects_an_annulus_that_misses_the_ring(sharp_ring, radii, match):
    p, _ = sharp_ring
    with pytest.raises(ValueError, match=match):
        cal.fit_ellipse(p, radii=radii)


def test_fit_ellipse_errors():
    p, _ = sim.ring_pattern((48, 48), radius=15, width=2)
    with pytest.raises(ValueError, match="at least 30 are needed"):
        cal.fit_ellipse(p, radii=(15, 15.3))
    with pytest.raises(ValueError, match="inner < outer"):
        cal.fit_ellipse(p, radii=(20, 10))
    with pytest.raises(ValueError, match="radii must be a pair"):
        cal.fit_ellipse(p, radii=12)
    no_origin = xr.DataArray(p.values, dims=("qx", "qy"))
    with pytest.raises(ValueError, match="no origin set"):
        cal.fit_ellipse(no_origin, radii=(10, 20))
    # a plain array has no origin: the message says how to give the centre
    with pytest.raises(ValueError, match=r"plain ndarray.*center=\(row, col\), pixels=True"):
        cal.fit_ellipse(no_origin.values, radii=(10, 20))
    with pytest.raises(ValueError, match="dims \\('qx', 'qy'\\)"):
        cal.fit_ellipse(p.expand_dims("rx"), radii=(10, 20))
    with pytest.raises(TypeError, match="DataArray"):
        cal.fit_ellipse([[1, 2], [3, 4]], radii=(1, 2))
    with pytest.raises(ValueError, match="exclude must be a bool mask of the detector shape"):
        cal.fit_ellipse(p, radii=(10, 20), exclude=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="center is required with pixels=True"):
        cal.fit_ellipse(p, radii=(10, 20), pixels=True)
    flat = p.copy(data=np.ones(p.shape, "float32"))
    with pytest.raises(ValueError, match="no ring"):
        cal.fit_ellipse(flat, radii=(10, 20))


# ======================================================== ellipse correction
def _radial_width(r: np.ndarray, values: np.ndarray, r0: float) -> tuple[float, float]:
    """Peak radius and Gaussian width of a ring from pixels within 12 px of r0 (weights
    divided by r, so the pixel count growing with r does not bias them)."""
    sel = np.abs(r - r0) < 12
    w = values[sel] / r[sel]
    mean = float((w * r[sel]).sum() / w.sum())
    return mean, float(np.sqrt((w * (r[sel] - mean) ** 2).sum() / w.sum()))


def test_correct_ellipse_makes_the_ring_circular():
    ell = (1.07, 0.96, 0.4)
    p, t = sim.ring_pattern((128, 128), radius=40, width=2, ellipse=ell, center=(63.3, 64.7),
                            background=0.0)
    f = cal.fit_ellipse(p, radii=(28, 54))
    c = cal.correct_ellipse(p, f)
    g = np.sqrt(1.07 * 0.96)
    assert float(c.ellipse_a) * float(c.ellipse_b) == pytest.approx(1.0)
    assert float(c.ellipse_a) == pytest.approx(1.07 / g, rel=1e-4)
    assert float(c.ellipse_theta) == pytest.approx(0.4, abs=1e-4)
    assert c.qx_c.dims == ("qx", "qy") and c.qx_c.attrs["units"] == "pixels"
    np.testing.assert_array_equal(c.values, p.values)
    values = p.values.astype(float)
    r_unc = np.hypot(*np.meshgrid(p.qx, p.qy, indexing="ij"))
    r_cor = np.hypot(c.qx_c.values, c.qy_c.values)
    rad_c, width_c = _radial_width(r_cor, values, 40 * g)
    _, width_u = _radial_width(r_unc, values, 40 * g)
    assert _rel(rad_c, 40 * g) < 0.002
    assert _rel(width_c, 2 * g) < 0.03          # back to the undistorted width
    assert width_u > 1.2 * width_c              # the distortion had broadened it
    # the corrected annulus captures the ring evenly around it
    ann = cal.corrected_annulus(c, (40 * g - 2, 40 * g + 2))  # +- 1 width
    plain = s4.detectors.annulus(p, (40 * g - 2, 40 * g + 2))
    phi = np.arctan2(c.qy_c.values, c.qx_c.values)

    def sectors(mask):
        sec = ((phi + np.pi) / (2 * np.pi) * 8).astype(int) % 8
        return np.array([values[mask & (sec == k)].sum() for k in range(8)])

    s_cor, s_unc = sectors(ann.values), sectors(plain.values)
    assert s_cor.max() / s_cor.min() < 1.05  # pixel-grid sampling alone gives ~1.03
    assert s_unc.max() / s_unc.min() > 1.3
    assert ann.attrs["detector"] == "corrected_annulus"


def test_corrected_detectors_in_virtual_images_on_dask():
    ell = (1.06, 0.95, -0.3)
    cube, t = sim.ring_pattern((64, 64), radius=20, width=1.5, ellipse=ell, scan_shape=(3, 4),
                               q_pixel_size=0.05, background=0.0)
    lazy = cube.chunk({"rx": 2})
    c = cal.correct_ellipse(lazy, ell)
    assert isinstance(c.data, da.Array)
    g = np.sqrt(1.06 * 0.95)
    ring = cal.corrected_annulus(c, (0.05 * (20 * g - 6), 0.05 * (20 * g + 6)))
    bf = cal.corrected_circle(c, radius=0.05 * (20 * g - 6))
    img = s4.virtual_image(c, {"ring": ring, "inner": bf})
    assert isinstance(img["ring"].data, da.Array)
    total = float(cube.values[0, 0].sum())
    # nearly the whole ring lies in the corrected annulus, almost none inside it
    assert float(img["ring"].values[0, 0]) > 0.995 * total
    assert float(img["inner"].values[0, 0]) < 0.005 * total
    qx_c, qy_c = cal.ellipse_corrected_coordinates(cube, (1.06 * 3, 0.95 * 3, -0.3))
    np.testing.assert_allclose(qx_c.values, c.qx_c.values)  # only the ratio matters


@pytest.fixture(scope="module")
def ring_cube() -> xr.DataArray:
    """A 2 x 3 scan of one elliptical ring (a/b = 1.08/0.95, phi = 0.4) with its fitted
    ellipse stored; q in 1/Å, origin off the detector centre."""
    cube, _ = sim.ring_pattern((128, 128), radius=40, width=2, center=(62.3, 65.1),
                               ellipse=(1.08, 0.95, 0.4), q_pixel_size=0.01,
                               scan_shape=(2, 3), background=0.0)
    cube = s4.set_origin(cube, 62.3, 65.1)
    return cal.correct_ellipse(cube, cal.fit_ellipse(s4.virtual_diffraction(cube),
                                                     radii=(0.3, 0.55)))


def _ring_fraction(obj: xr.DataArray, ellipse: Any = None) -> float:
    """Fraction of pattern (0, 0)'s intensity in a corrected annulus of +- 1 ring width
    (2 px) around the corrected ring radius 40 sqrt(1.08 0.95) px, in obj's q units."""
    px = s4.q_pixel_size(obj)[0]
    g = 40 * np.sqrt(1.08 * 0.95)
    ann = cal.corrected_annulus(obj, ((g - 2) * px, (g + 2) * px), ellipse=ellipse)
    return float(s4.virtual_image(obj, ann)[0, 0]) / float(obj[0, 0].sum())


@pytest.mark.parametrize("op", ["flip_qx", "flip_qy", "transpose_q", "transpose_flip"])
def test_flips_and_transposes_of_q_carry_the_ellipse(ring_cube, op):
    """The stored ellipse equals a fresh fit of the moved data: a mirror maps theta to
    -theta, a transpose to pi/2 - theta, and the semi-axes stay attached to them."""
    ops = {"flip_qx": lambda c: s4.flip_q(c, "qx"), "flip_qy": lambda c: s4.flip_q(c, "qy"),
           "transpose_q": s4.transpose_q,
           "transpose_flip": lambda c: s4.flip_q(s4.transpose_q(c), "qx")}
    expected_theta = {"flip_qx": -0.4, "flip_qy": -0.4, "transpose_q": np.pi / 2 - 0.4,
                      "transpose_flip": 0.4 - np.pi / 2}[op]
    out = ops[op](ring_cube)
    fit = cal.fit_ellipse(s4.virtual_diffraction(out), radii=(0.3, 0.55))
    theta = float(out.ellipse_theta)
    assert _angle_deg(theta, float(fit.theta)) < 0.01
    assert _angle_deg(theta, expected_theta) < 0.01
    assert float(out.ellipse_a) / float(out.ellipse_b) == pytest.approx(float(fit.ratio),
                                                                          rel=1e-4)
    assert float(out.ellipse_a) / float(out.ellipse_b) == pytest.approx(1.08 / 0.95, rel=1e-4)
    assert float(out.ellipse_a) * float(out.ellipse_b) == pytest.approx(1.0)
    assert out.ellipse_theta.attrs == {"units": "rad"}
    assert "qx_c" not in out.coords and "qy_c" not in out.coords  # like set_origin
    # the corrected annulus holds the same share of the ring as before (0.677); the
    # stale angle would give ~0.40
    before = _ring_fraction(ring_cube)
    assert before == pytest.approx(0.677, abs=0.005)
    assert _ring_fraction(out) == pytest.approx(before, abs=1e-4)
    assert _ring_fraction(out, (1.08, 0.95, 0.4)) < 0.45
    # correct_ellipse(obj) puts qx_c/qy_c back from the stored ellipse
    again = cal.correct_ellipse(out)
    ref_x, ref_y = cal.ellipse_corrected_coordinates(out)
    np.testing.assert_array_equal(again.qx_c.values, ref_x.values)
    np.testing.assert_array_equal(again.qy_c.values, ref_y.values)


def test_scan_flips_and_transposes_leave_the_ellipse(ring_cube):
    for out in (s4.flip_r(ring_cube, "rx"), s4.flip_r(ring_cube, "ry"),
                s4.transpose_r(ring_cube)):
        for k in ("ellipse_a", "ellipse_b", "ellipse_theta"):
            assert float(out[k]) == float(ring_cube[k])
        for k in ("qx_c", "qy_c"):
            assert out[k].dims == ("qx", "qy")
            np.testing.assert_array_equal(out[k].values, ring_cube[k].values)


def test_q_calibration_changes_keep_the_ellipse_and_drop_stale_corrected_coordinates(
        ring_cube):
    """qx_c/qy_c would stay in the old units: they are dropped (as by set_origin); the
    dimensionless ellipse survives an isotropic rescaling and a change of units, and is
    re-expressed when the pixels' aspect ratio changes (checked against a fresh fit)."""
    a, b, theta = (float(ring_cube[k]) for k in ("ellipse_a", "ellipse_b", "ellipse_theta"))
    finer = s4.set_q_calibration(ring_cube, 0.05, "1/nm")  # 0.01 1/Å -> 0.005 1/Å
    with_beam = s4.set_beam(ring_cube, beam_energy=300e3)
    mrad = s4.convert_q_units(with_beam, "mrad")
    pixels = s4.convert_q_units(ring_cube, "pixels")
    coarser = s4.set_q_calibration(ring_cube, 0.02)
    for out in (finer, mrad, pixels, coarser):
        assert "qx_c" not in out.coords and "qy_c" not in out.coords
        assert (float(out.ellipse_a), float(out.ellipse_b)) == pytest.approx((a, b), rel=1e-12)
        assert float(out.ellipse_theta) == pytest.approx(theta, abs=1e-12)
        assert _ring_fraction(out) == pytest.approx(_ring_fraction(ring_cube), abs=1e-4)
    # recomputed, they are in mrad: the 1/Å values times 1000 λ
    qx_c, qy_c = cal.ellipse_corrected_coordinates(mrad)
    np.testing.assert_allclose(qx_c.values, ring_cube.qx_c.values * 1000 * LAM300, rtol=1e-9)
    np.testing.assert_allclose(qy_c.values, ring_cube.qy_c.values * 1000 * LAM300, rtol=1e-9)
    # pixels 1.3 times taller along qy: the ring in the new coordinates is a new ellipse
    tall = s4.set_q_calibration(ring_cube, (0.01, 0.013))
    fit = cal.fit_ellipse(s4.virtual_diffraction(tall), radii=(0.3, 0.7))
    assert float(tall.ellipse_a) / float(tall.ellipse_b) == pytest.approx(float(fit.ratio),
                                                                            rel=1e-4)
    assert _angle_deg(float(tall.ellipse_theta), float(fit.theta)) < 0.01
    assert _angle_deg(float(tall.ellipse_theta), theta) > 10  # it did change
    assert float(tall.ellipse_a) * float(tall.ellipse_b) == pytest.approx(1.0)


def test_ellipse_correction_errors():
    p, _ = sim.ring_pattern((32, 32), radius=10, width=1)
    with pytest.raises(ValueError, match="no ellipse"):
        cal.corrected_circle(p, 1.0)
    with pytest.raises(ValueError, match="a > 0, b > 0"):
        cal.correct_ellipse(p, (1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"must be \(a, b, theta\)"):
        cal.correct_ellipse(p, (1.0, 2.0))
    with pytest.raises(ValueError, match="must hold 'a', 'b', 'theta'"):
        cal.correct_ellipse(p, {"x": 1})
    no_origin = p.assign_coords(qx=("qx", np.arange(32.0), {"units": "pixels"}),
                                qy=("qy", np.arange(32.0), {"units": "pixels"}))
    with pytest.raises(ValueError, match="ellipse correction needs the origin"):
        cal.ellipse_corrected_coordinates(no_origin, (1.1, 1.0, 0.0))
    c = cal.correct_ellipse(p, (1.1, 1.0, 0.0))
    with pytest.raises(ValueError, match="inner < outer"):
        cal.corrected_annulus(c, (3, 2))
    with pytest.raises(ValueError, match="selects no detector pixel"):
        cal.corrected_circle(c, 1.0, center=(100, 100))


# ======================================================= reciprocal pixel size
def test_q_pixel_size_from_ring_fit():
    """Fit the ring radius in pixels, recover the known pixel size from its d-spacing."""
    dk = 0.0125
    p, _ = sim.ring_pattern((128, 128), radius=37.5, width=2.5, ellipse=(1.02, 0.99, 0.1),
                            dose=200, seed=5)
    f = cal.fit_ellipse(p, radii=(25, 50))
    radius = np.sqrt(float(f.a) * float(f.b))  # the corrected (area-preserving) radius
    d = 1 / (37.5 * np.sqrt(1.02 * 0.99) * dk)
    assert _rel(cal.q_pixel_size_from_ring(radius, d_spacing=d), dk) < 0.002
    assert cal.q_pixel_size_from_ring(20.0, ring_q=0.5) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="exactly one of d_spacing"):
        cal.q_pixel_size_from_ring(20.0)
    with pytest.raises(ValueError, match=r"exactly one of .* got d_spacing=2.0 and "
                                         r"ring_q=0.5"):
        cal.q_pixel_size_from_ring(20.0, d_spacing=2.0, ring_q=0.5)
    with pytest.raises(ValueError, match="radius_px must be a number, got 'r'"):
        cal.q_pixel_size_from_ring("r", ring_q=0.5)
    with pytest.raises(ValueError, match="radius_px must be positive"):
        cal.q_pixel_size_from_ring(-1.0, ring_q=0.5)


def test_q_pixel_size_from_lattice_crystal_truth():
    dk = 0.02
    _, t = sim.crystal((2, 2), (64, 64), g1=(9.0, 2.0), g2=(-3.0, 10.0), q_pixel_size=dk)
    g1 = np.hypot(*t.g1_reference.values)
    g2 = np.hypot(*t.g2_reference.values)
    d1, d2 = 1 / (g1 * dk), 1 / (g2 * dk)
    assert cal.q_pixel_size_from_lattice(g1, d1) == pytest.approx(dk)
    # several reflections; the Friedel pair distance is order 2
    est = cal.q_pixel_size_from_lattice([g1, 2 * g2 + 0.1, 2 * g1 - 0.1], [d1, d2, d1],
                                        order=[1, 2, 2])
    assert _rel(est, dk) < 0.005
    with pytest.raises(ValueError, match="one per distance"):
        cal.q_pixel_size_from_lattice([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="d_spacing must be positive"):
        cal.q_pixel_size_from_lattice(3.0, 0.0)


def test_q_pixel_size_from_probe():
    dk = 0.02
    cube, t = sim.crystal((2, 2), (64, 64), disk_radius=6, q_pixel_size=dk)
    alpha = float(cube.convergence_semiangle)
    assert cal.q_pixel_size_from_probe(alpha, 6.0, 300e3) == pytest.approx(dk, rel=1e-12)
    assert cal.q_pixel_size_from_probe(alpha, 6.0, units="mrad") == pytest.approx(
        1000 * LAM300 * dk)
    with pytest.raises(ValueError, match="beam_energy"):
        cal.q_pixel_size_from_probe(alpha, 6.0)
    with pytest.raises(ValueError, match="bf_radius_px must be positive"):
        cal.q_pixel_size_from_probe(alpha, 0.0, 300e3)


@pytest.fixture(scope="module")
def probe_cube() -> tuple[xr.DataArray, float]:
    """Uncalibrated cube (q in pixels, origin set) whose true pixel size is 0.02 1/Å."""
    cube, _ = sim.crystal((4, 4), (64, 64), g1=(20.0, 3.0), g2=(-4.0, 21.0), disk_radius=6,
                          origin_drift=(0.1, 0.0, 0.0, -0.1), q_pixel_size=0.02, seed=1)
    return s4.set_q_calibration(cube, 1.0, "pixels"), float(cube.convergence_semiangle)


@pytest.mark.parametrize("mode,value", [
    ("dk", 0.02), ("kMax", 0.02 * 32), ("dx", 1 / (64 * 0.02)), ("da", 1000 * LAM300 * 0.02),
    ("angleMax", 1000 * LAM300 * 0.02 * 32), ("RBF", 6.0), ("fitRBF", None),
    ("n_alpha", None),
])
@pytest.mark.parametrize("lazy", [False, True])
def test_calibrate_q_modes(probe_cube, mode, value, lazy):
    cube, alpha = probe_cube
    if mode == "n_alpha":
        value = 1000 * LAM300 * 0.02 * 32 / alpha  # edge angle / alpha
    if lazy:
        cube = cube.chunk({"rx": 2})
    out = cal.calibrate_q(cube, mode, value)
    sx, sy, units = s4.q_pixel_size(out)
    assert units == "1/Å"
    tol = 1e-4 if mode == "fitRBF" else 1e-9
    assert _rel(sx, 0.02) < tol and _rel(sy, 0.02) < tol
    np.testing.assert_allclose(s4.get_origin(out)[0].values, s4.get_origin(cube)[0].values)
    assert isinstance(out.data, da.Array) == lazy
    mrad = cal.calibrate_q(cube, mode, value, units="mrad")
    assert s4.q_pixel_size(mrad)[0] == pytest.approx(1000 * LAM300 * sx, rel=1e-9)


def test_calibrate_q_noisy_fit_rbf_and_errors(probe_cube):
    noisy, _ = sim.crystal((4, 4), (64, 64), g1=(20.0, 3.0), g2=(-4.0, 21.0), disk_radius=6,
                           q_pixel_size=0.02, dose=50, seed=2)
    alpha = float(noisy.convergence_semiangle)
    bare = s4.set_q_calibration(noisy.drop_vars(["convergence_semiangle", "beam_energy"]),
                                1.0, "pixels")
    out = cal.calibrate_q(bare, "fitRBF", convergence_semiangle=alpha, beam_energy=300e3)
    assert _rel(s4.q_pixel_size(out)[0], 0.02) < 0.01
    assert float(out.beam_energy) == 300e3 and float(out.convergence_semiangle) == alpha
    pattern = s4.virtual_diffraction(probe_cube[0])
    assert _rel(s4.q_pixel_size(cal.calibrate_q(pattern, "fitRBF"))[0], 0.02) < 1e-4
    with pytest.raises(ValueError, match="needs convergence_semiangle"):
        cal.calibrate_q(bare, "RBF", 6.0)
    with pytest.raises(ValueError, match="needs beam_energy"):
        cal.calibrate_q(bare, "da", 0.4)
    with pytest.raises(ValueError, match="mode must be one of"):
        cal.calibrate_q(bare, "Q_pixel_size", 0.1)
    with pytest.raises(ValueError, match="needs a value"):
        cal.calibrate_q(bare, "dk")
    with pytest.raises(ValueError, match="leave value=None"):
        cal.calibrate_q(bare, "fitRBF", 3.0)
    with pytest.raises(ValueError, match="value must be positive"):
        cal.calibrate_q(bare, "dk", -0.1)
    with pytest.raises(ValueError, match="square detector"):
        cal.calibrate_q(bare.isel(qy=slice(0, 60)), "kMax", 1.0)
    with pytest.raises(ValueError, match="units must be"):
        cal.calibrate_q(bare, "dk", 0.1, units="nm")
    with pytest.raises(ValueError, match="value must be a number, got 'small'"):
        cal.calibrate_q(bare, "dk", "small")
    spot = np.zeros((32, 32))
    spot[8:, 8:] = 0.8  # a bright background, apart from a small spot
    spot[2:5, 2:5] = 1.0
    noise = xr.DataArray(spot, dims=("qx", "qy"))
    with pytest.raises(ValueError, match=r"fitRBF could not measure the bright-field disk "
                                         r"of obj's mean pattern: its plateau I0 = 1 is "
                                         r"above, but .* background 0.8 .*mode='RBF'"):
        cal.calibrate_q(noise, "fitRBF", convergence_semiangle=20.0, beam_energy=300e3)


# =============================================================== beamstop
@pytest.fixture(scope="module")
def blocked() -> tuple[xr.DataArray, np.ndarray]:
    """A ring pattern behind a beamstop: a disk at the centre and an arm to the edge."""
    cube, _ = sim.ring_pattern((96, 96), radius=30, width=3, background=(1.0, 30.0),
                               scan_shape=(2, 3), dose=500, seed=7)
    qx, qy = np.meshgrid(np.arange(96.0), np.arange(96.0), indexing="ij")
    stop = (np.hypot(qx - 47.5, qy - 47.5) <= 8) | ((np.abs(qx - 47.5) <= 2.5) & (qy >= 47.5))
    return cube.where(~stop, 0.0), stop


def test_beamstop_mask_recovers_known_stop(blocked):
    cube, stop = blocked
    pattern = s4.virtual_diffraction(cube)
    mask = cal.beamstop_mask(pattern, distance_edge=0)
    assert mask.dtype == bool and mask.dims == ("qx", "qy")
    np.testing.assert_array_equal(mask.values, stop)
    grown = cal.beamstop_mask(pattern, distance_edge=2, blur=0.5)
    assert grown.values[stop].all()
    dist = __import__("scipy.ndimage", fromlist=["x"]).distance_transform_edt(~stop)
    assert not grown.values[dist > 3].any()
    lazy = cube.chunk({"rx": 1})
    np.testing.assert_array_equal(cal.beamstop_mask(lazy, reduce="max", distance_edge=0).values,
                                  stop)
    # a dark spot not connected to the edge is kept only with connected_to_edge=False
    holed = pattern.copy(data=pattern.values.copy())
    holed.values[10:13, 10:13] = 0
    assert not cal.beamstop_mask(holed, distance_edge=0).values[11, 11]
    assert cal.beamstop_mask(holed, distance_edge=0, connected_to_edge=False).values[11, 11]
    # used as the exclusion of an ellipse fit and of the background
    f = cal.fit_ellipse(pattern, radii=(20, 40), exclude=grown)
    assert _rel(np.sqrt(float(f.a) * float(f.b)), 30) < 0.002


def test_beamstop_mask_errors(blocked):
    cube, _ = blocked
    with pytest.raises(ValueError, match="threshold must be in"):
        cal.beamstop_mask(cube, threshold=1.5)
    with pytest.raises(ValueError, match="distance_edge must be"):
        cal.beamstop_mask(cube, distance_edge=-1)
    with pytest.raises(ValueError, match="threshold must be a number, got 'dim'"):
        cal.beamstop_mask(cube, threshold="dim")
    with pytest.raises(ValueError, match=r"blur must be >= 0 \(pixels\), got nan"):
        cal.beamstop_mask(cube, blur=float("nan"))
    with pytest.raises(ValueError, match="reduce must be"):
        cal.beamstop_mask(cube, reduce="median")
    with pytest.raises(TypeError, match="DataArray"):
        cal.beamstop_mask(np.zeros((4, 4)))


# ======================================================= radial background
def test_radial_background_of_a_radial_pattern_is_the_pattern():
    p, t = sim.ring_pattern((96, 96), radius=30, width=3, center=(46.3, 48.8),
                            q_pixel_size=0.01)
    res = cal.radial_background(p)
    assert res.profile.dims == ("q",) and res.profile.q.attrs["units"] == "1/Å"
    assert res.background.dims == ("qx", "qy") and res.background.dtype == np.float32
    err = np.abs(res.background.values - p.values)
    assert err.mean() < 2e-3 and err.max() < 0.03
    q_peak = float(res.profile.q[int(np.argmax(res.profile.values))])
    assert abs(q_peak - 0.30) <= 0.01
    # elliptical ring: measured about the corrected radius once the ellipse is stored
    pe, _ = sim.ring_pattern((96, 96), radius=30, width=3, ellipse=(1.08, 0.95, 0.7))
    plain = np.abs(cal.radial_background(pe).background.values - pe.values).mean()
    corr = cal.correct_ellipse(pe, (1.08, 0.95, 0.7))
    res_c = cal.radial_background(corr)
    assert res_c.attrs["ellipse_corrected"] == 1
    assert np.abs(res_c.background.values - pe.values).mean() < 0.1 * plain
    assert cal.radial_background(corr, use_ellipse=False).attrs["ellipse_corrected"] == 0


@pytest.fixture(scope="module")
def disks_on_ring() -> tuple[xr.DataArray, xr.DataArray]:
    """Bragg disks (per-position drifting origin) on a radial halo about the same origin."""
    cube, t = sim.crystal((4, 5), (80, 80), g1=(14.0, 3.0), g2=(-4.0, 15.0), disk_radius=3,
                          origin_drift=(0.3, -0.2, 0.1, 0.25), central_intensity=2.0, seed=2)
    ring, _ = sim.ring_pattern((80, 80), radius=25, width=4, background=(0.5, 20.0),
                               center=(t.qx0.values, t.qy0.values), scan_shape=(4, 5))
    return cube.copy(data=cube.values + ring.values), cube


def test_subtract_radial_background_keeps_disks(disks_on_ring):
    total, disks = disks_on_ring
    sub = cal.subtract_radial_background(total)
    assert sub.dtype == np.float32 and sub.dims == total.dims
    xr.testing.assert_identical(sub.coords.to_dataset(), total.coords.to_dataset())
    err = sub.values - disks.values
    # within the inscribed circle (the corners' partial rings hold few pixels, mostly disk)
    qx0, qy0 = (v.values[..., None, None] for v in s4.get_origin(total))
    r = np.hypot(np.arange(80.0)[:, None] - qx0, np.arange(80.0) - qy0)
    empty = (disks.values < 1e-3) & (r < 38)
    assert np.abs(err[empty]).mean() < 0.02 and np.abs(err[empty]).max() < 0.06
    inside = disks.values > 0.5
    assert np.median(np.abs(err[inside])) < 0.05  # the disks survive the median
    # same answer lazily, per position origin carried into the chunks
    lazy = cal.subtract_radial_background(total.chunk({"rx": 2, "qx": 40}))
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(lazy.values, sub.values, atol=1e-5)
    res = cal.radial_background(total.chunk({"rx": 2}), sigma=1.0)
    assert isinstance(res.profile.data, da.Array) and isinstance(res.background.data, da.Array)
    assert res.profile.dims == ("rx", "ry", "q") and res.background.dims == total.dims
    eager = cal.radial_background(total, sigma=1.0)
    np.testing.assert_allclose(res.background.values, eager.background.values, atol=1e-5)


def test_radial_background_exclude_and_errors(disks_on_ring):
    total, _ = disks_on_ring
    pattern = total.isel(rx=0, ry=0)
    ring_only = cal.radial_background(pattern).profile
    hole = np.zeros((80, 80), bool)
    hole[:, :46] = True  # more than half of every ring up to |q| ~ 30
    zeroed = pattern.where(~hole, 0.0)
    bad = cal.radial_background(zeroed).profile
    good = cal.radial_background(zeroed, exclude=hole).profile
    inner = (ring_only.q > 8) & (ring_only.q < 30)  # rings the hole does not cover whole
    assert np.abs(good - ring_only)[inner].max() < 0.15
    assert np.abs(bad - ring_only)[inner].max() > 0.3
    # subtracting: the excluded pixels hold no signal and become 0, the rest is the
    # pattern minus the background estimated without them (numpy and dask alike)
    sub = cal.subtract_radial_background(zeroed, exclude=hole)
    assert float(np.abs(sub.values[hole]).max()) == 0.0
    background = cal.radial_background(zeroed, exclude=hole).background.values
    np.testing.assert_allclose(sub.values[~hole], (zeroed.values - background)[~hole],
                               rtol=1e-5, atol=1e-6)
    lazy = cal.subtract_radial_background(total.chunk({"rx": 1}), exclude=hole)
    np.testing.assert_allclose(lazy.values, cal.subtract_radial_background(
        total, exclude=hole).values, rtol=1e-6, atol=1e-6)
    assert float(np.abs(lazy.values[..., hole]).max()) == 0.0
    no_origin = pattern.assign_coords(qx=("qx", np.arange(80.0), {"units": "pixels"}),
                                      qy=("qy", np.arange(80.0), {"units": "pixels"}))
    with pytest.raises(ValueError, match="radial background needs the origin.*no origin set"):
        cal.radial_background(no_origin)
    with pytest.raises(ValueError, match="needs the origin.*set_origin"):
        cal.subtract_radial_background(no_origin)
    with pytest.raises(ValueError, match="exclude must be a bool mask"):
        cal.radial_background(pattern, exclude=np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="exclude leaves out every"):
        cal.radial_background(pattern, exclude=np.ones((80, 80), bool))
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        cal.radial_background(pattern, sigma=-1)
    with pytest.raises(ValueError, match="bin_width must be positive"):
        cal.radial_background(pattern, bin_width=0)


# ============================================================ local average
def test_local_average():
    rng = np.random.default_rng(0)
    data = rng.random((5, 6, 8, 9)).astype("float32")
    cube = s4.datacube(data, q_step=0.1, q_units="1/Å", origin=(3.5, 4.0))
    out = cal.local_average(cube, 2, 3)
    cross = [(2, 3), (1, 3), (3, 3), (2, 2), (2, 4)]
    np.testing.assert_allclose(out.values, np.mean([data[i, j] for i, j in cross], 0),
                               rtol=1e-6)
    assert out.dims == ("qx", "qy") and float(out.rx) == 2.0 and float(out.ry) == 3.0
    np.testing.assert_allclose(cal.local_average(cube, 0, 0, radius=1.5).values,
                               data[:2, :2].mean((0, 1)), rtol=1e-6)
    np.testing.assert_allclose(cal.local_average(cube, 4, 5, radius=0).values, data[4, 5])
    w = np.exp(-np.array([0, 1, 1, 1, 1]) / (2 * 0.8**2))
    expect = np.tensordot(w, np.array([data[i, j] for i, j in cross]), 1) / w.sum()
    np.testing.assert_allclose(cal.local_average(cube, 2, 3, sigma=0.8).values, expect,
                               rtol=1e-5)
    lazy = cal.local_average(cube.chunk({"rx": 2}), 2, 3)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(lazy.values, out.values, rtol=1e-6)
    with pytest.raises(ValueError, match=r"rx must be a scan index in \[0, 4\]"):
        cal.local_average(cube, 5, 0)
    with pytest.raises(TypeError, match="ry must be an integer"):
        cal.local_average(cube, 0, 1.5)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        cal.local_average(cube, 0, 0, radius=-1)
    with pytest.raises(ValueError, match="dims"):
        cal.local_average(cube.isel(rx=0), 0, 0)


def test_local_average_follows_the_origin():
    """With shift_center the neighbours are aligned on their origins before averaging."""
    cube, t = sim.crystal((5, 5), (48, 48), disk_radius=4, origin_drift=(1.0, 0.0, 0.0, 0.0))
    plain = cal.local_average(cube, 2, 2, radius=1.5)
    aligned = cal.local_average(cube, 2, 2, radius=1.5, shift_center=True)
    centre = cube.isel(rx=2, ry=2).values
    inner = (slice(2, -2), slice(2, -2))  # whole-pixel shifts wrap at the detector edge
    assert np.abs(aligned.values - centre)[inner].max() < 1e-5
    assert np.abs(plain.values - centre)[inner].max() > 0.1


# ================================================================= plots
def test_plots(disks_on_ring):
    from stem4d.plot import calibrate as pcal

    p, _ = sim.ring_pattern((64, 64), radius=20, width=2, ellipse=(1.05, 0.97, 0.3))
    f = cal.fit_ellipse(p, radii=(12, 28))
    fig = pcal.show_ellipse(p, f, radii=f.attrs["radii"])
    assert len(fig.axes[0].lines) >= 5
    # a plain 2-D array (pixels from 0), fitted about a pixel centre, as fit_ellipse reads it
    g = cal.fit_ellipse(p.values, radii=(12, 28), center=(31.5, 31.5), pixels=True)
    fig_np = pcal.show_ellipse(p.values, g)
    ax = fig_np.axes[0]
    ring = ax.lines[0]  # the fitted ellipse: x is qy, y is qx, about the pixel centre
    assert np.mean(ring.get_xdata()[:-1]) == pytest.approx(31.5, abs=0.01)  # closed: 361 pts
    assert np.mean(ring.get_ydata()[:-1]) == pytest.approx(31.5, abs=0.01)
    assert np.ptp(ring.get_ydata()) / 2 == pytest.approx(float(g.a), rel=0.05)  # theta 0.3
    np.testing.assert_allclose(ax.images[0].get_extent(), [-0.5, 63.5, 63.5, -0.5])
    assert ax.get_xlabel() == "qy (pixels)"
    total, _ = disks_on_ring
    fig2 = pcal.show_radial_background(cal.radial_background(total))
    assert len(fig2.axes) == 3
    fig3 = pcal.show_radial_background(cal.radial_background(p), pattern=p, log=True)
    assert fig3.axes[0].get_yscale() == "log"
    import matplotlib.pyplot as plt

    plt.close("all")
