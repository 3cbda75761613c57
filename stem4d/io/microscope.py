"""Microscope file formats through RosettaSciIO (optional, GPL-3.0).

RosettaSciIO (``rsciio``) reads Gatan DigitalMicrograph (dm3/dm4), Quantum Detectors
Merlin (mib), MRC, TVIPS, blockfiles (blo), Velox/NCEM EMD, HyperSpy (hspy/zspy) and
more. stem4d calls it only through its public plugin API (``file_reader``) and never
ships its code; install it with ``pip install "stem4d[formats]"``.

Each plugin returns signals as dicts with ``data`` and ``axes`` (``name``, ``size``,
``scale``, ``offset``, ``units``, ``navigate``, optionally ``index_in_array``) in
array order; HyperSpy's ``(x, y)`` axes are stored as ``[..., y, x]``, so the first
navigation axis in array order is the slow scan axis (``rx``) and the first signal
axis the detector rows (``qx``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..datacube import Q_UNITS, R_UNITS, datacube, set_beam
from ._common import existing_path
from .chunks import scan_row_chunks

__all__ = ["read_rsciio", "rsciio_extensions"]

INSTALL_HINT = (
    'RosettaSciIO is needed to read this format: pip install "stem4d[formats]" '
    "(RosettaSciIO, GPL-3.0, optional)"
)
_PREFERRED = {"mrc": "MRC"}  # extension -> plugin tried first when several match


def _plugins() -> list[dict[str, Any]]:
    try:
        import rsciio
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return list(rsciio.IO_PLUGINS)


def rsciio_extensions() -> list[str]:
    """Lower-case file extensions RosettaSciIO reads (empty if it is not installed)."""
    try:
        plugins = _plugins()
    except ImportError:
        return []
    return sorted({e.lower() for p in plugins for e in p["file_extensions"]})


def _candidates(path: Path, reader: str | None) -> list[dict[str, Any]]:
    plugins = _plugins()
    if reader is not None:
        wanted = reader.lower()
        for plugin in plugins:
            names = [plugin["name"], *plugin.get("name_aliases", []), plugin["api"],
                     plugin["api"].rsplit(".", 1)[-1]]
            if wanted in (n.lower() for n in names):
                return [plugin]
        raise ValueError(
            f"reader must name a RosettaSciIO plugin, got {reader!r}; known: "
            f"{sorted(p['name'] for p in plugins)}"
        )
    ext = path.suffix.lstrip(".").lower()
    found = [p for p in plugins if ext in (e.lower() for e in p["file_extensions"])]
    if not found:
        raise ValueError(
            f"no RosettaSciIO reader for {path} (suffix {path.suffix!r}); it reads: "
            f"{', '.join(rsciio_extensions())}"
        )
    first = _PREFERRED.get(ext)
    return sorted(found, key=lambda p: p["name"] != first)


def _import(plugin: dict[str, Any]) -> Any:
    try:
        return importlib.import_module(plugin["api"])
    except ImportError as err:
        raise ImportError(
            f"RosettaSciIO's {plugin['name']} reader needs a package that is not "
            f"installed: {err}"
        ) from err


def _units_text(axis: dict[str, Any]) -> str | None:
    units = axis.get("units")
    if not isinstance(units, str) or units.strip() in ("", "<undefined>"):
        return None
    return units.strip()


def _axis_step_offset(axis: dict[str, Any]) -> tuple[float, float]:
    if "axis" in axis and axis["axis"] is not None and len(axis["axis"]) >= 2:
        vec = np.asarray(axis["axis"], dtype=float)
        return float(vec[1] - vec[0]), float(vec[0])
    return float(axis.get("scale", 1.0) or 1.0), float(axis.get("offset", 0.0) or 0.0)


def _calibrate(axes: list[dict[str, Any]], kind: str, path: Path) -> tuple[Any, str, list]:
    """Steps, canonical units and offsets (in those units) of two r or q axes."""
    steps, offsets, units = [], [], []
    for axis in axes:
        step, offset = _axis_step_offset(axis)
        text = _units_text(axis)
        table = R_UNITS if kind == "r" else Q_UNITS
        if text in table and table[text][0] != "pixels":
            unit, factor = table[text]
        elif text is None and step == 1.0 and offset == 0.0:
            unit, factor = "pixels", 1.0
        else:
            warnings.warn(
                f"{path}: axis {axis.get('name')!r} has units {text!r} (scale {step}), "
                f"which stem4d does not know for {'scan' if kind == 'r' else 'detector'} "
                "axes; using pixels", stacklevel=4,
            )
            unit, factor, step, offset = "pixels", 1.0, 1.0, 0.0
        steps.append(step * factor)
        offsets.append(offset * factor)
        units.append(unit)
    if len(set(units)) > 1 or any(s <= 0 for s in steps):
        warnings.warn(f"{path}: inconsistent {kind} axes {units}, {steps}; using pixels",
                      stacklevel=4)
        return (1.0, 1.0), "pixels", [0.0, 0.0]
    return tuple(steps), units[0], offsets


def _sorted_axes(signal: dict[str, Any]) -> list[dict[str, Any]]:
    axes = [dict(a) for a in signal["axes"]]
    ndim = len(axes)
    for i, axis in enumerate(axes):
        axis.setdefault("index_in_array", i)
        if axis.get("navigate") is None:
            axis["navigate"] = i < ndim - 2
    return sorted(axes, key=lambda a: int(a["index_in_array"]))


def _is_4d(signal: dict[str, Any]) -> bool:
    axes = _sorted_axes(signal)
    return len(axes) == 4 and sum(bool(a["navigate"]) for a in axes) == 2


def _beam(metadata: dict[str, Any]) -> tuple[float | None, float | None]:
    tem = (metadata.get("Acquisition_instrument") or {}).get("TEM") or {}
    energy = tem.get("beam_energy")  # kV
    conv = tem.get("convergence_angle")  # mrad
    energy = float(energy) * 1000.0 if isinstance(energy, (int, float, np.number)) \
        and energy > 0 else None
    conv = float(conv) if isinstance(conv, (int, float, np.number)) and conv > 0 else None
    return energy, conv


def _to_dataarray(signal: dict[str, Any], path: Path, plugin: str) -> xr.DataArray:
    axes = _sorted_axes(signal)
    data = signal["data"]
    nav = [a for a in axes if a["navigate"]]
    sig = [a for a in axes if not a["navigate"]]
    if len(sig) != 2:
        raise ValueError(
            f"{path} holds a signal with {len(sig)} signal axes "
            f"{[a.get('name') for a in sig]}; stem4d reads diffraction data (2 signal axes)"
        )
    order = [int(a["index_in_array"]) for a in nav + sig]
    if order != list(range(len(order))):
        data = data.transpose(order)
    metadata = signal.get("metadata") or {}
    title = (metadata.get("General") or {}).get("title") or path.stem
    attrs = {"source_file": str(path.resolve()), "source_format": f"RosettaSciIO {plugin}"}
    signal_type = (metadata.get("Signal") or {}).get("signal_type")
    if signal_type:
        attrs["signal_type"] = signal_type
    q_step, q_units, q_off = _calibrate(sig, "q", path)
    if len(nav) == 2:
        r_step, r_units, r_off = _calibrate(nav, "r", path)
        cube = datacube(data, r_step=r_step, r_units=r_units, q_step=q_step,
                        q_units=q_units, name=str(title), attrs=attrs)
        shifts = dict(zip(("rx", "ry", "qx", "qy"), (*r_off, *q_off), strict=True))
        cube = cube.assign_coords({
            dim: xr.Variable((dim,), cube[dim].values + shift, attrs=cube[dim].attrs)
            for dim, shift in shifts.items() if shift != 0.0
        })
    else:
        dims = [f"nav{i}" for i in range(len(nav) - 1)] + ["scan"] if nav else []
        dims = dims + ["qx", "qy"]
        coords = {}
        for dim, axis in zip(dims, nav + sig, strict=True):
            if dim in ("qx", "qy"):
                i = dims.index(dim) - len(nav)
                values = q_off[i] + q_step[i] * np.arange(data.shape[dims.index(dim)])
                coords[dim] = xr.Variable((dim,), values, attrs={"units": q_units})
            else:
                step, offset = _axis_step_offset(axis)
                values = offset + step * np.arange(data.shape[dims.index(dim)])
                coords[dim] = xr.Variable((dim,), values,
                                          attrs={"units": _units_text(axis) or "pixels"})
        cube = xr.DataArray(data, dims=dims, coords=coords, name=str(title), attrs=attrs)
    energy, conv = _beam(metadata)
    if energy is not None or conv is not None:
        cube = set_beam(cube, beam_energy=energy, convergence_semiangle=conv)
    return cube


def read_rsciio(
    path: str | os.PathLike,
    *,
    reader: str | None = None,
    chunks: Any = "auto",
    **kwargs: Any,
) -> xr.DataArray:
    """Read a microscope file through RosettaSciIO as a (lazy) datacube.

    Parameters
    ----------
    path
        Any file RosettaSciIO reads (dm3, dm4, mib, mrc, tvips, blo, emd, hspy, ...).
    reader
        RosettaSciIO plugin name (``"QuantumDetector"``, ``"DigitalMicrograph"``,
        ``"HSPY"``, ...); by default chosen by the file extension (when several
        plugins claim it, each is tried in turn).
    chunks
        ``"auto"`` (or None): whole scan rows, for readers that take ``chunks``; other
        values are passed to the reader as they are.
    **kwargs
        Passed to the plugin's ``file_reader`` (``lazy=True`` unless given).

    Returns
    -------
    A datacube ``(rx, ry, qx, qy)`` for 4-D data (first navigation axis in array order
    = ``rx``, the slow scan axis). Lengths are converted to Å (nm × 10), spatial
    frequencies to 1/Å (1/nm × 0.1) and angles to mrad; axis offsets are kept (``qx = 0``
    where the file puts zero). Unknown units become pixels with a warning.
    ``beam_energy`` (eV, from metadata ``Acquisition_instrument.TEM.beam_energy`` in kV)
    and ``convergence_semiangle`` (mrad, from ``convergence_angle``) are set when present.
    A single pattern gives ``(qx, qy)`` and a flat scan ``(scan, qx, qy)``. When the file
    holds several signals, the first 4-D one is read (with a warning).

    Raises
    ------
    ImportError
        If RosettaSciIO (``pip install "stem4d[formats]"``) is not installed.
    """
    p = existing_path(path)
    errors = []
    signals = None
    for plugin in _candidates(p, reader):
        module = _import(plugin)
        params = inspect.signature(module.file_reader).parameters
        options = dict(kwargs)
        if "lazy" in params:
            options.setdefault("lazy", True)
        auto = chunks is None or (isinstance(chunks, str) and chunks == "auto")
        if not auto and "chunks" in params:
            options.setdefault("chunks", chunks)
        try:
            signals = module.file_reader(str(p), **options)
        except (ImportError, TypeError):
            raise
        except Exception as err:  # the plugins raise all kinds of errors on bad files
            errors.append(f"{plugin['name']}: {type(err).__name__}: {err}")
            continue
        if auto and "chunks" in params and "chunks" not in kwargs:
            signals = _rechunked(module, p, options, signals)
        name = plugin["name"]
        break
    if signals is None:
        raise ValueError(f"RosettaSciIO could not read {p}: " + "; ".join(errors))
    if isinstance(signals, dict):
        signals = [signals]
    if not signals:
        raise ValueError(f"{p} holds no data RosettaSciIO could read")
    four_d = [s for s in signals if _is_4d(s)]
    chosen = four_d[0] if four_d else signals[0]
    if len(signals) > 1:
        warnings.warn(
            f"{p} holds {len(signals)} signals; reading the first "
            f"{'4-D one' if four_d else 'one'}", stacklevel=2,
        )
    return _to_dataarray(chosen, p, name)


def _rechunked(module: Any, path: Path, options: dict, signals: Any) -> Any:
    """Read again with whole-scan-row chunks when the first lazy read chose others."""
    first = signals[0] if isinstance(signals, list) and signals else None
    if first is None or not _is_4d(first) or not hasattr(first["data"], "chunks"):
        return signals
    axes = _sorted_axes(first)
    if [a["navigate"] for a in axes] != [True, True, False, False]:
        return signals
    data = first["data"]
    wanted = scan_row_chunks(data.shape, data.dtype.itemsize)
    if tuple(c[0] for c in data.chunks) == wanted or math.prod(data.shape) == 0:
        return signals
    try:
        return module.file_reader(str(path), **{**options, "chunks": wanted})
    except Exception:
        return signals
