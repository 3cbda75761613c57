"""Figures of centre-of-mass / DPC maps, the iDPC phase and the orientation search."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ._common import _extent, _label, _pyplot

__all__ = ["show_com", "show_orientation"]


def _map(ax: Any, fig: Any, image: xr.DataArray, title: str, cmap: str) -> None:
    values = np.asarray(image.transpose("rx", "ry").values, dtype=float)
    if cmap == "RdBu_r":
        lim = float(np.nanmax(np.abs(values))) if np.any(np.isfinite(values)) else 1.0
        im = ax.imshow(values, extent=_extent(image, "rx", "ry"), cmap=cmap,
                       vmin=-lim, vmax=lim)
    else:
        im = ax.imshow(values, extent=_extent(image, "rx", "ry"), cmap=cmap)
    ax.set_xlabel(_label(image, "ry"))
    ax.set_ylabel(_label(image, "rx"))
    units = image.attrs.get("units", "")
    ax.set_title(f"{title} ({units})" if units else title)
    fig.colorbar(im, ax=ax, shrink=0.8)


def show_com(com: xr.Dataset, phase: xr.DataArray | None = None, *,
             figsize: tuple[float, float] | None = None) -> Any:
    """Maps of the centre of mass or DPC signal, its magnitude, and the iDPC phase.

    Parameters
    ----------
    com
        Dataset of :func:`stem4d.center_of_mass` (``com_qx``/``com_qy``, detector frame),
        of :func:`stem4d.rotate_com` (``com_rx``/``com_ry``, scan frame) or of
        :func:`stem4d.dpc` (``dpc_qx``/``dpc_qy``, dimensionless, detector frame).
    phase
        Optional ``(rx, ry)`` phase of :func:`stem4d.integrate_com`, shown last.

    Returns
    -------
    The matplotlib figure.
    """
    if not isinstance(com, xr.Dataset):
        raise TypeError(f"com must be a centre-of-mass or DPC Dataset, got {type(com).__name__}")
    pairs = (["com_qx", "com_qy"], ["com_rx", "com_ry"], ["dpc_qx", "dpc_qy"])
    names = next((pair for pair in pairs if all(n in com for n in pair)), None)
    if names is None:
        raise ValueError(
            "com must hold com_qx/com_qy (stem4d.center_of_mass), com_rx/com_ry "
            f"(stem4d.rotate_com) or dpc_qx/dpc_qy (stem4d.dpc), got {list(com.data_vars)}")
    panels = [(com[n], n, "RdBu_r") for n in names]
    magnitude = com["com_magnitude"] if "com_magnitude" in com else np.hypot(
        com[names[0]], com[names[1]]).assign_attrs(units=com[names[0]].attrs.get("units", ""))
    panels.append((magnitude, "magnitude", "magma"))
    if phase is not None:
        if not isinstance(phase, xr.DataArray) or set(phase.dims) != {"rx", "ry"}:
            raise ValueError("phase must be an (rx, ry) DataArray from stem4d.integrate_com")
        panels.append((phase, "iDPC phase", "gray"))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels),
                             figsize=figsize or (4.2 * len(panels), 3.8), squeeze=False)
    for ax, (image, title, cmap) in zip(axes[0], panels, strict=True):
        _map(ax, fig, image, title, cmap)
    fig.tight_layout()
    return fig


def show_orientation(result: xr.Dataset, *, figsize: tuple[float, float] = (8.0, 5.0)
                     ) -> Any:
    """RMS curl and phase contrast against the trial rotation, for each flip.

    ``result`` is the Dataset of :func:`stem4d.find_orientation`; the chosen rotation
    is marked by a solid line, the rejected ``+ 180°`` twin by a dashed one. Angles are
    shown in degrees. Returns the figure.
    """
    if not isinstance(result, xr.Dataset) or "curl" not in result or "angle" not in result.dims:
        raise ValueError("result must be the Dataset returned by stem4d.find_orientation")
    plt = _pyplot()
    fig, (ax_c, ax_p) = plt.subplots(2, 1, figsize=figsize, sharex=True)
    angles = np.degrees(result.coords["angle"].values)
    for flip in result.coords["flip"].values:
        label = "flip" if flip else "no flip"
        ax_c.plot(angles, result["curl"].sel(flip=flip).values, label=label)
        ax_p.plot(angles, result["phase_std"].sel(flip=flip).values, label=label)
    if "scan_rotation" in result.coords:
        best = float(np.degrees(result.coords["scan_rotation"].values))
        twin = (best + 360.0) % 360.0 - 180.0
        for ax in (ax_c, ax_p):
            ax.axvline(best, color="k", lw=1.2)
            ax.axvline(twin, color="k", lw=0.8, ls="--")
        flip = bool(result.coords["scan_flip"].values)
        ax_c.set_title(f"scan_rotation {best:.2f}°, scan_flip {flip} "
                       f"({result.attrs.get('method', '')})")
    ax_c.set_ylabel("RMS curl")
    ax_p.set_ylabel("phase std")
    ax_p.set_xlabel("trial scan_rotation (°)")
    ax_c.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig
