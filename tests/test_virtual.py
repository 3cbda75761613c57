"""Virtual detectors, virtual images and virtual diffraction against known answers."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import stem4d as s4

RNG = np.random.default_rng(42)


def _refuse_compute(*args, **kwargs):
    raise AssertionError("a lazy function computed dask data")


@pytest.fixture(scope="module")
def cube() -> xr.DataArray:
    data = RNG.random((6, 7, 20, 22)).astype("float32")
    return s4.datacube(data, r_step=2.0, r_units="Å", q_step=0.1, q_units="1/Å",
                       beam_energy=200e3, origin=(9.6, 10.3))


@pytest.fixture(scope="module")
def drifting() -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    """Linear patterns f = 3 qx_pix - 2 qy_pix + 50 and a per-position origin."""
    ox = 9.5 + RNG.uniform(-2, 2, (5, 6))
    oy = 10.5 + RNG.uniform(-2, 2, (5, 6))
    qx, qy = np.meshgrid(np.arange(20.0), np.arange(22.0), indexing="ij")
    pattern = (3 * qx - 2 * qy + 50).astype("float32")
    data = np.broadcast_to(pattern, (5, 6, 20, 22)).copy()
    c = s4.datacube(data, q_step=0.05, q_units="1/Å")
    return s4.set_origin(c, ox, oy), ox, oy


def test_detector_geometry_in_coordinate_units(cube):
    qx, qy = np.meshgrid(cube.qx.values, cube.qy.values, indexing="ij")
    bf = s4.detectors.circle(cube, radius=0.35)
    np.testing.assert_array_equal(bf.values, qx**2 + qy**2 <= 0.35**2)
    adf = s4.detectors.annulus(cube, radii=(0.5, 0.9), center=(0.1, 0.0))
    r2 = (qx - 0.1) ** 2 + qy**2
    np.testing.assert_array_equal(adf.values, (r2 >= 0.25) & (r2 <= 0.81))
    rect = s4.detectors.rectangle(cube, (-0.2, 0.3), (0.0, 0.5))
    # pixels 8-12 (qx = -0.16 ... 0.24) and 11-15 (qy = 0.07 ... 0.47)
    assert rect.values.sum() == 25 and rect.values[8:13, 11:16].all()
    pt = s4.detectors.point(cube, (0.0, 0.0))
    assert pt.values.sum() == 1 and pt.values[10, 10]  # nearest pixel to origin 9.6, 10.3
    # within half a pixel of the outermost centres (qx -0.96 ... 0.94, qy -1.03 ... 1.07)
    # a point picks the edge pixel
    for center, pixel in (((-1.0, -1.07), (0, 0)), ((0.985, 1.115), (19, 21))):
        edge = s4.detectors.point(cube, center)
        assert edge.values.sum() == 1 and edge.values[pixel]
    assert bf.coords["qx"].attrs["units"] == "1/Å" and bf.attrs["radius"] == 0.35


def test_bragg_lattice_detector_places_disks_on_lattice(cube):
    g1, g2 = (0.5, 0.0), (0.0, 0.6)
    det = s4.detectors.bragg_lattice(cube, g1, g2, radius=0.12, q_max=0.7)
    expected = np.zeros(det.shape, dtype=bool)
    qx, qy = np.meshgrid(cube.qx.values, cube.qy.values, indexing="ij")
    for h, k in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]:  # |(±1, ±1)| = 0.78 > 0.7
        expected |= (qx - 0.5 * h) ** 2 + (qy - 0.6 * k) ** 2 <= 0.12**2
    np.testing.assert_array_equal(det.values, expected)
    dark = s4.detectors.bragg_lattice(cube, g1, g2, 0.12, 0.7, include_origin=False)
    assert not dark.values[10, 10] and dark.values.sum() < det.values.sum()


def test_virtual_image_is_weighted_sum_numpy_and_dask(cube):
    bf = s4.detectors.circle(cube, radius=0.35)
    weights = RNG.random(cube.shape[2:])
    user = s4.detectors.from_mask(cube, weights)
    expected_bf = np.tensordot(cube.values, bf.values.astype("f4"), 2)
    expected_user = np.tensordot(cube.values.astype("f8"), weights, 2)
    img = s4.virtual_image(cube, bf)
    np.testing.assert_allclose(img.values, expected_bf, rtol=1e-5)
    assert img.dims == ("rx", "ry") and img.attrs["detector"] == "circle"
    np.testing.assert_allclose(img.rx.values, cube.rx.values)
    assert img.coords["beam_energy"].item() == 200e3
    lazy = s4.virtual_image(cube.chunk({"rx": 2, "ry": 4}), {"bf": bf, "w": user})
    assert isinstance(lazy["bf"].data, da.Array)
    np.testing.assert_allclose(lazy["bf"].values, expected_bf, rtol=1e-5)
    np.testing.assert_allclose(lazy["w"].values, expected_user, rtol=1e-5)
    stack = xr.concat([bf.astype("f4"), user.astype("f4")], dim="det")
    stacked = s4.virtual_image(cube, stack)
    np.testing.assert_allclose(stacked.isel(det=1).values, expected_user, rtol=1e-5)


def test_integer_detector_on_uint16_data():
    data = RNG.integers(0, 60000, (3, 4, 8, 9), dtype=np.uint16)
    c = s4.datacube(data)
    det = s4.detectors.rectangle(c, (1, 5), (2, 6))
    expected = data[:, :, 1:6, 2:7].astype(np.float64).sum(axis=(2, 3))
    np.testing.assert_allclose(s4.virtual_image(c, det).values, expected, rtol=1e-6)


def test_shift_center_integer_and_subpixel(drifting):
    cube, ox, oy = drifting
    mx, my = ox.mean(), oy.mean()
    pt = s4.detectors.point(cube, (0.0, 0.0))
    ix, iy = np.argwhere(pt.values)[0]
    fixed = s4.virtual_image(cube, pt)
    np.testing.assert_allclose(fixed.values, 3 * ix - 2 * iy + 50)
    # the detector follows the beam: a whole-pixel move...
    follow = s4.virtual_image(cube, pt, shift_center=True)
    expected = 3 * (ix + np.rint(ox - mx)) - 2 * (iy + np.rint(oy - my)) + 50
    np.testing.assert_allclose(follow.values, expected, rtol=1e-6)
    # ...or bilinear, exact for a linear pattern: f evaluated at the shifted pixel
    sub = s4.virtual_image(cube, pt, shift_center=True, subpixel=True)
    expected_sub = 3 * (ix + ox - mx) - 2 * (iy + oy - my) + 50
    np.testing.assert_allclose(sub.values, expected_sub, rtol=1e-5)
    lazy = s4.virtual_image(cube.chunk({"rx": 2, "ry": 3}), pt, shift_center=True,
                            subpixel=True)
    np.testing.assert_allclose(lazy.values, expected_sub, rtol=1e-5)


def test_shift_center_follows_a_drifting_disk():
    """A disk that drifts over the scan: BF with shift_center sees the whole disk."""
    ox = np.linspace(20, 28, 16).reshape(4, 4)
    oy = np.linspace(31, 25, 16).reshape(4, 4)
    qx, qy = np.meshgrid(np.arange(48.0), np.arange(56.0), indexing="ij")
    data = ((qx[None, None] - ox[..., None, None]) ** 2
            + (qy[None, None] - oy[..., None, None]) ** 2 <= 5.0**2).astype("f4")
    c = s4.set_origin(s4.datacube(data, q_step=0.02, q_units="mrad"), ox, oy)
    bf = s4.detectors.circle(c, radius=0.02 * 7)
    moving = s4.virtual_image(c, bf, shift_center=True)
    still = s4.virtual_image(c, bf)
    disk_area = data.sum(axis=(2, 3))
    np.testing.assert_allclose(moving.values, disk_area)
    assert still.values.min() < 0.7 * disk_area.min()


def test_virtual_diffraction_mean_max_median_and_mask(cube):
    a = cube.values
    for method in ("mean", "max", "median"):
        expected = getattr(np, method)(a, axis=(0, 1))
        got = s4.virtual_diffraction(cube, method)
        np.testing.assert_allclose(got.values, expected, rtol=1e-5)
        lazy = s4.virtual_diffraction(cube.chunk({"rx": 2}), method)
        assert isinstance(lazy.data, da.Array)
        np.testing.assert_allclose(lazy.values, expected, rtol=1e-5)
        assert got.dims == ("qx", "qy")
        np.testing.assert_allclose(got.qx.values, cube.qx.values)
    sel = RNG.random(cube.shape[:2]) > 0.5
    np.testing.assert_allclose(s4.virtual_diffraction(cube, "mean", mask=sel).values,
                               a[sel].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(s4.virtual_diffraction(cube, "median", mask=sel).values,
                               np.median(a[sel], axis=0), rtol=1e-6)
    w = RNG.random(cube.shape[:2])
    np.testing.assert_allclose(
        s4.virtual_diffraction(cube.chunk({"rx": 3}), "mean", mask=w).values,
        np.tensordot(w, a, 2) / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(s4.virtual_diffraction(cube, "max", mask=w).values,
                               (a * w[..., None, None]).max(axis=(0, 1)), rtol=1e-6)


def test_virtual_diffraction_shift_center_recovers_the_centred_pattern():
    """Gaussian spots at drifting origins: the shifted mean is the centred spot."""
    ox = 16 + RNG.uniform(-3, 3, (4, 5))
    oy = 15 + RNG.uniform(-3, 3, (4, 5))
    qx, qy = np.meshgrid(np.arange(32.0), np.arange(30.0), indexing="ij")

    def spots(cx, cy):
        return np.exp(-((qx - cx) ** 2 + (qy - cy) ** 2) / (2 * 2.0**2))

    data = np.stack([[spots(ox[i, j], oy[i, j]) for j in range(5)] for i in range(4)])
    c = s4.set_origin(s4.datacube(data.astype("f4")), ox, oy)
    centred = spots(ox.mean(), oy.mean())
    sub = s4.virtual_diffraction(c, "mean", shift_center=True, subpixel=True)
    np.testing.assert_allclose(sub.values, centred, atol=2e-4)
    lazy = s4.virtual_diffraction(c.chunk({"rx": 2}), "mean", shift_center=True,
                                  subpixel=True)
    np.testing.assert_allclose(lazy.values, centred, atol=2e-4)
    integer = s4.virtual_diffraction(c, "max", shift_center=True)
    # whole-pixel shifts leave each spot within half a pixel of the mean origin
    peak = np.unravel_index(np.argmax(integer.values), integer.shape)
    assert abs(peak[0] - ox.mean()) <= 1 and abs(peak[1] - oy.mean()) <= 1
    unshifted = s4.virtual_diffraction(c, "mean")
    assert unshifted.values.max() < 0.8 * sub.values.max()


def test_virtual_image_on_distributed_cluster(cube):
    distributed = pytest.importorskip("distributed")
    bf = s4.detectors.circle(cube, radius=0.35)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            lazy = cube.chunk({"rx": 2})
            img = s4.virtual_image(lazy, bf).compute()
            mean = s4.virtual_diffraction(lazy, "mean").compute()
    np.testing.assert_allclose(img.values, s4.virtual_image(cube, bf).values, rtol=1e-6)
    np.testing.assert_allclose(mean.values, cube.values.mean(axis=(0, 1)), rtol=1e-5)


def test_accessor_forwards(cube):
    bf = s4.detectors.circle(cube, radius=0.35)
    xr.testing.assert_identical(cube.stem.virtual_image(bf), s4.virtual_image(cube, bf))
    xr.testing.assert_identical(cube.stem.virtual_diffraction("max"),
                                s4.virtual_diffraction(cube, "max"))


# ------------------------------------------------------------------ bad input
def test_bad_input_messages(cube):
    bf = s4.detectors.circle(cube, radius=0.35)
    with pytest.raises(ValueError, match=r"cube must have dims \('rx', 'ry', 'qx', 'qy'\)"):
        s4.virtual_image(cube.transpose("qx", "qy", "rx", "ry"), bf)
    with pytest.raises(TypeError, match="cube must be an xarray.DataArray"):
        s4.virtual_image(cube.values, bf)
    other = s4.set_q_calibration(cube, 0.2, "1/Å")
    with pytest.raises(ValueError, match="detector coordinates along qx"):
        s4.virtual_image(cube, s4.detectors.circle(other, radius=0.35))
    with pytest.raises(ValueError, match="radius must be positive"):
        s4.detectors.circle(cube, radius=-1)
    with pytest.raises(ValueError, match="selects no detector pixel"):
        s4.detectors.circle(cube, radius=0.01, center=(50.0, 50.0))
    # a point off the detector raises instead of snapping to the edge pixel
    with pytest.raises(ValueError, match=(r"point detector at center=\(10, 0\) selects no "
                                          r"detector pixel: its qx = 10 is more than half")):
        s4.detectors.point(cube, (10, 0))
    with pytest.raises(ValueError, match=r"its qy = -1.09 .*spans \[-1.08, 1.12\] '1/Å'"):
        s4.detectors.point(cube, (0.0, -1.09))  # 0.6 pixel beyond the first pixel centre
    with pytest.raises(ValueError, match="selects no scan position"):
        s4.virtual_diffraction(cube, "mean", mask=np.zeros(cube.shape[:2], bool))
    with pytest.raises(ValueError, match=r"mask must have the scan shape \(rx, ry\)"):
        s4.virtual_diffraction(cube, "mean", mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="method must be one of"):
        s4.virtual_diffraction(cube, "sum")
    with pytest.raises(ValueError, match="needs a per-position origin"):
        s4.virtual_image(cube, bf, shift_center=True)
    with pytest.raises(ValueError, match="entirely NaN"):
        s4.datacube(np.full((2, 2, 4, 4), np.nan))
    no_units = cube.copy()
    no_units.coords["qx"].attrs = {}
    with pytest.raises(ValueError, match="has no 'units' attr"):
        s4.virtual_image(no_units, bf)
    with pytest.raises(ValueError, match="annulus|inner < outer"):
        s4.detectors.annulus(cube, radii=(0.5, 0.2))


def test_dask_results_stay_lazy(drifting):
    cube, _, _ = drifting
    # the data are lazy; the small (rx, ry) origin coordinates are in memory (they are
    # read when a function needs them, like any coordinate)
    lazy_cube = cube.chunk({"rx": 2}).assign_coords(qx0=cube.qx0, qy0=cube.qy0)
    pt = s4.detectors.point(cube, (0.0, 0.0))
    with dask.config.set(scheduler=_refuse_compute):
        for result in (
            s4.virtual_image(lazy_cube, pt),
            s4.virtual_image(lazy_cube, pt, shift_center=True, subpixel=True),
            s4.virtual_diffraction(lazy_cube, "mean", shift_center=True),
            s4.virtual_diffraction(lazy_cube, "max"),
            s4.virtual_diffraction(lazy_cube, "median", shift_center=True, subpixel=True),
        ):
            assert isinstance(result.data, da.Array)


def test_integer_shift_center_matches_rolled_patterns():
    ox = 12 + RNG.integers(-3, 4, (4, 5)) + RNG.uniform(-0.3, 0.3, (4, 5))
    oy = 11 + RNG.integers(-3, 4, (4, 5)) + RNG.uniform(-0.3, 0.3, (4, 5))
    data = RNG.random((4, 5, 24, 22)).astype("f4")
    c = s4.set_origin(s4.datacube(data), ox, oy)
    sx, sy = np.rint(ox - ox.mean()).astype(int), np.rint(oy - oy.mean()).astype(int)
    rolled = np.stack([[np.roll(data[i, j], (-sx[i, j], -sy[i, j]), axis=(0, 1))
                        for j in range(5)] for i in range(4)])
    for method in ("mean", "max", "median"):
        expected = getattr(np, method)(rolled, axis=(0, 1))
        np.testing.assert_allclose(
            s4.virtual_diffraction(c, method, shift_center=True).values, expected, rtol=1e-6)
        np.testing.assert_allclose(
            s4.virtual_diffraction(c.chunk({"rx": 3}), method, shift_center=True).values,
            expected, rtol=1e-6)


def test_oblique_bragg_lattice_matches_brute_force(cube):
    g1, g2 = (0.42, 0.13), (-0.2, 0.55)
    det = s4.detectors.bragg_lattice(cube, g1, g2, radius=0.09, q_max=0.8)
    qx, qy = np.meshgrid(cube.qx.values, cube.qy.values, indexing="ij")
    expected = np.zeros(det.shape, dtype=bool)
    for h in range(-6, 7):
        for k in range(-6, 7):
            gx, gy = h * g1[0] + k * g2[0], h * g1[1] + k * g2[1]
            if np.hypot(gx, gy) <= 0.8:
                expected |= (qx - gx) ** 2 + (qy - gy) ** 2 <= 0.09**2
    np.testing.assert_array_equal(det.values, expected)


def test_weights_summing_to_zero_are_refused(cube):
    w = np.ones(cube.shape[:2])
    w[0] = -w[1:].sum() / cube.shape[1]
    with pytest.raises(ValueError, match="mask weights sum to zero"):
        s4.virtual_diffraction(cube, "mean", mask=w)
