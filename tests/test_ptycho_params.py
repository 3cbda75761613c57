"""stem4d.ptycho.params: validation, messages, loading, PtyRAD mapping."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

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
        (_with("probe", convergence_semiangle=0.02), "in mrad; 0.02 looks like radians .did "
                                                     "you mean 20 mrad"),
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
        "meas_params": {"path": "data/scan_x128_y128.raw", "key": None},
        "random_seed": 42, "probe_source": "simu", "pos_source": "simu",
        "obj_source": "simu",
    },
    "model_params": {
        "optimizer_params": {"name": "Adam", "configs": {}},
        "update_params": {"obja": {"start_iter": 1, "end_iter": None, "lr": 5e-4},
                          "objp": {"start_iter": 3, "end_iter": 20, "lr": 5e-4},
                          "probe": {"start_iter": 1, "end_iter": None, "lr": 1e-4},
                          "probe_pos_shifts": {"start_iter": None, "end_iter": None, "lr": 0}},
    },
    "loss_params": {"loss_single": {"state": True, "weight": 1.0, "dp_pow": 0.5},
                    "loss_poissn": {"state": False, "weight": 1.0, "dp_pow": 1.0}},
    "constraint_params": {
        "ortho_pmode": {"start_iter": 1, "step": 1, "end_iter": None},
        "fix_probe_int": {"start_iter": 1, "step": 1, "end_iter": None},
        "obj_rblur": {"start_iter": None, "step": 1, "end_iter": None, "obj_type": "both",
                      "kernel_size": 5, "std": 0.4},
        "obj_zblur": {"start_iter": 1, "step": 1, "end_iter": None, "obj_type": "both",
                      "kernel_size": 5, "std": 1},
        "obja_thresh": {"start_iter": 1, "step": 1, "end_iter": None, "relax": 0,
                        "thresh": [0.96, 1.04]},
        "objp_postiv": {"start_iter": 5, "step": 2, "end_iter": 30, "relax": 0.1},
        "kz_filter": {"start_iter": None, "step": 1, "end_iter": None, "beta": 1},
    },
    "recon_params": {"NITER": 200, "BATCH_SIZE": {"size": 32, "grad_accumulation": 1},
                     "GROUP_MODE": "random", "SAVE_ITERS": 10, "output_dir": "output/run1",
                     "recon_dir_affixes": ["default"], "prefix": "", "postfix": "",
                     "compiler_configs": {"enable": False}},
}


def _ptyrad_due(start, step, end, niter):
    """PtyRAD's rule for a constraint at 1-based iteration ``niter`` (its documentation)."""
    if start is None or niter < start or (end is not None and niter >= end):
        return False
    return (niter - start) % step == 0


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
    # the measurement chain: keywords of prepare_measurements, EMPAD layout from meas_Npix
    assert p.measurements == {
        "scan_shape": [128, 128], "source": "data/scan_x128_y128.raw",
        "open_kwargs": {"detector_shape": [128, 128], "offset": 0, "gap": 1024},
        "flipT": [1, 0, 0], "calibration": {"mode": "fitRBF"}}
    assert p.solver.iterations == 200 and p.solver.batch_size == 32
    assert p.solver.optimizer == "adam" and p.solver.loss == "amplitude"
    assert p.solver.loss_reduction == "rms"  # PtyRAD's normalized RMSE
    assert p.checkpoint.every == 10
    assert (p.output.directory, p.output.name) == ("output/run1", "ptycho")
    assert load_params(PTYRAD, strict=True) == p


def test_from_ptyrad_learning_rates_are_one_based_and_end_exclusive():
    up = from_ptyrad(PTYRAD, strict=True).solver.update
    assert up.probe_units == "measurements"
    assert (up.object_amplitude.learning_rate, up.object_amplitude.start_iteration) == (5e-4, 0)
    assert up.probe.learning_rate == 1e-4 and up.probe.active(0)
    # objp: start_iter 3, end_iter 20 -> PtyRAD iterations 3..19 -> 0-based 2..18
    ph = up.object_phase
    assert [ph.active(i) for i in (1, 2, 18, 19)] == [False, True, True, False]
    assert up.positions.learning_rate == 0.0  # start_iter None: fixed
    # PtyRAD's defaults when update_params leaves a variable out
    data = json.loads(json.dumps(PTYRAD))
    data["model_params"]["update_params"] = {"objp": {"start_iter": 1, "lr": 1e-3}}
    up = from_ptyrad(data, strict=True).solver.update
    assert up.object_phase.learning_rate == 1e-3
    assert (up.object_amplitude.learning_rate, up.probe.learning_rate,
            up.positions.learning_rate) == (5e-4, 1e-4, 5e-4)


def test_from_ptyrad_constraints_follow_ptyrad_schedules():
    cons = from_ptyrad(PTYRAD, strict=True).solver.constraints
    assert cons.object_blur is None  # obj_rblur start_iter null: off
    assert (cons.slice_blur.sigma, cons.slice_blur.kernel_size, cons.slice_blur.target) == (
        1.0, 5, "both")
    assert cons.object_amplitude_range.range == (0.96, 1.04)
    assert cons.positive_phase.relax == 0.1
    cfg = PTYRAD["constraint_params"]
    for name, sched in (("ortho_pmode", cons.orthogonalize_probe_modes),
                        ("fix_probe_int", cons.fix_probe_intensity),
                        ("objp_postiv", cons.positive_phase),
                        ("obja_thresh", cons.object_amplitude_range)):
        c = cfg[name]
        for niter in range(1, 40):  # PtyRAD's 1-based iteration = stem4d's iteration + 1
            assert sched.due(niter - 1) == _ptyrad_due(c["start_iter"], c["step"],
                                                        c["end_iter"], niter), (name, niter)
    # legacy 'freq' (before PtyRAD 0.1.0b11): start at 1, step = freq
    data = json.loads(json.dumps(PTYRAD))
    data["constraint_params"] = {"ortho_pmode": {"freq": 3}, "fix_probe_int": {"freq": None},
                                 "objp_postiv": {"freq": 1}}
    cons = from_ptyrad(data, strict=True).solver.constraints
    assert [cons.orthogonalize_probe_modes.due(i) for i in range(7)] == [
        _ptyrad_due(1, 3, None, i + 1) for i in range(7)]
    assert cons.fix_probe_intensity is None and cons.positive_phase.due(4)
    # a file without constraint_params gets PtyRAD's defaults: lateral blur 0.4 px,
    # z blur, position recentering, orthogonalization, fixed probe intensity
    data.pop("constraint_params")
    cons = from_ptyrad(data, strict=True).solver.constraints
    assert cons.object_blur.sigma == 0.4 and cons.slice_blur.sigma == 1.0
    assert cons.recenter_positions is not None and cons.object_amplitude_range is None
    assert cons.orthogonalize_probe_modes.due(0) and cons.fix_probe_intensity.due(0)


def test_from_ptyrad_defaults_for_a_minimal_file():
    # the fields of PtyRAD's templates/minimal.yaml (PtyRAD 1.0.0)
    minimal = {
        "init_params": {
            "probe_kv": 80, "probe_conv_angle": 24.9, "probe_aberrations": {"C10": 0},
            "meas_Npix": 128, "pos_N_scan_slow": 128, "pos_N_scan_fast": 128,
            "pos_scan_step_size": 0.4290, "probe_pmode_max": 6, "obj_Nlayer": 6,
            "obj_slice_thickness": 2, "meas_permute": None, "meas_reshape": None,
            "meas_flipT": [1, 0, 0], "pos_scan_affine": None,
            "meas_params": {"path": "data/tBL_WSe2/scan_x128_y128.raw", "key": None}},
        "recon_params": {"NITER": 200, "BATCH_SIZE": {"size": 32, "grad_accumulation": 1},
                         "SAVE_ITERS": 10, "output_dir": "output/tBL_WSe2/",
                         "recon_dir_affixes": ["minimal"]},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unsupported
        p = from_ptyrad(minimal)
    assert p.probe.modes == 6 and p.probe.powers()[0] == pytest.approx(0.9)
    assert p.scan.jitter == 0.15 and p.seed == 0
    assert p.measurements["calibration"] == {"mode": "fitRBF"}  # PtyRAD's default
    assert p.solver.update.object_phase.learning_rate == 5e-4
    assert p.solver.update.positions.learning_rate == 5e-4  # PtyRAD refines positions
    assert p.solver.loss == "amplitude" and p.output.directory == "output/tBL_WSe2/"


def test_from_ptyrad_measurement_chain_and_sizes():
    data = json.loads(json.dumps(PTYRAD))
    data["init_params"].update({
        "meas_params": {"path": "scan.h5", "key": "/data", "selection": [[0, 64], None]},
        "meas_permute": [2, 3, 0, 1], "meas_reshape": [-1, 128, 128],
        "meas_crop": [[0, 64], [10, 74], [0, 120], [0, 120]],
        "meas_pad": {"mode": "on_the_fly", "padding_type": "power", "target_Npix": 192,
                     "value": None, "threshold": 60},
        "meas_resample": {"mode": "precompute", "scale_factors": [0.5, 0.5]},
        "meas_remove_neg_values": {"mode": "clip_value", "value": 20, "force": True},
        "meas_normalization": {"mode": "divide_const", "value": 3.0},
        "meas_add_poisson_noise": {"unit": "e_per_Ang2", "value": 1e4},
        "meas_add_source_size": 0.34, "meas_add_detector_blur": 1.0,
        "meas_calibration": {"mode": "dx", "value": 0.1}})
    p = from_ptyrad(data, strict=True)
    meas = p.measurements
    assert meas["source"] == "scan.h5" and meas["key"] == "/data"
    assert meas["open_kwargs"] == {"selection": [[0, 64], None]}
    assert (meas["permute"], meas["reshape"]) == ([2, 3, 0, 1], [-1, 128, 128])
    assert meas["scan_shape"] == [128, 128]  # as stored; the solver sees the crop
    assert p.scan.shape == (64, 64)
    assert meas["pad"] == {"target": 192, "kind": "power", "value": 0.0, "threshold": 60.0,
                           "mode": "on_the_fly"}
    assert meas["resample"] == {"factor": 0.5, "mode": "precompute"}
    assert p.detector.shape == 96  # 120 cropped, padded to 192, resampled by 0.5
    assert meas["remove_negative"] == {"mode": "clip_value", "value": 20, "force": True}
    assert meas["normalization"] == {"mode": "divide_const", "value": 3.0}
    assert meas["poisson"] == {"dose": 1e4, "unit": "e_per_A2"}  # stem4d spelling
    assert (meas["source_size"], meas["detector_blur"]) == (0.34, 1.0)
    assert meas["calibration"] == {"mode": "dx", "value": 0.1}
    with pytest.raises(ValueError, match="pos_N_scans = 100 must equal"):
        from_ptyrad({**data, "init_params": {**data["init_params"], "pos_N_scans": 100}})


def test_from_ptyrad_optimizer_and_loss():
    data = json.loads(json.dumps(PTYRAD))
    data["model_params"]["optimizer_params"] = {
        "name": "AdamW", "configs": {"betas": [0.8, 0.99], "eps": 1e-6, "foreach": None}}
    data["loss_params"] = {"loss_single": {"state": False},
                           "loss_poissn": {"state": True, "dp_pow": 1.0}}
    p = from_ptyrad(data, strict=True)
    assert p.solver.optimizer == "adamw"
    assert p.solver.optimizer_kwargs == {"weight_decay": 0.01, "b1": 0.8, "b2": 0.99,
                                         "eps": 1e-6}
    assert p.solver.loss == "poisson"
    data["model_params"]["optimizer_params"] = {"name": "SGD", "configs": {"momentum": 0.9}}
    assert from_ptyrad(data).solver.optimizer_kwargs == {"momentum": 0.9}


def test_from_ptyrad_names_unsupported_fields_in_one_warning():
    data = json.loads(json.dumps(PTYRAD))
    data["init_params"]["probe_z_shift"] = -50.0
    data["init_params"]["meas_export"] = True
    data["constraint_params"]["kz_filter"] = {"start_iter": 1, "step": 1, "beta": 1}
    data["constraint_params"]["probe_mask_k"] = {"freq": 1}
    data["model_params"]["detector_blur_std"] = 1.0
    data["model_params"]["scheduler_params"] = {"name": "StepLR"}
    data["model_params"]["optimizer_params"] = {"name": "LBFGS", "configs": {"amsgrad": True}}
    data["loss_params"]["loss_sparse"] = {"state": True, "weight": 0.1}
    data["loss_params"]["loss_poissn"] = {"state": True}
    data["recon_params"].update({"GROUP_MODE": "sparse", "INDICES_MODE": {"mode": "sub"},
                                 "BATCH_SIZE": {"size": 16, "grad_accumulation": 4},
                                 "selected_figs": ["all"]})
    data["hypertune_params"] = {"if_hypertune": True}
    with pytest.warns(UserWarning) as record:
        p = from_ptyrad(data)
    assert len(record) == 1
    msg = str(record[0].message)
    for name in ("hypertune_params.if_hypertune",
                 "init_params.meas_export", "optimizer_params.name='LBFGS'",
                 "configs.amsgrad", "model_params.scheduler_params",
                 "loss_params.loss_poissn (together",
                 "loss_params.loss_sparse", "constraint_params.probe_mask_k",
                 "constraint_params.kz_filter", "GROUP_MODE='sparse'",
                 "INDICES_MODE.mode='sub'", "grad_accumulation", "recon_params.selected_figs"):
        assert name in msg, name
    for supported in ("obj_rblur", "ortho_pmode", "probe_z_shift", "detector_blur_std"):
        assert supported not in msg, supported
    assert isinstance(p, PtychoParams) and p.solver.batch_size == 16
    assert p.probe.z_shift == -50.0 and p.detector.blur == 1.0
    with pytest.raises(ValueError, match="not supported by stem4d.*meas_export"):
        from_ptyrad(data, strict=True)
    data["init_params"]["probe_illum_type"] = "xray"
    with pytest.raises(ValueError, match="only 'electron'"):
        from_ptyrad(data)


_PTYRAD_PARAMS = Path("/work/peers/lib/python3.11/site-packages/ptyrad/starter/params")


@pytest.mark.skipif(not _PTYRAD_PARAMS.is_dir(), reason="PtyRAD 1.0.0 is not installed")
def test_ptyrad_shipped_parameter_files_load():
    """Every template, example and walkthrough file shipped with PtyRAD 1.0.0 maps."""
    files = sorted(_PTYRAD_PARAMS.glob("*/*.yaml"))
    assert len(files) >= 20
    for path in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = load_params(path)
        assert len(caught) <= 1, path
        assert p.probe.beam_energy == 80e3 or p.probe.beam_energy == 300e3, path
        if path.parent.name == "templates":  # the templates use only supported fields
            assert not caught, (path, [str(w.message) for w in caught])


def test_constraint_shorthands():
    from stem4d.ptycho.params import ConstraintParams

    c = ConstraintParams(orthogonalize_probe_modes=3, fix_probe_intensity=0,
                         object_amplitude_range=[0.9, 1.1], positive_phase=True,
                         object_blur=0.5)
    assert [c.orthogonalize_probe_modes.due(i) for i in range(6)] == [
        False, False, True, False, False, True]
    assert c.fix_probe_intensity is None
    assert c.object_amplitude_range.range == (0.9, 1.1) and c.positive_phase.due(0)
    assert c.object_blur.sigma == 0.5 and c.object_blur.kernel_size == 5
    with pytest.raises(ValidationError, match="0 <= min < max"):
        ConstraintParams(object_amplitude_range=[1.1, 0.9])
    with pytest.raises(ValidationError, match="kernel_size must be odd"):
        ConstraintParams(object_blur={"sigma": 1.0, "kernel_size": 4})
    with pytest.raises(ValidationError, match="measurements has unknown settings"):
        load_params({**BASE, "measurements": {"meas_flipT": [1, 0, 0]}})


def test_loading_params_does_not_import_jax():
    code = ("import sys; from stem4d.ptycho import load_params; import stem4d.ptycho.optics; "
            f"load_params({BASE!r}); load_params({PTYRAD!r}, strict=True); "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
