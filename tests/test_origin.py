"""Origin: measure (com, max, xcorr), fit (plane, parabola, Bézier, robust) and apply,
against the known origin of the crystal simulator."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import stem4d as s4
from stem4d import simulate as sim
from stem4d.origin import apply_origin, fit_origin, measure_origin

DRIFT = (0.11, 0.05, -0.07, 0.13)  # pixels per scan step
DET = (64, 64)


def _rms(ds: xr.Dataset, truth: xr.Dataset) -> float:
    ex = np.asarray(ds["qx0"].values) - truth["qx0"].values
    ey = np.asarray(ds["qy0"].values) - truth["qy0"].values
    return float(np.sqrt(np.mean(ex**2 + ey**2) / 2))


@pytest.fixture(scope="module")
def clean() -> tuple[xr.DataArray, xr.Dataset]:
    cube, truth = sim.crystal((16, 16), DET, origin=(31.3, 32.6), origin_drift=DRIFT, seed=1)
    return cube.drop_vars(["qx0", "qy0"]), truth


@pytest.fixture(scope="module")
def noisy() -> tuple[xr.DataArray, xr.Dataset]:
    cube, truth = sim.crystal((16, 16), DET, origin=(31.3, 32.6), origin_drift=DRIFT,
                              dose=50, seed=3)
    return cube.drop_vars(["qx0", "qy0"]), truth


@pytest.fixture(scope="module")
def template() -> xr.DataArray:
    return sim.probe_disk(DET, 4.0, edge_width=0.5)


# ----------------------------------------------------------------- measure_origin
@pytest.mark.parametrize(("method", "tol"), [("com", 0.01), ("xcorr", 0.01), ("max", 0.05)])
def test_measure_origin_noise_free_accuracy(clean, template, method, tol):
    cube, truth = clean
    kw = {"template": template} if method == "xcorr" else {}
    ds = measure_origin(cube, method, **kw)
    # issue target: < 0.05 px RMS; measured 0.002 (com, xcorr) and 0.005 (max)
    assert _rms(ds, truth) < tol
    assert ds["qx0"].dims == ("rx", "ry") and ds["qx0"].attrs["units"] == "pixels"
    assert ds.attrs["method"] == method
    np.testing.assert_array_equal(ds.rx.values, cube.rx.values)
    assert ds.rx.attrs["units"] == "Å" and "beam_energy" in ds.coords
    assert np.all(np.isfinite(ds["quality"].values))


def test_measure_origin_com_with_given_radius_and_no_refinement(clean):
    cube, truth = clean
    assert _rms(measure_origin(cube, "com", radius=5.5), truth) < 0.01
    # the threshold step alone is cruder but close
    coarse = measure_origin(cube, "com", iterations=0)
    assert 0.005 < _rms(coarse, truth) < 0.05
    assert np.all((coarse["quality"] > 0.05) & (coarse["quality"] < 1))


def test_measure_origin_at_dose_50(noisy, template):
    cube, truth = noisy
    # Poisson limit for ~2500 counts in a radius-4 disk: (4 / 2) / sqrt(2500) = 0.04 px
    com = _rms(measure_origin(cube, "com"), truth)
    xc = _rms(measure_origin(cube, "xcorr", template=template), truth)
    assert com < 0.07 and xc < 0.07  # measured 0.046 (com) and 0.040 (xcorr)


def test_max_smoothing_follows_the_disk_size():
    cube, truth = sim.crystal((8, 8), (96, 96), g1=(18, 4), g2=(-6, 20), disk_radius=8,
                              origin_drift=DRIFT, dose=50, seed=6)
    # default sigma: half the half-maximum radius (4 px here); a fixed 1.5 px wanders
    # over the flat top of the noisy disk
    assert _rms(measure_origin(cube, "max"), truth) < 0.2  # measured 0.09
    assert _rms(measure_origin(cube, "max", sigma=1.5), truth) > 0.5
    assert _rms(measure_origin(cube, "com"), truth) < 0.06


def test_measure_origin_on_calibrated_cube_is_in_pixels(template):
    cube, truth = sim.crystal((6, 5), DET, origin_drift=DRIFT, q_pixel_size=0.02, seed=2)
    ds = measure_origin(cube, "xcorr", template=template)
    assert _rms(ds, truth) < 0.01
    # a template on calibrated coordinates works the same
    vac = s4.set_q_calibration(s4.set_origin(template, 31.5, 31.5), 0.02, "1/Å")
    assert vac.qx.attrs["units"] == "1/Å"
    assert _rms(measure_origin(cube, "xcorr", template=vac), truth) < 0.01


def test_xcorr_template_reference_point(clean, template):
    cube, truth = clean
    # the reference is the periodic centre of mass of the template's bright part,
    # wherever the disk is
    centred = sim.probe_disk(DET, 4.0, center=(32.0, 32.0))
    corner = centred.copy(data=np.roll(centred.values, (-32, -32), axis=(0, 1)))
    assert corner.values[0, 0] == 1.0
    assert _rms(measure_origin(cube, "xcorr", template=corner), truth) < 0.01
    off = sim.probe_disk(DET, 4.0, center=(20.2, 41.7))
    assert _rms(measure_origin(cube, "xcorr", template=off), truth) < 0.01
    assert _rms(measure_origin(cube, "xcorr", template=off.values), truth) < 0.01
    # an edge-enhancing kernel (disk minus a wider Gaussian, zero sum) centred on the corner
    i = np.fft.fftfreq(64, 1 / 64)
    gauss = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * 5.0**2))
    trench = corner.values / corner.values.sum() - gauss / gauss.sum()
    assert abs(trench.sum()) < 1e-6
    assert _rms(measure_origin(cube, "xcorr", template=trench), truth) < 0.02
    # parabolic refinement only (upsample=1) and no refinement at all
    assert _rms(measure_origin(cube, "xcorr", template=template, upsample=1), truth) < 0.03
    whole = measure_origin(cube, "xcorr", template=template, subpixel=False)
    np.testing.assert_allclose(whole["qx0"] % 1, 0.5, atol=1e-6)  # template centre is 31.5
    assert _rms(whole, truth) < 0.5


def test_xcorr_with_a_kernel_of_a_noisy_vacuum_probe_is_unbiased(clean):
    # a Fourier-shifted noisy probe rings slightly negative over the whole array; that
    # ringing must not move the template's reference point (it did by 0.03 px)
    cube, truth = clean
    rng = np.random.default_rng(0)
    vacuum = rng.poisson(100 * sim.probe_disk(DET, 4.0).values, size=(16, *DET))
    probe = s4.vacuum_probe(vacuum.astype(np.float32))
    for kernel in (s4.probe.kernel(probe, "flat"),
                   s4.probe.kernel(probe, "sigmoid", radii=(4.0, 12.0))):
        assert kernel.values.min() < 0  # the ringing / trench is there
        got = measure_origin(cube, "xcorr", template=kernel)
        for name in ("qx0", "qy0"):
            bias = float((got[name] - truth[name]).mean())
            assert abs(bias) < 0.01, (kernel.attrs["kernel"], name, bias)


def test_measure_origin_on_dask_is_lazy_and_equal(template):
    cube, truth = sim.crystal((8, 6), DET, origin_drift=DRIFT, chunks=3, seed=4)
    cube = cube.drop_vars(["qx0", "qy0"])
    assert isinstance(cube.data, da.Array)
    eager = cube.compute()
    for method, kw in [("com", {}), ("max", {}), ("xcorr", {"template": template})]:
        lazy = measure_origin(cube, method, **kw)
        assert isinstance(lazy["qx0"].data, da.Array)
        ref = measure_origin(eager, method, **kw)
        xr.testing.assert_allclose(lazy.compute(), ref, atol=1e-6)
        if method != "max":
            assert _rms(ref, truth) < 0.01
    # a cube chunked along the detector too
    rechunked = cube.chunk({"qx": 32})
    np.testing.assert_allclose(measure_origin(rechunked)["qx0"].values,
                               measure_origin(eager)["qx0"].values, atol=1e-9)


def test_xcorr_ffts_use_one_thread_inside_dask_tasks(template, monkeypatch):
    from stem4d import _kernels

    seen = []
    real = _kernels.xcorr_peaks

    def spy(*args, **kwargs):
        seen.append(kwargs["workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(_kernels, "xcorr_peaks", spy)
    cube, _ = sim.crystal((4, 4), DET, chunks=2, seed=4)
    measure_origin(cube, "xcorr", template=template, workers=4).compute(scheduler="sync")
    assert seen and set(seen) == {1}  # dask runs the chunks in parallel
    seen.clear()
    measure_origin(cube.compute(), "xcorr", template=template, workers=4)
    assert set(seen) == {4}
    seen.clear()
    measure_origin(cube.compute(), "xcorr", template=template)
    assert set(seen) == {-1}


def test_detector_mask_hides_a_hot_pixel(clean):
    cube, truth = clean
    data = cube.values.copy()
    # hot pixel, 40 x the central disk, inside the "com" window (beside the disk): the
    # first estimate ignores it, the windowed centre of mass does not
    data[:, :, 31, 39] = 40.0
    hot = cube.copy(data=data)
    assert _rms(measure_origin(hot, "com"), truth) > 1.0  # measured 1.19
    mask = np.ones(DET, bool)
    mask[31, 39] = False
    assert _rms(measure_origin(hot, "com", mask=mask), truth) < 0.01  # measured 0.0025
    mask_da = xr.DataArray(mask, dims=("qx", "qy"))
    assert _rms(measure_origin(hot, "max", mask=mask_da), truth) < 0.05
    # NaN pixels are ignored
    data = cube.values.copy()
    data[:, :, 31, 39] = np.nan
    assert _rms(measure_origin(cube.copy(data=data), "com"), truth) < 0.01


@pytest.mark.parametrize("method", ["com", "max"])
def test_a_hot_pixel_off_the_disk_changes_nothing(method):
    """A hot pixel far from the disk, 6 or 30 times the disk's peak, neither sets the
    threshold nor pulls the first estimate (the 3 x 3 median removes it)."""
    cube, truth = sim.crystal((6, 6), DET, disk_radius=6, dose=100, seed=2)
    clean = measure_origin(cube, method)
    # the clean result is right (max: 0.42 px at worst over 36 noisy positions)
    assert float(np.hypot(clean.qx0 - truth.qx0, clean.qy0 - truth.qy0).max()) < 0.6
    lazy_hot = None
    for value in (1000.0, 5000.0):  # the disk's peak is ~157 counts
        data = cube.values.copy()
        data[..., 5, 50] = value
        hot = measure_origin(cube.copy(data=data), method)
        # before: "com" 15/36 positions > 2 px off at 1000, both ~32 px off at 5000
        np.testing.assert_allclose(hot.qx0, clean.qx0, atol=1e-6)
        np.testing.assert_allclose(hot.qy0, clean.qy0, atol=1e-6)
        lazy_hot = cube.copy(data=da.from_array(data, chunks=(2, 3, -1, -1)))
    # a pair of hot pixels is removed by the median too, and dask agrees with numpy
    data = cube.values.copy()
    data[..., 5, 50:52] = 5000.0
    pair = measure_origin(cube.copy(data=data), method)
    np.testing.assert_allclose(pair.qx0, clean.qx0, atol=1e-6)
    lazy = measure_origin(lazy_hot, method).compute()
    np.testing.assert_allclose(lazy.qx0, clean.qx0, atol=1e-6)
    np.testing.assert_allclose(lazy.qy0, clean.qy0, atol=1e-6)


def test_median3x3_equals_scipy():
    from scipy import ndimage

    from stem4d.origin import _median3x3

    rng = np.random.default_rng(0)
    for shape in [(3, 1, 4), (2, 2, 2), (30, 100, 99)]:  # 30 patterns: two batches
        for p in (rng.poisson(3, shape).astype(np.float32), rng.random(shape)):
            np.testing.assert_array_equal(
                _median3x3(p), ndimage.median_filter(p, size=(1, 3, 3), mode="nearest"))


def test_empty_pattern_gives_nan(clean):
    cube, _ = clean
    data = cube.values.copy()
    data[2, 3] = 0
    for method in ("com", "max"):
        ds = measure_origin(cube.copy(data=data), method)
        assert np.isnan(ds.qx0.values[2, 3]) and np.isnan(ds.qy0.values[2, 3])
        assert np.isfinite(ds.qx0.values).sum() == ds.qx0.size - 1


def test_measure_origin_bad_input(clean, template):
    cube, _ = clean
    with pytest.raises(ValueError, match="method must be one of"):
        measure_origin(cube, "gauss")
    with pytest.raises(ValueError, match="needs a template"):
        measure_origin(cube, "xcorr")
    with pytest.raises(ValueError, match="template is used by method='xcorr' only"):
        measure_origin(cube, "com", template=template)
    with pytest.raises(ValueError, match=r"template must have the detector shape .*\(32, 32\)"):
        measure_origin(cube, "xcorr", template=sim.probe_disk((32, 32), 4.0))
    with pytest.raises(ValueError, match="template must have dims"):
        measure_origin(cube, "xcorr", template=template.rename(qx="a"))
    with pytest.raises(TypeError, match="template must be a"):
        measure_origin(cube, "xcorr", template=[[1.0]])
    with pytest.raises(ValueError, match="no well-defined centre"):
        measure_origin(cube, "xcorr", template=np.ones(DET))
    with pytest.raises(ValueError, match="template contains NaN"):
        measure_origin(cube, "xcorr", template=template * np.nan)
    with pytest.raises(ValueError, match="radius must be a positive"):
        measure_origin(cube, radius=-1)
    with pytest.raises(ValueError, match="threshold must be"):
        measure_origin(cube, threshold=1.5)
    with pytest.raises(ValueError, match="upsample must be an integer"):
        measure_origin(cube, "xcorr", template=template, upsample=0)
    with pytest.raises(ValueError, match="iterations must be"):
        measure_origin(cube, iterations=-1)
    with pytest.raises(ValueError, match="sigma must be"):
        measure_origin(cube, "max", sigma=-2)
    for name in ("radius", "threshold", "sigma"):
        with pytest.raises(ValueError, match=f"{name} must be a number, got 'wide'"):
            measure_origin(cube, "max" if name == "sigma" else "com", **{name: "wide"})
    with pytest.raises(ValueError, match="iterations must be a non-negative integer"):
        measure_origin(cube, iterations=2.5)
    with pytest.raises(ValueError, match=r"mask must have the detector shape"):
        measure_origin(cube, mask=np.ones((16, 16), bool))
    with pytest.raises(ValueError, match="detector mask with dims"):
        measure_origin(cube, mask=xr.DataArray(np.ones((16, 16), bool), dims=("rx", "ry")))
    with pytest.raises(ValueError, match="mask selects no detector pixel"):
        measure_origin(cube, mask=np.zeros(DET, bool))
    with pytest.raises(ValueError, match="must have dims"):
        measure_origin(cube.transpose("qx", "qy", "rx", "ry"))
    with pytest.raises(TypeError, match="must be an xarray.DataArray"):
        measure_origin(cube.values)
    with pytest.raises(ValueError, match="entirely NaN"):
        measure_origin(cube * np.nan)


# ----------------------------------------------------------------- fit_origin
def _plane_ds(shape=(32, 30), noise=0.0, seed=0) -> tuple[xr.Dataset, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    px = 30.2 + 0.04 * i - 0.03 * j
    py = 33.9 - 0.02 * i + 0.05 * j
    ds = xr.Dataset(
        {"qx0": (("rx", "ry"), px + noise * rng.standard_normal(shape), {"units": "pixels"}),
         "qy0": (("rx", "ry"), py + noise * rng.standard_normal(shape), {"units": "pixels"})},
        coords={"rx": ("rx", 2.0 * np.arange(shape[0]), {"units": "Å"}),
                "ry": ("ry", 2.0 * np.arange(shape[1]), {"units": "Å"})},
    )
    return ds, px, py


def test_fit_plane_residual_is_the_noise():
    noise = 0.1
    ds, px, py = _plane_ds(noise=noise)
    fit = fit_origin(ds, "plane")
    assert abs(float(fit.qx0_rms) / noise - 1) < 0.2
    assert abs(float(fit.qy0_rms) / noise - 1) < 0.2
    np.testing.assert_allclose(fit.qx0_coefficients.values, [30.2, 0.04, -0.03], atol=0.02)
    np.testing.assert_allclose(fit.qy0_coefficients.values, [33.9, -0.02, 0.05], atol=0.02)
    assert list(fit.term.values) == ["1", "i", "j"]
    np.testing.assert_allclose(fit.qx0_residual, ds.qx0 - fit.qx0)
    np.testing.assert_array_equal(fit.qx0_measured, ds.qx0)
    assert np.abs(fit.qx0 - px).max() < 0.03 and fit.used.all()
    assert fit.qx0.attrs["units"] == "pixels" and fit.rx.attrs["units"] == "Å"


def test_fitted_plane_residual_is_the_measurement_noise_on_simulated_data(noisy):
    """Dose 50 (Poisson): the plane fit's residual RMS is the RMS of measured - truth."""
    cube, truth = noisy
    measured = measure_origin(cube, "com")
    fit = fit_origin(measured, "plane")
    for name in ("qx0", "qy0"):
        error = measured[name].values - truth[name].values
        noise = float(np.sqrt(np.mean(error**2)))
        assert noise > 0.02  # the dose makes the noise real (measured ~0.045 px)
        # 3 plane terms fitted to 256 positions take a fraction 3/256 of the variance
        assert float(fit[f"{name}_rms"]) == pytest.approx(noise, rel=0.05)
        # and the fitted plane is the true drift to well below the noise
        assert np.sqrt(np.mean((fit[name].values - truth[name].values) ** 2)) < noise / 4


def test_fit_origin_aligns_a_dataarray_mask_by_dims():
    ds, px, py = _plane_ds(shape=(10, 12))
    qx = ds.qx0.values.copy()
    qx[:, 6:] += 5.0
    mask = np.zeros((10, 12), bool)
    mask[:, :6] = True
    spoiled = ds.assign(qx0=ds.qx0.copy(data=qx))
    transposed = xr.DataArray(mask.T, dims=("ry", "rx"))
    fit = fit_origin(spoiled, "plane", mask=transposed)
    np.testing.assert_allclose(fit.qx0, px, atol=1e-9)
    np.testing.assert_array_equal(fit.used, mask)
    with pytest.raises(ValueError, match=r"mask must be an \(rx, ry\) map .* got dims "
                                         r"\('scan', 'ry'\)"):
        fit_origin(spoiled, mask=xr.DataArray(mask, dims=("scan", "ry")))


def test_robust_fit_ignores_outliers():
    ds, px, py = _plane_ds(noise=0.05, seed=1)
    rng = np.random.default_rng(7)
    n = ds.qx0.size
    bad = rng.choice(n, size=int(0.05 * n), replace=False)
    qx, qy = ds.qx0.values.copy(), ds.qy0.values.copy()
    angle = rng.uniform(0, 2 * np.pi, bad.size)
    qx.flat[bad] += 10 * np.cos(angle)
    qy.flat[bad] += 10 * np.sin(angle)
    spoiled = ds.assign(qx0=ds.qx0.copy(data=qx), qy0=ds.qy0.copy(data=qy))
    plain = fit_origin(spoiled, "plane")
    robust = fit_origin(spoiled, "plane", robust=True)
    err_plain = max(np.abs(plain.qx0 - px).max(), np.abs(plain.qy0 - py).max())
    err_robust = max(np.abs(robust.qx0 - px).max(), np.abs(robust.qy0 - py).max())
    assert err_plain > 0.1
    assert err_robust < 0.05
    assert not robust.used.values.flat[bad].any()
    assert robust.used.sum() > 0.8 * n and robust.attrs["n_used"] == int(robust.used.sum())


@pytest.mark.parametrize("model", ["parabola", "bezier"])
def test_quadratic_models_recover_a_parabolic_field(model):
    i, j = np.meshgrid(np.arange(20.0), np.arange(24.0), indexing="ij")
    px = 30 + 0.1 * i - 0.05 * j + 0.01 * i**2 - 0.004 * i * j + 0.003 * j**2
    py = 31 - 0.02 * i + 0.08 * j - 0.002 * i**2 + 0.005 * j**2
    ds = xr.Dataset({"qx0": (("rx", "ry"), px), "qy0": (("rx", "ry"), py)})
    fit = fit_origin(ds, model)  # Bézier order 2 spans all quadratics
    np.testing.assert_allclose(fit.qx0, px, atol=1e-9)
    np.testing.assert_allclose(fit.qy0, py, atol=1e-9)
    assert float(fit.qx0_rms) < 1e-9
    if model == "parabola":
        np.testing.assert_allclose(fit.qx0_coefficients, [30, 0.1, -0.05, 0.01, -0.004, 0.003],
                                   atol=1e-9)
    else:
        assert fit.sizes["term"] == 9 and fit.attrs["bezier_order"] == [2, 2]
        # control values at the corners are the field's corner values
        np.testing.assert_allclose(fit.qx0_coefficients.sel(term="B0,0"), px[0, 0])
        np.testing.assert_allclose(fit.qx0_coefficients.sel(term="B2,2"), px[-1, -1])
    # a plane cannot follow the curvature
    assert float(fit_origin(ds, "plane").qx0_rms) > 0.1


def test_bezier_orders_and_the_cubic_field():
    i, j = np.meshgrid(np.arange(12.0), np.arange(10.0), indexing="ij")
    px = 10 + 0.001 * i**3 + 0.2 * j
    ds = xr.Dataset({"qx0": (("rx", "ry"), px), "qy0": (("rx", "ry"), 0 * px + 5)})
    fit = fit_origin(ds, "bezier", bezier_order=(3, 1))
    assert fit.sizes["term"] == 8
    np.testing.assert_allclose(fit.qx0, px, atol=1e-9)
    assert float(fit_origin(ds, "bezier", bezier_order=2).qx0_rms) > 1e-3


def test_fit_mask_selects_positions_and_nan_is_skipped():
    ds, px, py = _plane_ds(shape=(10, 12))
    qx = ds.qx0.values.copy()
    qx[:, 6:] += 5.0  # a region with another origin (e.g. a crystal), masked out
    qx[0, 0] = np.nan
    mask = np.zeros((10, 12), bool)
    mask[:, :6] = True
    fit = fit_origin(ds.assign(qx0=ds.qx0.copy(data=qx)), "plane",
                     mask=xr.DataArray(mask, dims=("rx", "ry")))
    np.testing.assert_allclose(fit.qx0, px, atol=1e-9)  # extrapolated over the whole scan
    expected_used = mask.copy()
    expected_used[0, 0] = False
    np.testing.assert_array_equal(fit.used, expected_used)
    assert np.isnan(fit.qx0_residual.values[0, 0])
    np.testing.assert_allclose(fit.qx0_residual.values[:, 6:], 5.0, atol=1e-9)


def test_fit_origin_bad_input():
    ds, _, _ = _plane_ds(shape=(6, 6))
    few = np.zeros((6, 6), bool)
    few[0, :2] = True
    with pytest.raises(ValueError, match="too few positions for the plane fit: 2 usable"):
        fit_origin(ds, mask=few)
    line = np.zeros((6, 6), bool)
    line[2, :] = True
    with pytest.raises(ValueError, match="do not determine the plane model"):
        fit_origin(ds, mask=line)
    with pytest.raises(ValueError, match="too few positions for the bezier fit: 36 usable"):
        fit_origin(ds, "bezier", bezier_order=6)
    with pytest.raises(ValueError, match="too few positions for the parabola fit: 0"):
        fit_origin(ds * np.nan, "parabola")
    with pytest.raises(ValueError, match="model must be one of"):
        fit_origin(ds, "cubic")
    with pytest.raises(TypeError, match="mask must be bool"):
        fit_origin(ds, mask=np.ones((6, 6)))
    with pytest.raises(ValueError, match=r"mask must have the scan shape \(rx, ry\) = \(6, 6\)"):
        fit_origin(ds, mask=np.ones((5, 6), bool))
    with pytest.raises(ValueError, match="origin_ds has no 'qy0'"):
        fit_origin(ds[["qx0"]])
    with pytest.raises(ValueError, match="must have dims"):
        fit_origin(ds.transpose("ry", "rx"))
    with pytest.raises(ValueError, match="must be in pixels"):
        fit_origin(ds.assign(qx0=ds.qx0.assign_attrs(units="1/Å")))
    with pytest.raises(TypeError, match="origin_ds must be an xarray.Dataset"):
        fit_origin(ds.qx0)
    with pytest.raises(ValueError, match="robust_k must be"):
        fit_origin(ds, robust=True, robust_k=0)
    with pytest.raises(ValueError, match="robust_steps must be"):
        fit_origin(ds, robust=True, robust_steps=-1)
    with pytest.raises(ValueError, match="bezier_order must be"):
        fit_origin(ds, "bezier", bezier_order=0)
    with pytest.raises(ValueError, match=r"bezier_order must be .* pair .*\(2, 2, 2\) "
                                         r"\(3 values\)"):
        fit_origin(ds, "bezier", bezier_order=(2, 2, 2))
    with pytest.raises(ValueError, match="bezier_order must be an integer >= 1"):
        fit_origin(ds, "bezier", bezier_order=(2, 1.5))
    with pytest.raises(ValueError, match="robust_k must be a number, got 'two'"):
        fit_origin(ds, robust=True, robust_k="two")
    with pytest.raises(ValueError, match="robust_steps must be a number, got None"):
        fit_origin(ds, robust=True, robust_steps=None)


# ----------------------------------------------------------------- apply_origin
def _bf_flatness(cube: xr.DataArray, shift: bool) -> float:
    det = s4.detectors.circle(cube, radius=3.5 * float(cube.qx[1] - cube.qx[0]))
    img = np.asarray(s4.virtual_image(cube, det, shift_center=shift, subpixel=shift).values)
    return float(img.std() / img.mean())


@pytest.mark.parametrize("chunks", [None, 4])
def test_measure_fit_apply_removes_the_drift_contrast(chunks):
    cube, truth = sim.crystal((16, 16), DET, origin=(31.0, 32.0), origin_drift=(0.2, 0.06,
                              -0.08, 0.18), q_pixel_size=0.01, dose=1000, seed=5, chunks=chunks)
    cube = cube.drop_vars(["qx0", "qy0"])
    measured = measure_origin(cube, "com")
    fit = fit_origin(measured, "plane", robust=True)
    applied = apply_origin(cube, fit)
    assert isinstance(applied.data, da.Array) == (chunks is not None)
    ox, oy = s4.get_origin(applied)
    np.testing.assert_allclose(ox, fit.qx0, atol=1e-9)
    assert np.abs(ox.values - truth.qx0.values).max() < 0.05  # the drift plane, recovered
    assert applied.qx.attrs["units"] == "1/Å"
    before, after = _bf_flatness(cube, False), _bf_flatness(applied, True)
    assert before > 0.05  # the beam drifts across the BF detector
    assert after < 0.2 * before  # measured 0.072 -> 0.0095 (shot noise 0.004)


def test_fit_and_apply_read_a_lazy_cube_once(clean, ChunkReads):
    """fit_origin / apply_origin compute the maps of a lazy measure_origin (and a mask
    made from its quality) together: each chunk is read once (it was once per map)."""
    cube, truth = clean
    lazy = cube.chunk({"rx": 8, "ry": 8})
    measured = measure_origin(cube)
    expect = fit_origin(measured)

    reads = ChunkReads(lazy)
    fit = fit_origin(measure_origin(reads.cube))
    assert reads.passes == 1
    xr.testing.assert_allclose(fit, expect, atol=1e-9)
    assert float(fit.qx0_rms) < 0.01 and _rms(fit, truth) < 0.01

    reads = ChunkReads(lazy)
    ds = measure_origin(reads.cube)
    keep = float(measured.quality.median())  # a mask made from the lazy result itself
    fit = fit_origin(ds, mask=ds.quality > keep)
    assert reads.passes == 1 and 0 < fit.attrs["n_used"] < 256
    xr.testing.assert_allclose(
        fit, fit_origin(measured, mask=measured.quality > keep), atol=1e-9)

    reads = ChunkReads(lazy)
    applied = apply_origin(reads.cube, measure_origin(reads.cube))
    assert reads.passes == 1 and isinstance(applied.data, da.Array)  # the data untouched
    ox, oy = s4.get_origin(applied)
    ex, ey = s4.get_origin(apply_origin(cube, measured))
    np.testing.assert_allclose(ox, ex, atol=1e-9)
    np.testing.assert_allclose(oy, ey, atol=1e-9)


def test_apply_origin_accepts_a_pair_and_keeps_calibration(clean):
    cube, truth = clean
    out = apply_origin(cube, (truth.qx0.values, truth.qy0))
    ox, oy = s4.get_origin(out)
    np.testing.assert_allclose(ox, truth.qx0)
    np.testing.assert_allclose(oy, truth.qy0)
    assert float(out.qx.sel(qx=0, method="nearest")) == pytest.approx(0, abs=0.6)
    same = apply_origin(cube, (31.2, 32.7))  # one origin for all positions
    assert "qx0" not in same.coords and s4.get_origin(same)[0] == pytest.approx(31.2)
    np.testing.assert_array_equal(out.values, cube.values)


def test_origin_module_and_getter_are_distinct(clean):
    import stem4d.origin

    cube, truth = clean
    ox, oy = s4.get_origin(apply_origin(cube, (truth.qx0, truth.qy0)))
    np.testing.assert_allclose(oy, truth.qy0)
    assert stem4d.origin.measure_origin is measure_origin


def test_apply_origin_bad_input(clean):
    cube, truth = clean
    nan = truth.qx0.values.copy()
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="qx0 has 1 NaN/inf value.*fit_origin"):
        apply_origin(cube, (nan, truth.qy0.values))
    with pytest.raises(ValueError, match=r"qy0 must have the scan shape \(rx, ry\) = \(16, 16\)"):
        apply_origin(cube, (truth.qx0.values, np.zeros((4, 4))))
    with pytest.raises(ValueError, match="must be in pixels"):
        apply_origin(cube, truth[["qx0", "qy0"]].assign(qx0=truth.qx0.assign_attrs(units="mrad")))
    with pytest.raises(ValueError, match="origin has no 'qy0'"):
        apply_origin(cube, truth[["qx0"]])
    with pytest.raises(TypeError, match="origin must be a Dataset"):
        apply_origin(cube, truth.qx0)
    with pytest.raises(ValueError, match="qx0 must have dims"):
        apply_origin(cube, (truth.qx0.transpose(), truth.qy0))


# ----------------------------------------------------------------- plots
def test_show_origin_returns_figures():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stem4d.plot.origin import show_origin

    ds, _, _ = _plane_ds(shape=(8, 9), noise=0.05)
    fig = show_origin(ds)
    assert len([a for a in fig.axes if a.get_title()]) == 2
    mask = np.ones((8, 9), bool)
    mask[0, 0] = False
    fit = fit_origin(ds, mask=mask)
    fig2 = show_origin(ds, fit)
    titles = [a.get_title() for a in fig2.axes if a.get_title()]
    assert len(titles) == 6 and any("residual (RMS" in t for t in titles)
    fig3 = show_origin(fit)  # a fit alone shows everything
    assert len([a for a in fig3.axes if a.get_title()]) == 6
    with pytest.raises(TypeError, match="origin_ds must be a Dataset"):
        show_origin(ds.qx0)
    plt.close("all")
