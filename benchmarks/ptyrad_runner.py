"""Benchmark runner: PtyRAD 1.0.0 single-slice ptychography on one CPU thread.

Run with the peers virtualenv (PtyRAD, torch 2.13.0 CPU), not stem4d's::

    /work/peers/bin/python benchmarks/ptyrad_runner.py data.npz --niter 20 --out ptyrad.npz
    /work/peers/bin/python benchmarks/ptyrad_runner.py --self-test        # 40x40 scan, 96 px
    /work/peers/bin/python benchmarks/ptyrad_runner.py data.npz --track   # NCC per iteration
    /work/peers/bin/python benchmarks/ptyrad_runner.py --params p.yaml    # = `ptyrad run p.yaml`

Input: an ``.npz`` as described in ``_ptycho_common.py`` (patterns ``(N, ky, kx)``,
scan shape, scan step Å, detector ``dk`` 1/Å, kV, convergence mrad, defocus Å).
Prints one JSON line (seconds per iteration, total process time including imports,
NCC against ``truth_phase`` when the input has it) and saves the reconstructed object
phase to ``--out``.

Environment quirks handled here, without touching site-packages:

* torchvision from PyPI does not import beside torch 2.13.0+cpu, and PtyRAD imports
  only ``torchvision.transforms.functional.gaussian_blur``: a small shim module with
  an equivalent torch implementation is put in ``sys.modules`` first;
* ``ptyrad/plotting/basic.py`` has a Python-3.12-only f-string (nested quotes) that is
  a SyntaxError on 3.11: its source is loaded, that f-string rewritten in memory, and
  the module registered as ``ptyrad.plotting.basic`` before PtyRAD imports it (if it
  still does not compile, no-op plotting stubs are registered instead).

PtyRAD is driven programmatically as its tutorial notebook does: a params dict with
``init_params`` (measurements passed in memory with ``meas_source='custom'``),
``model_params``, ``loss_params``, ``constraint_params`` and ``recon_params`` is
validated by ``PtyRADParams`` (defaults filled) and run by ``PtyRADSolver(...).run()``.
Settings: single slice, 1 probe mode, 1 object mode, batch 32 (random groups), Adam with
PtyRAD's default learning rates, no position refinement and no initial random
displacement of the positions (``pos_scan_rand_std`` 0: the positions are exact; PtyRAD's
default is 0.15 px), PtyRAD's default constraints, no intermediate saving, float32,
device CPU, 1 thread.

``--track`` records the object phase after every iteration (a wrapper around PtyRAD's
``recon_step``, which runs one iteration including its constraints); the copies are
timed and subtracted, and the NCC of each is computed after the run. Times are counted
from the start of the setup (``PtyRADSolver`` construction), so the time to reach an
NCC includes PtyRAD's initialization.

``--params FILE`` runs a PtyRAD parameter file the way ``ptyrad run FILE`` does
(``load_params(FILE, validate=True)``, ``PtyRADSolver(params, device=cpu).run()``,
results written as the file says), with the two import fixes; ``--truth`` (an input
``.npz`` with ``truth_phase``) adds the NCC of the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

_T_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ptycho_common import pin_threads, process_seconds  # noqa: E402

pin_threads(int(os.environ.get("BENCH_CPU", "0")))

import numpy as np  # noqa: E402


# ------------------------------------------------------------------ import shims
def _install_torchvision_shim() -> None:
    """``torchvision.transforms.functional.gaussian_blur`` in torch (same definition).

    torchvision's kernel: x = linspace(-(k-1)/2, (k-1)/2, k), exp(-x²/(2σ²)) normalized,
    separable, reflect padding of k//2 on each side, applied per channel.
    """
    import types

    import torch
    import torch.nn.functional as F

    def gaussian_blur(img, kernel_size, sigma=None):
        ks = [kernel_size, kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
        if sigma is None:
            sig = [0.3 * ((k - 1) * 0.5 - 1) + 0.8 for k in ks]
        elif isinstance(sigma, (int, float)):
            sig = [float(sigma), float(sigma)]
        else:
            sig = [float(s) for s in sigma]
            sig = sig * 2 if len(sig) == 1 else sig
        dtype = img.dtype if img.is_floating_point() else torch.float32
        kernels = []
        for k, s in zip(ks, sig, strict=True):
            x = torch.linspace(-(k - 1) * 0.5, (k - 1) * 0.5, k, dtype=dtype, device=img.device)
            g = torch.exp(-0.5 * (x / s) ** 2)
            kernels.append(g / g.sum())
        kernel2d = kernels[1][:, None] * kernels[0][None, :]  # (ky, kx): sigma = [sx, sy]
        shape = img.shape
        x = img.reshape(-1, 1, shape[-2], shape[-1]).to(dtype)
        pad = [ks[0] // 2, ks[0] // 2, ks[1] // 2, ks[1] // 2]
        x = F.pad(x, pad, mode="reflect")
        x = F.conv2d(x, kernel2d[None, None])
        return x.reshape(shape).to(img.dtype)

    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    tvf = types.ModuleType("torchvision.transforms.functional")
    tvf.gaussian_blur = gaussian_blur
    tv.transforms, tvt.functional = tvt, tvf
    tv.__version__ = "0.0-shim"
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tvt,
                        "torchvision.transforms.functional": tvf})


def _install_plotting_patch() -> str:
    """Register ``ptyrad.plotting.basic`` compiled from a 3.11-compatible copy of its source."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("ptyrad")
    path = Path(spec.submodule_search_locations[0]) / "plotting" / "basic.py"
    src = path.read_text()
    try:
        compile(src, str(path), "exec")
        return "not needed"
    except SyntaxError:
        pass
    fixed = src.replace("{lr_iters['niter'][-1]}", '{lr_iters["niter"][-1]}')
    mod = types.ModuleType("ptyrad.plotting.basic")
    mod.__file__, mod.__package__ = str(path), "ptyrad.plotting"
    try:
        code = compile(fixed, str(path), "exec")
        how = "patched in memory"
    except SyntaxError:
        def _noop(*args, **kwargs):
            return None
        code = None
        names = ("plot_affine_transformation plot_convergence_dashboard plot_loss_curves "
                 "plot_obj_tilts plot_obj_tilts_avg plot_pos_grouping plot_probe_modes "
                 "plot_scan_positions plot_sigmoid_mask plot_slice_thickness "
                 "plot_learning_rates_schedule").split()
        for name in names:
            setattr(mod, name, _noop)
        how = "stubbed"
    sys.modules["ptyrad.plotting.basic"] = mod
    if code is not None:
        exec(code, mod.__dict__)
    return how


# ----------------------------------------------------------------------- params
def build_params(data: dict, niter: int, batch: int, seed: int, output_dir: str,
                 position_lr: float, rand_std: float = 0.0) -> dict:
    """The PtyRAD params dict for a single-slice, 1-probe-mode reconstruction."""
    pats = data["patterns"]
    slow, fast = data["scan_shape"]
    return {
        "init_params": {
            "random_seed": seed,
            "probe_illum_type": "electron",
            "probe_kv": data["kv"],
            "probe_conv_angle": data["convergence"],
            "probe_aberrations": {"C10": -data["defocus"]},  # defocus = -C10
            "meas_Npix": int(pats.shape[-1]),
            "pos_N_scans": int(pats.shape[0]),
            "pos_N_scan_slow": int(slow),
            "pos_N_scan_fast": int(fast),
            "pos_scan_step_size": data["scan_step"],
            "pos_scan_rand_std": rand_std,
            "meas_calibration": {"mode": "dk", "value": data["dk"]},
            "probe_pmode_max": 1,
            "obj_omode_max": 1,
            "obj_Nlayer": 1,
            "obj_slice_thickness": 1.0,
            "meas_flipT": None,
            "meas_source": "custom",
            "meas_params": pats,
            "probe_source": "simu",
            "pos_source": "simu",
            "obj_source": "simu",
        },
        "model_params": {
            "update_params": {
                "obja": {"start_iter": 1, "lr": 5.0e-4, "end_iter": None},
                "objp": {"start_iter": 1, "lr": 5.0e-4, "end_iter": None},
                "obj_tilts": {"start_iter": None, "lr": 0, "end_iter": None},
                "slice_thickness": {"start_iter": None, "lr": 0, "end_iter": None},
                "probe": {"start_iter": 1, "lr": 1.0e-4, "end_iter": None},
                "probe_pos_shifts": {"start_iter": 1 if position_lr else None,
                                     "lr": position_lr, "end_iter": None},
            },
        },
        "recon_params": {
            "NITER": niter,
            "BATCH_SIZE": {"size": batch, "grad_accumulation": 1},
            "GROUP_MODE": "random",
            "SAVE_ITERS": None,
            "output_dir": output_dir,
            "convergence_monitor": None,
            "copy_params": False,
            "compiler_configs": {"enable": False},
        },
    }


# -------------------------------------------------------------------------- run
def _import_ptyrad(verbose: bool):
    _install_torchvision_shim()
    plotting = _install_plotting_patch()
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if verbose:
        from ptyrad.runtime.logging import LoggingManager

        LoggingManager(log_file=None, log_dir=None, show_timestamp=True)
    return torch, plotting


def _tracker(t0: float):
    """Wrap PtyRAD's per-iteration ``recon_step`` to keep the phase after each iteration.

    Returns the record dict: ``times`` (s since ``t0`` at the end of each iteration, the
    time spent copying subtracted) and ``phases``.
    """
    import ptyrad.solver.reconstruction as recon

    record = {"times": [], "phases": [], "overhead": 0.0}
    original = recon.recon_step

    def tracked(*args, **kwargs):
        out = original(*args, **kwargs)
        t = time.perf_counter()
        model = args[2]
        model = model.module if hasattr(model, "module") else model
        record["phases"].append(model.opt_objp.detach().cpu().numpy()[0].sum(0).copy())
        record["times"].append(t - t0 - record["overhead"])
        record["overhead"] += time.perf_counter() - t
        return out

    recon.recon_step = tracked
    return record


def _tracked_summary(record: dict, data: dict, setup_s: float) -> dict:
    from _ptycho_common import aligned_ncc

    times = record["times"]
    ends = [setup_s, *times]
    its = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
    out = {"setup_seconds": setup_s, "iteration_end_seconds": times,
           "tracking_overhead_seconds": record["overhead"],
           "first_iteration_seconds": its[0] if its else float("nan"),
           "seconds_per_iteration_after_first": float(np.mean(its[1:])) if len(its) > 1
           else float("nan")}
    if "truth_phase" in data:
        out["ncc_per_iteration"] = [
            aligned_ncc(ph, data["truth_phase"], data["truth_centers"])[0]
            for ph in record["phases"]]
    return out


def run(data: dict, niter: int, batch: int, seed: int, out: str | None,
        position_lr: float, verbose: bool, track: bool = False, rand_std: float = 0.0) -> dict:
    t_imp = time.perf_counter()
    torch, plotting = _import_ptyrad(verbose)
    import ptyrad
    from ptyrad.params.ptyrad_params import PtyRADParams
    from ptyrad.solver import PtyRADSolver

    import_s = time.perf_counter() - t_imp

    t_init = time.perf_counter()
    record = _tracker(t_init) if track else None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        params = build_params(data, niter, batch, seed, tmp, position_lr, rand_std)
        params = PtyRADParams(**params).model_dump()
        params["params_path"] = None
        solver = PtyRADSolver(params, device=torch.device("cpu"), seed=seed)
        init_s = time.perf_counter() - t_init
        t_run = time.perf_counter()
        solver.run()
        run_s = time.perf_counter() - t_run
    model = solver.reconstruct_results
    iter_times = [float(t) for t in model.iter_times]
    objp = model.opt_objp.detach().cpu().numpy()  # (omode, Nz, Ny, Nx)
    phase = objp[0].sum(0)
    result = {
        "tool": "ptyrad",
        "version": ptyrad.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "niter": niter,
        "batch": batch,
        "probe_modes": 1,
        "n_patterns": int(data["patterns"].shape[0]),
        "npix": int(data["patterns"].shape[-1]),
        "seconds_per_iteration": float(np.mean(iter_times)),
        "seconds_per_iteration_after_first": float(np.mean(iter_times[1:]))
        if len(iter_times) > 1 else float(iter_times[0]),
        "iteration_seconds": iter_times,
        "import_seconds": import_s,
        "init_seconds": init_s,
        "run_seconds": run_s,
        "total_seconds": process_seconds(_T_START),
        "plotting_module": plotting,
        "pos_scan_rand_std": rand_std,
    }
    if record is not None:
        result.update(_tracked_summary(record, data, init_s))
    dx = float(model.dx.detach().cpu())
    centers = (model.crop_pos.detach().cpu().numpy() + np.array(model.opt_probe.shape[-3:-1]) // 2
               + model.opt_probe_pos_shifts.detach().cpu().numpy())
    if "truth_phase" in data:
        from _ptycho_common import aligned_ncc

        ncc, shift = aligned_ncc(phase, data["truth_phase"], data["truth_centers"])
        result["ncc"], result["ncc_shift_px"] = ncc, shift
    if out:
        np.savez(out, object_phase=phase.astype(np.float32), dx=dx,
                 probe_centers=centers.astype(np.float32),
                 iteration_seconds=np.array(iter_times))
        result["output"] = str(out)
    return result


def run_params_file(path: str, truth: str | None, seed: int | None, verbose: bool) -> dict:
    """Run a PtyRAD parameter file as ``ptyrad run`` does (on the CPU, one thread)."""
    torch, plotting = _import_ptyrad(verbose)
    import ptyrad
    from ptyrad.params import load_params
    from ptyrad.solver import PtyRADSolver

    t0 = time.perf_counter()
    params = load_params(path, validate=True)
    if seed is None:
        seed = params["init_params"].get("random_seed")
    solver = PtyRADSolver(params, device=torch.device("cpu"), seed=seed)
    solver.run()
    run_s = time.perf_counter() - t0
    model = solver.reconstruct_results
    result = {"tool": "ptyrad", "version": ptyrad.__version__, "params": path,
              "niter": params["recon_params"]["NITER"],
              "seconds_per_iteration": float(np.mean(model.iter_times)),
              "run_seconds": run_s, "plotting_module": plotting,
              "total_seconds": process_seconds(_T_START)}
    if truth:
        from _ptycho_common import aligned_ncc, load_inputs

        ref = load_inputs(truth)
        phase = model.opt_objp.detach().cpu().numpy()[0].sum(0)
        result["ncc"] = aligned_ncc(phase, ref["truth_phase"], ref["truth_centers"])[0]
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("npz", nargs="?", help="input .npz (see _ptycho_common.py)")
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output .npz with the object phase")
    p.add_argument("--position-lr", type=float, default=0.0,
                   help="learning rate of the position shifts (0: fixed positions)")
    p.add_argument("--self-test", action="store_true",
                   help="simulate a 40x40 scan of 96x96 patterns and reconstruct it")
    p.add_argument("--scan", type=int, default=40, help="self-test scan size")
    p.add_argument("--npix", type=int, default=96, help="self-test detector size")
    p.add_argument("--save-input", default=None, help="self-test: also save the input .npz")
    p.add_argument("--verbose", action="store_true", help="PtyRAD's own log")
    p.add_argument("--track", action="store_true",
                   help="keep the phase after every iteration and report its NCC")
    p.add_argument("--rand-std", type=float, default=0.0,
                   help="pos_scan_rand_std, px (initial random displacement; PtyRAD's "
                   "default is 0.15)")
    p.add_argument("--params", default=None,
                   help="run this PtyRAD parameter file as `ptyrad run` does")
    p.add_argument("--truth", default=None,
                   help="with --params: an input .npz whose truth_phase scores the result")
    args = p.parse_args(argv)
    if args.params:
        print(json.dumps(run_params_file(args.params, args.truth, None, args.verbose)))
        return
    if args.self_test:
        from _ptycho_common import simulate

        data = simulate(scan=(args.scan, args.scan), npix=args.npix)
        data["scan_shape"] = tuple(int(v) for v in data["scan_shape"])
        if args.save_input:
            np.savez(args.save_input, **data)
    elif args.npz:
        from _ptycho_common import load_inputs

        data = load_inputs(args.npz)
    else:
        p.error("give an input .npz or --self-test")
    result = run(data, args.niter, args.batch, args.seed, args.out, args.position_lr,
                 args.verbose, track=args.track, rand_std=args.rand_std)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
