"""`stem4d ptycho run` end to end on a PtyRAD-style file, and the demo's ptychography step."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import stem4d as s4

pytest.importorskip("jax")

from stem4d.cli import _demo_ptychography, _ptycho_figure, _Timer, main  # noqa: E402
from stem4d.ptycho.simulate import phase_ncc, simulate_ptychography  # noqa: E402


@pytest.fixture(scope="module")
def sim():
    """16 x 16 scan (1 Å steps) of 48 x 48 patterns, probe ~6 Å across, noise-free."""
    return simulate_ptychography((16, 16), 48, step=1.0, defocus=150.0, seed=2)


def _ptyrad_file(tmp_path, patterns, **extra_init):
    """A PtyRAD 1.0 parameter file for the simulated data, saved as a (N, ky, kx) .npy."""
    np.save(tmp_path / "patterns.npy", patterns.values)
    dk = float(patterns.qx[1] - patterns.qx[0])
    params = {
        "init_params": {
            "probe_kv": 300, "probe_conv_angle": 20.0, "probe_aberrations": {"C10": -150.0},
            "meas_Npix": 48, "pos_N_scans": 256, "pos_N_scan_slow": 16,
            "pos_N_scan_fast": 16, "pos_scan_step_size": 1.0, "pos_scan_rand_std": 0,
            "probe_pmode_max": 1, "obj_Nlayer": 1, "obj_slice_thickness": 1.0,
            "meas_flipT": None, "meas_calibration": {"mode": "dk", "value": dk},
            "meas_params": {"path": "patterns.npy", "key": None}, **extra_init,
        },
        "model_params": {"update_params": {
            "obja": {"start_iter": 1, "lr": 5e-3, "end_iter": None},
            "objp": {"start_iter": 1, "lr": 5e-3, "end_iter": None},
            "probe": {"start_iter": 2, "lr": 1e-3, "end_iter": None},
            "probe_pos_shifts": {"start_iter": None, "lr": 0, "end_iter": None}}},
        "loss_params": {"loss_single": {"state": True, "weight": 1.0, "dp_pow": 0.5}},
        "constraint_params": {
            "ortho_pmode": {"start_iter": 1, "step": 1, "end_iter": None},
            "fix_probe_int": {"start_iter": 1, "step": 1, "end_iter": None},
            "obja_thresh": {"start_iter": 1, "step": 1, "end_iter": None, "relax": 0,
                            "thresh": [0.9, 1.1]}},
        "recon_params": {"NITER": 8, "BATCH_SIZE": {"size": 16, "grad_accumulation": 1},
                         "GROUP_MODE": "random", "SAVE_ITERS": 4,
                         "output_dir": str(tmp_path / "output"), "prefix": "",
                         "postfix": "run1"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_ptycho_run_on_a_ptyrad_file(sim, tmp_path, capsys, monkeypatch):
    patterns, truth = sim
    path = _ptyrad_file(tmp_path, patterns)
    monkeypatch.chdir(tmp_path.parent)  # the data path is relative to the file's folder
    assert main(["ptycho", "run", str(path), "--quiet"]) == 0
    out = tmp_path / "output"  # PtyRAD's recon_params.output_dir
    tree = s4.open(out / "ptycho_run1.nc")
    phase = tree["object"]["phase"].isel(object_mode=0, slice=0)
    ncc = phase_ncc(phase, truth.phase, region=(0.0, 15.0, 0.0, 15.0))
    assert ncc > 0.9, ncc
    assert tree["loss"]["loss"].size == 8
    amp = tree["object"]["amplitude"].values
    assert amp.min() >= 0.9 - 1e-6 and amp.max() <= 1.1 + 1e-6  # obja_thresh
    for name in ("object_phase.png", "probe_modes.png", "loss.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "params.yaml").read_text() == path.read_text()  # copy_params
    assert (out / "checkpoint.npz").is_file()  # SAVE_ITERS
    # resume from the checkpoint into another folder: nothing left to do, same result
    assert main(["ptycho", "run", str(path), "--quiet", "--out", str(tmp_path / "again"),
                 "--resume", str(out / "checkpoint.npz")]) == 0
    again = s4.open(tmp_path / "again" / "ptycho_run1.nc")
    np.testing.assert_array_equal(again["object"]["phase"].values, tree["object"]["phase"].values)


def test_ptycho_run_warns_or_refuses_unsupported_fields(sim, tmp_path, capsys):
    patterns, _ = sim
    path = _ptyrad_file(tmp_path, patterns, meas_export=True)
    with open(path) as f:
        params = yaml.safe_load(f)
    params["recon_params"]["NITER"] = 1
    params["model_params"]["scheduler_params"] = {"name": "StepLR"}
    path.write_text(yaml.safe_dump(params))
    assert main(["ptycho", "run", str(path), "--strict", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "init_params.meas_export" in err
    assert "model_params.scheduler_params" in err
    assert main(["ptycho", "run", str(path), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning: PtyRAD fields not supported") == 1
    assert "meas_export" in captured.err
    assert "done: 1 iterations" in captured.out and (tmp_path / "o" / "ptycho_run1.nc").exists()
    assert main(["ptycho", "run", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def test_demo_ptychography_step(tmp_path):
    ds = _demo_ptychography(tmp_path, _Timer(quiet=True), lambda *a: None)
    assert ds.attrs["ncc"] > 0.95
    assert ds.phase.dims == ("rx", "ry") and ds.phase.rx.attrs["units"] == "Å"
    assert ds.loss.size == 10 and ds.attrs["seconds_per_iteration"] > 0
    (png,) = _ptycho_figure(ds, tmp_path / "ptycho_phase.png")
    assert png.stat().st_size > 1000


def test_ptycho_run_names_a_malformed_or_invalid_file(tmp_path, capsys):
    cases = {
        "broken.yaml": ("probe: [1, 2\n", "is not valid YAML"),
        "broken.json": ('{"probe": ', "is not valid JSON"),
        "invalid.yaml": ("probe: {beam_energy: -3, convergence_semiangle: 20}\n"
                         "scan: {shape: [4, 4], step: 1.0}\n"
                         "measurements: {source: x.npy}\n",
                         "probe.beam_energy: Input should be greater than 0 (got -3)"),
    }
    for name, (text, match) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert main(["ptycho", "run", str(path), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert name in err and match in err and "errors.pydantic.dev" not in err
        assert "Traceback" not in err


def test_resume_from_a_file_that_is_no_checkpoint(tmp_path):
    from stem4d.ptycho.solver import load_checkpoint

    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.npz is not a stem4d ptychography checkpoint"):
        load_checkpoint(junk)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz is not a stem4d ptychography checkpoint"):
        load_checkpoint(tmp_path / "other.npz")
