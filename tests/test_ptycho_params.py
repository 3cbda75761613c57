"""stem4d.ptycho.params: validation, messages, loading, PtyRAD mapping."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from stem4d.ptycho.params import PtychoParams, ValidationError, from_ptyrad, load_params

BASE = {
    "probe": {"beam_energy": 300e3, "convergence_semiangle": 24.9,
              "aberrations": {"defocus": 100.0, "A1": 5.0, "A1phi": 90.0}},
    "scan": {"shape": [8, 10], "step": 0.4},
}


def _with(section: str, **changes):
    d = json.loads(json.dumps(BASE))
    d.setdefault(section, {}).update(changes)
    return d


def test_dict_yaml_json_give_the_same_model(tmp_path):
    model = load_params(BASE)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "p.json").write_text(json.dumps(BASE))
    assert load_params(tmp_path / "p.yaml") == model
    assert load_params(str(tmp_path / "p.json")) == model
    # normalized once: Krivanek polar, radians; dumping and reloading is the identity
    assert model.probe.aberrations == pytest.approx(
        {"C10": -100.0, "C12": 5.0, "phi12": math.pi / 2})
    assert model.probe.aberration_angle_units == "rad"
    assert load_params(json.loads(model.to_json())) == model
    assert model.scan.count == 80 and model.scan.step_pair() == (0.4, 0.4)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_params(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_with("probe", beam_energy=300), "beam_energy is in eV; 300.0 looks like kV"),
        (_with("probe", convergence_semiangle=None), "convergence_semiangle .mrad. is required"),
        (_with("probe", beam_energy=None), "beam_energy .eV. is required"),
        (_with("probe", modes=2, mode_powers=[0.8, 0.1]), "mode_powers must sum to 1"),
        (_with("probe", modes=3, mode_powers=[0.8, 0.2]), "has 2 values but probe.modes = 3"),
        (_with("probe", aberrations={"C13": 1}), "unknown aberration name 'C13'"),
        (_with("probe", aberrations={"Cs": 1, "C30": 2}), "given twice"),
        (_with("object", slices=3), "slice_thickness .Å. is required when object.slices = 3"),
        (_with("object", modes=2, occupancies=[0.5, 0.6]), "occupancies must sum to 1"),
        (_with("scan", n_positions=81), "n_positions = 81 must equal slow x fast = 8 x 10"),
        (_with("scan", step=None), "scan.step .Å. is required unless scan.positions"),
        (_with("scan", step=-1.0), "scan.step must be positive"),
        (_with("scan", positions=[[0, 0]] * 79), "79 positions but scan.shape"),
        (_with("solver", optimizer="adamm"), "must name an optax optimizer"),
        (_with("solver", loss="l2"), "'amplitude' or 'poisson'"),
        (_with("solver", batch_size=0), "greater than or equal to 1"),
        (_with("scan", stepsize=1.0), "Extra inputs are not permitted"),
    ],
)
def test_validation_messages(data, match):
    with pytest.raises(ValidationError, match=match):
        load_params(data)


def test_given_probe_needs_no_aperture_and_defaults():
    p = load_params(_with("probe", source="given", convergence_semiangle=None, modes=3))
    assert p.probe.powers() == pytest.approx([0.9, 0.05, 0.05])
    assert p.object.occupancy() == [1.0]
    assert p.solver.optimizer == "adam" and p.solver.loss == "amplitude"
    assert p.solver.update.probe.active(0) is False and p.solver.update.probe.active(1)
    assert p.solver.update.positions.active(5) is False


PTYRAD = {
    "init_params": {
        "probe_illum_type": "electron", "probe_kv": 300, "probe_conv_angle": 24.9,
        "probe_aberrations": {"C10": 200, "A1": 50, "A1phi": 25, "C21a": 300, "C23": 400,
                              "phi23": 25, "Cs": 5000},
        "probe_pmode_max": 4, "probe_pmode_init_pows": [0.02],
        "obj_omode_max": 1, "obj_Nlayer": 6, "obj_slice_thickness": 2.0,
        "meas_Npix": 128, "pos_N_scans": 16384, "pos_N_scan_slow": 128,
        "pos_N_scan_fast": 128, "pos_scan_step_size": 0.415,
        "pos_scan_affine": [1.0, 0.0, 2.0, 0.5], "pos_scan_rand_std": 0.15,
        "meas_flipT": [1, 0, 0], "meas_calibration": {"mode": "fitRBF"},
        "random_seed": 42, "probe_source": "simu", "pos_source": "simu",
        "obj_source": "simu",
    },
    "model_params": {
        "optimizer_params": {"name": "Adam", "configs": {}},
        "update_params": {"obja": {"start_iter": 1, "end_iter": None, "lr": 5e-4},
                          "objp": {"start_iter": 1, "end_iter": None, "lr": 5e-4},
                          "probe": {"start_iter": 1, "end_iter": None, "lr": 1e-4},
                          "probe_pos_shifts": {"start_iter": 1, "end_iter": None, "lr": 0}},
    },
    "loss_params": {"loss_single": {"state": True, "weight": 1.0, "dp_pow": 0.5},
                    "loss_poissn": {"state": False, "weight": 1.0, "dp_pow": 1.0}},
    "constraint_params": {"ortho_pmode": {"freq": 1}, "fix_probe_int": {"freq": 1},
                          "obj_rblur": {"freq": None}},
    "recon_params": {"NITER": 200, "BATCH_SIZE": {"size": 32, "grad_accumulation": 1},
                     "GROUP_MODE": "random", "output_dir": "output/run1"},
}


def test_from_ptyrad_maps_init_and_recon_params():
    p = from_ptyrad(PTYRAD, strict=True)
    assert p.probe.beam_energy == 300e3 and p.probe.convergence_semiangle == 24.9
    assert p.probe.aberrations["C10"] == 200.0 and p.probe.aberrations["C30"] == 5000.0
    assert p.probe.aberrations["phi12"] == pytest.approx(math.radians(25))
    assert p.probe.aberrations["C21"] == 300.0
    assert p.probe.modes == 4 and p.probe.powers() == pytest.approx([0.94, 0.02, 0.02, 0.02])
    assert (p.object.slices, p.object.slice_thickness) == (6, 2.0)
    assert p.scan.shape == (128, 128) and p.scan.step == 0.415
    assert p.scan.affine == (1.0, 0.0, 2.0, 0.5) and p.scan.jitter == 0.15
    assert p.detector.shape == 128 and p.seed == 42
    assert p.measurements["meas_flipT"] == [1, 0, 0]
    assert p.solver.iterations == 200 and p.solver.batch_size == 32
    assert p.solver.update.probe.learning_rate == 1e-4
    assert p.solver.update.object_phase.start_iteration == 1
    assert p.solver.optimizer == "adam" and p.solver.loss == "amplitude"
    assert p.output.directory == "output/run1"
    assert load_params(PTYRAD, strict=True) == p


def test_from_ptyrad_names_unsupported_fields():
    data = json.loads(json.dumps(PTYRAD))
    data["init_params"]["probe_z_shift"] = -50.0
    data["constraint_params"]["kz_filter"] = {"freq": 1, "beta": 1}
    data["model_params"]["detector_blur_std"] = 1.0
    with pytest.warns(UserWarning, match="probe_z_shift.*detector_blur_std.*kz_filter"):
        p = from_ptyrad(data)
    assert isinstance(p, PtychoParams)
    with pytest.raises(ValueError, match="not supported by stem4d.*probe_z_shift"):
        from_ptyrad(data, strict=True)
    data["init_params"]["probe_illum_type"] = "xray"
    with pytest.raises(ValueError, match="only 'electron'"):
        from_ptyrad(data)


def test_loading_params_does_not_import_jax():
    code = ("import sys; from stem4d.ptycho import load_params; import stem4d.ptycho.optics; "
            f"load_params({BASE!r}); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
