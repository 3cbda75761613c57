"""Figures of Bragg vectors (:mod:`stem4d.bragg_vectors`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ._common import _extent, _label, _pyplot


def show_bragg_vector_map(bvm: xr.DataArray, *, log: bool = True, ax: Any = None,
                          title: str | None = None, cmap: str = "magma",
                          dynamic_range: float = 1e4) -> Any:
    """Bragg vector map (:func:`stem4d.bragg_vector_map`) in its q coordinates.

    Parameters
    ----------
    bvm
        ``(qx, qy)`` Bragg vector map.
    log
        Show ``log10(1 + I / (max / dynamic_range))``: weak reflections stay visible and
        empty bins are zero.
    dynamic_range
        With ``log``, the ratio of the maximum to the intensity shown at the first step.
    ax, title, cmap
        Axes to draw in (default: a new figure), title, colormap.

    Returns
    -------
    The matplotlib figure (``qy`` horizontal, ``qx`` vertical, as patterns are shown).
    """
    if not isinstance(bvm, xr.DataArray) or set(bvm.dims) != {"qx", "qy"}:
        got = tuple(bvm.dims) if isinstance(bvm, xr.DataArray) else type(bvm).__name__
        raise TypeError(f"bvm must be a (qx, qy) DataArray from stem4d.bragg_vector_map, "
                        f"got {got}")
    if not (np.isfinite(dynamic_range) and dynamic_range > 1):
        raise ValueError(f"dynamic_range must be a number > 1, got {dynamic_range!r}")
    bvm = bvm.transpose("qx", "qy")
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.8, 4))
    else:
        fig = ax.figure
    values = np.nan_to_num(np.asarray(bvm.values, dtype=float))
    peak = float(values.max()) if values.size else 0.0
    if log and peak > 0:
        shown = np.log10(1.0 + np.clip(values, 0, None) / (peak / dynamic_range))
        label = f"log10(1 + I / (max/{dynamic_range:g}))"
    else:
        shown, label = values, str(bvm.attrs.get("units", ""))
    image = ax.imshow(shown, extent=_extent(bvm, "qx", "qy"), cmap=cmap,
                      interpolation="nearest")
    ax.set_xlabel(_label(bvm, "qy"))
    ax.set_ylabel(_label(bvm, "qx"))
    sampling = bvm.attrs.get("sampling")
    ax.set_title(title if title is not None else
                 "Bragg vector map" + (f" (sampling {sampling:g})" if sampling else ""))
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    return fig
