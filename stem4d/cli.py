"""The ``stem4d`` command: ``stem4d demo``, ``stem4d info FILE``,
``stem4d ptycho run PARAMS.yaml``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class _Timer:
    """Print each step of a run with its wall time."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.steps: list[tuple[str, float]] = []

    def step(self, label: str, func, *args, **kwargs):
        t0 = time.perf_counter()
        result = func(*args, **kwargs)
        dt = time.perf_counter() - t0
        self.steps.append((label, dt))
        if not self.quiet:
            print(f"  {label:<58s} {dt:8.3f} s", flush=True)
        return result


def run_demo(out: Path, *, scan: int = 32, detector: int = 128, quiet: bool = False) -> Path:
    """Simulate calibrated datasets, calibrate and image them, save results and figures.

    Steps: a crystal dataset whose origin is measured, fitted and applied before the
    virtual images; a phase-object dataset whose scan-to-detector rotation and flip are
    found from the centre of mass before integrating the phase; a short single-slice
    ptychographic reconstruction compared with the simulated phase.

    Returns the path of the netCDF file written in ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import xarray as xr

    import stem4d as s4

    out.mkdir(parents=True, exist_ok=True)
    timer = _Timer(quiet)
    say = (lambda *a: None) if quiet else print
    say(f"stem4d demo: simulating a ({scan}, {scan}, {detector}, {detector}) crystal dataset")
    q_pixel = 0.025  # 1/Å per detector pixel
    cube, truth = timer.step(
        "simulate crystal (drifting origin, strain ramp, Poisson noise)",
        s4.simulate.crystal,
        scan_shape=(scan, scan), detector_shape=(detector, detector),
        g1=(detector / 9.0, detector / 50.0), g2=(-detector / 40.0, detector / 8.0),
        disk_radius=detector / 24.0, origin_drift=(0.15, 0.05, -0.05, 0.12),
        strain={"exx": np.repeat(np.linspace(0.0, 0.02, scan)[:, None], scan, axis=1)},
        dose=200.0, r_step=2.0, q_pixel_size=q_pixel, beam_energy=300e3, seed=1,
    )
    say(f"  calibration: {s4.calibration_summary(cube)}")
    # forget the simulator's origin and find it again from the data
    raw = s4.set_origin(cube.drop_vars(["qx0", "qy0"]), (detector - 1) / 2, (detector - 1) / 2)
    measured = timer.step("origin: centre of mass of the central disk per position",
                          s4.measure_origin, raw, "com")
    fitted = timer.step("origin: robust plane fit over the scan", s4.fit_origin, measured,
                        "plane", robust=True)
    cube = s4.apply_origin(raw, fitted)
    err = np.hypot(fitted.qx0 - truth.qx0, fitted.qy0 - truth.qy0)
    say(f"    origin error vs truth: RMS {float(np.sqrt((err ** 2).mean())):.4f} px, "
        f"fit residual {float(fitted.qx0_rms):.4f} px")
    disk = timer.step("probe: bright-field disk radius (threshold sweep, centred mean)",
                      s4.probe_size, cube, shift_center=True)
    dk_probe = s4.q_pixel_size_from_probe(float(cube.convergence_semiangle),
                                          float(disk.radius_flux), 300e3)
    say(f"    disk radius {float(disk.radius_flux):.3f} px (simulated "
        f"{float(truth.disk_radius):.3f} px); pixel size from it and the convergence "
        f"semiangle: {dk_probe:.5f} 1/Å (simulated {q_pixel:.5f} 1/Å)")
    radius_q = float(disk.radius_flux) * q_pixel
    bf = s4.detectors.circle(cube, radius=radius_q)
    adf = s4.detectors.annulus(cube, radii=(2.0 * radius_q, 0.48 * detector * q_pixel))
    images = timer.step("virtual BF + ADF images (one pass)", s4.virtual_image, cube,
                        {"bf": bf, "adf": adf})
    bf_follow = timer.step("virtual BF following the beam (shift_center)",
                           s4.virtual_image, cube, bf, shift_center=True)
    images["bf_shift_center"] = bf_follow
    mean_dp = timer.step("mean diffraction pattern", s4.virtual_diffraction, cube, "mean")
    max_dp = timer.step("max diffraction pattern", s4.virtual_diffraction, cube, "max")
    mean_centred = timer.step("mean pattern, origin-centred (subpixel)",
                              s4.virtual_diffraction, cube, "mean", shift_center=True,
                              subpixel=True)
    template = s4.probe.kernel(s4.synthetic_probe(cube, float(disk.radius), 0.5), "flat")
    peaks = timer.step("Bragg disks: template correlation, multicorr subpixel",
                       s4.find_bragg_disks, cube, template)
    rms, recall, false_pos = _score_peaks(peaks, truth)
    say(f"    {int(peaks['count'].sum())} peaks; vs truth: RMS {rms:.3f} px, recall "
        f"{100 * recall:.2f} %, {false_pos:.3f} false positives per pattern")
    bvm = timer.step("Bragg vector map (origin-centred)", s4.bragg_vector_map, peaks,
                     sampling=2, calibrated=True)
    # the simulated detector is not rotated: store that calibration, then map the strain
    # relative to the first scan row (where the simulated exx ramp starts at 0)
    oriented = s4.set_orientation(peaks, 0.0, False)
    reference = xr.zeros_like(truth.exx, dtype=bool).copy(data=np.arange(scan)[:, None]
                                                          == np.zeros((1, scan)))
    strain = timer.step("strain map: lattice fit per position, scan frame",
                        s4.strain_map, oriented, reference=reference)
    strain_err = float(np.sqrt(((strain.exx - truth.exx) ** 2).mean()))
    say(f"    exx ramp 0-2 % recovered with RMS error {100 * strain_err:.3f} % "
        f"(Poisson dose 200 counts/pixel)")
    say("simulating a (24, 24, 64, 64) phase-object dataset, detector rotated 23° and flipped")
    dpc_cube, dpc_truth = timer.step(
        "simulate phase object (wave optics)", s4.simulate.phase_object, (24, 24), (64, 64),
        scan_rotation=np.radians(23.0), scan_flip=True, dose=2e5, seed=2)
    com = timer.step("centre of mass of every pattern", s4.center_of_mass, dpc_cube)
    orientation = timer.step("scan-to-detector rotation and flip (minimum curl)",
                             s4.find_orientation, com)
    phase = timer.step("integrated CoM phase (iDPC)", s4.integrate_com, com,
                       scan_rotation=float(orientation.scan_rotation),
                       scan_flip=bool(orientation.scan_flip))
    true_phase = dpc_truth.phase - dpc_truth.phase.mean()
    ncc = float(((phase - phase.mean()) * true_phase).sum()
                / np.sqrt(((phase - phase.mean()) ** 2).sum() * (true_phase ** 2).sum()))
    say(f"    found rotation {np.degrees(float(orientation.scan_rotation)):.2f}° flip "
        f"{bool(orientation.scan_flip)} (simulated 23.00° True); iDPC phase vs truth: "
        f"NCC {ncc:.3f}")
    ptycho = _demo_ptychography(out, timer, say)
    tree = xr.DataTree.from_dict({
        "/ptychography": ptycho,
        "/bragg/peaks": peaks,
        "/bragg/vector_map": bvm.to_dataset(name="bvm"),
        "/strain": strain,
        "/calibration/origin": fitted,
        "/calibration/probe": disk,
        "/calibration/orientation": orientation,
        "/com": com.assign(phase=phase),
        "/virtual_images": images,
        "/diffraction": xr.Dataset({"mean": mean_dp, "max": max_dp,
                                    "mean_centred": mean_centred}),
        "/detectors": xr.Dataset({"bf": bf, "adf": adf}),
    })
    nc_path = out / "stem4d-demo.nc"
    timer.step(f"save results to {nc_path}", s4.save, tree, nc_path)

    def figures() -> list[Path]:
        import matplotlib.pyplot as plt

        paths = []
        fig = s4.plot.show_images(images)
        paths.append(out / "virtual_images.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        s4.plot.show_diffraction(mean_dp, detectors={"BF": bf, "ADF": adf}, ax=axes[0],
                                 title="mean pattern + detectors")
        s4.plot.show_diffraction(max_dp, ax=axes[1], title="max pattern")
        s4.plot.show_diffraction(mean_centred, ax=axes[2], title="mean, origin-centred")
        fig.tight_layout()
        paths.append(out / "diffraction.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        return paths

    def calibration_figures() -> list[Path]:
        import matplotlib.pyplot as plt

        paths = []
        for name, fig in (("origin.png", s4.plot.show_origin(measured, fitted)),
                          ("bragg_peaks.png", s4.plot.show_peaks(cube, peaks, 0, 0)),
                          ("bragg_vector_map.png", s4.plot.show_bragg_vector_map(bvm)),
                          ("strain.png", s4.plot.show_strain(strain,
                                                             reference_mask=reference)),
                          ("com.png", s4.plot.show_com(com, phase)),
                          ("orientation.png", s4.plot.show_orientation(orientation))):
            paths.append(out / name)
            fig.savefig(paths[-1], dpi=100)
            plt.close(fig)
        return paths

    pngs = timer.step("figures (PNG)", figures)
    pngs += timer.step("calibration figures (PNG)", calibration_figures)
    pngs += timer.step("ptychography figure (PNG)", _ptycho_figure, ptycho,
                       out / "ptycho_phase.png")
    total = sum(dt for _, dt in timer.steps)
    say(f"  {'total':<58s} {total:8.3f} s")
    say("wrote:")
    for p in [nc_path, *pngs]:
        say(f"  {p}")
    return nc_path


def _score_peaks(peaks, truth) -> tuple[float, float, float]:
    """RMS error (pixels), recall and false positives per pattern of detected peaks
    against the simulator's disks wholly on the detector (matched within 2 px)."""
    import numpy as np
    from scipy.spatial import cKDTree

    from .bragg import _peaks_to_pixels

    px, py = (np.asarray(v) for v in _peaks_to_pixels(peaks))
    tx, ty = np.asarray(truth.bragg_qx), np.asarray(truth.bragg_qy)
    inside = np.asarray(truth.bragg_inside)
    inside = np.broadcast_to(inside, tx.shape) if inside.ndim < tx.ndim else inside
    errors, found, n_true, n_false = [], 0, 0, 0
    for i in range(tx.shape[0]):
        for j in range(tx.shape[1]):
            ok = np.isfinite(px[i, j])
            det = np.stack([px[i, j][ok], py[i, j][ok]], axis=1)
            true_all = np.stack([tx[i, j], ty[i, j]], axis=1)
            if len(det) == 0:
                n_true += int(inside[i, j].sum())
                continue
            dist, _ = cKDTree(det).query(true_all[inside[i, j]])
            hit = dist < 2.0
            errors.extend(dist[hit] ** 2)
            found += int(hit.sum())
            n_true += int(inside[i, j].sum())
            nearest, _ = cKDTree(true_all).query(det)
            n_false += int((nearest >= 2.0).sum())
    n_patterns = tx.shape[0] * tx.shape[1]
    return (float(np.sqrt(np.mean(errors))) if errors else float("nan"),
            found / max(n_true, 1), n_false / n_patterns)


def _demo_ptychography(out: Path, timer: _Timer, say):
    """Simulate a 16 x 16 scan of 48 x 48 patterns, reconstruct it (10 iterations, single
    slice), print seconds per iteration and the NCC with the true phase.

    Returns a Dataset: ``phase`` (rad) and ``amplitude`` of the object, ``true_phase``
    (on the same grid), ``loss``; attrs ``ncc``, ``seconds_per_iteration``.
    """
    import xarray as xr

    from .ptycho.simulate import phase_ncc, simulate_ptychography
    from .ptycho.solver import reconstruct

    say("ptychography: a (16, 16) scan of 48 x 48 patterns of a thin phase object")
    patterns, truth = timer.step("simulate ptychography (defocused probe, noise-free)",
                                 simulate_ptychography, (16, 16), 48, step=1.0,
                                 defocus=150.0, seed=0)
    params = {"probe": {"beam_energy": 300e3, "convergence_semiangle": 20.0,
                        "aberrations": {"defocus": 150.0}},
              "scan": {"shape": [16, 16], "step": 1.0},
              "solver": {"iterations": 10, "batch_size": 16}}
    result = timer.step("reconstruct: 10 iterations (JAX, jit-compiled)", reconstruct,
                        patterns, params, progress=False)
    phase = result["object"]["phase"].isel(object_mode=0, slice=0, drop=True)
    ncc = phase_ncc(phase, truth.phase, region=(0.0, 15.0, 0.0, 15.0))
    spi = float(result.attrs["seconds_per_iteration"])
    say(f"    {spi:.3f} s/iteration (first step, with compilation: "
        f"{float(result.attrs['first_step_seconds']):.2f} s); phase vs truth: NCC {ncc:.4f}")
    true_phase = truth.phase.interp(rx=phase.rx, ry=phase.ry)
    return xr.Dataset(
        {"phase": phase, "amplitude": result["object"]["amplitude"].isel(
            object_mode=0, slice=0, drop=True),
         "true_phase": true_phase.assign_attrs(units="rad"),
         "loss": result["loss"]["loss"]},
        attrs={"ncc": ncc, "seconds_per_iteration": spi, "iterations": 10})


def _ptycho_figure(ptycho, path: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, (name, img) in zip(axes, (("reconstructed phase", ptycho.phase),
                                      ("true phase", ptycho.true_phase)), strict=True):
        extent = [float(img.ry[0]), float(img.ry[-1]), float(img.rx[-1]), float(img.rx[0])]
        im = ax.imshow(img.values, cmap="gray", extent=extent)
        ax.set_title(name if "true" in name else f"{name} (NCC {ptycho.attrs['ncc']:.3f})")
        ax.set_xlabel("ry (Å)")
        ax.set_ylabel("rx (Å)")
        fig.colorbar(im, ax=ax, label="rad", shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def run_ptycho(params_path: Path, *, out: Path | None = None, strict: bool = False,
               resume: Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """``stem4d ptycho run``: load the parameters (stem4d or PtyRAD file), load and
    preprocess the measurements, reconstruct, and write the result DataTree
    (``<name>.nc``) and PNG figures (object phase, probe modes, loss) to ``out`` (default:
    the file's output directory, PtyRAD's ``recon_params.output_dir``, else
    ``<params stem>-ptycho`` beside the file). Returns the written paths.
    """
    import shutil
    import warnings

    from .ptycho.measurements import prepare_from_params
    from .ptycho.params import load_params

    say = (lambda *a: None) if quiet else print
    params_path = Path(params_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params = load_params(params_path, strict=strict)
    for w in caught:
        print(f"stem4d ptycho run: warning: {w.message}", file=sys.stderr)
    if out is None:
        out = (Path(params.output.directory) if params.output.directory
               else params_path.parent / f"{params_path.stem}-ptycho")
    params.output.directory = str(out)
    t0 = time.perf_counter()
    meas = prepare_from_params(params, base_dir=params_path.parent)
    say(f"measurements: {meas.sizes['scan']} patterns of {meas.sizes['qx']} x "
        f"{meas.sizes['qy']} pixels, {float(meas.qx[1] - meas.qx[0]):.5g} 1/Å per pixel "
        f"({time.perf_counter() - t0:.2f} s)")
    say(f"reconstructing: {params.solver.iterations} iterations, batch "
        f"{params.solver.batch_size}, {params.probe.modes} probe mode(s), "
        f"{params.object.slices} slice(s), loss {params.solver.loss}, "
        f"{params.solver.optimizer}")

    from .ptycho.solver import reconstruct

    result = reconstruct(meas, params, progress=not quiet, checkpoint=resume)
    paths = {"result": out / f"{params.output.name}.nc"}
    if params.output.figures:
        paths.update({k: out / f"{k}.png" for k in ("object_phase", "probe_modes", "loss")})
    if params.output.copy_params:
        target = out / params_path.name
        if target.resolve() != params_path.resolve():
            shutil.copyfile(params_path, target)
        paths["params"] = target
    loss = result["loss"]["loss"].values
    say(f"done: {result.attrs['iterations_run']} iterations, "
        f"{result.attrs['seconds_per_iteration']:.3f} s/iteration (first step with "
        f"compilation {result.attrs['first_step_seconds']:.2f} s), final loss "
        f"{loss[-1] if loss.size else float('nan'):.4g}, device {result.attrs['device']}")
    say("wrote:")
    for p in paths.values():
        say(f"  {p}")
    return paths


_DEMO_MIN_SCAN = 4  # positions per side: the strain reference needs a few fits
_DEMO_MIN_DETECTOR = 32  # pixels: the simulated disks are detector / 24 in radius


def _validation_summary(exc: Any, path: Path) -> str:
    """A pydantic ValidationError as one line per field, without its documentation links."""
    lines = [f"parameter file {path}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        given = repr(err.get("input"))
        given = given if len(given) <= 80 else given[:77] + "..."
        lines.append(f"  {where}: {err['msg']} (got {given})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stem4d`` command."""
    parser = argparse.ArgumentParser(prog="stem4d", description="4D-STEM analysis on xarray.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate a dataset, make virtual images, save them")
    demo.add_argument("--out", type=Path, default=Path("stem4d-demo"),
                      help="output folder (default: ./stem4d-demo)")
    demo.add_argument("--scan", type=int, default=32, help="scan size (positions per side)")
    demo.add_argument("--detector", type=int, default=128, help="detector size (pixels)")
    info = sub.add_parser("info", help="print dims, shape, dtype and calibrations of a file")
    info.add_argument("file", type=Path)
    info.add_argument("--key", help="dataset path inside a plain HDF5 file")
    info.add_argument("--scan-shape", type=int, nargs=2, metavar=("RX", "RY"),
                      help="scan shape of a flat stack or an EMPAD .raw file")
    info.add_argument("--detector-shape", type=int, nargs=2, metavar=("QX", "QY"),
                      help="detector shape of an EMPAD .raw file (default 128 128)")
    ptycho = sub.add_parser("ptycho", help="ptychographic reconstruction")
    psub = ptycho.add_subparsers(dest="ptycho_command", required=True)
    prun = psub.add_parser(
        "run", help="reconstruct from a parameter file (stem4d or PtyRAD YAML/JSON)",
        description="Load the parameters (a PtyRAD file is accepted as it is), load and "
        "preprocess the measurements it names, reconstruct, and write <name>.nc and PNG "
        "figures to the output directory.")
    prun.add_argument("params", type=Path, help="parameter file (.yaml, .yml or .json)")
    prun.add_argument("--out", type=Path, default=None,
                      help="output folder (default: the file's output directory)")
    prun.add_argument("--strict", action="store_true",
                      help="refuse PtyRAD fields stem4d does not support (default: warn)")
    prun.add_argument("--resume", type=Path, default=None, metavar="CHECKPOINT",
                      help="continue from a checkpoint written by an earlier run")
    prun.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    if args.command == "ptycho":
        from pydantic import ValidationError

        try:
            run_ptycho(args.params, out=args.out, strict=args.strict, resume=args.resume,
                       quiet=args.quiet)
        except ValidationError as exc:
            print(f"stem4d ptycho run: error: {_validation_summary(exc, args.params)}",
                  file=sys.stderr)
            return 1
        except (OSError, ValueError, TypeError) as exc:
            print(f"stem4d ptycho run: error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        if args.scan < _DEMO_MIN_SCAN:
            demo.error(f"--scan must be >= {_DEMO_MIN_SCAN} positions per side, got {args.scan}")
        if args.detector < _DEMO_MIN_DETECTOR:
            demo.error(f"--detector must be >= {_DEMO_MIN_DETECTOR} pixels, got {args.detector}")
        if args.out.exists() and not args.out.is_dir():
            demo.error(f"--out must be a folder, but {args.out} is a file")
        run_demo(args.out, scan=args.scan, detector=args.detector)
        return 0
    if args.command == "info":
        from .io import describe

        options = {name: value for name, value in (
            ("key", args.key),
            ("scan_shape", tuple(args.scan_shape) if args.scan_shape else None),
            ("detector_shape", tuple(args.detector_shape) if args.detector_shape else None),
        ) if value is not None}
        try:
            print(describe(args.file, **options))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            message = str(exc)
            for python, option in (("scan_shape=", "--scan-shape RX RY"), ("key=", "--key PATH"),
                                   ("detector_shape=", "--detector-shape QX QY")):
                if python in message:
                    message += f"\n(on the command line, {python[:-1]} is {option})"
            print(f"stem4d info: {message}", file=sys.stderr)
            return 1
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
