"""The ``.stem`` accessor: every method forwards to a public stem4d function.

``cube.stem.virtual_image(det)`` is ``stem4d.virtual_image(cube, det)``. No logic lives
here; the accessor only looks the function up by name and passes the object first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import xarray as xr

# accessor method name -> "module:function"
_FORWARDS = {
    "virtual_image": "stem4d.virtual:virtual_image",
    "virtual_diffraction": "stem4d.virtual:virtual_diffraction",
    "set_r_calibration": "stem4d.datacube:set_r_calibration",
    "set_q_calibration": "stem4d.datacube:set_q_calibration",
    "set_origin": "stem4d.datacube:set_origin",
    "set_beam": "stem4d.datacube:set_beam",
    "convert_q_units": "stem4d.datacube:convert_q_units",
    "get_origin": "stem4d.datacube:get_origin",
    "q_pixel_size": "stem4d.datacube:q_pixel_size",
    "r_pixel_size": "stem4d.datacube:r_pixel_size",
    "calibration": "stem4d.datacube:calibration_summary",
    "swap_rq": "stem4d.datacube:swap_rq",
    "transpose_r": "stem4d.datacube:transpose_r",
    "transpose_q": "stem4d.datacube:transpose_q",
    "flip_r": "stem4d.datacube:flip_r",
    "flip_q": "stem4d.datacube:flip_q",
    "bin_q": "stem4d.preprocess:bin_q",
    "bin_r": "stem4d.preprocess:bin_r",
    "crop_q": "stem4d.preprocess:crop_q",
    "crop_r": "stem4d.preprocess:crop_r",
    "pad_q": "stem4d.preprocess:pad_q",
    "resample_q": "stem4d.preprocess:resample_q",
    "thin_r": "stem4d.preprocess:thin_r",
    "filter_hot_pixels": "stem4d.preprocess:filter_hot_pixels",
    "median_filter_masked_pixels": "stem4d.preprocess:median_filter_masked_pixels",
    "save": "stem4d.io:save",
    "probe_from_cube": "stem4d.probe:probe_from_cube",
    "probe_size": "stem4d.probe:probe_size",
    "measure_disk": "stem4d.probe:measure_disk",
    "vacuum_probe": "stem4d.probe:vacuum_probe",
    "synthetic_probe": "stem4d.probe:synthetic_probe",
    "measure_origin": "stem4d.origin:measure_origin",
    "fit_origin": "stem4d.origin:fit_origin",
    "apply_origin": "stem4d.origin:apply_origin",
    "fit_ellipse": "stem4d.calibrate:fit_ellipse",
    "correct_ellipse": "stem4d.calibrate:correct_ellipse",
    "ellipse_corrected_coordinates": "stem4d.calibrate:ellipse_corrected_coordinates",
    "corrected_circle": "stem4d.calibrate:corrected_circle",
    "corrected_annulus": "stem4d.calibrate:corrected_annulus",
    "calibrate_q": "stem4d.calibrate:calibrate_q",
    "beamstop_mask": "stem4d.calibrate:beamstop_mask",
    "radial_background": "stem4d.calibrate:radial_background",
    "subtract_radial_background": "stem4d.calibrate:subtract_radial_background",
    "local_average": "stem4d.calibrate:local_average",
    "center_of_mass": "stem4d.com:center_of_mass",
    "dpc": "stem4d.com:dpc",
    "rotate_com": "stem4d.com:rotate_com",
    "find_orientation": "stem4d.com:find_orientation",
    "integrate_com": "stem4d.com:integrate_com",
    "idpc": "stem4d.com:idpc",
    "set_orientation": "stem4d.orientation:set_orientation",
    "get_orientation": "stem4d.orientation:get_orientation",
    "probe_kernel": "stem4d.probe:kernel",
    "find_bragg_disks": "stem4d.bragg:find_bragg_disks",
    "calibrate_vectors": "stem4d.bragg_vectors:calibrate_vectors",
    "bragg_vector_map": "stem4d.bragg_vectors:bragg_vector_map",
    "mask_peaks": "stem4d.bragg_vectors:mask_peaks",
    "vector_virtual_image": "stem4d.bragg_vectors:vector_virtual_image",
    "origin_from_vectors": "stem4d.bragg_vectors:origin_from_vectors",
    "choose_basis": "stem4d.strain:choose_basis",
    "index_peaks": "stem4d.strain:index_peaks",
    "fit_lattice": "stem4d.strain:fit_lattice",
    "strain_map": "stem4d.strain:strain_map",
    "strain_from_cube": "stem4d.strain:strain_from_cube",
}


def _resolve(target: str) -> Callable[..., Any]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


class _StemAccessor:
    """Methods of ``obj.stem``: each is the stem4d function of that name applied to obj."""

    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in _FORWARDS:
            raise AttributeError(f"'.stem' has no method {name!r}; see dir(obj.stem)")
        func = _resolve(_FORWARDS[name])

        def method(*args: Any, **kwargs: Any) -> Any:
            return func(self._obj, *args, **kwargs)

        method.__name__ = name
        method.__doc__ = func.__doc__
        return method

    def __dir__(self) -> list[str]:
        return sorted(_FORWARDS)


xr.register_dataarray_accessor("stem")(_StemAccessor)
xr.register_dataset_accessor("stem")(_StemAccessor)
