"""Probes, disk measurement and correlation kernels against known answers."""

from __future__ import annotations

import dask.array as da
import matplotlib
import numpy as np
import pytest
import xarray as xr

import stem4d as s4
from stem4d import _kernels
from stem4d import probe as P
from stem4d.simulate import crystal, probe_disk

matplotlib.use("Agg")

PIXEL_VAR = 1.0 / 12.0  # the simulator integrates over the pixel: s^2 = edge^2 + 1/12


def r50(radius: float, edge_width: float) -> float:
    """Half-height radius of a stem4d.simulate disk (its erfc profile)."""
    return float(np.sqrt(radius**2 - edge_width**2 - PIXEL_VAR))


def circular_com(values: np.ndarray) -> tuple[float, float]:
    """Centre of mass with wrap-around (pixels, within +-n/2)."""
    w = np.asarray(values, dtype=float)
    out = []
    for axis, n in enumerate(w.shape):
        phase = np.exp(2j * np.pi * np.arange(n) / n)
        proj = w.sum(axis=1 - axis)
        out.append(float(np.angle(proj @ phase) * n / (2 * np.pi)))
    return out[0], out[1]


@pytest.fixture(scope="module")
def drifting_vacuum() -> tuple[xr.DataArray, xr.Dataset]:
    """A vacuum scan (central disk only) whose beam drifts by up to ~+-3 pixels."""
    return crystal((10, 10), (64, 64), disk_radius=8.0, edge_width=0.5, q_max=1.0,
                   origin_drift=(0.5, 0.2, -0.3, 0.4), q_pixel_size=0.02)


# ------------------------------------------------------------------ synthetic probe
def test_synthetic_probe_profile_and_grid():
    p = P.synthetic_probe((40, 50), 6.0, 0.8, center=(17.3, 22.6))
    ix, iy = np.meshgrid(np.arange(40) - 17.3, np.arange(50) - 22.6, indexing="ij")
    expect = 1 / (1 + np.exp((np.hypot(ix, iy) - 6.0) / 0.8))
    np.testing.assert_allclose(p.values, expect, rtol=1e-6, atol=1e-7)
    assert p.dims == ("qx", "qy") and p.dtype == np.float32
    np.testing.assert_allclose(p.qx.values, np.arange(40) - 17.3)  # zero at the centre
    # default centre: detector centre for a shape
    q = P.synthetic_probe((41, 41), 5.0, 0.5)
    assert np.unravel_index(int(np.argmax(q.values)), q.shape) == (20, 20)


def test_synthetic_probe_on_cube_grid_is_centred_on_origin(drifting_vacuum):
    cube, _ = drifting_vacuum
    p = P.synthetic_probe(cube, 8.0, 0.5)
    np.testing.assert_array_equal(p.qx.values, cube.qx.values)
    assert p.qx.attrs["units"] == "1/Å"
    m = P.measure_disk(p)
    ox, oy = s4.get_origin(cube)
    assert abs(float(m.qx0) - float(ox.mean())) < 0.01
    assert abs(float(m.qy0) - float(oy.mean())) < 0.01
    assert abs(float(m.qx0_q)) < 0.01 * 0.02 and abs(float(m.qy0_q)) < 0.01 * 0.02


# ------------------------------------------------------------------ measure_disk
@pytest.mark.parametrize("radius,width,center", [
    (8.0, 0.5, (30.3, 33.6)), (5.5, 1.0, (20.7, 41.2)), (14.2, 2.0, (33.9, 29.45)),
    (11.0, 0.3, (27.15, 36.8))])
def test_measure_disk_logistic_is_exact_50_percent_radius(radius, width, center):
    m = P.measure_disk(P.synthetic_probe((64, 64), radius, width, center=center))
    assert abs(float(m.radius) - radius) < 0.06
    assert abs(float(m.qx0) - center[0]) < 0.02
    assert abs(float(m.qy0) - center[1]) < 0.02
    assert abs(float(m.threshold) - 0.5) < 0.05
    # the bilinear area estimate adds ~0.3 px of blur: sharp edges read a bit wide
    assert abs(float(m.edge_width) - width) < 0.1 * width + 0.12
    assert m.radius.attrs["units"] == "pixels" and "radius_q" not in m


@pytest.mark.parametrize("radius,edge,center", [
    (8.0, 0.5, (31.2, 30.6)), (6.0, 0.0, (28.45, 35.1)), (12.5, 1.0, (33.3, 29.8))])
def test_measure_disk_erf_edge_bias(radius, edge, center):
    """For an erf edge the sweep returns sqrt(r^2 - s^2), the half-height radius."""
    img = probe_disk((64, 64), radius, center=center, edge_width=edge)
    m = P.measure_disk(img)
    assert abs(float(m.radius) - r50(radius, edge)) < 0.08
    assert abs(float(m.radius) - radius) < 0.2
    assert abs(float(m.qx0) - center[0]) < 0.02
    assert abs(float(m.qy0) - center[1]) < 0.02
    s = np.sqrt(edge**2 + PIXEL_VAR)
    assert abs(float(m.edge_width) - 0.674 * s) < 0.15


def test_measure_disk_calibrated_and_numpy_and_dask():
    img = probe_disk((48, 52), 7.0, center=(22.4, 27.1), edge_width=0.5)
    cal = s4.set_origin(s4.set_q_calibration(img, 0.05, "mrad"), 24.0, 26.0)
    m = P.measure_disk(cal)
    assert m.radius_q.attrs["units"] == "mrad"
    np.testing.assert_allclose(float(m.radius_q), float(m.radius) * 0.05, rtol=1e-12)
    np.testing.assert_allclose(float(m.qx0_q), (float(m.qx0) - 24.0) * 0.05, atol=1e-12)
    np.testing.assert_allclose(float(m.qy0_q), (float(m.qy0) - 26.0) * 0.05, atol=1e-12)
    m_np = P.measure_disk(img.values)
    m_da = P.measure_disk(img.copy(data=da.from_array(img.values, chunks=16)))
    for name in ("radius", "qx0", "qy0"):
        assert float(m_np[name]) == pytest.approx(float(m[name]), abs=1e-12)
        assert float(m_da[name]) == pytest.approx(float(m[name]), abs=1e-12)


def test_measure_disk_ignores_hot_pixel_and_other_disks():
    img = probe_disk((64, 64), 7.0, center=(30.2, 31.7), edge_width=0.5).values.copy()
    img += 0.4 * probe_disk((64, 64), 7.0, center=(30.2, 52.0), edge_width=0.5).values
    img[5, 5] = 50.0  # hot pixel, 50 x the disk
    m = P.measure_disk(img)
    assert abs(float(m.radius) - r50(7.0, 0.5)) < 0.08
    assert abs(float(m.qx0) - 30.2) < 0.02 and abs(float(m.qy0) - 31.7) < 0.02


@pytest.mark.parametrize("radius,edge", [(8.0, 0.5), (12.0, 1.5), (5.0, 1.0)])
def test_measure_disk_centre_on_a_sloped_background(radius, edge):
    """A background rising by 0.2 % (rows) and 0.1 % (columns) of the disk per pixel:
    the centre's background plane is fitted around the disk, so the slope does not pull
    the centre (a constant background gave 0.10, 0.28 and 0.11 px here)."""
    center = (40.3, 37.8)
    ii, jj = np.mgrid[:80, :80]
    img = (probe_disk((80, 80), radius, center=center, edge_width=edge).values
           + 0.15 + 0.002 * (ii - 40) + 0.001 * (jj - 40))  # 0.03 to 0.27
    m = P.measure_disk(img)
    assert abs(float(m.qx0) - center[0]) < 0.005 and abs(float(m.qy0) - center[1]) < 0.005
    # with Poisson noise (200 counts per unit), the mean over 12 images: bias < 0.02 px
    rng = np.random.default_rng(0)
    err = np.array([[float(d.qx0) - center[0], float(d.qy0) - center[1]] for d in (
        P.measure_disk(rng.poisson(img * 200) / 200.0) for _ in range(12))])
    assert np.hypot(*err.mean(axis=0)) < 0.025  # measured 0.003-0.011


def test_measure_disk_warns_for_a_disk_cut_by_the_detector_edge():
    import warnings

    with pytest.warns(UserWarning, match="at or over the detector edge.*biased"):
        m = P.measure_disk(probe_disk((64, 64), 8.0, center=(3.0, 32.0), edge_width=0.5))
    assert float(m.qx0) > 4.0  # the cut disk's centre: biased inwards, as warned
    # a disk whose lowest thresholds touch the edge, but not all: no warning, right answer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = P.measure_disk(probe_disk((64, 64), 8.0, center=(8.5, 32.0), edge_width=0.5))
    assert abs(float(m.qx0) - 8.5) < 0.02 and abs(float(m.qy0) - 32.0) < 0.02


def test_probe_size_on_crystal_mean_pattern_numpy_and_dask():
    cube, truth = crystal((6, 6), (64, 64), disk_radius=6.0, edge_width=0.5,
                          origin=(31.3, 32.6), q_pixel_size=0.02)
    m = P.probe_size(cube)
    assert abs(float(m.radius) - r50(6.0, 0.5)) < 0.08
    assert abs(float(m.qx0) - 31.3) < 0.02 and abs(float(m.qy0) - 32.6) < 0.02
    assert m.radius_q.attrs["units"] == "1/Å"
    lazy = cube.copy(data=da.from_array(cube.values, chunks=(2, 3, 64, 64)))
    m_lazy = P.probe_size(lazy)
    assert float(m_lazy.radius) == pytest.approx(float(m.radius), abs=1e-4)
    assert float(m_lazy.qx0) == pytest.approx(float(m.qx0), abs=1e-4)


def test_probe_size_shift_center_sharpens_drifting_disk(drifting_vacuum):
    cube, _ = drifting_vacuum
    plain = P.probe_size(cube)
    lazy = cube.copy(data=da.from_array(cube.values, chunks=(5, 5, 64, 64)))
    shifted = P.probe_size(lazy, shift_center=True)
    assert abs(float(shifted.radius) - r50(8.0, 0.5)) < 0.08
    assert float(shifted.edge_width) < 0.6 < float(plain.edge_width)


# ------------------------------------------------------------------ vacuum probes
def _noisy_stack(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    shifts = rng.uniform(-0.3, 0.3, (n, 2))
    center = np.array([30.6, 33.2])
    clean = np.stack([probe_disk((64, 64), 8.0, center=center + s, edge_width=0.5).values
                      for s in shifts])
    stack = rng.poisson(200.0 * clean + 2.0).astype("float32")
    stack[:, 4, 6] = 5000.0  # a hot pixel in every frame
    return stack, center


def test_vacuum_probe_from_shifted_noisy_stack():
    stack, center = _noisy_stack()
    p = P.vacuum_probe(stack)  # threshold 0.2, expansion 12, opening 3
    assert p.dims == ("qx", "qy") and p.attrs["n_patterns"] == stack.shape[0]
    mean = stack.mean(0)
    ix, iy = np.meshgrid(np.arange(64) - center[0], np.arange(64) - center[1], indexing="ij")
    rho = np.hypot(ix, iy)
    inside = rho < 8.0 + 12 - 1.5
    np.testing.assert_allclose(p.values[inside], mean[inside], rtol=1e-6)
    assert np.all(p.values[rho > 8.0 + 12 + 1.5] == 0)
    assert p.values[4, 6] == 0  # hot pixel opened away, not expanded into a blob
    m = P.measure_disk(p)
    assert abs(float(m.radius) - r50(8.0, 0.5)) < 0.15
    assert abs(float(m.qx0) - center[0]) < 0.05 and abs(float(m.qy0) - center[1]) < 0.05
    # without the opening the hot pixel is kept together with a 12-pixel halo
    kept = P.vacuum_probe(stack, opening=0)
    assert kept.values[4, 6] > 1000 and kept.values[10, 6] != 0


def test_vacuum_probe_inputs_agree_and_mask_multiplies():
    stack, _ = _noisy_stack(8)
    ref = P.vacuum_probe(stack)
    arr = xr.DataArray(stack, dims=("scan", "qx", "qy"))
    lazy = xr.DataArray(da.from_array(stack, chunks=(3, 64, 64)), dims=("scan", "qx", "qy"))
    for other in (P.vacuum_probe(arr), P.vacuum_probe(lazy), P.vacuum_probe(da.from_array(stack))):
        np.testing.assert_allclose(other.values, ref.values, rtol=1e-6)
    single = P.vacuum_probe(stack[0])
    assert single.attrs["n_patterns"] == 1
    mask = np.ones((64, 64), bool)
    mask[:, :30] = False
    masked = P.vacuum_probe(stack, mask=mask)
    assert np.all(masked.values[:, :30] == 0) and masked.values[30, 40] > 0


def test_probe_from_cube_alignment_sharpens(drifting_vacuum):
    cube, truth = drifting_vacuum
    plain = P.probe_from_cube(cube, align=False)
    aligned = P.probe_from_cube(cube)
    assert aligned.attrs["aligned"] == 1 and aligned.attrs["n_patterns"] == 100
    np.testing.assert_array_equal(aligned.qx.values, cube.qx.values)
    assert "qx0" not in aligned.coords and "beam_energy" in aligned.coords
    mp, ma = P.measure_disk(plain), P.measure_disk(aligned)
    assert abs(float(ma.radius) - r50(8.0, 0.5)) < 0.05
    assert abs(float(ma.radius) - 8.0) < 0.1
    single = P.measure_disk(probe_disk((64, 64), 8.0, edge_width=0.5))
    assert float(ma.edge_width) < 1.1 * float(single.edge_width)
    assert float(mp.edge_width) > 2 * float(ma.edge_width)
    # the aligned probe sits at the mean beam position
    assert abs(float(ma.qx0) - float(truth.qx0.mean())) < 0.02
    assert abs(float(ma.qy0) - float(truth.qy0.mean())) < 0.02
    offsets = np.hypot(truth.qx0 - truth.qx0.mean(), truth.qy0 - truth.qy0.mean())
    assert aligned.attrs["shift_rms"] == pytest.approx(
        float(np.sqrt((offsets**2).mean())), abs=0.01)


def test_probe_from_cube_roi_forms_and_dask(drifting_vacuum):
    cube, _ = drifting_vacuum
    sel = np.zeros((10, 10), bool)
    sel[2:5, 3:8] = True
    a = P.probe_from_cube(cube, roi=sel)
    b = P.probe_from_cube(cube, roi=(slice(2, 5), range(3, 8)))
    c = P.probe_from_cube(cube, roi=(2, 5, 3, 8))
    d = P.probe_from_cube(cube, roi=xr.DataArray(sel, dims=("rx", "ry")))
    for other in (b, c, d):
        np.testing.assert_allclose(other.values, a.values, rtol=1e-6)
    assert a.attrs["n_patterns"] == 15
    lazy_cube, _ = crystal((10, 10), (64, 64), disk_radius=8.0, edge_width=0.5, q_max=1.0,
                           origin_drift=(0.5, 0.2, -0.3, 0.4), q_pixel_size=0.02, chunks=3)
    assert isinstance(lazy_cube.data, da.Array)
    lazy = P.probe_from_cube(lazy_cube, roi=sel)
    np.testing.assert_allclose(lazy.values, a.values, rtol=1e-5, atol=1e-6)
    one = P.probe_from_cube(cube, roi=(slice(4, 5), slice(4, 5)))
    np.testing.assert_allclose(one.values, cube.values[4, 4], rtol=1e-6)


def test_probe_from_cube_whole_dask_cube_runs_chunk_by_chunk(drifting_vacuum):
    """roi=None on a dask cube: every task handles one scan chunk, none the whole cube."""
    from dask.callbacks import Callback

    cube, _ = drifting_vacuum
    lazy = cube.chunk({"rx": 3, "ry": 4})
    largest = []

    class Sizes(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            largest.append(getattr(result, "nbytes", 0))

    with Sizes():
        got = P.probe_from_cube(lazy)
    expect = P.probe_from_cube(cube)
    np.testing.assert_allclose(got.values, expect.values, rtol=1e-5, atol=1e-6)
    assert got.attrs["shift_rms"] == pytest.approx(expect.attrs["shift_rms"], abs=1e-6)
    assert got.attrs["n_patterns"] == 100 and got.attrs["threshold"] == 0.2
    assert max(largest) <= 3 * 4 * 64 * 64 * 4  # one float32 scan chunk at most
    assert max(largest) < cube.nbytes / 5


def test_probe_from_cube_reads_a_lazy_cube_twice_when_aligning(drifting_vacuum, ChunkReads):
    """Two passes with alignment (reference, then alignment; it was three), one without;
    the numbers are those of the numpy cube."""
    cube, truth = drifting_vacuum
    lazy = cube.chunk({"rx": 5, "ry": 5})
    for align, passes in ((True, 2), (False, 1)):
        reads = ChunkReads(lazy)
        got = P.probe_from_cube(reads.cube, align=align)
        assert reads.passes == passes, align
        expect = P.probe_from_cube(cube, align=align)
        np.testing.assert_allclose(got.values, expect.values, rtol=1e-5, atol=1e-6)
        assert got.attrs["shift_rms"] == pytest.approx(expect.attrs["shift_rms"], abs=1e-6)
    # the alignment against the centroid-aligned reference recovers the drift
    offsets = np.hypot(truth.qx0 - truth.qx0.mean(), truth.qy0 - truth.qy0.mean())
    assert got.attrs["aligned"] == 0 and expect.attrs["n_patterns"] == 100
    aligned = P.probe_from_cube(cube)
    assert aligned.attrs["shift_rms"] == pytest.approx(
        float(np.sqrt((offsets**2).mean())), abs=1e-3)  # measured 2e-6
    m = P.measure_disk(aligned)
    assert abs(float(m.qx0) - float(truth.qx0.mean())) < 1e-3
    assert abs(float(m.qy0) - float(truth.qy0.mean())) < 1e-3


def test_measure_disk_flux_radius_is_the_unblurred_radius():
    """A Gaussian blur s pulls the 50 % contour in by ~s^2 / 2r; the flux radius stays."""
    for radius, edge in ((9.3, 1.2), (12.0, 2.0)):
        img = probe_disk((64, 64), radius, center=(31.4, 32.2), edge_width=edge)
        m = P.measure_disk(img)
        assert abs(float(m.radius_flux) / radius - 1) < 0.002  # measured 0.07 %, 0.09 %
        assert float(m.radius) / radius - 1 < -0.005  # measured -0.9 % and -1.5 %
        assert m.radius_flux.attrs["units"] == "pixels"
        assert m.attrs["plateau"] > m.attrs["background"]


def test_numeric_parameters_name_the_argument():
    probe = probe_disk((32, 32), 5.0, edge_width=0.5)
    cube, _ = crystal((4, 4), (32, 32), disk_radius=5.0, q_max=1.0)
    with pytest.raises(ValueError, match="radius must be a number, got 'big'"):
        P.synthetic_probe((32, 32), "big", 0.5)
    with pytest.raises(ValueError, match="width must be a number, got None"):
        P.synthetic_probe((32, 32), 5.0, None)
    with pytest.raises(ValueError, match="sigma must be a number, got 'wide'"):
        P.kernel(probe, "gaussian", sigma="wide")
    with pytest.raises(ValueError, match=r"radii\[1\] must be a number"):
        P.kernel(probe, "sigmoid", radii=(4, "x"))
    with pytest.raises(ValueError, match=r"roi\[1\] must be a number, got 'end'"):
        P.probe_from_cube(cube, roi=(0, "end", 0, 2))
    with pytest.raises(ValueError, match=r"roi\[2\] must be a whole scan index, got 1.5"):
        P.probe_from_cube(cube, roi=(0, 2, 1.5, 3))
    with pytest.raises(ValueError, match="threshold must be a number"):
        P.vacuum_probe(probe, threshold="high")
    with pytest.raises(ValueError, match="expansion must be a number, got 'wide'"):
        P.vacuum_probe(probe, expansion="wide")
    with pytest.raises(ValueError, match="thresh_upper must be a number, got 'top'"):
        P.measure_disk(probe, thresh_upper="top")
    with pytest.raises(ValueError, match="n must be a number, got 'many'"):
        P.measure_disk(probe, n="many")


def test_xcorr_shifts_known_answer():
    rng = np.random.default_rng(3)
    shifts = rng.uniform(-3, 3, (20, 2))
    c0 = np.array([31.2, 30.7])
    stack = np.stack([probe_disk((64, 60), 8.0, center=c0 + s, edge_width=0.5).values
                      for s in shifts])
    ref = probe_disk((64, 60), 8.0, center=c0, edge_width=0.5).values
    found, _ = _kernels.xcorr_peaks(stack, _kernels.reference_spectrum(ref))
    assert np.abs(found - shifts).max() < 0.01
    # one batched implementation serves both probe alignment and origin measurement
    coarse, _ = _kernels.xcorr_peaks(stack, _kernels.reference_spectrum(ref), upsample=1)
    assert np.abs(coarse - shifts).max() < 0.2


# ------------------------------------------------------------------ kernels
@pytest.fixture(scope="module")
def off_centre_probe() -> xr.DataArray:
    return probe_disk((64, 60), 7.0, center=(20.3, 37.8), edge_width=0.7)


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("given", [False, True])
def test_flat_kernel_sums_to_one_and_is_centred_on_corner(off_centre_probe, bilinear, given):
    origin = (20.3, 37.8) if given else None
    k = P.kernel(off_centre_probe, "flat", origin=origin, bilinear=bilinear)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-5)
    cx, cy = circular_com(k.values)
    assert abs(cx) < 0.01 and abs(cy) < 0.01
    assert k.attrs["kernel"] == "flat" and k.attrs["centered_at"] == "corner"
    np.testing.assert_array_equal(k.qx.values, off_centre_probe.qx.values)
    if given:
        assert k.attrs["origin"] == [20.3, 37.8]


@pytest.mark.parametrize("mode,kw", [("gaussian", {"sigma": 4.0}),
                                     ("sigmoid", {"radii": (8.0, 12.0)}),
                                     ("sigmoid_log", {"radii": (8.0, 12.0)})])
def test_edge_kernels_normalization_and_shape(off_centre_probe, mode, kw):
    flat = P.kernel(off_centre_probe, "flat")
    k = P.kernel(off_centre_probe, mode, **kw)
    assert abs(float(k.sum())) < 1e-5  # 0 after the subtraction
    soft = (flat - k).values.astype(float)  # what was subtracted: sums to 1 before
    assert soft.sum() == pytest.approx(1.0, abs=1e-5)
    assert soft.min() >= -1e-7
    # centred on [0, 0]: symmetric under p -> -p (mod n)
    mirrored = np.roll(soft[::-1, ::-1], (1, 1), axis=(0, 1))
    np.testing.assert_allclose(soft, mirrored, atol=1e-7)
    dx = np.fft.fftfreq(64) * 64
    dy = np.fft.fftfreq(60) * 60
    rho = np.hypot(dx[:, None], dy[None, :])
    if mode == "gaussian":
        expect = np.exp(-(rho**2) / 32.0)
        np.testing.assert_allclose(soft, expect / expect.sum(), atol=1e-7)
        return
    # py4DSTEM's shape: a soft disk, 1 inside r0, falling to exactly 0 at r1 and beyond
    inner = soft[rho <= 8.0]
    np.testing.assert_allclose(inner, inner.max(), rtol=1e-5)
    assert np.all(np.abs(soft[rho >= 12.0]) < 1e-9)
    mid = rho == 10.0  # mid-way: half the plateau (both profiles)
    assert mid.sum() >= 8
    np.testing.assert_allclose(soft[mid], 0.5 * inner.max(), rtol=1e-5)
    x = np.clip((rho - 8.0) / 4.0, 0, 1)
    if mode == "sigmoid":
        prof = np.cos(0.5 * np.pi * x) ** 2
    else:
        a, b = 1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-2.0))  # logistic at r1, at r0
        prof = (1 / (1 + np.exp(4.0 * x - 2.0)) - a) / (b - a)
        quarter = np.isclose(rho, 9.0)  # logistic, not sine-squared, at r0 + (r1 - r0)/4
        assert quarter.any()
        assert not np.allclose(soft[quarter] / inner.max(), np.cos(np.pi / 8) ** 2, rtol=1e-3)
    prof[rho >= 12.0] = 0
    np.testing.assert_allclose(soft, prof / prof.sum(), atol=1e-7)
    # the kernel: 0 beyond r1 (the probe, radius 7, is ~0 there), positive on the probe,
    # negative only in the annulus between the probe's edge and r1
    # (the Fourier shift to the corner rings at 1.4e-3 of the probe peak; bilinear is exact)
    kv = k.values.astype(float)
    tol = 2e-3 * float(flat.max())
    assert np.all(np.abs(kv[rho >= 12.0]) < tol)
    exact = P.kernel(off_centre_probe, mode, bilinear=True, **kw).values.astype(float)
    assert np.all(np.abs(exact[rho >= 12.0]) < 1e-9)
    for values in (kv, exact):
        assert np.all(values[rho <= 6.0] > 0)
        negative = values < -tol
        assert negative.sum() > 100
        assert rho[negative].min() > 6.0 and rho[negative].max() < 12.0


def test_kernel_on_dask_backed_probe(off_centre_probe):
    lazy = off_centre_probe.copy(data=da.from_array(off_centre_probe.values, chunks=20))
    k1 = P.kernel(lazy, "sigmoid", radii=(8, 12))
    k2 = P.kernel(off_centre_probe.values, "sigmoid", radii=(8, 12))
    np.testing.assert_allclose(k1.values, k2.values, atol=1e-7)


def test_kernel_from_aligned_vacuum_probe_is_centred(drifting_vacuum):
    cube, _ = drifting_vacuum
    k = P.kernel(P.probe_from_cube(cube, roi=(0, 4, 0, 4)), "flat")
    cx, cy = circular_com(k.values)
    assert abs(cx) < 0.01 and abs(cy) < 0.01


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call,exc,match", [
    (lambda p, c: P.kernel(c.values, "flat"), ValueError, "2-D .* got 4-D"),
    (lambda p, c: P.kernel(c, "flat"), ValueError, "datacube"),
    (lambda p, c: P.kernel(p.values[0], "flat"), ValueError, "2-D"),
    (lambda p, c: P.kernel(p, "edge"), ValueError, "mode must be one of"),
    (lambda p, c: P.kernel(p, "gaussian"), ValueError, "needs sigma"),
    (lambda p, c: P.kernel(p, "gaussian", sigma=-1), ValueError, "sigma must be positive"),
    (lambda p, c: P.kernel(p, "flat", sigma=2), ValueError, "only used by mode='gaussian'"),
    (lambda p, c: P.kernel(p, "sigmoid"), ValueError, "needs radii"),
    (lambda p, c: P.kernel(p, "sigmoid", radii=(12, 8)), ValueError, "0 <= r0 < r1"),
    (lambda p, c: P.kernel(p, "sigmoid_log", radii=(-1, 8)), ValueError, "0 <= r0 < r1"),
    (lambda p, c: P.kernel(p, "flat", origin=(1, np.nan)), ValueError, "origin must be"),
    (lambda p, c: P.kernel(p * 0 - 1, "flat", origin=(3, 3)), ValueError, "positive sum"),
    (lambda p, c: P.kernel(p.where(p.qx > 0), "flat"), ValueError, "NaN"),
    (lambda p, c: P.kernel(p.astype(complex), "flat"), TypeError, "real numbers"),
    (lambda p, c: P.measure_disk(p * 0), ValueError, "flat"),
    (lambda p, c: P.measure_disk(p, thresh_lower=0.9, thresh_upper=0.1), ValueError,
     "thresh_lower"),
    (lambda p, c: P.measure_disk(p, n=3), ValueError, "n must be"),
    (lambda p, c: P.measure_disk(xr.Dataset({"p": p})), TypeError, "Dataset"),
    (lambda p, c: P.synthetic_probe((32, 32), -2, 0.5), ValueError, "radius must be positive"),
    (lambda p, c: P.synthetic_probe((32, 32), 5, 0), ValueError, "width must be positive"),
    (lambda p, c: P.synthetic_probe((32, 32, 2), 5, 1), ValueError, "pair of positive ints"),
    (lambda p, c: P.synthetic_probe("abc", 5, 1), ValueError, "pair of positive ints"),
    (lambda p, c: P.synthetic_probe(p, 5, 1, center=(1,)), ValueError, "center must be"),
    (lambda p, c: P.vacuum_probe(c.values), ValueError, "4-D.*probe_from_cube"),
    (lambda p, c: P.vacuum_probe(p.values[0]), ValueError, "2-D vacuum image"),
    (lambda p, c: P.vacuum_probe(p.rename(qx="a")), ValueError, r"\(\.\.\., 'qx', 'qy'\)"),
    (lambda p, c: P.vacuum_probe(p, mask=np.ones((5, 5))), ValueError, "detector shape"),
    (lambda p, c: P.vacuum_probe(p, threshold=1.5), ValueError, "threshold"),
    (lambda p, c: P.vacuum_probe(p, expansion=-2), ValueError, "expansion"),
    (lambda p, c: P.vacuum_probe(p, opening=1.5), ValueError, "opening"),
    (lambda p, c: P.vacuum_probe(p, threshold=0.2, opening=40), ValueError, "mask is empty"),
    (lambda p, c: P.probe_from_cube(c.values), TypeError, "DataArray"),
    (lambda p, c: P.probe_from_cube(c, roi=np.zeros((4, 4), bool)), ValueError,
     "selects no scan"),
    (lambda p, c: P.probe_from_cube(c, roi=(slice(3, 3), slice(0, 2))), ValueError,
     "selects no scan"),
    (lambda p, c: P.probe_from_cube(c, roi=np.ones((3, 4), bool)), ValueError, "scan shape"),
    (lambda p, c: P.probe_from_cube(c, roi=np.ones((4, 4))), TypeError, "bool"),
    (lambda p, c: P.probe_from_cube(c, roi=(1, 2, 3)), TypeError, "roi must be"),
    (lambda p, c: P.probe_from_cube(c, roi=(1, slice(0, 2))), TypeError, "slice or range"),
    # a roi reaching past the 4 x 4 scan was clipped silently
    (lambda p, c: P.probe_from_cube(c, roi=(0, 40, 0, 40)), ValueError,
     r"roi = .*\(0, 40, 0, 40\).*scan shape \(rx, ry\) = \(4, 4\).*rx_max <= 4"),
    (lambda p, c: P.probe_from_cube(c, roi=(2, 1, 0, 2)), ValueError, "rx_min < rx_max"),
    (lambda p, c: P.probe_from_cube(c, roi=(-1, 2, 0, 2)), ValueError, "0 <= rx_min"),
    (lambda p, c: P.probe_from_cube(c, roi=(slice(0, 2), slice(0, 9))), ValueError,
     r"roi\[ry\] = slice\(0, 9, None\) reaches outside the scan: ry has 4 positions"),
    (lambda p, c: P.probe_from_cube(c, roi=(range(2, 5), slice(0, 2))), ValueError,
     r"roi\[rx\] = range\(2, 5\) reaches outside.*from 0 to 3"),
    (lambda p, c: P.probe_from_cube(c, mask=np.ones((32, 31))), ValueError, "detector shape"),
    (lambda p, c: P.probe_size(c.isel(rx=0)), ValueError, "dims"),
    (lambda p, c: P.probe_from_cube(c.where(c.rx > 0)), ValueError, "NaN"),
    (lambda p, c: P.vacuum_probe(p.where(p.qx > 0).expand_dims(scan=2)), ValueError, "NaN"),
])
def test_bad_input(call, exc, match):
    probe = probe_disk((32, 32), 5.0, edge_width=0.5)
    cube, _ = crystal((4, 4), (32, 32), disk_radius=5.0, q_max=1.0)
    with pytest.raises(exc, match=match):
        call(probe, cube)


# ------------------------------------------------------------------ plots
def test_plots_return_figures(off_centre_probe):
    import matplotlib.pyplot as plt

    from stem4d.plot import probe as pp

    disk = P.measure_disk(off_centre_probe)
    for fig in (pp.show_probe(off_centre_probe, disk=disk),
                pp.show_disk_measurement(off_centre_probe, disk),
                pp.show_kernel(P.kernel(off_centre_probe, "sigmoid", radii=(8, 12)))):
        assert fig.axes
        plt.close(fig)
