"""Ptychography test data with a known answer (numpy only, independent of the JAX model).

:func:`simulate_ptychography` makes a thin phase object of Gaussian atoms, a defocused
probe spanning several scan steps, an overlapping raster scan and the diffraction
patterns of the multislice forward model, written here again in numpy (so a
reconstruction test is not circular), with optional Poisson noise at a dose.
:func:`phase_ncc` scores a reconstructed phase against the truth.

Frames: positions and object coordinates are in Å in the *scan frame*: the first raster
position (scan index 0) is at ``(0, 0)``, ``rx`` along the slow scan axis (rows), ``ry``
along the fast one. Patterns have the zero frequency at pixel ``(N//2, N//2)`` and
calibrated ``qx``/``qy`` coordinates in 1/Å. Conventions as in
:mod:`stem4d.ptycho.optics` (``FFT`` takes the exit wave to the detector, orthonormal
scaling, probe normalized to ``Σ|ψ|² = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from .optics import fresnel_propagator, make_probe, wavelength

__all__ = ["gaussian_atoms", "simulate_ptychography", "phase_ncc"]


def gaussian_atoms(
    shape: tuple[int, int],
    pixel_size: float,
    *,
    spacing: float = 2.2,
    sigma: float = 0.35,
    peak: tuple[float, float] = (0.2, 0.5),
    seed: int = 0,
) -> np.ndarray:
    """Phase (rad) of Gaussian atoms on a jittered hexagonal lattice.

    Parameters: ``shape`` pixels, ``pixel_size`` Å, ``spacing`` Å between neighbours,
    ``sigma`` Å (Gaussian width), ``peak`` range of the peak phases (rad, uniform),
    ``seed``. Atoms within 2σ of each other are not placed, so peaks keep their heights
    to within a few percent.
    """
    rng = np.random.default_rng(seed)
    h, w = shape[0] * pixel_size, shape[1] * pixel_size
    xs, ys = [], []
    row_step = spacing * math.sqrt(3) / 2
    for i in range(int(h / row_step) + 2):
        for j in range(int(w / spacing) + 2):
            xs.append(i * row_step)
            ys.append(j * spacing + (spacing / 2 if i % 2 else 0.0))
    pos = np.stack([xs, ys], axis=1) + rng.normal(0, 0.08 * spacing, (len(xs), 2))
    heights = rng.uniform(peak[0], peak[1], len(xs))
    x = np.arange(shape[0])[:, None, None] * pixel_size
    y = np.arange(shape[1])[None, :, None] * pixel_size
    phase = np.zeros(shape)
    for start in range(0, len(xs), 256):  # chunks bound the memory
        p, a = pos[start:start + 256], heights[start:start + 256]
        g = np.exp(-((x - p[:, 0]) ** 2 + (y - p[:, 1]) ** 2) / (2 * sigma**2))
        phase += np.sum(g * a, axis=-1)
    return phase


def simulate_ptychography(
    scan_shape: tuple[int, int] = (16, 16),
    detector: int = 48,
    *,
    step: float = 1.0,
    beam_energy: float = 300e3,
    convergence_semiangle: float = 20.0,
    defocus: float = 150.0,
    detector_pixel_size: float | None = None,
    slices: int = 1,
    slice_thickness: float = 2.0,
    tilt: tuple[float, float] = (0.0, 0.0),
    dose: float | None = None,
    atom_spacing: float = 2.2,
    atom_sigma: float = 0.35,
    atom_peak: tuple[float, float] = (0.2, 0.5),
    seed: int = 0,
) -> tuple[xr.DataArray, xr.Dataset]:
    """Diffraction patterns of a known phase object.

    Parameters
    ----------
    scan_shape
        Raster positions (slow, fast).
    detector
        Pattern size N (pixels per side).
    step
        Raster step, Å.
    beam_energy
        eV.
    convergence_semiangle
        mrad.
    defocus
        Å, ``= -C10`` (positive: underfocus); sets the probe size (diameter about
        ``2 · defocus · α``).
    detector_pixel_size
        1/Å; default: the detector edge at twice the aperture's angle.
    slices, slice_thickness
        Multislice object: the phase is split equally over ``slices`` slices spaced
        ``slice_thickness`` Å.
    tilt
        Object tilt (along rx, along ry), mrad: between slices the wave moves by
        ``-slice_thickness · tan(tilt)`` (see :mod:`stem4d.ptycho.model`).
    dose
        Electrons per Å² (Poisson noise); None: noise-free. The patterns are counts
        (dose x step area electrons per pattern in vacuum) in both cases.
    atom_spacing, atom_sigma, atom_peak
        Object: see :func:`gaussian_atoms`.
    seed
        Object and noise.

    Returns
    -------
    patterns
        DataArray ``("scan", "qx", "qy")`` float32, ``qx``/``qy`` in 1/Å (zero at pixel
        N//2), 0-d coords ``beam_energy`` (eV) and ``convergence_semiangle`` (mrad),
        and the scan as :func:`stem4d.ptycho.measurements.to_stack` lays it out:
        positions ``rx``/``ry`` along ``scan`` (Å, ``attrs["step"]``) and the scan shape
        ``n_rx``/``n_ry``.
    truth
        Dataset: ``phase`` (rx, ry) on the object grid (coordinates in Å, scan frame),
        ``probe`` (probe_x, probe_y) complex, ``positions`` (scan, component) Å; attrs
        ``pixel_size`` (Å), ``wavelength`` (Å), ``defocus`` (Å).
    """
    n = int(detector)
    lam = wavelength(beam_energy)
    k_aperture = convergence_semiangle * 1e-3 / lam
    dk = float(detector_pixel_size) if detector_pixel_size else 2 * k_aperture / (n // 2)
    dx = 1.0 / (n * dk)
    slow, fast = scan_shape
    margin = 6
    # probe centres in object pixels; a fractional offset exercises the subpixel shift
    offset = margin + n // 2 + 0.37
    ii, jj = np.meshgrid(np.arange(slow), np.arange(fast), indexing="ij")
    pos_a = np.stack([ii.ravel() * step, jj.ravel() * step], axis=1)  # Å, scan frame
    centres = pos_a / dx + offset
    shape = (int(math.ceil(centres[:, 0].max())) + n // 2 + margin + 1,
             int(math.ceil(centres[:, 1].max())) + n // 2 + margin + 1)
    phase = gaussian_atoms(shape, dx, spacing=atom_spacing, sigma=atom_sigma, peak=atom_peak,
                           seed=seed)
    transmission = np.exp(1j * phase / slices)
    probe = make_probe((n, n), dx, beam_energy=beam_energy,
                       convergence_semiangle=convergence_semiangle,
                       aberrations={"defocus": defocus}, angle_units="rad")
    probe_k = np.fft.fft2(probe)
    k = np.fft.fftfreq(n)
    prop = fresnel_propagator((n, n), dx, lam, slice_thickness) if slices > 1 else None
    if prop is not None and any(tilt):
        walk = np.tan(np.asarray(tilt, dtype=float) * 1e-3) * slice_thickness  # Å per slice
        kx = k[:, None] / dx
        ky = k[None, :] / dx
        prop = prop * np.exp(2j * np.pi * (walk[0] * kx + walk[1] * ky))
    corners = centres - n // 2
    patterns = np.empty((len(centres), n, n), dtype=np.float64)
    for start in range(0, len(centres), 128):
        c = corners[start:start + 128]
        c0 = np.floor(c).astype(int)
        f = c - c0
        ramp = np.exp(-2j * np.pi * (f[:, 0, None, None] * k[None, :, None]
                                     + f[:, 1, None, None] * k[None, None, :]))
        psi = np.fft.ifft2(probe_k[None] * ramp)
        idx_r = c0[:, 0, None] + np.arange(n)[None, :]
        idx_c = c0[:, 1, None] + np.arange(n)[None, :]
        patch = transmission[idx_r[:, :, None], idx_c[:, None, :]]
        for s in range(slices):
            psi = psi * patch
            if s < slices - 1:
                psi = np.fft.ifft2(np.fft.fft2(psi) * prop)
        far = np.fft.fft2(psi) / n  # orthonormal: sum of the pattern = sum |psi|^2
        patterns[start:start + 128] = np.fft.fftshift(np.abs(far) ** 2, axes=(-2, -1))
    electrons = (dose if dose is not None else 1e4) * step * step
    patterns *= electrons
    if dose is not None:
        patterns = np.random.default_rng(seed + 1).poisson(patterns).astype(np.float64)
    q = (np.arange(n) - n // 2) * dk
    coords = {
        "qx": ("qx", q, {"units": "1/Å", "step": dk}),
        "qy": ("qy", q.copy(), {"units": "1/Å", "step": dk}),
        "rx": ("scan", pos_a[:, 0], {"units": "Å", "step": float(step)}),
        "ry": ("scan", pos_a[:, 1], {"units": "Å", "step": float(step)}),
        "n_rx": ((), slow, {"units": "positions", "axis": "slow"}),
        "n_ry": ((), fast, {"units": "positions", "axis": "fast"}),
        "beam_energy": ((), float(beam_energy), {"units": "eV"}),
        "convergence_semiangle": ((), float(convergence_semiangle), {"units": "mrad"}),
    }
    data = xr.DataArray(patterns.astype(np.float32), dims=("scan", "qx", "qy"),
                        coords=coords, name="patterns",
                        attrs={"dose": "none" if dose is None else float(dose)})
    origin = offset * dx  # scan-frame position of object pixel 0 is -origin
    px = np.arange(n) - n // 2
    truth = xr.Dataset(
        {
            "phase": (("rx", "ry"), phase, {"units": "rad"}),
            "probe": (("probe_x", "probe_y"), probe),
            "positions": (("scan", "component"), pos_a, {"units": "Å"}),
        },
        coords={
            "rx": ("rx", np.arange(shape[0]) * dx - origin, {"units": "Å"}),
            "ry": ("ry", np.arange(shape[1]) * dx - origin, {"units": "Å"}),
            "probe_x": ("probe_x", px * dx, {"units": "Å"}),
            "probe_y": ("probe_y", px * dx, {"units": "Å"}),
            "component": ["rx", "ry"],
        },
        attrs={"pixel_size": dx, "wavelength": lam, "defocus": float(defocus),
               "detector_pixel_size": dk, "slices": slices,
               "tilt_mrad": [float(tilt[0]), float(tilt[1])]},
    )
    return data, truth


def phase_ncc(
    phase: xr.DataArray,
    truth: xr.DataArray,
    region: Sequence[float] | None = None,
) -> float:
    """Normalized cross-correlation of a reconstructed phase with the truth.

    Parameters
    ----------
    phase
        Reconstructed phase ``(rx, ry)`` (rad) with coordinates in Å.
    truth
        True phase ``(rx, ry)`` with coordinates in the same frame (Å).
    region
        ``(rx_min, rx_max, ry_min, ry_max)`` in Å to compare (e.g. the scanned area);
        default: the overlap of both grids.

    Returns
    -------
    NCC in [-1, 1] after aligning: the truth is interpolated onto the reconstruction's
    grid, and an offset plus a linear phase ramp (fitted by least squares together with
    a scale) is removed from the reconstruction.
    """
    lo_x = max(float(phase.rx.min()), float(truth.rx.min()))
    hi_x = min(float(phase.rx.max()), float(truth.rx.max()))
    lo_y = max(float(phase.ry.min()), float(truth.ry.min()))
    hi_y = min(float(phase.ry.max()), float(truth.ry.max()))
    if region is not None:
        lo_x, hi_x = max(lo_x, region[0]), min(hi_x, region[1])
        lo_y, hi_y = max(lo_y, region[2]), min(hi_y, region[3])
    p = phase.sel(rx=slice(lo_x, hi_x), ry=slice(lo_y, hi_y))
    t = truth.interp(rx=p.rx, ry=p.ry).values
    pv = p.values.astype(float)
    xx, yy = np.meshgrid(p.rx.values, p.ry.values, indexing="ij")
    design = np.stack([t.ravel(), np.ones(t.size), xx.ravel(), yy.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, pv.ravel(), rcond=None)
    aligned = pv - (coef[1] + coef[2] * xx + coef[3] * yy)
    a = aligned - aligned.mean()
    b = t - t.mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
