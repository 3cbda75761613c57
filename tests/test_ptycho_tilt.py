"""Object tilts, the model's detector blur and the probe's z shift (PtyRAD's tilt_params,
detector_blur_std and probe_z_shift)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

jax = pytest.importorskip("jax")
jnp = jax.numpy

from stem4d.ptycho import model as M  # noqa: E402
from stem4d.ptycho.optics import wavelength  # noqa: E402
from stem4d.ptycho.params import from_ptyrad, load_params  # noqa: E402
from stem4d.ptycho.simulate import simulate_ptychography  # noqa: E402
from stem4d.ptycho.solver import reconstruct  # noqa: E402

# the forward model compiled once per spec (eager JAX dispatches op by op, slowly)
intensities = jax.jit(M.intensities, static_argnums=(2,))
batch_loss = jax.jit(M.batch_loss, static_argnums=(4,))
N, SHAPE, SLICES, DZ, DX = 48, (80, 76), 4, 5.0, 0.25
TILT = (20.0, -12.0)  # mrad, of the reconstruction tests' data


def _variables(rng, tilts):
    # a smooth random phase (rad): white noise would scatter to the window's Nyquist
    # frequency, where the periodic grid wraps the scattered wave
    phase = gaussian_filter(rng.random((1, SLICES, *SHAPE)), (0, 0, 1.0, 1.0))
    phase = 0.5 * (phase - phase.min()) / (phase.max() - phase.min())
    # a Gaussian probe (1 Å, with a curved wavefront) that vanishes at the window edge,
    # so the window's periodic wrap plays no part
    r2 = ((np.arange(N) - N // 2)[:, None] ** 2 + (np.arange(N) - N // 2)[None, :] ** 2) * DX**2
    probe = np.exp(-r2 / 2.0 + 0.4j * r2)
    return {
        "object_amplitude": jnp.ones((1, SLICES, *SHAPE), jnp.float32),
        "object_phase": jnp.asarray(phase, jnp.float32),
        "probe": jnp.asarray(np.stack([probe.real, probe.imag])[:, None], jnp.float32),
        "positions": jnp.zeros((3, 2), jnp.float32),
        "object_tilts": jnp.asarray(tilts, jnp.float32),
    }


def _spec(**kw):
    return M.ModelSpec(window=N, object_shape=SHAPE, slices=SLICES, wavelength=wavelength(300e3),
                       pixel_size=DX, slice_thickness=DZ, **kw)


def test_tilted_propagation_is_a_sheared_object():
    # a tilt whose walk per slice is one pixel along rx and two along ry (mrad) equals an
    # untilted object whose slices are shifted the other way: T'_s(r) = T_s(r + s w)
    rng = np.random.default_rng(0)
    walk_px = np.array([-1.0, -2.0])  # the wave moves by -dz tan(tilt) per slice
    tilts = np.arctan(-walk_px * DX / DZ) * 1e3  # mrad
    variables = _variables(rng, tilts[None, :])
    corners = jnp.asarray([[12, 14], [15, 10], [20, 18]], jnp.int32)
    zero = jnp.zeros((3, N), jnp.complex64)
    ramps = (zero + 1, zero + 1)  # integer corners: no subpixel shift
    tilted = np.asarray(intensities(variables, corners, _spec(tilts="global"), ramps,
                                      variables["object_tilts"]))
    sheared = dict(variables)
    phase = np.asarray(variables["object_phase"])
    sheared["object_phase"] = jnp.asarray(np.stack([np.roll(
        phase[:, s], (-int(s * walk_px[0]), -int(s * walk_px[1])), axis=(1, 2))
        for s in range(SLICES)], axis=1))
    straight = np.asarray(intensities(sheared, corners, _spec(), ramps))
    np.testing.assert_allclose(tilted, straight, atol=2e-5 * straight.max())  # float32
    assert np.abs(tilted - np.asarray(intensities(variables, corners, _spec(), ramps))
                  ).max() > 0.05 * straight.max()  # and the tilt matters


def test_forward_model_matches_the_numpy_simulator_with_a_tilt():
    patterns, truth = simulate_ptychography((4, 5), 32, step=1.3, defocus=80.0, slices=3,
                                            slice_thickness=4.0, tilt=(6.0, -9.0), seed=2)
    n, dx = 32, truth.attrs["pixel_size"]
    corners = truth.positions.values / dx - float(truth.rx[0]) / dx - n // 2
    phase = truth.phase.values / 3
    variables = {
        "object_amplitude": jnp.ones((1, 3, *phase.shape), jnp.float32),
        "object_phase": jnp.asarray(np.broadcast_to(phase, (1, 3, *phase.shape)), jnp.float32),
        "probe": jnp.asarray(np.stack([truth.probe.values.real,
                                       truth.probe.values.imag])[:, None], jnp.float32),
        "positions": jnp.asarray(corners, jnp.float32),
        "object_tilts": jnp.asarray([[6.0, -9.0]], jnp.float32),
    }
    spec = M.ModelSpec(window=n, object_shape=phase.shape, slices=3,
                       wavelength=truth.attrs["wavelength"], pixel_size=dx,
                       slice_thickness=4.0, tilts="global", eps=1e-14)
    index = jnp.arange(20)
    model = np.asarray(intensities(variables, jnp.asarray(corners, jnp.float32), spec,
                                     None, variables["object_tilts"]))
    measured = np.fft.ifftshift(patterns.values / (1e4 * 1.3 * 1.3), axes=(-2, -1))
    np.testing.assert_allclose(model, measured, atol=2e-5 * measured.max())
    # per position: the same tilt on every row gives the same patterns through batch_loss
    per = dict(variables, object_tilts=jnp.tile(variables["object_tilts"], (20, 1)))
    targets = jnp.asarray(np.sqrt(measured))
    weight = jnp.ones(20)
    a = batch_loss(variables, index, weight, targets, spec)
    b = batch_loss(per, index, weight, targets, M.ModelSpec(**{**spec.__dict__,
                                                                "tilts": "per_position"}))
    untilted = batch_loss(variables, index, weight, targets, M.ModelSpec(**{
        **spec.__dict__, "tilts": "none"}))
    assert float(a) == pytest.approx(float(b), rel=1e-5) and float(a) < 0.01 * float(untilted)


def test_detector_blur_is_a_gaussian_filter_of_the_model_patterns():
    rng = np.random.default_rng(1)
    variables = _variables(rng, [[0.0, 0.0]])
    corners = jnp.asarray([[12, 14], [15, 10]], jnp.int32)
    ramps = (jnp.ones((2, N), jnp.complex64), jnp.ones((2, N), jnp.complex64))
    sharp = np.asarray(intensities(variables, corners, _spec(), ramps))
    blurred = np.asarray(intensities(variables, corners, _spec(detector_blur=1.3), ramps))
    expected = gaussian_filter(sharp, sigma=(0, 1.3, 1.3), mode="wrap", truncate=8.0)
    np.testing.assert_allclose(blurred, expected, atol=1e-5 * sharp.max())
    np.testing.assert_allclose(blurred.sum(axis=(1, 2)), sharp.sum(axis=(1, 2)), rtol=1e-5)


@pytest.fixture(scope="module")
def tilted_data():
    """Noise-free 3-slice object (10 Å apart) tilted by TILT mrad: the wave walks
    (0.2, -0.12) Å, about (0.8, -0.5) pixels, per slice."""
    return simulate_ptychography((12, 12), 32, step=1.0, defocus=60.0, slices=3,
                                 slice_thickness=10.0, tilt=TILT, seed=4)


def _tilt_params(**object_kw):
    return {"probe": {"beam_energy": 300e3, "convergence_semiangle": 20.0,
                      "aberrations": {"defocus": 60.0}},
            "object": {"slices": 3, "slice_thickness": 10.0, **object_kw},
            "scan": {"shape": [12, 12], "step": 1.0},
            "solver": {"iterations": 15, "batch_size": 16}}


def test_the_right_tilt_fits_the_data_better(tilted_data):
    patterns, _ = tilted_data
    losses = {}
    for tilt in ((0.0, 0.0), TILT):
        out = reconstruct(patterns, _tilt_params(tilt=list(tilt)), progress=False)
        losses[tilt] = out["loss"]["loss"].values[-1]
        np.testing.assert_allclose(out["object"]["tilts"].values, [tilt], atol=1e-6)
        assert out["object"]["tilts"].attrs["units"] == "mrad"
    assert losses[TILT] < 0.85 * losses[(0.0, 0.0)]  # measured 0.71 after 15 iterations


def test_learned_global_tilt_moves_towards_the_truth(tilted_data):
    patterns, _ = tilted_data
    # from a guess 6 mrad off on each axis (the slices absorb part of a tilt, so it is
    # learned slowly, as PtyRAD warns): 0.62 of the distance left after 15 iterations
    params = _tilt_params(tilt=[TILT[0] - 6.0, TILT[1] + 6.0])
    params["solver"]["update"] = {"object_tilts": {"learning_rate": 0.3, "start_iteration": 2}}
    out = reconstruct(patterns, params, progress=False)
    end = np.hypot(*(out["object"]["tilts"].values[0] - TILT))
    assert end < 0.8 * np.hypot(6.0, 6.0)


def test_tilt_options_and_errors(tilted_data):
    patterns, _ = tilted_data
    each = _tilt_params(tilt=list(TILT), tilt_per_position=True)
    each["solver"]["iterations"] = 1
    out = reconstruct(patterns, each, progress=False)
    assert out["object"]["tilts"].shape == (144, 2)
    given = dict(each, object={**each["object"], "tilt_per_position": False})
    with pytest.raises(ValueError, match=r"object_tilts must have shape \(1, 2\)"):
        reconstruct(patterns, given, init={"object_tilts": np.zeros((144, 2))}, progress=False)
    single = _tilt_params(tilt=[3.0, 0.0])
    single["object"] = {"tilt": [3.0, 0.0]}
    single["solver"]["iterations"] = 1
    with pytest.warns(UserWarning, match="no effect on a single-slice object"):
        reconstruct(patterns, single, progress=False)
    with pytest.raises(ValueError, match="object.tilt must be finite mrad"):
        load_params(_tilt_params(tilt=[np.nan, 0.0]))


def test_probe_z_shift_propagates_the_initial_probe(tilted_data):
    # propagating a probe 25 Å along the beam takes 25 Å off its (under)focus
    patterns, _ = tilted_data
    params = _tilt_params()
    params["solver"]["iterations"] = 0
    params["probe"]["z_shift"] = 25.0
    shifted = reconstruct(patterns, params, progress=False)["probe"]["probe"].values[0]
    params["probe"]["z_shift"] = 0.0
    params["probe"]["aberrations"] = {"defocus": 35.0}
    nearer = reconstruct(patterns, params, progress=False)["probe"]["probe"].values[0]
    overlap = abs(np.vdot(shifted, nearer)) / np.linalg.norm(shifted) / np.linalg.norm(nearer)
    assert overlap == pytest.approx(1.0, abs=1e-5)


def test_ptyrad_tilts_blur_and_z_shift_map():
    base = {"init_params": {"probe_kv": 300, "probe_conv_angle": 20, "probe_defocus": 50,
                            "meas_Npix": 32, "pos_N_scan_slow": 4, "pos_N_scan_fast": 4,
                            "pos_scan_step_size": 1.0, "obj_Nlayer": 3,
                            "obj_slice_thickness": 5.0, "probe_z_shift": -20.0,
                            "tilt_source": "simu",
                            "tilt_params": {"tilt_type": "each", "init_tilts": [[1.5, -2.0]]}},
            "model_params": {"detector_blur_std": 0.8,
                             "update_params": {"obj_tilts": {"start_iter": 3, "lr": 0.1}}}}
    p = from_ptyrad(base, strict=True)
    assert p.object.tilt == (1.5, -2.0) and p.object.tilt_per_position
    assert p.probe.z_shift == -20.0 and p.detector.blur == 0.8
    assert p.solver.update.object_tilts.learning_rate == 0.1
    assert p.solver.update.object_tilts.start_iteration == 2  # 1-based -> 0-based
