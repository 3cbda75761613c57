"""Figures of strain maps and lattice bases (:mod:`stem4d.strain`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ._common import _extent, _label, _pyplot

_STRAINS = ("exx", "eyy", "exy")


def _symmetric(value: Any, argname: str) -> tuple[float, float] | None:
    """``None``, a half-range ``v`` -> ``(-v, v)``, or a pair ``(lo, hi)``."""
    if value is None:
        return None
    if np.ndim(value) == 0:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{argname} must be a number or a pair (low, high), got "
                            f"{value!r}") from None
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{argname} must be positive, got {value!r}")
        return -v, v
    try:
        lo, hi = (float(x) for x in value)
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be a number or a pair (low, high), got "
                        f"{value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{argname} must be a pair (low, high) with low < high, got {value!r}")
    return lo, hi


def _auto_limit(arrays: list[np.ndarray]) -> tuple[float, float]:
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays] + [np.zeros(0)])
    v = float(np.percentile(np.abs(vals), 99)) if vals.size else 0.0
    v = v if v > 0 else 1.0
    return -v, v


def _outline(region: np.ndarray, extent: list[float], color: str) -> Any:
    """Line segments along the pixel edges bounding a bool ``(rx, ry)`` region."""
    from matplotlib.collections import LineCollection

    nx, ny = region.shape
    left, right, bottom, top = extent  # x = ry horizontal, y = rx vertical (top = rx[0])
    dx, dy = (right - left) / ny, (bottom - top) / nx
    pad = np.pad(region, 1)
    segs = []
    rows, cols = np.nonzero(pad[1:, 1:-1] != pad[:-1, 1:-1])  # edge above row ``rows``
    for i, j in zip(rows, cols, strict=True):
        y = top + i * dy
        segs.append([(left + j * dx, y), (left + (j + 1) * dx, y)])
    rows, cols = np.nonzero(pad[1:-1, 1:] != pad[1:-1, :-1])  # edge left of column ``cols``
    for i, j in zip(rows, cols, strict=True):
        x = left + j * dx
        segs.append([(x, top + i * dy), (x, top + (i + 1) * dy)])
    return LineCollection(segs, colors=color, linewidths=1.5)


def show_strain(
    strain_ds: xr.Dataset,
    *,
    limits: Any = None,
    theta_limits: Any = None,
    reference_mask: Any = None,
    cmap: str = "RdBu_r",
    outline_color: str = "k",
) -> Any:
    """The four maps ``exx``, ``eyy``, ``exy`` (percent) and ``theta`` (degrees).

    Parameters
    ----------
    strain_ds
        Result of :func:`stem4d.strain_map`.
    limits
        Colour range of the three strains, percent: a half-range ``v`` (``-v .. v``) or a
        pair ``(low, high)``. Default: symmetric about 0 at the 99th percentile of
        ``|e|`` over the three maps. The three strains always share one scale.
    theta_limits
        Colour range of ``theta``, degrees (default: symmetric, its 99th percentile).
    reference_mask
        Bool ``(rx, ry)`` region to outline (default: the ``reference_region``
        coordinate of ``strain_ds`` when the strain is relative to a region).
    cmap, outline_color
        Diverging colormap; colour of the reference outline. Invalid (masked) positions
        are grey.

    Returns
    -------
    The matplotlib figure (``ry`` horizontal, ``rx`` vertical), titled with the frame.
    """
    if not isinstance(strain_ds, xr.Dataset) or not all(
            k in strain_ds for k in (*_STRAINS, "theta")):
        raise TypeError("strain_ds must be the Dataset of stem4d.strain_map (exx, eyy, exy, "
                        f"theta), got {type(strain_ds).__name__}")
    lims = _symmetric(limits, "limits")
    tlims = _symmetric(theta_limits, "theta_limits")
    if reference_mask is None and "reference_region" in strain_ds.coords:
        reference_mask = strain_ds.coords["reference_region"]
    region = None
    if reference_mask is not None:
        if isinstance(reference_mask, xr.DataArray):
            if set(reference_mask.dims) != {"rx", "ry"}:
                raise ValueError(f"reference_mask must have dims ('rx', 'ry'), got "
                                 f"{tuple(reference_mask.dims)}")
            reference_mask = reference_mask.transpose("rx", "ry").values
        region = np.asarray(reference_mask)
        shape = (strain_ds.sizes["rx"], strain_ds.sizes["ry"])
        if region.shape != shape or region.dtype != bool:
            raise ValueError(f"reference_mask must be a bool (rx, ry) array of shape {shape}, "
                             f"got {region.dtype} {region.shape}")
    maps = {k: 100.0 * np.asarray(strain_ds[k].transpose("rx", "ry").values, dtype=float)
            for k in _STRAINS}
    maps["theta"] = np.degrees(np.asarray(strain_ds["theta"].transpose("rx", "ry").values,
                                          dtype=float))
    if lims is None:
        lims = _auto_limit([maps[k] for k in _STRAINS])
    if tlims is None:
        tlims = _auto_limit([maps["theta"]])
    plt = _pyplot()
    colormap = plt.get_cmap(cmap).with_extremes(bad="0.6")
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), layout="constrained")
    ref = strain_ds["exx"].transpose("rx", "ry")
    extent = _extent(ref, "rx", "ry")
    titles = {"exx": "exx (%)", "eyy": "eyy (%)", "exy": "exy (%)", "theta": "theta (deg)"}
    for ax, key in zip(axes, (*_STRAINS, "theta"), strict=True):
        lo, hi = tlims if key == "theta" else lims
        im = ax.imshow(np.ma.masked_invalid(maps[key]), extent=extent, cmap=colormap,
                       vmin=lo, vmax=hi, interpolation="nearest")
        if region is not None and region.any() and not region.all():
            ax.add_collection(_outline(region, extent, outline_color))
        ax.set_xlabel(_label(ref, "ry"))
        ax.set_ylabel(_label(ref, "rx"))
        ax.set_title(titles[key])
        if key == "exy":  # one colour bar for the three strains (one scale)
            fig.colorbar(im, ax=list(axes[:3]), shrink=0.8, label="strain (%)")
        elif key == "theta":
            fig.colorbar(im, ax=ax, shrink=0.8, label="rotation (degrees)")
    frame = strain_ds.attrs.get("axes", strain_ds.attrs.get("frame", ""))
    reference = strain_ds.attrs.get("reference", "")
    fig.suptitle(f"strain relative to the reference lattice ({reference}); {frame}",
                 fontsize=10)
    return fig


def show_basis(basis: xr.Dataset, *, ax: Any = None, annotate: bool = True) -> Any:
    """Spots of the Bragg vector map and the chosen ``g1``, ``g2`` (:func:`choose_basis`).

    Each spot is numbered as in ``basis.spot_*`` (the numbers ``indices=`` of
    :func:`stem4d.choose_basis` take) and, when indexed, labelled ``(h, k)``. Returns the
    figure (``y`` horizontal, ``x`` vertical, as patterns are shown).
    """
    if not isinstance(basis, xr.Dataset) or "g1" not in basis or "g2" not in basis:
        raise TypeError("basis must be the Dataset of stem4d.choose_basis, got "
                        f"{type(basis).__name__}")
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 5))
    else:
        fig = ax.figure
    units = basis.attrs.get("vector_units", "")
    o = (0.0, 0.0)
    if "spot_x" in basis:
        sx, sy = basis["spot_x"].values, basis["spot_y"].values
        si = basis["spot_intensity"].values
        o = (float(sx[basis.attrs.get("origin_spot", 0)]),
             float(sy[basis.attrs.get("origin_spot", 0)]))
        size = 20 + 200 * np.sqrt(si / si.max())
        ax.scatter(sy, sx, s=size, c="0.4", alpha=0.6)
        if annotate:
            for i, (x, y) in enumerate(zip(sx, sy, strict=True)):
                h, k = basis["spot_h"].values[i], basis["spot_k"].values[i]
                lab = f"{i}" + (f" ({h + 0:.0f},{k + 0:.0f})" if np.isfinite(h) else "")
                ax.annotate(lab, (y, x), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    for name, color in (("g1", "tab:red"), ("g2", "tab:blue")):
        g = basis[name].values
        ax.annotate("", xy=(o[1] + g[1], o[0] + g[0]), xytext=(o[1], o[0]),
                    arrowprops={"arrowstyle": "->", "color": color, "lw": 2})
        ax.text(o[1] + g[1], o[0] + g[0], name, color=color)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    frame = basis.attrs.get("frame", "")
    ax.set_xlabel(f"y ({units})")
    ax.set_ylabel(f"x ({units})")
    ax.set_title(f"lattice basis ({frame} frame)")
    return fig
