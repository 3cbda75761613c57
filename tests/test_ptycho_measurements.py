"""Tests of stem4d.ptycho.measurements: each step against known answers, numpy and dask."""

from __future__ import annotations

import itertools
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy.ndimage import gaussian_filter

import stem4d as s4
from stem4d.ptycho import measurements as m

LAM_300 = 0.019687  # Å, CONVENTIONS.md table


# ------------------------------------------------------------------ helpers
@pytest.fixture
def rng():
    return np.random.default_rng(7)


def cube_from(data, **kw):
    kw = {"r_step": 0.5, "r_units": "Å", **kw}
    return m.as_cube(data, **kw)


def disk_pattern(n, center, radius, blur=1.0, plateau=1000.0, supersample=8):
    """Anti-aliased hard disk (area exactly pi r^2), then a Gaussian blur (area kept)."""
    s = supersample
    i = (np.arange(n * s) + 0.5) / s - 0.5
    inside = ((i[:, None] - center[0]) ** 2 + (i[None, :] - center[1]) ** 2) <= radius**2
    img = inside.reshape(n, s, n, s).mean(axis=(1, 3)) * plateau
    return gaussian_filter(img, blur, mode="constant")


def tail(n, center, kind, a, b):
    i = np.arange(n)[:, None] - center[0]
    j = np.arange(n)[None, :] - center[1]
    r = np.sqrt(i**2 + j**2) + 1e-10
    return a * r**-b if kind == "power" else a * np.exp(-b * r)


def _refuse_compute(*args, **kwargs):
    raise AssertionError("the data were computed")


# ------------------------------------------------------------- raw arrays, stacks
def test_permute_reshape_like_numpy(rng):
    raw = rng.random((8, 7, 3, 4))  # (ky, kx, Ry, Rx)
    p = m.permute(raw, [2, 3, 0, 1])
    np.testing.assert_array_equal(p, raw.transpose(2, 3, 0, 1))
    r = m.reshape(p, [-1, 8, 7])
    np.testing.assert_array_equal(r, raw.transpose(2, 3, 0, 1).reshape(12, 8, 7))
    lazy = m.reshape(m.permute(da.from_array(raw, chunks=4), [2, 3, 0, 1]), [-1, 8, 7])
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), r)


def test_stack_round_trip_is_ptyrad_order(rng):
    raw = rng.random((3, 4, 6, 5)).astype(np.float32)
    cube = s4.set_beam(cube_from(raw, q_step=0.1, q_units="1/Å"), beam_energy=300e3)
    stack = m.to_stack(cube)
    assert stack.dims == ("scan", "qx", "qy")
    # PtyRAD's (N, ky, kx) is numpy's reshape of (Ry, Rx, ky, kx): ry fastest
    np.testing.assert_array_equal(stack.values, raw.reshape(12, 6, 5))
    assert m.scan_shape(stack) == (3, 4)
    np.testing.assert_allclose(stack.rx.values, np.repeat([0, 0.5, 1.0], 4))
    np.testing.assert_allclose(stack.ry.values, np.tile([0, 0.5, 1.0, 1.5], 3))
    assert stack.rx.attrs["units"] == "Å" and stack.rx.attrs["step"] == 0.5
    assert float(stack.beam_energy) == 300e3
    back = m.to_cube(stack)
    xr.testing.assert_identical(back, cube)


# ----------------------------------------------------------------------- flipT
@pytest.mark.parametrize("flags", list(itertools.product((0, 1), repeat=3)))
def test_flipT_eight_cases_match_numpy(rng, flags):
    raw = rng.random((2, 3, 6, 5)).astype(np.float32)
    expected = raw
    if flags[0]:
        expected = np.flip(expected, axis=-2)  # flipud: detector rows (qx, PtyRAD ky)
    if flags[1]:
        expected = np.flip(expected, axis=-1)  # fliplr: detector columns (qy, kx)
    if flags[2]:
        expected = np.swapaxes(expected, -1, -2)
    cube = cube_from(raw)
    out = m.flip_transpose(cube, list(flags))
    np.testing.assert_array_equal(out.values, expected)
    stack = m.flip_transpose(m.to_stack(cube), flags)
    np.testing.assert_array_equal(stack.values, expected.reshape(6, *expected.shape[2:]))
    lazy = m.flip_transpose(cube.copy(data=da.from_array(raw, chunks=1)), flags)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.values, expected)


def test_flipT_origin_follows_the_data():
    raw = np.zeros((1, 1, 9, 7), np.float32)
    raw[0, 0, 2, 5] = 1.0  # the unscattered beam
    cube = s4.set_origin(cube_from(raw, q_step=0.1, q_units="1/Å"), 2, 5)
    for flags in itertools.product((0, 1), repeat=3):
        out = m.flip_transpose(cube, flags)
        peak = out.isel(rx=0, ry=0).argmax(("qx", "qy"))
        assert float(out.qx[int(peak["qx"])]) == pytest.approx(0, abs=1e-12)
        assert float(out.qy[int(peak["qy"])]) == pytest.approx(0, abs=1e-12)


# ------------------------------------------------------------------ calibration
@pytest.mark.parametrize(("mode", "value", "dk"), [
    ("dx", 0.5, 1 / (64 * 0.5)),             # 0.03125
    ("dk", 0.05, 0.05),
    ("kMax", 2.0, 0.0625),                   # kMax = N dk / 2
    ("da", 1.0, 1.0 / (1000 * LAM_300)),     # 0.050795
    ("angleMax", 40.0, 0.063494),            # 2 * 40 / (1000 λ) / 64
    ("n_alpha", 2.0, 0.095241),              # angleMax = 60 mrad
    ("RBF", 16.0, 0.095241),                 # da = 30 / 16 mrad
])
def test_calibration_modes_hand_values(mode, value, dk):
    raw = np.ones((2, 2, 64, 64), np.float32)
    cube = s4.set_origin(cube_from(raw), 32, 32)
    out = s4.calibrate_q(cube, mode, value, beam_energy=300e3, convergence_semiangle=30.0)
    step = s4.q_pixel_size(out)
    assert step[2] == "1/Å"
    assert step[0] == pytest.approx(dk, rel=5e-5) and step[1] == pytest.approx(dk, rel=5e-5)
    assert s4.get_origin(out) == pytest.approx((32, 32))  # origin kept
    assert float(out.beam_energy) == 300e3 and float(out.convergence_semiangle) == 30
    # the reconstruction pixel is dx = 1 / (N dk); mrad per pixel = 1000 λ dk
    assert 1 / (64 * step[0]) == pytest.approx(1 / (64 * dk), rel=5e-5)
    da_mrad = s4.q_pixel_size(s4.convert_q_units(out, "mrad"))[0]
    assert da_mrad == pytest.approx(1000 * LAM_300 * dk, rel=5e-5)


def test_calibration_reads_beam_coordinates_and_kmax_definition():
    cube = s4.set_beam(cube_from(np.ones((1, 1, 64, 64), np.float32)),
                       beam_energy=300e3, convergence_semiangle=30.0)
    out = s4.calibrate_q(cube, "angleMax", 30.0)  # the detector edge at alpha
    dk = s4.q_pixel_size(out)[0]
    assert 64 * dk / 2 * 1000 * LAM_300 == pytest.approx(30.0, rel=5e-5)
    assert s4.q_pixel_size(s4.calibrate_q(cube, "kMax", 3.0))[0] == pytest.approx(6 / 64)


@pytest.mark.parametrize("radius", [9.3, 16.0, 21.7])
def test_fitRBF_recovers_disk_radius(rng, radius):
    n, center = 64, (31.6, 32.4)
    dp = disk_pattern(n, center, radius, blur=1.2) + tail(n, center, "power", 5.0, 1.5)
    stack = rng.poisson(np.broadcast_to(dp, (4, 5, n, n))).astype(np.float32)
    cube = cube_from(stack)
    out = s4.calibrate_q(cube, "fitRBF", beam_energy=300e3, convergence_semiangle=30)
    stack = s4.calibrate_q(m.to_stack(cube), "fitRBF", beam_energy=300e3,
                           convergence_semiangle=30)
    assert s4.q_pixel_size(stack)[0] == pytest.approx(s4.q_pixel_size(out)[0])
    expected_dk = 30.0 / radius / (1000 * LAM_300)
    assert s4.q_pixel_size(out)[0] == pytest.approx(expected_dk, rel=0.01)


def test_calibration_errors_name_the_argument():
    cube = cube_from(np.ones((1, 1, 64, 60), np.float32))
    with pytest.raises(ValueError, match="mode must be one of"):
        s4.calibrate_q(cube, "kmax", 1.0)
    with pytest.raises(ValueError, match="square detector"):
        s4.calibrate_q(cube, "dx", 1.0)
    with pytest.raises(ValueError, match="needs beam_energy"):
        s4.calibrate_q(cube, "da", 1.0)
    with pytest.raises(ValueError, match="needs convergence_semiangle"):
        s4.calibrate_q(cube, "RBF", 10.0, beam_energy=300e3)
    with pytest.raises(ValueError, match="needs a value"):
        s4.calibrate_q(cube, "dk")
    with pytest.raises(TypeError, match="obj must be a"):
        s4.calibrate_q(np.ones((4, 4)), "dk", 1.0)


# --------------------------------------------------------------- crop, resample
def test_crop_scan_and_detector_keep_coordinates(rng):
    raw = rng.random((6, 5, 10, 10)).astype(np.float32)
    cube = s4.set_origin(cube_from(raw, q_step=0.1, q_units="1/Å"), 5, 5)
    out = m.crop(cube, rx=(1, 4), ry=None, qx=(2, 8), qy=(-8, -2))
    np.testing.assert_array_equal(out.values, raw[1:4, :, 2:8, 2:8])
    assert s4.get_origin(out) == pytest.approx((3, 3))
    np.testing.assert_allclose(out.rx.values, [0.5, 1.0, 1.5])
    stack = m.crop(m.to_stack(cube), rx=(1, 4), qx=(2, 8), qy=(2, 8))
    assert m.scan_shape(stack) == (3, 5)
    np.testing.assert_array_equal(stack.values, out.values.reshape(15, 6, 6))


def test_resample_halves_pixel_size_and_on_the_fly_is_lazy(rng):
    raw = rng.random((2, 3, 16, 16)).astype(np.float32)
    cube = s4.set_origin(cube_from(raw, q_step=0.1, q_units="1/Å"), 8, 8)
    out = m.resample(cube, 2)
    assert out.sizes["qx"] == 32 and s4.q_pixel_size(out)[0] == pytest.approx(0.05)
    assert s4.get_origin(out) == pytest.approx((16, 16))
    np.testing.assert_allclose(out.values[..., ::2, ::2], raw, rtol=1e-6)  # pixel 0 stays
    lazy = m.resample(m.to_stack(cube), 2, mode="on_the_fly")
    assert isinstance(lazy.data, da.Array) and lazy.dims == ("scan", "qx", "qy")
    np.testing.assert_allclose(lazy.values, out.values.reshape(6, 32, 32), rtol=1e-6)


# ------------------------------------------------------------- negative values
def test_remove_negative_modes():
    raw = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 4.0], np.float32).reshape(1, 1, 2, 3)
    cube = cube_from(raw)
    v = lambda out: out.values.ravel()  # noqa: E731
    np.testing.assert_allclose(v(m.remove_negative(cube)), [0, 0, 0, 0.3, 1, 4])
    np.testing.assert_allclose(v(m.remove_negative(cube, "subtract_min")),
                               [0, 1.5, 2, 2.3, 3, 6])
    np.testing.assert_allclose(v(m.remove_negative(cube, "clip_value", 0.5)),
                               [0, 0, 0, 0, 1, 4])
    np.testing.assert_allclose(v(m.remove_negative(cube, "subtract_value", 0.5)),
                               [0, 0, 0, 0, 0.5, 3.5])  # what stays negative is clipped
    positive = cube_from(np.abs(raw) + 1)
    xr.testing.assert_identical(m.remove_negative(positive, "subtract_value", 1.0), positive)
    np.testing.assert_allclose(
        v(m.remove_negative(positive, "subtract_value", 1.0, force=True)),
        np.abs(raw).ravel(), rtol=1e-6)
    lazy = m.remove_negative(cube.copy(data=da.from_array(raw)), "subtract_min")
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(v(lazy), [0, 1.5, 2, 2.3, 3, 6])
    with pytest.raises(ValueError, match="needs value="):
        m.remove_negative(cube, "clip_value")
    with pytest.raises(ValueError, match="mode must be one of"):
        m.remove_negative(cube, "clip")


# ---------------------------------------------------------------- normalization
def test_normalization_modes(rng):
    raw = rng.random((4, 5, 8, 8)).astype(np.float32) * 50
    raw[1, 2] *= 3  # one bright pattern
    cube = cube_from(raw)
    mean = raw.astype(np.float64).mean(axis=(0, 1))
    totals = raw.astype(np.float64).sum(axis=(2, 3))
    out = m.normalize(cube)  # max_at_one
    assert out.values.mean(axis=(0, 1)).max() == pytest.approx(1, rel=1e-5)
    assert float(out.intensity_scale) == pytest.approx(mean.max(), rel=1e-6)
    out = m.normalize(cube, "mean_at_one")
    assert out.values.mean() == pytest.approx(1, rel=1e-5)
    out = m.normalize(cube, "sum_to_one")
    assert out.values.sum(axis=(2, 3)).mean() == pytest.approx(1, rel=1e-5)
    out = m.normalize(cube, "max_total_intensity")
    assert out.values.sum(axis=(2, 3)).max() == pytest.approx(1, rel=1e-5)
    assert float(out.intensity_scale) == pytest.approx(totals.max(), rel=1e-6)
    out = m.normalize(m.to_stack(cube), "target_intensity", 500)
    assert out.values.sum(axis=(1, 2)).mean() == pytest.approx(500, rel=1e-5)
    out = m.normalize(m.normalize(cube, "divide_const", 4), "divide_const", 2.5)
    np.testing.assert_allclose(out.values, raw / 10, rtol=1e-6)
    assert float(out.intensity_scale) == pytest.approx(10)  # cumulative
    lazy = m.normalize(cube.copy(data=da.from_array(raw, chunks=(2, 5, 8, 8))))
    assert isinstance(lazy.data, da.Array)
    with pytest.raises(ValueError, match="needs value="):
        m.normalize(cube, "divide_const")
    with pytest.raises(ValueError, match="normalization constant"):
        m.normalize(cube_from(np.zeros((1, 1, 4, 4), np.float32)))


# ---------------------------------------------------------------------- padding
@pytest.mark.parametrize(("kind", "a", "b"), [("power", 40.0, 3.0), ("exp", 60.0, 0.15)])
def test_fit_background_recovers_tail(kind, a, b):
    n, center = 48, (24, 24)
    dp = tail(n, center, kind, a, b)
    dp[disk_pattern(n, center, 8, blur=0.01, plateau=1.0) > 0] = 500.0  # BF disk
    fa, fb = m.fit_background(dp, kind, threshold=70)
    assert fb == pytest.approx(b, rel=1e-3)
    assert fa == pytest.approx(a, rel=1e-3)


@pytest.mark.parametrize(("kind", "a", "b"), [("power", 40.0, 3.0), ("exp", 60.0, 0.15)])
def test_pad_extends_the_fitted_tail(rng, kind, a, b):
    n, center = 48, (24, 24)
    dp = tail(n, center, kind, a, b)
    dp[disk_pattern(n, center, 8, blur=0.01, plateau=1.0) > 0] = 500.0
    raw = np.broadcast_to(dp, (2, 3, n, n)).astype(np.float32)
    cube = s4.set_origin(cube_from(raw, q_step=0.1, q_units="1/Å"), 24, 24)
    out = m.pad(cube, 80, kind, threshold=70)
    assert out.sizes["qx"] == 80 and s4.get_origin(out) == pytest.approx((40, 40))
    assert s4.q_pixel_size(out)[0] == pytest.approx(0.1)
    np.testing.assert_array_equal(out.values[..., 16:64, 16:64], raw)
    expected = tail(80, (40, 40), kind, a, b)
    border = np.ones((80, 80), bool)
    border[16:64, 16:64] = False
    np.testing.assert_allclose(out.values[0, 0][border], expected[border], rtol=2e-3)
    lazy = m.pad(m.to_stack(cube), 80, kind, mode="on_the_fly")
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(lazy.values, out.values.reshape(6, 80, 80), rtol=1e-6)


def test_pad_constant_edge_ramp():
    dp = np.arange(16, dtype=np.float32).reshape(4, 4) + 1
    cube = cube_from(np.broadcast_to(dp, (1, 2, 4, 4)).copy())
    out = m.pad(cube, 8, "constant", value=2.0).values[0, 0]
    assert out[0, 0] == 2.0 and out[7, 7] == 2.0 and out[2, 2] == dp[0, 0]
    out = m.pad(cube, 8, "edge").values[0, 0]
    np.testing.assert_allclose(out[0, 2:6], dp[0])  # edge rows extended
    np.testing.assert_allclose(out[2:6, 7], dp[:, 3])
    out = m.pad(cube, 8, "linear_ramp", value=4.0).values[0, 0]
    assert out[0, 0] == pytest.approx(4.0)  # amplitude ramps to sqrt(value)
    np.testing.assert_allclose(out[2:6, 2:6], dp)
    with pytest.raises(ValueError, match="target"):
        m.pad(cube, 3, "edge")
    with pytest.raises(ValueError, match="kind must be one of"):
        m.pad(cube, 8, "reflect")


# -------------------------------------------------------------------- blurs
def test_detector_blur_is_gaussian_per_pattern(rng):
    raw = rng.random((3, 2, 12, 10)).astype(np.float32)
    cube = cube_from(raw)
    out = m.detector_blur(cube, 1.3)
    expected = gaussian_filter(raw, (0, 0, 1.3, 1.3), mode="reflect")
    np.testing.assert_allclose(out.values, expected, rtol=1e-5)
    np.testing.assert_allclose(out.values.sum(axis=(2, 3)), raw.sum(axis=(2, 3)), rtol=1e-5)
    lazy = m.detector_blur(m.to_stack(cube.copy(data=da.from_array(raw, chunks=(1, 2, 6, 5)))),
                           1.3)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(lazy.values, expected.reshape(6, 12, 10), rtol=1e-5)


def test_source_size_blur_over_the_scan_grid(rng):
    raw = rng.random((9, 8, 4, 4)).astype(np.float32)
    cube = cube_from(raw, r_step=(0.5, 0.25))
    out = m.source_size_blur(cube, 0.6)  # sigma = 1.2 and 2.4 positions
    expected = gaussian_filter(raw, (1.2, 2.4, 0, 0), mode="reflect")
    np.testing.assert_allclose(out.values, expected, rtol=1e-5)
    for chunks in ((2, 8, 4, 4), (3, 3, 4, 4), (9, 8, 4, 4)):
        lazy = m.source_size_blur(cube.copy(data=da.from_array(raw, chunks=chunks)), 0.6)
        assert isinstance(lazy.data, da.Array)
        np.testing.assert_allclose(lazy.values, expected, rtol=1e-5)
    stack = m.source_size_blur(m.to_stack(cube), 0.6)
    np.testing.assert_allclose(stack.values, expected.reshape(72, 4, 4), rtol=1e-5)
    with pytest.raises(ValueError, match="scan step in Å"):
        m.source_size_blur(m.as_cube(raw), 0.6)


# ---------------------------------------------------------------- Poisson noise
def test_poisson_dose_gives_the_mean_counts(rng):
    dp = disk_pattern(16, (8, 8), 4, plateau=1.0) + 0.01
    raw = np.broadcast_to(dp * 0.37, (20, 20, 16, 16)).astype(np.float32)
    cube = cube_from(raw)  # 0.5 Å step
    out = m.poisson_noise(cube, 1000, seed=1)
    counts = out.values * float(out.electrons_per_unit)
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    assert counts.sum(axis=(2, 3)).mean() == pytest.approx(1000, abs=8)  # 5 sigma
    lam = dp / dp.sum() * 1000
    assert np.all(np.abs(counts.mean(axis=(0, 1)) - lam) <= 5 * np.sqrt(lam / 400) + 1e-3)
    np.testing.assert_allclose(counts.var(axis=(0, 1)), lam, rtol=0.35, atol=0.05)
    assert out.values.sum(axis=(2, 3)).mean() == pytest.approx(raw.sum(axis=(2, 3)).mean(),
                                                               rel=0.01)  # scale kept
    areal = m.poisson_noise(cube, 4000, "e_per_A2", seed=1, keep_scale=False)
    assert float(areal.dose_e_per_pattern) == pytest.approx(1000)  # 4000 e/Å² x 0.25 Å²
    assert areal.values.sum(axis=(2, 3)).mean() == pytest.approx(1000, abs=8)
    lazy = m.poisson_noise(cube.copy(data=da.from_array(raw, chunks=(5, 20, 16, 16))), 1000,
                           seed=3)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.values, lazy.values)  # reproducible per chunk
    simulated = cube.assign_attrs(dose="none")  # as stem4d.ptycho.simulate labels it
    assert "dose" not in m.poisson_noise(simulated, 1000).attrs
    assert simulated.attrs["dose"] == "none"
    with pytest.raises(ValueError, match="non-negative"):
        m.poisson_noise(cube_from(raw - 0.01), 1000)
    with pytest.raises(ValueError, match="unit must be one of"):
        m.poisson_noise(cube, 1000, "electrons")


# --------------------------------------------------------------------- pipeline
def _ptyrad_like_data(rng, scan=(6, 5), n=32, radius=8.0):
    center = (n // 2, n // 2)
    background = np.minimum(tail(n, center, "power", 20.0, 2.0), 20.0 * radius**-2.0)
    dp = disk_pattern(n, center, radius, blur=0.8) + background
    mod = 1 + 0.1 * rng.random(scan + (1, 1))
    return (dp * mod).astype(np.float32)  # (Ry, Rx, ky, kx)


def test_prepare_from_npy_file_matches_manual_chain(rng, tmp_path):
    data = _ptyrad_like_data(rng)
    stored = np.ascontiguousarray(data.transpose(2, 3, 0, 1))  # (ky, kx, Ry, Rx) file
    path = tmp_path / "scan.npy"
    np.save(path, stored)
    out = m.prepare_measurements(
        path, permute=[2, 3, 0, 1], reshape=[-1, 32, 32], scan_shape=(6, 5),
        scan_step=0.4, beam_energy=300e3, convergence_semiangle=25.0, flipT=[1, 0, 1],
        calibration={"mode": "fitRBF"}, crop=[[1, 5], None, [2, 30], [2, 30]],
        normalization="sum_to_one", pad={"target": 40, "kind": "power"},
        resample={"factor": 1.5}, detector_blur=0.5,
    )
    assert out.dims == ("scan", "qx", "qy") and out.dtype == np.float32
    assert m.scan_shape(out) == (4, 5) and out.sizes["qx"] == 60
    assert out.qx.attrs["units"] == "1/Å"
    # manual chain with the step functions
    cube = s4.set_beam(m.as_cube(data, r_step=0.4, r_units="Å"), beam_energy=300e3,
                       convergence_semiangle=25.0)
    cube = s4.set_origin(cube, 16, 16)  # centre pixel, then flipped with the data
    cube = m.flip_transpose(cube, [1, 0, 1])
    assert s4.get_origin(cube) == pytest.approx((16, 15))
    cube = s4.calibrate_q(cube, "fitRBF")
    dk = s4.q_pixel_size(cube)[0]
    cube = m.crop(cube, rx=(1, 5), qx=(2, 30), qy=(2, 30))
    cube = m.normalize(m.remove_negative(cube), "sum_to_one")
    cube = m.detector_blur(m.resample(m.pad(cube, 40, "power"), 1.5), 0.5)
    np.testing.assert_allclose(out.values, m.to_stack(cube).values, rtol=1e-5, atol=1e-7)
    assert s4.q_pixel_size(out)[0] == pytest.approx(dk / 1.5)
    assert dk == pytest.approx(25.0 / 8.0 / (1000 * LAM_300), rel=0.01)  # BF radius 8 px
    np.testing.assert_allclose(out.rx.values[::5], [0.4, 0.8, 1.2, 1.6])


def test_prepare_from_stem4d_and_py4dstem_files_with_a_scan_shape(rng, tmp_path):
    # parameter files always give the scan shape; readers of files that carry their
    # own (stem4d, py4DSTEM) must not be handed it, and a stored stack is reshaped
    data = _ptyrad_like_data(rng)
    cube = m.as_cube(data, r_step=0.4, r_units="Å")
    kw = dict(scan_shape=(6, 5), normalization=None, calibration={"mode": "dk", "value": 0.05})
    expected = m.prepare_measurements(cube, **kw)
    s4.save(cube, tmp_path / "cube.nc")
    s4.save(m.to_stack(cube).drop_vars(["n_rx", "n_ry"]), tmp_path / "stack.zarr")
    for name in ("cube.nc", "stack.zarr"):
        got = m.prepare_measurements(tmp_path / name, **kw)
        np.testing.assert_array_equal(got.values, expected.values)
        assert m.scan_shape(got) == (6, 5)
    with pytest.raises(ValueError, match="must multiply to the number of patterns 30"):
        m.prepare_measurements(tmp_path / "stack.zarr", scan_shape=(5, 5))
    py4d = Path(__file__).parent / "data" / "py4dstem_plain.h5"
    direct = s4.open(py4d)
    got = m.prepare_measurements(py4d, scan_shape=direct.shape[:2], normalization=None,
                                 calibration={"mode": "dk", "value": 0.05})
    np.testing.assert_allclose(got.values, m.to_stack(direct).values)


def test_prepare_lazy_from_dask_cube_with_noise(rng):
    data = _ptyrad_like_data(rng, scan=(8, 8))
    cube = m.as_cube(da.from_array(data, chunks=(2, 8, 32, 32)), r_step=0.5, r_units="Å",
                     q_step=0.05, q_units="1/Å", beam_energy=200e3,
                     convergence_semiangle=20.0)
    out = m.prepare_measurements(cube, source_size=0.3, detector_blur=0.7,
                                 poisson={"dose": 1e4, "seed": 0}, output="cube")
    assert isinstance(out.data, da.Array) and out.dims == ("rx", "ry", "qx", "qy")
    assert s4.get_origin(out) == pytest.approx((16, 16))  # q = 0 put on the centre pixel
    with dask.config.set(scheduler="sync"):
        values = out.values
    assert values.min() >= 0 and float(out.dose_e_per_pattern) == 1e4
    counts = values * float(out.electrons_per_unit)
    assert counts.sum(axis=(2, 3)).mean() == pytest.approx(1e4, rel=0.01)


def test_prepare_keeps_file_calibration_and_rejects_bad_input(rng):
    data = _ptyrad_like_data(rng)
    cube = m.as_cube(data, r_step=0.5, r_units="Å", q_step=0.5, q_units="mrad",
                     beam_energy=300e3, origin=(16, 16))
    out = m.prepare_measurements(cube, normalization=None, remove_negative=None)
    assert s4.q_pixel_size(out)[0] == pytest.approx(0.5 / (1000 * LAM_300), rel=5e-5)
    np.testing.assert_allclose(out.values, data.reshape(30, 32, 32))
    with pytest.raises(ValueError, match="calibration="):
        m.prepare_measurements(data)  # detector in pixels, no calibration
    with pytest.raises(ValueError, match="scan_shape"):
        m.prepare_measurements(data.reshape(30, 32, 32), calibration={"mode": "dk", "value": 1})
    with pytest.raises(ValueError, match="permute must be a permutation"):
        m.prepare_measurements(data, permute=[0, 1, 2, 2])
    with pytest.raises(ValueError, match="reshape"):
        m.prepare_measurements(data, reshape=[-1, 31, 32])
    with pytest.raises(ValueError, match="flipT must be three"):
        m.prepare_measurements(data, flipT=[1, 0], calibration="fitRBF")
    with pytest.raises(ValueError, match="crop must be 4 ranges"):
        m.prepare_measurements(cube, crop=[[0, 2]])
    with pytest.raises(ValueError, match="pad needs 'target'"):
        m.prepare_measurements(cube, pad={"kind": "power"})
    with pytest.raises(TypeError, match="source must be"):
        m.prepare_measurements(3.0)
    with pytest.raises(ValueError, match="output must be one of"):
        m.prepare_measurements(cube, output="tree")
    with pytest.raises(ValueError, match="meas must have dims"):
        m.normalize(cube.isel(rx=0))
    with pytest.raises(TypeError, match="meas must be an xarray.DataArray"):
        m.detector_blur(data, 1.0)


def test_prepare_lazy_steps_do_not_compute_the_data(rng, monkeypatch):
    data = _ptyrad_like_data(rng)
    cube = m.as_cube(da.from_array(data, chunks=(2, 5, 32, 32)), r_step=0.5, r_units="Å",
                     q_step=0.05, q_units="1/Å", origin=(16, 16))
    monkeypatch.setattr(da.Array, "compute", _refuse_compute)
    monkeypatch.setattr(da.Array, "__array__", _refuse_compute)
    for out in (m.detector_blur(cube, 1.0), m.source_size_blur(cube, 0.5),
                m.flip_transpose(cube, [1, 1, 1]), m.resample(cube, 2),
                m.crop(cube, qx=(2, 30)), m.to_stack(cube), m.pad(cube, 40, "constant"),
                s4.calibrate_q(cube, "dk", 0.1)):
        assert isinstance(out.data, da.Array)


def test_prepare_from_ptyrad_params_matches_the_same_chain(rng, tmp_path):
    from stem4d.ptycho.params import from_ptyrad

    data = _ptyrad_like_data(rng)
    stored = np.ascontiguousarray(data.transpose(2, 3, 0, 1))  # (ky, kx, Ry, Rx) file
    np.save(tmp_path / "scan.npy", stored)
    ptyrad = {
        "init_params": {
            "probe_kv": 300, "probe_conv_angle": 25.0, "meas_Npix": 32,
            "pos_N_scan_slow": 6, "pos_N_scan_fast": 5, "pos_scan_step_size": 0.4,
            "probe_pmode_max": 1, "obj_Nlayer": 1, "obj_slice_thickness": 1.0,
            "meas_params": {"path": "scan.npy"}, "meas_permute": [2, 3, 0, 1],
            "meas_reshape": [-1, 32, 32], "meas_flipT": [1, 0, 1],
            "meas_crop": [[1, 5], None, [2, 30], [2, 30]],
            "meas_normalization": {"mode": "sum_to_one"},
            "meas_pad": {"mode": "precompute", "padding_type": "power", "target_Npix": 40},
            "meas_resample": {"mode": "precompute", "scale_factors": [1.5, 1.5]},
            "meas_add_detector_blur": 0.5, "random_seed": 3,
        },
    }
    params = from_ptyrad(ptyrad, strict=True)
    assert params.scan.shape == (4, 5) and params.detector.shape == 60
    # the path is relative: found from base_dir (the parameter file's folder)
    out = m.prepare_from_params(params, base_dir=tmp_path)
    ref = m.prepare_measurements(
        tmp_path / "scan.npy", permute=[2, 3, 0, 1], reshape=[-1, 32, 32], scan_shape=(6, 5),
        scan_step=0.4, beam_energy=300e3, convergence_semiangle=25.0, flipT=[1, 0, 1],
        calibration={"mode": "fitRBF"}, crop=[[1, 5], None, [2, 30], [2, 30]],
        normalization="sum_to_one", pad={"target": 40, "kind": "power"},
        resample={"factor": 1.5}, detector_blur=0.5)
    np.testing.assert_allclose(out.values, ref.values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out.qx.values, ref.qx.values)
    assert out.sizes["scan"] == params.scan.count and out.sizes["qx"] == params.detector.shape
    # an array given directly replaces the file; Poisson noise takes the params' seed
    noisy = from_ptyrad({**ptyrad, "init_params": {
        **ptyrad["init_params"], "meas_add_poisson_noise": {"unit": "total_e_per_pattern",
                                                            "value": 1000}}}, strict=True)
    a = m.prepare_from_params(noisy, source=stored)
    b = m.prepare_from_params(noisy, source=stored)
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(FileNotFoundError, match="scan.npy"):
        m.prepare_from_params(params)  # not in the working directory, no base_dir
    params.measurements.pop("source")
    with pytest.raises(ValueError, match="no measurements: set measurements.source"):
        m.prepare_from_params(params)
