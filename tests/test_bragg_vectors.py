"""Bragg vectors: calibration, Bragg vector map, masks, virtual images, origin, files.

Peaks are built from the simulator's exact disk positions (``peaks_from_truth``), so every
number is checked against the known answer.
"""

from __future__ import annotations

import dask.array as da
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

import stem4d as s4  # noqa: E402
from stem4d.bragg import _peaks_dataset  # noqa: E402
from stem4d.bragg_vectors import (  # noqa: E402
    bragg_vector_map,
    calibrate_vectors,
    mask_peaks,
    origin_from_vectors,
    vector_virtual_image,
)
from stem4d.calibrate import correct_ellipse  # noqa: E402
from stem4d.orientation import set_orientation  # noqa: E402

PIX = 0.02  # 1/Å per pixel
ELLIPSE = (1.04, 1 / 1.04, 0.4)  # a * b = 1: the correction restores the reference exactly
DRIFT = (0.1, -0.05, 0.05, 0.12)  # pixels per scan step


def peaks_from_truth(cube, truth, *, noise=0.0, drop_central=False, seed=1, chunks=None):
    """Peaks Dataset of the simulator's disks lying wholly on the detector.

    Returns the peaks (positions converted from truth pixels to the cube's q units by
    the pinned format's builder) and the truth peak index of every slot (-1 for padding).
    """
    bqx, bqy = truth["bragg_qx"].values, truth["bragg_qy"].values
    inten = truth["bragg_intensity"].values
    keep = truth["bragg_inside"].values.copy()
    if drop_central:
        keep[..., 0] = False
    if noise:
        rng = np.random.default_rng(seed)
        bqx = bqx + rng.normal(0, noise, bqx.shape)
        bqy = bqy + rng.normal(0, noise, bqy.shape)
    order = np.argsort(np.where(keep, -inten, np.inf), axis=-1, kind="stable")
    kept = np.take_along_axis(keep, order, -1)
    npk = int(kept.sum(-1).max())
    order, kept = order[..., :npk], kept[..., :npk]

    def take(a):
        return np.where(kept, np.take_along_axis(a, order, -1), np.nan)

    qx, qy, ii = take(bqx), take(bqy), take(inten)
    count = kept.sum(-1)
    if chunks is not None:
        qx, qy, ii = (da.from_array(a, chunks=(chunks, -1, -1)) for a in (qx, qy, ii))
        count = da.from_array(count, chunks=(chunks, -1))
    peaks = _peaks_dataset(qx, qy, ii, count, cube, pixels=True, intensity_units="arbitrary")
    return peaks, np.where(kept, order, -1)


def scan_matrix(rotation, flip):
    return s4.scan_to_detector_matrix(rotation, flip)


@pytest.fixture(scope="module")
def sim():
    cube, truth = s4.simulate.crystal(
        (7, 8), (64, 64), g1=(9.0, 2.0), g2=(-3.0, 10.0), disk_radius=2.5,
        origin_drift=DRIFT, ellipse=ELLIPSE, scan_rotation=0.6, scan_flip=True,
        q_pixel_size=PIX, beam_energy=300e3)
    cube = set_orientation(cube, float(truth.scan_rotation), bool(truth.scan_flip))
    cube = correct_ellipse(cube, ELLIPSE)
    peaks, index = peaks_from_truth(cube, truth)
    return cube, truth, peaks, index


def expected_scan_frame(truth, index):
    """Reference lattice ``h g1 + k g2`` in the scan frame, 1/Å, for every slot."""
    h = truth["bragg_h"].values[np.maximum(index, 0)]
    k = truth["bragg_k"].values[np.maximum(index, 0)]
    g = (h[..., None] * truth["g1_reference"].values
         + k[..., None] * truth["g2_reference"].values) * PIX  # detector frame
    q = scan_matrix(float(truth.scan_rotation), bool(truth.scan_flip))
    scan = g @ q  # rows: (Q^T g)^T = g^T Q
    scan[index < 0] = np.nan
    return scan


# ============================================================ calibrated vectors
def test_calibrated_vectors_are_the_reference_lattice_in_the_scan_frame(sim):
    cube, truth, peaks, index = sim
    vec = calibrate_vectors(peaks)
    assert vec.attrs["stem4d_type"] == "bragg_vectors" and vec.attrs["frame"] == "scan"
    assert vec["g_rx"].attrs["units"] == "1/Å" and "qx" not in vec
    got = np.stack([vec["g_rx"].values, vec["g_ry"].values], -1)
    want = expected_scan_frame(truth, index)
    assert np.array_equal(np.isnan(got[..., 0]), index < 0)  # NaN padding kept
    ok = index >= 0
    length = np.linalg.norm(want[ok], axis=-1)
    err = np.linalg.norm(got[ok] - want[ok], axis=-1)
    gmin = np.linalg.norm(truth["g1_reference"].values) * PIX
    central = length == 0
    assert central.sum() == 7 * 8  # one central beam per position
    assert np.all(err[~central] / length[~central] < 1e-3)
    assert np.all(err[central] < 1e-3 * gmin)
    assert np.max(err[~central] / length[~central]) < 1e-9  # exact truth positions
    np.testing.assert_array_equal(vec["intensity"].values, peaks["intensity"].values)
    np.testing.assert_array_equal(vec["count"].values, peaks["count"].values)


def test_each_switch_changes_exactly_its_step(sim):
    cube, truth, peaks, index = sim
    full = calibrate_vectors(peaks)
    q = scan_matrix(float(truth.scan_rotation), bool(truth.scan_flip))
    a, b, th = (float(cube.coords[k]) for k in ("ellipse_a", "ellipse_b", "ellipse_theta"))
    rot = s4.rotation_matrix(th)
    t = rot @ np.diag([1 / a, 1 / b]) @ rot.T
    full_v = np.stack([full["g_rx"].values, full["g_ry"].values], -1)
    # rotate=False: detector frame, Q @ (scan frame)
    det = calibrate_vectors(peaks, rotate=False)
    assert det.attrs["frame"] == "detector" and "qx" in det and "g_rx" not in det
    det_v = np.stack([det["qx"].values, det["qy"].values], -1)
    np.testing.assert_allclose(det_v, full_v @ q.T, atol=1e-12)
    # ellipse=False: T^-1 of the detector-frame result
    no_ell = calibrate_vectors(peaks, ellipse=False, rotate=False)
    ne_v = np.stack([no_ell["qx"].values, no_ell["qy"].values], -1)
    np.testing.assert_allclose(ne_v, det_v @ np.linalg.inv(t).T, atol=1e-12)
    # and that is exactly (q - q0), in 1/Å
    raw = np.stack([peaks["qx"].values - cube.coords["qx0"].values[..., None],
                    peaks["qy"].values - cube.coords["qy0"].values[..., None]], -1)
    np.testing.assert_allclose(ne_v, raw, atol=1e-12)
    # center=False: the per-position origin T q0 is no longer subtracted
    no_c = calibrate_vectors(peaks, center=False)
    q0 = np.stack([cube.coords["qx0"].values, cube.coords["qy0"].values], -1)
    shift = (q0 @ t.T) @ q  # Q^T T q0 as rows
    nc_v = np.stack([no_c["g_rx"].values, no_c["g_ry"].values], -1)
    ok = index >= 0
    np.testing.assert_allclose((nc_v - full_v)[ok],
                               np.broadcast_to(shift[:, :, None], nc_v.shape)[ok], atol=1e-12)
    assert np.abs(shift).max() > 0.005  # the drift is there to be removed
    # center=False, rotate=False is stem4d.calibrate's corrected coordinates T q
    both = calibrate_vectors(peaks, center=False, rotate=False)
    np.testing.assert_allclose(
        np.stack([both["qx"].values, both["qy"].values], -1),
        np.stack([peaks["qx"].values, peaks["qy"].values], -1) @ t.T, atol=1e-12)
    # units: mrad is 1000 lambda times 1/Å; pixels divide by the step
    lam = s4.electron_wavelength(300e3)
    mrad = calibrate_vectors(peaks, units="mrad")
    assert mrad["g_rx"].attrs["units"] == "mrad"
    np.testing.assert_allclose(mrad["g_rx"].values, 1000 * lam * full["g_rx"].values)
    px = calibrate_vectors(peaks, units="pixels", rotate=False, ellipse=False)
    np.testing.assert_allclose(px["qx"].values, raw[..., 0] / PIX, atol=1e-9)
    # ellipse=None applies the stored ellipse; units=None keeps the peaks' units
    np.testing.assert_allclose(calibrate_vectors(peaks, ellipse=None)["g_rx"].values,
                               full["g_rx"].values)
    assert calibrate_vectors(peaks, units=None)["g_rx"].attrs["units"] == "1/Å"


def test_mrad_and_pixel_cubes_give_the_same_vectors(sim):
    cube, truth, peaks, index = sim
    full = calibrate_vectors(peaks)
    cube_mrad = s4.convert_q_units(cube, "mrad")
    peaks_mrad, _ = peaks_from_truth(cube_mrad, truth)
    assert peaks_mrad["qx"].attrs["units"] == "mrad"
    np.testing.assert_allclose(calibrate_vectors(peaks_mrad)["g_rx"].values,
                               full["g_rx"].values, rtol=1e-9, atol=1e-12)
    cube_px = s4.convert_q_units(cube, "pixels")
    peaks_px, _ = peaks_from_truth(cube_px, truth)
    with pytest.raises(ValueError, match="pixel_size"):
        calibrate_vectors(peaks_px)
    np.testing.assert_allclose(calibrate_vectors(peaks_px, pixel_size=PIX)["g_ry"].values,
                               full["g_ry"].values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        calibrate_vectors(peaks_px, pixel_size=(PIX, PIX), units="mrad")["g_rx"].values,
        calibrate_vectors(peaks, units="mrad")["g_rx"].values, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="pixel_size must be a positive"):
        calibrate_vectors(peaks_px, pixel_size=-1.0)
    with pytest.raises(ValueError, match="pixel_size is only for peaks in pixels"):
        calibrate_vectors(peaks, pixel_size=PIX)


def test_calibrate_vectors_bad_input(sim):
    cube, truth, peaks, index = sim
    with pytest.raises(ValueError, match="ellipse_a"):
        calibrate_vectors(peaks.drop_vars(["ellipse_a", "ellipse_b", "ellipse_theta"]))
    no_ell = calibrate_vectors(peaks.drop_vars(["ellipse_a", "ellipse_b", "ellipse_theta"]),
                               ellipse=None)  # None: only when stored
    assert no_ell.attrs["ellipse"] == 0
    with pytest.raises(ValueError, match="scan_rotation.*rotate=False"):
        calibrate_vectors(peaks.drop_vars(["scan_rotation", "scan_flip"]))
    with pytest.raises(ValueError, match="beam_energy"):
        calibrate_vectors(peaks.drop_vars("beam_energy"), units="mrad")
    no_origin = s4.set_origin(cube, 0.0, 0.0)
    p0, _ = peaks_from_truth(no_origin, truth)
    with pytest.raises(ValueError, match="center=True needs the origin"):
        calibrate_vectors(p0)
    with pytest.raises(ValueError, match="units must be one of"):
        calibrate_vectors(peaks, units="furlongs")
    with pytest.raises(TypeError, match="center must be True or False"):
        calibrate_vectors(peaks, center="yes")
    with pytest.raises(TypeError, match="peaks must be a Bragg peaks"):
        calibrate_vectors(peaks["qx"])
    with pytest.raises(ValueError, match="calibrated vectors"):
        calibrate_vectors(calibrate_vectors(peaks, rotate=False))


def test_calibrate_vectors_dask_is_lazy(sim):
    cube, truth, peaks, index = sim
    lazy, _ = peaks_from_truth(cube, truth, chunks=3)
    out = calibrate_vectors(lazy)
    assert isinstance(out["g_rx"].data, da.Array)
    np.testing.assert_allclose(out["g_rx"].values, calibrate_vectors(peaks)["g_rx"].values)


# ============================================================ Bragg vector map
def _single(x, y, intensity, cube):
    """Peaks of a 1x1 scan with the given peaks (q units)."""
    one = cube.isel(rx=[0], ry=[0])
    arr = np.array([[list(x)]], float), np.array([[list(y)]], float)
    return _peaks_dataset(arr[0], arr[1], np.array([[list(intensity)]], float),
                          np.array([[len(x)]]), one, pixels=True)


def test_bvm_bilinear_deposition_and_sampling(sim):
    cube, truth, peaks, index = sim
    single = _single([20.3, 40.0], [31.75, 10.5], [5.0, 2.0], cube)
    bvm = bragg_vector_map(single)
    assert bvm.dims == ("qx", "qy") and bvm.shape == (64, 64)
    np.testing.assert_allclose(bvm.coords["qx"].values, cube.coords["qx"].values)
    v = bvm.values
    np.testing.assert_allclose(v[20:22, 31:33], 5 * np.outer([0.7, 0.3], [0.25, 0.75]))
    np.testing.assert_allclose(v[40, 10:12], [1.0, 1.0])
    assert v.sum() == pytest.approx(7.0)
    fine = bragg_vector_map(single, sampling=2)
    assert fine.shape == (128, 128) and fine.attrs["sampling"] == 2
    step = cube.coords["qx"].values[1] - cube.coords["qx"].values[0]
    assert fine.coords["qx"].attrs["step"] == pytest.approx(step / 2)
    np.testing.assert_allclose(fine.coords["qx"].values[::2], cube.coords["qx"].values)
    # 20.3 px -> fine index 40.6: bins 40, 41 get 0.4, 0.6; 31.75 -> 63.5: 0.5, 0.5
    np.testing.assert_allclose(fine.values[40:42, 63:65], 5 * np.outer([0.4, 0.6], [0.5, 0.5]))
    assert fine.values.sum() == pytest.approx(7.0)


def test_bvm_total_and_peak_positions(sim):
    cube, truth, peaks, index = sim
    bvm = bragg_vector_map(peaks)
    assert bvm.values.sum() == pytest.approx(float(peaks["intensity"].sum()), rel=1e-12)
    assert bvm.coords["qx"].attrs["units"] == "1/Å"
    assert float(bvm.coords["beam_energy"]) == 300e3
    # every peak of one position is recovered to sub-bin accuracy by the 2x2 centroid
    one = peaks.isel(rx=[2], ry=[5])
    for sampling in (1, 2, 3):
        m = bragg_vector_map(one, sampling=sampling).values
        qxc = bragg_vector_map(one, sampling=sampling).coords["qx"].values
        qyc = bragg_vector_map(one, sampling=sampling).coords["qy"].values
        for x, y in zip(one["qx"].values.ravel(), one["qy"].values.ravel(), strict=True):
            if not np.isfinite(x):
                continue
            i = int(np.floor((x - qxc[0]) / (qxc[1] - qxc[0])))
            j = int(np.floor((y - qyc[0]) / (qyc[1] - qyc[0])))
            w = m[i:i + 2, j:j + 2]
            cx = (w.sum(1) * qxc[i:i + 2]).sum() / w.sum()
            cy = (w.sum(0) * qyc[j:j + 2]).sum() / w.sum()
            assert abs(cx - x) < 1e-9 and abs(cy - y) < 1e-9


def test_bvm_weights_masks_and_calibrated(sim):
    cube, truth, peaks, index = sim
    base = bragg_vector_map(peaks)
    single = bragg_vector_map(peaks.isel(rx=[3], ry=[4]))
    w = np.ones((7, 8))
    w[3, 4] = 3.0
    np.testing.assert_allclose(bragg_vector_map(peaks, weights=w).values,
                               base.values + 2 * single.values, atol=1e-12)
    mask_r = np.zeros((7, 8), bool)
    mask_r[3, 4] = True
    np.testing.assert_allclose(bragg_vector_map(peaks, mask_r=mask_r).values, single.values,
                               atol=1e-12)
    # Q mask: the half of the detector beyond a pixel boundary, as array and as function
    qx = cube.coords["qx"].values
    limit = 0.5 * (qx[40] + qx[41])
    arr = xr.DataArray(np.broadcast_to(qx[:, None] > limit, (64, 64)), dims=("qx", "qy"),
                       coords={"qx": cube.coords["qx"], "qy": cube.coords["qy"]})
    by_array = bragg_vector_map(peaks, mask_q=arr)
    by_func = bragg_vector_map(peaks, mask_q=lambda x, y: x > limit)
    np.testing.assert_allclose(by_array.values, by_func.values, atol=1e-12)
    kept = float(peaks["intensity"].where(peaks["qx"] > limit).sum())
    assert 0 < kept < float(peaks["intensity"].sum())
    assert by_array.values.sum() == pytest.approx(kept, rel=1e-12)
    # calibrated: every central beam lands at q = 0 (pixel 31.5, 31.5: the four bins
    # around it share it equally) whatever the drift
    cal = bragg_vector_map(peaks, calibrated=True)
    central = float(truth["bragg_intensity"].isel(peak=0).sum())
    assert float(truth["qx0"].mean()) == pytest.approx(31.5)
    np.testing.assert_allclose(cal.values[31:33, 31:33], np.full((2, 2), central / 4))
    assert abs(base.values[31:33, 31:33] - central / 4).max() > 0.01 * central  # drift smears
    assert cal.attrs["calibrated"] == 1


def test_bvm_dask_is_lazy_and_equal(sim):
    cube, truth, peaks, index = sim
    lazy, _ = peaks_from_truth(cube, truth, chunks=3)
    w = np.linspace(0.5, 1.5, 56).reshape(7, 8)
    out = bragg_vector_map(lazy, sampling=2, weights=w, calibrated=True,
                           mask_q=lambda x, y: np.hypot(x, y) < 0.3)
    assert isinstance(out.data, da.Array)
    want = bragg_vector_map(peaks, sampling=2, weights=w, calibrated=True,
                            mask_q=lambda x, y: np.hypot(x, y) < 0.3)
    np.testing.assert_allclose(out.values, want.values, atol=1e-12)


def test_bvm_bad_input(sim):
    cube, truth, peaks, index = sim
    with pytest.raises(ValueError, match="sampling must be a positive"):
        bragg_vector_map(peaks, sampling=0)
    with pytest.raises(ValueError, match=r"weights must have the scan shape \(rx, ry\)"):
        bragg_vector_map(peaks, weights=np.ones((3, 3)))
    with pytest.raises(ValueError, match="weights must be finite"):
        bragg_vector_map(peaks, weights=np.full((7, 8), np.nan))
    with pytest.raises(TypeError, match="mask_r must be a bool"):
        bragg_vector_map(peaks, mask_r=np.ones((7, 8)))
    with pytest.raises(ValueError, match="mask_q must be a .* detector shape"):
        bragg_vector_map(peaks, mask_q=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="raw peaks"):
        bragg_vector_map(calibrate_vectors(peaks))
    p0, _ = peaks_from_truth(s4.set_origin(cube, 0.0, 0.0), truth)
    with pytest.raises(ValueError, match="calibrated=True needs the origin"):
        bragg_vector_map(p0, calibrated=True)


# ============================================================ masks and virtual images
def test_mask_peaks_removes_and_resorts(sim):
    cube, truth, peaks, index = sim
    # remove the central beam: a circle of 3 px about the mean origin (drift < 1 px)
    out = mask_peaks(peaks, mask_q=lambda x, y: np.hypot(x, y) > 3 * PIX)
    np.testing.assert_array_equal(out["count"].values, peaks["count"].values - 1)
    inten = out["intensity"].values
    assert np.all(np.diff(np.nan_to_num(inten, nan=-1), axis=-1) <= 0)  # still sorted
    assert np.all(np.isnan(inten[..., -1]))
    np.testing.assert_allclose(np.nansum(inten, -1),
                               np.nansum(peaks["intensity"].values, -1)
                               - truth["bragg_intensity"].values[..., 0])
    keep = np.ones((7, 8), bool)
    keep[0, :] = False
    out_r = mask_peaks(peaks, mask_r=keep)
    assert np.all(out_r["count"].values[0] == 0) and np.all(np.isnan(out_r["qx"].values[0]))
    np.testing.assert_array_equal(out_r["qx"].values[1:], peaks["qx"].values[1:])
    lazy, _ = peaks_from_truth(cube, truth, chunks=3)
    out_l = mask_peaks(lazy, mask_q=lambda x, y: np.hypot(x, y) > 3 * PIX, mask_r=keep)
    assert isinstance(out_l["qx"].data, da.Array)
    want = mask_peaks(peaks, mask_q=lambda x, y: np.hypot(x, y) > 3 * PIX, mask_r=keep)
    xr.testing.assert_allclose(out_l.compute(), want)


def test_mask_peaks_moves_every_per_peak_variable_with_its_peak(sim):
    cube, truth, peaks, index = sim
    # per-peak variables that differ from peak to peak: a flag (int8, -1 padding like
    # find_bragg_disks' refinement_flag), the truth index (float, NaN padding), a bool
    flag = np.where(index >= 0, index % 3, -1).astype(np.int8)
    tagged = peaks.assign(
        refinement_flag=(("rx", "ry", "peak"), flag),
        truth_index=(("rx", "ry", "peak"), np.where(index >= 0, index, np.nan)),
        odd=(("ry", "rx", "peak"), (index % 2 == 1).transpose(1, 0, 2)))
    # keep the peaks beyond 0.25 1/Å: the central beam and the first shells go
    keep_q = lambda x, y: np.hypot(x, y) > 0.25  # noqa: E731
    out = mask_peaks(tagged, mask_q=keep_q)
    qx, qy = out["qx"].values, out["qy"].values
    kept = np.isfinite(qx)
    removed = np.hypot(peaks["qx"].values, peaks["qy"].values) <= 0.25
    np.testing.assert_array_equal(out["count"].values,
                                  peaks["count"].values - removed.sum(-1))
    assert removed.sum() > 3 * 7 * 8  # more than the central beam: a real reordering
    np.testing.assert_array_equal(kept.sum(-1), out["count"].values)
    assert out["refinement_flag"].dtype == np.int8
    np.testing.assert_array_equal(out["refinement_flag"].values[~kept], -1)
    assert int(((out["refinement_flag"] != -1) & out["qx"].isnull()).sum()) == 0
    assert np.isnan(out["truth_index"].values[~kept]).all()
    assert out["odd"].dims == ("rx", "ry", "peak") and not out["odd"].values[~kept].any()
    # each kept peak carries the values it had before masking (matched by qx, qy)
    before_qx, before_qy = peaks["qx"].values, peaks["qy"].values
    for i, j, p in zip(*np.nonzero(kept), strict=True):
        src = np.flatnonzero((before_qx[i, j] == qx[i, j, p]) & (before_qy[i, j] == qy[i, j, p]))
        assert src.size == 1
        assert out["refinement_flag"].values[i, j, p] == flag[i, j, src[0]]
        assert out["truth_index"].values[i, j, p] == index[i, j, src[0]]
        assert out["odd"].values[i, j, p] == (index[i, j, src[0]] % 2 == 1)
    # and the truth index points at the truth disk at that position (1/Å -> pixels)
    ti = np.where(kept, out["truth_index"].values, 0).astype(int)
    want_qx = np.take_along_axis(truth["bragg_qx"].values, ti, -1)
    got_qx = (qx - float(peaks["detector_qx"][0])) / PIX
    np.testing.assert_allclose(got_qx[kept], want_qx[kept], atol=1e-4)
    # dask: lazy, and the same values
    lazy = tagged.chunk({"rx": 3})
    out_l = mask_peaks(lazy, mask_q=keep_q)
    assert isinstance(out_l["refinement_flag"].data, da.Array)
    xr.testing.assert_identical(out_l.compute(), out)


def test_vector_virtual_image_circle_and_annulus(sim):
    cube, truth, peaks, index = sim
    bf = vector_virtual_image(peaks, radius=3 * PIX)
    assert bf.dims == ("rx", "ry") and "qx0" in bf.coords
    np.testing.assert_allclose(bf.values, truth["bragg_intensity"].values[..., 0])
    # annulus: the peaks whose distance to their own origin lies in the ring
    dist = np.hypot(truth["bragg_qx"] - truth["qx0"], truth["bragg_qy"] - truth["qy0"]) * PIX
    ring = (0.15, 0.25)
    sel = (dist >= ring[0]) & (dist <= ring[1]) & truth["bragg_inside"]
    want = truth["bragg_intensity"].where(sel, 0).sum("peak").values
    df = vector_virtual_image(peaks, radii=ring)
    np.testing.assert_allclose(df.values, want)
    assert want.min() > 0
    # from calibrated vectors (scan frame, 1/Å): lengths are rotation invariant, but the
    # ellipse is corrected, so compare with the reference lattice lengths
    vec = calibrate_vectors(peaks)
    ref = np.linalg.norm(expected_scan_frame(truth, index), axis=-1)
    sel_ref = (ref >= ring[0]) & (ref <= ring[1])
    np.testing.assert_allclose(vector_virtual_image(vec, radii=ring).values,
                               np.where(sel_ref, peaks["intensity"].values, 0).sum(-1))
    lazy, _ = peaks_from_truth(cube, truth, chunks=3)
    out = vector_virtual_image(lazy, radii=ring)
    assert isinstance(out.data, da.Array)
    np.testing.assert_allclose(out.values, want)
    with pytest.raises(ValueError, match="either radius"):
        vector_virtual_image(peaks, radius=1.0, radii=(0, 1))
    with pytest.raises(ValueError, match="radii must satisfy"):
        vector_virtual_image(peaks, radii=(0.3, 0.1))


# ============================================================ origin from vectors
@pytest.fixture(scope="module")
def no_origin(sim):
    """The cube without its origin (q = 0 the first pixel) and noisy truth peaks."""
    cube, truth, _, _ = sim
    bare = s4.set_origin(cube, 0.0, 0.0)
    peaks, _ = peaks_from_truth(bare, truth, noise=0.01)
    return bare, truth, peaks


@pytest.mark.parametrize("method", ["nearest", "brightest", "weighted"])
def test_origin_from_vectors_recovers_truth(no_origin, method):
    bare, truth, peaks = no_origin
    ds = origin_from_vectors(peaks, method)  # guess: maximum of the Bragg vector map
    assert set(ds.data_vars) == {"qx0", "qy0", "quality"}
    assert ds["qx0"].attrs["units"] == "pixels" and ds["qx0"].dims == ("rx", "ry")
    err = np.hypot(ds["qx0"] - truth["qx0"], ds["qy0"] - truth["qy0"]).values
    assert np.sqrt(np.mean(err**2)) < 0.05 and err.max() < 0.05
    np.testing.assert_allclose(ds["quality"].values, truth["bragg_intensity"].values[..., 0])
    guessed = origin_from_vectors(peaks, method, center_guess=(31.5, 31.5), max_distance=4.0)
    np.testing.assert_allclose(guessed["qx0"].values, ds["qx0"].values)


def test_origin_from_vectors_beamstop_conjugate_pairs(sim, no_origin):
    cube, truth, _, _ = sim
    bare = no_origin[0]
    peaks, _ = peaks_from_truth(bare, truth, noise=0.01, drop_central=True)
    # without the central beam the nearest peak is a Bragg disk
    wrong = origin_from_vectors(peaks, "nearest", center_guess=(31.5, 31.5))
    assert np.hypot(wrong["qx0"] - truth["qx0"], wrong["qy0"] - truth["qy0"]).min() > 5
    ds = origin_from_vectors(peaks, "beamstop", center_guess=(31.5, 31.5))
    err = np.hypot(ds["qx0"] - truth["qx0"], ds["qy0"] - truth["qy0"]).values
    assert err.max() < 0.1 and np.sqrt(np.mean(err**2)) < 0.05
    assert ds["quality"].min() >= 4  # pairs found everywhere
    # a guess 2 px off and an annulus still converge
    off = origin_from_vectors(peaks, "beamstop", center_guess=(33.0, 30.5), radii=(5, 25))
    err = np.hypot(off["qx0"] - truth["qx0"], off["qy0"] - truth["qy0"]).values
    assert err.max() < 0.1
    # a position with a single peak has no pair: NaN
    lone = peaks.copy(deep=True)
    lone["qx"][0, 0, 1:] = np.nan
    lone["qy"][0, 0, 1:] = np.nan
    lone["intensity"][0, 0, 1:] = np.nan
    out = origin_from_vectors(lone, "beamstop", center_guess=(31.5, 31.5))
    assert np.isnan(out["qx0"][0, 0]) and out["quality"][0, 0] == 0
    assert np.isfinite(out["qx0"][0, 1])
    lazy = peaks.chunk({"rx": 3})
    out_l = origin_from_vectors(lazy, "beamstop", center_guess=(31.5, 31.5))
    assert isinstance(out_l["qx0"].data, da.Array)
    np.testing.assert_allclose(out_l["qx0"].values, ds["qx0"].values)


def test_origin_from_vectors_beamstop_needs_a_guess(sim, no_origin):
    cube, truth, _, _ = sim
    bare = no_origin[0]
    blocked, _ = peaks_from_truth(bare, truth, noise=0.01, drop_central=True)
    # no guess, no origin on the peaks: the map's maximum would be a diffracted spot
    with pytest.raises(ValueError, match=r"method='beamstop' needs a guess.*center_guess"):
        origin_from_vectors(blocked, "beamstop")
    # the per-position origin stored on the peaks is a guess
    carried, _ = peaks_from_truth(cube, truth, noise=0.01, drop_central=True)
    ds = origin_from_vectors(carried, "beamstop")
    err = np.hypot(ds["qx0"] - truth["qx0"], ds["qy0"] - truth["qy0"]).values
    assert err.max() < 0.1
    # so is a mean origin alone, 1 px off the true mean (31.5, 31.5)
    mean_only, _ = peaks_from_truth(s4.set_origin(cube, 32.5, 30.7), truth, noise=0.01,
                                    drop_central=True)
    assert "qx0" not in mean_only.coords
    ds = origin_from_vectors(mean_only, "beamstop")
    err = np.hypot(ds["qx0"] - truth["qx0"], ds["qy0"] - truth["qy0"]).values
    assert err.max() < 0.1 and ds["quality"].min() >= 4


def test_origin_from_vectors_fit_and_apply(sim, no_origin):
    cube, truth, _, _ = sim
    bare, _, peaks = no_origin
    measured = origin_from_vectors(peaks, "nearest")
    fit = s4.fit_origin(measured, "plane")
    err = np.hypot(fit["qx0"] - truth["qx0"], fit["qy0"] - truth["qy0"]).values
    assert err.max() < 0.02  # the drift is planar: the fit averages the noise down
    applied = s4.apply_origin(bare, fit)
    ox, oy = s4.get_origin(applied)
    np.testing.assert_allclose(ox.values, truth["qx0"].values, atol=0.02)
    np.testing.assert_allclose(oy.values, truth["qy0"].values, atol=0.02)
    # peaks carrying a per-position origin use it as the guess
    peaks2, _ = peaks_from_truth(cube, truth, noise=0.01)
    again = origin_from_vectors(peaks2, "weighted")
    np.testing.assert_allclose(again["qx0"].values, measured["qx0"].values, atol=1e-9)
    lazy = origin_from_vectors(peaks.chunk({"rx": 2, "ry": 4}), "weighted")
    assert isinstance(lazy["qx0"].data, da.Array)
    np.testing.assert_allclose(lazy["qx0"].values, measured["qx0"].values)


def test_origin_from_vectors_bad_input(no_origin):
    bare, truth, peaks = no_origin
    with pytest.raises(ValueError, match="method must be one of"):
        origin_from_vectors(peaks, "com")
    with pytest.raises(ValueError, match="center_guess must be a pair"):
        origin_from_vectors(peaks, center_guess=3.0)
    with pytest.raises(ValueError, match=r"center_guess\[0\] must have the scan shape"):
        origin_from_vectors(peaks, center_guess=(np.zeros((2, 2)), 3.0))
    with pytest.raises(ValueError, match="max_distance must be a positive"):
        origin_from_vectors(peaks, max_distance=-1)
    with pytest.raises(ValueError, match="iterations must be an integer"):
        origin_from_vectors(peaks, "beamstop", iterations=0)
    with pytest.raises(ValueError, match="radii must satisfy"):
        origin_from_vectors(peaks, "beamstop", radii=(5, 2))
    empty = peaks.isel(peak=slice(0, 0))  # no peak anywhere
    for method in ("nearest", "beamstop"):
        out = origin_from_vectors(empty, method, center_guess=(31.5, 31.5))
        assert np.all(np.isnan(out["qx0"].values))
    assert float(bragg_vector_map(empty).sum()) == 0.0
    far = origin_from_vectors(peaks, center_guess=(0.0, 0.0), max_distance=1.0)
    assert np.all(np.isnan(far["qx0"].values))  # nothing within reach: NaN


# ============================================================ files and plots
@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_peaks_and_vectors_round_trip(sim, tmp_path, suffix):
    cube, truth, peaks, index = sim
    peaks = peaks.assign_attrs(detection={"subpixel": "multicorr", "upsample": 16})
    # everything, the type marker included, must come back identical
    for name, obj in (("peaks", peaks), ("vectors", calibrate_vectors(peaks))):
        for where, saved in (("dataset", obj), ("tree", xr.DataTree.from_dict({name: obj}))):
            path = tmp_path / f"{name}_{where}{suffix}"
            s4.save(saved, path)
            back = s4.open(path)
            back = (back if where == "dataset" else back[name].to_dataset()).load()
            xr.testing.assert_identical(back, obj)
            assert back.coords["scan_flip"].dtype == bool
            assert back.coords["detector_qx"].attrs == obj.coords["detector_qx"].attrs
            assert back.coords["ellipse_theta"].attrs == {"units": "rad"}
            np.testing.assert_array_equal(np.isnan(back["intensity"].values),
                                          index < 0)  # the NaN padding
    back = s4.open(tmp_path / f"peaks_dataset{suffix}")  # lazy
    assert isinstance(back["qx"].data, da.Array)
    np.testing.assert_allclose(calibrate_vectors(back)["g_rx"].values,
                               calibrate_vectors(peaks)["g_rx"].values)
    vec = s4.open(tmp_path / f"vectors_dataset{suffix}")
    with pytest.raises(ValueError, match="calibrated vectors"):  # still known as vectors
        bragg_vector_map(vec)


def test_type_marker_round_trip(sim, tmp_path):
    cube, truth, peaks, index = sim
    s4.save(xr.DataTree.from_dict({"peaks": peaks}), tmp_path / "tree.nc")
    assert s4.open(tmp_path / "tree.nc")["peaks"].attrs["stem4d_type"] == "bragg_peaks"
    s4.save(peaks, tmp_path / "peaks.nc")
    assert s4.open(tmp_path / "peaks.nc").attrs["stem4d_type"] == "bragg_peaks"


def test_show_bragg_vector_map(sim):
    import matplotlib.pyplot as plt

    from stem4d.plot.bragg_vectors import show_bragg_vector_map

    cube, truth, peaks, index = sim
    bvm = bragg_vector_map(peaks, sampling=2)
    fig = show_bragg_vector_map(bvm)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "qy (1/Å)" and ax.get_ylabel() == "qx (1/Å)"
    assert "sampling 2" in ax.get_title()
    shown = ax.images[0].get_array()
    assert shown.shape == (128, 128) and float(shown.max()) == pytest.approx(np.log10(1e4 + 1))
    fig2 = show_bragg_vector_map(bvm, log=False, title="linear")
    assert fig2.axes[0].get_title() == "linear"
    plt.close("all")
    with pytest.raises(TypeError, match="bvm must be a"):
        show_bragg_vector_map(peaks)
