"""Gradient-descent ptychography: :func:`reconstruct`.

One iteration is one pass over all probe positions, in minibatches of a fixed size
drawn in a random order (seeded by ``params.seed`` and the iteration number, so a
resumed run draws the same batches). Each minibatch is one call of a single
``jax.jit``-compiled step (``value_and_grad`` of the loss + the optax update, with the
variables and optimizer state donated); the last minibatch of an iteration is padded
with weight-0 entries so every call has the same shapes and the step compiles once.
Constraints (probe-mode orthogonalization, fixed probe intensity, lateral and
along-the-beam object blur, object amplitude range, positive phase, position
recentering; each on its own schedule) run between iterations, in PtyRAD's order, in a
second compiled function.

Scaling: the measurements are multiplied by ``c = N² / mean_j Σ_k I_j(k)`` (N the
detector size), so the mean pattern sums to N² and the probe has unit mean ``|ψ|²`` per
window pixel; learning rates of the probe are relative to that. The result's probe is
scaled back so that ``Σ_modes Σ_r |ψ|²`` equals the mean total intensity of a pattern.

Everything lives on the default JAX device (or ``device``); nothing assumes a CPU.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from jax import lax
from tqdm.auto import tqdm

from ..datacube import electron_wavelength
from . import result as _result
from .measurements import _scan_step_angstrom
from .model import ModelSpec, batch_loss, fixed_geometry
from .optics import fresnel_propagator, make_probe, probe_modes
from .params import PtychoParams, ScanParams, load_params

__all__ = ["reconstruct", "model_patterns", "scan_positions", "affine_matrix",
           "load_checkpoint"]

_VARIABLES = ("object_amplitude", "object_phase", "probe", "positions", "object_tilts")


# -------------------------------------------------------------------- measurements
def model_patterns(
    measurements: Any, params: PtychoParams
) -> tuple[np.ndarray, float]:
    """Patterns as ``(n_positions, N, N)`` float32 (zero frequency at ``N//2``) and the
    detector pixel size in 1/Å.

    ``measurements``: a DataArray ``("scan", "qx", "qy")`` or a datacube
    ``("rx", "ry", "qx", "qy")`` (scan order: ``rx`` slow), or a numpy/dask array of
    either shape. The pixel size comes from calibrated ``qx``/``qy`` coordinates (1/Å or
    mrad) or from ``params.detector``. Orientation: detector ``qx`` must be parallel to the
    scan's ``rx`` and ``qy`` to ``ry`` (``scan_rotation = 0``, no flip); a cube that
    says otherwise gets a warning.
    """
    lam = electron_wavelength(params.probe.beam_energy)
    dk = None
    if isinstance(measurements, xr.DataArray):
        dims = measurements.dims
        if dims == ("rx", "ry", "qx", "qy"):
            arr = measurements.data.reshape(-1, *measurements.shape[2:])
        elif dims == ("scan", "qx", "qy"):
            arr = measurements.data
        else:
            raise ValueError("measurements must have dims ('scan', 'qx', 'qy') or "
                             f"('rx', 'ry', 'qx', 'qy'), got {dims}")
        _check_calibrations(measurements, params)
        rot = measurements.coords.get("scan_rotation")
        flip = measurements.coords.get("scan_flip")
        if (rot is not None and abs(float(rot)) > 1e-6) or (flip is not None and bool(flip)):
            warnings.warn(
                "measurements carry scan_rotation/scan_flip: the model assumes qx is parallel "
                "to rx and qy to ry (rotation 0, no flip); reorient the patterns first "
                "(stem4d.ptycho.measurements) or the reconstruction will fail",
                UserWarning, stacklevel=3)
        steps = []
        for d in ("qx", "qy"):
            c = measurements.coords.get(d)
            units = c.attrs.get("units", "pixels") if c is not None else "pixels"
            if c is None or units in ("pixels", "px") or c.size < 2:
                steps = []
                break
            step = float(c.values[1] - c.values[0])
            if units == "mrad":
                step = step * 1e-3 / lam
            elif units not in ("1/Å", "1/A", "A^-1"):
                raise ValueError(f"measurements.{d} has units {units!r}; expected '1/Å', "
                                 "'mrad' or 'pixels'")
            steps.append(step)
            centre = float(c.values[c.size // 2]) / (float(c.values[1] - c.values[0]))
            if abs(centre) > 1.0:
                warnings.warn(
                    f"measurements.{d} = 0 is {centre:.2f} pixels away from the detector "
                    f"centre (pixel {c.size // 2}) the model assumes; set the origin "
                    "(stem4d.set_origin) or shift the patterns", UserWarning, stacklevel=3)
        if steps:
            if abs(steps[0] - steps[1]) > 1e-6 * abs(steps[0]):
                raise ValueError(f"measurements need square detector pixels, got qx step "
                                 f"{steps[0]:.6g} and qy step {steps[1]:.6g} 1/Å")
            dk = steps[0]
    else:
        arr = measurements
        if arr.ndim == 4:
            arr = arr.reshape(-1, *arr.shape[2:])
        elif arr.ndim != 3:
            raise ValueError("measurements must be 3-D (scan, qx, qy) or 4-D (rx, ry, qx, qy), "
                             f"got shape {tuple(arr.shape)}")
    data = np.asarray(arr, dtype=np.float32)
    n_scan, nx, ny = data.shape
    if nx != ny:
        raise ValueError(f"measurements must have square patterns, got {nx} x {ny}")
    if params.detector.shape is not None and params.detector.shape != nx:
        raise ValueError(f"detector.shape = {params.detector.shape} but the patterns are "
                         f"{nx} x {ny} pixels")
    if n_scan != params.scan.count:
        raise ValueError(f"measurements hold {n_scan} patterns but scan.shape = "
                         f"{tuple(params.scan.shape)} gives {params.scan.count} positions")
    if not np.all(np.isfinite(data)):
        raise ValueError("measurements contain NaN or infinite values")
    if np.any(data < 0):
        raise ValueError("measurements contain negative values; remove them first "
                         "(stem4d.ptycho.measurements)")
    if params.detector.pixel_size is not None:
        given = params.detector.pixel_size
        if params.detector.pixel_units == "mrad":
            given = given * 1e-3 / lam
        if dk is not None and abs(given - dk) > 1e-3 * dk:
            raise ValueError(f"detector.pixel_size ({given:.6g} 1/Å) disagrees with the "
                             f"measurements' qx/qy coordinates ({dk:.6g} 1/Å)")
        dk = given
    if dk is None:
        raise ValueError("the detector pixel size is unknown: calibrate the qx/qy "
                         "coordinates of the measurements (1/Å or mrad) or set "
                         "detector.pixel_size")
    return data, float(dk)


def _check_calibrations(meas: xr.DataArray, params: PtychoParams) -> None:
    """Refuse measurements whose own calibration disagrees with the parameters."""
    checks = [("beam_energy", params.probe.beam_energy, "probe.beam_energy", "eV")]
    if params.probe.source == "optics":
        checks.append(("convergence_semiangle", params.probe.convergence_semiangle,
                       "probe.convergence_semiangle", "mrad"))
    for coord, given, field, units in checks:
        if coord in meas.coords and meas.coords[coord].ndim == 0 and given is not None:
            carried = float(meas.coords[coord])
            if abs(carried - given) > 1e-3 * abs(given):
                raise ValueError(
                    f"the measurements carry {coord} = {carried:g} {units} but {field} = "
                    f"{given:g} {units}: make them agree (stem4d.set_beam on the "
                    f"measurements, or the parameter)")
    calibrated = all(d in meas.coords and meas.coords[d].attrs.get("units") == "Å"
                     for d in ("rx", "ry"))
    if calibrated and params.scan.positions is None and params.scan.step is not None:
        step = _scan_step_angstrom(meas, "measurements")
        want = params.scan.step_pair()
        if any(abs(a - b) > 1e-3 * abs(b) for a, b in zip(step, want, strict=True)):
            raise ValueError(
                f"the measurements' scan coordinates have a step of {step[0]:g}, {step[1]:g} Å "
                f"but scan.step = {want[0]:g}, {want[1]:g} Å: make them agree "
                "(stem4d.set_r_calibration on the measurements, or scan.step)")


def affine_matrix(scale: float, asymmetry: float, rotation: float, shear: float) -> np.ndarray:
    """The scan affine ``[scale, asymmetry, rotation°, shear°]`` as a 2x2 matrix ``A``
    acting on row vectors of (row, column) positions, ``p' = p @ A`` (the convention of
    PtyRAD's ``pos_scan_affine`` and PtychoShelves)::

        A = scale · diag(1 + asym/2, 1 - asym/2) · [[cos r, sin r], [-sin r, cos r]]
                  · [[1, 0], [tan(shear), 1]]
    """
    r, sh = math.radians(rotation), math.radians(shear)
    return (scale * np.diag([1 + asymmetry / 2, 1 - asymmetry / 2])
            @ np.array([[math.cos(r), math.sin(r)], [-math.sin(r), math.cos(r)]])
            @ np.array([[1.0, 0.0], [math.tan(sh), 1.0]]))


def _targets(data: np.ndarray, scale: float, amplitude: bool) -> np.ndarray:
    """``ifftshift(data · scale)`` (and its square root for the amplitude loss) as float32,
    written once into one new array (this is a pass over all patterns: one allocation
    instead of three)."""
    n0, n1 = data.shape[-2:]
    h0, h1 = n0 // 2, n1 // 2
    out = np.empty(data.shape, dtype=np.float32)
    out[:, :n0 - h0, :n1 - h1] = data[:, h0:, h1:]  # out[i] = data[(i + h) % n]
    out[:, :n0 - h0, n1 - h1:] = data[:, h0:, :h1]
    out[:, n0 - h0:, :n1 - h1] = data[:, :h0, h1:]
    out[:, n0 - h0:, n1 - h1:] = data[:, :h0, :h1]
    np.multiply(out, np.float32(scale), out=out)
    if amplitude:
        np.sqrt(out, out=out)
    return out


def scan_positions(scan: ScanParams, pixel_size: float, seed: int) -> np.ndarray:
    """Initial probe positions ``(n, 2)`` (row, column) in Å, scan frame.

    A raster ``(i · step_slow, j · step_fast)`` transformed about its centre by the
    affine ``[scale, asymmetry, rotation°, shear°]`` (:func:`affine_matrix`), plus
    Gaussian jitter of ``scan.jitter`` pixels (``pixel_size`` Å); or the given positions
    (plus jitter).
    """
    if scan.positions is not None:
        pos = np.asarray(scan.positions, dtype=float)
    else:
        s0, s1 = scan.step_pair()
        ii, jj = np.meshgrid(np.arange(scan.shape[0]), np.arange(scan.shape[1]), indexing="ij")
        pos = np.stack([ii.ravel() * s0, jj.ravel() * s1], axis=1)
        if tuple(scan.affine) != (1.0, 0.0, 0.0, 0.0):
            centre = pos.mean(axis=0)
            pos = (pos - centre) @ affine_matrix(*scan.affine) + centre
    if scan.jitter > 0:
        pos = pos + np.random.default_rng([seed, 1]).normal(0, scan.jitter * pixel_size,
                                                            pos.shape)
    return pos


# ------------------------------------------------------------------- optimization
def _optimizer(params: PtychoParams, probe_lr_factor: float = 1.0
               ) -> optax.GradientTransformation:
    factory = getattr(optax, params.solver.optimizer)
    transforms = {}
    for name in _VARIABLES:
        lr = getattr(params.solver.update, name).learning_rate
        if name == "probe":
            lr = lr * probe_lr_factor
        transforms[name] = (factory(learning_rate=lr, **params.solver.optimizer_kwargs)
                            if lr > 0 else optax.set_to_zero())
    return optax.multi_transform(transforms, {name: name for name in _VARIABLES})


def _make_step(spec: ModelSpec, opt: optax.GradientTransformation):
    def step(variables, opt_state, index, weight, active, targets, geometry):
        loss, grads = jax.value_and_grad(batch_loss)(variables, index, weight, targets, spec,
                                                     geometry)
        grads = {k: g * active[k].astype(g.dtype) for k, g in grads.items()}
        updates, opt_state = opt.update(grads, opt_state, variables)
        updates = {k: u * active[k].astype(u.dtype) for k, u in updates.items()}
        return optax.apply_updates(variables, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def _gaussian_kernel(sigma: float, size: int) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _blur_axis(x: jax.Array, kernel: np.ndarray, axis: int, pad_mode: str) -> jax.Array:
    """Convolve ``x`` along ``axis`` with a short odd kernel (padded ``pad_mode``)."""
    h = len(kernel) // 2
    n = x.shape[axis]
    if pad_mode == "reflect":
        h = min(h, n - 1)
        kernel = kernel[len(kernel) // 2 - h: len(kernel) // 2 + h + 1]
        kernel = kernel / kernel.sum()
    widths = [(0, 0)] * x.ndim
    widths[axis] = (h, h)
    xp = jnp.pad(x, widths, mode=pad_mode)
    out = 0.0
    for i, w in enumerate(kernel):
        out = out + float(w) * lax.slice_in_dim(xp, i, i + n, axis=axis)
    return out


def _blur(x: jax.Array, cfg: Any, lateral: bool) -> jax.Array:
    kernel = _gaussian_kernel(cfg.sigma, cfg.kernel_size)
    if lateral:  # rows and columns, reflected edges
        return _blur_axis(_blur_axis(x, kernel, -2, "reflect"), kernel, -1, "reflect")
    return _blur_axis(x, kernel, 1, "edge")  # slices, edge slices repeated


def _relaxed(x: jax.Array, constrained: jax.Array, relax: float) -> jax.Array:
    return constrained if relax == 0 else relax * x + (1 - relax) * constrained


_CONSTRAINTS = ("orthogonalize_probe_modes", "fix_probe_intensity", "object_blur",
                "slice_blur", "object_amplitude_range", "positive_phase",
                "recenter_positions")


def _due_constraints(cons: Any, spec: ModelSpec, iteration: int) -> tuple[bool, ...]:
    """Which constraints run after ``iteration`` (0-based), in ``_CONSTRAINTS`` order;
    those without an effect on this model (one probe mode, one slice, fixed positions,
    zero blur) are skipped."""
    moot = {"orthogonalize_probe_modes": spec.probe_modes == 1,
            "slice_blur": spec.slices == 1 or (cons.slice_blur is not None
                                               and cons.slice_blur.sigma == 0),
            "object_blur": cons.object_blur is not None and cons.object_blur.sigma == 0,
            "recenter_positions": not spec.train_positions}
    return tuple(getattr(cons, name) is not None and not moot.get(name, False)
                 and getattr(cons, name).due(iteration) for name in _CONSTRAINTS)


def _make_constraints(spec: ModelSpec, probe_total: float, cons: Any,
                      initial_positions: jax.Array):
    """``constrain(variables, due)`` applying the constraints flagged in ``due`` (see
    :func:`_due_constraints`) in PtyRAD's order. Two jit-compiled parts (static flags),
    each compiled only when one of its constraints runs: the probe's (small and quick to
    compile) and the object's and positions'."""

    def probe_part(p, ortho: bool, fix: bool):
        if ortho:
            probe = lax.complex(p[0], p[1])
            flat = probe.reshape(spec.probe_modes, -1)
            _, sv, vh = jnp.linalg.svd(flat, full_matrices=False)
            probe = (sv[:, None] * vh).reshape(probe.shape)
            p = jnp.stack([jnp.real(probe), jnp.imag(probe)]).astype(p.dtype)
        if fix:
            p = p * jnp.sqrt(probe_total / jnp.sum(p * p))
        return p

    def object_part(amp, phase, pos, flags: tuple[bool, ...]):
        blur, zblur, amp_range, positive, recenter = flags
        for on, cfg, lateral in ((blur, cons.object_blur, True),
                                 (zblur, cons.slice_blur, False)):
            if on:
                if cfg.target in ("amplitude", "both"):
                    amp = _blur(amp, cfg, lateral)
                if cfg.target in ("phase", "both"):
                    phase = _blur(phase, cfg, lateral)
        if amp_range:
            cfg = cons.object_amplitude_range
            amp = _relaxed(amp, jnp.clip(amp, *cfg.range), cfg.relax)
        if positive:
            phase = _relaxed(phase, jnp.maximum(phase, 0.0), cons.positive_phase.relax)
        if recenter:
            mean = jnp.mean(pos - initial_positions, axis=0)
            pos = pos - (1 - cons.recenter_positions.relax) * mean
        return amp, phase, pos

    probe_jit = jax.jit(probe_part, static_argnums=(1, 2), donate_argnums=(0,))
    object_jit = jax.jit(object_part, static_argnums=(3,), donate_argnums=(0, 1, 2))

    def constrain(variables: dict, due: tuple[bool, ...]) -> dict:
        out = dict(variables)
        if due[0] or due[1]:
            out["probe"] = probe_jit(variables["probe"], due[0], due[1])
        if any(due[2:]):
            out["object_amplitude"], out["object_phase"], out["positions"] = object_jit(
                variables["object_amplitude"], variables["object_phase"],
                variables["positions"], tuple(due[2:]))
        return out

    return constrain


# ------------------------------------------------------------------- checkpoints
def _write_checkpoint(path: Path, variables: dict, opt_state: Any, iteration: int,
                      losses: list[float], params: PtychoParams) -> None:
    leaves = jax.tree_util.tree_leaves(opt_state)
    arrays = {f"var_{k}": np.asarray(v) for k, v in variables.items()}
    arrays.update({f"opt_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    tmp = path.with_name(f".{path.name}.partial.npz")
    np.savez(tmp, iteration=np.int64(iteration), loss=np.asarray(losses, dtype=np.float64),
             seed=np.int64(params.seed), n_opt=np.int64(len(leaves)),
             params=np.asarray(params.to_json()), **arrays)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Contents of a checkpoint: ``iteration`` (next to run), ``loss`` history,
    ``seed``, ``params`` (JSON text), ``variables`` (dict of arrays), ``opt_leaves``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            n_opt = int(f["n_opt"])
            return {
                "iteration": int(f["iteration"]),
                "loss": f["loss"].tolist(),
                "seed": int(f["seed"]),
                "params": str(f["params"]),
                "variables": {k: f[f"var_{k}"] for k in _VARIABLES},
                "opt_leaves": [f[f"opt_{i}"] for i in range(n_opt)],
            }
    except (ValueError, KeyError, OSError, EOFError, TypeError) as err:
        raise ValueError(
            f"{path} is not a stem4d ptychography checkpoint (a .npz written by "
            f"reconstruct(..., checkpoint=...)): {type(err).__name__}: {err}"
        ) from None


# ------------------------------------------------------------------------ driver
def _init_array(init: Any, key: str) -> np.ndarray | None:
    if init is None:
        return None
    if isinstance(init, xr.DataTree):
        try:
            node = {"object": "object", "probe": "probe", "positions": "positions",
                    "object_tilts": "object"}[key]
            ds = init[node].to_dataset()
        except KeyError:
            return None
        if key == "object":
            return np.asarray(ds["amplitude"] * np.exp(1j * ds["phase"]))
        if key == "object_tilts":
            return np.asarray(ds["tilts"]) if "tilts" in ds else None
        return np.asarray(ds[key])
    value = init.get(key) if isinstance(init, Mapping) else None
    return None if value is None else np.asarray(value)


def _check_resume(path: Any, ck: dict[str, Any], params: PtychoParams) -> None:
    """Refuse a checkpoint written with other settings, or beyond the last iteration."""
    import json

    def settings(p: dict[str, Any]) -> dict[str, Any]:
        p = {k: v for k, v in p.items() if k not in ("checkpoint", "output", "measurements")}
        p["solver"] = {k: v for k, v in p["solver"].items() if k != "iterations"}
        return p

    before, now = settings(json.loads(ck["params"])), settings(json.loads(params.to_json()))
    if before != now:
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise ValueError(f"checkpoint {path} was written with other settings ({', '.join(differ)} "
                         "differ): a run resumes exactly only with the same parameters "
                         "(solver.iterations, checkpoint, output and the measurement file's "
                         "name may change)")
    if ck["iteration"] > params.solver.iterations:
        raise ValueError(f"checkpoint {path} is at iteration {ck['iteration']}, beyond "
                         f"solver.iterations = {params.solver.iterations}")


def _init_grid(init: Any, dx: float) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The object grid of a previous result given as ``init``: the object pixel (row,
    column) of scan-frame position (0, 0) and the object shape; None for other inits."""
    if not isinstance(init, xr.DataTree) or "object" not in init.children:
        return None
    obj = init["object"]
    rx, ry = (np.asarray(obj[d].values, dtype=float) for d in ("rx", "ry"))
    step = float(rx[1] - rx[0]) if rx.size > 1 else dx
    if abs(step - dx) > 1e-6 * dx:
        raise ValueError(f"init: the previous result's object has {step:.6g} Å pixels but "
                         f"this run's are {dx:.6g} Å (another detector size or calibration)")
    return np.array([np.rint(-rx[0] / dx), np.rint(-ry[0] / dx)]), (rx.size, ry.size)


def _initial_tilts(params: PtychoParams, init: Any, n_scan: int) -> tuple[np.ndarray, str]:
    """Initial object tilts ``(1, 2)`` or ``(n_scan, 2)`` mrad and the model's tilt mode."""
    per_position = params.object.tilt_per_position
    rows = n_scan if per_position else 1
    given = _init_array(init, "object_tilts")
    if given is None:
        tilts = np.broadcast_to(np.asarray(params.object.tilt, dtype=float), (rows, 2))
    else:
        given = np.asarray(given, dtype=float)
        if given.shape in ((2,), (1, 2)):
            tilts = np.broadcast_to(given.reshape(1, 2), (rows, 2))
        elif given.shape == (n_scan, 2) and per_position:
            tilts = given
        else:
            raise ValueError(
                f"init object_tilts must have shape (1, 2)"
                f"{f' or ({n_scan}, 2)' if per_position else ''} (mrad; one per position "
                f"needs object.tilt_per_position = true), got {given.shape}")
        if not np.all(np.isfinite(tilts)):
            raise ValueError("init object_tilts must be finite (mrad)")
    tilts = np.array(tilts, dtype=float)
    learned = params.solver.update.object_tilts.learning_rate > 0
    if params.object.slices == 1:
        if learned or np.any(tilts != 0):
            warnings.warn("an object tilt has no effect on a single-slice object (it tilts "
                          "the propagation between slices): it is ignored", UserWarning,
                          stacklevel=3)
        return tilts, "none"
    if not learned and not np.any(tilts != 0):
        return tilts, "none"
    return tilts, "per_position" if per_position else "global"


def reconstruct(
    measurements: Any,
    params: PtychoParams | Mapping[str, Any] | str | os.PathLike,
    *,
    init: Mapping[str, Any] | xr.DataTree | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    device: Any = None,
    callback: Callable[[int, float, xr.DataArray], Any] | None = None,
) -> xr.DataTree:
    """Reconstruct object and probe from ptychographic diffraction patterns.

    Parameters
    ----------
    measurements
        Preprocessed patterns (counts, non-negative): DataArray ``("scan", "qx", "qy")``
        or ``("rx", "ry", "qx", "qy")``, or an array; zero frequency at pixel ``N//2``,
        ``qx`` parallel to the scan's ``rx``. Scan order is slow-major (``rx`` rows).
        All patterns are loaded into memory (every iteration needs all of them).
    params
        :class:`PtychoParams`, a dict, or a YAML/JSON path (:func:`load_params`).
    init
        Optional starting values: a dict with ``probe`` (complex ``(M, N, N)``, any
        scale: rescaled to the data), ``object`` (complex ``(O, S, H, W)`` or ``(H, W)``),
        ``positions`` (``(n, 2)`` Å, scan frame) and/or ``object_tilts`` (``(1, 2)`` or,
        with ``object.tilt_per_position``, ``(n, 2)`` mrad), or a previous result DataTree.
    progress
        Show a tqdm progress bar with the loss.
    checkpoint
        A checkpoint file written by an earlier run (``params.checkpoint``) to resume
        from: the run continues exactly as if it had not stopped.
    device
        JAX device for the state (default: JAX's default device).
    callback
        Called after every iteration as ``callback(iteration, loss, phase)`` with the
        1-based iteration, its mean loss and the object phase (rad) of object mode 0
        summed over slices, a ``(rx, ry)`` DataArray in Å (scan frame). Copies the phase
        to the host each iteration: for monitoring and benchmarks (its time is counted in
        ``seconds_per_iteration``).

    Returns
    -------
    DataTree (see :func:`stem4d.ptycho.result.make_result`); also written to
    ``params.output.directory`` when that is set.
    """
    params = load_params(params)
    t_start = time.perf_counter()
    data, dk = model_patterns(measurements, params)
    n_scan, n, _ = data.shape
    lam = float(electron_wavelength(params.probe.beam_energy))
    dx = 1.0 / (n * dk)

    # positions (Å, scan frame) -> probe-window corners on the object grid (pixels)
    pos_a = _init_array(init, "positions")
    if pos_a is None:
        pos_a = scan_positions(params.scan, dx, params.seed)
    elif pos_a.shape != (n_scan, 2):
        raise ValueError(f"init positions must have shape ({n_scan}, 2), got {pos_a.shape}")
    margin = params.object.margin
    grid = _init_grid(init, dx)
    if grid is None:
        offset = margin + n // 2 - np.floor(pos_a.min(axis=0) / dx)  # pixel of scan-frame 0
    else:  # a previous result: keep its object grid, whatever the positions did
        offset, init_shape = grid
    corners = pos_a / dx + offset - n // 2
    need = (int(np.ceil(corners[:, 0].max())) + n + margin,
            int(np.ceil(corners[:, 1].max())) + n + margin)
    if params.object.shape:
        obj_shape = tuple(params.object.shape)
    else:
        obj_shape = need if grid is None else init_shape
    if obj_shape[0] < need[0] or obj_shape[1] < need[1]:
        raise ValueError(f"object.shape {obj_shape} is too small for the scan and probe "
                         f"window: needs at least {need} pixels")
    if corners.min() < 0:
        raise ValueError("the probe positions leave the object grid of the previous result "
                         f"(a probe window starts at pixel {corners.min():.1f} < 0): start a "
                         "new object or recentre the positions")
    n_om, n_sl = params.object.modes, params.object.slices

    # measurements scaled to a mean pattern sum of N^2, unshifted FFT order
    mean_total = float(np.mean(np.sum(data, axis=(1, 2), dtype=np.float64)))
    if mean_total <= 0:
        raise ValueError("measurements are all zero")
    scale = n * n / mean_total
    targets = _targets(data, scale, params.solver.loss == "amplitude")

    # probe
    powers = params.probe.powers()
    probe0 = _init_array(init, "probe")
    if probe0 is None:
        if params.probe.source == "given":
            raise ValueError("probe.source = 'given' needs init={'probe': ...}")
        main = make_probe((n, n), dx, beam_energy=params.probe.beam_energy,
                          convergence_semiangle=params.probe.convergence_semiangle,
                          aberrations=params.probe.aberrations, angle_units="rad",
                          soft_edge=params.probe.soft_aperture_edge)
        probe0 = probe_modes(main, powers)
    else:
        probe0 = np.asarray(probe0, dtype=complex)
        if probe0.ndim == 2:
            probe0 = probe_modes(probe0, powers)
        if probe0.shape != (params.probe.modes, n, n):
            raise ValueError(f"init probe must have shape ({params.probe.modes}, {n}, {n}) "
                             f"(probe.modes, detector, detector), got {probe0.shape}")
    if params.probe.z_shift != 0:
        probe0 = np.fft.ifft2(np.fft.fft2(probe0) * fresnel_propagator(
            (n, n), dx, lam, params.probe.z_shift))
    probe0 = probe0 * np.sqrt(n * n / np.sum(np.abs(probe0) ** 2))
    tilts0, tilt_mode = _initial_tilts(params, init, n_scan)

    obj0 = _init_array(init, "object")
    if obj0 is None:
        obj0 = np.ones((n_om, n_sl, *obj_shape), dtype=complex)
        if n_om > 1:  # identical modes get identical gradients and never separate
            rng = np.random.default_rng([params.seed, 3])
            obj0 = np.exp(1j * rng.uniform(0.0, 1e-3, obj0.shape))
    else:
        obj0 = np.asarray(obj0, dtype=complex)
        if obj0.ndim == 2:
            obj0 = np.broadcast_to(obj0, (n_om, n_sl, *obj0.shape))
        if obj0.shape != (n_om, n_sl, *obj_shape):
            raise ValueError(f"init object must have shape {(n_om, n_sl, *obj_shape)} "
                             f"(object modes, slices, rows, columns), got {obj0.shape}")

    spec = ModelSpec(
        window=n, object_shape=obj_shape, probe_modes=params.probe.modes, object_modes=n_om,
        slices=n_sl, occupancies=tuple(params.object.occupancy()), wavelength=lam,
        pixel_size=dx, slice_thickness=float(params.object.slice_thickness or 0.0),
        loss=params.solver.loss, reduction=params.solver.loss_reduction,
        train_positions=params.solver.update.positions.learning_rate > 0,
        tilts=tilt_mode, detector_blur=float(params.detector.blur),
    )
    put = (lambda x: jax.device_put(x, device)) if device is not None else jax.device_put
    variables = {
        "object_amplitude": put(np.abs(obj0).astype(np.float32)),
        "object_phase": put(np.angle(obj0).astype(np.float32)),
        "probe": put(np.stack([probe0.real, probe0.imag]).astype(np.float32)),
        "positions": put(corners.astype(np.float32)),
        "object_tilts": put(tilts0.astype(np.float32)),
    }
    probe_lr_factor = math.sqrt(scale) if params.solver.update.probe_units == "measurements" \
        else 1.0
    opt = _optimizer(params, probe_lr_factor)
    opt_state = jax.jit(opt.init)(variables)  # one compilation instead of one per leaf
    start, losses = 0, []
    if checkpoint is not None:
        ck = load_checkpoint(checkpoint)
        for k in _VARIABLES:
            if ck["variables"][k].shape != variables[k].shape:
                raise ValueError(f"checkpoint {checkpoint}: {k} has shape "
                                 f"{ck['variables'][k].shape}, this run needs "
                                 f"{variables[k].shape}")
        variables = {k: put(ck["variables"][k]) for k in _VARIABLES}
        treedef = jax.tree_util.tree_structure(opt_state)
        if treedef.num_leaves != len(ck["opt_leaves"]):
            raise ValueError(f"checkpoint {checkpoint} holds another optimizer state "
                             "(optimizer or learning rates differ)")
        opt_state = jax.tree_util.tree_unflatten(treedef, [put(a) for a in ck["opt_leaves"]])
        start, losses = ck["iteration"], list(ck["loss"])
        _check_resume(checkpoint, ck, params)
    targets_dev = put(targets)
    geometry = None
    if not spec.train_positions:  # positions fixed: shift ramps computed once, on the host
        geometry = {k: put(v) for k, v in fixed_geometry(corners.astype(np.float32), n).items()}

    step = _make_step(spec, opt)
    cons = params.solver.constraints
    constrain = _make_constraints(spec, float(n * n), cons, put(corners.astype(np.float32)))
    ck_every = params.checkpoint.every
    ck_path = None
    if ck_every > 0:
        if params.checkpoint.path:
            ck_path = Path(params.checkpoint.path)
        elif params.output.directory:
            ck_path = Path(params.output.directory) / "checkpoint.npz"
        else:
            raise ValueError("checkpoint.every > 0 needs checkpoint.path or output.directory")
        ck_path.parent.mkdir(parents=True, exist_ok=True)

    bs = min(params.solver.batch_size, n_scan)
    n_batches = -(-n_scan // bs)
    total = params.solver.iterations
    times: list[float] = []
    compile_s = None
    bar = tqdm(total=total, initial=min(start, total), disable=not progress, desc="ptycho",
               unit="it")
    for it in range(start, total):
        t0 = time.perf_counter()
        order = np.random.default_rng([params.seed, 2, it]).permutation(n_scan)
        padded = np.zeros(n_batches * bs, dtype=np.int32)
        padded[:n_scan] = order
        weight = np.zeros(n_batches * bs, dtype=np.float32)
        weight[:n_scan] = 1.0
        active = {k: jnp.asarray(getattr(params.solver.update, k).active(it))
                  for k in _VARIABLES}
        batch_losses = []
        for b in range(n_batches):
            sl = slice(b * bs, (b + 1) * bs)
            w = weight[sl]
            variables, opt_state, loss = step(variables, opt_state, padded[sl], w, active,
                                              targets_dev, geometry)
            batch_losses.append(loss)
            if compile_s is None:
                loss.block_until_ready()
                compile_s = time.perf_counter() - t0
        due = _due_constraints(cons, spec, it)
        if any(due):
            variables = constrain(variables, due)
        counts = weight.reshape(n_batches, bs).sum(axis=1)
        losses.append(float(np.dot(np.asarray(jax.device_get(batch_losses)), counts)) / n_scan)
        times.append(time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if callback is not None:
            ph = np.asarray(variables["object_phase"])[0].sum(axis=0)
            coords = {d: (d, (np.arange(ph.shape[i]) - offset[i]) * dx, {"units": "Å"})
                      for i, d in enumerate(("rx", "ry"))}
            callback(it + 1, losses[-1], xr.DataArray(ph, dims=("rx", "ry"), coords=coords,
                                                      attrs={"units": "rad"}))
        if ck_path is not None and ((it + 1) % ck_every == 0 or it + 1 == total):
            _write_checkpoint(ck_path, variables, opt_state, it + 1, losses, params)
    bar.close()

    host = {k: np.asarray(v) for k, v in variables.items()}
    probe = (host["probe"][0] + 1j * host["probe"][1]) / math.sqrt(scale)
    centres_a = (host["positions"].astype(float) + n // 2 - offset) * dx
    steady = times[1:] if len(times) > 1 else times
    info = {
        "wavelength": lam, "pixel_size": dx, "detector_pixel_size": dk,
        "intensity_scale": scale, "iterations_run": len(times),
        "seconds_per_iteration": float(np.median(steady)) if steady else float("nan"),
        "first_step_seconds": float(compile_s) if compile_s is not None else float("nan"),
        "total_seconds": time.perf_counter() - t_start,
        "device": str(next(iter(variables["probe"].devices()))),
    }
    out = _result.make_result(
        amplitude=host["object_amplitude"], phase=host["object_phase"], probe=probe,
        positions=centres_a, initial_positions=pos_a, object_offset=tuple(offset),
        pixel_size=dx, slice_thickness=spec.slice_thickness, loss=losses,
        params_json=params.to_json(), info=info, tilts=host["object_tilts"].astype(float),
    )
    if params.output.directory:
        _result.write_outputs(out, params.output.directory, name=params.output.name,
                              figures=params.output.figures)
    return out
