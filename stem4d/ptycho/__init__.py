"""Ptychography: a jit-compiled JAX forward model optimized with optax.

Modules, one per concern:

* :mod:`~stem4d.ptycho.params` — pydantic parameter models, :func:`load_params`,
  :func:`from_ptyrad` (no JAX);
* :mod:`~stem4d.ptycho.optics` — wavelength, aberrations, probes, propagator (numpy);
* :mod:`~stem4d.ptycho.model` — the JAX forward model and losses;
* :mod:`~stem4d.ptycho.solver` — :func:`reconstruct` (optax, minibatches, checkpoints);
* :mod:`~stem4d.ptycho.result` — the output DataTree and its figures;
* :mod:`~stem4d.ptycho.simulate` — test data with a known object (numpy);
* :mod:`~stem4d.ptycho.measurements` — the measurement preprocessing chain
  (:func:`prepare_measurements`: permute, reshape, flipT, crop, pad, resample, ...;
  :func:`prepare_from_params`: the chain a parameter file describes).

Names load on first use: ``import stem4d.ptycho`` and the parameter models do not
import JAX; :func:`reconstruct` and :mod:`~stem4d.ptycho.model` do.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PtychoParams": "params",
    "load_params": "params",
    "from_ptyrad": "params",
    "make_probe": "optics",
    "probe_modes": "optics",
    "polar_aberrations": "optics",
    "aberration_phase": "optics",
    "fresnel_propagator": "optics",
    "reconstruct": "solver",
    "load_checkpoint": "solver",
    "write_outputs": "result",
    "plot_object_phase": "result",
    "plot_probe_modes": "result",
    "plot_loss": "result",
    "simulate_ptychography": "simulate",
    "phase_ncc": "simulate",
    "prepare_measurements": "measurements",
    "prepare_from_params": "measurements",
}
_MODULES = {"params", "optics", "model", "solver", "result", "simulate", "measurements"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"stem4d.ptycho.{_LAZY[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"stem4d.ptycho.{name}")
    raise AttributeError(f"module 'stem4d.ptycho' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _MODULES)


__all__ = list(_LAZY)
