"""Figures of virtual images and diffraction patterns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ._common import _extent, _label, _pattern_axes, _pyplot


def show_image(image: xr.DataArray, *, ax: Any = None, title: str | None = None,
               cmap: str = "gray") -> Any:
    """Real-space image ``(rx, ry)`` with its scan coordinates; returns the figure."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4))
    else:
        fig = ax.figure
    values = np.asarray(image.values)
    im = ax.imshow(values, extent=_extent(image, "rx", "ry"), cmap=cmap)
    ax.set_xlabel(_label(image, "ry"))
    ax.set_ylabel(_label(image, "rx"))
    ax.set_title(title if title is not None else str(image.name or ""))
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def show_diffraction(
    pattern: xr.DataArray,
    *,
    detectors: xr.DataArray | Sequence[xr.DataArray] | Mapping[str, xr.DataArray] | None = None,
    log: bool = True,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Diffraction pattern ``(qx, qy)`` with optional detector outlines on top.

    This is how a detector is positioned by eye (py4DSTEM's ``position_detector``):
    pass the mean or max pattern and the detector(s); each outline is drawn in colour.
    ``log`` shows log(1 + I - min).
    """
    plt = _pyplot()
    fig, ax, _ = _pattern_axes(pattern, ax, log)
    if detectors is not None:
        if isinstance(detectors, xr.DataArray):
            items = [(detectors.name or "detector", detectors)]
        elif isinstance(detectors, Mapping):
            items = list(detectors.items())
        else:
            items = [(d.name or f"detector {i}", d) for i, d in enumerate(detectors)]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        qy, qx = pattern.coords["qy"].values, pattern.coords["qx"].values
        for i, (name, det) in enumerate(items):
            mask = np.asarray(det.values, dtype=float)
            ax.contour(qy, qx, mask, levels=[0.5 * mask.max()], colors=colors[i % len(colors)],
                       linewidths=1.2)
            ax.plot([], [], color=colors[i % len(colors)], label=str(name))
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel(_label(pattern, "qy"))
    ax.set_ylabel(_label(pattern, "qx"))
    ax.set_title(title if title is not None else str(pattern.name or ""))
    return fig


position_detector = show_diffraction


def show_images(images: xr.Dataset, *, ncols: int = 3) -> Any:
    """Every ``(rx, ry)`` variable of a Dataset side by side; returns the figure."""
    plt = _pyplot()
    names = [n for n, v in images.data_vars.items() if v.dims == ("rx", "ry")]
    if not names:
        raise ValueError("images has no (rx, ry) variable to show")
    ncols = min(ncols, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 4 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        show_image(images[name], ax=ax, title=str(name))
    for ax in axes.ravel()[len(names):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
