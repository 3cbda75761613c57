"""Benchmark runner: py4DSTEM 0.14.18 single-slice ptychography on one CPU thread.

Run with the peers virtualenv (py4DSTEM 0.14.18), not stem4d's::

    /work/peers/bin/python benchmarks/py4dstem_ptycho_runner.py data.npz --niter 20 --out p4.npz
    /work/peers/bin/python benchmarks/py4dstem_ptycho_runner.py --self-test   # 40x40, 96 px

Input: the ``.npz`` of ``_ptycho_common.py`` (the same file ``ptyrad_runner.py`` reads).
Prints one JSON line (seconds per iteration, total process time including imports, NCC
against ``truth_phase`` when present) and saves the object phase to ``--out``.

Driven as py4DSTEM's tutorials do: a ``DataCube`` (``(Rx, Ry, Qx, Qy)`` =
``(slow, fast, ky, kx)``) with the scan step (Å) and ``dk`` (1/Å) as its calibration,
``SingleslicePtychography(energy, semiangle_cutoff, defocus)`` (py4DSTEM's ``defocus``
is −C10, as in the input), ``preprocess`` with the scan-to-detector rotation forced to
0 and no transpose (the simulated data have none; set ``--com-rotation`` for real
data), then ``reconstruct`` with gradient descent, ``max_batch_size=32``, step size
0.5 and py4DSTEM's default constraints, positions fixed. Seconds per iteration: the
first iteration is timed alone (``reconstruct(num_iter=1, reset=True)``) and the rest
together (``reconstruct(num_iter=N-1, reset=False)``).

``--track`` instead runs ``reconstruct(num_iter=N, reset=True)`` once and records the
object phase after every iteration (a wrapper around the instance's ``_constraints``,
which py4DSTEM calls once at the end of each iteration); the copies are timed and
subtracted, the NCC of each is computed after the run. Times are counted from the
start of the setup (``SingleslicePtychography`` construction and ``preprocess``).
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


def _track(ptycho, t0: float) -> dict:
    """Record the phase after every iteration (see the module docstring)."""
    record = {"times": [], "phases": [], "overhead": 0.0}
    original = ptycho._constraints

    def tracked(*args, **kwargs):
        out = original(*args, **kwargs)
        t = time.perf_counter()
        record["phases"].append(np.angle(np.asarray(out[0])).copy())
        record["times"].append(t - t0 - record["overhead"])
        record["overhead"] += time.perf_counter() - t
        return out

    ptycho._constraints = tracked
    return record


def run(data: dict, niter: int, batch: int, seed: int, out: str | None,
        com_rotation: float, com_transpose: bool, track: bool = False) -> dict:
    t_imp = time.perf_counter()
    import py4DSTEM

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    import_s = time.perf_counter() - t_imp

    t_init = time.perf_counter()
    pats = data["patterns"]
    slow, fast = data["scan_shape"]
    dc = py4DSTEM.DataCube(data=pats.reshape(slow, fast, *pats.shape[1:]))
    dc.calibration.set_R_pixel_size(data["scan_step"])
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(data["dk"])
    dc.calibration.set_Q_pixel_units("A^-1")
    ptycho = py4DSTEM.process.phase.SingleslicePtychography(
        datacube=dc, energy=data["kv"] * 1e3, semiangle_cutoff=data["convergence"],
        defocus=data["defocus"], device="cpu", verbose=False,
    )
    ptycho = ptycho.preprocess(
        plot_center_of_mass=False, plot_rotation=False, plot_probe_overlaps=False,
        force_com_rotation=com_rotation, force_com_transpose=com_transpose,
        fit_function="constant",
    )
    init_s = time.perf_counter() - t_init

    common = {"max_batch_size": batch, "step_size": 0.5, "seed_random": seed,
              "progress_bar": False}
    record = None
    if track:
        record = _track(ptycho, t_init)
        t0 = time.perf_counter()
        ptycho = ptycho.reconstruct(num_iter=niter, reset=True, **common)
        total = time.perf_counter() - t0 - record["overhead"]
        first = record["times"][0] - init_s
        rest = total - first
    else:
        t0 = time.perf_counter()
        ptycho = ptycho.reconstruct(num_iter=1, reset=True, **common)
        first = time.perf_counter() - t0
        rest = 0.0
        if niter > 1:
            t1 = time.perf_counter()
            ptycho = ptycho.reconstruct(num_iter=niter - 1, reset=False, **common)
            rest = time.perf_counter() - t1
    obj = np.asarray(ptycho.object)
    phase = np.angle(obj)
    result = {
        "tool": "py4DSTEM",
        "version": py4DSTEM.__version__,
        "niter": niter,
        "batch": batch,
        "n_patterns": int(pats.shape[0]),
        "npix": int(pats.shape[-1]),
        "seconds_per_iteration": (first + rest) / niter,
        "seconds_per_iteration_after_first": rest / (niter - 1) if niter > 1 else first,
        "first_iteration_seconds": first,
        "import_seconds": import_s,
        "init_seconds": init_s,
        "run_seconds": first + rest,
        "total_seconds": process_seconds(_T_START),
        "sampling_A": [float(s) for s in ptycho.sampling],
    }
    if "truth_phase" in data:
        from _ptycho_common import aligned_ncc

        ncc, shift = aligned_ncc(phase, data["truth_phase"], data["truth_centers"])
        result["ncc"], result["ncc_shift_px"] = ncc, shift
    if record is not None:
        times = record["times"]
        ends = [init_s, *times]
        its = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
        result.update({"setup_seconds": init_s, "iteration_end_seconds": times,
                       "tracking_overhead_seconds": record["overhead"],
                       "first_iteration_seconds": its[0],
                       "seconds_per_iteration_after_first": float(np.mean(its[1:]))
                       if len(its) > 1 else float("nan")})
        if "truth_phase" in data:
            from _ptycho_common import aligned_ncc

            result["ncc_per_iteration"] = [
                aligned_ncc(ph, data["truth_phase"], data["truth_centers"])[0]
                for ph in record["phases"]]
    if out:
        np.savez(out, object_phase=phase.astype(np.float32),
                 dx=float(ptycho.sampling[0]),
                 positions_px=np.asarray(ptycho.positions) / float(ptycho.sampling[0]))
        result["output"] = str(out)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("npz", nargs="?", help="input .npz (see _ptycho_common.py)")
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output .npz with the object phase")
    p.add_argument("--com-rotation", type=float, default=0.0,
                   help="scan-to-detector rotation forced in preprocess, degrees")
    p.add_argument("--com-transpose", action="store_true",
                   help="force a transpose of the detector in preprocess")
    p.add_argument("--self-test", action="store_true",
                   help="simulate a 40x40 scan of 96x96 patterns and reconstruct it")
    p.add_argument("--scan", type=int, default=40, help="self-test scan size")
    p.add_argument("--npix", type=int, default=96, help="self-test detector size")
    p.add_argument("--track", action="store_true",
                   help="keep the phase after every iteration and report its NCC")
    args = p.parse_args(argv)
    if args.self_test:
        from _ptycho_common import simulate

        data = simulate(scan=(args.scan, args.scan), npix=args.npix)
        data["scan_shape"] = tuple(int(v) for v in data["scan_shape"])
    elif args.npz:
        from _ptycho_common import load_inputs

        data = load_inputs(args.npz)
    else:
        p.error("give an input .npz or --self-test")
    result = run(data, args.niter, args.batch, args.seed, args.out, args.com_rotation,
                 args.com_transpose, track=args.track)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
