"""Ptychography parameters: pydantic models with units, loaded from YAML, JSON or a dict.

A parameter file has one section per concern::

    probe:       beam energy (eV), convergence semiangle (mrad), aberrations, modes
    object:      modes and occupancies, slices and slice thickness (Å), size
    scan:        scan shape, step (Å), affine correction, jitter, or given positions
    detector:    pattern size and pixel calibration
    measurements: the file and its preprocessing (keywords of
                 stem4d.ptycho.measurements.prepare_measurements)
    solver:      iterations, batch size, loss, optimizer, learning rate per variable,
                 constraints (each on a schedule: start, every, end)
    checkpoint:  every K iterations, file
    output:      directory, figures
    seed:        random seed (jitter, minibatch order)

Units are stated in every field; angles of aberrations in the file are in degrees by
default (``aberration_angle_units``), as in PtyRAD files. After validation the
aberrations are Krivanek polar with angles in **radians** (``aberration_angle_units``
then reads ``"rad"``), so dumping and reloading a model gives the same model.

:func:`load_params` accepts a path (``.yaml``/``.yml``/``.json``), a dict or a model;
:func:`from_ptyrad` maps a PtyRAD 1.0 parameter dict (``init_params``, ``model_params``,
``loss_params``, ``constraint_params``, ``recon_params``; PtyRAD's defaults for what it
leaves out) onto these models and names every field it does not support in one warning
(an error with ``strict=True``). Iterations are 0-based here; PtyRAD's are 1-based.
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
    "Schedule",
    "ObjectBlur",
    "Relaxed",
    "AmplitudeRange",
    "ConstraintParams",
    "SolverParams",
    "CheckpointParams",
    "OutputParams",
    "load_params",
    "from_ptyrad",
    "MEASUREMENT_KEYS",
    "ValidationError",
]

_POWER_TOL = 1e-6

#: Settings allowed in ``PtychoParams.measurements`` (keywords of
#: :func:`stem4d.ptycho.measurements.prepare_measurements`).
MEASUREMENT_KEYS = (
    "source", "key", "open_kwargs", "permute", "reshape", "scan_shape", "flipT", "center",
    "calibration", "crop", "remove_negative", "normalization", "pad", "resample",
    "source_size", "detector_blur", "poisson",
)


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
    z_shift: float = Field(
        0.0, description="Propagate the initial probe (simulated or given) by this "
        "distance before reconstructing, Å: positive along the beam (into the object), "
        "negative back (PtyRAD's probe_z_shift; e.g. -20 after padding 20 Å of vacuum on "
        "top of the object).")

    @field_validator("beam_energy")
    @classmethod
    def _energy_in_ev(cls, v: float | None) -> float | None:
        if v is not None and v < 1000:
            raise ValueError(
                f"beam_energy is in eV; {v} looks like kV (did you mean {v * 1e3:g} eV?)")
        return v

    @field_validator("convergence_semiangle")
    @classmethod
    def _angle_in_mrad(cls, v: float | None) -> float | None:
        if v is not None and v < 0.1:
            raise ValueError(f"convergence_semiangle is in mrad; {v} looks like radians "
                             f"(did you mean {v * 1e3:g} mrad?)")
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
    tilt: tuple[float, float] = Field(
        (0.0, 0.0), description="Initial object tilt (along rx, along ry), mrad (PtyRAD's "
        "[tilt_y, tilt_x]): the beam crosses the slices at this angle, so from one slice "
        "to the next the wave moves by -slice_thickness * tan(tilt) (the tilted Fresnel "
        "propagator; accurate to about 17 mrad). Multislice objects only.")
    tilt_per_position: bool = Field(
        False, description="One tilt per probe position (all starting at `tilt`, each "
        "optimized on its own when solver.update.object_tilts has a learning rate) "
        "instead of one global tilt.")

    @field_validator("tilt")
    @classmethod
    def _finite_tilt(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(t) and abs(t) < 500 for t in v):
            raise ValueError(f"object.tilt must be finite mrad, |tilt| < 500, got {list(v)}")
        return v

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
    blur: float = Field(
        0.0, ge=0, description="Standard deviation of a Gaussian point-spread function "
        "applied to the model patterns, detector pixels (0: none; PtyRAD's "
        "model_params.detector_blur_std). The measurements are not changed.")


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
    (``probe_units``), positions (real-space pixels), object tilts (mrad).
    """

    object_amplitude: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=5e-3),
        description="Object amplitude (transmission modulus, dimensionless).")
    object_phase: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=5e-3),
        description="Object phase, rad.")
    probe: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=5e-3, start_iteration=1),
        description="Probe (real and imaginary parts, in `probe_units`).")
    positions: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=0.0),
        description="Probe positions, real-space pixels.")
    object_tilts: VariableUpdate = Field(
        default_factory=lambda: VariableUpdate(learning_rate=0.0),
        description="Object tilts, mrad (multislice objects only). Start from a good "
        "guess: from zero, gradient descent finds tilts slowly, as in PtyRAD.")
    probe_units: Literal["relative", "measurements"] = Field(
        "relative", description="Units of the probe's learning rate. 'relative': the "
        "probe's rms amplitude per window pixel (the solver scales the probe to unit mean "
        "|ψ|²); 'measurements': sqrt of the measured intensity as given to the solver, "
        "per pixel (PtyRAD's probe units: the rate is multiplied by "
        "sqrt(N² / mean pattern sum)).")


# ----------------------------------------------------------------------- constraints
class Schedule(_Model):
    """When a constraint runs: after iteration ``start``, then every ``every`` iterations,
    until (not including) iteration ``end``; iterations are 0-based."""

    start: int = Field(0, ge=0, description="First iteration (0-based) after which the "
                       "constraint runs.")
    every: int = Field(1, ge=1, description="Interval between runs, iterations.")
    end: int | None = Field(None, ge=1, description="Iteration (0-based) from which the "
                            "constraint no longer runs; None: until the last one.")

    def due(self, iteration: int) -> bool:
        """Whether the constraint runs after ``iteration`` (0-based)."""
        if iteration < self.start or (self.end is not None and iteration >= self.end):
            return False
        return (iteration - self.start) % self.every == 0


class ObjectBlur(Schedule):
    """Gaussian blur of the object (laterally, or along the slices)."""

    sigma: float = Field(..., ge=0, description="Standard deviation, pixels (lateral) or "
                         "slices (along the beam).")
    kernel_size: int = Field(5, ge=1, description="Length of the (truncated, normalized) "
                             "kernel, pixels or slices; odd.")
    target: Literal["amplitude", "phase", "both"] = Field(
        "both", description="Which part of the object is blurred.")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {v}")
        return v


class Relaxed(Schedule):
    """A constraint mixed with the unconstrained value: ``relax·x + (1 - relax)·c(x)``."""

    relax: float = Field(0.0, ge=0, le=1, description="0: the constraint applies fully; 1: "
                         "it has no effect.")


class AmplitudeRange(Relaxed):
    """Clip the object amplitude to ``[min, max]``."""

    range: tuple[float, float] = Field((0.96, 1.04), description="[min, max] of the object "
                                       "amplitude (dimensionless).")

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 <= v[0] < v[1]):
            raise ValueError(f"object_amplitude_range must be [min, max] with 0 <= min < max, "
                             f"got {list(v)}")
        return v


def _every(value: Any) -> Any:
    """Shorthand of a schedule: N -> after iterations N-1, 2N-1, ... (every N); 0, False,
    None -> off; True -> every iteration."""
    if value is None or value is False or (isinstance(value, int) and not isinstance(
            value, bool) and value == 0):
        return None
    if value is True:
        return {}
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must be a number of iterations >= 0, got {value}")
        return {"start": value - 1, "every": value}
    return value


class ConstraintParams(_Model):
    """Constraints applied between iterations, in this order (as PtyRAD applies them).

    Each is off (None) or runs on a :class:`Schedule`; shorthands: an integer N means
    every N iterations (after the N-th, 2N-th, ...), True every iteration, False/0 off.
    """

    orthogonalize_probe_modes: Schedule | None = Field(
        default_factory=Schedule, description="Make the probe modes orthogonal (SVD) and "
        "order them by power. Shorthand: N (every N iterations), 0 (never).")
    fix_probe_intensity: Schedule | None = Field(
        default_factory=Schedule, description="Rescale the probe to its initial total "
        "intensity (the mean total intensity of a pattern).")
    object_blur: ObjectBlur | None = Field(
        None, description="Lateral Gaussian blur of the object (sigma in pixels; reflected "
        "edges). Shorthand: sigma.")
    slice_blur: ObjectBlur | None = Field(
        None, description="Gaussian blur across the slices (sigma in slices; edge slices "
        "repeated); no effect on a single slice. Shorthand: sigma.")
    object_amplitude_range: AmplitudeRange | None = Field(
        None, description="Clip the object amplitude to [min, max] (dimensionless). "
        "Shorthand: [min, max] (every iteration).")
    positive_phase: Relaxed | None = Field(
        None, description="Clip negative object phase (rad) to 0. Shorthand: True (every "
        "iteration).")
    recenter_positions: Relaxed | None = Field(
        None, description="Remove the mean position correction (keeps the object in place "
        "when positions are optimized); no effect when they are fixed.")

    @field_validator("orthogonalize_probe_modes", "fix_probe_intensity", "positive_phase",
                     "recenter_positions", mode="before")
    @classmethod
    def _schedule_shorthand(cls, v: Any) -> Any:
        return _every(v)

    @field_validator("object_blur", "slice_blur", mode="before")
    @classmethod
    def _blur_shorthand(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"sigma": v} if v > 0 else None
        return v

    @field_validator("object_amplitude_range", mode="before")
    @classmethod
    def _range_shorthand(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return {"range": v}
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
    loss_reduction: Literal["mean", "rms"] = Field(
        "mean", description="How a minibatch's loss is reduced: 'mean' over its patterns "
        "and pixels; 'rms': for the amplitude loss, the square root of that mean divided "
        "by the batch's mean sqrt(I_meas) (PtyRAD's normalized RMSE, loss_single).")
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
    copy_params: bool = Field(True, description="Copy the parameter file into `directory` "
                              "(stem4d ptycho run).")


class PtychoParams(_Model):
    """All parameters of a ptychographic reconstruction."""

    probe: ProbeParams = Field(..., description="Illumination.")
    object: ObjectParams = Field(default_factory=ObjectParams, description="Object model.")
    scan: ScanParams = Field(..., description="Probe positions.")
    detector: DetectorParams = Field(default_factory=DetectorParams,
                                     description="Pattern size and calibration.")
    measurements: dict[str, Any] = Field(
        default_factory=dict, description="How to load and preprocess the measurements: "
        "keyword arguments of stem4d.ptycho.measurements.prepare_measurements (source: a "
        "file path; key, open_kwargs, permute, reshape, scan_shape (as stored, before "
        "cropping), flipT, center, calibration, crop, remove_negative, normalization, pad, "
        "resample, source_size (Å), detector_blur (pixels), poisson). The beam, the scan "
        "step and (by default) the scan shape come from `probe` and `scan`; see "
        "stem4d.ptycho.measurements.prepare_from_params.")
    solver: SolverParams = Field(default_factory=SolverParams, description="Optimization.")
    checkpoint: CheckpointParams = Field(default_factory=CheckpointParams,
                                         description="Checkpoints.")
    output: OutputParams = Field(default_factory=OutputParams, description="Outputs.")
    seed: int = Field(0, description="Random seed: position jitter and minibatch order.")

    @field_validator("measurements")
    @classmethod
    def _measurement_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(MEASUREMENT_KEYS))
        if unknown:
            raise ValueError(f"measurements has unknown settings {unknown}; allowed: "
                             f"{', '.join(MEASUREMENT_KEYS)}")
        return v

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
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"parameter file must be .yaml, .yml or .json, got {path.name!r}")
        text = path.read_text()
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"parameter file {path} is not valid JSON: {err}") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(f"parameter file {path} is not valid YAML: {err}") from None
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
# The defaults of PtyRAD 1.0.0 (its pydantic models) for the keys read below: a PtyRAD
# file that leaves a key out means PtyRAD's default, so the mapping fills it in.
_PTYRAD_UPDATE = {  # PtyRAD variable -> (stem4d variable, default start_iter, default lr)
    "obja": ("object_amplitude", 1, 5e-4),
    "objp": ("object_phase", 1, 5e-4),
    "probe": ("probe", 1, 1e-4),
    "probe_pos_shifts": ("positions", 1, 5e-4),
    "obj_tilts": ("object_tilts", 1, 0.0),
    "slice_thickness": (None, None, 0.0),
}
_PTYRAD_LOSSES = {
    "loss_single": {"state": True, "weight": 1.0, "dp_pow": 0.5},
    "loss_poissn": {"state": False, "weight": 1.0, "dp_pow": 1.0, "eps": 1e-6},
    "loss_pacbed": {"state": False}, "loss_sparse": {"state": False},
    "loss_simlar": {"state": False},
}
_PTYRAD_CONSTRAINTS = {  # default start_iter and options of each constraint
    "ortho_pmode": {"start_iter": 1},
    "fix_probe_int": {"start_iter": 1},
    "obj_rblur": {"start_iter": 1, "obj_type": "both", "kernel_size": 5, "std": 0.4},
    "obj_zblur": {"start_iter": 1, "obj_type": "both", "kernel_size": 5, "std": 1.0},
    "obja_thresh": {"start_iter": None, "relax": 0.0, "thresh": [0.96, 1.04]},
    "objp_postiv": {"start_iter": None, "relax": 0.0},
    "pos_recenter": {"start_iter": 1, "relax": 0.0},
    **{k: {"start_iter": None} for k in (
        "probe_mask_k", "probe_mask_r", "kr_filter", "kz_filter", "kr_thresh",
        "complex_ratio", "mirrored_amp", "obj_z_recenter", "tilt_smooth")},
}
# torch optimizer names (PtyRAD) -> optax
_PTYRAD_OPTIMIZERS = {
    "Adam": "adam", "AdamW": "adamw", "Adamax": "adamax", "Nadam": "nadam",
    "RAdam": "radam", "Adagrad": "adagrad", "Adadelta": "adadelta", "Adafactor": "adafactor",
    "RMSprop": "rmsprop", "Rprop": "rprop", "SGD": "sgd",
}
# torch optimizer configs -> optax keyword (per optax optimizer)
_OPTAX_KWARGS = {
    "adam": {"eps"}, "adamw": {"eps", "weight_decay"}, "adamax": {"eps"},
    "nadam": {"eps"}, "radam": {"eps"}, "adagrad": {"eps"}, "adadelta": {"eps", "rho"},
    "adafactor": {"eps"}, "rmsprop": {"eps", "momentum", "nesterov", "decay"},
    "rprop": set(), "sgd": {"momentum", "nesterov"},
}
_TORCH_NEUTRAL = {"foreach": None, "capturable": False, "differentiable": False,
                  "fused": None, "maximize": False, "amsgrad": False, "dampening": 0,
                  "weight_decay": 0, "centered": False}
# output options whose PtyRAD default (or "off") values need no stem4d counterpart:
# stem4d always writes <output_dir>/<name>.nc and three PNG figures
_PTYRAD_OUTPUT_DEFAULTS = {
    "recon_dir_affixes": (["default"], ["minimal"], []),
    "prefix_time": ("date", True, False, None, ""),
    "save_result": (["model", "objp"], ["model"], ["model", "obja", "objp", "probe"]),
    "result_modes": ({"obj_dim": [2, 3, 4], "FOV": ["crop"], "bit": ["8"]},),
    "selected_figs": (["convergence", "forward", "probe_r_amp", "pos"], []),
    "convergence_monitor": (
        None, {"tensors": ["obja", "objp", "probe", "probe_pos_shifts"],
               "every_n_iters": None, "percentile_range": [15, 85]}),
}
_FILE_SOURCES = ("file", "tif", "tiff", "mat", "h5", "hdf5", "zarr", "npy", "raw")
_ABSENT = object()


def _merged(default: Mapping[str, Any], given: Any) -> dict[str, Any]:
    out = dict(default)
    if isinstance(given, Mapping):
        out.update(given)
    return out


def _ptyrad_schedule(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """PtyRAD's 1-based ``start_iter``/``step``/``end_iter`` (or legacy ``freq``) as a
    0-based :class:`Schedule` dict; None when the constraint is off."""
    start, step, end = cfg.get("start_iter"), cfg.get("step") or 1, cfg.get("end_iter")
    if start is None:
        return None
    start, step = int(start), int(step)
    if end is not None and int(end) <= start:
        return None  # end_iter is exclusive: never applied
    return {"start": start - 1, "every": step, "end": None if end is None else int(end) - 1}


def _ptyrad_constraint_entry(name: str, given: Any) -> dict[str, Any]:
    """A constraint entry as PtyRAD's file loader sees it (defaults, legacy ``freq``)."""
    default = _PTYRAD_CONSTRAINTS.get(name, {"start_iter": None})
    if not isinstance(given, Mapping):
        return _merged(default, {"start_iter": None}) if given in (None, False) else dict(
            default)
    cfg = _merged({k: v for k, v in default.items() if k != "start_iter"}, given)
    freq = given.get("freq")
    # PtyRAD's loader: an entry without start_iter is off unless the legacy freq is set
    cfg["start_iter"] = given.get("start_iter", 1 if freq is not None else None)
    if freq is not None and "step" not in given:
        cfg["step"] = freq
    return cfg


def _probe_from_ptyrad(init: dict, unsupported: list[str]) -> dict[str, Any]:
    take = init.pop
    illum = take("probe_illum_type", "electron")
    if illum != "electron":
        raise ValueError(f"init_params.probe_illum_type: only 'electron' is supported, got "
                         f"{illum!r}")
    for key in ("beam_kev", "probe_dRn", "probe_Rn", "probe_D_H", "probe_D_FZP", "probe_Ls"):
        if take(key, None) is not None:
            unsupported.append(f"init_params.{key}")
    kv = take("probe_kv", None)
    aberrations = dict(take("probe_aberrations", None) or {})
    # PtyRAD's legacy keys, moved into probe_aberrations unless given there
    for legacy, name, aliases in (("probe_defocus", "defocus", ("defocus", "C1", "C10")),
                                  ("probe_c3", "C30", ("C30", "C3", "Cs")),
                                  ("probe_c5", "C50", ("C50", "C5"))):
        value = take(legacy, None)
        if value is not None and not any(a in aberrations for a in aliases):
            aberrations[name] = value
    probe: dict[str, Any] = {
        "beam_energy": None if kv is None else float(kv) * 1e3,
        "convergence_semiangle": take("probe_conv_angle", None),
        "aberrations": aberrations,
        "aberration_angle_units": "deg",
    }
    pmodes = int(take("probe_pmode_max", 4) or 1)
    probe["modes"] = pmodes
    pows = [float(v) for v in np.atleast_1d(take("probe_pmode_init_pows", [0.02]) or [0.02])]
    if pmodes > 1:
        # PtyRAD: mode k >= 1 gets pows[k-1] (the last value repeats), mode 0 the rest
        extra = [pows[min(k, len(pows)) - 1] for k in range(1, pmodes)]
        if sum(extra) > 1:
            raise ValueError(f"init_params.probe_pmode_init_pows {pows}: the powers of the "
                             f"{pmodes - 1} extra probe modes exceed 1")
        probe["mode_powers"] = [1.0 - sum(extra), *extra]
    src = take("probe_source", "simu")
    pparams = take("probe_params", None)
    if src == "simu":
        probe["source"] = "optics"
    else:
        probe["source"] = "given"
        unsupported.append(f"init_params.probe_source={src!r} (pass the probe to "
                           "reconstruct(init={'probe': ...}))")
    del pparams
    norm = take("probe_normalization", None)
    if isinstance(norm, Mapping) and norm.get("mode", "mean_total_ints") != "mean_total_ints":
        unsupported.append(f"init_params.probe_normalization.mode={norm['mode']!r} (stem4d "
                           "scales the probe to the mean total intensity)")
    if take("probe_permute", None) is not None:
        unsupported.append("init_params.probe_permute")
    z_shift = take("probe_z_shift", None)
    if z_shift is not None:
        probe["z_shift"] = float(z_shift)
    return probe


def _object_from_ptyrad(init: dict, unsupported: list[str]) -> dict[str, Any]:
    take = init.pop
    obj: dict[str, Any] = {"modes": int(take("obj_omode_max", 1) or 1),
                           "slices": int(take("obj_Nlayer", 1) or 1)}
    thick = take("obj_slice_thickness", None)
    if thick is not None:
        obj["slice_thickness"] = float(thick)
    occu = take("obj_omode_init_occu", None)
    if isinstance(occu, Mapping) and occu.get("occu_type") == "custom":
        obj["occupancies"] = [float(v) for v in occu.get("init_occu") or []]
    src = take("obj_source", "simu")
    oparams = take("obj_params", None)
    if src != "simu":
        unsupported.append(f"init_params.obj_source={src!r} (pass the object to "
                           "reconstruct(init={'object': ...}))")
    elif oparams is not None:
        shape = [int(v) for v in oparams]
        if len(shape) != 4:
            raise ValueError("init_params.obj_params for obj_source='simu' must be "
                             f"[omode, Nz, Ny, Nx], got {oparams!r}")
        if shape[0] != obj["modes"] or shape[1] != obj["slices"]:
            raise ValueError(f"init_params.obj_params {shape} disagrees with obj_omode_max = "
                             f"{obj['modes']} and obj_Nlayer = {obj['slices']}")
        obj["shape"] = (shape[2], shape[3])
    for key in ("obj_z_crop", "obj_z_pad", "obj_z_resample"):
        if take(key, None) is not None:
            unsupported.append(f"init_params.{key}")
    tsrc = take("tilt_source", "simu")
    tparams = take("tilt_params", None)
    if tsrc != "simu":
        unsupported.append(f"init_params.tilt_source={tsrc!r} (pass the tilts to "
                           "reconstruct(init={'object_tilts': ...}), mrad)")
    elif isinstance(tparams, Mapping):
        tilts = np.asarray(tparams.get("init_tilts", [[0, 0]]), dtype=float).reshape(-1, 2)
        if len(tilts) != 1:
            raise ValueError("init_params.tilt_params.init_tilts must be one [tilt_y, tilt_x] "
                             f"pair (mrad), got {len(tilts)}")
        if np.any(tilts != 0):
            obj["tilt"] = (float(tilts[0, 0]), float(tilts[0, 1]))
        kind = tparams.get("tilt_type", "all")
        if kind not in ("all", "each"):
            raise ValueError(f"init_params.tilt_params.tilt_type must be 'all' or 'each', "
                             f"got {kind!r}")
        if kind == "each":
            obj["tilt_per_position"] = True
    return obj


def _range_len(rng: Any, n: int) -> int:
    if rng is None:
        return n
    lo, hi = (int(v) if v is not None else d for v, d in zip(rng, (0, n), strict=True))
    return len(range(n)[slice(lo, hi)])


def _measurements_from_ptyrad(init: dict, unsupported: list[str]
                              ) -> tuple[dict[str, Any], tuple[int, int], int | None]:
    """The ``meas_*`` keys as prepare_measurements keywords; the scan shape and detector
    size after cropping, padding and resampling."""
    take = init.pop
    slow, fast = take("pos_N_scan_slow", None), take("pos_N_scan_fast", None)
    if slow is None or fast is None:
        raise ValueError("init_params.pos_N_scan_slow and pos_N_scan_fast are required")
    slow, fast = int(slow), int(fast)
    n_scans = take("pos_N_scans", None)
    if n_scans is not None and int(n_scans) != slow * fast:
        raise ValueError(f"init_params.pos_N_scans = {n_scans} must equal pos_N_scan_slow x "
                         f"pos_N_scan_fast = {slow} x {fast} = {slow * fast}")
    npix = take("meas_Npix", None)
    meas: dict[str, Any] = {"scan_shape": [slow, fast]}
    source = take("meas_source", "file")
    mparams = take("meas_params", None)
    if source == "custom" or (mparams is not None and not isinstance(mparams, Mapping)):
        if mparams is not None:
            unsupported.append("init_params.meas_params (an in-memory array: pass it as "
                               "prepare_from_params(params, source=...))")
    elif source in _FILE_SOURCES:
        if isinstance(mparams, Mapping):
            mp = dict(mparams)
            if mp.get("path") is not None:
                meas["source"] = str(mp["path"])
            if mp.get("key") is not None:
                meas["key"] = str(mp["key"])
            suffix = Path(str(mp.get("path", ""))).suffix.lower()
            open_kwargs: dict[str, Any] = {}
            if suffix == ".raw":
                shape = mp.get("shape")
                det = (int(shape[1]), int(shape[2])) if shape else (
                    (int(npix), int(npix)) if npix else None)
                if det is not None:
                    open_kwargs["detector_shape"] = list(det)
                open_kwargs["offset"] = int(mp.get("offset") or 0)
                open_kwargs["gap"] = int(1024 if mp.get("gap") is None else mp["gap"])
            if mp.get("selection") is not None:
                if suffix in (".h5", ".hdf5", ".mat", ".emd"):
                    open_kwargs["selection"] = mp["selection"]
                else:
                    unsupported.append("init_params.meas_params.selection (HDF5 files only)")
            if mp.get("zarr_kwargs"):
                unsupported.append("init_params.meas_params.zarr_kwargs")
            if open_kwargs:
                meas["open_kwargs"] = open_kwargs
    else:
        raise ValueError(f"init_params.meas_source must be one of {_FILE_SOURCES + ('custom',)}"
                         f", got {source!r}")
    for key, name in (("meas_permute", "permute"), ("meas_reshape", "reshape"),
                      ("meas_flipT", "flipT"), ("meas_crop", "crop"),
                      ("meas_add_source_size", "source_size"),
                      ("meas_add_detector_blur", "detector_blur")):
        value = take(key, None)
        if value is not None:
            meas[name] = value
    meas["calibration"] = dict(take("meas_calibration", None) or {"mode": "fitRBF"})
    for key, name in (("meas_remove_neg_values", "remove_negative"),
                      ("meas_normalization", "normalization")):
        value = take(key, _ABSENT)
        if value is not _ABSENT:
            meas[name] = dict(value) if isinstance(value, Mapping) else value
    pad = take("meas_pad", None)
    if isinstance(pad, Mapping) and pad.get("mode", "on_the_fly") is not None:
        meas["pad"] = {"target": int(pad.get("target_Npix", 256)),
                       "kind": pad.get("padding_type", "power"),
                       "value": float(pad.get("value") or 0.0),
                       "threshold": float(70 if pad.get("threshold") is None
                                          else pad["threshold"]),
                       "mode": pad.get("mode", "on_the_fly")}
    res = take("meas_resample", None)
    if isinstance(res, Mapping) and res.get("mode", "on_the_fly") is not None:
        factors = [float(v) for v in np.atleast_1d(res.get("scale_factors", [2, 2]))]
        meas["resample"] = {"factor": factors[0] if len(set(factors)) == 1 else factors,
                            "mode": res.get("mode", "on_the_fly")}
    noise = take("meas_add_poisson_noise", None)
    if isinstance(noise, Mapping):
        unit = noise.get("unit", "total_e_per_pattern")
        meas["poisson"] = {"dose": float(noise["value"]),  # stem4d spells PtyRAD's e_per_Ang2
                           "unit": "e_per_A2" if unit == "e_per_Ang2" else unit}
    if take("meas_export", None):
        unsupported.append("init_params.meas_export")
    # scan and detector as they enter the solver
    crop = meas.get("crop") or [None] * 4
    scan_shape = (_range_len(crop[0], slow), _range_len(crop[1], fast))
    size = None
    if npix is not None:
        size = _range_len(crop[2], int(npix)) if len(crop) > 2 else int(npix)
        if "pad" in meas:
            size = meas["pad"]["target"]
        if "resample" in meas:
            f = meas["resample"]["factor"]
            size = int(round(size * (f if np.ndim(f) == 0 else f[0])))
    return meas, scan_shape, size


def _solver_from_ptyrad(model: dict, loss: dict, cons: dict, unsupported: list[str]
                        ) -> dict[str, Any]:
    solver: dict[str, Any] = {}
    # learning rates, 1-based start_iter / exclusive end_iter -> 0-based iterations
    given = dict(model.pop("update_params", None) or {})
    update: dict[str, Any] = {"probe_units": "measurements"}
    for key, (name, start0, lr0) in _PTYRAD_UPDATE.items():
        cfg = given.pop(key, None)
        cfg = {"start_iter": start0, "lr": lr0} if cfg is None else dict(cfg)
        start, lr, end = cfg.get("start_iter"), float(cfg.get("lr") or 0.0), cfg.get("end_iter")
        on = start is not None and lr > 0
        if name is None:
            if on:
                unsupported.append(f"model_params.update_params.{key}")
            continue
        update[name] = {"learning_rate": lr if on else 0.0,
                        "start_iteration": max(int(start) - 1, 0) if on else 0,
                        "end_iteration": None if end is None else max(int(end) - 1, 0)}
    unsupported += [f"model_params.update_params.{k}" for k in given]
    solver["update"] = update
    opt = dict(model.pop("optimizer_params", None) or {})
    name = opt.pop("name", "Adam")
    if name not in _PTYRAD_OPTIMIZERS:
        unsupported.append(f"model_params.optimizer_params.name={name!r} (stem4d uses adam)")
        name = "Adam"
    optax_name = _PTYRAD_OPTIMIZERS[name]
    if optax_name != "adam":  # the default; validating a name imports optax (and JAX)
        solver["optimizer"] = optax_name
    kwargs: dict[str, Any] = {}
    if name == "AdamW":
        kwargs["weight_decay"] = 0.01  # torch's default
    if name == "RMSprop":
        kwargs["decay"] = 0.99  # torch's default alpha
    for key, value in dict(opt.pop("configs", None) or {}).items():
        target = {"alpha": "decay"}.get(key, key)
        if key == "betas" and optax_name in ("adam", "adamw", "adamax", "nadam", "radam"):
            kwargs["b1"], kwargs["b2"] = (float(b) for b in value)
        elif target in _OPTAX_KWARGS[optax_name]:
            kwargs[target] = value
        elif key in _TORCH_NEUTRAL and value == _TORCH_NEUTRAL[key]:
            continue
        else:
            unsupported.append(f"model_params.optimizer_params.configs.{key}")
    if kwargs:
        solver["optimizer_kwargs"] = kwargs
    if opt.pop("load_state", None):
        unsupported.append("model_params.optimizer_params.load_state")
    unsupported += [f"model_params.optimizer_params.{k}" for k in opt]
    if model.pop("scheduler_params", None) is not None:
        unsupported.append("model_params.scheduler_params")
    blur = model.pop("detector_blur_std", None)
    if blur not in (None, 0, 0.0):
        solver["_detector_blur"] = float(blur)  # moved to detector.blur by from_ptyrad
    if model.pop("preload_data", True) is False:
        unsupported.append("model_params.preload_data=false (stem4d keeps all patterns on "
                           "the device)")
    model.pop("obj_preblur_std", None)  # deprecated and ignored by PtyRAD itself
    unsupported += [f"model_params.{k}" for k in model]

    # loss: one data term
    terms = {k: _merged(d, loss.pop(k, None)) for k, d in _PTYRAD_LOSSES.items()}
    unsupported += [f"loss_params.{k}" for k in loss]
    on = [k for k, cfg in terms.items() if cfg.get("state")]
    if "loss_single" in on:
        solver["loss"], solver["loss_reduction"] = "amplitude", "rms"
        if float(terms["loss_single"].get("dp_pow", 0.5)) != 0.5:
            unsupported.append(f"loss_params.loss_single.dp_pow="
                               f"{terms['loss_single']['dp_pow']} (stem4d: 0.5)")
        if "loss_poissn" in on:
            unsupported.append("loss_params.loss_poissn (together with loss_single)")
    elif "loss_poissn" in on:
        solver["loss"] = "poisson"
        cfg = terms["loss_poissn"]
        if float(cfg.get("dp_pow", 1.0)) != 1.0:
            unsupported.append(f"loss_params.loss_poissn.dp_pow={cfg['dp_pow']} (stem4d: 1)")
        if float(cfg.get("eps", 1e-6)) != 1e-6:
            unsupported.append("loss_params.loss_poissn.eps")
    unsupported += [f"loss_params.{k}" for k in on if k not in ("loss_single", "loss_poissn")]

    # constraints, in stem4d's names
    entries = {k: _ptyrad_constraint_entry(k, cons.pop(k)) if k in cons else dict(d)
               for k, d in _PTYRAD_CONSTRAINTS.items()}
    unsupported += [f"constraint_params.{k}" for k in cons]
    constraints: dict[str, Any] = {}
    for key, cfg in entries.items():
        sched = _ptyrad_schedule(cfg)
        if key == "ortho_pmode":
            constraints["orthogonalize_probe_modes"] = sched
        elif key == "fix_probe_int":
            constraints["fix_probe_intensity"] = sched
        elif sched is None:
            continue
        elif key in ("obj_rblur", "obj_zblur"):
            if float(cfg.get("std", 0)) > 0:
                constraints["object_blur" if key == "obj_rblur" else "slice_blur"] = {
                    **sched, "sigma": float(cfg["std"]),
                    "kernel_size": int(cfg.get("kernel_size", 5)),
                    "target": cfg.get("obj_type", "both")}
        elif key == "obja_thresh":
            constraints["object_amplitude_range"] = {
                **sched, "range": [float(t) for t in cfg.get("thresh", [0.96, 1.04])],
                "relax": float(cfg.get("relax", 0.0))}
        elif key == "objp_postiv":
            if cfg.get("mode", "clip_neg") != "clip_neg":
                unsupported.append(f"constraint_params.objp_postiv.mode={cfg['mode']!r}")
            constraints["positive_phase"] = {**sched, "relax": float(cfg.get("relax", 0.0))}
        elif key == "pos_recenter":
            constraints["recenter_positions"] = {**sched, "relax": float(cfg.get("relax", 0))}
        else:
            unsupported.append(f"constraint_params.{key}")
    solver["constraints"] = constraints
    return solver


def _recon_from_ptyrad(recon: dict, unsupported: list[str]
                       ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    solver: dict[str, Any] = {"iterations": int(recon.pop("NITER", 200))}
    bs = recon.pop("BATCH_SIZE", None)
    if isinstance(bs, Mapping):
        solver["batch_size"] = int(bs.get("size", 32))
        if int(bs.get("grad_accumulation", 1) or 1) != 1:
            unsupported.append("recon_params.BATCH_SIZE.grad_accumulation")
    else:
        solver["batch_size"] = int(32 if bs is None else bs)
    indices = recon.pop("INDICES_MODE", None)
    if isinstance(indices, Mapping) and indices.get("mode", "full") != "full":
        unsupported.append(f"recon_params.INDICES_MODE.mode={indices['mode']!r}")
    group = recon.pop("GROUP_MODE", "random")
    if group not in (None, "random"):
        unsupported.append(f"recon_params.GROUP_MODE={group!r} (stem4d draws random groups)")
    save_iters = recon.pop("SAVE_ITERS", 10)
    checkpoint = {"every": int(save_iters or 0)}
    name = "_".join(str(p) for p in (recon.pop("prefix", ""), "ptycho",
                                     recon.pop("postfix", "")) if p)
    output = {"directory": str(recon.pop("output_dir", "output/")), "name": name,
              "copy_params": bool(recon.pop("copy_params", True))}
    recon.pop("compiler_configs", None)  # stem4d always compiles (jax.jit)
    if recon.pop("if_quiet", False):
        unsupported.append("recon_params.if_quiet")
    custom = [key for key, allowed in _PTYRAD_OUTPUT_DEFAULTS.items()
              if key in recon and recon.pop(key) not in allowed]
    if custom:
        unsupported.append(f"recon_params.{'/'.join(custom)} (stem4d writes {name}.nc and "
                           "three PNG figures into output_dir, no run folder)")
    unsupported += [f"recon_params.{k}" for k in recon]
    return solver, checkpoint, output


def from_ptyrad(params: Mapping[str, Any], *, strict: bool = False) -> PtychoParams:
    """Map a PtyRAD 1.0 parameter dict (a PtyRAD YAML file, loaded) onto :class:`PtychoParams`.

    Keys a PtyRAD file leaves out take PtyRAD's defaults (e.g. 4 probe modes, its
    learning rates, its default constraints, 200 iterations of batch 32), so a file means
    the same reconstruction in both programs. Mapped:

    * ``init_params``: beam (kV → eV), convergence angle, ``probe_aberrations`` (angles in
      degrees; also the legacy ``probe_defocus``/``probe_c3``/``probe_c5``), probe modes
      and ``probe_pmode_init_pows``, object modes, occupancies, slices, thickness,
      ``obj_params`` shape, scan shape/step/``pos_N_scans``, ``pos_scan_affine``,
      ``pos_scan_rand_std`` (jitter, pixels), ``random_seed``; the ``meas_*`` chain
      (source path and key, EMPAD shape/offset/gap, HDF5 selection, permute, reshape,
      flipT, calibration (default ``fitRBF``), crop, negative values, normalization, pad,
      resample, source size, detector blur, Poisson noise) becomes
      ``measurements`` (keywords of :func:`~stem4d.ptycho.measurements.prepare_measurements`),
      and ``scan.shape``/``detector.shape`` are the sizes after cropping, padding and
      resampling.
    * ``model_params``: ``update_params`` of ``obja``/``objp``/``probe``/
      ``probe_pos_shifts`` (``lr``; ``start_iter``/``end_iter`` are 1-based, end
      exclusive, ``start_iter: null`` = fixed; the probe rate in PtyRAD's units,
      ``probe_units = "measurements"``), ``optimizer_params`` (torch name → optax;
      ``betas``, ``eps``, ``weight_decay`` (AdamW), ``momentum``, ``nesterov``,
      ``alpha``, ``rho``).
    * ``loss_params``: ``loss_single`` (``dp_pow`` 0.5) → amplitude with PtyRAD's
      normalized RMSE (``loss_reduction = "rms"``), ``loss_poissn`` (``dp_pow`` 1) →
      poisson; a single term's weight is a constant factor.
    * ``constraint_params`` (``start_iter``/``step``/``end_iter``, or the legacy ``freq``):
      ``ortho_pmode``, ``fix_probe_int``, ``obj_rblur``, ``obj_zblur``, ``obja_thresh``
      (``thresh``, ``relax``), ``objp_postiv`` (``relax``), ``pos_recenter``.
    * ``recon_params``: ``NITER``, ``BATCH_SIZE.size``, ``GROUP_MODE: random``,
      ``INDICES_MODE: full``, ``SAVE_ITERS`` (checkpoint interval), ``output_dir``
      (results are written there directly), ``prefix``/``postfix`` (file name),
      ``copy_params``; ``compiler_configs`` is moot (stem4d always compiles) and
      PtyRAD's default output options (folder affixes, figure and result selections)
      need no counterpart.

    Everything else that is set (not null, not off, not PtyRAD's default) is named in
    one ``UserWarning``, or raises ``ValueError`` with ``strict=True``.
    """
    unsupported: list[str] = []
    init = dict(params.get("init_params") or {})
    model = dict(params.get("model_params") or {})
    loss = dict(params.get("loss_params") or {})
    cons = dict(params.get("constraint_params") or {})
    recon = dict(params.get("recon_params") or {})
    known = {"init_params", "model_params", "loss_params", "constraint_params",
             "recon_params", "hypertune_params", "params_path"}
    unsupported += [k for k in params if k not in known]
    if (params.get("hypertune_params") or {}).get("if_hypertune"):
        unsupported.append("hypertune_params.if_hypertune (hypertune mode)")

    probe = _probe_from_ptyrad(init, unsupported)
    obj = _object_from_ptyrad(init, unsupported)
    measurements, scan_shape, npix = _measurements_from_ptyrad(init, unsupported)
    scan: dict[str, Any] = {"shape": scan_shape, "step": init.pop("pos_scan_step_size", None),
                            "jitter": float(init.pop("pos_scan_rand_std", 0.15) or 0.0)}
    affine = init.pop("pos_scan_affine", None)
    if affine is not None:
        scan["affine"] = tuple(float(a) for a in affine)
    psrc = init.pop("pos_source", "simu")
    init.pop("pos_params", None)
    if psrc != "simu":
        unsupported.append(f"init_params.pos_source={psrc!r} (give scan.positions)")
    if init.pop("pos_scan_flipT", None) not in (None, [0, 0, 0]):
        unsupported.append("init_params.pos_scan_flipT")
    for key in ("simu_Npix", "simu_match_mode"):
        if init.pop(key, None) is not None:
            unsupported.append(f"init_params.{key}")
    seed = init.pop("random_seed", None)
    unsupported += [f"init_params.{k}" for k, v in init.items() if v is not None]

    solver = _solver_from_ptyrad(model, loss, cons, unsupported)
    recon_solver, checkpoint, output = _recon_from_ptyrad(recon, unsupported)
    solver.update(recon_solver)

    detector: dict[str, Any] = {} if npix is None else {"shape": npix}
    if "_detector_blur" in solver:
        detector["blur"] = solver.pop("_detector_blur")
    data: dict[str, Any] = {"probe": probe, "object": obj, "scan": scan,
                            "detector": detector,
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
