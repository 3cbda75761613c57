"""Figures of detector calibrations: the fitted ellipse, the radial background."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..datacube import _as_pattern
from ._common import _extent, _label, _pyplot


def _axes(ax: Any, figsize: tuple[float, float] = (4.5, 4)) -> tuple[Any, Any]:
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def show_ellipse(
    image: xr.DataArray | np.ndarray,
    ellipse: xr.Dataset,
    *,
    radii: Sequence[float] | None = None,
    log: bool = True,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """A ``(qx, qy)`` image with the ellipse of :func:`stem4d.calibrate.fit_ellipse` on top.

    The fitted ring (semi-axes ``a``, ``b`` at ``theta`` from ``qx`` towards ``qy``) is drawn
    with its centre and major axis; ``radii`` (coordinate units, e.g. the fit's
    ``attrs["radii"]``) adds the annulus used for the fit, about the fitted centre.
    Rows (``qx``) run down, columns (``qy``) to the right. ``log`` shows log(1 + I - min).
    ``image`` is a ``(qx, qy)`` DataArray or a 2-D array (drawn in pixels from 0, as
    ``fit_ellipse`` reads it: fit it with ``center=(row, col), pixels=True``).
    Returns the figure.
    """
    image = _as_pattern(image if hasattr(image, "ndim") else np.asarray(image), "image")
    fig, ax = _axes(ax)
    values = np.asarray(image.values, dtype=float)
    shown = np.log1p(values - np.nanmin(values)) if log else values
    ax.imshow(shown, extent=_extent(image, "qx", "qy"), cmap="magma")
    x0, y0 = float(ellipse["qx0"]), float(ellipse["qy0"])
    a, b, theta = float(ellipse["a"]), float(ellipse["b"]), float(ellipse["theta"])
    t = np.linspace(0, 2 * np.pi, 361)
    c, s = np.cos(theta), np.sin(theta)
    ex, ey = a * np.cos(t), b * np.sin(t)
    qx, qy = x0 + c * ex - s * ey, y0 + s * ex + c * ey
    ax.plot(qy, qx, color="cyan", lw=1.2, label=f"a/b = {a / b:.4f}, "
                                                 f"θ = {np.degrees(theta):.2f}°")
    ax.plot([y0 - s * a, y0 + s * a], [x0 - c * a, x0 + c * a], color="cyan", lw=0.8, ls=":")
    ax.plot([y0], [x0], "+", color="cyan", ms=10)
    if radii is not None:
        for r in radii:
            ax.plot(y0 + r * np.sin(t), x0 + r * np.cos(t), color="white", lw=0.8, ls="--")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel(_label(image, "qy"))
    ax.set_ylabel(_label(image, "qx"))
    ax.set_title(title if title is not None else "fitted ellipse")
    return fig


def show_radial_background(
    background: xr.Dataset,
    *,
    pattern: xr.DataArray | None = None,
    log: bool = False,
    title: str | None = None,
) -> Any:
    """The result of :func:`stem4d.calibrate.radial_background`: profile and image.

    Left: the ring-median profile against ``q`` (for a cube, the scan mean with the
    5-95 % range over positions shaded). Right: the background image (scan mean for a
    cube), or, with ``pattern``, the pattern minus its background. Returns the figure.
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    prof = background["profile"]
    q = prof.coords["q"].values
    extra = [d for d in prof.dims if d != "q"]
    if extra:
        flat = np.asarray(prof.transpose(*extra, "q").values).reshape(-1, q.size)
        lo, hi = np.percentile(flat, [5, 95], axis=0)
        ax1.fill_between(q, lo, hi, alpha=0.3, label="5-95 % over scan")
        ax1.plot(q, flat.mean(axis=0), label="scan mean")
        ax1.legend(fontsize="small")
        image = background["background"].mean(extra)
    else:
        ax1.plot(q, np.asarray(prof.values))
        image = background["background"]
    if log:
        ax1.set_yscale("log")
    ax1.set_xlabel(f"|q| ({prof.coords['q'].attrs.get('units', 'pixels')})")
    ax1.set_ylabel(f"ring median ({prof.attrs.get('units', '')})")
    ax1.set_title(title if title is not None else "radial background")
    shown, name = image, "background"
    if pattern is not None:
        shown, name = pattern - image, "pattern - background"
    im = ax2.imshow(np.asarray(shown.transpose("qx", "qy").values, dtype=float),
                    extent=_extent(image, "qx", "qy"), cmap="magma")
    fig.colorbar(im, ax=ax2, shrink=0.8)
    ax2.set_xlabel(_label(image, "qy"))
    ax2.set_ylabel(_label(image, "qx"))
    ax2.set_title(name)
    fig.tight_layout()
    return fig
