"""Ptychography parameters: pydantic models with units, loaded from YAML, JSON or a dict.

A parameter file has one section per concern::

    probe:       beam energy (eV), convergence semiangle (mrad), aberrations, modes
    object:      modes and occupancies, slices and slice thickness (Å), size
    scan:        scan shape, step (Å), affine correction, jitter, or given positions
    detector:    pattern size and pixel calibration
    measurements: preprocessing (validated by stem4d.ptycho.measurements)
    solver:      iterations, batch size, loss, optimizer, learning rate per variable,
                 constraints
    checkpoint:  every K iterations, file
    output:      directory, figures
    seed:        random seed (jitter, minibatch order)

Units are stated in every field; angles of aberrations in the file are in degrees by
default (``aberration_angle_units``), as in PtyRAD files. After validation the
aberrations are Krivanek polar with angles in **radians** (``aberration_angle_units``
then reads ``"rad"``), so dumping and reloading a model gives the same model.

:func:`load_params` accepts a path (``.yaml``/``.yml``/``.json``), a dict or a model;
:func:`from_ptyrad` maps a PtyRAD parameter dict (``init_params``, ``model_params``,
``loss_params``, ``constraint_params``, ``recon_params``) onto these models and names
every field it does not support in one warning (an error with ``strict=True``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .optics import SUPPORTED_NOTATIONS, polar_aberrations

__all__ = [
    "PtychoParams",
    "ProbeParams",
    "ObjectParams",
    "ScanParams",
    "DetectorParams",
    "VariableUpdate",
    "UpdateParams",
    "ConstraintParams",
    "SolverParams",
    "CheckpointParams",
    "OutputParams",
    "load_params",
    "from_ptyrad",
    "ValidationError",
]

_POWER_TOL = 1e-6


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_fractions(values: list[float] | None, n: int, what: str, count_name: str) -> None:
    if values is None:
        return
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} values but {count_name} = {n}")
    if any(v < 0 for v in values):
        raise ValueError(f"{what} must be non-negative, got {values}")
    if abs(sum(values) - 1.0) > _POWER_TOL:
        raise ValueError(f"{what} must sum to 1, got sum {sum(values):.6g} ({values})")


# ----------------------------------------------------------------------------- probe
class ProbeParams(_Model):
    """Illumination: the probe from the electron optics, or given."""

    illumination: Literal["electron"] = Field(
        "electron", description="Type of illumination; only electrons are supported.")
    source: Literal["optics", "given"] = Field(
        "optics",
        description="'optics': simulate the probe from beam energy, convergence semiangle "
        "and aberrations; 'given': the initial probe is passed to reconstruct(init=...).")
    beam_energy: float | None = Field(
        None, gt=0, description="Electron kinetic energy, eV (300 kV -> 300000). Required "
        "for electrons (wavelength of the propagator and angle calibrations).")
    convergence_semiangle: float | None = Field(
        None, gt=0, description="Probe-forming aperture semiangle, mrad. Required for "
        "source='optics'.")
    aberrations: dict[str, float] = Field(
        default_factory=dict,
        description="Aberration coefficients: lengths in Å, angles in "
        "`aberration_angle_units`. Notations: " + SUPPORTED_NOTATIONS + ". Normalized on "
        "load to Krivanek polar (Cnm in Å, phinm in rad). defocus = -C10 (positive "
        "defocus = underfocus).")
    aberration_angle_units: Literal["deg", "rad"] = Field(
        "deg", description="Units of the aberration angles (phinm, Haider ...phi) as given; "
        "'rad' after validation.")
    modes: int = Field(1, ge=1, description="Number of mutually incoherent probe modes.")
    mode_powers: list[float] | None = Field(
        None, description="Initial fraction of the intensity in each probe mode (sum 1). "
        "Default: 1 for one mode, else 0.9 in the first mode and the rest shared equally.")
    soft_aperture_edge: bool = Field(
        True, description="Give the simulated aperture a one-detector-pixel linear edge.")

    @field_validator("beam_energy")
    @classmethod
    def _energy_in_ev(cls, v: float | None) -> float | None:
        if v is not None and v < 1000:
            raise ValueError(
                f"beam_energy is in eV; {v} looks like kV (did you mean {v * 1e3:g} eV?)")
        return v

    @model_validator(mode="after")
    def _check(self) -> ProbeParams:
        if self.beam_energy is None:
            raise ValueError("probe.beam_energy (eV) is required for electron illumination")
        if self.source == "optics" and self.convergence_semiangle is None:
            raise ValueError(
                "probe.convergence_semiangle (mrad) is required when probe.source = 'optics'")
        polar = polar_aberrations(self.aberrations, self.aberration_angle_units)
        object.__setattr__(self, "aberrations", polar)
        object.__setattr__(self, "aberration_angle_units", "rad")
        _check_fractions(self.mode_powers, self.modes, "probe.mode_powers", "probe.modes")
        return self

    def powers(self) -> list[float]:
        """Initial power of each probe mode (sums to 1)."""
        if self.mode_powers is not None:
            return list(self.mode_powers)
        if self.modes == 1:
            return [1.0]
        return [0.9] + [0.1 / (self.modes - 1)] * (self.modes - 1)


# ---------------------------------------------------------------------------- object
class ObjectParams(_Model):
    """The object: transmission per slice and mode, as amplitude and phase."""

    modes: int = Field(1, ge=1, description="Number of object modes (incoherent sum).")
    occupancies: list[float] | None = Field(
        None, description="Occupancy of each object mode (sum 1); default uniform.")
    slices: int = Field(1, ge=1, description="Number of slices along the beam.")
    slice_thickness: float | None = Field(
        None, gt=0, description="Distance between slices, Å. Required when slices > 1.")
    shape: tuple[int, int] | None = Field(
        None, description="Object size (rows, columns), pixels of the real-space grid "
        "(Å per pixel = 1 / (detector pixels x detector pixel size in 1/Å)). Default: "
        "the scan's extent plus the probe window plus 2 x `margin`.")
    margin: int = Field(
        4, ge=1, description="Extra object pixels around the area the probe window covers.")

    @model_validator(mode="after")
    def _check(self) -> ObjectParams:
        if self.slices > 1 and self.slice_thickness is None:
            raise ValueError(
                f"object.slice_thickness (Å) is required when object.slices = {self.slices} > 1")
        _check_fractions(self.occupancies, self.modes, "object.occupancies", "object.modes")
        if self.shape is not None and min(self.shape) < 1:
            raise ValueError(f"object.shape must be positive pixels, got {self.shape}")
        return self

    def occupancy(self) -> list[float]:
        """Occupancy of each object mode (sums to 1)."""
        return list(self.occupancies) if self.occupancies else [1.0 / self.modes] * self.modes


# ------------------------------------------------------------------------------ scan
class ScanParams(_Model):
    """Probe positions: a raster with an affine correction and jitter, or given."""

    shape: tuple[int, int] = Field(
        ..., description="Scan positions (slow, fast) = (rows, columns); for given "
        "positions any pair with slow x fast = n_positions.")
    n_positions: int | None = Field(
        None, ge=1, description="Number of probe positions (= patterns); default "
        "slow x fast. Must equal slow x fast.")
    step: float | tuple[float, float] | None = Field(
        None, description="Raster step, Å: one number or (slow, fast). Required unless "
        "`positions` are given.")
    affine: tuple[float, float, float, float] = Field(
        (1.0, 0.0, 0.0, 0.0), description="[scale, asymmetry, rotation (deg), shear (deg)] "
        "applied to the raster about its centre: M = scale · diag(1 + asym/2, 1 - asym/2) "
        "· R(rotation) · [[1, 0], [tan(shear), 1]] in (row, column) components.")
    jitter: float = Field(
        0.0, ge=0, description="Standard deviation of Gaussian random displacements added "
        "to the initial positions, real-space pixels (seeded by `seed`).")
    positions: list[tuple[float, float]] | None = Field(
        None, description="Given probe positions (row, column), Å, in scan order "
        "(slow-major); replaces the raster.")

    @field_validator("step")
    @classmethod
    def _positive_step(cls, v: Any) -> Any:
        if v is None:
            return v
        vals = [v] if np.ndim(v) == 0 else list(v)
        if any(not (math.isfinite(x) and x > 0) for x in vals):
            raise ValueError(f"scan.step must be positive Å, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> ScanParams:
        slow, fast = self.shape
        if slow < 1 or fast < 1:
            raise ValueError(f"scan.shape must be positive, got {self.shape}")
        if self.n_positions is not None and self.n_positions != slow * fast:
            raise ValueError(
                f"scan.n_positions = {self.n_positions} must equal slow x fast = "
                f"{slow} x {fast} = {slow * fast}")
        if self.positions is None and self.step is None:
            raise ValueError("scan.step (Å) is required unless scan.positions are given")
        if self.positions is not None and len(self.positions) != slow * fast:
            raise ValueError(
                f"scan.positions has {len(self.positions)} positions but scan.shape = "
                f"{tuple(self.shape)} needs slow x fast = {slow * fast}")
        return self

    @property
    def count(self) -> int:
        """Number of probe positions."""
        return self.shape[0] * self.shape[1]

    def step_pair(self) -> tuple[float, float]:
        """Raster step (slow, fast), Å."""
        if self.step is None:
            raise ValueError("scan.step is not set")
        s = self.step
        return (float(s), float(s)) if np.ndim(s) == 0 else (float(s[0]), float(s[1]))


# -------------------------------------------------------------------------- detector
class DetectorParams(_Model):
    """Diffraction patterns as they enter the solver (after preprocessing)."""

    shape: int | None = Field(
        None, ge=2, description="Detector pixels per side (square patterns); checked "
        "against the data when given.")
    pixel_size: float | None = Field(
        None, gt=0, description="Detector pixel size in `pixel_units`; default: read from "
        "the calibrated qx/qy coordinates of the data.")
    pixel_units: Literal["1/Å", "mrad"] = Field(
        "1/Å", description="Units of `pixel_size`: '1/Å' or 'mrad' (converted with the "
        "wavelength).")


# ---------------------------------------------------------------------------- solver
class VariableUpdate(_Model):
    """Learning rate and active iterations of one optimized variable."""

    learning_rate: float = Field(..., ge=0, description="Learning rate in the variable's "
                                 "units per step (0 = fixed).")
    start_iteration: int = Field(0, ge=0, description="First iteration (0-based) in which "
                                 "the variable is updated.")
    end_iteration: int | None = Field(None, ge=0, description="Iteration from which the "
                                      "variable is no longer updated (None: never stops).")

    def active(self, iteration: int) -> bool:
        """Whether the variable is updated in ``iteration`` (0-based)."""
        if self.learning_rate == 0 or iteration < self.start_iteration:
            return False
        return self.end_iteration is None or iteration < self.end_iteration


class UpdateParams(_Model):
    """Per-variable learning rates.

    Units: object amplitude (dimensionless transmission, ~1), object phase (rad), probe
    (relative: the solver scales the probe to unit mean |ψ|² per window pixel), positions
    (real-space pixels).
    """

    object_amplitude: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=5e-3),
        description="Object amplitude (transmission modulus, dimensionless).")
    object_phase: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=5e-3),
        description="Object phase, rad.")
    probe: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=5e-3, start_iteration=1),
        description="Probe (real and imaginary parts, relative units).")
    positions: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=0.0),
        description="Probe positions, real-space pixels.")


class ConstraintParams(_Model):
    """Constraints applied after an iteration, every N iterations (0 = never)."""

    orthogonalize_probe_modes: int = Field(
        1, ge=0, description="Every N iterations, make the probe modes orthogonal (SVD) "
        "and order them by power.")
    fix_probe_intensity: int = Field(
        1, ge=0, description="Every N iterations, rescale the probe to its initial total "
        "intensity.")
    object_amplitude_range: tuple[float, float] | None = Field(
        None, description="Clip the object amplitude to [min, max] (dimensionless) after "
        "every iteration; None: no clipping.")
    positive_phase: bool = Field(
        False, description="Clip negative object phase (rad) to 0 after every iteration.")

    @field_validator("object_amplitude_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0 <= v[0] < v[1]):
            raise ValueError(f"object_amplitude_range must be [min, max] with 0 <= min < max, "
                             f"got {list(v)}")
        return v


class SolverParams(_Model):
    """Gradient-descent settings."""

    iterations: int = Field(100, ge=0, description="Number of iterations (passes over all "
                            "positions).")
    batch_size: int = Field(32, ge=1, description="Positions per minibatch (the last one "
                            "of an iteration is padded, not recompiled).")
    loss: Literal["amplitude", "poisson"] = Field(
        "amplitude", description="'amplitude': mean (sqrt(I_model) - sqrt(I_meas))^2 "
        "(Gaussian noise on amplitudes); 'poisson': mean (I_model - I_meas log I_model).")
    optimizer: str = Field("adam", description="Name of an optax optimizer (e.g. adam, "
                           "adamw, sgd, lion); called as optax.<name>(learning_rate, **kwargs).")
    optimizer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments of the optax optimizer.")
    update: UpdateParams = Field(default_factory=UpdateParams,
                                 description="Learning rate per variable.")
    constraints: ConstraintParams = Field(default_factory=ConstraintParams,
                                          description="Constraints between iterations.")

    @field_validator("optimizer")
    @classmethod
    def _optax_name(cls, v: str) -> str:
        import optax  # imported here: loading parameters must not need JAX at import

        factory = getattr(optax, v, None)
        if v.startswith("_") or not callable(factory):
            raise ValueError(f"solver.optimizer must name an optax optimizer (e.g. 'adam', "
                             f"'sgd', 'adamw'), got {v!r}")
        return v


class CheckpointParams(_Model):
    """Checkpoints from which a run resumes exactly."""

    every: int = Field(0, ge=0, description="Write a checkpoint every N iterations (0 = "
                       "never); the last iteration always writes one when N > 0.")
    path: str | None = Field(None, description="Checkpoint file (.npz); default "
                             "<output.directory>/checkpoint.npz.")


class OutputParams(_Model):
    """Where results go."""

    directory: str | None = Field(None, description="Output directory; None: reconstruct "
                                  "only returns the result.")
    name: str = Field("ptycho", description="Base name of the result file "
                      "(<name>.nc) in `directory`.")
    figures: bool = Field(True, description="Write PNG figures (object phase, probe modes, "
                          "loss) to `directory`.")


class PtychoParams(_Model):
    """All parameters of a ptychographic reconstruction."""

    probe: ProbeParams = Field(..., description="Illumination.")
    object: ObjectParams = Field(default_factory=ObjectParams, description="Object model.")
    scan: ScanParams = Field(..., description="Probe positions.")
    detector: DetectorParams = Field(default_factory=DetectorParams,
                                     description="Pattern size and calibration.")
    measurements: dict[str, Any] = Field(
        default_factory=dict, description="Measurement preprocessing settings, validated by "
        "stem4d.ptycho.measurements (PtyRAD meas_* names are kept as they are).")
    solver: SolverParams = Field(default_factory=SolverParams, description="Optimization.")
    checkpoint: CheckpointParams = Field(default_factory=CheckpointParams,
                                         description="Checkpoints.")
    output: OutputParams = Field(default_factory=OutputParams, description="Outputs.")
    seed: int = Field(0, description="Random seed: position jitter and minibatch order.")

    def to_json(self) -> str:
        """The parameters as JSON text (round-trips through :func:`load_params`)."""
        return self.model_dump_json()


# ------------------------------------------------------------------------- loading
def load_params(source: str | Path | Mapping[str, Any] | PtychoParams, *,
                strict: bool = False) -> PtychoParams:
    """Validated parameters from a YAML/JSON file, a dict, or a model.

    A dict (or file) with PtyRAD's sections (``init_params``...) is mapped with
    :func:`from_ptyrad` (``strict`` is passed on). A YAML file, a JSON file and the
    equivalent dict give equal models.
    """
    if isinstance(source, PtychoParams):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"parameter file {path} does not exist")
        text = path.read_text()
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ValueError(f"parameter file must be .yaml, .yml or .json, got {path.name!r}")
        if not isinstance(data, Mapping):
            raise ValueError(f"parameter file {path} must hold a mapping, got "
                             f"{type(data).__name__}")
    elif isinstance(source, Mapping):
        data = source
    else:
        raise TypeError("source must be a path, a dict or a PtychoParams, got "
                        f"{type(source).__name__}")
    if "init_params" in data:
        return from_ptyrad(data, strict=strict)
    return PtychoParams.model_validate(dict(data))


# -------------------------------------------------------------------------- PtyRAD
# init_params keys handled by stem4d.ptycho.measurements (kept in `measurements`).
_PTYRAD_MEAS_KEYS = {
    "meas_source", "meas_params", "meas_permute", "meas_reshape", "meas_flipT",
    "meas_crop", "meas_pad", "meas_resample", "meas_add_source_size",
    "meas_add_detector_blur", "meas_remove_neg_values", "meas_normalization",
    "meas_add_poisson_noise", "meas_export", "meas_calibration",
}
_PTYRAD_UPDATE = {"obja": "object_amplitude", "objp": "object_phase", "probe": "probe",
                  "probe_pos_shifts": "positions"}
# PtyRAD constraint -> stem4d field (others must be off)
_PTYRAD_CONSTRAINTS = {"ortho_pmode", "fix_probe_int", "obja_thresh", "objp_postiv"}


def _is_off(value: Any) -> bool:
    """A PtyRAD option that is absent, null, false, or has ``freq``/``state`` off."""
    if value is None or value is False:
        return True
    if isinstance(value, Mapping):
        if "freq" in value:
            return value["freq"] in (None, 0)
        if "state" in value:
            return not value["state"]
    return False


def from_ptyrad(params: Mapping[str, Any], *, strict: bool = False) -> PtychoParams:
    """Map a PtyRAD parameter dict onto :class:`PtychoParams`.

    Covered: ``init_params`` (beam, probe modes, aberrations in degrees, object modes,
    slices, scan, affine, jitter, seed; ``meas_*`` preprocessing keys are kept under
    ``measurements`` for :mod:`stem4d.ptycho.measurements`), ``model_params``
    (``update_params`` for obja/objp/probe/probe_pos_shifts, ``optimizer_params``),
    ``loss_params`` (``loss_single`` → amplitude, ``loss_poissn`` → poisson),
    ``constraint_params`` (ortho_pmode, fix_probe_int, obja_thresh, objp_postiv) and
    ``recon_params`` (NITER, BATCH_SIZE, output_dir, SAVE_ITERS as checkpoint interval).

    Every other field that is set (not null/off) is named in one ``UserWarning``, or
    raises ``ValueError`` with ``strict=True``.
    """
    unsupported: list[str] = []
    init = dict(params.get("init_params") or {})
    model = dict(params.get("model_params") or {})
    loss = dict(params.get("loss_params") or {})
    cons = dict(params.get("constraint_params") or {})
    recon = dict(params.get("recon_params") or {})
    for key in params:
        if key not in ("init_params", "model_params", "loss_params", "constraint_params",
                       "recon_params", "hypertune_params"):
            unsupported.append(key)
    if params.get("hypertune_params") and params["hypertune_params"].get("if_hypertune"):
        unsupported.append("hypertune_params")

    def take(d: dict, key: str, default: Any = None) -> Any:
        return d.pop(key, default)

    if take(init, "probe_illum_type", "electron") != "electron":
        raise ValueError("init_params.probe_illum_type: only 'electron' is supported")
    for key in ("beam_kev", "probe_dRn", "probe_Rn", "probe_D_H", "probe_D_FZP", "probe_Ls"):
        if take(init, key) is not None:
            unsupported.append(f"init_params.{key}")
    kv = take(init, "probe_kv")
    probe: dict[str, Any] = {
        "beam_energy": None if kv is None else float(kv) * 1e3,
        "convergence_semiangle": take(init, "probe_conv_angle"),
        "aberrations": dict(take(init, "probe_aberrations") or {}),
        "aberration_angle_units": "deg",
    }
    pmodes = int(take(init, "probe_pmode_max", 1) or 1)
    probe["modes"] = pmodes
    pows = take(init, "probe_pmode_init_pows")
    if pows is not None and pmodes > 1:
        pows = [float(p) for p in np.atleast_1d(pows)]
        if len(pows) == 1:
            probe["mode_powers"] = [1.0 - pows[0] * (pmodes - 1)] + pows * (pmodes - 1)
        elif len(pows) == pmodes:
            total = sum(pows)
            probe["mode_powers"] = [p / total for p in pows]
        else:
            raise ValueError(f"init_params.probe_pmode_init_pows has {len(pows)} values for "
                             f"probe_pmode_max = {pmodes}")
    src = take(init, "probe_source", "simu")
    if src == "simu":
        probe["source"] = "optics"
        take(init, "probe_params")
    else:
        probe["source"] = "given"
        unsupported.append(f"init_params.probe_source={src!r} (pass the probe to "
                           "reconstruct(init=...))")
        take(init, "probe_params")

    obj: dict[str, Any] = {"modes": int(take(init, "obj_omode_max", 1) or 1),
                           "slices": int(take(init, "obj_Nlayer", 1) or 1)}
    thick = take(init, "obj_slice_thickness")
    if thick is not None:
        obj["slice_thickness"] = float(thick)
    occu = take(init, "obj_omode_init_occu")
    if isinstance(occu, Mapping) and occu.get("occu_type") == "custom":
        obj["occupancies"] = [float(v) for v in occu.get("init_occu") or []]
    osrc = take(init, "obj_source", "simu")
    oparams = take(init, "obj_params")
    if osrc != "simu":
        unsupported.append(f"init_params.obj_source={osrc!r}")
    elif oparams is not None:
        oparams = list(oparams)
        if len(oparams) == 4:
            obj["shape"] = (int(oparams[2]), int(oparams[3]))

    scan: dict[str, Any] = {
        "shape": (take(init, "pos_N_scan_slow"), take(init, "pos_N_scan_fast")),
        "n_positions": take(init, "pos_N_scans"),
        "step": take(init, "pos_scan_step_size"),
        "jitter": float(take(init, "pos_scan_rand_std", 0.15) or 0.0),
    }
    affine = take(init, "pos_scan_affine")
    if affine is not None:
        scan["affine"] = tuple(float(a) for a in affine)
    psrc = take(init, "pos_source", "simu")
    take(init, "pos_params")
    if psrc != "simu":
        unsupported.append(f"init_params.pos_source={psrc!r} (give scan.positions)")
    if take(init, "pos_scan_flipT") not in (None, [0, 0, 0]):
        unsupported.append("init_params.pos_scan_flipT")

    detector: dict[str, Any] = {}
    npix = take(init, "meas_Npix")
    if npix is not None:
        detector["shape"] = int(npix)
    measurements = {k: init.pop(k) for k in list(init) if k in _PTYRAD_MEAS_KEYS}
    seed = take(init, "random_seed")
    for key in ("probe_permute", "probe_z_shift", "obj_z_crop", "obj_z_pad",
                "obj_z_resample", "tilt_source", "tilt_params"):
        value = take(init, key)
        if key == "tilt_params" and isinstance(value, Mapping):
            tilts = value.get("init_tilts", [[0, 0]])
            if np.any(np.asarray(tilts, dtype=float) != 0):
                unsupported.append("init_params.tilt_params")
        elif key == "tilt_source":
            if value not in (None, "simu"):
                unsupported.append(f"init_params.tilt_source={value!r}")
        elif value is not None:
            unsupported.append(f"init_params.{key}")
    take(init, "probe_normalization")  # the solver scales the probe to the data itself
    unsupported += [f"init_params.{k}" for k, v in init.items() if v is not None]

    solver: dict[str, Any] = {}
    update: dict[str, Any] = {}
    for pkey, name in _PTYRAD_UPDATE.items():
        cfg = (model.get("update_params") or {}).get(pkey)
        if cfg is not None:
            update[name] = {"learning_rate": float(cfg.get("lr", 0.0) or 0.0),
                            "start_iteration": int(cfg.get("start_iter") or 0),
                            "end_iteration": cfg.get("end_iter")}
    for pkey, cfg in (model.get("update_params") or {}).items():
        if pkey not in _PTYRAD_UPDATE and cfg and float(cfg.get("lr", 0) or 0) != 0:
            unsupported.append(f"model_params.update_params.{pkey}")
    if update:
        solver["update"] = update
    opt = model.get("optimizer_params") or {}
    if opt.get("name"):
        solver["optimizer"] = str(opt["name"]).lower()
    if opt.get("configs"):
        solver["optimizer_kwargs"] = dict(opt["configs"])
    if opt.get("load_state"):
        unsupported.append("model_params.optimizer_params.load_state")
    for key, value in model.items():
        if key in ("update_params", "optimizer_params"):
            continue
        if value not in (None, 0, False, [], {}):
            unsupported.append(f"model_params.{key}")

    on = [k for k, v in loss.items() if not _is_off(v)]
    if "loss_poissn" in on and "loss_single" not in on:
        solver["loss"] = "poisson"
    elif "loss_single" in on:
        solver["loss"] = "amplitude"
        if "loss_poissn" in on:
            unsupported.append("loss_params.loss_poissn (together with loss_single)")
    unsupported += [f"loss_params.{k}" for k in on if k not in ("loss_single", "loss_poissn")]
    for k in ("loss_single", "loss_poissn"):
        cfg = loss.get(k)
        if k in on and isinstance(cfg, Mapping) and float(cfg.get("dp_pow", 0.5)) not in (
                0.5, 1.0):
            unsupported.append(f"loss_params.{k}.dp_pow={cfg.get('dp_pow')}")

    constraints: dict[str, Any] = {}
    for key, cfg in cons.items():
        if _is_off(cfg):
            if key == "ortho_pmode":
                constraints["orthogonalize_probe_modes"] = 0
            elif key == "fix_probe_int":
                constraints["fix_probe_intensity"] = 0
            continue
        freq = int(cfg.get("freq", 1) or 1) if isinstance(cfg, Mapping) else 1
        if key == "ortho_pmode":
            constraints["orthogonalize_probe_modes"] = freq
        elif key == "fix_probe_int":
            constraints["fix_probe_intensity"] = freq
        elif key == "obja_thresh" and isinstance(cfg, Mapping) and cfg.get("thresh"):
            constraints["object_amplitude_range"] = tuple(float(t) for t in cfg["thresh"])
        elif key == "objp_postiv":
            constraints["positive_phase"] = True
        else:
            unsupported.append(f"constraint_params.{key}")
    if constraints:
        solver["constraints"] = constraints

    output: dict[str, Any] = {}
    checkpoint: dict[str, Any] = {}
    if recon.get("NITER") is not None:
        solver["iterations"] = int(recon.pop("NITER"))
    bs = recon.pop("BATCH_SIZE", None)
    if isinstance(bs, Mapping):
        if bs.get("size") is not None:
            solver["batch_size"] = int(bs["size"])
        if int(bs.get("grad_accumulation", 1) or 1) != 1:
            unsupported.append("recon_params.BATCH_SIZE.grad_accumulation")
    elif bs is not None:
        solver["batch_size"] = int(bs)
    if recon.get("output_dir") is not None:
        output["directory"] = str(recon.pop("output_dir"))
    save_iters = recon.pop("SAVE_ITERS", None)
    if save_iters:
        checkpoint["every"] = int(save_iters)
    group = recon.pop("GROUP_MODE", None)
    if group not in (None, "random"):
        unsupported.append(f"recon_params.GROUP_MODE={group!r} (stem4d uses random)")
    for key in ("if_quiet", "INDICES_MODE", "prefix_time", "prefix", "postfix",
                "save_result", "result_modes", "recon_dir_affixes", "copy_params",
                "if_hypertune", "output_dir", "selected_figs", "if_save_figs"):
        recon.pop(key, None)
    unsupported += [f"recon_params.{k}" for k, v in recon.items() if v not in (None, False)]

    data: dict[str, Any] = {"probe": probe, "object": obj, "scan": scan, "detector": detector,
                            "measurements": measurements, "solver": solver,
                            "checkpoint": checkpoint, "output": output}
    if seed is not None:
        data["seed"] = int(seed)
    if unsupported:
        msg = ("PtyRAD fields not supported by stem4d (ignored): " + ", ".join(unsupported))
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    return PtychoParams.model_validate(data)
