"""Check stem4d's orientation converters by running py4DSTEM's DPC and LiberTEM on its data.

stem4d stores the scan-to-detector orientation as ``(scan_rotation, scan_flip)``
(:mod:`stem4d.orientation`). This script simulates a thin phase object with a known
orientation for six cases, then runs the peers' own orientation solvers on the patterns:

* py4DSTEM 0.14 ``DPC(...).preprocess()`` (default plane fit of the CoM) and
  ``reconstruct()``: its ``_rotation_best_rad`` / ``_rotation_best_transpose`` and the
  correlation of its phase with the true phase (negative when its angle is 180° off);
* LiberTEM 0.16 ``libertem.udf.com.guess_corrections`` on the centre of mass in pixels
  from the detector centre: its ``(scan_rotation, flip_y)``;

and prints them next to :func:`stem4d.orientation.to_py4dstem` /
:func:`~stem4d.orientation.to_libertem` of the true orientation, and stem4d's own
:func:`stem4d.find_orientation`. The table is the one in ``stem4d/orientation.py``.

Two Pythons are involved: run it with the peers' interpreter, which has py4DSTEM and
LiberTEM; it calls stem4d's interpreter (``--stem4d-python``, default ``python`` on the
PATH) in a subprocess to simulate the data and convert the orientations::

    /work/peers/bin/python benchmarks/check_orientation_peers.py

The exit status is 1 if a peer disagrees with stem4d's converter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "_data" / "orientation_peers"
CASES = [(23, False), (117, False), (-150, False), (23, True), (117, True), (-150, True)]
SCAN, DETECTOR = (24, 24), (64, 64)


# --------------------------------------------------------- step 1: stem4d's Python
def make_data(out: Path) -> None:
    """Simulate every case; save the cube, the true phase and stem4d's numbers."""
    sys.path.insert(0, str(REPO))
    import stem4d as s4
    from stem4d.orientation import to_libertem, to_py4dstem
    from stem4d.simulate import phase_object

    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for rot, flip in CASES:
        cube, truth = phase_object(SCAN, DETECTOR, scan_rotation=np.radians(rot),
                                   scan_flip=flip, beam_energy=300e3, seed=0)
        found = s4.find_orientation(s4.center_of_mass(cube))
        name = f"{rot}_{int(flip)}"
        np.save(out / f"cube_{name}.npy", cube.values)
        np.save(out / f"phase_{name}.npy", truth["phase"].values)
        meta[name] = {
            "q_pixel_size": float(cube.qx[1] - cube.qx[0]),
            "r_pixel_size": float(cube.rx[1] - cube.rx[0]),
            "to_py4dstem": list(to_py4dstem(np.radians(rot), flip)),
            "to_libertem": list(to_libertem(np.radians(rot), flip)),
            "found": [float(np.degrees(float(found.scan_rotation))), bool(found.scan_flip)],
        }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


# ------------------------------------------------------------ step 2: the peers
def run_py4dstem(data: np.ndarray, dq: float, dr: float, phase_true: np.ndarray
                 ) -> tuple[float, bool, float]:
    import py4DSTEM

    dc = py4DSTEM.DataCube(data=data)
    dc.calibration.set_R_pixel_size(dr)
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(dq)
    dc.calibration.set_Q_pixel_units("A^-1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solver = py4DSTEM.process.phase.DPC(datacube=dc, energy=300e3, verbose=False)
        solver.preprocess(plot_center_of_mass=False, plot_rotation=False)
        solver.reconstruct(max_iter=64, progress_bar=False)
    corr = np.corrcoef(np.asarray(solver.object_phase).ravel(), phase_true.ravel())[0, 1]
    return (float(np.degrees(solver._rotation_best_rad)),
            bool(solver._rotation_best_transpose), float(corr))


def run_libertem(data: np.ndarray) -> tuple[float, bool]:
    from libertem.udf.com import guess_corrections

    ii = np.arange(data.shape[2]) - data.shape[2] // 2
    jj = np.arange(data.shape[3]) - data.shape[3] // 2
    total = data.sum((2, 3))
    y_com = (data * ii[:, None]).sum((2, 3)) / total  # LiberTEM's y: detector rows = qx
    x_com = (data * jj[None, :]).sum((2, 3)) / total
    guess = guess_corrections(y_com, x_com)
    return float(guess.scan_rotation), bool(guess.flip_y)


def wrap(deg: float, period: float = 360.0) -> float:
    """``deg`` into ``[-period/2, period/2)``."""
    return (deg + period / 2) % period - period / 2


def check(data_dir: Path) -> int:
    meta = json.loads((data_dir / "meta.json").read_text())
    rows, bad = [], 0
    header = (f"{'stem4d truth':15} {'stem4d found':15} | {'py4DSTEM DPC':15} {'phase corr':>10} "
              f"{'to_py4dstem':15} | {'LiberTEM guess':15} {'to_libertem':15}")
    for rot, flip in CASES:
        name = f"{rot}_{int(flip)}"
        m = meta[name]
        data = np.load(data_dir / f"cube_{name}.npy")
        phase = np.load(data_dir / f"phase_{name}.npy")
        p_rot, p_tr, corr = run_py4dstem(data, m["q_pixel_size"], m["r_pixel_size"], phase)
        l_rot, l_flip = run_libertem(data)
        c_rot, c_flip = m["to_py4dstem"]
        e_rot, e_flip = m["to_libertem"]
        # py4DSTEM: same flip, angle equal mod 180°; 180° off <=> its phase is negated
        off = wrap(p_rot - c_rot)
        p_ok = (p_tr == c_flip and abs(wrap(off, 180.0)) < 1.0
                and (corr > 0.9 if abs(off) < 90 else corr < -0.9))
        l_ok = l_flip == e_flip and abs(wrap(l_rot - e_rot)) < 1.0
        f_ok = m["found"][1] == flip and abs(wrap(m["found"][0] - rot)) < 1.0
        bad += (not p_ok) + (not l_ok) + (not f_ok)
        sign = "+" if p_rot - c_rot > 0 else "-"
        note = f"  {p_rot:.0f} = {c_rot:.0f} {sign} 180" if abs(off) > 90 else ""
        rows.append(
            f"({rot:5d}°, {flip!s:5}) ({m['found'][0]:6.1f}°, {m['found'][1]!s:5}) | "
            f"({p_rot:6.1f}°, {p_tr!s:5}) {corr:+10.3f} ({c_rot:6.1f}°, {c_flip!s:5}) | "
            f"({l_rot:6.1f}°, {l_flip!s:5}) ({e_rot:6.1f}°, {e_flip!s:5})"
            f"{'' if p_ok and l_ok and f_ok else '  MISMATCH'}{note}")
    print(f"phase object {SCAN} scan, {DETECTOR} patterns, 300 kV, noise-free")
    print(header)
    print("\n".join(rows))
    print("all agree: py4DSTEM modulo 180° with the phase sign following, LiberTEM exactly, "
          "stem4d's find_orientation within 1°" if not bad else f"{bad} disagreement(s)")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stem4d-python", default=os.environ.get("STEM4D_PYTHON", "python"),
                        help="interpreter with stem4d's dependencies (default: python)")
    parser.add_argument("--data", type=Path, default=DATA, help="where the data are written")
    parser.add_argument("--make-data", action="store_true",
                        help="step 1 only: simulate and save (run by stem4d's Python)")
    args = parser.parse_args()
    if args.make_data:
        make_data(args.data)
        return 0
    try:
        import libertem  # noqa: F401
        import py4DSTEM  # noqa: F401
    except ImportError:
        print("run this with the peers' Python (py4DSTEM 0.14 and LiberTEM 0.16), e.g. "
              "/work/peers/bin/python benchmarks/check_orientation_peers.py", file=sys.stderr)
        return 2
    step1 = subprocess.run([args.stem4d_python, __file__, "--make-data", "--data", str(args.data)],
                           cwd=REPO, capture_output=True, text=True)
    if step1.returncode != 0:
        print(f"simulating the data with {args.stem4d_python} failed:\n{step1.stderr}",
              file=sys.stderr)
        return 2
    return check(args.data)


if __name__ == "__main__":
    sys.exit(main())
