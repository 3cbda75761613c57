"""Tests of stem4d.io: save/open round trips, the readers and their errors."""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

import stem4d
import stem4d.io.chunks as chunks_mod
from stem4d.io.chunks import auto_chunks, scan_row_chunks
from stem4d.orientation import rotation_matrix, scan_to_detector_matrix, set_orientation

DATA = Path(__file__).parent / "data"


# --------------------------------------------------------------------- fixtures
def make_cube(shape=(4, 5, 6, 7), dtype=np.float32) -> xr.DataArray:
    """Calibrated cube with a per-position origin, 0-d coords and assorted attrs."""
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    rx, ry = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cube = stem4d.datacube(
        data, r_step=1.5, r_units="Å", q_step=(0.02, 0.025), q_units="1/Å",
        beam_energy=300e3, convergence_semiangle=21.4,
        origin=(2.5 + 0.1 * rx, 3.0 - 0.05 * ry), name="scan 1",
        attrs={"flag": True, "meta": {"a": [1, 2], "b": None}, "pair": (1, 2.5),
               "note": "Å ok", "vector": np.arange(3.0), "count": np.int32(7),
               "cplx": 1 + 2j},
    )
    return set_orientation(cube, np.radians(12.5), True)


def assert_same(a, b) -> None:
    """Identical values, coords, attrs and names (attrs compared value by value)."""
    xr.testing.assert_identical(a, b)
    objs = [(a, b)]
    if isinstance(a, xr.DataArray):
        assert a.name == b.name
    for x, y in objs:
        for k, v in x.attrs.items():
            w = y.attrs[k]
            assert type(w) is type(v), (k, type(v), type(w))
            np.testing.assert_equal(w, v)


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# ------------------------------------------------------------------ chunk sizes
def test_scan_row_chunks_whole_rows_near_target():
    shape = (256, 256, 128, 128)  # float32 row = 16 MiB
    sizes = scan_row_chunks(shape, 4)
    assert sizes[1:] == (256, 128, 128)
    assert 64e6 <= sizes[0] * 256 * 128 * 128 * 4 <= 128e6
    assert scan_row_chunks((10, 3, 4, 4), 8, target_bytes=3 * 4 * 4 * 8 * 4) == (4, 3, 4, 4)
    assert scan_row_chunks((3, 2, 2, 2), 4) == (3, 2, 2, 2)
    # a single row of more than twice the target is split along ry
    assert scan_row_chunks((2, 100, 10, 10), 1, target_bytes=1000) == (1, 10, 10, 10)
    with pytest.raises(ValueError, match="itemsize"):
        scan_row_chunks((2, 2), 0)


def test_auto_chunks_aligns_to_stored_chunks():
    got = auto_chunks(("rx", "ry", "qx", "qy"), (100, 10, 4, 4), 1, previous={"rx": 3},
                      target_bytes=10 * 4 * 4 * 10)
    assert got == {"rx": 9, "ry": 10, "qx": 4, "qy": 4}
    assert auto_chunks(("qx", "qy"), (4, 4), 8) == {"qx": -1, "qy": -1}


# -------------------------------------------------------------- save and open
@pytest.mark.parametrize("suffix", [".nc", ".h5", ".zarr"])
def test_dataarray_round_trip(tmp_path, suffix):
    cube = make_cube()
    path = stem4d.save(cube, tmp_path / f"cube{suffix}")
    assert path == tmp_path / f"cube{suffix}"
    back = stem4d.open(path)
    assert isinstance(back, xr.DataArray)
    assert isinstance(back.data, da.Array)
    assert back.name == "scan 1"
    assert_same(back.compute(), cube)
    np.testing.assert_allclose(stem4d.get_origin(back)[0].values, stem4d.get_origin(cube)[0].values)
    assert back.coords["scan_flip"].dtype == bool
    assert back.coords["beam_energy"].attrs["units"] == "eV"


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.uint16, bool])
def test_dtypes_round_trip(tmp_path, suffix, dtype):
    cube = make_cube(shape=(3, 2, 4, 5))
    values = (np.arange(cube.size).reshape(cube.shape) % 7)
    if np.dtype(dtype).kind == "c":
        values = values * (1 - 0.5j)
    cube = cube.copy(data=values.astype(dtype))
    back = stem4d.open(stem4d.save(cube, tmp_path / f"c{suffix}"))
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.values, cube.values)
    assert_same(back.compute(), cube)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_unnamed_dataarray_keeps_no_name(tmp_path, suffix):
    image = xr.DataArray(np.eye(3), dims=("rx", "ry"), attrs={"units": "counts"})
    back = stem4d.open(stem4d.save(image, tmp_path / f"im{suffix}"))
    assert back.name is None
    assert_same(back.compute(), image)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_dataset_round_trip(tmp_path, suffix):
    cube = make_cube()
    ds = xr.Dataset(
        {"bf": cube.sum(("qx", "qy")), "peaks": (("rx", "ry", "peak"),
                                                 np.full((4, 5, 3), np.nan, np.float32))},
        attrs={"title": "analysis", "done": False, "steps": [1, 2, 3]},
    )
    ds["bf"].attrs = {"detector": "BF", "radius": 0.05}
    back = stem4d.open(stem4d.save(ds, tmp_path / f"ds{suffix}"))
    assert isinstance(back, xr.Dataset)
    assert_same(back.compute(), ds)
    assert back.attrs == {"title": "analysis", "done": False, "steps": [1, 2, 3]}


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_datatree_round_trip(tmp_path, suffix):
    cube = make_cube()
    tree = xr.DataTree.from_dict(
        {
            "/": xr.Dataset(attrs={"sample": "Si", "ok": True}),
            "/raw": xr.Dataset({"cube": cube}),
            "/maps/virtual": xr.Dataset({"bf": cube.sum(("qx", "qy"))}),
            "/ptycho/object": xr.Dataset(
                {"object": (("x", "y"), np.exp(1j * np.arange(12.0).reshape(3, 4)))}),
        },
        name="experiment",
    )
    back = stem4d.open(stem4d.save(tree, tmp_path / f"tree{suffix}"))
    assert isinstance(back, xr.DataTree)
    assert back.name == "experiment"
    xr.testing.assert_identical(back.compute(), tree)
    assert back.attrs == {"sample": "Si", "ok": True}
    assert back["raw/cube"].attrs["flag"] is True
    assert isinstance(back["raw/cube"].data, da.Array)
    np.testing.assert_array_equal(back["ptycho/object/object"].values,
                                  tree["ptycho/object/object"].values)
    group = stem4d.open(tmp_path / f"tree{suffix}", key="/maps/virtual")
    assert isinstance(group, xr.Dataset)
    np.testing.assert_array_equal(group["bf"].values, tree["maps/virtual/bf"].values)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_open_is_lazy_with_scan_row_chunks(tmp_path, suffix, monkeypatch):
    cube = make_cube(shape=(10, 4, 6, 7))
    path = stem4d.save(cube, tmp_path / f"c{suffix}")
    row = 4 * 6 * 7 * 4
    monkeypatch.setattr(chunks_mod, "DEFAULT_CHUNK_BYTES", 3 * row)
    back = stem4d.open(path)
    assert isinstance(back.data, da.Array)
    assert back.data.chunks == ((3, 3, 3, 1), (4,), (6,), (7,))
    np.testing.assert_array_equal(back.values, cube.values)
    assert stem4d.open(path, chunks=None).chunks is None


def test_save_dask_backed_and_resave_open_file(tmp_path):
    cube = make_cube(shape=(6, 3, 4, 4))
    lazy = cube.chunk({"rx": 2})
    path = stem4d.save(lazy, tmp_path / "lazy.nc")
    opened = stem4d.open(path)
    # re-saving over the file it is being read from works (tmp file + rename)
    stem4d.save(opened * 2, path)
    np.testing.assert_array_equal(stem4d.open(path).values, cube.values * 2)
    irregular = cube.chunk({"rx": (1, 3, 2)})
    back = stem4d.open(stem4d.save(irregular, tmp_path / "irr.zarr"))
    np.testing.assert_array_equal(back.values, cube.values)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_overwrite_replaces_file(tmp_path, suffix):
    first = make_cube()
    path = stem4d.save(first, tmp_path / f"c{suffix}")
    opened = stem4d.open(path)
    second = make_cube(shape=(2, 3, 4, 4)) * 2
    stem4d.save(second, path)
    assert listing(tmp_path) == [f"c{suffix}"]  # the old store is gone, no temp left
    assert_same(stem4d.open(path).compute(), second)
    if suffix == ".nc":  # an object opened before still reads the old file
        np.testing.assert_array_equal(opened.values, first.values)


def test_open_plain_xarray_netcdf(tmp_path):
    ds = xr.Dataset({"a": (("rx", "ry"), np.arange(6.0).reshape(2, 3))})
    ds.to_netcdf(tmp_path / "x.nc", engine="h5netcdf")
    back = stem4d.open(tmp_path / "x.nc")
    assert isinstance(back, xr.Dataset)
    np.testing.assert_array_equal(back["a"].values, ds["a"].values)


def test_save_overwrite_false_and_bad_suffix(tmp_path):
    cube = make_cube()
    path = stem4d.save(cube, tmp_path / "c.nc")
    with pytest.raises(FileExistsError, match="c.nc"):
        stem4d.save(cube, path, overwrite=False)
    with pytest.raises(ValueError, match=r"out\.txt.*\.nc.*\.zarr"):
        stem4d.save(cube, tmp_path / "out.txt")
    with pytest.raises(TypeError, match="obj must be"):
        stem4d.save(np.zeros(3), tmp_path / "a.nc")
    with pytest.raises(FileNotFoundError, match="nodir"):
        stem4d.save(cube, tmp_path / "nodir" / "a.nc")


def _failing(cube: xr.DataArray) -> xr.DataArray:
    """A dask-backed copy whose first scan row raises when computed.

    The other rows are slow, so they are still being written when the error
    surfaces: the save must wait for them before it cleans up.
    """
    def block(x, block_info=None):
        if block_info[0]["chunk-location"][0] == 0:
            raise RuntimeError("disk full")
        time.sleep(0.1)
        return x
    return cube.copy(data=cube.chunk({"rx": 1}).data.map_blocks(block, dtype=cube.dtype))


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_failed_save_keeps_existing_file(tmp_path, suffix):
    good = make_cube()
    path = stem4d.save(good, tmp_path / f"c{suffix}")
    before = listing(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        stem4d.save(_failing(good * 3), path)
    time.sleep(0.3)  # longer than the slow rows: a stray writer would have re-created files
    assert listing(tmp_path) == before  # no temporary file left behind
    assert_same(stem4d.open(path).compute(), good)


def test_failed_writer_keeps_existing_file(tmp_path, monkeypatch):
    good = make_cube()
    path = stem4d.save(good, tmp_path / "c.nc")
    content = path.read_bytes()

    def broken(self, target, *args, **kwargs):
        Path(target).write_bytes(b"\x89HDF\r\n\x1a\n half written")
        raise OSError("writer crashed")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="writer crashed"):
        stem4d.save(good * 2, path)
    assert path.read_bytes() == content
    assert listing(tmp_path) == ["c.nc"]


def test_describe_lists_calibration(tmp_path):
    path = stem4d.save(make_cube(), tmp_path / "c.nc")
    text = stem4d.io.describe(path)
    assert str(path) in text and "stem4d netCDF" in text and "DataArray 'scan 1'" in text
    assert "rx=4, ry=5, qx=6, qy=7" in text and "float32" in text and "chunks" in text
    assert "rx step: 1.5 Å" in text and "qy step: 0.025 1/Å" in text
    assert "beam_energy: 300000 eV" in text
    tree = xr.DataTree.from_dict({"/a": xr.Dataset({"cube": make_cube()})})
    text = stem4d.io.describe(stem4d.save(tree, tmp_path / "t.zarr"))
    assert "node /a" in text and "variable 'cube'" in text and "qx step: 0.02 1/Å" in text


# ------------------------------------------------------------------- npy reader
def test_read_npy_4d_and_3d(tmp_path):
    data = np.arange(4 * 3 * 5 * 6, dtype=np.uint16).reshape(4, 3, 5, 6)
    np.save(tmp_path / "c.npy", data)
    cube = stem4d.open(tmp_path / "c.npy", r_step=2.0, r_units="nm", q_step=0.5,
                       q_units="mrad", origin=(2.0, 3.0))
    assert isinstance(cube.data, da.Array)
    np.testing.assert_array_equal(cube.values, data)
    assert stem4d.r_pixel_size(cube) == (20.0, 20.0, "Å")
    assert stem4d.q_pixel_size(cube) == (0.5, 0.5, "mrad")
    np.testing.assert_allclose(cube.qx.values, (np.arange(5) - 2.0) * 0.5)

    np.save(tmp_path / "s.npy", data.reshape(12, 5, 6))
    cube3 = stem4d.read_npy(tmp_path / "s.npy", scan_shape=(4, 3))
    np.testing.assert_array_equal(cube3.values, data)
    assert cube3.dims == ("rx", "ry", "qx", "qy")
    with pytest.raises(ValueError, match="scan_shape"):
        stem4d.read_npy(tmp_path / "s.npy")


def test_read_npy_chunks_are_scan_rows(tmp_path, monkeypatch):
    data = np.arange(8 * 3 * 2 * 2, dtype=np.float32).reshape(24, 2, 2)
    np.save(tmp_path / "s.npy", data)
    monkeypatch.setattr(chunks_mod, "DEFAULT_CHUNK_BYTES", 2 * 3 * 2 * 2 * 4)
    cube = stem4d.read_npy(tmp_path / "s.npy", scan_shape=(8, 3))
    assert cube.data.chunks == ((2, 2, 2, 2), (3,), (2,), (2,))
    np.testing.assert_array_equal(cube.values.reshape(24, 2, 2), data)


def test_truncated_npy_names_file(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((4, 4, 8, 8), np.float32))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"t\.npy.*truncated"):
        stem4d.open(tmp_path / "t.npy")


# ----------------------------------------------------------------- EMPAD reader
def write_empad(path: Path, frames: np.ndarray, gap: int = 1024, last_gap: bool = True):
    with path.open("wb") as fh:
        for i, frame in enumerate(frames.reshape(-1, *frames.shape[-2:])):
            fh.write(frame.astype("<f4").tobytes())
            if last_gap or i < frames.shape[0] * frames.shape[1] - 1:
                fh.write(np.full(gap // 4, -1, "<f4").tobytes())


@pytest.mark.parametrize("last_gap", [True, False])
def test_read_empad(tmp_path, last_gap):
    frames = np.arange(3 * 2 * 8 * 8, dtype=np.float32).reshape(3, 2, 8, 8)
    write_empad(tmp_path / "scan.raw", frames, gap=64, last_gap=last_gap)
    cube = stem4d.open(tmp_path / "scan.raw", scan_shape=(3, 2), detector_shape=(8, 8),
                       gap=64, q_step=0.1, q_units="mrad")
    assert isinstance(cube.data, da.Array)
    np.testing.assert_array_equal(cube.values, frames)
    assert stem4d.q_pixel_size(cube) == (0.1, 0.1, "mrad")


def test_read_empad_default_layout_with_header(tmp_path):
    frames = np.random.default_rng(0).random((2, 2, 128, 128), dtype=np.float32)
    path = tmp_path / "e.raw"
    write_empad(path, frames)
    path.write_bytes(b"HEADER!!" + path.read_bytes())
    cube = stem4d.read_empad(path, scan_shape=(2, 2), offset=8)
    np.testing.assert_array_equal(cube.values, frames)


def test_empad_size_errors_name_file_and_sizes(tmp_path):
    frames = np.zeros((2, 2, 8, 8), np.float32)
    write_empad(tmp_path / "e.raw", frames, gap=16)
    size = (tmp_path / "e.raw").stat().st_size
    with pytest.raises(ValueError, match=rf"e\.raw.*too small.*{4 * (256 + 16) * 2}.*{size}"):
        stem4d.read_empad(tmp_path / "e.raw", scan_shape=(2, 4), detector_shape=(8, 8),
                          gap=16)
    with pytest.raises(ValueError, match=rf"e\.raw.*too large.*{size}"):
        stem4d.read_empad(tmp_path / "e.raw", scan_shape=(1, 2), detector_shape=(8, 8),
                          gap=16)
    with pytest.raises(ValueError, match=r"e\.raw.*scan_shape"):
        stem4d.open(tmp_path / "e.raw")


# ------------------------------------------------------------------ HDF5 reader
def test_read_hdf5_with_key_and_selection(tmp_path):
    data = np.arange(5 * 4 * 3 * 6, dtype=np.int32).reshape(5, 4, 3, 6)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("entry/data", data=data, chunks=(1, 4, 3, 6))
        f.create_dataset("entry/flat", data=data.reshape(20, 3, 6))
    cube = stem4d.open(tmp_path / "d.h5", key="entry/data", r_step=0.5, r_units="Å")
    assert isinstance(cube.data, da.Array)
    np.testing.assert_array_equal(cube.values, data)
    crop = stem4d.read_hdf5(tmp_path / "d.h5", "/entry/data",
                            selection=(slice(1, 4), slice(None, None, 2), 1), r_step=0.5,
                            r_units="Å")
    assert crop.shape == (3, 2, 1, 6)
    np.testing.assert_array_equal(crop.values, data[1:4, ::2, 1:2])
    np.testing.assert_allclose(crop.rx.values, [0.5, 1.0, 1.5])
    np.testing.assert_allclose(crop.ry.values, [0.0, 1.0])
    flat = stem4d.read_hdf5(tmp_path / "d.h5", "entry/flat", scan_shape=(5, 4))
    np.testing.assert_array_equal(flat.values, data)
    # the graph pickles (for dask.distributed): workers reopen the file
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(crop.data)).compute(),
                                  data[1:4, ::2, 1:2])


def test_hdf5_errors_list_datasets(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("entry/frames", data=np.zeros((2, 2, 3, 3), np.float32))
    listed = r"(?s)d\.h5.*key=.*/entry/frames.*\(2, 2, 3, 3\).*float32"
    with pytest.raises(ValueError, match=listed):
        stem4d.open(tmp_path / "d.h5")
    with pytest.raises(KeyError, match=r"(?s)'nope'.*d\.h5.*/entry/frames"):
        stem4d.open(tmp_path / "d.h5", key="nope")
    with pytest.raises(KeyError, match="is a group"):
        stem4d.read_hdf5(tmp_path / "d.h5", "entry")


def test_corrupt_files_name_the_file(tmp_path):
    path = stem4d.save(make_cube(), tmp_path / "c.nc")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"c\.nc.*truncated or corrupt"):
        stem4d.open(path)
    (tmp_path / "g.h5").write_bytes(b"this is not an HDF5 file at all" * 10)
    with pytest.raises(ValueError, match=r"g\.h5.*not an HDF5"):
        stem4d.open(tmp_path / "g.h5")
    zpath = stem4d.save(make_cube(), tmp_path / "z.zarr")
    (zpath / "zarr.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"z\.zarr"):
        stem4d.open(zpath)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.nc"):
        stem4d.open(tmp_path / "absent.nc")
    (tmp_path / "x.weird").write_bytes(b"1234")
    with pytest.raises(ValueError, match=r"x\.weird.*unknown suffix.*\.npy"):
        stem4d.open(tmp_path / "x.weird")


# -------------------------------------------------------------- py4DSTEM reader
def p4_origin(scan_shape):
    """The origin written by tests/data/make_py4dstem_file.py (detector pixels)."""
    rx, ry = np.meshgrid(np.arange(scan_shape[0]), np.arange(scan_shape[1]), indexing="ij")
    return 5.5 + 0.1 * rx - 0.05 * ry, 6.25 - 0.02 * rx + 0.03 * ry


def test_read_py4dstem_with_origin():
    cube = stem4d.open(DATA / "py4dstem_origin.h5")
    assert isinstance(cube.data, da.Array)
    shape = (4, 5, 12, 14)
    np.testing.assert_array_equal(
        cube.values, np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    assert cube.dtype == np.float32 and cube.name == "datacube"
    assert stem4d.r_pixel_size(cube) == (1.5, 1.5, "Å")
    sx, sy, units = stem4d.q_pixel_size(cube)
    assert units == "1/Å"
    np.testing.assert_allclose((sx, sy), (0.02, 0.02))
    qx0, qy0 = stem4d.get_origin(cube)
    ex, ey = p4_origin((4, 5))
    np.testing.assert_allclose(qx0.values, ex, atol=1e-12)
    np.testing.assert_allclose(qy0.values, ey, atol=1e-12)
    # q = 0 at the mean origin, in calibrated units (not py4DSTEM's dim vectors)
    np.testing.assert_allclose(cube.qx.values, (np.arange(12) - ex.mean()) * 0.02)
    np.testing.assert_allclose(cube.qy.values, (np.arange(14) - ey.mean()) * 0.02)
    # py4DSTEM (QR_rotation_degrees, QR_flip) = (12.5, True): a detector vector v maps to
    # the scan frame as R(12.5°) @ T @ v (T swaps qx, qy), so Q = T @ R(-12.5°)
    # = R(102.5°) @ diag(1, -1): stem4d (scan_rotation, scan_flip) = (102.5°, True)
    assert np.degrees(float(cube.scan_rotation)) == pytest.approx(102.5, abs=1e-9)
    assert cube.scan_rotation.attrs["units"] == "rad"
    assert bool(cube.scan_flip) is True
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    q = scan_to_detector_matrix(float(cube.scan_rotation), True)
    np.testing.assert_allclose(rotation_matrix(np.radians(12.5)) @ swap @ q,
                               np.eye(2), atol=1e-12)
    assert cube.attrs["py4dstem_calibration"]["QR_rotation_degrees"] == 12.5
    assert cube.attrs["py4dstem_calibration"]["QR_flip"] is True
    assert cube.attrs["py4dstem_calibration"]["Q_pixel_units"] == "A^-1"


def test_read_py4dstem_plain_and_by_name():
    cube = stem4d.read_py4dstem(DATA / "py4dstem_plain.h5", name="plain")
    shape = (3, 2, 8, 6)
    expected = (np.arange(np.prod(shape)) % 1000).astype(np.uint16).reshape(shape)
    np.testing.assert_array_equal(cube.values, expected)
    assert stem4d.r_pixel_size(cube) == (2.5, 2.5, "Å")  # 0.25 nm
    assert stem4d.q_pixel_size(cube) == (0.5, 0.5, "mrad")
    np.testing.assert_allclose(cube.qx.values, np.arange(8) * 0.5)
    # py4DSTEM always writes QR_flip=False; without a rotation there is no orientation
    assert "qx0" not in cube.coords and "scan_flip" not in cube.coords
    assert "scan_rotation" not in cube.coords
    with pytest.raises(KeyError, match="no DataCube named 'other'"):
        stem4d.read_py4dstem(DATA / "py4dstem_plain.h5", name="other")


def test_py4dstem_to_stem4d_file(tmp_path):
    cube = stem4d.open(DATA / "py4dstem_origin.h5")
    back = stem4d.open(stem4d.save(cube, tmp_path / "c.zarr"))
    assert_same(back.compute(), cube.compute())


# ---------------------------------------------------------- RosettaSciIO reader
def write_hspy(path: Path, data: np.ndarray, axes: list[dict], metadata: dict) -> None:
    from rsciio.hspy import file_writer

    signal = {"data": data, "axes": axes, "metadata": metadata, "original_metadata": {},
              "attributes": {"_lazy": False}, "tmp_parameters": {}, "learning_results": {},
              "models": {}, "package_info": {"name": "stem4d-tests", "version": "0"}}
    file_writer(str(path), signal, show_progressbar=False)


def test_read_rsciio_hspy(tmp_path):
    pytest.importorskip("rsciio")
    data = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)
    axes = [
        {"name": "y", "size": 3, "scale": 0.2, "offset": 0.0, "units": "nm", "navigate": True},
        {"name": "x", "size": 4, "scale": 0.2, "offset": 0.0, "units": "nm", "navigate": True},
        {"name": "ky", "size": 5, "scale": 0.01, "offset": -0.02, "units": "1/nm",
         "navigate": False},
        {"name": "kx", "size": 6, "scale": 0.02, "offset": -0.06, "units": "1/nm",
         "navigate": False},
    ]
    metadata = {"General": {"title": "merlin scan"},
                "Signal": {"signal_type": "electron_diffraction"},
                "Acquisition_instrument": {"TEM": {"beam_energy": 200.0,
                                                   "convergence_angle": 1.5}}}
    write_hspy(tmp_path / "s.hspy", data, axes, metadata)
    cube = stem4d.open(tmp_path / "s.hspy")
    assert cube.dims == ("rx", "ry", "qx", "qy") and cube.name == "merlin scan"
    assert isinstance(cube.data, da.Array)
    np.testing.assert_array_equal(cube.values, data)
    np.testing.assert_allclose(stem4d.r_pixel_size(cube)[:2], (2.0, 2.0))
    assert cube.rx.attrs["units"] == "Å" and cube.qx.attrs["units"] == "1/Å"
    np.testing.assert_allclose(cube.qx.values, (-0.02 + 0.01 * np.arange(5)) / 10)
    np.testing.assert_allclose(cube.qy.values, (-0.06 + 0.02 * np.arange(6)) / 10)
    np.testing.assert_allclose(stem4d.get_origin(cube), (2.0, 3.0))
    assert float(cube.beam_energy) == 200e3
    assert float(cube.convergence_semiangle) == 1.5

    axes[2]["units"] = axes[3]["units"] = "furlongs"
    write_hspy(tmp_path / "u.hspy", data, axes, {"General": {"title": "u"}})
    with pytest.warns(UserWarning, match="furlongs"):
        cube = stem4d.read_rsciio(tmp_path / "u.hspy", reader="hspy")
    assert stem4d.q_pixel_size(cube) == (1.0, 1.0, "pixels")
    assert "beam_energy" not in cube.coords


def test_describe_readers(tmp_path):
    text = stem4d.io.describe(DATA / "py4dstem_origin.h5")
    assert "py4DSTEM EMD 1.0" in text and "rx step: 1.5 Å" in text
    assert "origin (pixels): per position, mean (5.550, 6.280)" in text
    assert "scan_rotation: 1.78896" in text and "scan_flip: True" in text
    write_empad(tmp_path / "e.raw", np.ones((2, 1, 4, 4), np.float32), gap=0)
    text = stem4d.io.describe(tmp_path / "e.raw", scan_shape=(2, 1),
                              detector_shape=(4, 4), gap=0)
    assert "EMPAD raw" in text and "rx=2, ry=1, qx=4, qy=4" in text


def test_rsciio_reader_choice(tmp_path):
    pytest.importorskip("rsciio")
    (tmp_path / "a.hspy").write_bytes(b"")
    with pytest.raises(ValueError, match="reader must name a RosettaSciIO plugin.*'nope'"):
        stem4d.read_rsciio(tmp_path / "a.hspy", reader="nope")


def test_rsciio_axes_order_and_chunks(tmp_path, monkeypatch):
    """A plugin taking ``chunks`` is asked for whole scan rows; axes go by index_in_array."""
    import stem4d.io.microscope as micro

    data = np.arange(6 * 2 * 3 * 4, dtype=np.float32).reshape(6, 2, 3, 4)
    calls = []

    class FakePlugin:
        @staticmethod
        def file_reader(filename, lazy=False, chunks="auto"):
            calls.append(chunks)
            axes = [  # listed out of order on purpose
                {"name": "kx", "index_in_array": 3, "navigate": False, "size": 4,
                 "scale": 0.5, "offset": 0.0, "units": "mrad"},
                {"name": "y", "index_in_array": 0, "navigate": True, "size": 6,
                 "scale": 1.0, "offset": 0.0, "units": "Å"},
                {"name": "ky", "index_in_array": 2, "navigate": False, "size": 3,
                 "scale": 0.5, "offset": -0.5, "units": "mrad"},
                {"name": "x", "index_in_array": 1, "navigate": True, "size": 2,
                 "scale": 1.0, "offset": 0.0, "units": "Å"},
            ]
            return [{"data": da.from_array(data, chunks=(6, 2, 3, 4) if chunks == "auto"
                                           else chunks), "axes": axes, "metadata": {}}]

    monkeypatch.setattr(micro, "_candidates", lambda path, reader: [{"name": "Fake"}])
    monkeypatch.setattr(micro, "_import", lambda plugin: FakePlugin)
    monkeypatch.setattr(chunks_mod, "DEFAULT_CHUNK_BYTES", 2 * 2 * 3 * 4 * 4)
    (tmp_path / "f.fake").write_bytes(b"")
    cube = stem4d.read_rsciio(tmp_path / "f.fake")
    assert calls == ["auto", (2, 2, 3, 4)]
    assert cube.data.chunks == ((2, 2, 2), (2,), (3,), (4,))
    np.testing.assert_array_equal(cube.values, data)
    assert stem4d.q_pixel_size(cube) == (0.5, 0.5, "mrad")
    np.testing.assert_allclose(stem4d.get_origin(cube), (1.0, 0.0))


def test_rsciio_missing_gives_install_hint(tmp_path, monkeypatch):
    (tmp_path / "a.dm4").write_bytes(b"0000")
    monkeypatch.setitem(sys.modules, "rsciio", None)
    with pytest.raises(ImportError, match=r'pip install "stem4d\[formats\]"'):
        stem4d.read_rsciio(tmp_path / "a.dm4")


def test_rsciio_bad_file_names_it(tmp_path):
    pytest.importorskip("rsciio")
    (tmp_path / "bad.dm4").write_bytes(b"not a dm4 file" * 10)
    with pytest.raises(ValueError, match=r"bad\.dm4"):
        stem4d.open(tmp_path / "bad.dm4")


def test_save_never_replaces_a_foreign_directory(tmp_path):
    cube = stem4d.datacube(np.ones((2, 2, 3, 3), "float32"))
    folder = tmp_path / "results.nc"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(IsADirectoryError, match="results.nc"):
        stem4d.save(cube, folder)
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "notes.txt").write_text("keep me too")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        stem4d.save(cube, plain)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert (plain / "notes.txt").read_text() == "keep me too"
    store = stem4d.save(cube, tmp_path / "good.zarr")
    stem4d.save(cube * 2, store)  # a stem4d zarr store is replaced
    np.testing.assert_array_equal(stem4d.open(store).values, 2 * np.ones((2, 2, 3, 3)))


def test_zarr_store_missing_a_coordinate_chunk_is_refused(tmp_path):
    # zarr fills a missing chunk with the fill value (NaN): an incomplete copy must not
    # open as a cube with NaN calibrations
    path = stem4d.save(make_cube(), tmp_path / "c.zarr")
    (path / "qx" / "c" / "0").unlink()
    with pytest.raises(ValueError, match=r"c\.zarr.*coordinate 'qx' holds NaN"):
        stem4d.open(path)
