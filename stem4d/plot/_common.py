"""Shared helpers of the plotting modules."""

from __future__ import annotations

from typing import Any

import xarray as xr


def _pyplot() -> Any:
    """matplotlib.pyplot, imported on first use (matplotlib picks Agg without a display)."""
    import matplotlib.pyplot as plt

    return plt


def _extent(da: xr.DataArray, ydim: str, xdim: str) -> list[float]:
    y, x = da.coords[ydim].values, da.coords[xdim].values
    dy = (y[1] - y[0]) if y.size > 1 else 1.0
    dx = (x[1] - x[0]) if x.size > 1 else 1.0
    return [x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2]


def _label(da: xr.DataArray, dim: str) -> str:
    return f"{dim} ({da.coords[dim].attrs.get('units', 'pixels')})"


def _pattern_axes(pattern: xr.DataArray, ax: Any, log: bool) -> tuple[Any, Any, Any]:
    """``(fig, ax, image)``: a ``(qx, qy)`` pattern shown (log(1 + I - min) if ``log``)."""
    import numpy as np

    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4))
    else:
        fig = ax.figure
    values = np.asarray(pattern.values, dtype=float)
    shown = np.log1p(values - np.nanmin(values)) if log else values
    image = ax.imshow(shown, extent=_extent(pattern, "qx", "qy"), cmap="magma")
    return fig, ax, image
