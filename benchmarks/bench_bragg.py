"""Bragg disk detection: stem4d vs py4DSTEM 0.14.18 and libertem-blobfinder.

One run times and scores every tool on the same in-memory (32, 32, 128, 128) float32
crystal cube from :func:`stem4d.simulate.crystal` (about 42 disks fully inside each
pattern, radius 5 px, origin drift and a mild strain so disks sit off the pixel grid),
noise-free and at a dose of 50 counts per pixel in the central disk, with the vacuum
probe from :func:`stem4d.simulate.probe_disk`. Each tool runs in its own subprocess
(stem4d in this Python, py4DSTEM and blobfinder in the peers' virtual environment),
loads the data into memory first and times the whole detection on all 1024 patterns
(best of ``--repeat``); the found peaks go back to this process, which scores them all
with one function against the known disk centres:

* RMS position error (px) over the fully-inside true disks matched to a found peak (the
  nearest within 2 px), and the mean radial bias (px; negative = pulled towards the
  central beam) over the matched diffracted disks;
* recall = matched / fully-inside true disks;
* false positives per pattern = found peaks farther than 2 px from every true disk
  (partially-inside disks count as allowed matches), plus extra peaks on one disk.

Results are printed as Markdown tables.

    python benchmarks/bench_bragg.py --peers-python /work/peers/bin/python

Conventions: every tool's peaks are compared in detector pixels (row, column) =
(qx, qy). stem4d gets a cube in pixel units with no origin (q coordinate = pixel index)
and its peaks are converted through ``detector_qx``/``detector_qy`` anyway; py4DSTEM's
raw vectors are pixels (qx, qy); blobfinder returns (y, x) = (row, column).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _tool_runs import run_tools

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
TAG = "bragg_v1"
SCAN, DET = (32, 32), (128, 128)
RADIUS = 5.0  # disk radius, px
DOSE = 50.0  # counts per pixel in the central disk
MATCH = 2.0  # px: a found peak within this distance of a true disk matches it
# geometry-dependent thresholds given to py4DSTEM and stem4d alike (py4DSTEM's defaults
# 60 / 20 are for other data: g vectors here are 17-19 px, the disks 5 px from the edge)
MIN_SPACING = 10.0  # px
EDGE = 4  # px
MAX_PEAKS = 70
UPSAMPLE = 16
SIGMOID_RADII = (RADIUS, 4 * RADIUS)  # px: tutorial-style trench (probe radius x 1, x 4)
DATASETS = ("noise-free", f"dose {DOSE:g}")


def _paths() -> dict[str, Path]:
    return {"noise-free": DATA / f"{TAG}_clean.npy", DATASETS[1]: DATA / f"{TAG}_dose.npy",
            "probe": DATA / f"{TAG}_probe.npy", "truth": DATA / f"{TAG}_truth.npz"}


def make_data() -> dict[str, Path]:
    """Simulate the cubes, probe and truth once (``benchmarks/_data``, git-ignored)."""
    paths = _paths()
    if all(p.exists() for p in paths.values()):
        return paths
    sys.path.insert(0, str(HERE.parent))
    from stem4d import simulate

    DATA.mkdir(exist_ok=True)
    ramp = np.linspace(-1.0, 1.0, SCAN[0])
    strain = {"exx": 0.005 * ramp[:, None] * np.ones(SCAN[1]),  # +-0.5 % along rx
              "exy": 0.003 * np.ones(SCAN[0])[:, None] * ramp[None, :],  # +-0.3 % along ry
              "theta": 0.002}
    kw = dict(g1=(17.3, 3.1), g2=(-4.4, 18.2), disk_radius=RADIUS, edge_width=0.5,
              intensity_decay=45.0, background=0.002, strain=strain, seed=1,
              origin_drift=(0.05, 0.02, -0.02, 0.06))  # origin moves +-1.1 px
    cube, truth = simulate.crystal(SCAN, DET, **kw)
    noisy, _ = simulate.crystal(SCAN, DET, dose=DOSE, **kw)
    np.save(paths["noise-free"], np.ascontiguousarray(cube.values, dtype=np.float32))
    np.save(paths[DATASETS[1]], np.ascontiguousarray(noisy.values, dtype=np.float32))
    np.save(paths["probe"], simulate.probe_disk(DET, RADIUS, edge_width=0.5).values)
    np.savez(paths["truth"], qx=truth["bragg_qx"].values, qy=truth["bragg_qy"].values,
             inside=truth["bragg_inside"].values, h=truth["bragg_h"].values,
             k=truth["bragg_k"].values)
    return paths


def best(func, repeat: int):
    """``(min seconds, last result)`` over ``repeat`` full runs (the first one warms up)."""
    times, out = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _pad(peaks: list[np.ndarray]) -> np.ndarray:
    """List of (n_i, 2) pixel arrays -> (N, max n_i, 2) NaN-padded."""
    width = max([len(p) for p in peaks] + [1])
    out = np.full((len(peaks), width, 2), np.nan)
    for i, p in enumerate(peaks):
        out[i, :len(p)] = p
    return out


# ------------------------------------------------------------------ workers
def worker_stem4d(cubes: dict[str, np.ndarray], probe: np.ndarray, repeat: int) -> dict:
    sys.path.insert(0, str(HERE.parent))
    import scipy.fft

    import stem4d as s4
    import stem4d.probe as s4probe
    from stem4d.bragg import find_bragg_disks

    rows, found = [], {}
    for name, a in cubes.items():  # the FFT floor: one batched real FFT pair
        stack = a.reshape(-1, *DET)
        t, _ = best(lambda stack=stack: scipy.fft.irfft2(
            scipy.fft.rfft2(stack, workers=2), s=DET, workers=2), repeat)
        rows.append({"tool": "FFT floor", "subpixel": "rfft2 + irfft2, workers=2",
                     "kernel": "-", "dataset": name, "seconds": t})
    kernels = {"flat": s4probe.kernel(probe, "flat").values,
               "sigmoid": s4probe.kernel(probe, "sigmoid", radii=SIGMOID_RADII).values}
    np.savez(DATA / f"{TAG}_kernels_stem4d.npz", **kernels)
    # stem4d's kernels move the probe by a Fourier shift, py4DSTEM's sigmoid kernel by a
    # bilinear one (they differ by ~10 % of the maximum): run stem4d on py4DSTEM's
    # sigmoid array too, so that one template is identical
    other = DATA / f"{TAG}_kernels_py4dstem.npz"
    if other.exists():
        kernels["sigmoid (py4DSTEM's array)"] = np.load(other)["sigmoid"].astype(np.float32)
    params = dict(min_spacing=MIN_SPACING, edge_boundary=EDGE, max_num_peaks=MAX_PEAKS)
    extra_vars: dict[str, dict[int, int]] = {}
    for name, a in cubes.items():
        cube = s4.datacube(a, q_step=1.0, q_units="pixels")  # q coordinate = pixel index
        for kname, template in kernels.items():
            for sub in ("poly", "multicorr"):
                kw = dict(params, subpixel=sub)
                if sub == "multicorr":
                    kw["upsample_factor"] = UPSAMPLE
                t, ds = best(lambda cube=cube, template=template, kw=kw: find_bragg_disks(
                    cube, template, **kw), repeat)
                ds = ds.compute()
                for var in set(ds.data_vars) - {"qx", "qy", "intensity", "count"}:
                    vals = np.nan_to_num(np.asarray(ds[var].values, dtype=float))
                    vals = vals[vals > 0]  # e.g. refinement_flag 1 (moved), 2 (fell back)
                    extra_vars[f"{var}, {sub}/{kname}, {name}"] = {
                        int(v): int((vals == v).sum()) for v in np.unique(vals)}
                det_x = ds["detector_qx"].values if "detector_qx" in ds.coords \
                    else cube["qx"].values
                det_y = ds["detector_qy"].values if "detector_qy" in ds.coords \
                    else cube["qy"].values
                qx = (ds["qx"].transpose("rx", "ry", "peak").values - det_x[0]) / (
                    det_x[1] - det_x[0])
                qy = (ds["qy"].transpose("rx", "ry", "peak").values - det_y[0]) / (
                    det_y[1] - det_y[0])
                key = f"r{len(rows)}"
                found[key] = np.stack([qx, qy], -1).reshape(-1, qx.shape[-1], 2)
                rows.append({"tool": "stem4d", "subpixel": sub, "kernel": kname,
                             "dataset": name, "seconds": t, "key": key})
    defaults = {k: repr(p.default) for k, p in
                inspect.signature(find_bragg_disks).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {"rows": rows, "found": found,
            "notes": {"stem4d defaults": defaults, "extra variables": extra_vars,
                      "probe radius (px)": float(s4probe.measure_disk(probe)["radius"])}}


def worker_py4dstem(cubes: dict[str, np.ndarray], probe: np.ndarray, repeat: int) -> dict:
    import py4DSTEM
    from py4DSTEM.process.calibration import get_probe_size

    p = py4DSTEM.Probe(data=probe)
    kernels = {"flat": p.get_kernel(mode="flat"),
               "sigmoid": p.get_kernel(mode="sigmoid", radii=SIGMOID_RADII)}
    np.savez(DATA / f"{TAG}_kernels_py4dstem.npz", **kernels)
    rows, found = [], {}
    for name, a in cubes.items():
        dc = py4DSTEM.DataCube(data=a)
        for kname, template in kernels.items():
            for sub in ("poly", "multicorr"):
                def run(dc=dc, template=template, sub=sub):
                    return dc.find_Bragg_disks(
                        template=template, subpixel=sub, upsample_factor=UPSAMPLE,
                        minPeakSpacing=MIN_SPACING, edgeBoundary=EDGE, maxNumPeaks=MAX_PEAKS)
                t, bv = best(run, repeat)
                peaks = []
                for rx in range(SCAN[0]):
                    for ry in range(SCAN[1]):
                        v = bv.raw[rx, ry]
                        peaks.append(np.stack([v.qx, v.qy], -1))
                key = f"r{len(rows)}"
                found[key] = _pad(peaks)
                rows.append({"tool": "py4DSTEM", "subpixel": sub, "kernel": kname,
                             "dataset": name, "seconds": t, "key": key})
    return {"rows": rows, "found": found,
            "notes": {"py4DSTEM": py4DSTEM.__version__,
                      "probe radius (px)": float(get_probe_size(probe)[0])}}


def worker_blobfinder(cubes: dict[str, np.ndarray], probe: np.ndarray, repeat: int) -> dict:
    import libertem.api as lt
    import libertem_blobfinder
    from libertem.udf.sum import SumUDF
    from libertem_blobfinder.base.correlation import log_scale
    from libertem_blobfinder.common.correlation import get_correlation
    from libertem_blobfinder.common.patterns import BackgroundSubtraction, RadialGradient
    from libertem_blobfinder.udf.correlation import run_fastcorrelation
    from skimage.feature import peak_local_max

    ctx = lt.Context.make_with("inline")
    configs = [("centre of mass", "RadialGradient r=5", RadialGradient(RADIUS), False),
               (f"upsampled DFT x{UPSAMPLE}", "RadialGradient r=5", RadialGradient(RADIUS),
                UPSAMPLE),
               (f"upsampled DFT x{UPSAMPLE}", "BackgroundSubtraction r=5/7.5",
                BackgroundSubtraction(RADIUS), UPSAMPLE)]
    rows, found, n_peaks = [], {}, {}
    for name, a in cubes.items():
        ds = ctx.load("memory", data=a, sig_dims=2)
        for sub, kname, pattern, upsample in configs:
            def run(ds=ds, pattern=pattern, upsample=upsample):
                # blobfinder's workflow (as run_blobfinder): candidate peaks from the
                # log-scaled sum frame, then each one refined in every frame. Its
                # num_peaks is a user choice; here it is where the sorted sum-frame
                # correlation maxima drop most (relative), which gives the 50 disks
                # visible in the sum for every pattern/dataset (a fixed 10 % threshold
                # lets 16 background maxima through at dose 50 with RadialGradient)
                total = ctx.run_udf(ds, SumUDF())["intensity"].data
                corr = get_correlation(log_scale(total, out=None), pattern)
                cand = peak_local_max(corr, num_peaks=500)
                vals = corr[cand[:, 0], cand[:, 1]]
                pos = np.flatnonzero(vals[:-1] > 0)
                cand = cand[:int(pos[np.argmin(vals[pos + 1] / vals[pos])]) + 1]
                res = run_fastcorrelation(ctx, ds, cand, pattern, upsample=upsample)
                return cand, res["refineds"].data
            t, (cand, refined) = best(run, repeat)
            key = f"r{len(rows)}"
            found[key] = refined.reshape(-1, refined.shape[-2], 2).astype(np.float64)
            n_peaks[f"{kname}, {name}"] = len(cand)
            rows.append({"tool": "blobfinder", "subpixel": sub, "kernel": kname,
                         "dataset": name, "seconds": t, "key": key})
    return {"rows": rows, "found": found,
            "notes": {"libertem-blobfinder": libertem_blobfinder.__version__,
                      "candidates from the sum frame": n_peaks}}


WORKERS = {"stem4d": worker_stem4d, "py4DSTEM": worker_py4dstem,
           "blobfinder": worker_blobfinder}


def run_worker(name: str, repeat: int, out: str) -> None:
    paths = _paths()
    cubes = {d: np.array(np.load(paths[d], mmap_mode="r")) for d in DATASETS}  # in memory
    probe = np.load(paths["probe"])
    res = WORKERS[name](cubes, probe, repeat)
    np.savez(out, **res.pop("found"))
    print(json.dumps(res))


# ------------------------------------------------------------------ scoring
def score(found: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Score found peaks ``(N, P, 2)`` (pixels, NaN-padded) against the truth."""
    tq = np.stack([truth["qx"], truth["qy"]], -1).reshape(found.shape[0], -1, 2)
    inside = truth["inside"].reshape(found.shape[0], -1)
    central = ((truth["h"] == 0) & (truth["k"] == 0))
    dist = np.linalg.norm(tq[:, :, None, :] - found[:, None, :, :], axis=-1)  # (N, T, P)
    dist = np.where(np.isnan(dist), np.inf, dist)
    # true disks -> nearest found peak
    near_found = dist.argmin(2) if dist.shape[2] else np.zeros(inside.shape, int)
    d_true = dist.min(2) if dist.shape[2] else np.full(inside.shape, np.inf)
    matched = inside & (d_true < MATCH)
    err = d_true[matched]
    # radial bias of the diffracted disks: (found - true) . unit(true - origin)
    origin = tq[:, central.argmax()][:, None, :]
    fpos = np.take_along_axis(found, near_found[..., None], axis=1)
    out_dir = tq - origin
    norm = np.linalg.norm(out_dir, axis=-1, keepdims=True)
    radial = ((fpos - tq) * out_dir / np.where(norm > 0, norm, 1)).sum(-1)
    diffracted = matched & ~central[None, :]
    # found peaks -> nearest true disk (any, partially inside included)
    valid = np.isfinite(found[..., 0])
    d_found = dist.min(1)
    near_true = dist.argmin(1)
    far = valid & (d_found >= MATCH)
    hit = valid & (d_found < MATCH)
    n, t = inside.shape
    per_disk = np.bincount((np.arange(n)[:, None] * t + near_true)[hit], minlength=n * t)
    fp = int(far.sum() + np.maximum(per_disk - 1, 0).sum())
    # py4DSTEM multicorr fallback: both coordinates exactly on the 1/16 grid = the
    # argmax hit the edge of its +-0.75 px window (its parabola step is skipped)
    grid = valid & np.all(np.abs(found * UPSAMPLE - np.round(found * UPSAMPLE)) < 1e-6, -1)
    on_grid = np.take_along_axis(grid, near_found, axis=1) & matched
    return {"rms": float(np.sqrt(np.mean(err**2))) if err.size else float("nan"),
            "max": float(err.max()) if err.size else float("nan"),
            "bias": float(radial[diffracted].mean()) if diffracted.any() else float("nan"),
            "recall": float(matched.sum() / inside.sum()), "fp": fp / n,
            "grid_n": int(on_grid.sum()), "grid_frac": float(on_grid.sum() / max(matched.sum(), 1)),
            "grid_rms": float(np.sqrt(np.mean(d_true[on_grid] ** 2))) if on_grid.any()
            else float("nan"),
            "n_true": int(inside.sum()), "n_found": int(valid.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-python", default=os.environ.get(
        "STEM4D_PEERS_PYTHON", "/work/peers/bin/python"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default="stem4d,py4DSTEM,blobfinder",
                        help="comma-separated subset of stem4d, py4DSTEM, blobfinder "
                             "(py4DSTEM runs first: stem4d reuses its sigmoid kernel)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.repeat, args.out)
        return
    paths = make_data()
    truth = dict(np.load(paths["truth"]))
    n_pat = SCAN[0] * SCAN[1]
    rows, notes = [], {}
    tools = sorted(args.tools.split(","), key=lambda t: t != "py4DSTEM")
    for name, res, out in run_tools(__file__, tools, args.peers_python, args.repeat,
                                    lambda t: DATA / f"{TAG}_found_{t}.npz"):
        found = np.load(out)
        for row in res["rows"]:
            if "key" in row:
                row.update(score(found[row["key"]], truth))
            rows.append(row)
        notes[name] = res["notes"]

    order = ["FFT floor", "stem4d", "py4DSTEM", "blobfinder"]
    rows.sort(key=lambda r: order.index(r["tool"]))  # stable: configs keep their order
    ref = {(r["subpixel"], r["kernel"].split(" ")[0], r["dataset"]): n_pat / r["seconds"]
           for r in rows if r["tool"] == "py4DSTEM"}
    for dataset in DATASETS:
        print(f"\n### {dataset} ({n_pat} patterns, {int(truth['inside'].sum())} "
              "fully-inside disks)\n")
        print("| tool | subpixel | kernel | patterns/s | vs py4DSTEM | RMS error (px) "
              "| max error (px) | radial bias (px) | recall (%) | false pos. / pattern |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r["dataset"] != dataset:
                continue
            pps = n_pat / r["seconds"]
            p = ref.get((r["subpixel"], r["kernel"].split(" ")[0], dataset))
            ratio = f"{pps / p:.1f}x" if p and r["tool"] == "stem4d" else "–"
            if "rms" not in r:
                print(f"| {r['tool']} | {r['subpixel']} | {r['kernel']} | {pps:.0f} | {ratio} "
                      "| – | – | – | – | – |")
                continue
            print(f"| {r['tool']} | {r['subpixel']} | {r['kernel']} | {pps:.0f} | {ratio} "
                  f"| {r['rms']:.3f} | {r['max']:.2f} | {r['bias']:+.3f} "
                  f"| {100 * r['recall']:.2f} | {r['fp']:.3f} |")
    print("\npy4DSTEM multicorr peaks stuck at the edge of its +-0.75 px search window "
          "(both coordinates on the 1/16 grid; parabola skipped):")
    for r in rows:
        if r["tool"] == "py4DSTEM" and r["subpixel"] == "multicorr":
            print(f"- {r['kernel']}, {r['dataset']}: {r['grid_n']} of the matched disks "
                  f"({100 * r['grid_frac']:.3f} %), RMS error of those {r['grid_rms']:.3f} px")
    kern = {t: DATA / f"{TAG}_kernels_{t.lower()}.npz" for t in ("stem4d", "py4DSTEM")}
    if all(k.exists() for k in kern.values()):
        a, b = (np.load(k) for k in kern.values())
        notes["kernels: max |stem4d - py4DSTEM| / max |py4DSTEM|"] = {
            m: float(np.abs(a[m] - b[m]).max() / np.abs(b[m]).max()) for m in a.files}
    print("\nnotes:", json.dumps(notes, indent=1))
    print(f"\ncommand: python benchmarks/bench_bragg.py --repeat {args.repeat} "
          f"--peers-python {args.peers_python}")


if __name__ == "__main__":
    main()
