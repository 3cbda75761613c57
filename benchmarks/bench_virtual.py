"""Virtual images and diffraction: stem4d vs the numpy floor, py4DSTEM and LiberTEM.

One run times every tool on the same in-memory (128, 128, 128, 128) float32 cube
(1 GiB): each tool runs in its own subprocess (stem4d and the floor in this Python,
py4DSTEM 0.14.18 and LiberTEM in the peers' virtual environment), the cube is loaded
into memory first, and each timing is the best of ``--repeat`` runs. Results are
printed as a Markdown table of seconds and ratios.

    python benchmarks/bench_virtual.py --peers-python /work/peers/bin/python

``--out-of-core`` also writes a 4 GiB zarr cube and measures the peak memory of a
lazy virtual image computed from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
SHAPE = (128, 128, 128, 128)
BF_RADIUS = 15.0  # pixels
ADF_RADII = (30.0, 60.0)  # pixels


def make_data(shape: tuple[int, int, int, int] = SHAPE) -> tuple[Path, Path]:
    """A drifting bright-field disk with Poisson-like noise; origin arrays beside it."""
    DATA.mkdir(exist_ok=True)
    cube_path, origin_path = DATA / f"cube_{shape[0]}.npy", DATA / f"origin_{shape[0]}.npy"
    if cube_path.exists() and origin_path.exists():
        return cube_path, origin_path
    rng = np.random.default_rng(0)
    nrx, nry, nqx, nqy = shape
    rx, ry = np.meshgrid(np.linspace(-1, 1, nrx), np.linspace(-1, 1, nry), indexing="ij")
    qx0 = nqx / 2 + 3.0 * rx + 1.3 * ry + 0.4 * np.sin(5 * rx)
    qy0 = nqy / 2 - 2.0 * rx + 2.5 * ry
    qx, qy = np.meshgrid(np.arange(nqx), np.arange(nqy), indexing="ij")
    cube = np.lib.format.open_memmap(cube_path, "w+", np.float32, shape)
    for i in range(nrx):
        r = np.hypot(qx[None] - qx0[i, :, None, None], qy[None] - qy0[i, :, None, None])
        row = 100.0 / (1 + np.exp((r - 12.0) / 0.7)) + 2.0 * np.exp(-r / 40.0)
        cube[i] = rng.poisson(row).astype(np.float32)
    cube.flush()
    np.save(origin_path, np.stack([qx0, qy0]))
    return cube_path, origin_path


def best(func, repeat: int) -> float:
    func()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


# ------------------------------------------------------------------ workers
def worker_floor(a: np.ndarray, origin: np.ndarray, repeat: int) -> dict[str, float]:
    qx, qy = np.meshgrid(np.arange(SHAPE[2]), np.arange(SHAPE[3]), indexing="ij")
    mask = ((qx - 64) ** 2 + (qy - 64) ** 2 <= BF_RADIUS**2).astype(np.float32)
    return {"floor: tensordot(cube, mask)": best(
        lambda: np.tensordot(a, mask, axes=((2, 3), (0, 1))), repeat)}


def worker_stem4d(a: np.ndarray, origin: np.ndarray, repeat: int) -> dict[str, float]:
    sys.path.insert(0, str(HERE.parent))
    import stem4d as s4

    cube = s4.datacube(a, q_step=1.0, q_units="pixels")
    cube = s4.set_origin(cube, origin[0], origin[1])
    bf = s4.detectors.circle(cube, radius=BF_RADIUS)
    adf = s4.detectors.annulus(cube, radii=ADF_RADII)
    return {
        "BF": best(lambda: s4.virtual_image(cube, bf), repeat),
        "ADF": best(lambda: s4.virtual_image(cube, adf), repeat),
        "BF + ADF in one call": best(lambda: s4.virtual_image(cube, {"bf": bf, "adf": adf}),
                                     repeat),
        "BF shift_center (integer)": best(
            lambda: s4.virtual_image(cube, bf, shift_center=True), repeat),
        "BF shift_center (subpixel)": best(
            lambda: s4.virtual_image(cube, bf, shift_center=True, subpixel=True), repeat),
        "mean pattern": best(lambda: s4.virtual_diffraction(cube, "mean"), repeat),
        "max pattern": best(lambda: s4.virtual_diffraction(cube, "max"), repeat),
    }


def worker_py4dstem(a: np.ndarray, origin: np.ndarray, repeat: int) -> dict[str, float]:
    import py4DSTEM

    dc = py4DSTEM.DataCube(data=a)
    dc.calibration.set_qx0(origin[0])
    dc.calibration.set_qy0(origin[1])
    c = (64, 64)

    def vi(mode, geometry, **kw):
        return dc.get_virtual_image(mode=mode, geometry=geometry, returncalc=True,
                                    verbose=False, **kw)

    return {
        "BF": best(lambda: vi("circle", (c, BF_RADIUS)), repeat),
        "ADF": best(lambda: vi("annulus", (c, ADF_RADII)), repeat),
        "BF shift_center (integer)": best(
            lambda: vi("circle", (c, BF_RADIUS), shift_center=True), repeat),
        "BF shift_center (subpixel)": best(
            lambda: vi("circle", (c, BF_RADIUS), shift_center=True, subpixel=True),
            max(1, repeat // 2)),
        "mean pattern": best(lambda: dc.get_dp_mean(returncalc=True), repeat),
        "max pattern": best(lambda: dc.get_dp_max(returncalc=True), repeat),
    }


def worker_libertem(a: np.ndarray, origin: np.ndarray, repeat: int) -> dict[str, float]:
    import libertem.api as lt
    from libertem.udf.base import UDF
    from libertem.udf.masks import ApplyMasksUDF
    from libertem.udf.sum import SumUDF

    class MaxUDF(UDF):
        def get_result_buffers(self):
            return {"max": self.buffer(kind="sig", dtype="float32", where="device")}

        def preprocess(self):
            self.results.max[:] = -np.inf

        def process_tile(self, tile):
            np.maximum(self.results.max, tile.max(axis=0), out=self.results.max)

        def merge(self, dest, src):
            np.maximum(dest.max, src.max, out=dest.max)

    ctx = lt.Context.make_with("inline")
    ds = ctx.load("memory", data=a, sig_dims=2)
    qx, qy = np.meshgrid(np.arange(SHAPE[2]), np.arange(SHAPE[3]), indexing="ij")
    r = np.hypot(qx - 64, qy - 64)
    bf = (r <= BF_RADIUS).astype(np.float32)
    adf = ((r >= ADF_RADII[0]) & (r <= ADF_RADII[1])).astype(np.float32)

    def masks(*ms):
        return ctx.run_udf(ds, ApplyMasksUDF(mask_factories=[(lambda m=m: m) for m in ms]))

    return {
        "BF": best(lambda: masks(bf), repeat),
        "ADF": best(lambda: masks(adf), repeat),
        "BF + ADF in one call": best(lambda: masks(bf, adf), repeat),
        "mean pattern": best(lambda: ctx.run_udf(ds, SumUDF()), repeat),
        "max pattern": best(lambda: ctx.run_udf(ds, MaxUDF()), repeat),
    }


WORKERS = {"floor": worker_floor, "stem4d": worker_stem4d, "py4DSTEM": worker_py4dstem,
           "LiberTEM": worker_libertem}


def run_worker(name: str, cube_path: str, origin_path: str, repeat: int) -> None:
    a = np.array(np.load(cube_path, mmap_mode="r"))  # into memory
    origin = np.load(origin_path)
    print(json.dumps(WORKERS[name](a, origin, repeat)))


# ------------------------------------------------------------- out of core
def out_of_core(size_gib: float = 4.0) -> dict[str, float]:
    """Peak memory of a lazy virtual image from a zarr cube of ``size_gib`` on disk."""
    code = f"""
import resource, time, numpy as np, dask, dask.array as da, sys
sys.path.insert(0, {str(HERE.parent)!r})
import stem4d as s4
path = {str(DATA / "cube_ooc.zarr")!r}
import os
if not os.path.exists(path):
    n = int(round(({size_gib} * 2**30 / (128 * 128 * 4)) ** 0.5))
    rnd = da.random.default_rng(0).random((n, n, 128, 128), chunks=(4, n, 128, 128),
                                          dtype=np.float32)
    cube = s4.datacube(rnd, r_step=1.0, r_units="Å")
    s4.save(cube, path)
cube = s4.open(path)
t0 = time.perf_counter()
bf = s4.virtual_image(cube, s4.detectors.circle(cube, radius=20.0, center=(64.0, 64.0)))
bf = bf.compute()
dt = time.perf_counter() - t0
print(cube.nbytes / 2**30, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return {"cube GiB": float(out[0]), "seconds": float(out[1]), "peak RSS GiB": float(out[2])}


def import_time() -> tuple[float, bool]:
    code = ("import time, sys; t = time.perf_counter(); import stem4d; "
            "print(time.perf_counter() - t, 'jax' in sys.modules)")
    times, jax_loaded = [], False
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=HERE.parent).stdout.split()
        times.append(float(out[0]))
        jax_loaded = out[1] == "True"
    return min(times), jax_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-python", default=os.environ.get(
        "STEM4D_PEERS_PYTHON", "/work/peers/bin/python"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out-of-core", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--cube", help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.cube, args.origin, args.repeat)
        return
    cube_path, origin_path = make_data()
    results: dict[str, dict[str, float]] = {}
    for name in ("floor", "stem4d", "py4DSTEM", "LiberTEM"):
        python = sys.executable if name in ("floor", "stem4d") else args.peers_python
        if not Path(python).exists():
            print(f"skipping {name}: no interpreter at {python}", file=sys.stderr)
            continue
        proc = subprocess.run([python, __file__, "--worker", name, "--cube", str(cube_path),
                               "--origin", str(origin_path), "--repeat", str(args.repeat)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    floor = results["floor"]["floor: tensordot(cube, mask)"]
    rows = list(results["stem4d"])
    print(f"\nfloor (one numpy pass, tensordot with one mask): {floor:.4f} s\n")
    print("| operation | stem4d (s) | py4DSTEM (s) | LiberTEM (s) | stem4d vs floor "
          "| py4DSTEM / stem4d | LiberTEM / stem4d |")
    print("|---|---|---|---|---|---|---|")
    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.4f}"

    for row in rows:
        s = results["stem4d"][row]
        p = results.get("py4DSTEM", {}).get(row)
        lt = results.get("LiberTEM", {}).get(row)

        p_ratio = "–" if p is None else f"{p / s:.1f}x"
        lt_ratio = "–" if lt is None else f"{lt / s:.1f}x"
        print(f"| {row} | {s:.4f} | {fmt(p)} | {fmt(lt)} | {floor / s:.2f}x "
              f"| {p_ratio} | {lt_ratio} |")
    t_import, jax_loaded = import_time()
    print(f"\n`import stem4d`: {t_import:.2f} s (JAX loaded: {jax_loaded})")
    if args.out_of_core:
        print("\nout of core:", out_of_core())


if __name__ == "__main__":
    main()
