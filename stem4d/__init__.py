"""stem4d: 4D-STEM analysis on plain xarray objects.

Datasets are ``xarray.DataArray`` objects whose named coordinates carry the
calibration (see :mod:`stem4d.datacube`); analyses are pure functions that return new
xarray objects, also reachable as methods of the ``.stem`` accessor. Submodules load on
first use, so ``import stem4d`` stays fast (JAX loads only for ptychography).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import accessor as _accessor  # noqa: F401  (registers the .stem accessor)
from .datacube import (
    calibration_summary,
    convert_q_units,
    datacube,
    electron_wavelength,
    flip_q,
    flip_r,
    get_origin,
    interaction_parameter,
    q_pixel_size,
    r_pixel_size,
    reshape_scan,
    rotation_matrix,
    scan_to_detector_matrix,
    set_beam,
    set_origin,
    set_q_calibration,
    set_r_calibration,
    swap_rq,
    transpose_q,
    transpose_r,
    validate_cube,
)

__version__ = "0.1.0.dev0"

# public name -> module that defines it (imported on first access)
_LAZY_FUNCTIONS = {
    "open": "stem4d.io",
    "save": "stem4d.io",
    "read_npy": "stem4d.io",
    "read_empad": "stem4d.io",
    "read_hdf5": "stem4d.io",
    "read_py4dstem": "stem4d.io",
    "read_rsciio": "stem4d.io",
    "describe": "stem4d.io",
    "bin_q": "stem4d.preprocess",
    "bin_r": "stem4d.preprocess",
    "crop_q": "stem4d.preprocess",
    "crop_r": "stem4d.preprocess",
    "pad_q": "stem4d.preprocess",
    "resample_q": "stem4d.preprocess",
    "thin_r": "stem4d.preprocess",
    "filter_hot_pixels": "stem4d.preprocess",
    "median_filter_masked_pixels": "stem4d.preprocess",
    "virtual_image": "stem4d.virtual",
    "virtual_diffraction": "stem4d.virtual",
    "vacuum_probe": "stem4d.probe",
    "probe_from_cube": "stem4d.probe",
    "synthetic_probe": "stem4d.probe",
    "measure_disk": "stem4d.probe",
    "probe_size": "stem4d.probe",
    "measure_origin": "stem4d.origin",
    "fit_origin": "stem4d.origin",
    "apply_origin": "stem4d.origin",
    "fit_ellipse": "stem4d.calibrate",
    "correct_ellipse": "stem4d.calibrate",
    "ellipse_corrected_coordinates": "stem4d.calibrate",
    "corrected_circle": "stem4d.calibrate",
    "corrected_annulus": "stem4d.calibrate",
    "q_pixel_size_from_ring": "stem4d.calibrate",
    "q_pixel_size_from_lattice": "stem4d.calibrate",
    "q_pixel_size_from_probe": "stem4d.calibrate",
    "calibrate_q": "stem4d.calibrate",
    "beamstop_mask": "stem4d.calibrate",
    "radial_background": "stem4d.calibrate",
    "subtract_radial_background": "stem4d.calibrate",
    "local_average": "stem4d.calibrate",
    "center_of_mass": "stem4d.com",
    "dpc": "stem4d.com",
    "rotate_com": "stem4d.com",
    "find_orientation": "stem4d.com",
    "integrate_com": "stem4d.com",
    "idpc": "stem4d.com",
    "set_orientation": "stem4d.orientation",
    "find_bragg_disks": "stem4d.bragg",
    "calibrate_vectors": "stem4d.bragg_vectors",
    "bragg_vector_map": "stem4d.bragg_vectors",
    "mask_peaks": "stem4d.bragg_vectors",
    "vector_virtual_image": "stem4d.bragg_vectors",
    "origin_from_vectors": "stem4d.bragg_vectors",
    "choose_basis": "stem4d.strain",
    "index_peaks": "stem4d.strain",
    "fit_lattice": "stem4d.strain",
    "strain_map": "stem4d.strain",
    "strain_from_cube": "stem4d.strain",
    "get_orientation": "stem4d.orientation",
}
_LAZY_MODULES = {"detectors", "virtual", "io", "preprocess", "simulate", "plot", "cli", "probe",
                 "origin", "calibrate", "com", "orientation", "ptycho", "bragg",
                 "bragg_vectors", "strain"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"stem4d.{name}")
    raise AttributeError(f"module 'stem4d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_FUNCTIONS) | _LAZY_MODULES)


__all__ = [
    "calibration_summary", "convert_q_units", "datacube", "electron_wavelength", "flip_q",
    "flip_r", "interaction_parameter", "get_origin", "rotation_matrix",
    "scan_to_detector_matrix", "q_pixel_size", "r_pixel_size",
    "reshape_scan", "set_beam", "set_origin", "set_q_calibration", "set_r_calibration",
    "swap_rq", "transpose_q", "transpose_r", "validate_cube", *_LAZY_FUNCTIONS,
]
