"""stem4d.ptycho.optics: wavelength, aberration conventions, probes, propagator, shifts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stem4d.ptycho.optics import (
    aberration_phase,
    cartesian_aberrations,
    fourier_shift,
    fresnel_propagator,
    haider_aberrations,
    make_probe,
    orthogonalize_modes,
    polar_aberrations,
    probe_modes,
    spatial_frequencies,
    wavelength,
)

LAM300 = 0.019687  # Å, CONVENTIONS.md


def test_wavelength_reference_values():
    assert wavelength(300e3) == pytest.approx(LAM300, abs=2e-6)
    assert wavelength(200e3) == pytest.approx(0.025079, abs=2e-6)
    assert wavelength(80e3) == pytest.approx(0.041757, abs=2e-6)


def test_defocus_phase_by_hand():
    lam = wavelength(300e3)
    # defocus = +100 Å (underfocus) is C10 = -100 Å: chi = pi C10 alpha^2 / lambda < 0
    polar = polar_aberrations({"defocus": 100.0})
    assert polar == {"C10": -100.0}
    chi = aberration_phase(np.array(0.010), np.array(0.3), lam, polar)
    assert float(chi) == pytest.approx(math.pi * -100.0 * 0.010**2 / lam, rel=1e-12)
    assert float(chi) == pytest.approx(-1.59573, abs=1e-4)


def test_spherical_and_astigmatism_phase_by_hand():
    lam = wavelength(300e3)
    chi = aberration_phase(np.array(0.020), np.array(1.0), lam, polar_aberrations({"Cs": 1e7}))
    assert float(chi) == pytest.approx(2 * math.pi / lam * 1e7 * 0.020**4 / 4, rel=1e-12)
    assert float(chi) == pytest.approx(127.658, abs=1e-3)
    # two-fold astigmatism 50 Å at 30°: maximal along 30°, minimal (negative) at 120°
    polar = polar_aberrations({"C12": 50.0, "phi12": 30.0})  # degrees by default
    assert polar["phi12"] == pytest.approx(math.pi / 6)
    top = 2 * math.pi / lam * 50 * 0.01**2 / 2
    phis = np.radians([30.0, 120.0, 75.0])
    chi = aberration_phase(np.full(3, 0.01), phis, lam, polar)
    np.testing.assert_allclose(chi, [top, -top, 0.0], atol=1e-9)


def test_haider_cartesian_alias_conversions_round_trip():
    given = {"defocus": -20.0, "A1": 5.0, "A1phi": 40.0, "B2": 10.0, "B2phi": -30.0,
             "A2": 100.0, "A2phi": 10.0, "C3": 2e4, "S3": 1e3, "S3phi": 15.0, "A3": 500.0,
             "B4": 1e4, "D4": 2e4, "D4phi": 5.0, "A4": 3e4, "C5": 1e6, "S5": 1e5, "R5": 2e5,
             "A5": 3e5, "A5phi": 12.0}
    polar = polar_aberrations(given)
    assert polar["C10"] == 20.0
    assert polar["C21"] == 30.0 and polar["phi21"] == pytest.approx(math.radians(-30))
    assert polar["C32"] == 4e3 and polar["C41"] == 5e4 and polar["C43"] == 1e5
    assert polar["C52"] == 6e5 and polar["C54"] == 1.2e6 and polar["C56"] == 3e5
    assert polar["C30"] == 2e4 and polar["C50"] == 1e6
    # back to Haider and forward again
    back = polar_aberrations(haider_aberrations(polar, "deg"), "deg")
    for k, v in polar.items():
        assert back[k] == pytest.approx(v, abs=1e-9), k
    # cartesian: Cnma = Cnm cos(m phi), Cnmb = Cnm sin(m phi)
    cart = cartesian_aberrations(polar)
    assert cart["C12a"] == pytest.approx(5 * math.cos(2 * math.radians(40)))
    assert cart["C12b"] == pytest.approx(5 * math.sin(2 * math.radians(40)))
    again = polar_aberrations(cart)
    chi_a = aberration_phase(np.linspace(0, 0.03, 7)[:, None], np.linspace(-3, 3, 5)[None],
                             LAM300, polar)
    chi_b = aberration_phase(np.linspace(0, 0.03, 7)[:, None], np.linspace(-3, 3, 5)[None],
                             LAM300, again)
    np.testing.assert_allclose(chi_a, chi_b, rtol=1e-10, atol=1e-9)


def test_aberration_names_are_checked():
    with pytest.raises(ValueError, match="unknown aberration name 'C11'"):
        polar_aberrations({"C11": 1.0})
    with pytest.raises(ValueError, match="given twice"):
        polar_aberrations({"defocus": 10.0, "C10": -10.0})
    with pytest.raises(ValueError, match="given twice"):
        polar_aberrations({"C12": 3.0, "C12a": 1.0})
    with pytest.raises(ValueError, match="Cs.*must be a number"):
        polar_aberrations({"Cs": "large"})
    assert polar_aberrations({"C23a": 3.0, "C23b": 4.0}) == pytest.approx(
        {"C23": 5.0, "phi23": math.atan2(4, 3) / 3})


def test_probe_normalization_aperture_and_centre():
    n, dx = 64, 0.2
    probe = make_probe((n, n), dx, beam_energy=300e3, convergence_semiangle=20.0)
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0, rel=1e-12)
    # a focused, aberration-free probe peaks on the window centre
    assert np.unravel_index(np.argmax(np.abs(probe)), probe.shape) == (n // 2, n // 2)
    kx, ky = spatial_frequencies((n, n), dx)
    alpha = LAM300 * np.hypot(kx, ky)
    spectrum = np.abs(np.fft.fft2(np.fft.ifftshift(probe)))
    dalpha = LAM300 / (n * dx)
    assert np.all(spectrum[alpha > 0.020 + dalpha] < 1e-9)
    assert np.all(spectrum[alpha < 0.020 - dalpha] > 0)


def test_defocus_equals_fresnel_propagation():
    """A probe with C10 = dz is the focused probe propagated by +dz (same sign chain)."""
    n, dx, dz = 64, 0.25, 60.0
    lam = wavelength(300e3)
    focused = make_probe((n, n), dx, beam_energy=300e3, convergence_semiangle=15.0)
    overfocus = make_probe((n, n), dx, beam_energy=300e3, convergence_semiangle=15.0,
                           aberrations={"C10": dz})
    prop = fresnel_propagator((n, n), dx, lam, dz)
    propagated = np.fft.ifft2(np.fft.fft2(focused) * prop)
    np.testing.assert_allclose(propagated, overfocus, atol=1e-12)
    underfocus = make_probe((n, n), dx, beam_energy=300e3, convergence_semiangle=15.0,
                            aberrations={"defocus": dz})
    back = np.fft.ifft2(np.fft.fft2(focused) * np.conj(prop))
    np.testing.assert_allclose(back, underfocus, atol=1e-12)


def test_probe_modes_orthogonal_with_powers():
    probe = make_probe((48, 48), 0.25, beam_energy=300e3, convergence_semiangle=20.0,
                       aberrations={"defocus": 80.0})
    powers = [0.7, 0.15, 0.1, 0.05]
    modes = probe_modes(probe, powers)
    gram = np.einsum("mxy,nxy->mn", modes.conj(), modes)
    np.testing.assert_allclose(np.diag(gram).real, powers, atol=1e-12)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-12)
    np.testing.assert_allclose(modes[0], np.sqrt(0.7) * probe, atol=1e-12)
    with pytest.raises(ValueError, match="sum to 1"):
        probe_modes(probe, [0.5, 0.4])
    # SVD orthogonalization keeps the incoherent intensity and orders by power
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(3, 16, 16)) + 1j * rng.normal(size=(3, 16, 16))
    ortho = orthogonalize_modes(mixed)
    np.testing.assert_allclose(np.sum(np.abs(ortho) ** 2, axis=0),
                               np.sum(np.abs(mixed) ** 2, axis=0), rtol=1e-10)
    g = np.einsum("mxy,nxy->mn", ortho.conj(), ortho)
    np.testing.assert_allclose(g - np.diag(np.diag(g)), 0, atol=1e-9)
    assert np.all(np.diff(np.diag(g).real) <= 0)


def test_fourier_shift_sign():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(12, 10))
    np.testing.assert_allclose(fourier_shift(a, (2, -3)).real, np.roll(a, (2, -3), axis=(0, 1)),
                               atol=1e-12)
    # a half-pixel shift moves the centroid of a smooth blob by +0.5 along rows
    x = np.arange(32)[:, None] - 12.0
    blob = np.exp(-(x**2 + (np.arange(32)[None] - 16.0) ** 2) / 8)
    moved = np.abs(fourier_shift(blob, (0.5, 0.0)))
    w = moved / moved.sum()
    assert np.sum(w * np.arange(32)[:, None]) == pytest.approx(12.5, abs=1e-6)
