"""Electron optics for ptychography: aberrations, probes, propagators, Fourier shifts.

Plain numpy (no JAX), used to initialize reconstructions and to simulate test data.

Conventions (see ``docs/conventions.md`` and the project's ``CONVENTIONS.md``)
-------------------------------------------------------------------------------
Fourier sign
    A plane wave is ``exp(+2πi k·r)``. The forward transform ``F[ψ](k) = Σ_r ψ(r)
    exp(-2πi k·r)`` (``numpy.fft.fft2``) takes a real-space wave to its spatial
    frequencies; it is the transform that takes the **exit wave to the detector**.
    Frequencies ``k`` are cycles per Å (``numpy.fft.fftfreq(n, d=dx)``).
Axes
    Arrays are ``(x, y)`` = ``(row, column)``, the same order as ``rx, ry`` and ``qx, qy``.
    The azimuth ``φ = atan2(k_y, k_x)`` is measured from the first (row) axis toward
    the second (column) axis.
Aberrations
    Krivanek polar coefficients ``Cnm`` (Å) and ``phinm`` (rad), phase
    ``χ(α, φ) = (2π/λ) Σ Cnm α^(n+1)/(n+1) cos(m(φ - φnm))`` with ``α = λ|k|``, and the
    lens transfer ``exp(-iχ)``. **defocus = -C10**: positive defocus is underfocus,
    positive C10 is overfocus. :func:`polar_aberrations` turns Krivanek cartesian
    (``C12a``/``C12b``...), Haider/CEOS names (``C1, A1, B2, A2, C3, S3, A3, B4, D4, A4,
    C5, S5, R5, A5`` with angles ``A1phi``...) and the aliases ``defocus``, ``Cs``,
    ``C5`` into Krivanek polar; angles of the input are in degrees unless
    ``angle_units="rad"``.
Probe
    ``ψ(r) = IFFT[A(k) exp(-iχ(k))]``, centred on pixel ``(n//2, n//2)`` of its window,
    normalized so that ``Σ_r |ψ(r)|² = 1`` (all modes together: ``Σ_modes Σ_r |ψ|² = 1``,
    each mode carrying its power).
Propagation
    Fresnel propagator over a distance ``dz`` (Å) along the beam:
    ``P(k) = exp(-iπ λ dz |k|²)``, applied as ``ψ(z + dz) = IFFT[FFT[ψ(z)] P]``. A
    probe with ``C10 = dz`` is the focused probe propagated by ``+dz`` (its crossover
    lies ``dz`` above the plane: overfocus).
Shifts
    ``shift(ψ, s)(r) = ψ(r - s)``, done as ``IFFT[FFT[ψ] exp(-2πi k·s)]`` (periodic).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from ..datacube import electron_wavelength

__all__ = [
    "wavelength",
    "polar_aberrations",
    "cartesian_aberrations",
    "haider_aberrations",
    "POLAR_ORDERS",
    "aberration_phase",
    "spatial_frequencies",
    "aperture",
    "make_probe",
    "probe_modes",
    "orthogonalize_modes",
    "fresnel_propagator",
    "fourier_shift",
]

#: Krivanek orders (n, m) up to fifth order (m has the parity of n + 1, m <= n + 1).
POLAR_ORDERS: tuple[tuple[int, int], ...] = tuple(
    (n, m) for n in range(1, 6) for m in range(n + 2) if (n + 1 - m) % 2 == 0
)

# Haider (CEOS) name -> (n, m, factor): C_nm = factor * haider magnitude.
_HAIDER: dict[str, tuple[int, int, float]] = {
    "C1": (1, 0, 1.0), "A1": (1, 2, 1.0),
    "B2": (2, 1, 3.0), "A2": (2, 3, 1.0),
    "C3": (3, 0, 1.0), "S3": (3, 2, 4.0), "A3": (3, 4, 1.0),
    "B4": (4, 1, 5.0), "D4": (4, 3, 5.0), "A4": (4, 5, 1.0),
    "C5": (5, 0, 1.0), "S5": (5, 2, 6.0), "R5": (5, 4, 6.0), "A5": (5, 6, 1.0),
}
_HAIDER_BY_NM = {(n, m): (name, f) for name, (n, m, f) in _HAIDER.items()}
_ALIASES: dict[str, tuple[str, float]] = {"defocus": ("C10", -1.0), "Cs": ("C30", 1.0)}

_POLAR_RE = re.compile(r"^C([1-5])([0-6])$")
_PHI_RE = re.compile(r"^phi([1-5])([0-6])$")
_CART_RE = re.compile(r"^C([1-5])([0-6])([ab])$")
_HAIDER_PHI_RE = re.compile(r"^([A-DRS][1-5])phi$")

SUPPORTED_NOTATIONS = (
    "Krivanek polar (C10, C12, phi12, C21, phi21, ..., C56, phi56), Krivanek cartesian "
    "(C12a, C12b, ..., C56a, C56b), Haider (C1, A1, A1phi, B2, B2phi, A2, C3, S3, A3, B4, "
    "D4, A4, C5, S5, R5, A5 and their ...phi angles), aliases defocus (= -C10) and "
    "Cs (= C30)"
)


def wavelength(beam_energy: float) -> float:
    """Relativistic electron wavelength, Å, for a kinetic energy in eV (300e3 → 0.019687)."""
    return float(electron_wavelength(beam_energy))


def _valid_order(n: int, m: int) -> bool:
    return (n, m) in POLAR_ORDERS


def polar_aberrations(
    coefficients: Mapping[str, float] | None, angle_units: str = "deg"
) -> dict[str, float]:
    """Normalize aberrations given in any notation to Krivanek polar.

    Parameters
    ----------
    coefficients
        Mapping of names to values. Lengths (``Cnm``, ``Cnma/b``, Haider magnitudes,
        ``defocus``, ``Cs``) in Å. Accepted names: see :data:`SUPPORTED_NOTATIONS`.
        Haider magnitudes map as ``C21 = 3 B2``, ``C32 = 4 S3``, ``C41 = 5 B4``,
        ``C43 = 5 D4``, ``C52 = 6 S5``, ``C54 = 6 R5`` (the others 1:1), and a Haider
        angle is taken as the Krivanek azimuth ``φnm`` of the same term.
    angle_units
        Units of the angles in the input (``phinm`` and Haider ``...phi``): ``"deg"``
        (default, as PtyRAD files) or ``"rad"``.

    Returns
    -------
    dict with ``Cnm`` (Å) and, for ``m > 0``, ``phinm`` (rad), for every order given;
    cartesian inputs give a magnitude ``>= 0`` and an angle in ``(-π/m, π/m]``.

    Raises
    ------
    ValueError
        For an unknown name, a non-finite value, or a coefficient given twice (in two
        notations).
    """
    if angle_units not in ("deg", "rad"):
        raise ValueError(f"angle_units must be 'deg' or 'rad', got {angle_units!r}")
    to_rad = math.pi / 180.0 if angle_units == "deg" else 1.0
    magnitudes: dict[tuple[int, int], float] = {}
    angles: dict[tuple[int, int], float] = {}
    cart: dict[tuple[int, int], dict[str, float]] = {}
    source: dict[tuple[tuple[int, int], str], str] = {}  # ((n, m), kind) -> name given

    def claim(nm: tuple[int, int], name: str, kind: str) -> None:
        prev = source.get((nm, kind))
        if prev is not None:
            raise ValueError(
                f"aberration C{nm[0]}{nm[1]} is given twice: as {prev!r} and as {name!r}")
        source[(nm, kind)] = name

    for name, value in dict(coefficients or {}).items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"aberration {name!r} must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"aberration {name!r} must be finite, got {value!r}")
        if name in _ALIASES:
            target, factor = _ALIASES[name]
            nm = (int(target[1]), int(target[2]))
            claim(nm, name, "mag")
            magnitudes[nm] = factor * v
        elif (mt := _POLAR_RE.match(name)) and _valid_order(int(mt[1]), int(mt[2])):
            nm = (int(mt[1]), int(mt[2]))
            claim(nm, name, "mag")
            magnitudes[nm] = v
        elif (mt := _PHI_RE.match(name)) and _valid_order(int(mt[1]), int(mt[2])) and mt[2] != "0":
            nm = (int(mt[1]), int(mt[2]))
            claim(nm, name, "phi")
            angles[nm] = v * to_rad
        elif (mt := _CART_RE.match(name)) and _valid_order(int(mt[1]), int(mt[2])) and mt[2] != "0":
            nm = (int(mt[1]), int(mt[2]))
            claim(nm, name, mt[3])
            cart.setdefault(nm, {})[mt[3]] = v
        elif name in _HAIDER:
            n, m, factor = _HAIDER[name]
            claim((n, m), name, "mag")
            magnitudes[(n, m)] = factor * v
        elif (mt := _HAIDER_PHI_RE.match(name)) and mt[1] in _HAIDER and _HAIDER[mt[1]][1] > 0:
            n, m, _ = _HAIDER[mt[1]]
            claim((n, m), name, "phi")
            angles[(n, m)] = v * to_rad
        else:
            raise ValueError(
                f"unknown aberration name {name!r}; supported notations: {SUPPORTED_NOTATIONS}")

    for nm, ab in cart.items():
        if nm in magnitudes or nm in angles:
            given = source.get((nm, "mag")) or source.get((nm, "phi"))
            raise ValueError(
                f"aberration C{nm[0]}{nm[1]} is given twice: in cartesian form and as {given!r}")
        a, b = ab.get("a", 0.0), ab.get("b", 0.0)
        m = nm[1]
        magnitudes[nm] = math.hypot(a, b)
        angles[nm] = math.atan2(b, a) / m if (a or b) else 0.0

    out: dict[str, float] = {}
    for n, m in POLAR_ORDERS:
        if (n, m) not in magnitudes and (n, m) not in angles:
            continue
        out[f"C{n}{m}"] = float(magnitudes.get((n, m), 0.0))
        if m > 0:
            out[f"phi{n}{m}"] = float(angles.get((n, m), 0.0))
    return out


def cartesian_aberrations(polar: Mapping[str, float]) -> dict[str, float]:
    """Krivanek polar (Å, rad) → Krivanek cartesian ``Cnma = Cnm cos(mφ)``, ``Cnmb = Cnm sin(mφ)``.

    Round-symmetric terms (``m = 0``) keep their name.
    """
    out: dict[str, float] = {}
    for n, m in POLAR_ORDERS:
        c = polar.get(f"C{n}{m}")
        if c is None:
            continue
        if m == 0:
            out[f"C{n}{m}"] = float(c)
        else:
            phi = polar.get(f"phi{n}{m}", 0.0)
            out[f"C{n}{m}a"] = float(c * math.cos(m * phi))
            out[f"C{n}{m}b"] = float(c * math.sin(m * phi))
    return out


def haider_aberrations(polar: Mapping[str, float], angle_units: str = "deg") -> dict[str, float]:
    """Krivanek polar (Å, rad) → Haider names (Å) and ``...phi`` angles in ``angle_units``."""
    to_unit = 180.0 / math.pi if angle_units == "deg" else 1.0
    out: dict[str, float] = {}
    for (n, m), (name, factor) in _HAIDER_BY_NM.items():
        c = polar.get(f"C{n}{m}")
        if c is None:
            continue
        out[name] = float(c) / factor
        if m > 0:
            out[f"{name}phi"] = float(polar.get(f"phi{n}{m}", 0.0)) * to_unit
    return out


def aberration_phase(
    alpha: np.ndarray, phi: np.ndarray, wavelength: float, polar: Mapping[str, float]
) -> np.ndarray:
    """Aberration phase χ(α, φ), rad.

    Parameters
    ----------
    alpha
        Scattering angle, rad.
    phi
        Azimuth, rad (from the first array axis toward the second).
    wavelength
        Electron wavelength, Å.
    polar
        Krivanek polar coefficients (``Cnm`` in Å, ``phinm`` in rad), as returned by
        :func:`polar_aberrations`.

    Returns
    -------
    ``χ = (2π/λ) Σ Cnm α^(n+1)/(n+1) cos(m(φ − φnm))``; the lens transfer is ``exp(-iχ)``.
    """
    alpha = np.asarray(alpha, dtype=float)
    phi = np.asarray(phi, dtype=float)
    chi = np.zeros(np.broadcast_shapes(alpha.shape, phi.shape))
    for n, m in POLAR_ORDERS:
        c = polar.get(f"C{n}{m}", 0.0)
        if not c:
            continue
        angular = np.cos(m * (phi - polar.get(f"phi{n}{m}", 0.0))) if m else 1.0
        chi = chi + c * alpha ** (n + 1) / (n + 1) * angular
    return 2 * np.pi / wavelength * chi


def spatial_frequencies(shape: tuple[int, int], pixel_size: float | Sequence[float]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(kx, ky)`` grids (1/Å) of an FFT of ``shape`` with real-space ``pixel_size`` (Å),
    in numpy's unshifted order (zero frequency at index 0)."""
    dx, dy = (pixel_size, pixel_size) if np.ndim(pixel_size) == 0 else pixel_size
    kx = np.fft.fftfreq(shape[0], d=float(dx))
    ky = np.fft.fftfreq(shape[1], d=float(dy))
    return np.meshgrid(kx, ky, indexing="ij")


def aperture(alpha: np.ndarray, semiangle: float, edge: float = 0.0) -> np.ndarray:
    """Round aperture transmission, 1 inside ``semiangle`` and 0 outside (angles in rad).

    ``edge`` (rad) > 0 gives a linear edge of that width centred on ``semiangle`` (one
    detector pixel's angle is a good choice: it removes the aliasing of a hard edge).
    """
    if edge <= 0:
        return (alpha <= semiangle).astype(float)
    return np.clip((semiangle - alpha) / edge + 0.5, 0.0, 1.0)


def make_probe(
    shape: tuple[int, int],
    pixel_size: float,
    *,
    beam_energy: float,
    convergence_semiangle: float,
    aberrations: Mapping[str, float] | None = None,
    angle_units: str = "rad",
    soft_edge: bool = True,
) -> np.ndarray:
    """Coherent probe from the optics, centred in its window.

    Parameters
    ----------
    shape
        Window ``(nx, ny)``, pixels (usually the detector size).
    pixel_size
        Real-space pixel size, Å (``1 / (n · detector pixel in 1/Å)``).
    beam_energy
        Electron kinetic energy, eV.
    convergence_semiangle
        Probe-forming aperture semiangle, mrad.
    aberrations
        Any notation accepted by :func:`polar_aberrations` (lengths in Å), with angles in
        ``angle_units`` (default ``"rad"`` here; parameter files use degrees).
    soft_edge
        Give the aperture a one-pixel-wide linear edge (reduces ringing).

    Returns
    -------
    complex128 array of ``shape``: ``IFFT[A(k) exp(-iχ(k))]`` shifted so the optical axis
    is at pixel ``(nx//2, ny//2)``, normalized to ``Σ |ψ|² = 1``.
    """
    lam = wavelength(beam_energy)
    polar = polar_aberrations(aberrations, angle_units)
    kx, ky = spatial_frequencies(shape, pixel_size)
    alpha = lam * np.hypot(kx, ky)
    phi = np.arctan2(ky, kx)
    dk = 1.0 / (max(shape) * pixel_size)
    amp = aperture(alpha, convergence_semiangle * 1e-3, edge=lam * dk if soft_edge else 0.0)
    if not amp.any():
        raise ValueError(
            f"the aperture ({convergence_semiangle} mrad) holds no pixel of a {shape} grid "
            f"with pixel size {pixel_size} Å: the detector pixel is too coarse")
    psi_k = amp * np.exp(-1j * aberration_phase(alpha, phi, lam, polar))
    probe = np.fft.fftshift(np.fft.ifft2(psi_k))
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def orthogonalize_modes(modes: np.ndarray) -> np.ndarray:
    """Orthogonal modes with the same incoherent sum ``Σ_m |ψ_m(r)|²``·(density matrix).

    SVD of the ``(modes, pixels)`` matrix; the returned modes are mutually orthogonal and
    ordered by decreasing power.
    """
    m = modes.reshape(modes.shape[0], -1)
    u, s, vh = np.linalg.svd(m, full_matrices=False)
    return (s[:, None] * vh).reshape(modes.shape)


def probe_modes(probe: np.ndarray, powers: Sequence[float]) -> np.ndarray:
    """Mixed-state probe: mutually orthogonal modes with the given powers.

    Mode 0 is ``probe``; mode ``k > 0`` is ``probe`` times a polynomial ``x^a y^b`` of
    increasing degree (``x``, ``y`` measured from the probe's intensity centroid, in
    pixels; Hermite-like), Gram-Schmidt orthogonalized against the previous modes.

    Parameters
    ----------
    probe
        Main probe, 2-D complex.
    powers
        Fraction of the total intensity in each mode (non-negative, summing to 1).

    Returns
    -------
    complex array ``(len(powers), *probe.shape)``, ``Σ_r |ψ_k|² = powers[k] · Σ_r|probe|²``,
    ``Σ_r ψ_j* ψ_k = 0`` for ``j != k``.
    """
    powers = np.asarray(powers, dtype=float)
    if powers.ndim != 1 or powers.size < 1 or np.any(powers < 0):
        raise ValueError(f"powers must be a non-empty list of non-negative numbers, got {powers}")
    if abs(powers.sum() - 1) > 1e-6:
        raise ValueError(f"powers must sum to 1, got sum {powers.sum():.6g} ({powers.tolist()})")
    total = np.sum(np.abs(probe) ** 2)
    w = np.abs(probe) ** 2 / total
    ii, jj = np.indices(probe.shape, dtype=float)
    ci, cj = np.sum(w * ii), np.sum(w * jj)
    width = np.sqrt(max(np.sum(w * ((ii - ci) ** 2 + (jj - cj) ** 2)) / 2, 1e-12))
    x, y = (ii - ci) / width, (jj - cj) / width
    exponents = [(a, d - a) for d in range(1, 64) for a in range(d, -1, -1)]
    basis = [probe.astype(complex)]
    for a, b in exponents[: powers.size - 1]:
        basis.append(probe * x**a * y**b)
    mat = np.stack([v.ravel() for v in basis], axis=1)
    q, r = np.linalg.qr(mat)
    q = q * np.sign(np.real(np.diag(r)))[None, :]  # mode 0 keeps the probe's phase
    out = (q.T * np.sqrt(powers * total)[:, None]).reshape((powers.size, *probe.shape))
    return out


def fresnel_propagator(shape: tuple[int, int], pixel_size: float, wavelength: float,
                       dz: float) -> np.ndarray:
    """Fresnel propagator ``P(k) = exp(-iπ λ dz |k|²)`` in unshifted FFT order.

    Parameters: ``shape`` pixels, ``pixel_size`` Å, ``wavelength`` Å, ``dz`` Å (positive
    = downstream, along the beam). Applied as ``IFFT[FFT[ψ] · P]``.
    """
    kx, ky = spatial_frequencies(shape, pixel_size)
    return np.exp(-1j * np.pi * wavelength * dz * (kx**2 + ky**2))


def fourier_shift(array: np.ndarray, shift: Sequence[float]) -> np.ndarray:
    """``array(r - shift)`` for a shift in pixels (last two axes), by a Fourier phase ramp.

    Periodic at the edges; ``shift`` is ``(rows, columns)``.
    """
    kx = np.fft.fftfreq(array.shape[-2])[:, None]
    ky = np.fft.fftfreq(array.shape[-1])[None, :]
    ramp = np.exp(-2j * np.pi * (kx * shift[0] + ky * shift[1]))
    return np.fft.ifft2(np.fft.fft2(array) * ramp)
