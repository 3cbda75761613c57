"""Ptychography: stem4d vs PtyRAD 1.0.0 vs py4DSTEM 0.14.18, each on one CPU core.

One run, one simulated dataset (``_ptycho_common.simulate``: a 40 x 40 scan of 96 x 96
patterns, 300 kV, 20 mrad, 100 Å underfocus, 0.6 Å steps, a thin phase object of
Gaussian atoms with a known phase), noise-free and at a realistic dose (Poisson noise at
``--dose`` e/Å²). Every tool runs in its own subprocess pinned to one core
(``taskset -c CPU``), with one thread everywhere (``OMP/MKL/OPENBLAS_NUM_THREADS=1``,
``torch.set_num_threads(1)``, XLA's CPU client without its thread pool):

* stem4d: ``reconstruct`` (batch 32, 1 probe mode, single slice, stem4d's default
  learning rates and constraints) in this Python (``--worker stem4d``);
* PtyRAD 1.0.0 (``ptyrad_runner.py --track``: batch 32, 1 probe mode, single slice,
  PtyRAD's default learning rates and constraints) in the peers' environment;
* py4DSTEM 0.14.18 ``SingleslicePtychography`` (``py4dstem_ptycho_runner.py --track``:
  batch 32, step 0.5, default constraints).

Positions are exact and fixed for all three. Each run keeps the object phase after every
iteration through the tool's per-iteration hook (stem4d's ``callback``; wrappers of
PtyRAD's ``recon_step`` and py4DSTEM's ``_constraints``); the copy time is subtracted and
the NCC against the truth (``_ptycho_common.aligned_ncc``, best sub-pixel shift, scanned
region) is computed after the run. Reported per tool: setup time, first iteration (for
stem4d: with JIT compilation), seconds per iteration over iterations 2..N, the iteration
and the time (from the start of the setup: compilation and initialization included) at
which the phase first reaches NCC 0.99, and the NCC after N iterations.

Whole process: the same PtyRAD-style YAML file (``meas_params`` a ``.npy`` of the
noise-free patterns, N iterations, batch 32, 1 probe mode, 1 slice, PtyRAD's default
learning rates and constraints, results saved at the end) is run by
``stem4d ptycho run FILE`` and by PtyRAD the way ``ptyrad run FILE`` runs it
(``ptyrad_runner.py --params FILE``, with the runner's two import fixes); the wall time
of each whole process (interpreter start, imports, compilation, loading, iterations,
writing results) is measured from here.

    python benchmarks/bench_ptycho.py --peers-python /work/peers/bin/python

Prints Markdown tables, the targets and the exact commands; ``--json`` saves all numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _ptycho_common import aligned_ncc, load_inputs, simulate  # noqa: E402

THRESHOLD = 0.99
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = "1"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pinned(cmd: list[str], cpu: int) -> list[str]:
    return (["taskset", "-c", str(cpu)] + cmd) if shutil.which("taskset") else cmd


def _run(cmd: list[str], cpu: int, cwd: Path, label: str) -> tuple[dict | None, float]:
    """Run a pinned subprocess; its last JSON line and the wall time of the process."""
    full = _pinned(cmd, cpu)
    print(f"  {label}: {' '.join(full)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(full, cwd=cwd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{label} failed (exit {proc.returncode})")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), wall


# --------------------------------------------------------------------- stem4d worker
def worker_stem4d(npz: str, niter: int, batch: int) -> dict:
    """stem4d's reconstruction of a runner input, tracked like the peers' runs."""
    t_import = time.perf_counter()
    import xarray as xr

    from stem4d.ptycho.solver import reconstruct

    import_s = time.perf_counter() - t_import
    data = load_inputs(npz)
    n = data["patterns"].shape[-1]
    q = (np.arange(n) - n // 2) * data["dk"]
    patterns = xr.DataArray(
        data["patterns"], dims=("scan", "qx", "qy"),
        coords={"qx": ("qx", q, {"units": "1/Å"}), "qy": ("qy", q.copy(), {"units": "1/Å"})})
    params = {
        "probe": {"beam_energy": data["kv"] * 1e3, "convergence_semiangle": data["convergence"],
                  "aberrations": {"defocus": data["defocus"]}, "modes": 1},
        "object": {"slices": 1},
        "scan": {"shape": list(data["scan_shape"]), "step": data["scan_step"]},
        "solver": {"iterations": niter, "batch_size": batch},
    }
    record = {"times": [], "phases": [], "overhead": 0.0}

    def track(iteration, loss, phase):
        t = time.perf_counter()
        record["phases"].append(np.asarray(phase.values).copy())
        record["times"].append(t - t0 - record["overhead"])
        record["overhead"] += time.perf_counter() - t

    t0 = time.perf_counter()
    result = reconstruct(patterns, params, progress=False, callback=track)
    ends = [0.0, *record["times"]]
    its = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
    import jax

    return {
        "tool": "stem4d", "jax": jax.__version__, "niter": niter, "batch": batch,
        "probe_modes": 1, "device": result.attrs["device"],
        "setup_seconds": 0.0,  # reconstruct() does its setup inside the first iteration
        "first_iteration_seconds": its[0],
        "seconds_per_iteration_after_first": float(np.mean(its[1:])),
        "iteration_end_seconds": record["times"],
        "tracking_overhead_seconds": record["overhead"],
        "first_step_seconds": result.attrs["first_step_seconds"],
        "import_seconds": import_s,
        "ncc_per_iteration": [aligned_ncc(ph, data["truth_phase"], data["truth_centers"])[0]
                              for ph in record["phases"]],
    }


# ------------------------------------------------------------------------- data
def make_data(workdir: Path, dose: float, scan: int = 40, npix: int = 96,
              seed: int = 0) -> dict[str, Path]:
    data = simulate(scan=(scan, scan), npix=npix, bf_radius_px=npix / 4)
    clean = workdir / "sim_clean.npz"
    np.savez(clean, **data)
    np.save(workdir / "sim_clean_patterns.npy", data["patterns"])
    electrons = dose * data["scan_step"] ** 2  # per pattern (the simulated sum is 1)
    noisy = np.random.default_rng(seed + 1).poisson(data["patterns"] * electrons)
    dosed = dict(data, patterns=noisy.astype(np.float32))
    noisy_path = workdir / "sim_dose.npz"
    np.savez(noisy_path, **dosed)
    return {"noise-free": clean, f"dose {dose:g} e/Å²": noisy_path}


def cli_yaml(workdir: Path, npz: Path, niter: int, batch: int) -> Path:
    """The PtyRAD-style parameter file both whole-process runs use."""
    import yaml

    data = load_inputs(str(npz))
    slow, fast = data["scan_shape"]
    params = {
        "init_params": {
            "probe_kv": data["kv"], "probe_conv_angle": data["convergence"],
            "probe_aberrations": {"C10": -data["defocus"]},
            "meas_Npix": int(data["patterns"].shape[-1]),
            "pos_N_scan_slow": int(slow), "pos_N_scan_fast": int(fast),
            "pos_scan_step_size": data["scan_step"], "pos_scan_rand_std": 0.0,
            "meas_calibration": {"mode": "dk", "value": data["dk"]},
            "probe_pmode_max": 1, "obj_omode_max": 1, "obj_Nlayer": 1,
            "obj_slice_thickness": 1.0, "meas_flipT": None, "random_seed": 0,
            "meas_params": {"path": str(workdir / "sim_clean_patterns.npy")},
        },
        "model_params": {"update_params": {
            "probe_pos_shifts": {"start_iter": None, "lr": 0.0, "end_iter": None}}},
        "recon_params": {
            "NITER": niter, "BATCH_SIZE": {"size": batch, "grad_accumulation": 1},
            "GROUP_MODE": "random", "SAVE_ITERS": niter,
            "output_dir": str(workdir / "cli_ptyrad"), "prefix_time": False,
            "compiler_configs": {"enable": False},
        },
    }
    path = workdir / "cli.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ------------------------------------------------------------------------ report
def _first_reaching(run: dict) -> tuple[int | None, float | None]:
    for i, (ncc, t) in enumerate(zip(run["ncc_per_iteration"], run["iteration_end_seconds"],
                                     strict=True)):
        if ncc >= THRESHOLD:
            return i + 1, t
    return None, None


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(runs: dict, process: dict, niter: int, datasets: list[str], cmd: str) -> list[str]:
    clean = datasets[0]
    lines = [f"Command: `{cmd}`", "",
             f"| tool | setup (s) | first iteration (s) | s/iteration (2..{niter}) | "
             f"iterations to NCC {THRESHOLD} | time to NCC {THRESHOLD} (s) | "
             + " | ".join(f"NCC after {niter}, {d}" for d in datasets) + " |",
             "|---|" + "---|" * (5 + len(datasets))]
    summary = {}
    for tool in ("stem4d", "ptyrad", "py4DSTEM"):
        r = runs[clean][tool]
        it, t = _first_reaching(r)
        nccs = [runs[d][tool]["ncc_per_iteration"][-1] for d in datasets]
        summary[tool] = {"spi": r["seconds_per_iteration_after_first"], "t99": t,
                         "ncc": nccs[0]}
        name = {"ptyrad": "PtyRAD 1.0.0", "py4DSTEM": "py4DSTEM 0.14.18"}.get(tool, "stem4d")
        lines.append(f"| {name} | {_fmt(r['setup_seconds'], '.2f')} | "
                     f"{_fmt(r['first_iteration_seconds'], '.2f')} | "
                     f"{_fmt(r['seconds_per_iteration_after_first'])} | {_fmt(it, 'd')} | "
                     f"{_fmt(t, '.2f')} | " + " | ".join(f"{v:.4f}" for v in nccs) + " |")
    lines += ["", "| whole process (same PtyRAD-style YAML, noise-free data) | wall time (s) | "
              f"NCC after {niter} |", "|---|---|---|"]
    for key, label in (("stem4d", "`stem4d ptycho run cli.yaml`"),
                       ("ptyrad", "PtyRAD, as `ptyrad run cli.yaml`")):
        lines.append(f"| {label} | {process[key]['wall']:.1f} | "
                     f"{_fmt(process[key].get('ncc'), '.4f')} |")
    s, p, f = summary["stem4d"], summary["ptyrad"], summary["py4DSTEM"]
    best_ncc = max(p["ncc"], f["ncc"])
    peer_t = [x for x in (p["t99"], f["t99"]) if x is not None]
    checks = [
        ("s/iteration <= 1/3 of PtyRAD's (same batch and modes)",
         s["spi"] / p["spi"], s["spi"] <= p["spi"] / 3),
        (f"NCC after {niter} >= best peer's ({best_ncc:.4f})", s["ncc"] - best_ncc,
         s["ncc"] >= best_ncc),
        (f"time to NCC {THRESHOLD} <= 1/3 of the best peer's",
         (s["t99"] / min(peer_t)) if s["t99"] and peer_t else float("nan"),
         bool(s["t99"] and peer_t and s["t99"] <= min(peer_t) / 3)),
        ("whole process <= 1/2 of PtyRAD's", process["stem4d"]["wall"] / process["ptyrad"]["wall"],
         process["stem4d"]["wall"] <= process["ptyrad"]["wall"] / 2),
    ]
    lines += ["", "| target | stem4d / peer (or NCC difference) | met |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(v)} | {'yes' if ok else 'NO'} |" for name, v, ok in checks]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dose", type=float, default=1e4,
                   help="dose of the noisy variant, e/Å² (default 1e4)")
    p.add_argument("--cpu", type=int, default=0, help="the core every run is pinned to")
    p.add_argument("--scan", type=int, default=40, help="scan positions per side")
    p.add_argument("--npix", type=int, default=96, help="detector pixels per side")
    p.add_argument("--peers-python", default="/work/peers/bin/python")
    p.add_argument("--workdir", default=None, help="keep inputs and outputs here")
    p.add_argument("--json", default=None, help="save all numbers to this file")
    p.add_argument("--worker", choices=["stem4d"], help=argparse.SUPPRESS)
    p.add_argument("npz", nargs="?", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker_stem4d(args.npz, args.niter, args.batch)))
        return

    cmd = "python benchmarks/bench_ptycho.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ptycho_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"simulating ({args.scan}x{args.scan} scan, {args.npix}x{args.npix} patterns) "
          f"into {work}", flush=True)
    inputs = make_data(work, args.dose, args.scan, args.npix)
    datasets = list(inputs)
    common = ["--niter", str(args.niter), "--batch", str(args.batch)]
    runs: dict[str, dict] = {d: {} for d in datasets}
    for d, npz in inputs.items():
        print(f"{d}:", flush=True)
        runs[d]["stem4d"], _ = _run([sys.executable, str(Path(__file__).resolve()),
                                     "--worker", "stem4d", str(npz), *common],
                                    args.cpu, work, "stem4d")
        runs[d]["ptyrad"], _ = _run([args.peers_python, str(HERE / "ptyrad_runner.py"),
                                     str(npz), "--track", *common], args.cpu, work, "PtyRAD")
        runs[d]["py4DSTEM"], _ = _run([args.peers_python,
                                       str(HERE / "py4dstem_ptycho_runner.py"), str(npz),
                                       "--track", *common], args.cpu, work, "py4DSTEM")
    print("whole process, same parameter file:", flush=True)
    yaml_path = cli_yaml(work, inputs[datasets[0]], args.niter, args.batch)
    stem4d_cli = shutil.which("stem4d")
    stem_cmd = ([stem4d_cli] if stem4d_cli else [sys.executable, "-m", "stem4d.cli"]) + [
        "ptycho", "run", str(yaml_path), "--out", str(work / "cli_stem4d"), "--quiet"]
    _, wall_s = _run(stem_cmd, args.cpu, work, "stem4d ptycho run")
    import xarray as xr

    import stem4d

    tree = stem4d.open(work / "cli_stem4d" / "ptycho.nc")
    truth = load_inputs(str(inputs[datasets[0]]))
    phase = tree["object"]["phase"].values[0].sum(0)
    process = {"stem4d": {"wall": wall_s, "ncc": aligned_ncc(
        phase, truth["truth_phase"], truth["truth_centers"])[0]}}
    assert isinstance(tree, xr.DataTree)
    res, wall_p = _run([args.peers_python, str(HERE / "ptyrad_runner.py"), "--params",
                        str(yaml_path), "--truth", str(inputs[datasets[0]])], args.cpu, work,
                       "PtyRAD run")
    process["ptyrad"] = {"wall": wall_p, "ncc": res.get("ncc"), "runner": res}
    print()
    print("\n".join(report(runs, process, args.niter, datasets, cmd)))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "process": process}, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
