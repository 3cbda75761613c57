"""Tests of stem4d.preprocess: numbers against known answers, calibrations, dask."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import stem4d as s4
from stem4d import preprocess as pp


# ------------------------------------------------------------------ helpers
def make_cube(data, origin=(0.0, 0.0), q_step=0.1, r_step=2.0, **kw):
    return s4.datacube(
        data, r_step=r_step, r_units="Å", q_step=q_step, q_units="1/Å",
        beam_energy=300e3, origin=origin, attrs={"sample": "test"}, name="scan", **kw,
    )


def gaussian_patterns(shape_r, n, center_px, sigma_px, amp=100.0):
    qx = np.arange(n[0])[:, None] - center_px[0]
    qy = np.arange(n[1])[None, :] - center_px[1]
    g = amp * np.exp(-(qx**2 + qy**2) / (2 * sigma_px**2))
    return np.broadcast_to(g, shape_r + tuple(n)).copy()


def centroid_q(dp: xr.DataArray) -> tuple[float, float]:
    w = dp / dp.sum()
    return float((w * dp.qx).sum()), float((w * dp.qy).sum())


def _refuse_compute(*args, **kwargs):
    raise AssertionError("the 4D data was computed")


def assert_calibration_kept(out: xr.DataArray, cube: xr.DataArray) -> None:
    assert out.name == cube.name
    assert out.attrs == cube.attrs
    assert float(out.beam_energy) == 300e3
    assert out.beam_energy.attrs["units"] == "eV"
    for dim in ("rx", "ry", "qx", "qy"):
        assert out.coords[dim].attrs["units"] == cube.coords[dim].attrs["units"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def cube(rng):
    data = rng.poisson(20, size=(4, 6, 10, 9)).astype(np.float32)
    return make_cube(data, origin=(4.5, 4.0))


@pytest.fixture
def per_position_cube(rng):
    data = rng.poisson(5, size=(4, 6, 10, 9)).astype(np.float32)
    ox = 4.5 + rng.normal(0, 0.3, (4, 6))
    oy = 4.0 + rng.normal(0, 0.3, (4, 6))
    return make_cube(data, origin=(ox, oy))


# -------------------------------------------------------------------- bin_q
def test_bin_q_equals_block_sum_and_trims():
    data = np.arange(2 * 3 * 9 * 7, dtype=np.uint16).reshape(2, 3, 9, 7)
    cube = make_cube(data)
    out = s4.bin_q(cube, (2, 3))
    expected = np.zeros((2, 3, 4, 2), dtype=np.int64)
    for i in range(4):
        for j in range(2):
            expected[:, :, i, j] = data[:, :, 2 * i:2 * i + 2, 3 * j:3 * j + 3].sum((2, 3))
    assert out.shape == (2, 3, 4, 2)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out.values, expected)
    mean = s4.bin_q(cube, (2, 3), reduce="mean")
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean.values, expected / 6, rtol=1e-6)


@pytest.mark.parametrize(
    ("in_dtype", "reduce", "expected"),
    [
        (np.uint8, "sum", np.uint32), (np.uint16, "sum", np.uint32),
        (np.int16, "sum", np.int32), (np.uint32, "sum", np.uint64),
        (np.int64, "sum", np.float64), (bool, "sum", np.uint32),
        (np.float16, "sum", np.float32), (np.float32, "sum", np.float32),
        (np.float64, "sum", np.float64), (np.uint16, "mean", np.float32),
        (np.int32, "mean", np.float64),
    ],
)
def test_bin_dtype_rules(in_dtype, reduce, expected):
    cube = make_cube(np.ones((2, 2, 4, 4), dtype=in_dtype))
    out = s4.bin_q(cube, 2, reduce=reduce)
    assert out.dtype == expected
    assert float(out.values[0, 0, 0, 0]) == (4.0 if reduce == "sum" else 1.0)


def test_bin_q_explicit_dtype():
    cube = make_cube(np.full((1, 1, 4, 4), 3, dtype=np.uint8))
    assert s4.bin_q(cube, 2, dtype=np.float64).dtype == np.float64
    out = s4.bin_q(cube, 2, reduce="mean", dtype=np.uint8)
    assert out.dtype == np.uint8
    assert np.all(out.values == 3)


@pytest.mark.parametrize(
    ("data", "kwargs", "match"),
    [
        (np.full((1, 1, 4, 4), 60000, np.uint16), {"dtype": "uint16"},
         r"dtype=uint16 cannot hold.*range from 240000 to 240000.*uint16 holds 0 to 65535"),
        (np.full((1, 1, 4, 4), 60000, np.uint16), {"reduce": "mean", "dtype": "uint8"},
         r"dtype=uint8 cannot hold.*range from 60000 to 60000.*uint8 holds 0 to 255"),
        (np.full((1, 1, 4, 4), -100, np.int16), {"dtype": np.int8},
         r"dtype=int8 .*range from -400 to -400.*int8 holds -128 to 127"),
        (np.full((1, 1, 4, 4), 100, np.int16), {"dtype": np.uint8},
         r"dtype=uint8 .*range from 400 to 400.*uint8 holds 0 to 255"),
        (np.array([np.nan, 1, 1, 1] * 4, np.float32).reshape(1, 1, 4, 4),
         {"dtype": np.int32}, r"dtype=int32 cannot hold.*include NaN or infinity"),
    ],
)
def test_bin_q_explicit_integer_dtype_refuses_to_wrap(data, kwargs, match):
    cube = make_cube(data)
    with pytest.raises(ValueError, match=match):
        s4.bin_q(cube, 2, **kwargs)
    with dask.config.set(scheduler=_refuse_compute):
        lazy = s4.bin_q(cube.chunk({"qx": 2}), 2, **kwargs)  # checked only when computed
    with pytest.raises(ValueError, match=match):
        lazy.compute()


def test_bin_explicit_integer_dtype_that_fits():
    cube = make_cube(np.full((2, 2, 4, 4), 60000, np.uint16))
    np.testing.assert_array_equal(s4.bin_q(cube, 2, dtype=np.int32).values, 240000)
    np.testing.assert_array_equal(s4.bin_q(cube, 2, reduce="mean", dtype="uint16").values,
                                  60000)
    # dask, along the scan: 2 x 2 positions of 60000 each
    lazy = s4.bin_r(cube.chunk({"rx": 1}), 2, reduce="sum", dtype=np.int32)
    np.testing.assert_array_equal(lazy.values, 240000)
    small = make_cube(np.array([1, 2, 2, 2] * 4, np.uint8).reshape(1, 1, 4, 4))
    np.testing.assert_array_equal(  # means 1.5 (rounds to even: 2) and 2.0
        s4.bin_q(small, 2, reduce="mean", dtype=np.uint8).values, [[[[2, 2], [2, 2]]]])


def test_bin_q_keeps_feature_at_same_q(cube):
    # origin at pixel (4.5, 4.0); a bright pair on pixels (4, 4) and (5, 4)
    data = np.zeros((1, 1, 10, 9), dtype=np.float32)
    data[0, 0, 4, 4] = data[0, 0, 5, 4] = 1.0
    c = make_cube(data, origin=(4.5, 4.0))
    out = s4.bin_q(c, (2, 1))
    sx, sy, units = s4.q_pixel_size(out)
    assert (sx, sy, units) == (pytest.approx(0.2), pytest.approx(0.1), "1/Å")
    dp = out.isel(rx=0, ry=0)
    peak = dp.where(dp > 0, drop=True).squeeze()
    assert peak.size == 1 and float(peak) == 2.0
    assert float(peak.qx) == pytest.approx(0.0, abs=1e-12)
    assert float(peak.qy) == pytest.approx(0.0, abs=1e-12)
    # origin in binned pixels is (o - (f-1)/2) / f
    ox, oy = s4.get_origin(out)
    assert ox == pytest.approx((4.5 - 0.5) / 2) and oy == pytest.approx(4.0)


def test_bin_q_gaussian_centroid_and_coords(cube):
    data = gaussian_patterns((2, 2), (32, 30), (15.3, 14.2), 3.0)
    c = make_cube(data, origin=(15.3, 14.2))
    out = s4.bin_q(c, 2)
    np.testing.assert_allclose(out.qx.values, c.qx.values.reshape(-1, 2).mean(1))
    np.testing.assert_allclose(out.qy.values, c.qy.values.reshape(-1, 2).mean(1))
    assert s4.q_pixel_size(out)[0] == pytest.approx(0.2)
    for value in centroid_q(out.isel(rx=0, ry=0)):
        assert value == pytest.approx(0.0, abs=1e-6)
    assert float(out.sum()) == pytest.approx(float(c.sum()), rel=1e-6)
    assert_calibration_kept(out, c)


def test_bin_q_keeps_per_position_origin(per_position_cube):
    out = s4.bin_q(per_position_cube, 2)
    for name in ("qx0", "qy0"):
        xr.testing.assert_identical(out[name], per_position_cube[name])
    ox_in, _ = s4.get_origin(per_position_cube)
    ox_out, _ = s4.get_origin(out)
    np.testing.assert_allclose(ox_out.values, (ox_in.values - 0.5) / 2)


def test_bin_q_to_single_pixel_keeps_step(cube):
    out = s4.bin_q(cube, (10, 9))
    assert out.sizes["qx"] == 1
    assert s4.q_pixel_size(out)[:2] == (pytest.approx(1.0), pytest.approx(0.9))


# -------------------------------------------------------------------- bin_r
def test_bin_r_mean_and_coords(per_position_cube):
    c = per_position_cube
    out = s4.bin_r(c, (2, 4))  # 6 positions along ry: the last 2 are trimmed
    assert out.sizes["rx"] == 2 and out.sizes["ry"] == 1
    expected = c.values[0:2, 0:4].mean((0, 1))
    np.testing.assert_allclose(out.values[0, 0], expected, rtol=1e-6)
    assert out.rx.values.tolist() == pytest.approx([1.0, 5.0])
    assert out.ry.values.tolist() == pytest.approx([3.0])
    assert s4.r_pixel_size(out) == (pytest.approx(4.0), pytest.approx(8.0), "Å")
    assert float(out.qx0[1, 0]) == pytest.approx(float(c.qx0[2:4, 0:4].mean()))
    assert out.qx0.attrs["units"] == "1/Å"
    xr.testing.assert_identical(out.qx, c.qx)
    assert_calibration_kept(out, c)
    summed = s4.bin_r(c, 2, reduce="sum")
    np.testing.assert_allclose(summed.values[0, 0], c.values[:2, :2].sum((0, 1)), rtol=1e-6)


# ------------------------------------------------------------ steps of every axis
# cube fixture: scan step 2 Å, detector step 0.1 1/Å, shape (4, 6, 10, 9)
STEP_CASES = [
    ("bin_q", lambda c: s4.bin_q(c, (2, 3)), (2.0, 2.0, 0.2, 0.3)),
    ("bin_r", lambda c: s4.bin_r(c, (2, 3)), (4.0, 6.0, 0.1, 0.1)),
    ("resample_fourier", lambda c: s4.resample_q(c, output_size=(20, 12)),
     (2.0, 2.0, 0.05, 0.075)),
    ("resample_bilinear", lambda c: s4.resample_q(c, factor=0.5, method="bilinear"),
     (2.0, 2.0, 0.2, 0.225)),  # (10, 9) -> (5, 4)
    ("thin_r", lambda c: s4.thin_r(c, (2, 3)), (4.0, 6.0, 0.1, 0.1)),
    ("crop_q", lambda c: s4.crop_q(c, (1, 7), (2, 9)), (2.0, 2.0, 0.1, 0.1)),
    ("crop_r", lambda c: s4.crop_r(c, (1, 4), (0, 3)), (2.0, 2.0, 0.1, 0.1)),
    ("pad_q", lambda c: s4.pad_q(c, output_size=(13, 12)), (2.0, 2.0, 0.1, 0.1)),
]


@pytest.mark.parametrize(("name", "func", "steps"), STEP_CASES, ids=[n for n, *_ in STEP_CASES])
def test_step_attr_is_the_new_spacing(cube, name, func, steps):
    out = func(cube)
    for dim, step in zip(("rx", "ry", "qx", "qy"), steps, strict=True):
        coord = out.coords[dim]
        assert coord.attrs["step"] == pytest.approx(step, rel=1e-12), dim
        assert float(coord[1] - coord[0]) == pytest.approx(step, rel=1e-12), dim
    # a single row/column of the result still reports the right pixel sizes
    one = out.isel(rx=[1], ry=[0], qx=[1], qy=[0])
    assert s4.r_pixel_size(one) == (pytest.approx(steps[0]), pytest.approx(steps[1]), "Å")
    assert s4.q_pixel_size(one) == (pytest.approx(steps[2]), pytest.approx(steps[3]), "1/Å")


def test_binned_line_scan_keeps_its_step_through_a_file(cube, tmp_path):
    line = s4.bin_r(cube, 2).isel(rx=[1])
    assert s4.calibration_summary(line)["rx step"] == "4 Å"
    s4.save(line, tmp_path / "line.nc")
    back = s4.open(tmp_path / "line.nc")
    assert s4.r_pixel_size(back)[:2] == (pytest.approx(4.0), pytest.approx(4.0))


# ------------------------------------------------------------------ crop / thin
def test_crop_q_keeps_coordinates(per_position_cube):
    c = per_position_cube
    out = s4.crop_q(c, (2, 8), (1, None))
    assert out.shape == (4, 6, 6, 8)
    np.testing.assert_array_equal(out.qx.values, c.qx.values[2:8])
    np.testing.assert_array_equal(out.qy.values, c.qy.values[1:])
    np.testing.assert_array_equal(out.values, c.values[:, :, 2:8, 1:])
    xr.testing.assert_identical(out.qx0, c.qx0)
    ox, oy = s4.get_origin(out)
    np.testing.assert_allclose(ox.values, s4.get_origin(c)[0].values - 2)
    assert_calibration_kept(out, c)
    assert s4.crop_q(c, (-3, -1), None).qx.values.tolist() == c.qx.values[-3:-1].tolist()


def test_crop_r_and_single_pixel(per_position_cube):
    c = per_position_cube
    out = s4.crop_r(c, (1, 3), (2, 3))
    assert out.shape == (2, 1, 10, 9)
    np.testing.assert_array_equal(out.rx.values, c.rx.values[1:3])
    np.testing.assert_array_equal(out.qx0.values, c.qx0.values[1:3, 2:3])
    assert s4.r_pixel_size(out)[:2] == (pytest.approx(2.0), pytest.approx(2.0))
    one = s4.crop_q(c, (4, 5), (4, 5))
    assert s4.q_pixel_size(one)[:2] == (pytest.approx(0.1), pytest.approx(0.1))


def test_thin_r(per_position_cube):
    c = per_position_cube
    out = s4.thin_r(c, (2, 3))
    np.testing.assert_array_equal(out.values, c.values[::2, ::3])
    np.testing.assert_array_equal(out.rx.values, [0.0, 4.0])
    np.testing.assert_array_equal(out.qy0.values, c.qy0.values[::2, ::3])
    assert s4.r_pixel_size(out) == (pytest.approx(4.0), pytest.approx(6.0), "Å")
    assert s4.r_pixel_size(s4.thin_r(c, (4, 6)))[:2] == (pytest.approx(8.0), 12.0)


# ---------------------------------------------------------------------- pad
def test_pad_q_keeps_origin_and_sums(per_position_cube):
    c = per_position_cube
    out = s4.pad_q(c, output_size=(15, 12))  # +5 (2 before, 3 after), +3 (1, 2)
    assert out.shape == (4, 6, 15, 12)
    np.testing.assert_array_equal(out.values[:, :, 2:12, 1:10], c.values)
    np.testing.assert_allclose(out.sum(("qx", "qy")), c.sum(("qx", "qy")))
    np.testing.assert_allclose(out.qx.values[2:12], c.qx.values, atol=1e-12)
    assert s4.q_pixel_size(out) == pytest.approx(s4.q_pixel_size(c))
    ox, oy = s4.get_origin(out)
    np.testing.assert_allclose(ox.values, s4.get_origin(c)[0].values + 2)
    np.testing.assert_allclose(oy.values, s4.get_origin(c)[1].values + 1)
    xr.testing.assert_identical(out.qx0, c.qx0)
    assert_calibration_kept(out, c)


def test_pad_q_factor_and_modes(cube):
    out = s4.pad_q(cube, factor=2, mode="edge")
    assert out.shape == (4, 6, 20, 18)
    np.testing.assert_array_equal(out.values[:, :, 0, 4:13], cube.values[:, :, 0, :])
    filled = s4.pad_q(cube, factor=(1.5, 1), value=-1)
    assert filled.shape == (4, 6, 15, 9) and np.all(filled.values[:, :, :2] == -1)


# ------------------------------------------------------------------ resample
@pytest.mark.parametrize(("n_out", "center"), [((64, 60), (15.3, 14.2)), ((16, 15), (15.0, 14.0))])
def test_resample_fourier_matches_analytic_gaussian(n_out, center):
    sigma = 3.0
    data = gaussian_patterns((2, 3), (32, 30), center, sigma)
    c = make_cube(data.astype(np.float32), origin=center)
    out = s4.resample_q(c, output_size=n_out)
    assert out.shape == (2, 3) + n_out and out.dtype == np.float32
    sx, sy, _ = s4.q_pixel_size(out)
    assert sx == pytest.approx(0.1 * 32 / n_out[0]) and sy == pytest.approx(0.1 * 30 / n_out[1])
    # analytic Gaussian at the new sample positions (q = 0 is its centre, 0.1 1/Å/px)
    qx, qy = out.qx.values[:, None], out.qy.values[None, :]
    expected = 100 * np.exp(-(qx**2 + qy**2) / (2 * (sigma * 0.1) ** 2))
    np.testing.assert_allclose(out.values[1, 2], expected, atol=1e-3 * 100)
    for value in centroid_q(out.isel(rx=0, ry=0)):
        assert value == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(out.mean(("qx", "qy")), c.mean(("qx", "qy")), rtol=1e-5)
    assert_calibration_kept(out, c)


@pytest.mark.parametrize("method", ["fourier", "bilinear"])
@pytest.mark.parametrize("factor", [2, 0.5, (1.5, 0.75)])
def test_resample_conserve_array_sums(cube, method, factor):
    out = s4.resample_q(cube, factor=factor, method=method, conserve_array_sums=True)
    np.testing.assert_allclose(out.sum(("qx", "qy")), cube.sum(("qx", "qy")), rtol=1e-5)


def test_resample_bilinear_reproduces_linear_pattern():
    c = make_cube(np.zeros((1, 2, 8, 6)), origin=(2.0, 3.0))
    ramp = 2 * c.qx + 3 * c.qy + 1 + 0 * c
    ramp = ramp.transpose(*c.dims).assign_attrs(c.attrs)
    out = s4.resample_q(ramp, factor=2, method="bilinear")
    inside = (out.qx <= c.qx.max()) & (out.qy <= c.qy.max())
    expected = (2 * out.qx + 3 * out.qy + 1).broadcast_like(out)
    np.testing.assert_allclose(out.where(inside).values, expected.where(inside).values,
                               atol=1e-5)
    assert s4.get_origin(out) == (pytest.approx(4.0), pytest.approx(6.0))
    assert out.dtype == np.float64


def test_resample_keeps_per_position_origin(per_position_cube):
    out = s4.resample_q(per_position_cube, factor=2)
    xr.testing.assert_identical(out.qx0, per_position_cube.qx0)
    ox, _ = s4.get_origin(out)
    np.testing.assert_allclose(ox.values, 2 * s4.get_origin(per_position_cube)[0].values)


# ------------------------------------------------------------------- bad pixels
def test_filter_hot_pixels_finds_planted_pixels(rng):
    smooth = gaussian_patterns((3, 4), (24, 20), (11.5, 9.0), 5.0, amp=200.0) + 10
    data = rng.poisson(smooth).astype(np.float32)
    hot = [(3, 4), (12, 10), (12, 11), (0, 19), (23, 0)]  # a pair and two corners
    truth = np.zeros((24, 20), dtype=bool)
    for i, j in hot:
        truth[i, j] = True
    dirty = data.copy()
    dirty[:, :, truth] += 5000
    c = make_cube(dirty, origin=(11.5, 9.0))
    out, mask = s4.filter_hot_pixels(c, 12, return_mask=True)
    assert mask.dims == ("qx", "qy") and mask.dtype == bool and mask.name == "hot_pixels"
    np.testing.assert_array_equal(mask.values, truth)
    np.testing.assert_array_equal(out.values[:, :, ~truth], dirty[:, :, ~truth])
    # each hot pixel is the median of its unmasked 3x3 neighbours, in every pattern
    i, j = 3, 4
    nbrs = np.delete(dirty[:, :, i - 1:i + 2, j - 1:j + 2].reshape(3, 4, 9), 4, axis=-1)
    np.testing.assert_allclose(out.values[:, :, i, j], np.median(nbrs, axis=-1))
    i, j = 12, 10  # its partner (12, 11) is excluded from the median
    win = dirty[:, :, i - 1:i + 2, j - 1:j + 2].reshape(3, 4, 9)
    np.testing.assert_allclose(out.values[:, :, i, j], np.median(win[..., [0, 1, 2, 3, 6, 7, 8]],
                                                                 axis=-1))
    assert np.all(out.values[:, :, truth] < 400)
    assert_calibration_kept(out, c)
    # clean data: nothing flagged, nothing changed
    clean = make_cube(data)
    out_clean = s4.filter_hot_pixels(clean, 12)
    np.testing.assert_array_equal(out_clean.values, data)


def test_filter_hot_pixels_ignores_shot_noise_of_bright_disk(rng):
    qx, qy = np.mgrid[:40, :40]
    disk = 1000.0 * ((qx - 19.5) ** 2 + (qy - 20.2) ** 2 <= 8**2) + 5
    data = rng.poisson(np.broadcast_to(disk, (8, 8, 40, 40))).astype(np.float32)
    truth = np.zeros((40, 40), dtype=bool)
    truth[20, 20] = truth[3, 30] = truth[19, 39] = True  # in the disk, outside, at an edge
    data[:, :, truth] += 200
    _, mask = s4.filter_hot_pixels(make_cube(data), 10, return_mask=True)
    np.testing.assert_array_equal(mask.values, truth)


def test_filter_hot_pixels_noise_free_pattern():
    smooth = gaussian_patterns((1, 2), (16, 16), (7.5, 7.5), 4.0) + 1
    smooth[:, :, 5, 9] += 50
    c = make_cube(smooth.astype(np.float32))
    _, mask = s4.filter_hot_pixels(c, 10, return_mask=True)
    assert np.argwhere(mask.values).tolist() == [[5, 9]]


def test_median_filter_masked_pixels_known_array():
    pattern = np.array([
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [9, 10, 11, 12],
        [13, 14, 15, 99],
    ], dtype=np.uint16)
    data = np.stack([pattern, pattern * 2])[None]  # (1, 2, 4, 4)
    c = make_cube(data)
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True
    out = s4.median_filter_masked_pixels(c, mask)
    expected = pattern.astype(float).copy()
    expected[0, 0] = np.median([2, 5])  # (1, 1) is masked
    expected[1, 1] = np.median([2, 3, 5, 7, 9, 10, 11])
    expected[3, 3] = np.median([11, 12, 15])
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out.values[0, 0], np.rint(expected))
    np.testing.assert_array_equal(out.values[0, 1], np.rint(expected * 2))
    wide = s4.median_filter_masked_pixels(c.astype(np.float32), mask, kernel_width=5)
    assert float(wide.values[0, 0, 3, 3]) == np.median(  # (1, 1) is masked
        [7, 8, 10, 11, 12, 14, 15])
    as_da = xr.DataArray(mask.T, dims=("qy", "qx"))
    np.testing.assert_array_equal(s4.median_filter_masked_pixels(c, as_da).values, out.values)


def test_median_filter_warns_on_isolated_pixels():
    c = make_cube(np.ones((1, 1, 5, 5), dtype=np.float32))
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    with pytest.warns(UserWarning, match="no usable neighbour") as record:
        out = s4.median_filter_masked_pixels(c, mask)
    assert record[0].filename == __file__  # points at the user's call
    assert "1 masked pixel(s)" in str(record[0].message)
    assert np.all(out.values == 1)


def _hot_block_cube() -> xr.DataArray:
    """Flat 1 with a 3x3 block of 500 around a 2000 pixel at (5, 5): with ind_compare=7
    (dimmest neighbour) all 9 block pixels are hot, the centre has no usable neighbour."""
    data = np.ones((2, 2, 12, 12), dtype=np.float32)
    data[:, :, 4:7, 4:7] = 500
    data[:, :, 5, 5] = 2000
    return make_cube(data)


def test_filter_hot_pixels_warning_names_its_argument_and_the_callers_line():
    c = _hot_block_cube()
    with pytest.warns(UserWarning, match=r"1 hot pixel\(s\).*kernel_width=3.*kernel_width=5"
                      ) as record:
        out, mask = s4.filter_hot_pixels(c, 10, ind_compare=7, return_mask=True)
    assert record[0].filename == __file__
    assert mask.values.sum() == 9 and mask.values[4:7, 4:7].all()
    assert np.all(out.values[:, :, 5, 5] == 2000)  # left unchanged
    np.testing.assert_array_equal(out.values[:, :, 4, 4], 1)  # has background neighbours
    with pytest.warns(UserWarning, match="kernel_width=3") as record:
        c.stem.filter_hot_pixels(10, ind_compare=7)  # through the accessor too
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = s4.filter_hot_pixels(c, 10, ind_compare=7, kernel_width=5)
    np.testing.assert_array_equal(wide.values, np.ones((2, 2, 12, 12)))


# ---------------------------------------------------------------- numpy vs dask
CASES = [
    ("bin_q", lambda c: s4.bin_q(c, (2, 3))),
    ("bin_q_mean", lambda c: s4.bin_q(c, 3, reduce="mean")),
    ("bin_r", lambda c: s4.bin_r(c, 2)),
    ("bin_r_sum", lambda c: s4.bin_r(c, (3, 2), reduce="sum")),
    ("crop_q", lambda c: s4.crop_q(c, (1, 7), (2, 9))),
    ("crop_r", lambda c: s4.crop_r(c, (1, 4), (0, 3))),
    ("pad_q", lambda c: s4.pad_q(c, output_size=(13, 12), mode="reflect")),
    ("resample_fourier", lambda c: s4.resample_q(c, factor=(1.6, 0.7))),
    ("resample_bilinear", lambda c: s4.resample_q(c, factor=1.5, method="bilinear",
                                                  conserve_array_sums=True)),
    ("thin_r", lambda c: s4.thin_r(c, 2)),
    ("median_filter", lambda c: s4.median_filter_masked_pixels(
        c, np.eye(10, 9, dtype=bool), kernel_width=5)),
]


@pytest.mark.parametrize(("name", "func"), CASES, ids=[n for n, _ in CASES])
def test_numpy_and_dask_agree_and_dask_stays_lazy(per_position_cube, name, func):
    c = per_position_cube
    lazy_in = c.chunk({"rx": 3, "ry": 5, "qx": 4, "qy": 9})
    with dask.config.set(scheduler=_refuse_compute):
        lazy = func(lazy_in)
    assert isinstance(lazy.data, da.Array)
    eager = func(c)
    assert isinstance(eager.data, np.ndarray)
    assert lazy.dtype == eager.dtype
    xr.testing.assert_allclose(lazy.compute(), eager, rtol=1e-5, atol=1e-4)
    lazy_coords, eager_coords = lazy.coords.to_dataset(), eager.coords.to_dataset()
    xr.testing.assert_allclose(lazy_coords, eager_coords)
    for k in eager_coords.variables:
        assert lazy_coords[k].attrs == eager_coords[k].attrs


def test_filter_hot_pixels_dask_computes_only_the_mean(per_position_cube):
    c = per_position_cube.copy(data=per_position_cube.values.copy())
    c.values[:, :, 3, 3] += 1000
    lazy_in = c.chunk({"rx": 2, "ry": 3})
    calls = []

    def count(dsk, keys, **kwargs):
        calls.append(keys)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=count):
        lazy, mask = s4.filter_hot_pixels(lazy_in, 10, return_mask=True)
    assert len(calls) == 1  # the 2-D mean pattern
    assert isinstance(lazy.data, da.Array)
    eager, mask_np = s4.filter_hot_pixels(c, 10, return_mask=True)
    assert mask.values[3, 3] and mask.values.sum() == 1
    xr.testing.assert_identical(mask, mask_np)
    xr.testing.assert_allclose(lazy.compute(), eager)


def test_accessor_and_no_mutation(cube):
    before = cube.copy(deep=True)
    out = cube.stem.bin_q(2)
    xr.testing.assert_identical(out, s4.bin_q(cube, 2))
    for func in (lambda c: s4.pad_q(c, factor=2), lambda c: s4.filter_hot_pixels(c, 5),
                 lambda c: s4.resample_q(c, factor=2)):
        func(cube)
    xr.testing.assert_identical(cube, before)


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda c: s4.bin_q(c, 0), ValueError, r"factor must be a positive int.*got 0"),
        (lambda c: s4.bin_q(c, -2), ValueError, "factor"),
        (lambda c: s4.bin_q(c, 2.0), TypeError, r"factor must be .*int.*got 2\.0"),
        (lambda c: s4.bin_q(c, (2, 3, 4)), ValueError, "factor"),
        (lambda c: s4.bin_q(c, 11), ValueError, r"along 'qx'.*at most.*10, got 11"),
        (lambda c: s4.bin_q(c, 2, reduce="max"), ValueError, "reduce must be"),
        (lambda c: s4.bin_r(c, (1, 7)), ValueError, r"along 'ry'.*at most.*6, got 7"),
        (lambda c: s4.thin_r(c, True), TypeError, "factor"),
        (lambda c: s4.crop_q(c, (5, 5), None), ValueError, r"qx_range.*selects no pixels"),
        (lambda c: s4.crop_q(c, None, (0, 20)), ValueError, r"qy_range.*length 9"),
        (lambda c: s4.crop_q(c, (1.5, 4), None), TypeError, "qx_range"),
        (lambda c: s4.crop_r(c, (3, 1), None), ValueError, "rx_range"),
        (lambda c: s4.crop_r(c, None, 3), ValueError, "ry_range"),
        (lambda c: s4.pad_q(c), ValueError, "exactly one of factor= or output_size="),
        (lambda c: s4.pad_q(c, factor=2, output_size=(20, 20)), ValueError, "exactly one"),
        (lambda c: s4.pad_q(c, output_size=(5, 20)), ValueError, "cannot shrink"),
        (lambda c: s4.pad_q(c, factor=2, mode="nope"), ValueError, "mode must be"),
        (lambda c: s4.resample_q(c, factor=-1), ValueError, "factor must be a positive"),
        (lambda c: s4.resample_q(c, factor="x"), TypeError, "factor"),
        (lambda c: s4.resample_q(c, output_size=(0, 4)), ValueError, "output_size"),
        (lambda c: s4.resample_q(c, factor=2, method="cubic"), ValueError, "method"),
        (lambda c: s4.median_filter_masked_pixels(c, np.zeros((9, 10), bool)), ValueError,
         r"mask must have the detector shape \(10, 9\).*got shape \(9, 10\)"),
        (lambda c: s4.median_filter_masked_pixels(c, np.full((10, 9), 2)), TypeError,
         "mask must be boolean"),
        (lambda c: s4.median_filter_masked_pixels(c, np.zeros((10, 9), bool),
                                                  kernel_width=4), ValueError, "kernel_width"),
        (lambda c: s4.filter_hot_pixels(c, -1), ValueError, "threshold"),
        (lambda c: s4.filter_hot_pixels(c, 5, ind_compare=8), ValueError, "ind_compare"),
        (lambda c: s4.filter_hot_pixels(c, 5, kernel_width=4), ValueError,
         r"kernel_width must be an odd int >= 3, got 4"),
        (lambda c: s4.bin_q(c, 2, dtype="nope"), TypeError, "dtype must be a numpy dtype"),
        (lambda c: s4.bin_q(c.values, 2), TypeError, "cube must be an xarray.DataArray"),
        (lambda c: s4.crop_q(c.transpose("qx", "qy", "rx", "ry"), None, None), ValueError,
         "cube must have dims"),
    ],
)
def test_errors(cube, call, exc, match):
    with pytest.raises(exc, match=match):
        call(cube)


def test_pad_integer_cube_rejects_fractional_value():
    c = make_cube(np.ones((1, 1, 4, 4), dtype=np.uint16))
    with pytest.raises(ValueError, match="value must be an integer"):
        pp.pad_q(c, factor=2, value=0.5)


def test_bin_into_float16_accumulates_in_float32_and_refuses_overflow():
    small = s4.datacube(np.full((1, 2, 4, 4), 6.0, np.float32))
    out = s4.bin_q(small, 2, dtype="float16")
    assert out.dtype == np.float16 and np.all(out.values == 24.0)
    big = s4.datacube(np.full((1, 2, 4, 4), 60000.0, np.float32))  # float16 holds 65504
    with pytest.raises(ValueError, match="float16 cannot hold the binned values: they "
                                         "reach 240000"):
        s4.bin_q(big, 2, dtype="float16")
    assert s4.bin_q(big, 2, reduce="mean", dtype="float16").values.max() == 60000.0
