"""Write small py4DSTEM (EMD 1.0) files for stem4d's reader tests.

Run with the py4DSTEM 0.14.18 environment (not stem4d's)::

    /work/peers/bin/python tests/data/make_py4dstem_file.py

It writes, next to this script:

* ``py4dstem_origin.h5``: a float32 DataCube of shape (4, 5, 12, 14) holding
  ``arange`` values, R pixel size 1.5 Å, Q pixel size 0.02 Å⁻¹, a per-position
  origin (qx0, qy0) in detector pixels, QR rotation 12.5° and QR flip True;
* ``py4dstem_plain.h5``: a uint16 DataCube of shape (3, 2, 8, 6), R pixel size
  0.25 nm, Q pixel size 0.5 mrad and no origin.

The expected values are recomputed by ``tests/test_io.py`` from the same formulas,
so keep both in step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import py4DSTEM

HERE = Path(__file__).resolve().parent


def origin_arrays(scan_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-position origin (detector pixels) used in ``py4dstem_origin.h5``."""
    rx, ry = np.meshgrid(np.arange(scan_shape[0]), np.arange(scan_shape[1]), indexing="ij")
    qx0 = 5.5 + 0.1 * rx - 0.05 * ry
    qy0 = 6.25 - 0.02 * rx + 0.03 * ry
    return qx0.astype(float), qy0.astype(float)


def make_origin_file(path: Path) -> None:
    shape = (4, 5, 12, 14)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    cube = py4DSTEM.DataCube(data=data, name="datacube")
    cal = cube.calibration
    cal.set_R_pixel_size(1.5)
    cal.set_R_pixel_units("A")
    cal.set_Q_pixel_size(0.02)
    cal.set_Q_pixel_units("A^-1")
    cal.set_origin(origin_arrays(shape[:2]))
    cal.set_QR_rotation_degrees(12.5)
    cal.set_QR_flip(True)
    py4DSTEM.save(str(path), cube, mode="o")


def make_plain_file(path: Path) -> None:
    shape = (3, 2, 8, 6)
    data = (np.arange(np.prod(shape)) % 1000).astype(np.uint16).reshape(shape)
    cube = py4DSTEM.DataCube(data=data, name="plain")
    cal = cube.calibration
    cal.set_R_pixel_size(0.25)
    cal.set_R_pixel_units("nm")
    cal.set_Q_pixel_size(0.5)
    cal.set_Q_pixel_units("mrad")
    py4DSTEM.save(str(path), cube, mode="o")


if __name__ == "__main__":
    make_origin_file(HERE / "py4dstem_origin.h5")
    make_plain_file(HERE / "py4dstem_plain.h5")
    print("py4DSTEM", py4DSTEM.__version__, "wrote files in", HERE)
