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
    "origin": "stem4d.datacube:origin",
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
