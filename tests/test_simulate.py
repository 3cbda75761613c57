"""Tests of stem4d.simulate: the synthetic data must carry exactly the answer it claims."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import stem4d
from stem4d.simulate import (
    crystal,
    ellipse_matrix,
    probe_disk,
    rotation_matrix,
    scan_to_detector_matrix,
)

# well separated disks (|g| >= 14 px, radius 4 px) on a 96 px detector
SPARSE = {"g1": (15.0, 2.5), "g2": (-3.5, 14.0), "disk_radius": 4.0}


def _centroids(pattern: np.ndarray, qx: np.ndarray, qy: np.ndarray, rad: float) -> np.ndarray:
    """Intensity centroid in a circle of radius ``rad`` around each ``(qx, qy)`` guess."""
    ii, jj = np.indices(pattern.shape)
    out = []
    for cx, cy in zip(qx, qy, strict=True):
        w = pattern * ((ii - cx) ** 2 + (jj - cy) ** 2 <= rad**2)
        out.append((np.sum(w * ii) / w.sum(), np.sum(w * jj) / w.sum()))
    return np.array(out)


def _fit_basis(truth: xr.Dataset, rx: int, ry: int) -> np.ndarray:
    """Least-squares basis (columns g1, g2) from the truth disk positions at one position."""
    pos = truth.isel(rx=rx, ry=ry)
    d = np.stack([pos.bragg_qx - pos.qx0, pos.bragg_qy - pos.qy0], axis=1)  # (peak, 2)
    hk = np.stack([truth.bragg_h, truth.bragg_k], axis=1).astype(float)
    sol, *_ = np.linalg.lstsq(hk, d, rcond=None)  # rows g1, g2
    return sol.T


def test_disk_centres_match_centroids() -> None:
    cube, truth = crystal(
        (3, 3), (96, 96), origin=(47.3, 48.15), origin_drift=(0.4, -0.3, 0.25, 0.35),
        strain={"exx": 0.02, "exy": -0.01, "theta": 0.05}, **SPARSE,
    )
    rad = SPARSE["disk_radius"] + 3.0
    for rx, ry in [(0, 0), (1, 2), (2, 1)]:
        t = truth.isel(rx=rx, ry=ry)
        inside = t.bragg_inside.values & (
            (t.bragg_qx > rad) & (t.bragg_qx < 95 - rad)
            & (t.bragg_qy > rad) & (t.bragg_qy < 95 - rad)
        ).values
        assert inside.sum() >= 9
        cen = _centroids(cube.values[rx, ry].astype(float), t.bragg_qx.values[inside],
                         t.bragg_qy.values[inside], rad)
        err = np.hypot(cen[:, 0] - t.bragg_qx.values[inside],
                       cen[:, 1] - t.bragg_qy.values[inside])
        assert err.max() < 0.02


def test_central_disk_integral_and_amplitudes() -> None:
    cube, truth = crystal((2, 2), (96, 96), origin=(47.6, 47.2), central_intensity=3.0, **SPARSE)
    t = truth.isel(rx=0, ry=0)
    assert (t.bragg_h[0], t.bragg_k[0]) == (0, 0)
    pattern = cube.values[0, 0].astype(float)
    ii, jj = np.indices(pattern.shape)
    near = (ii - 47.6) ** 2 + (jj - 47.2) ** 2 <= 7.0**2
    total = pattern[near].sum()
    expected = np.pi * 4.0**2 * 3.0
    assert total == pytest.approx(expected, rel=0.01)
    assert float(t.bragg_intensity[0]) == pytest.approx(expected)
    # a fully covered pixel has the amplitude
    assert pattern[48, 47] == pytest.approx(3.0, rel=1e-3)
    amp = t.bragg_amplitude.values
    assert amp[0] == 3.0 and np.all(amp[1:] < 3.0) and np.all(amp[1:] > 0)
    assert np.unique(np.round(amp[1:], 8)).size > amp.size // 3  # they differ
    # Friedel pairs share the amplitude
    h, k = truth.bragg_h.values, truth.bragg_k.values
    for i in range(1, h.size):
        j = np.flatnonzero((h == -h[i]) & (k == -k[i]))
        assert amp[i] == pytest.approx(amp[j[0]])


def test_peak_list_and_q_max() -> None:
    _, truth = crystal((2, 2), (64, 64))
    g = np.hypot(*(truth.g1_reference.values[:, None] * truth.bragg_h.values
                   + truth.g2_reference.values[:, None] * truth.bragg_k.values))
    assert np.all(np.diff(g) >= -1e-9)  # sorted by |g|
    r = float(truth.disk_radius)
    on = ((truth.bragg_qx > -r) & (truth.bragg_qx < 63 + r)
          & (truth.bragg_qy > -r) & (truth.bragg_qy < 63 + r))
    assert bool(on.any(("rx", "ry")).all())
    _, small = crystal((2, 2), (64, 64), q_max=15.0)
    gs = np.hypot(*(small.g1_reference.values[:, None] * small.bragg_h.values
                    + small.g2_reference.values[:, None] * small.bragg_k.values))
    assert gs.max() <= 15.0 and small.sizes["peak"] == 9  # 0, ±g1, ±g2, ±(g1+g2), ±(g1-g2)


def test_origin_drift_plane_and_cube_coords() -> None:
    drift = (0.1, -0.2, 0.05, 0.3)
    cube, truth = crystal((5, 7), (64, 64), origin=(31.7, 30.2), origin_drift=drift)
    i = np.arange(5)[:, None] - 2.0
    j = np.arange(7)[None, :] - 3.0
    np.testing.assert_allclose(truth.qx0, 31.7 + drift[0] * i + drift[1] * j)
    np.testing.assert_allclose(truth.qy0, 30.2 + drift[2] * i + drift[3] * j)
    assert truth.qx0.attrs["units"] == "pixels"
    qx0, qy0 = stem4d.get_origin(cube)
    np.testing.assert_allclose(qx0, truth.qx0, atol=1e-12)
    np.testing.assert_allclose(qy0, truth.qy0, atol=1e-12)
    # the central disk follows the origin
    np.testing.assert_allclose(truth.bragg_qx.isel(peak=0), truth.qx0)
    # q coordinates are zero at the mean origin
    assert float(cube.qx[0]) == pytest.approx(-31.7)
    # a constant origin gives scalar calibration, no per-position coords
    flat, _ = crystal((2, 2), (64, 64), origin=(30.25, 32.5))
    assert "qx0" not in flat.coords and stem4d.get_origin(flat) == (30.25, 32.5)


def test_uniform_tensile_strain_shrinks_reciprocal_vectors() -> None:
    g1, g2 = np.array([12.0, 3.0]), np.array([-2.0, 11.0])
    _, truth = crystal((2, 2), (96, 96), g1=g1, g2=g2, strain={"exx": 0.01})
    fit = _fit_basis(truth, 1, 0)
    expected = np.diag([1 / 1.01, 1.0]) @ np.stack([g1, g2], axis=1)  # F^-T, F = diag(1.01, 1)
    np.testing.assert_allclose(fit, expected, atol=1e-10)
    np.testing.assert_allclose(truth.g1.isel(rx=1, ry=0), expected[:, 0], atol=1e-12)
    assert abs(fit[0, 0]) < abs(g1[0])  # contraction along detector qx
    assert float(truth.exx[0, 0]) == 0.01 and truth.theta.attrs["units"] == "rad"


def test_scan_rotation_moves_contraction_to_predicted_axis() -> None:
    g = {"g1": (12.0, 0.0), "g2": (0.0, 12.0)}
    _, truth = crystal((2, 2), (96, 96), strain={"exx": 0.01}, scan_rotation=np.pi / 2, **g)
    fit = _fit_basis(truth, 0, 0)
    # Q = R(90°) maps scan x (along rx) onto detector qy: qy shrinks, qx does not
    np.testing.assert_allclose(fit, np.diag([12.0, 12.0 / 1.01]), atol=1e-10)
    np.testing.assert_allclose(scan_to_detector_matrix(np.pi / 2) @ [1, 0], [0, 1], atol=1e-15)


def test_flip_and_lattice_rotation_sense() -> None:
    g = {"g1": (12.0, 0.0), "g2": (0.0, 12.0)}
    theta = 0.03
    _, plain = crystal((1, 1), (96, 96), strain={"theta": theta}, **g)
    _, flip = crystal((1, 1), (96, 96), strain={"theta": theta}, scan_flip=True, **g)
    # a lattice rotation by theta rotates the pattern by theta (-theta when flipped)
    np.testing.assert_allclose(_fit_basis(plain, 0, 0), rotation_matrix(theta) * 12, atol=1e-10)
    np.testing.assert_allclose(_fit_basis(flip, 0, 0), rotation_matrix(-theta) * 12, atol=1e-10)
    # a shear changes sign on the detector under a flip
    _, shear = crystal((1, 1), (96, 96), strain={"exy": 0.01}, scan_flip=True, **g)
    b = _fit_basis(shear, 0, 0)
    inv_t = np.linalg.inv(np.array([[1.0, 0.01], [0.01, 1.0]]))
    np.testing.assert_allclose(b, np.diag([1, -1]) @ inv_t @ np.diag([1, -1]) * 12, atol=1e-10)


def test_strain_maps_per_position() -> None:
    exx = np.linspace(-0.01, 0.01, 12).reshape(3, 4)
    eyy = xr.DataArray(np.full((3, 4), 0.005), dims=("rx", "ry"))
    _, truth = crystal((3, 4), (64, 64), strain=xr.Dataset({"exx": (("rx", "ry"), exx),
                                                              "eyy": eyy}))
    np.testing.assert_allclose(truth.exx, exx)
    np.testing.assert_allclose(truth.eyy, 0.005)
    np.testing.assert_allclose(truth.g1.sel(vector="qx"), 9.0 / (1 + exx))
    with pytest.raises(ValueError, match="strain"):
        crystal((3, 4), (64, 64), strain={"exz": 0.1})
    with pytest.raises(ValueError, match="scan shape"):
        crystal((3, 4), (64, 64), strain={"exx": np.zeros((4, 3))})


def test_ellipse_stretches_positions() -> None:
    ell = (1.08, 0.95, 0.4)
    kw = {"origin": (47.2, 48.4), **SPARSE}
    _, ref = crystal((1, 1), (96, 96), **kw)
    cube, truth = crystal((1, 1), (96, 96), ellipse=ell, **kw)
    a = ellipse_matrix(*ell)
    d_ref = np.stack([ref.bragg_qx - ref.qx0, ref.bragg_qy - ref.qy0], -1)[0, 0]
    d = np.stack([truth.bragg_qx - truth.qx0, truth.bragg_qy - truth.qy0], -1)[0, 0]
    # the peak lists differ at the detector edge: compare common (h, k)
    ref_hk = {hk: i for i, hk in enumerate(zip(ref.bragg_h.values, ref.bragg_k.values,
                                               strict=True))}
    pairs = [(i, ref_hk[hk]) for i, hk in enumerate(zip(truth.bragg_h.values,
                                                        truth.bragg_k.values, strict=True))
             if hk in ref_hk]
    assert len(pairs) > 30
    mine, theirs = np.array(pairs).T
    np.testing.assert_allclose(d[mine], d_ref[theirs] @ a.T, atol=1e-10)
    # stretch a along phi, b across
    u = np.array([np.cos(0.4), np.sin(0.4)])
    np.testing.assert_allclose(a @ u, 1.08 * u)
    np.testing.assert_allclose(a @ [-u[1], u[0]], 0.95 * np.array([-u[1], u[0]]))
    np.testing.assert_allclose(truth.g1[0, 0], a @ ref.g1[0, 0].values)
    np.testing.assert_allclose(truth.g1_undistorted, ref.g1)
    assert float(truth.ellipse_a) == 1.08 and truth.ellipse_phi.attrs["units"] == "rad"
    # the rendered (circular) disks sit at the distorted positions
    t = truth.isel(rx=0, ry=0)
    sel = t.bragg_inside.values & (np.hypot(d[:, 0], d[:, 1]) < 30)
    cen = _centroids(cube.values[0, 0].astype(float), t.bragg_qx.values[sel],
                     t.bragg_qy.values[sel], 7.0)
    np.testing.assert_allclose(cen, np.stack([t.bragg_qx, t.bragg_qy], -1)[sel], atol=0.02)


def test_dose_poisson_statistics() -> None:
    dose = 200.0
    cube, truth = crystal((16, 16), (64, 64), dose=dose, origin=(31.5, 31.5), disk_radius=6.0,
                          g1=(20.0, 3.0), g2=(-4.0, 19.0))
    assert cube.attrs["units"] == "counts"
    data = cube.values
    assert np.all(data == np.round(data)) and data.min() >= 0
    ii, jj = np.indices((64, 64))
    core = (ii - 31.5) ** 2 + (jj - 31.5) ** 2 <= 4.0**2
    pix = data[:, :, core]
    assert pix.mean() == pytest.approx(dose, rel=0.01)
    assert pix.var() == pytest.approx(pix.mean(), rel=0.06)
    assert float(truth.bragg_amplitude[0, 0, 0]) == dose


def test_seed_reproducible() -> None:
    a, ta = crystal((4, 4), (48, 48), dose=20.0, seed=3)
    b, tb = crystal((4, 4), (48, 48), dose=20.0, seed=3)
    c, tc = crystal((4, 4), (48, 48), dose=20.0, seed=4)
    np.testing.assert_array_equal(a.values, b.values)
    xr.testing.assert_identical(ta, tb)
    assert not np.array_equal(a.values, c.values)
    assert not np.allclose(ta.bragg_amplitude[0, 0, 1:], tc.bragg_amplitude[0, 0, 1:])


@pytest.mark.parametrize("dose", [None, 30.0])
def test_dask_chunks_equal_numpy(dose: float | None) -> None:
    kw = {"origin_drift": (0.1, 0.0, 0.0, -0.1), "dose": dose, "seed": 5}
    lazy, tl = crystal((7, 5), (48, 48), chunks=3, **kw)
    eager, te = crystal((7, 5), (48, 48), **kw)
    assert isinstance(lazy.data, da.Array)
    assert lazy.data.chunks[0] == (3, 3, 1)
    np.testing.assert_array_equal(lazy.values, eager.values)
    xr.testing.assert_identical(lazy.coords.to_dataset(), eager.coords.to_dataset())
    xr.testing.assert_identical(tl, te)


def test_calibrations_on_cube() -> None:
    cube, truth = crystal((4, 6), (64, 64), r_step=0.5, q_pixel_size=0.01, beam_energy=200e3)
    assert stem4d.r_pixel_size(cube) == (0.5, 0.5, "Å")
    sx, sy, units = stem4d.q_pixel_size(cube)
    assert (sx, sy, units) == (pytest.approx(0.01), pytest.approx(0.01), "1/Å")
    assert float(cube.beam_energy) == 200e3 and cube.beam_energy.attrs["units"] == "eV"
    lam = stem4d.electron_wavelength(200e3)
    assert float(cube.convergence_semiangle) == pytest.approx(1000 * lam * 4.0 * 0.01)
    assert cube.convergence_semiangle.attrs["units"] == "mrad"
    assert float(cube.qx[0]) == pytest.approx(-31.5 * 0.01)  # centred on the origin
    xr.testing.assert_identical(truth.rx, cube.rx.reset_coords(drop=True))
    assert cube.dtype == np.float32
    for name in ("qx0", "g1", "bragg_qx", "bragg_intensity", "exx", "disk_radius"):
        assert "units" in truth[name].attrs
    plain, _ = crystal((2, 2), (32, 32), disk_radius=3.0, beam_energy=None, dtype="uint16",
                       dose=10.0)
    assert plain.qx.attrs["units"] == "pixels" and "beam_energy" not in plain.coords
    assert "convergence_semiangle" not in plain.coords and plain.dtype == np.uint16


def test_probe_disk() -> None:
    probe = probe_disk((48, 40), 6.0, center=(20.3, 21.6))
    assert probe.dims == ("qx", "qy") and probe.shape == (48, 40)
    assert probe.qx.attrs["units"] == "pixels"
    assert float(probe.sum()) == pytest.approx(np.pi * 36, rel=1e-3)
    assert float(probe.max()) == pytest.approx(1.0, rel=1e-4)
    w = probe.values.astype(float)
    ii, jj = np.indices(w.shape)
    assert np.sum(w * ii) / w.sum() == pytest.approx(20.3, abs=0.01)
    assert np.sum(w * jj) / w.sum() == pytest.approx(21.6, abs=0.01)
    assert float(probe.qx.sel(qx=0.0, method="nearest")) == pytest.approx(-0.3)
    centred = probe_disk((32, 32), 4.0)
    assert float(centred.qx[0]) == -15.5


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="g1"):
        crystal(g1=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="parallel"):
        crystal(g1=(4.0, 2.0), g2=(8.0, 4.0))
    with pytest.raises(ValueError, match="disk_radius"):
        crystal(disk_radius=0.2)
    with pytest.raises(ValueError, match="dose"):
        crystal(dose=-1)
    with pytest.raises(ValueError, match="origin_drift"):
        crystal(origin_drift=(0.1, 0.2))
    with pytest.raises(ValueError, match="ellipse"):
        crystal(ellipse=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="scan_shape"):
        crystal(scan_shape=(0, 4))
    with pytest.raises(ValueError, match="chunks"):
        crystal(chunks=0)
