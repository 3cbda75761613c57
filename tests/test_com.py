"""Tests of stem4d.com (CoM, DPC, orientation, iDPC) and the phase-object simulator.

Everything is checked against stem4d.simulate.phase_object, whose truth holds the object
phase, the exact centre of mass of every pattern and the scan-to-detector orientation.
"""

from __future__ import annotations

import functools
import warnings

import dask.array as da
import matplotlib
import numpy as np
import pytest
import xarray as xr

import stem4d
from stem4d.com import center_of_mass, dpc, find_orientation, idpc, integrate_com, rotate_com
from stem4d.orientation import get_orientation, set_orientation
from stem4d.simulate import crystal, phase_object

matplotlib.use("Agg")

CASES = [(a, f) for a in (23.0, 117.0, -150.0) for f in (False, True)]


@functools.cache
def simulated(rot_deg: float = 0.0, flip: bool = False, dose: float | None = None,
              shape: tuple[int, int] = (24, 24)):
    return phase_object(shape, (64, 64), scan_rotation=np.radians(rot_deg), scan_flip=flip,
                        dose=dose, seed=1)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def angle_error_deg(a: float, b: float) -> float:
    return abs(np.degrees((a - b + np.pi) % (2 * np.pi) - np.pi))


# ------------------------------------------------------------------ the simulator
def test_phase_object_patterns_and_truth():
    cube, truth = simulated(23.0, True)
    assert cube.dims == ("rx", "ry", "qx", "qy") and cube.shape == (24, 24, 64, 64)
    assert cube.dtype == np.float32
    np.testing.assert_allclose(cube.sum(("qx", "qy")).values, 1.0, rtol=1e-5)  # unit dose
    # q = 0 at detector pixel 32, 1/Å; aperture of 20 mrad spans 64 / 5 pixels
    assert stem4d.get_origin(cube) == pytest.approx((32.0, 32.0))
    dq = stem4d.q_pixel_size(cube)
    assert dq[2] == "1/Å"
    lam = stem4d.electron_wavelength(300e3)
    assert dq[0] == pytest.approx(20e-3 / lam / 12.8)
    assert float(cube.convergence_semiangle) == 20.0 and float(cube.beam_energy) == 300e3
    assert "scan_rotation" not in cube.coords  # the answer is in the truth only
    # the truth phase: positive atoms of the known potential
    sigma = stem4d.interaction_parameter(300e3)
    np.testing.assert_allclose(truth.atom_phase.values, sigma * truth.atom_potential.values)
    assert 0.5 * 800 <= float(truth.atom_potential.min()) <= float(
        truth.atom_potential.max()) <= 800.0  # default atoms weighted in [0.5, 1]
    assert float(truth.phase.min()) >= 0 and 0.3 < float(truth.phase.max()) < 0.6
    np.testing.assert_allclose(truth.scan_to_detector.values,
                               stem4d.simulate.scan_to_detector_matrix(np.radians(23), True))
    # the truth CoM is the CoM of the patterns (plain numpy), to 1e-4 of its range
    data = cube.values.astype(float)
    com_qx = np.einsum("abij,i->ab", data, cube.qx.values) / data.sum(axis=(2, 3))
    com_qy = np.einsum("abij,j->ab", data, cube.qy.values) / data.sum(axis=(2, 3))
    scale = float(np.abs(truth.com_qx).max())
    np.testing.assert_allclose(com_qx, truth.com_qx.values, atol=2e-4 * scale)
    np.testing.assert_allclose(com_qy, truth.com_qy.values, atol=2e-4 * scale)


def test_phase_object_orientation_moves_the_specimen():
    """The same specimen seen with Q = R(90°): the CoM components rotate with Q (up to
    the resampling of the object on the rotated grid, < 1e-4 of the CoM range)."""
    _, t0 = simulated(0.0, False)
    _, t90 = phase_object((24, 24), (64, 64), scan_rotation=np.pi / 2, seed=1)
    np.testing.assert_allclose(t0.phase.values, t90.phase.values)
    # Q (1, 0) = (0, 1): the scan-x component now appears along qy
    np.testing.assert_allclose(t90.com_qy.values, t0.com_qx.values, atol=2e-5)
    np.testing.assert_allclose(t90.com_qx.values, -t0.com_qy.values, atol=2e-5)


def test_phase_object_dose_and_chunks():
    eager, _ = phase_object((6, 5), (32, 32), dose=500.0, seed=4)
    lazy, _ = phase_object((6, 5), (32, 32), dose=500.0, seed=4, chunks=2)
    assert isinstance(lazy.data, da.Array) and lazy.data.chunks[0] == (2, 2, 2)
    np.testing.assert_array_equal(lazy.values, eager.values)
    values = eager.values
    assert np.all(values == np.round(values))
    assert abs(values.sum(axis=(2, 3)).mean() - 500.0) < 3 * np.sqrt(500.0 / 30)
    other, _ = phase_object((6, 5), (32, 32), dose=500.0, seed=5)
    assert not np.array_equal(other.values, values)


def test_phase_object_atoms_and_errors():
    cube, truth = phase_object((8, 8), (32, 32), atoms=[[1.4, 1.4]], atom_potential=400.0)
    assert truth.sizes["atom"] == 1
    peak = np.unravel_index(np.argmax(truth.phase.values), (8, 8))
    assert peak == (3, 3) or peak == (4, 4) or peak == (3, 4) or peak == (4, 3)
    with pytest.raises(ValueError, match=r"atoms must be an \(N, 2\) array"):
        phase_object((4, 4), (32, 32), atoms=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="atom_potential must be positive"):
        phase_object((4, 4), (32, 32), atom_potential=-1.0)
    with pytest.raises(ValueError, match="aperture .* does not fit"):
        phase_object((4, 4), (32, 32), q_pixel_size=0.01)
    with pytest.raises(ValueError, match="scan_shape must be a pair"):
        phase_object((4,), (32, 32))
    with pytest.raises(ValueError, match="beam_energy is in eV"):
        phase_object((4, 4), (32, 32), beam_energy=300)
    with pytest.raises(ValueError, match="dose must be positive"):
        phase_object((4, 4), (32, 32), dose=0)


# ------------------------------------------------------------------ centre of mass
def test_center_of_mass_matches_truth():
    cube, truth = simulated(117.0, True)
    com = center_of_mass(cube)
    assert set(com.data_vars) == {"com_qx", "com_qy", "com_magnitude", "intensity"}
    assert com.com_qx.dims == ("rx", "ry") and com.com_qx.attrs["units"] == "1/Å"
    scale = float(np.abs(truth.com_qx).max())
    np.testing.assert_allclose(com.com_qx.values, truth.com_qx.values, atol=2e-4 * scale)
    np.testing.assert_allclose(com.com_qy.values, truth.com_qy.values, atol=2e-4 * scale)
    np.testing.assert_allclose(com.com_magnitude.values,
                               np.hypot(truth.com_qx.values, truth.com_qy.values),
                               atol=3e-4 * scale)
    np.testing.assert_allclose(com.intensity.values, 1.0, rtol=1e-5)
    np.testing.assert_allclose(com.rx.values, cube.rx.values)
    assert float(com.beam_energy) == 300e3  # calibration coordinates are kept


def test_center_of_mass_mask_origin_and_dask():
    cube, _ = simulated(0.0, False)
    disk = stem4d.detectors.circle(cube, radius=0.8)
    com = center_of_mass(cube, mask=disk)
    data = cube.values.astype(float) * disk.values
    expect = np.einsum("abij,i->ab", data, cube.qx.values) / data.sum(axis=(2, 3))
    np.testing.assert_allclose(com.com_qx.values, expect, rtol=1e-4, atol=1e-7)
    # a per-position origin is subtracted (in q units)
    rng = np.random.default_rng(0)
    qx0 = 32 + rng.uniform(-1, 1, (24, 24))
    moved = stem4d.set_origin(cube, qx0, np.full((24, 24), 32.0))
    shifted = center_of_mass(moved)
    plain = center_of_mass(cube)
    dq = stem4d.q_pixel_size(cube)[0]
    np.testing.assert_allclose(shifted.com_qx.values,
                               plain.com_qx.values - (qx0 - 32) * dq, atol=1e-6)
    raw = center_of_mass(moved, origin_subtracted=False)
    np.testing.assert_allclose(raw.com_qx.values,
                               plain.com_qx.values - (qx0.mean() - 32) * dq, atol=1e-6)
    # dask in, lazy out, same numbers
    lazy = center_of_mass(cube.chunk({"rx": 8}), mask=disk)
    assert isinstance(lazy.com_qx.data, da.Array)
    np.testing.assert_allclose(lazy.com_qx.values, com.com_qx.values, rtol=1e-6)


def test_center_of_mass_dtype_with_a_per_position_origin():
    """float32 for integer and float32 data (the float64 origin coordinates do not
    promote it), float64 for float64 data; numpy and dask alike."""
    cube, _ = simulated(0.0, False)
    rng = np.random.default_rng(1)
    counts = (cube * (6e4 / float(cube.max()))).round()  # detector counts, < 2**16
    moved = stem4d.set_origin(counts, 32 + rng.uniform(-1, 1, (24, 24)),
                              32 + rng.uniform(-1, 1, (24, 24)))
    assert moved.coords["qx0"].dtype == np.float64
    expect = center_of_mass(moved.astype(np.float64))
    for dtype, want in ((np.uint16, np.float32), (np.int32, np.float32),
                        (np.float32, np.float32), (np.float64, np.float64)):
        for c in (moved.astype(dtype), moved.astype(dtype).chunk({"rx": 12})):
            com = center_of_mass(c)
            for var in ("com_qx", "com_qy", "com_magnitude", "intensity"):
                assert com[var].dtype == want, (dtype, var, com[var].dtype)
            scale = float(np.abs(expect.com_qx).max())
            np.testing.assert_allclose(com.com_qx.values, expect.com_qx.values,
                                       atol=1e-5 * scale)
            np.testing.assert_allclose(com.com_qy.values, expect.com_qy.values,
                                       atol=1e-5 * scale)


def test_chunk_reads_counts_one_pass_per_compute(ChunkReads):
    cube, _ = simulated(0.0, False)
    reads = ChunkReads(cube.chunk({"rx": 12, "ry": 12}))
    assert reads.chunks == 4 and reads.count == 0
    reads.cube.sum().compute()
    assert reads.count == 4 and reads.passes == 1
    reads.cube.mean("rx").compute()
    assert reads.passes == 2


def test_orientation_and_idpc_read_a_lazy_cube_once(ChunkReads):
    """find_orientation and integrate_com/idpc compute the lazy CoM maps together: each
    chunk is read once (it was read twice, once for com_qx and once for com_qy)."""
    cube, _ = simulated(23.0, True)
    cube = set_orientation(cube, np.radians(23.0), True)
    com = center_of_mass(cube)
    lazy = cube.chunk({"rx": 12, "ry": 12})

    reads = ChunkReads(lazy)
    res = find_orientation(center_of_mass(reads.cube))
    assert reads.passes == 1
    expect = find_orientation(com)
    assert bool(res.scan_flip) == bool(expect.scan_flip)
    assert float(res.scan_rotation) == pytest.approx(float(expect.scan_rotation), abs=1e-6)
    np.testing.assert_allclose(res.curl.values, expect.curl.values, rtol=1e-5)

    reads = ChunkReads(lazy)
    lazy_com = center_of_mass(reads.cube)
    assert isinstance(lazy_com.com_qx.data, da.Array) and reads.count == 0  # still lazy
    phase = integrate_com(lazy_com)
    assert reads.passes == 1
    np.testing.assert_allclose(phase.values, integrate_com(com).values, atol=1e-6)

    reads = ChunkReads(lazy)
    phase = idpc(center_of_mass(reads.cube), scan_rotation=0.4, scan_flip=False)
    assert reads.passes == 1
    np.testing.assert_allclose(
        phase.values, idpc(com, scan_rotation=0.4, scan_flip=False).values, atol=1e-6)


def test_center_of_mass_errors():
    cube, _ = simulated(0.0, False)
    with pytest.raises(ValueError, match=r"mask must have the detector shape \(64, 64\)"):
        center_of_mass(cube, mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="mask selects no detector pixel"):
        center_of_mass(cube, mask=np.zeros((64, 64)))
    with pytest.raises(ValueError, match="mask contains NaN"):
        center_of_mass(cube, mask=np.full((64, 64), np.nan))
    with pytest.raises(TypeError, match="cube must be an xarray.DataArray"):
        center_of_mass(cube.values)
    with pytest.raises(ValueError, match="cube must have dims"):
        center_of_mass(cube.transpose("qx", "qy", "rx", "ry"))
    other = stem4d.detectors.circle(stem4d.convert_q_units(cube, "mrad"), radius=5.0)
    with pytest.raises(ValueError, match="mask coordinates along qx .* do not match"):
        center_of_mass(cube, mask=other)
    with pytest.raises(TypeError, match="origin_subtracted must be a bool"):
        center_of_mass(cube, origin_subtracted="yes")


def test_dpc_quadrants():
    cube, truth = simulated(23.0, False)
    offset = -np.pi / 4 + 1e-3  # no pixel centre on a segment boundary
    out = dpc(cube, inner=0.0, outer=1.2, offset=offset)
    assert out.segment_images.dims == ("segment", "rx", "ry")
    qx, qy = np.meshgrid(cube.qx.values, cube.qy.values, indexing="ij")
    ring = np.hypot(qx, qy) <= 1.2
    angle = np.arctan2(qy, qx)
    data = cube.values.astype(float)

    def seg(lo):
        inside = ((angle - lo) % (2 * np.pi)) < np.pi / 2
        return np.einsum("abij,ij->ab", data, inside & ring)

    a, b, c, d = (seg(offset + s * np.pi / 2) for s in range(4))
    total = out.segment_images.sum("segment").values
    np.testing.assert_allclose(out.segment_images.isel(segment=0).values, a, rtol=1e-5)
    np.testing.assert_allclose(total, data[:, :, ring].sum(axis=-1), rtol=1e-5)
    eps = 1e-3  # segment centres at eps + k 90°: (A - C) cos eps - (B - D) sin eps
    np.testing.assert_allclose(
        out.dpc_qx.values, ((a - c) * np.cos(eps) - (b - d) * np.sin(eps)) / total,
        rtol=1e-4, atol=1e-7)
    # the DPC signal follows the centre of mass
    assert ncc(out.dpc_qx.values, truth.com_qx.values) > 0.95
    assert ncc(out.dpc_qy.values, truth.com_qy.values) > 0.95
    lazy = dpc(cube.chunk({"rx": 12}), segments=6)
    assert isinstance(lazy.dpc_qx.data, da.Array)
    np.testing.assert_allclose(lazy.dpc_qx.values, dpc(cube, segments=6).dpc_qx.values,
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="segments must be an integer >= 3"):
        dpc(cube, segments=2)
    with pytest.raises(ValueError, match="outer must be larger than inner"):
        dpc(cube, inner=0.5, outer=0.2)
    with pytest.raises(ValueError, match="inner must be a number, got 'zero'"):
        dpc(cube, inner="zero")
    with pytest.raises(ValueError, match="outer must be a number, got 'edge'"):
        dpc(cube, outer="edge")
    with pytest.raises(ValueError, match=r"segments \[.*\] contain no detector pixel: the "
                                         r"annulus inner=5, outer=6 \(1/Å\) around the "
                                         r"origin at pixel \(32\.0, 32\.0\)"):
        dpc(cube, inner=5.0, outer=6.0)
    bare = stem4d.datacube(cube.values)  # q = 0 is the first pixel: no origin
    with pytest.raises(ValueError, match=r"dpc .* needs the origin, but cube has no origin "
                                         r"set.*set_origin"):
        dpc(bare)


def test_dpc_follows_the_per_position_origin():
    """A drifting beam over vacuum: no deflection once the per-position origin is used."""
    cube, truth = crystal((8, 8), (48, 48), disk_radius=6.0, q_max=0.1, q_pixel_size=0.02,
                          origin_drift=(0.3, -0.1, 0.2, 0.25), seed=4)
    assert "qx0" in cube.coords  # the simulator sets the per-position origin
    follow = dpc(cube, outer=0.2)
    assert follow.attrs["follows_origin"] == 1
    assert float(np.abs(follow.dpc_qx).max()) < 0.01
    assert float(np.abs(follow.dpc_qy).max()) < 0.01
    fixed = dpc(cube.drop_vars(["qx0", "qy0"]), outer=0.2)  # the mean origin only
    assert fixed.attrs["follows_origin"] == 0
    assert ncc(fixed.dpc_qx.values, truth.qx0.values) > 0.99
    assert float(np.abs(fixed.dpc_qx).max()) > 0.1
    lazy = dpc(cube.chunk({"rx": 4}), outer=0.2)
    np.testing.assert_allclose(lazy.dpc_qx.values, follow.dpc_qx.values, atol=1e-6)


# ------------------------------------------------------------------ orientation
@pytest.mark.parametrize("rot_deg, flip", CASES)
def test_find_orientation_known_rotation_and_flip(rot_deg, flip):
    cube, _ = simulated(rot_deg, flip)
    res = find_orientation(center_of_mass(cube))
    rot, got_flip = get_orientation(res)
    assert got_flip is flip
    assert angle_error_deg(rot, np.radians(rot_deg)) < 0.1  # measured: 0.012°
    assert res.attrs["phase_skewness"] > 0.5
    assert res.attrs["flip_contrast"] > 3
    assert res.attrs["ambiguity_resolved_by"].startswith("phase_skewness")
    # the curve has its minimum at the answer for the right flip
    curve = res.curl.sel(flip=flip)
    best = float(curve.angle[int(np.argmin(curve.values))])
    assert angle_error_deg(2 * best, 2 * rot) < 2.0  # 1° grid, θ and θ + 180° equal


@pytest.mark.parametrize("rot_deg, flip", [(117.0, True), (-150.0, False)])
def test_find_orientation_contrast_unresolved_and_noise(rot_deg, flip):
    cube, _ = simulated(rot_deg, flip)
    com = center_of_mass(cube)
    res = find_orientation(com, method="contrast")
    rot, got_flip = get_orientation(res)
    assert got_flip is flip and angle_error_deg(rot, np.radians(rot_deg)) < 1.0
    free = find_orientation(com, resolve_ambiguity=False)
    rot_free = float(free.scan_rotation)
    assert -np.pi / 2 <= rot_free < np.pi / 2
    assert angle_error_deg(2 * rot_free, 2 * np.radians(rot_deg)) < 0.2
    assert free.attrs["ambiguity_resolved_by"].startswith("none")
    # forcing the wrong flip: no rotation removes the curl (its minimum is 7.6x that of
    # the right flip here) and the integrated phase is nearly symmetric, which is warned
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrong = find_orientation(com, flips=(not flip,))
    right = find_orientation(com, flips=(flip,))
    assert wrong.sizes["flip"] == 1 and right.sizes["flip"] == 1
    assert wrong.attrs["curl_min"][0] > 5 * right.attrs["curl_min"][0]
    assert float(wrong.curl.min()) > 5 * float(right.curl.min())
    assert abs(wrong.attrs["phase_skewness"]) < 0.05 < 1.0 < right.attrs["phase_skewness"]
    assert any("nearly symmetric" in str(w.message) for w in caught)
    assert angle_error_deg(float(right.scan_rotation), np.radians(rot_deg)) < 0.1
    with pytest.raises(ValueError, match="high_pass must be a number, got 'low'"):
        find_orientation(com, high_pass="low")
    # Poisson noise, 1e4 electrons per pattern
    noisy, _ = simulated(rot_deg, flip, dose=1e4)
    res = find_orientation(center_of_mass(noisy))
    assert bool(res.scan_flip) is flip
    assert angle_error_deg(float(res.scan_rotation), np.radians(rot_deg)) < 1.0


def test_find_orientation_on_dask_cube_and_errors():
    cube, _ = simulated(-150.0, True)
    res = find_orientation(cube.chunk({"rx": 6}))  # a cube: its CoM is computed
    assert bool(res.scan_flip) is True
    assert angle_error_deg(float(res.scan_rotation), np.radians(-150.0)) < 0.1
    com = center_of_mass(cube)
    with pytest.raises(ValueError, match="method must be one of"):
        find_orientation(com, method="divergence")
    with pytest.raises(ValueError, match="flips must be distinct bools"):
        find_orientation(com, flips=())
    with pytest.raises(ValueError, match="at least 3 x 3 scan positions"):
        find_orientation(com.isel(rx=slice(0, 2)))
    with pytest.raises(ValueError, match="NaN/inf centre-of-mass"):
        find_orientation(com.where(com.rx > 0.5))
    with pytest.raises(ValueError, match="has no 'com_qy' variable"):
        find_orientation(com.drop_vars("com_qy"))
    with pytest.raises(TypeError, match="com must be the Dataset"):
        find_orientation(np.zeros((4, 4)))
    flat = com.copy()
    flat["com_qx"] = xr.zeros_like(com.com_qx) + 0.01
    flat["com_qy"] = xr.zeros_like(com.com_qy) + 0.01 * (com.rx > 4)
    with pytest.warns(UserWarning, match="nearly symmetric"):
        find_orientation(flat)


# ------------------------------------------------------------------ integration
@pytest.mark.parametrize("rot_deg, flip", [(23.0, False), (-150.0, True)])
def test_integrate_com_recovers_the_phase(rot_deg, flip):
    cube, truth = simulated(rot_deg, flip)
    com = center_of_mass(set_orientation(cube, np.radians(rot_deg), flip))
    phase = integrate_com(com)  # orientation read from the coordinates
    assert phase.dims == ("rx", "ry") and phase.attrs["units"] == "rad"
    assert get_orientation(phase)[1] is flip
    assert abs(float(phase.mean())) < 1e-12
    assert ncc(phase.values, truth.phase.values) > 0.95  # measured 0.983
    assert ncc(phase.values, truth.phase_blurred.values) > 0.97  # measured 0.990
    # scaling: 2 pi CoM (1/Å) is the phase gradient (rad/Å)
    slope = np.polyfit(truth.phase_blurred.values.ravel(), phase.values.ravel(), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.05)
    # the found orientation gives the same phase; the alias too
    res = find_orientation(com)
    again = idpc(com, scan_rotation=float(res.scan_rotation), scan_flip=bool(res.scan_flip))
    np.testing.assert_allclose(again.values, phase.values, atol=0.01)
    # a 180° error negates the phase
    wrong = integrate_com(com, scan_rotation=np.radians(rot_deg) + np.pi, scan_flip=flip)
    np.testing.assert_allclose(wrong.values, -phase.values, atol=1e-9)


def test_integrate_com_mrad_and_dask():
    cube, truth = simulated(117.0, True)
    cube = set_orientation(cube, np.radians(117.0), True)
    phase = integrate_com(center_of_mass(cube))
    mrad = stem4d.convert_q_units(cube, "mrad")
    lazy = center_of_mass(mrad.chunk({"rx": 5}))
    assert lazy.com_qx.attrs["units"] == "mrad" and isinstance(lazy.com_qx.data, da.Array)
    np.testing.assert_allclose(integrate_com(lazy).values, phase.values, atol=1e-5)
    rotated = rotate_com(lazy)
    expect = np.einsum("ji,jab->iab", truth.scan_to_detector.values,
                       np.stack([truth.com_qx.values, truth.com_qy.values]))
    lam_mrad = 1000 * float(truth.wavelength)
    np.testing.assert_allclose(rotated.com_rx.values / lam_mrad, expect[0], atol=2e-5)
    np.testing.assert_allclose(rotated.com_ry.values / lam_mrad, expect[1], atol=2e-5)


def test_integrate_com_errors():
    cube, _ = simulated(0.0, False)
    com = center_of_mass(cube)
    with pytest.raises(ValueError, match="no \\['scan_rotation', 'scan_flip'\\] coordinate"):
        integrate_com(com)
    with pytest.raises(ValueError, match="give both scan_rotation"):
        integrate_com(com, scan_rotation=0.1)
    pixels = center_of_mass(stem4d.convert_q_units(cube, "pixels"))
    with pytest.raises(ValueError, match="needs it in 1/Å or mrad, got units 'pixels'"):
        integrate_com(pixels, scan_rotation=0.0, scan_flip=False)
    scan_px = center_of_mass(stem4d.set_r_calibration(cube, 1.0, "pixels"))
    with pytest.raises(ValueError, match="scan step in Å"):
        integrate_com(scan_px, scan_rotation=0.0, scan_flip=False)
    no_energy = center_of_mass(stem4d.convert_q_units(cube, "mrad")).drop_vars("beam_energy")
    with pytest.raises(ValueError, match="needs the beam energy"):
        integrate_com(no_energy, scan_rotation=0.0, scan_flip=False)
    with pytest.raises(ValueError, match="high_pass must be >= 0"):
        integrate_com(com, scan_rotation=0.0, scan_flip=False, high_pass=-1.0)


# ------------------------------------------------------------------ plots
def test_plots_return_figures():
    from stem4d.plot.com import show_com, show_orientation

    cube, _ = simulated(23.0, True)
    com = center_of_mass(cube)
    res = find_orientation(com)
    phase = integrate_com(com, scan_rotation=float(res.scan_rotation),
                          scan_flip=bool(res.scan_flip))
    fig = show_com(com, phase)
    assert len(fig.axes) == 8  # four maps and their colour bars
    assert "iDPC phase" in fig.axes[3].get_title()
    fig2 = show_orientation(res)
    lines = fig2.axes[0].get_lines()
    assert len(lines) >= 2
    assert "scan_flip True" in fig2.axes[0].get_title()
    fig3 = show_com(rotate_com(com, scan_rotation=0.4, scan_flip=False))
    assert "com_rx" in fig3.axes[0].get_title()
    fig4 = show_com(dpc(cube, outer=1.2))  # the DPC signals, magnitude computed
    assert len(fig4.axes) == 6 and "dpc_qx" in fig4.axes[0].get_title()
    with pytest.raises(ValueError, match="dpc_qx/dpc_qy"):
        show_com(com[["intensity"]])
    import matplotlib.pyplot as plt

    plt.close("all")
    with pytest.raises(ValueError, match="find_orientation"):
        show_orientation(com)
