"""stem4d.ptycho model, solver and result: gradients, forward model, reconstruction, resume."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import stem4d as s4

jax = pytest.importorskip("jax")
jnp = jax.numpy

from stem4d.ptycho import model as M  # noqa: E402
from stem4d.ptycho.result import plot_loss, plot_object_phase, write_outputs  # noqa: E402
from stem4d.ptycho.simulate import phase_ncc, simulate_ptychography  # noqa: E402
from stem4d.ptycho.solver import load_checkpoint, reconstruct  # noqa: E402


def _params(scan, step, defocus, **solver):
    return {
        "probe": {"beam_energy": 300e3, "convergence_semiangle": 20.0,
                  "aberrations": {"defocus": defocus}},
        "scan": {"shape": list(scan), "step": step},
        "solver": {"iterations": 20, "batch_size": 16, **solver},
    }


@pytest.fixture(scope="module")
def sim16():
    """16 x 16 scan (1 Å steps) of 48 x 48 patterns, probe ~6 Å across, noise-free."""
    return simulate_ptychography((16, 16), 48, step=1.0, defocus=150.0)


@pytest.fixture(scope="module")
def recon16(sim16):
    patterns, _ = sim16
    return reconstruct(patterns, _params((16, 16), 1.0, 150.0), progress=False)


@pytest.fixture(scope="module")
def sim8():
    return simulate_ptychography((8, 8), 32, step=1.2, defocus=100.0, seed=3)


# ----------------------------------------------------------------------------- model
def _truth_variables(patterns, truth, slices=1):
    n = patterns.sizes["qx"]
    dx = truth.attrs["pixel_size"]
    origin_px = -float(truth.rx[0]) / dx
    corners = truth.positions.values / dx + origin_px - n // 2
    phase = truth.phase.values / slices
    variables = {
        "object_amplitude": jnp.ones((1, slices, *phase.shape), jnp.float32),
        "object_phase": jnp.asarray(np.broadcast_to(phase, (1, slices, *phase.shape)),
                                    jnp.float32),
        "probe": jnp.asarray(np.stack([truth.probe.values.real, truth.probe.values.imag])[:, None],
                             jnp.float32),
        "positions": jnp.asarray(corners, jnp.float32),
    }
    return variables, corners


@pytest.mark.parametrize("slices", [1, 2])
def test_forward_model_matches_independent_numpy_simulation(slices):
    patterns, truth = simulate_ptychography((5, 6), 32, step=1.3, defocus=80.0, slices=slices,
                                            slice_thickness=3.0, seed=1)
    variables, corners = _truth_variables(patterns, truth, slices)
    spec = M.ModelSpec(window=32, object_shape=truth.phase.shape, slices=slices,
                       wavelength=truth.attrs["wavelength"], pixel_size=truth.attrs["pixel_size"],
                       slice_thickness=3.0)
    model = np.asarray(M.intensities(variables, jnp.asarray(corners, jnp.float32), spec))
    electrons = 1e4 * 1.3 * 1.3  # the simulator's noise-free scale
    measured = np.fft.ifftshift(patterns.values / electrons, axes=(-2, -1))
    np.testing.assert_allclose(model, measured, atol=2e-5 * measured.max())
    # precomputed shift ramps (fixed positions) give the same patterns
    geo = {k: jnp.asarray(v) for k, v in M.fixed_geometry(corners, 32).items()}
    again = M.intensities(variables, geo["base"], spec, (geo["rx"], geo["ry"]))
    np.testing.assert_allclose(np.asarray(again), model, atol=1e-6 * model.max())


@pytest.mark.parametrize(("loss", "reduction", "tilts", "blur"), [
    ("amplitude", "mean", "per_position", 0.7), ("poisson", "mean", "global", 0.0),
    ("amplitude", "rms", "none", 0.0)])
def test_gradients_match_finite_differences(loss, reduction, tilts, blur):
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(7)
        n, shape = 8, (15, 14)
        spec = M.ModelSpec(window=n, object_shape=shape, probe_modes=2, object_modes=2,
                           slices=2, occupancies=(0.6, 0.4), wavelength=0.0197,
                           pixel_size=0.3, slice_thickness=4.0, loss=loss,
                           reduction=reduction, train_positions=True, tilts=tilts,
                           detector_blur=blur)
        variables = {
            "object_amplitude": jnp.asarray(1 + 0.1 * rng.normal(size=(2, 2, *shape))),
            "object_phase": jnp.asarray(0.3 * rng.normal(size=(2, 2, *shape))),
            "probe": jnp.asarray(rng.normal(size=(2, 2, n, n))),
            "positions": jnp.asarray(rng.integers(0, 5, (4, 2)) + rng.uniform(0.2, 0.8, (4, 2))),
            "object_tilts": jnp.asarray(rng.normal(0, 10, (4 if tilts == "per_position" else 1,
                                                           2))),  # mrad
        }
        targets = jnp.asarray(rng.uniform(0.1, 2.0, (4, n, n)))
        index = jnp.asarray([2, 0, 3, 1])
        weight = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # one padded entry

        @jax.jit
        def f(v):
            return M.batch_loss(v, index, weight, targets, spec)

        grads = jax.grad(f)(variables)
        h = 1e-6
        for name in variables:
            d = {k: jnp.zeros_like(v) for k, v in variables.items()}
            d[name] = jnp.asarray(rng.normal(size=variables[name].shape))
            plus = f({k: variables[k] + h * d[k] for k in variables})
            minus = f({k: variables[k] - h * d[k] for k in variables})
            numeric = float((plus - minus) / (2 * h))
            analytic = float(jnp.sum(grads[name] * d[name]))
            assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-12), name
        # the padded entry (index 1) has no influence
        assert float(jnp.abs(grads["positions"][1]).max()) == 0.0
        if tilts == "per_position":
            assert float(jnp.abs(grads["object_tilts"][1]).max()) == 0.0
        if tilts != "none":  # the tilts are used
            assert float(jnp.abs(grads["object_tilts"]).max()) > 0
    finally:
        jax.config.update("jax_enable_x64", previous)


# ---------------------------------------------------------------------- reconstruction
def test_reconstruction_recovers_the_phase(sim16, recon16):
    _, truth = sim16
    loss = recon16["loss"]["loss"].values
    assert loss.shape == (20,) and loss[-1] < 0.05 * loss[0]
    phase = recon16["object"]["phase"].isel(object_mode=0, slice=0)
    ncc = phase_ncc(phase, truth.phase, region=(0.0, 15.0, 0.0, 15.0))
    assert ncc >= 0.95, ncc
    # positions come back in Å in the scan frame
    pos = recon16["positions"]["positions"].values
    np.testing.assert_allclose(pos, truth.positions.values, atol=1e-4)


def test_result_layout_save_and_figures(recon16, tmp_path):
    tree = recon16
    obj = tree["object"].to_dataset()
    assert obj.phase.dims == ("object_mode", "slice", "rx", "ry")
    assert obj.rx.attrs["units"] == "Å" and obj.phase.attrs["units"] == "rad"
    probe = tree["probe"].to_dataset()
    assert probe.probe.dtype == np.complex64 and float(probe.power.sum()) == pytest.approx(1.0)
    # probe scaled back to the data: sum |psi|^2 = mean counts per pattern (1e4 e/Å^2 x 1 Å^2)
    assert float(np.sum(np.abs(probe.probe.values) ** 2)) == pytest.approx(1e4, rel=1e-3)
    params = s4.ptycho.load_params(__import__("json").loads(tree.attrs["params"]))
    assert params.scan.shape == (16, 16)
    assert tree.attrs["seconds_per_iteration"] > 0
    paths = write_outputs(tree, tmp_path / "out", name="run")
    back = s4.open(paths["result"])
    assert isinstance(back, xr.DataTree)
    np.testing.assert_array_equal(back["probe"]["probe"].values, probe.probe.values)
    np.testing.assert_array_equal(back["object"]["phase"].values, obj.phase.values)
    for key in ("object_phase", "probe_modes", "loss"):
        assert paths[key].stat().st_size > 1000
    fig = plot_object_phase(tree)
    # the grey scale spans the scanned area's phase, not the unconstrained border
    pos = tree["positions"]["positions"].values
    inside = obj.phase.isel(object_mode=0, slice=0).sel(
        rx=slice(pos[:, 0].min(), pos[:, 0].max()), ry=slice(pos[:, 1].min(), pos[:, 1].max()))
    lo, hi = fig.axes[0].images[0].get_clim()
    assert (lo, hi) == pytest.approx(tuple(np.percentile(inside.values, [0.5, 99.5])), rel=1e-5)
    fixed = plot_object_phase(tree, vmin=-0.1, vmax=0.3)
    assert fixed.axes[0].images[0].get_clim() == (-0.1, 0.3)
    assert plot_loss(tree).axes


def test_checkpoint_resume_continues_exactly(sim8, tmp_path):
    patterns, _ = sim8
    cube = patterns.data.reshape(8, 8, 32, 32)
    cube = s4.datacube(cube, q_step=float(patterns.qx[1] - patterns.qx[0]), q_units="1/Å",
                       origin=(16, 16))
    base = _params((8, 8), 1.2, 100.0, iterations=4, batch_size=24)
    base["probe"]["modes"] = 2
    base["solver"]["update"] = {"probe": {"learning_rate": 1e-2, "start_iteration": 1}}
    straight = reconstruct(cube, base, progress=False)
    first = dict(base, solver=dict(base["solver"], iterations=2),
                 checkpoint={"every": 2, "path": str(tmp_path / "ck.npz")})
    reconstruct(cube, first, progress=False)
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert ck["iteration"] == 2 and len(ck["loss"]) == 2
    resumed = reconstruct(cube, base, progress=False, checkpoint=tmp_path / "ck.npz")
    np.testing.assert_allclose(resumed["loss"]["loss"].values, straight["loss"]["loss"].values,
                               rtol=1e-6)
    for node, var in (("object", "phase"), ("object", "amplitude"), ("probe", "probe")):
        np.testing.assert_allclose(resumed[node][var].values, straight[node][var].values,
                                   rtol=1e-5, atol=1e-6)
    # two probe modes, kept orthogonal by the constraint
    modes = straight["probe"]["probe"].values
    gram = np.einsum("mxy,nxy->mn", modes.conj(), modes)
    assert abs(gram[0, 1]) < 1e-4 * abs(gram[0, 0])
    # a checkpoint of other settings, or beyond the last iteration, is refused
    other = dict(base, seed=5)
    with pytest.raises(ValueError, match="ck.npz was written with other settings.*seed"):
        reconstruct(cube, other, progress=False, checkpoint=tmp_path / "ck.npz")
    short = dict(base, solver=dict(base["solver"], iterations=1))
    with pytest.raises(ValueError, match="at iteration 2, beyond solver.iterations = 1"):
        reconstruct(cube, short, progress=False, checkpoint=tmp_path / "ck.npz")


def test_restart_from_a_result_keeps_the_object_grid(sim16, recon16):
    # the refined positions of a result may move below the first raster position; a
    # restart must keep the result's object grid, not rebuild it from the positions
    patterns, _ = sim16
    moved = recon16.copy()
    moved["positions"] = moved["positions"].to_dataset().assign(
        positions=recon16["positions"]["positions"] - 0.3)  # Å, about one pixel
    frozen = _params((16, 16), 1.0, 150.0, iterations=1)
    frozen["solver"]["update"] = {name: {"learning_rate": 0.0} for name in
                                  ("object_amplitude", "object_phase", "probe")}
    again = reconstruct(patterns, frozen, init=recon16, progress=False)
    shifted = reconstruct(patterns, frozen, init=moved, progress=False)
    for out in (again, shifted):
        np.testing.assert_array_equal(out["object"]["rx"].values,
                                      recon16["object"]["rx"].values)
    # the same object at the same place: the loss goes on from where the run ended ...
    assert float(again["loss"]["loss"][0]) < 1.5 * float(recon16["loss"]["loss"][-1])
    # ... and positions off by 0.3 Å against the same object fit worse
    assert float(shifted["loss"]["loss"][0]) > 5 * float(again["loss"]["loss"][0])


def test_object_modes_separate(sim8):
    patterns, _ = sim8
    params = _params((8, 8), 1.2, 100.0, iterations=5, batch_size=16)
    params["object"] = {"modes": 2}
    out = reconstruct(patterns, params, progress=False)
    phase = out["object"]["phase"].values
    # not identical copies: they start 1e-3 rad apart at most and grow apart (0.13 rad)
    assert np.abs(phase[0] - phase[1]).max() > 0.03


def test_measurements_must_agree_with_the_parameters(sim8):
    patterns, _ = sim8  # 300 kV, 20 mrad, 1.2 Å steps
    for section, field, value, match in (
            ("probe", "beam_energy", 200e3, "carry beam_energy = 300000 eV but "
                                           "probe.beam_energy = 200000 eV"),
            ("probe", "convergence_semiangle", 25.0, "convergence_semiangle = 20 mrad but "
                                                     "probe.convergence_semiangle = 25"),
            ("scan", "step", 1.0, "step of 1.2, 1.2 Å but scan.step = 1, 1 Å")):
        params = _params((8, 8), 1.2, 100.0, iterations=1)
        params[section][field] = value
        with pytest.raises(ValueError, match=match):
            reconstruct(patterns, params, progress=False)
    # a stack made by to_stack carries the scan step of its cube
    from stem4d.ptycho.measurements import to_stack

    cube = s4.datacube(patterns.values.reshape(8, 8, 32, 32), r_step=1.2, r_units="Å",
                       q_step=float(patterns.qx[1] - patterns.qx[0]), q_units="1/Å",
                       origin=(16, 16))
    params = _params((8, 8), 1.5, 100.0, iterations=1)
    with pytest.raises(ValueError, match="step of 1.2, 1.2 Å but scan.step = 1.5"):
        reconstruct(to_stack(cube), params, progress=False)


def test_poisson_loss_decreases(sim8):
    patterns, _ = sim8
    out = reconstruct(patterns, _params((8, 8), 1.2, 100.0, iterations=4, loss="poisson",
                                        optimizer="adam"), progress=False)
    loss = out["loss"]["loss"].values
    assert np.all(np.diff(loss) < 0)


def test_bad_measurements_are_refused(sim8):
    patterns, _ = sim8
    params = _params((8, 8), 1.2, 100.0, iterations=1)
    with pytest.raises(ValueError, match="hold 63 patterns but scan.shape = .8, 8. gives 64"):
        reconstruct(patterns.isel(scan=slice(0, 63)), params, progress=False)
    with pytest.raises(ValueError, match="detector pixel size is unknown"):
        reconstruct(patterns.values, params, progress=False)
    with pytest.raises(ValueError, match="dims .'scan', 'qx', 'qy'."):
        reconstruct(patterns.rename(scan="n"), params, progress=False)
    params["detector"] = {"shape": 64}
    with pytest.raises(ValueError, match="detector.shape = 64 but the patterns are 32 x 32"):
        reconstruct(patterns, params, progress=False)


@pytest.mark.slow
def test_reconstruction_larger_scan_reaches_098():
    patterns, truth = simulate_ptychography((24, 24), 64, step=1.0, defocus=200.0, seed=5)
    out = reconstruct(patterns, _params((24, 24), 1.0, 200.0, iterations=20, batch_size=32),
                      progress=False)
    phase = out["object"]["phase"].isel(object_mode=0, slice=0)
    assert phase_ncc(phase, truth.phase, region=(0.0, 23.0, 0.0, 23.0)) >= 0.98


def test_scan_positions_affine_jitter_and_given():
    from stem4d.ptycho.params import ScanParams
    from stem4d.ptycho.solver import scan_positions

    raster = scan_positions(ScanParams(shape=(3, 4), step=(1.0, 2.0)), 0.2, seed=0)
    assert raster.shape == (12, 2)
    np.testing.assert_allclose(raster[:5], [[0, 0], [0, 2], [0, 4], [0, 6], [1, 0]])
    # rotation by 90° about the raster centre (1, 3): (row, col) offsets (dr, dc) -> (-dc, dr)
    rot = scan_positions(ScanParams(shape=(3, 4), step=(1.0, 2.0), affine=(1, 0, 90, 0)),
                         0.2, seed=0)
    np.testing.assert_allclose(rot[0], [1 + 3, 3 - 1], atol=1e-12)
    scaled = scan_positions(ScanParams(shape=(3, 4), step=1.0, affine=(2, 0, 0, 0)), 0.2, 0)
    np.testing.assert_allclose(np.ptp(scaled, axis=0), [4.0, 6.0])
    jit1 = scan_positions(ScanParams(shape=(3, 4), step=1.0, jitter=0.5), 0.2, seed=4)
    jit2 = scan_positions(ScanParams(shape=(3, 4), step=1.0, jitter=0.5), 0.2, seed=4)
    np.testing.assert_array_equal(jit1, jit2)
    assert 0.02 < np.std(jit1 - scan_positions(ScanParams(shape=(3, 4), step=1.0), 0.2, 4)) < 0.2
    # PtyRAD / PtychoShelves affine: p' = p @ (scale · A(asym) · R(rot) · S(shear)) about
    # the centre, with R = [[cos, sin], [-sin, cos]] and S = [[1, 0], [tan, 1]]
    scale, asym, rot, shear = 1.1, 0.2, 30.0, 10.0
    r, sh = np.radians(rot), np.radians(shear)
    a = (np.array([[scale, 0], [0, scale]]) @ np.diag([1 + asym / 2, 1 - asym / 2])
         @ np.array([[np.cos(r), np.sin(r)], [-np.sin(r), np.cos(r)]])
         @ np.array([[1, 0], [np.tan(sh), 1]]))
    plain = scan_positions(ScanParams(shape=(3, 4), step=1.0), 0.2, 0)
    moved = scan_positions(ScanParams(shape=(3, 4), step=1.0, affine=(scale, asym, rot, shear)),
                           0.2, 0)
    centre = plain.mean(axis=0)
    np.testing.assert_allclose(moved, (plain - centre) @ a + centre, atol=1e-12)
    given = [(0.5 * i, -0.3 * i) for i in range(6)]
    np.testing.assert_allclose(scan_positions(ScanParams(shape=(2, 3), positions=given), 0.2, 0),
                               given)


def test_multislice_object_modes_and_position_updates_run(sim8):
    patterns, _ = sim8
    params = _params((8, 8), 1.2, 100.0, iterations=2, batch_size=20)
    params["object"] = {"slices": 2, "slice_thickness": 5.0, "modes": 2,
                        "occupancies": [0.7, 0.3]}
    params["solver"]["update"] = {"positions": {"learning_rate": 0.05}}
    params["scan"]["jitter"] = 0.1
    out = reconstruct(patterns, params, progress=False)
    assert out["object"]["phase"].shape[:2] == (2, 2)
    np.testing.assert_allclose(out["object"]["z"].values, [0.0, 5.0])
    moved = out["positions"]["positions"].values - out["positions"]["initial_positions"].values
    assert 0 < np.abs(moved).max() < 1.0
    assert np.all(np.isfinite(out["loss"]["loss"].values))


def test_constraints_on_their_schedules():
    from stem4d.ptycho.params import ConstraintParams
    from stem4d.ptycho.solver import _due_constraints, _make_constraints

    rng = np.random.default_rng(3)
    spec = M.ModelSpec(window=8, object_shape=(20, 22), probe_modes=3, slices=3,
                       train_positions=True)
    cons = ConstraintParams(
        orthogonalize_probe_modes={"start": 1, "every": 2},
        fix_probe_intensity=True,
        object_blur={"sigma": 0.8, "kernel_size": 5, "target": "phase"},
        slice_blur={"sigma": 1.0, "kernel_size": 3, "target": "amplitude"},
        object_amplitude_range={"range": [0.9, 1.05], "relax": 0.25},
        positive_phase={"start": 2}, recenter_positions={"relax": 0.5})
    assert _due_constraints(cons, spec, 0) == (False, True, True, True, True, False, True)
    assert _due_constraints(cons, spec, 1)[:1] == (True,)
    assert _due_constraints(cons, M.ModelSpec(window=8, object_shape=(20, 22)), 1) == (
        False, True, True, False, True, False, False)  # 1 mode, 1 slice, fixed positions
    initial = rng.uniform(0, 5, (6, 2)).astype(np.float32)
    amp = rng.uniform(0.8, 1.2, (1, 3, 20, 22)).astype(np.float32)
    phase = rng.normal(0, 0.3, (1, 3, 20, 22)).astype(np.float32)
    probe = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    pos = initial + np.float32(0.3)
    constrain = _make_constraints(spec, 64.0, cons, jnp.asarray(initial))
    out = constrain({"object_amplitude": jnp.asarray(amp), "object_phase": jnp.asarray(phase),
                     "probe": jnp.asarray(probe), "positions": jnp.asarray(pos)},
                    (True,) * 7)
    # probe: orthogonal modes ordered by power, total intensity 64
    c = np.asarray(out["probe"][0]) + 1j * np.asarray(out["probe"][1])
    gram = np.einsum("mxy,nxy->mn", c.conj(), c)
    assert np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-3 * abs(gram[0, 0]))
    assert np.all(np.diff(np.diag(gram).real) <= 0)
    assert np.sum(np.abs(c) ** 2) == pytest.approx(64.0, rel=1e-5)
    # phase: lateral Gaussian blur (reflected edges, 5-tap kernel), then clipped at 0
    from scipy.ndimage import convolve1d

    x = np.arange(5) - 2.0
    g = np.exp(-0.5 * (x / 0.8) ** 2)
    g /= g.sum()
    blurred = convolve1d(convolve1d(phase, g, axis=-2, mode="mirror"), g, axis=-1,
                         mode="mirror")
    np.testing.assert_allclose(np.asarray(out["object_phase"]), np.maximum(blurred, 0),
                               atol=1e-5)
    # amplitude: 3-tap blur across slices (edge slices repeated), then a relaxed clip
    g3 = np.exp(-0.5 * (np.arange(3) - 1.0) ** 2)
    g3 /= g3.sum()
    zb = convolve1d(amp, g3, axis=1, mode="nearest")
    np.testing.assert_allclose(np.asarray(out["object_amplitude"]),
                               0.25 * zb + 0.75 * np.clip(zb, 0.9, 1.05), atol=1e-5)
    # positions: half of the mean correction removed
    np.testing.assert_allclose(np.asarray(out["positions"]), pos - 0.5 * 0.3, atol=1e-6)


def test_probe_learning_rate_in_measurement_units(sim8):
    patterns, _ = sim8
    base = _params((8, 8), 1.2, 100.0, iterations=2, batch_size=32)
    scale = 32 * 32 / float(patterns.values.sum(axis=(1, 2)).mean())
    relative = dict(base, solver=dict(base["solver"], update={
        "probe": {"learning_rate": 1e-2 * np.sqrt(scale), "start_iteration": 0}}))
    measured = dict(base, solver=dict(base["solver"], update={
        "probe": {"learning_rate": 1e-2, "start_iteration": 0},
        "probe_units": "measurements"}))
    a = reconstruct(patterns, relative, progress=False)
    b = reconstruct(patterns, measured, progress=False)
    np.testing.assert_allclose(a["probe"]["probe"].values, b["probe"]["probe"].values,
                               rtol=1e-5, atol=1e-6 * np.abs(a["probe"]["probe"].values).max())
    assert not np.allclose(a["loss"]["loss"].values,
                           reconstruct(patterns, dict(base, solver=dict(base["solver"], update={
                               "probe": {"learning_rate": 1e-2, "start_iteration": 0}})),
                               progress=False)["loss"]["loss"].values)
