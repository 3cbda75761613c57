"""The result of a reconstruction as an :class:`xarray.DataTree`, and its figures.

Layout::

    /            attrs: params (JSON text), wavelength (Å), pixel_size (Å),
                 detector_pixel_size (1/Å), timings, device
    /object      amplitude, phase (rad): (object_mode, slice, rx, ry); rx, ry in Å
                 (scan frame: the first raster position is at (0, 0)); z (slice) in Å;
                 tilts (tilt, component): object tilt (rx, ry) in mrad, one row or
                 one per position
    /probe       probe (complex): (probe_mode, rx, ry), rx, ry in Å from the window
                 centre; power (probe_mode): fraction of the intensity per mode; the
                 probe is scaled so Σ_modes Σ_r |ψ|² = mean total counts of a pattern
    /positions   positions, initial_positions: (scan, component) in Å (probe centres,
                 scan frame), component = ["rx", "ry"]
    /loss        loss: (iteration,)

Saved with :func:`stem4d.save` (complex data included). Plots take the result and
return a matplotlib figure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["make_result", "plot_object_phase", "plot_probe_modes", "plot_loss",
           "write_outputs", "result_params"]


def make_result(
    *,
    amplitude: np.ndarray,
    phase: np.ndarray,
    probe: np.ndarray,
    positions: np.ndarray,
    initial_positions: np.ndarray,
    object_offset: Sequence[float],
    pixel_size: float,
    slice_thickness: float,
    loss: Sequence[float],
    params_json: str,
    info: dict[str, Any] | None = None,
    tilts: np.ndarray | None = None,
) -> xr.DataTree:
    """Assemble the result DataTree.

    ``amplitude``/``phase`` ``(O, S, H, W)``; ``probe`` ``(M, N, N)`` complex;
    ``positions`` ``(n, 2)`` Å; ``object_offset`` the object pixel (row, column) of
    the scan-frame origin; ``pixel_size`` Å; ``slice_thickness`` Å; ``tilts`` ``(1, 2)``
    or ``(n, 2)`` object tilts, mrad (stored as ``/object/tilts``).
    """
    n_om, n_sl, h, w = amplitude.shape
    rx = (np.arange(h) - object_offset[0]) * pixel_size
    ry = (np.arange(w) - object_offset[1]) * pixel_size
    obj = xr.Dataset(
        {
            "amplitude": (("object_mode", "slice", "rx", "ry"), amplitude.astype(np.float32),
                          {"units": "1", "long_name": "object amplitude"}),
            "phase": (("object_mode", "slice", "rx", "ry"), phase.astype(np.float32),
                      {"units": "rad", "long_name": "object phase"}),
        },
        coords={
            "rx": ("rx", rx, {"units": "Å", "step": pixel_size}),
            "ry": ("ry", ry, {"units": "Å", "step": pixel_size}),
            "z": ("slice", np.arange(n_sl) * slice_thickness, {"units": "Å"}),
            "object_mode": np.arange(n_om),
            "slice": np.arange(n_sl),
        },
    )
    if tilts is not None:
        obj["tilts"] = xr.Variable(("tilt", "component"), np.asarray(tilts, dtype=float),
                                   {"units": "mrad", "long_name": "object tilt (rx, ry)"})
        obj = obj.assign_coords(component=["rx", "ry"])
    m, n, _ = probe.shape
    power = np.sum(np.abs(probe) ** 2, axis=(1, 2))
    px = (np.arange(n) - n // 2) * pixel_size
    prb = xr.Dataset(
        {
            "probe": (("probe_mode", "rx", "ry"), probe.astype(np.complex64),
                      {"long_name": "probe modes (real space)"}),
            "power": ("probe_mode", power / power.sum(), {"units": "1"}),
        },
        coords={"rx": ("rx", px, {"units": "Å", "step": pixel_size}),
                "ry": ("ry", px.copy(), {"units": "Å", "step": pixel_size}),
                "probe_mode": np.arange(m)},
    )
    pos = xr.Dataset(
        {"positions": (("scan", "component"), np.asarray(positions, float), {"units": "Å"}),
         "initial_positions": (("scan", "component"), np.asarray(initial_positions, float),
                               {"units": "Å"})},
        coords={"component": ["rx", "ry"]},
    )
    lo = xr.Dataset({"loss": ("iteration", np.asarray(loss, dtype=float))},
                    coords={"iteration": np.arange(1, len(loss) + 1)})
    attrs = {"params": params_json, "stem4d_product": "ptychography"}
    attrs.update(info or {})
    root = xr.Dataset(attrs=attrs)
    return xr.DataTree.from_dict(
        {"/": root, "/object": obj, "/probe": prb, "/positions": pos, "/loss": lo},
        name="ptychography")


def result_params(result: xr.DataTree) -> dict[str, Any]:
    """The parameters of a result as a dict (load with :func:`stem4d.ptycho.load_params`)."""
    return json.loads(result.attrs["params"])


def plot_object_phase(result: xr.DataTree, *, mode: int = 0, slices: Sequence[int] | None = None,
                      sum_slices: bool = False, positions: bool = True,
                      vmin: float | None = None, vmax: float | None = None):
    """Object phase (rad) per slice (or summed), with the probe positions.

    The grey scale spans the 0.5-99.5 percentiles of the phase inside the scanned area
    (the bounding box of the probe positions; the unscanned border is unconstrained),
    unless ``vmin``/``vmax`` (rad) are given. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    phase = result["object"]["phase"].isel(object_mode=mode)
    if sum_slices:
        panels = [("phase, sum over slices", phase.sum("slice"))]
    else:
        idx = range(phase.sizes["slice"]) if slices is None else slices
        panels = [(f"slice {s}", phase.isel(slice=s)) for s in idx]
    pos = result["positions"]["positions"].values
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels, strict=True):
        scanned = img.sel(rx=slice(pos[:, 0].min(), pos[:, 0].max()),
                          ry=slice(pos[:, 1].min(), pos[:, 1].max())).values
        if scanned.size == 0:
            scanned = img.values
        lo, hi = np.nanpercentile(scanned, [0.5, 99.5])
        extent = [float(img.ry[0]), float(img.ry[-1]), float(img.rx[-1]), float(img.rx[0])]
        im = ax.imshow(img.values, cmap="gray", extent=extent,
                       vmin=lo if vmin is None else vmin, vmax=hi if vmax is None else vmax)
        if positions:
            ax.plot(pos[:, 1], pos[:, 0], ".", markersize=1.5, color="tab:orange", alpha=0.6)
        ax.set_title(title)
        ax.set_xlabel("ry (Å)")
        ax.set_ylabel("rx (Å)")
        fig.colorbar(im, ax=ax, label="phase (rad)", shrink=0.8)
    fig.tight_layout()
    return fig


def plot_probe_modes(result: xr.DataTree):
    """Amplitude of each probe mode, titled with its power. Returns the figure."""
    import matplotlib.pyplot as plt

    probe = result["probe"]["probe"]
    power = result["probe"]["power"].values
    m = probe.sizes["probe_mode"]
    fig, axes = plt.subplots(1, m, figsize=(3.2 * m, 3.2), squeeze=False)
    for k, ax in enumerate(axes[0]):
        img = np.abs(probe.isel(probe_mode=k).values)
        extent = [float(probe.ry[0]), float(probe.ry[-1]), float(probe.rx[-1]),
                  float(probe.rx[0])]
        ax.imshow(img, cmap="magma", extent=extent)
        ax.set_title(f"mode {k}: {100 * power[k]:.1f} %")
        ax.set_xlabel("ry (Å)")
        if k == 0:
            ax.set_ylabel("rx (Å)")
    fig.tight_layout()
    return fig


def plot_loss(result: xr.DataTree):
    """Loss per iteration (log scale). Returns the figure."""
    import matplotlib.pyplot as plt

    loss = result["loss"]["loss"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(loss.iteration.values, loss.values, "-o", ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def write_outputs(result: xr.DataTree, directory: str | os.PathLike, *, name: str = "ptycho",
                  figures: bool = True) -> dict[str, Path]:
    """Save ``<directory>/<name>.nc`` (:func:`stem4d.save`) and, with ``figures``, the PNGs
    ``object_phase.png``, ``probe_modes.png`` and ``loss.png``. Returns the paths."""
    from ..io import save

    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"result": save(result, out / f"{name}.nc")}
    if figures:
        import matplotlib.pyplot as plt

        for key, fn in (("object_phase", plot_object_phase), ("probe_modes", plot_probe_modes),
                        ("loss", plot_loss)):
            fig = fn(result)
            paths[key] = out / f"{key}.png"
            fig.savefig(paths[key], dpi=120)
            plt.close(fig)
    return paths
