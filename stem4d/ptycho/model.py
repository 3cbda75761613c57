"""The ptychographic forward model and losses, in JAX (jit-compiled by the solver).

Variables (a dict pytree; real arrays only, so gradients need no complex conventions)
--------------------------------------------------------------------------------------
``object_amplitude``, ``object_phase``
    ``(object_modes, slices, H, W)``: transmission ``T = amplitude · exp(i phase)``
    (dimensionless, rad) on the real-space grid of pixel size ``dx`` (Å).
``probe``
    ``(2, probe_modes, N, N)``: real and imaginary parts of each probe mode in its
    ``N x N`` window (the detector size), optical axis at pixel ``(N//2, N//2)``.
``positions``
    ``(n_positions, 2)``: top-left corner of the probe window on the object grid,
    fractional (row, column) pixels; the probe centre is at ``corner + N//2``.
``object_tilts``
    ``(1, 2)`` (one global tilt) or ``(n_positions, 2)``: object tilt ``(θ_rx, θ_ry)``,
    mrad (PtyRAD's ``[tilt_y, tilt_x]``); used by multislice models only.

Forward model, per minibatch of positions (static size)
-------------------------------------------------------
1. corner = integer part + fractional part ``f`` (in [0, 1));
2. probe modes shifted by ``f``: ``IFFT[FFT[ψ] · exp(-2πi k·f)]`` (``ψ(r - f)``);
3. object patch ``T[:, :, c0:c0+N, c1:c1+N]`` gathered with ``vmap`` + ``lax.dynamic_slice``;
4. multislice per probe mode and object mode: ``ψ ← ψ · T_s``, then between slices
   ``ψ ← IFFT[FFT[ψ] · P]`` with the Fresnel propagator ``P = exp(-iπ λ dz |k|²)``;
   a tilted object multiplies it by ``exp(+2πi dz (k_rx tan θ_rx + k_ry tan θ_ry))``
   (the tilted Fresnel propagator, as PtyRAD's: from one slice to the next the wave
   moves by ``-dz · tan θ``; accurate to about 1°, 17 mrad);
5. detector intensity ``I(k) = Σ_o occ_o Σ_m |FFT[ψ_exit](k)|²`` with the orthonormal
   forward transform (``norm="ortho"``: ``Σ_k I = Σ_r |ψ|²`` in vacuum), returned in
   numpy's **unshifted** order (zero frequency at index 0); optionally blurred by a
   Gaussian detector point-spread function (``σ`` in detector pixels, periodic). stem4d's
   measured patterns have the zero frequency at the detector centre ``(N//2, N//2)``: the
   solver applies ``numpy.fft.ifftshift`` to the measurements once, before optimizing.

Fourier sign: plane wave ``exp(+2πi k·r)``, forward transform ``exp(-2πi k·r)``
(``jnp.fft.fft2``) takes the exit wave to the detector.

Losses (mean over the valid patterns of a batch and their pixels; or its normalized root)
----------------------------------------------------------------------------------------
``amplitude``: ``(sqrt(I + ε) - sqrt(I_meas))²``; ``poisson``:
``I - I_meas + I_meas (log(I_meas + ε) - log(I + ε))`` (the Poisson deviance / 2: the
negative log-likelihood ``I - I_meas log I`` up to a constant, zero at a perfect fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .optics import fresnel_propagator

__all__ = ["ModelSpec", "probe_complex", "object_complex", "shift_ramps", "shift_probes",
           "fixed_geometry", "tilt_ramps", "blur_transfer",
           "gather_patches", "exit_waves", "intensities", "batch_loss", "loss_per_pattern"]


@dataclass(frozen=True)
class ModelSpec:
    """Static description of the model (hashable: shapes and constants only).

    Attributes: ``window`` (N, pixels), ``object_shape`` (H, W pixels), ``probe_modes``,
    ``object_modes``, ``slices``, ``occupancies`` (per object mode, sum 1),
    ``wavelength`` (Å), ``pixel_size`` (Å), ``slice_thickness`` (Å), ``loss``
    (``"amplitude"``/``"poisson"``), ``reduction`` (``"mean"``, or ``"rms"``: see
    :func:`batch_loss`), ``train_positions`` (gradients for positions),
    ``eps`` (intensity floor inside sqrt/log, in units of the scaled measurements),
    ``tilts`` (``"none"``: untilted, the ``object_tilts`` variable is not used;
    ``"global"``: one tilt; ``"per_position"``: one per position), ``detector_blur``
    (σ of the Gaussian detector point-spread function, detector pixels; 0: none).
    """

    window: int
    object_shape: tuple[int, int]
    probe_modes: int = 1
    object_modes: int = 1
    slices: int = 1
    occupancies: tuple[float, ...] = (1.0,)
    wavelength: float = 0.0197
    pixel_size: float = 0.1
    slice_thickness: float = 0.0
    loss: str = "amplitude"
    reduction: str = "mean"
    train_positions: bool = False
    eps: float = 1e-6
    tilts: str = "none"
    detector_blur: float = 0.0


def probe_complex(variables: dict) -> jax.Array:
    """Complex probe modes ``(M, N, N)`` from the real ``(2, M, N, N)`` variable."""
    p = variables["probe"]
    return lax.complex(p[0], p[1])


def object_complex(variables: dict) -> jax.Array:
    """Complex transmission ``(O, S, H, W)`` = amplitude · exp(i phase)."""
    amp, ph = variables["object_amplitude"], variables["object_phase"]
    return lax.complex(amp * jnp.cos(ph), amp * jnp.sin(ph))


def _freqs(n: int, dtype: jnp.dtype) -> jax.Array:
    return jnp.asarray(np.fft.fftfreq(n), dtype=dtype)


def shift_ramps(frac: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """1-D Fourier ramps ``exp(-2πi k f)`` along rows and columns, each ``(B, n)``, for
    shifts ``frac`` ``(B, 2)`` in pixels (``k = fftfreq(n)``, cycles per pixel)."""
    k = _freqs(n, frac.dtype)
    ax = -2 * jnp.pi * frac[:, 0, None] * k[None, :]
    ay = -2 * jnp.pi * frac[:, 1, None] * k[None, :]
    return lax.complex(jnp.cos(ax), jnp.sin(ax)), lax.complex(jnp.cos(ay), jnp.sin(ay))


def fixed_geometry(corners: np.ndarray, n: int, dtype: type = np.complex64) -> dict:
    """Precomputed integer corners and shift ramps for positions that are not optimized.

    XLA evaluates ``cos``/``sin`` of in-graph ramps once per pixel of the 2-D ramp (it
    fuses them into the product); precomputing them on the host makes the shift cost one
    complex multiply per pixel. Returns ``{"base": (n_pos, 2) int32, "rx", "ry":
    (n_pos, n) complex}``.
    """
    corners = np.asarray(corners, dtype=float)
    base = np.floor(corners)
    frac = corners - base
    k = np.fft.fftfreq(n)
    return {"base": base.astype(np.int32),
            "rx": np.exp(-2j * np.pi * frac[:, 0, None] * k[None, :]).astype(dtype),
            "ry": np.exp(-2j * np.pi * frac[:, 1, None] * k[None, :]).astype(dtype)}


def shift_probes(probe_k: jax.Array, rx: jax.Array, ry: jax.Array) -> jax.Array:
    """Probes shifted by fractional pixels, ``ψ(r - f)``.

    ``probe_k``: ``FFT[ψ]`` ``(M, N, N)``; ``rx``, ``ry``: ramps ``exp(-2πi k f)`` along
    rows and columns, ``(B, N)`` complex (:func:`shift_ramps`). Returns ``(B, M, N, N)``.
    """
    ramp = rx[:, None, :, None] * ry[:, None, None, :]  # (B, 1, N, N), separable
    return jnp.fft.ifft2(probe_k[None] * ramp)


def gather_patches(obj: jax.Array, corners: jax.Array, n: int) -> jax.Array:
    """Object patches ``(B, O, S, n, n)`` at integer corners ``(B, 2)`` (row, column)."""

    zero = jnp.zeros((), corners.dtype)

    def one(c: jax.Array) -> jax.Array:
        return lax.dynamic_slice(obj, (zero, zero, c[0], c[1]),
                                 (obj.shape[0], obj.shape[1], n, n))

    return jax.vmap(one)(corners)


def tilt_ramps(tilts: jax.Array, spec: ModelSpec) -> tuple[jax.Array, jax.Array]:
    """1-D factors ``exp(+2πi dz k tan θ)`` along rows and columns, each ``(T, N)``
    complex, of the tilted propagator for tilts ``(T, 2)`` mrad (``k`` in 1/Å)."""
    k = _freqs(spec.window, tilts.dtype) / spec.pixel_size
    t = jnp.tan(tilts * 1e-3) * spec.slice_thickness  # (T, 2) Å of lateral walk per slice
    ax = 2 * jnp.pi * t[:, 0, None] * k[None, :]
    ay = 2 * jnp.pi * t[:, 1, None] * k[None, :]
    return lax.complex(jnp.cos(ax), jnp.sin(ax)), lax.complex(jnp.cos(ay), jnp.sin(ay))


def exit_waves(variables: dict, corners: jax.Array, spec: ModelSpec,
               ramps: tuple[jax.Array, jax.Array] | None = None,
               tilts: jax.Array | None = None) -> jax.Array:
    """Exit waves ``(B, O, M, N, N)`` for probe-window corners ``(B, 2)`` (object pixels).

    ``ramps``: precomputed ``(rx, ry)`` of the fractional corners (:func:`fixed_geometry`);
    then ``corners`` must be the integer corners. Without them the ramps are computed
    here (differentiable in the positions when ``spec.train_positions``). ``tilts``:
    ``(B, 2)`` or ``(1, 2)`` object tilts, mrad, when ``spec.tilts != "none"``.
    """
    n = spec.window
    if ramps is None:
        if not spec.train_positions:
            corners = lax.stop_gradient(corners)
        base = jnp.floor(lax.stop_gradient(corners))
        rx, ry = shift_ramps(corners - base, n)
    else:
        base, (rx, ry) = corners, ramps
    probe = probe_complex(variables)
    psi = shift_probes(jnp.fft.fft2(probe), rx.astype(probe.dtype), ry.astype(probe.dtype))
    psi = psi[:, None]  # (B, 1, M, N, N)
    patches = gather_patches(object_complex(variables), base.astype(jnp.int32), n)
    if spec.slices > 1:
        prop = jnp.asarray(
            fresnel_propagator((n, n), spec.pixel_size, spec.wavelength, spec.slice_thickness),
            dtype=psi.dtype)
        if spec.tilts != "none":
            if tilts is None:
                raise ValueError(f"spec.tilts = {spec.tilts!r} needs the tilts")
            tx, ty = tilt_ramps(tilts, spec)
            tilted = prop[None] * (tx[:, :, None] * ty[:, None, :]).astype(psi.dtype)
            prop = tilted[:, None, None]  # (T, 1, 1, N, N) against psi (B, O, M, N, N)
    for s in range(spec.slices):
        psi = psi * patches[:, :, s, None]  # (B, O, M, N, N)
        if s < spec.slices - 1:
            psi = jnp.fft.ifft2(jnp.fft.fft2(psi) * prop)
    return psi


def blur_transfer(n: int, sigma: float) -> np.ndarray:
    """Transfer function ``(N, N)`` of a unit-sum Gaussian of ``sigma`` pixels (periodic)."""
    f = np.fft.fftfreq(n)
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (f[:, None] ** 2 + f[None, :] ** 2))


def intensities(variables: dict, corners: jax.Array, spec: ModelSpec,
                ramps: tuple[jax.Array, jax.Array] | None = None,
                tilts: jax.Array | None = None) -> jax.Array:
    """Model diffraction intensities ``(B, N, N)``, unshifted FFT order (DC at [0, 0]).

    ``corners``/``ramps``/``tilts`` as in :func:`exit_waves`.
    """
    far = jnp.fft.fft2(exit_waves(variables, corners, spec, ramps, tilts), norm="ortho")
    power = jnp.real(far) ** 2 + jnp.imag(far) ** 2  # (B, O, M, N, N)
    if spec.object_modes > 1:
        occ = jnp.asarray(spec.occupancies, dtype=power.dtype)
        power = power * occ[None, :, None, None, None]
    total = jnp.sum(power, axis=(1, 2))
    if spec.detector_blur > 0:
        g = jnp.asarray(blur_transfer(spec.window, spec.detector_blur), dtype=total.dtype)
        total = jnp.real(jnp.fft.ifft2(jnp.fft.fft2(total) * g))
    return total


def loss_per_pattern(model: jax.Array, target: jax.Array, spec: ModelSpec) -> jax.Array:
    """Loss of each pattern ``(B,)``, mean over its pixels.

    ``target`` is ``sqrt(I_meas)`` for the amplitude loss and ``I_meas`` for Poisson.
    """
    eps = spec.eps
    if spec.loss == "amplitude":
        err = (jnp.sqrt(model + eps) - target) ** 2
    elif spec.loss == "poisson":
        err = model - target + target * (jnp.log(target + eps) - jnp.log(model + eps))
    else:
        raise ValueError(f"loss must be 'amplitude' or 'poisson', got {spec.loss!r}")
    return jnp.mean(err, axis=(-2, -1))


def batch_loss(variables: dict, index: jax.Array, weight: jax.Array, targets: jax.Array,
               spec: ModelSpec, geometry: dict | None = None) -> jax.Array:
    """Weighted mean loss of the patterns ``index`` (``(B,)`` ints; padding has weight 0).

    With ``spec.reduction == "rms"`` and the amplitude loss: the square root of that
    mean divided by the batch's mean target ``sqrt(I_meas)`` (a normalized RMSE, as
    PtyRAD's ``loss_single``); Adam then takes steps of the same size as the fit improves.

    ``targets``: all ``(n_positions, N, N)`` targets (unshifted order) on the device;
    ``geometry``: :func:`fixed_geometry` of the positions when they are not optimized
    (``variables["positions"]`` is then not used).
    """
    if geometry is None:
        corners, ramps = jnp.take(variables["positions"], index, axis=0), None
    else:
        corners = jnp.take(geometry["base"], index, axis=0)
        ramps = (jnp.take(geometry["rx"], index, axis=0), jnp.take(geometry["ry"], index, axis=0))
    tilts = None
    if spec.tilts == "global":
        tilts = variables["object_tilts"]
    elif spec.tilts == "per_position":
        tilts = jnp.take(variables["object_tilts"], index, axis=0)
    model = intensities(variables, corners, spec, ramps, tilts)
    target = jnp.take(targets, index, axis=0)
    per = loss_per_pattern(model, target, spec)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    mean = jnp.sum(per * weight) / count
    if spec.reduction == "rms" and spec.loss == "amplitude":
        scale = jnp.sum(jnp.mean(target, axis=(-2, -1)) * weight) / count
        return jnp.sqrt(jnp.maximum(mean, 1e-30)) / scale
    return mean
