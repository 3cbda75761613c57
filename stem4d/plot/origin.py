"""Figures of the measured and fitted origin (:mod:`stem4d.origin`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ._common import _extent, _label, _pyplot


def _map(ax: Any, fig: Any, da: xr.DataArray, title: str, cmap: str,
         limits: tuple[float, float] | None = None) -> None:
    values = np.asarray(da.values, dtype=float)
    kwargs: dict[str, Any] = {}
    if limits is not None:
        kwargs = {"vmin": limits[0], "vmax": limits[1]}
    im = ax.imshow(values, extent=_extent(da, "rx", "ry"), cmap=cmap, **kwargs)
    ax.set_xlabel(_label(da, "ry"))
    ax.set_ylabel(_label(da, "rx"))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label=da.attrs.get("units", ""))


def show_origin(origin_ds: xr.Dataset, fit: xr.Dataset | None = None, *,
                cmap: str = "viridis", residual_cmap: str = "RdBu_r") -> Any:
    """Maps of the origin over the scan; returns the figure.

    Parameters
    ----------
    origin_ds
        Measured origin (:func:`stem4d.measure_origin`): ``qx0``, ``qy0`` over
        ``(rx, ry)``, pixels. A :func:`stem4d.fit_origin` result is accepted too (its
        measured, fitted and residual maps are shown).
    fit
        Optional :func:`stem4d.fit_origin` result: adds rows of fitted values and of
        residuals (measured − fitted, symmetric colour scale set by the positions used;
        positions left out of the fit are crossed). Measured and fitted maps share the
        fitted values' colour scale, so outliers saturate.

    Returns
    -------
    The matplotlib figure: one column per component (``qx0``, ``qy0``), one row each for
    measured, fitted and residual.
    """
    if not isinstance(origin_ds, xr.Dataset) or "qx0" not in origin_ds or "qy0" not in origin_ds:
        raise TypeError("origin_ds must be a Dataset with qx0 and qy0 (from measure_origin "
                        f"or fit_origin), got {type(origin_ds).__name__}")
    if fit is None and "qx0_measured" in origin_ds:
        fit = origin_ds
    if fit is not None and not all(k in fit for k in ("qx0", "qx0_residual", "used")):
        raise ValueError("fit must be the Dataset returned by stem4d.fit_origin")
    measured = origin_ds
    if "qx0_measured" in origin_ds:
        measured = xr.Dataset({"qx0": origin_ds["qx0_measured"], "qy0": origin_ds["qy0_measured"]})
    plt = _pyplot()
    nrows = 1 if fit is None else 3
    fig, axes = plt.subplots(nrows, 2, figsize=(9, 3.6 * nrows), squeeze=False)
    for col, name in enumerate(("qx0", "qy0")):
        if fit is None:
            _map(axes[0, col], fig, measured[name], f"{name} measured", cmap)
            continue
        # measured and fitted share a colour scale, set by the fit (outliers saturate)
        fitted = np.asarray(fit[name].values, dtype=float)
        limits = (float(np.nanmin(fitted)), float(np.nanmax(fitted)))
        if limits[1] <= limits[0]:
            limits = (limits[0] - 0.5, limits[0] + 0.5)
        _map(axes[0, col], fig, measured[name], f"{name} measured", cmap, limits)
        _map(axes[1, col], fig, fit[name], f"{name} fit ({fit.attrs.get('model', '')})", cmap,
             limits)
        res = fit[f"{name}_residual"]
        used = np.asarray(fit["used"].values, dtype=bool)
        size = np.abs(np.asarray(res.values, dtype=float))[used]
        size = size[np.isfinite(size)]
        vlim = float(size.max()) if size.size and size.max() > 0 else 1.0
        rms = fit.get(f"{name}_rms")
        title = f"{name} residual" + ("" if rms is None else f" (RMS {float(rms):.3g} px)")
        _map(axes[2, col], fig, res, title, residual_cmap, (-vlim, vlim))
        unused = ~used
        if unused.any():
            ix, iy = np.nonzero(unused)
            rx = np.asarray(res.coords["rx"].values)[ix]
            ry = np.asarray(res.coords["ry"].values)[iy]
            axes[2, col].plot(ry, rx, "kx", markersize=4, label="not used")
            axes[2, col].legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig
