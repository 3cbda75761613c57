"""Figures of probes, disk measurements and correlation kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..datacube import _as_pattern as _shared_as_pattern
from ._common import _label, _pattern_axes, _pyplot


def _as_pattern(image: Any) -> xr.DataArray:
    return _shared_as_pattern(image if hasattr(image, "ndim") else np.asarray(image), "image")


def _to_coords(pattern: xr.DataArray, ix: float, iy: float, r: float
               ) -> tuple[float, float, float, float]:
    """Pixel position/radius -> (qx, qy, radius along qx, radius along qy) in coords."""
    qx, qy = pattern.coords["qx"].values, pattern.coords["qy"].values
    sx = float(qx[1] - qx[0]) if qx.size > 1 else 1.0
    sy = float(qy[1] - qy[0]) if qy.size > 1 else 1.0
    return float(qx[0] + ix * sx), float(qy[0] + iy * sy), r * abs(sx), r * abs(sy)


def show_probe(
    probe: Any,
    *,
    disk: xr.Dataset | None = None,
    log: bool = False,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """A probe (or any pattern) with its detector coordinates; with ``disk`` (from
    :func:`stem4d.probe.measure_disk`) the measured disk is outlined and its centre
    marked. Returns the figure."""
    from matplotlib.patches import Ellipse

    pattern = _as_pattern(probe)
    fig, ax, im = _pattern_axes(pattern, ax, log)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if disk is not None:
        cx, cy, rx, ry = _to_coords(pattern, float(disk["qx0"]), float(disk["qy0"]),
                                    float(disk["radius"]))
        ax.add_patch(Ellipse((cy, cx), 2 * ry, 2 * rx, fill=False, color="cyan", lw=1.2))
        ax.plot([cy], [cx], "+", color="cyan", ms=10)
        ax.text(0.02, 0.98, f"r = {float(disk['radius']):.2f} px", transform=ax.transAxes,
                va="top", color="w", fontsize="small")
    ax.set_xlabel(_label(pattern, "qy"))
    ax.set_ylabel(_label(pattern, "qx"))
    ax.set_title(title if title is not None else str(pattern.name or "probe"))
    return fig


def show_disk_measurement(image: Any, disk: xr.Dataset) -> Any:
    """The image with the measured disk, and the threshold sweep ``r(t)`` with the
    stable range shaded and the chosen radius marked. Returns the figure."""
    plt = _pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 4))
    show_probe(image, disk=disk, ax=ax0, title="measured disk")
    ts = disk["threshold_sweep"].values
    ax1.plot(ts, disk["sweep_radius"].values, "-", color="C0")
    lo, hi = disk.attrs.get("stable_range", (ts[0], ts[0]))
    ax1.axvspan(lo, hi, color="C1", alpha=0.25, label="stable range")
    ax1.axhline(float(disk["radius"]), color="C3", lw=1,
                label=f"radius {float(disk['radius']):.2f} px")
    ax1.axvline(float(disk["threshold"]), color="k", lw=0.8, ls="--")
    ax1.set_xlabel("threshold (fraction of the range)")
    ax1.set_ylabel("effective radius sqrt(A / pi) (pixels)")
    ax1.legend(fontsize="small")
    fig.tight_layout()
    return fig


def show_kernel(kernel: xr.DataArray) -> Any:
    """A corner-centred kernel shown centred (``fftshift``), with its profile along
    ``qx`` through the centre. Returns the figure."""
    plt = _pyplot()
    values = np.asarray(kernel.values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"kernel must be 2-D (qx, qy), got shape {values.shape}")
    centred = np.fft.fftshift(values)
    nx, ny = values.shape
    offx, offy = np.arange(nx) - nx // 2, np.arange(ny) - ny // 2
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 4))
    lim = float(np.abs(centred).max()) or 1.0
    im = ax0.imshow(centred, cmap="RdBu_r", vmin=-lim, vmax=lim,
                    extent=[offy[0] - 0.5, offy[-1] + 0.5, offx[-1] + 0.5, offx[0] - 0.5])
    fig.colorbar(im, ax=ax0, shrink=0.8)
    ax0.set_xlabel("qy offset (pixels)")
    ax0.set_ylabel("qx offset (pixels)")
    ax0.set_title(f"kernel ({kernel.attrs.get('kernel', '?')})")
    ax1.plot(offx, centred[:, ny // 2], ".-")
    ax1.axhline(0, color="k", lw=0.6)
    ax1.set_xlabel("qx offset (pixels)")
    ax1.set_ylabel("kernel value")
    fig.tight_layout()
    return fig
