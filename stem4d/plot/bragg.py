"""Figures of detected Bragg disks (:mod:`stem4d.bragg`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ._common import _label, _pattern_axes


def show_peaks(
    pattern: xr.DataArray,
    peaks: xr.Dataset,
    rx: int = 0,
    ry: int = 0,
    *,
    log: bool = True,
    ax: Any = None,
    size: float = 120.0,
    title: str | None = None,
) -> Any:
    """Detected peaks drawn over a diffraction pattern; returns the figure.

    Parameters
    ----------
    pattern
        The pattern ``(qx, qy)`` (e.g. ``cube.isel(rx=rx, ry=ry)``), or the datacube
        itself, from which position ``(rx, ry)`` is taken. Its ``qx``/``qy``
        coordinates must be those of the detector the peaks were found on.
    peaks
        Peaks Dataset from :func:`stem4d.find_bragg_disks`.
    rx, ry
        Integer scan indices of the position whose peaks are shown.
    log
        Show log(1 + I - min) of the pattern.
    ax
        Axes to draw into (default: a new figure).
    size
        Marker area (points²) of the brightest peak; the area of each marker is
        proportional to its intensity.
    title
        Figure title (default: the position and its number of peaks).

    Returns
    -------
    The matplotlib figure. Circles mark the peaks; peaks whose subpixel refinement fell
    back to the parabolic estimate (``refinement_flag == 2``) are drawn as red crosses.
    """
    from ..bragg import _validate_peaks

    _validate_peaks(peaks, "peaks")
    if not isinstance(pattern, xr.DataArray):
        raise TypeError(f"pattern must be a (qx, qy) DataArray or a datacube, got "
                        f"{type(pattern).__name__}")
    for name, index in (("rx", rx), ("ry", ry)):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not (
                0 <= index < peaks.sizes[name]):
            raise ValueError(f"{name} must be an integer scan index in [0, "
                             f"{peaks.sizes[name]}), got {index!r}")
    if pattern.ndim == 4:
        pattern = pattern.isel(rx=rx, ry=ry)
    if set(pattern.dims) != {"qx", "qy"}:
        raise ValueError(f"pattern must have dims ('qx', 'qy'), got {tuple(pattern.dims)}")
    pattern = pattern.transpose("qx", "qy")
    shape = (peaks.sizes["detector_qx"], peaks.sizes["detector_qy"])
    if pattern.shape != shape:
        raise ValueError(f"pattern has shape {pattern.shape}, but the peaks were found on a "
                         f"{shape} detector")
    one = peaks.isel(rx=rx, ry=ry)
    qx = np.asarray(one["qx"].values, dtype=float)
    qy = np.asarray(one["qy"].values, dtype=float)
    inten = np.asarray(one["intensity"].values, dtype=float)
    ok = np.isfinite(qx) & np.isfinite(qy)
    flags = (np.asarray(one["refinement_flag"].values) if "refinement_flag" in one
             else np.zeros(qx.shape, dtype=int))
    fig, ax, _ = _pattern_axes(pattern, ax, log)
    top = np.nanmax(np.abs(inten[ok])) if ok.any() else 1.0
    areas = size * np.clip(np.abs(inten) / (top if top > 0 else 1.0), 0.05, 1.0)
    good = ok & (flags != 2)
    ax.scatter(qy[good], qx[good], s=areas[good], facecolors="none", edgecolors="cyan",
               linewidths=1.2, label="peaks")
    bad = ok & (flags == 2)
    if bad.any():
        ax.scatter(qy[bad], qx[bad], s=size / 3, marker="x", color="red",
                   label="refinement fell back")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel(_label(pattern, "qy"))
    ax.set_ylabel(_label(pattern, "qx"))
    ax.set_title(title if title is not None else
                 f"rx={rx}, ry={ry}: {int(ok.sum())} peaks")
    return fig
