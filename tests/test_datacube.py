"""The datacube: physics constants, calibrations and axis operations."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import stem4d as s4

# CODATA 2018 values from CONVENTIONS.md: kV -> (wavelength Å, sigma mrad/(V Å))
TABLE = {30: (0.069791, 1.5433), 60: (0.048661, 1.1357), 80: (0.041757, 1.0087),
         100: (0.037014, 0.9244), 120: (0.033492, 0.8638), 200: (0.025079, 0.7288),
         300: (0.019687, 0.6526)}


@pytest.mark.parametrize("kv", sorted(TABLE))
def test_wavelength_and_interaction_parameter(kv):
    lam, sigma = TABLE[kv]
    assert s4.electron_wavelength(kv * 1e3) == pytest.approx(lam, abs=1e-6)
    assert 1000 * s4.interaction_parameter(kv * 1e3) == pytest.approx(sigma, abs=1e-4)
    # the handbook formula of CONVENTIONS.md
    assert s4.electron_wavelength(kv * 1e3) == pytest.approx(
        12.2643 / np.sqrt(kv * 1e3 * (1 + 0.978476e-6 * kv * 1e3)), rel=1e-5)


@pytest.fixture
def cube() -> xr.DataArray:
    data = np.arange(4 * 5 * 6 * 7, dtype="float32").reshape(4, 5, 6, 7)
    return s4.datacube(data, r_step=(0.5, 0.25), r_units="nm", q_step=0.02,
                       q_units="A^-1", beam_energy=300e3, convergence_semiangle=20.0,
                       origin=(2.5, 3.0))


def test_datacube_coordinates_are_the_calibration(cube):
    assert cube.dims == ("rx", "ry", "qx", "qy")
    np.testing.assert_allclose(cube.rx.values, [0, 5, 10, 15])  # nm -> Å
    np.testing.assert_allclose(cube.ry.values, np.arange(5) * 2.5)
    assert cube.rx.attrs["units"] == "Å" and cube.qx.attrs["units"] == "1/Å"
    np.testing.assert_allclose(cube.qx.values, (np.arange(6) - 2.5) * 0.02)
    np.testing.assert_allclose(cube.qy.values, (np.arange(7) - 3.0) * 0.02)
    assert s4.get_origin(cube) == pytest.approx((2.5, 3.0))
    assert float(cube.beam_energy) == 300e3 and cube.beam_energy.attrs["units"] == "eV"
    assert cube.convergence_semiangle.attrs["units"] == "mrad"
    # scalar calibrations survive arithmetic and reductions
    assert "beam_energy" in (cube * 2).coords and "beam_energy" in cube.mean("rx").coords
    assert (cube * 2).qx.attrs["units"] == "1/Å"
    lazy = s4.datacube(da.from_array(cube.values, chunks=(2, 5, 6, 7)), q_step=0.1)
    assert isinstance(lazy.data, da.Array)


def test_unit_conversions_use_the_relativistic_wavelength(cube):
    lam = s4.electron_wavelength(300e3)
    mrad = s4.convert_q_units(cube, "mrad")
    assert mrad.qx.attrs["units"] == "mrad"
    np.testing.assert_allclose(mrad.qx.values, cube.qx.values * 1000 * lam)
    back = s4.convert_q_units(mrad, "1/Å")
    np.testing.assert_allclose(back.qx.values, cube.qx.values)
    pixels = s4.convert_q_units(cube, "pixels")
    np.testing.assert_allclose(pixels.qx.values, np.arange(6) - 2.5)
    with pytest.raises(ValueError, match="beam energy"):
        s4.convert_q_units(cube.drop_vars("beam_energy"), "mrad")
    with pytest.raises(ValueError, match="pixel size is unknown"):
        s4.convert_q_units(pixels, "1/Å")


def test_set_calibrations_return_new_objects(cube):
    before = cube.copy(deep=True)
    finer = s4.set_q_calibration(cube, 0.01, "1/nm")  # 0.001 1/Å
    np.testing.assert_allclose(finer.qx.values, (np.arange(6) - 2.5) * 0.001)
    r = s4.set_r_calibration(cube, 1.5, "Å")
    np.testing.assert_allclose(r.ry.values, np.arange(5) * 1.5)
    xr.testing.assert_identical(cube, before)  # nothing mutated
    ox = np.linspace(2, 3, 20).reshape(4, 5)
    oy = np.linspace(3.5, 2.5, 20).reshape(4, 5)
    per = s4.set_origin(cube, ox, oy)
    assert per.qx0.dims == ("rx", "ry") and per.qx0.attrs["units"] == "1/Å"
    np.testing.assert_allclose(per.qx.values, (np.arange(6) - ox.mean()) * 0.02)
    np.testing.assert_allclose(per.qx0.values, (ox - ox.mean()) * 0.02)
    got_x, got_y = s4.get_origin(per)
    np.testing.assert_allclose(got_x.values, ox)
    np.testing.assert_allclose(got_y.values, oy)
    # rescaling keeps the per-position origin in pixels
    np.testing.assert_allclose(s4.get_origin(s4.set_q_calibration(per, 0.5, "mrad"))[0].values, ox)
    with pytest.raises(ValueError, match=r"qx0 must have the scan shape \(4, 5\)"):
        s4.set_origin(cube, np.ones((3, 3)), np.ones((4, 5)))


def test_reshape_scan_and_axis_operations(cube):
    flat = cube.values.reshape(20, 6, 7)
    again = s4.reshape_scan(flat, (4, 5), q_step=0.02, q_units="1/Å")
    np.testing.assert_array_equal(again.values, cube.values)
    with pytest.raises(ValueError, match="must multiply to the number of patterns 20"):
        s4.reshape_scan(flat, (3, 5))
    swapped = s4.swap_rq(cube)
    assert swapped.shape == (6, 7, 4, 5)
    np.testing.assert_array_equal(swapped.values, cube.values.transpose(2, 3, 0, 1))
    np.testing.assert_allclose(swapped.rx.values[1] - swapped.rx.values[0], 5.0)
    tr = s4.transpose_r(cube)
    np.testing.assert_array_equal(tr.values, cube.values.transpose(1, 0, 2, 3))
    np.testing.assert_allclose(tr.rx.values[:2], [0, 2.5])
    tq = s4.transpose_q(cube)
    np.testing.assert_array_equal(tq.values, cube.values.transpose(0, 1, 3, 2))
    assert s4.get_origin(tq) == pytest.approx((3.0, 2.5))
    fq = s4.flip_q(cube, "qx")
    np.testing.assert_array_equal(fq.values, cube.values[:, :, ::-1])
    assert s4.get_origin(fq) == pytest.approx((5 - 2.5, 3.0))
    assert np.all(np.diff(fq.qx.values) > 0)
    fr = s4.flip_r(cube, "ry")
    np.testing.assert_array_equal(fr.values, cube.values[:, ::-1])
    np.testing.assert_allclose(fr.ry.values, cube.ry.values)
    # a flip twice is the identity, calibration included
    xr.testing.assert_allclose(s4.flip_q(fq, "qx"), cube)


def test_per_position_origin_follows_flips_and_transposes(cube):
    ox = np.linspace(2, 3, 20).reshape(4, 5)
    oy = np.linspace(3.5, 2.5, 20).reshape(4, 5)
    per = s4.set_origin(cube, ox, oy)
    fx, fy = s4.get_origin(s4.flip_q(per, "qy"))
    np.testing.assert_allclose(fx.values, ox)
    np.testing.assert_allclose(fy.values, 6 - oy)
    tx, ty = s4.get_origin(s4.transpose_r(per))
    np.testing.assert_allclose(tx.values, ox.T)


def test_bad_input(cube):
    with pytest.raises(ValueError, match="data must be 4-D"):
        s4.datacube(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="q_units must be one of"):
        s4.datacube(np.zeros((2, 2, 3, 3)), q_units="furlongs")
    with pytest.raises(ValueError, match="r_step must be positive"):
        s4.datacube(np.zeros((2, 2, 3, 3)), r_step=-1)
    with pytest.raises(ValueError, match="beam_energy is in eV"):
        s4.datacube(np.zeros((2, 2, 3, 3)), beam_energy=300)
    with pytest.raises(TypeError, match="data must hold numbers"):
        s4.datacube(np.full((2, 2, 3, 3), "a"))
    with pytest.raises(ValueError, match="axis must be 'qx' or 'qy'"):
        s4.flip_q(cube, "rx")
    with pytest.raises(ValueError, match="qx0 must be finite"):
        s4.set_origin(cube, np.nan, 1.0)


def _q_of(obj: xr.DataArray) -> np.ndarray:
    return s4.simulate.scan_to_detector_matrix(float(obj.scan_rotation), bool(obj.scan_flip))


@pytest.mark.parametrize("flip", [False, True])
def test_axis_operations_keep_the_scan_to_detector_orientation(cube, flip):
    """A physical direction keeps its detector direction through every axis operation.

    For a scan-frame vector v, the cube maps it to Q v on the detector. After mirroring
    the scan along ry, the same physical direction has scan components (vx, -vy); after
    mirroring the detector along qy, its detector image is mirrored; and so on.
    """
    oriented = cube.assign_coords(
        scan_rotation=xr.Variable((), 0.4, attrs={"units": "rad"}),
        scan_flip=xr.Variable((), flip))
    q = _q_of(oriented)
    v = np.array([0.3, 1.1])
    mirror_x, mirror_y, swap = np.diag([-1.0, 1]), np.diag([1.0, -1]), np.array([[0, 1.0], [1, 0]])
    np.testing.assert_allclose(_q_of(s4.flip_r(oriented, "ry")) @ (mirror_y @ v), q @ v)
    np.testing.assert_allclose(_q_of(s4.flip_r(oriented, "rx")) @ (mirror_x @ v), q @ v)
    np.testing.assert_allclose(_q_of(s4.transpose_r(oriented)) @ (swap @ v), q @ v)
    np.testing.assert_allclose(_q_of(s4.flip_q(oriented, "qy")) @ v, mirror_y @ q @ v)
    np.testing.assert_allclose(_q_of(s4.flip_q(oriented, "qx")) @ v, mirror_x @ q @ v)
    np.testing.assert_allclose(_q_of(s4.transpose_q(oriented)) @ v, swap @ q @ v)
    assert bool(s4.flip_q(oriented, "qx").scan_flip) is (not flip)  # a mirror flips hands
    assert bool(s4.transpose_r(oriented).scan_flip) is (not flip)
    assert "scan_rotation" not in s4.swap_rq(oriented).coords


def test_transposes_keep_calibrated_positions(cube):
    cropped = s4.crop_r(cube, (1, 4), (0, 5))  # rx = 5, 10, 15 Å
    tr = s4.transpose_r(cropped)
    np.testing.assert_allclose(tr.ry.values, cropped.rx.values)
    np.testing.assert_allclose(tr.rx.values, cropped.ry.values)
    stamps = cube.assign_coords(time=("ry", np.arange(5.0)))
    assert s4.transpose_r(stamps).time.dims == ("rx",)
    ox = np.linspace(2, 3, 20).reshape(4, 5)
    oy = np.linspace(3.5, 2.5, 20).reshape(4, 5)
    per = s4.set_origin(cube, ox, oy)
    tq_x, tq_y = s4.get_origin(s4.transpose_q(per))
    np.testing.assert_allclose(tq_x.values, oy)
    np.testing.assert_allclose(tq_y.values, ox)
    fr_x, _ = s4.get_origin(s4.flip_r(per, "rx"))
    np.testing.assert_allclose(fr_x.values, ox[::-1])
    assert "qx0" not in s4.swap_rq(per).coords


def test_single_element_axes_keep_their_step(cube):
    one = cube.isel(rx=[2])
    assert s4.r_pixel_size(one)[0] == pytest.approx(5.0)
    assert s4.r_pixel_size(s4.transpose_r(cube.isel(ry=[0])))[0] == pytest.approx(2.5)
    assert s4.q_pixel_size(cube.isel(qx=[1]))[0] == pytest.approx(0.02)


def test_datacube_refuses_a_dataarray_and_checks_units(cube):
    with pytest.raises(TypeError, match="data is already a DataArray"):
        s4.datacube(cube)
    odd = cube.copy()
    odd.coords["qx"].attrs["units"] = "furlongs"
    with pytest.raises(ValueError, match=r"has units 'furlongs': expected one of"):
        s4.validate_cube(odd)
    with pytest.raises(ValueError, match=r"r_step must be a number or a pair"):
        s4.datacube(np.zeros((2, 2, 3, 3)), r_step="a")
    nan = cube.copy(data=np.full(cube.shape, np.nan, dtype="float32"))
    with pytest.raises(ValueError, match="entirely NaN"):
        s4.virtual_diffraction(nan, "mean")


@pytest.mark.parametrize("dim", ["rx", "ry", "qx", "qy"])
def test_validate_cube_rejects_descending_coordinates(cube, dim):
    """A plain xarray reversal gives descending coordinates; stem4d's flips do not."""
    reversed_ = cube.isel({dim: slice(None, None, -1)})
    op = "flip_r" if dim in ("rx", "ry") else "flip_q"
    with pytest.raises(ValueError, match=(
            rf"cube.coords\['{dim}'\] is descending .*ascending, uniformly spaced.*"
            rf"stem4d.{op}\(cube, '{dim}'\)")):
        s4.validate_cube(reversed_)
    with pytest.raises(ValueError, match=rf"image.coords\['{dim}'\] is descending"):
        s4.validate_cube(reversed_, "image")
    with pytest.raises(ValueError, match="is descending"):  # public functions refuse it too
        s4.virtual_diffraction(reversed_, "mean")
    flipped = s4.flip_r(cube, dim) if dim in ("rx", "ry") else s4.flip_q(cube, dim)
    assert s4.validate_cube(flipped) is flipped
    np.testing.assert_array_equal(flipped.values, reversed_.values)


def test_validate_cube_rejects_non_uniform_coordinates(cube):
    gap = cube.isel(qx=[0, 1, 2, 4, 5])  # steps 0.02 and 0.04 1/Å
    with pytest.raises(ValueError, match=(
            r"cube.coords\['qx'\] is not ascending and uniformly spaced: steps range from "
            r"0.02 to 0.04 1/Å.*stem4d.crop_q")):
        s4.validate_cube(gap)
    with pytest.raises(ValueError, match=r"coords\['ry'\] is not ascending.*stem4d.crop_r"):
        s4.validate_cube(cube.isel(ry=[0, 2, 1, 3, 4]))
    # a step 0.1 % off: refused; float32 coordinates and a 1e-5 relative jitter pass
    rx = cube.rx.values.copy()
    rx[-1] += 0.002 * 5.0
    with pytest.raises(ValueError, match="not ascending and uniformly spaced"):
        s4.validate_cube(cube.assign_coords(rx=("rx", rx, cube.rx.attrs)))
    far = s4.datacube(np.ones((3, 2000, 4, 4), "float32"), r_step=0.37, r_units="Å")
    far = far.assign_coords(ry=("ry", (far.ry.values + 1e4).astype("float32"), far.ry.attrs))
    assert s4.validate_cube(far) is far
    jitter = cube.qy.values * (1 + 1e-5 * np.cos(np.arange(7)))
    s4.validate_cube(cube.assign_coords(qy=("qy", jitter, cube.qy.attrs)))
    # one element: nothing to check; crop/bin/thin keep the coordinates uniform
    s4.validate_cube(cube.isel(qx=[3]))
    s4.validate_cube(s4.thin_r(s4.bin_q(s4.crop_q(cube, (1, 6), None), 2), 2))


def test_swap_rq_drops_the_ellipse(cube):
    ell = s4.correct_ellipse(cube, (1.1, 1.0, 0.3))
    assert "ellipse_theta" in ell.coords
    swapped = s4.swap_rq(ell)
    assert not {"ellipse_a", "ellipse_b", "ellipse_theta", "qx_c"} & set(swapped.coords)
    assert float(swapped.beam_energy) == 300e3  # other scalars are kept


def test_import_does_not_load_jax():
    import subprocess
    import sys

    code = "import stem4d, sys; print('jax' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_calibration_summary_reads_like_a_calibration():
    cube = s4.datacube(np.zeros((2, 3, 8, 8), np.float32), r_step=2.0, r_units="Å",
                       q_step=0.025, q_units="1/Å", beam_energy=300e3,
                       convergence_semiangle=2.6249985342465063, origin=(3.5, 4.0))
    summary = s4.calibration_summary(cube)
    assert summary["rx step"] == "2 Å" and summary["qy step"] == "0.025 1/Å"
    assert summary["origin (pixels)"] == "(3.500, 4.000)"
    assert summary["beam_energy"] == "300000 eV"
    assert summary["convergence_semiangle"] == "2.6249985 mrad"  # 8 significant digits
