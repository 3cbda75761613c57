"""Lattice fitting and strain maps from Bragg vectors.

The pipeline is three calls (or one, :func:`strain_from_cube`)::

    peaks  = s4.find_bragg_disks(cube, s4.probe.kernel(probe))   # raw peaks, detector
    strain = s4.strain_map(peaks)                                 # basis, fit, strain

and every step is available on its own: :func:`choose_basis` (lattice basis from the
Bragg vector map), :func:`index_peaks` (integer ``(h, k)`` per peak), :func:`fit_lattice`
(local ``g1``, ``g2`` per scan position) and :func:`strain_map`.

The vectors that are fitted
---------------------------
Raw peaks (:func:`stem4d.find_bragg_disks`) lying within ``edge`` pixels of the
detector edge are dropped (a disk cut by the edge is found off its centre; by default
``edge`` is the template's disk radius, see :func:`fit_lattice`), and the rest are
turned into calibrated vectors with :func:`stem4d.calibrate_vectors`: each position's
origin ``qx0``/``qy0`` subtracted, the elliptical distortion undone when it is stored,
converted to **1/Å** (peaks in
``pixels`` stay in pixels: strain does not depend on the scale, provided the pixels are
square) and, when the cube carries its scan-to-detector orientation (``scan_rotation``,
``scan_flip``; :func:`stem4d.set_orientation`), rotated into the **scan frame**
``v = Q^T q`` with ``Q = R(scan_rotation) diag(1, -1 if scan_flip else 1)``. Calibrated
vectors from :func:`stem4d.calibrate_vectors` are used as they are. Every vector,
basis, residual and reference here is in that frame and unit; ``attrs["frame"]`` and
``attrs["vector_units"]`` say which. Components are named ``x`` and ``y``: in the scan
frame ``x`` is along ``rx`` (slow scan rows) and ``y`` along ``ry``; in the detector
frame they are ``qx`` (rows) and ``qy`` (columns).

**Frame (read this).** Without a stored orientation the vectors, and therefore the
strain, are in the *detector* frame, which differs from the sample's scan frame by the
scan rotation and possibly a mirror: ``e_det = Q e_scan Q^T`` and ``theta_det =
det(Q) theta_scan``. ``frame="auto"`` (default) uses the scan frame when the
orientation is stored and otherwise warns and works in the detector frame;
``frame="scan"`` requires the orientation.

Lattice fit
-----------
With the reference basis ``g1``, ``g2`` (columns of ``B``) each peak ``v`` gets
``(h, k) = round(B^-1 v)`` and is *indexed* when ``|v - B (h, k)| <= tolerance *
min(|g1|, |g2|)`` (two peaks on one ``(h, k)``: the brighter is kept). At each position
the local lattice solves, by weighted least squares over the indexed peaks (weights
the peak intensities by default, the inverse variance of a position for counting
noise)::

    v_p ~ h_p g1 + k_p g2 + o

``o`` an origin offset (``fit_origin=True``, default): it absorbs what is left of the
origin error after the per-position origin was subtracted, instead of letting it bias
``g1`` and ``g2``. The normal equations of all positions are solved as one stack (the
``x`` and ``y`` components share the 3 x 3 design). A position with fewer than
``min_peaks`` indexed peaks, or whose indexed peaks are collinear in ``(h, k)``, is NaN
and ``False`` in ``mask``: nothing is guessed. When *no* position can be fitted
(numpy input), that is an error, not an all-NaN map: almost always a basis or reference
in other units or another frame than the vectors. ``residual`` is the weighted RMS
distance of the indexed peaks from the fitted lattice (vector units), so a bad run is
visible.

Strain
------
With ``G`` the 2 x 2 matrix whose columns are the local ``g1``, ``g2`` and ``G_ref``
the reference's, the real-space lattice is ``A = G^-T`` (``a_i . g_j = delta_ij``, no
``2 pi``), and the deformation taking the reference lattice to the local one
(``A = F A_ref``) is::

    F = A A_ref^-1 = (G_ref G^-1)^T,      i.e.  G = F^-T G_ref

so a **tensile** real-space strain **shrinks** the reciprocal vectors (1 % tensile
``exx`` divides the ``x`` component of every ``g`` by 1.01). ``F`` is split into a
rotation and a symmetric stretch by the polar decomposition ``F = R(theta) (I + e)``
(``decomposition="polar"``, default, exact at any strain: the same form as
:func:`stem4d.simulate.crystal`'s ``strain``), or linearized, ``e = (F + F^T)/2 - I``,
``theta = (F10 - F01)/2`` (``"small"``; differs at second order in e and theta).
py4DSTEM 0.14 linearizes ``G G_ref^-1 = F^-T`` instead (``e = I - sym(F^-T)``, off by
``e^2``: 0.018 % RMS on a 0-2 % ramp in ``benchmarks/bench_strain.py``) and its
``theta`` has the opposite sign.
``exx``, ``eyy`` are the normal strains along ``x`` and ``y``, ``exy`` the tensor shear
(half the engineering shear) and ``theta`` the lattice rotation, positive from ``x``
towards ``y`` (in the scan frame: from ``rx`` towards ``ry``). With ``rotate_to=alpha``
the strain is expressed in axes turned by ``alpha`` (rad, from ``x`` towards ``y``):
``e' = R(alpha)^T e R(alpha)`` (``alpha = pi/2`` swaps ``exx`` and ``eyy`` and
negates ``exy``); ``theta`` is unchanged.

**Strain is relative to the reference lattice** (the component-wise median of the
fitted ``g1``, ``g2`` over the scan or over a region, or given vectors). It is not an
absolute lattice parameter: disk positions in thick crystals are biased by dynamical
disk contrast by up to several percent, a bias that mostly cancels against a reference
measured under the same conditions.

numpy- and dask-backed peaks both work: the fit and the strain are lazy for dask
peaks (per scan chunk); :func:`choose_basis` computes the peak arrays (it returns
numbers), so persist dask peaks before calling it and the fit (as
:func:`strain_from_cube` does).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._kernels import bilinear_histogram
from .bragg import _detector_map
from .bragg_vectors import _is_vectors, _raw_peaks, _scan_coords, calibrate_vectors
from .datacube import SCAN_DIMS

__all__ = ["choose_basis", "index_peaks", "fit_lattice", "strain_map", "strain_from_cube"]

BASIS_TYPE = "lattice_basis"
LATTICE_TYPE = "lattice_fit"
STRAIN_TYPE = "strain_map"
FRAMES = ("auto", "scan", "detector")
DECOMPOSITIONS = ("polar", "small")
WEIGHTS = ("intensity", "uniform")
_COMPONENT = "component"
_NF = 9  # fitted fields: g1x g1y g2x g2y ox oy n residual valid
_PAIR_ELEMENTS = 2**22  # positions x peaks x peaks per duplicate-check chunk
_BRIGHT = 0.1  # spots at least this fraction of the brightest diffracted spot pick the basis


# ====================================================================== input helpers
def _frame_of(vectors: xr.Dataset) -> str:
    return "scan" if vectors.attrs.get("frame") == "scan" else "detector"


def _names(vectors: xr.Dataset) -> tuple[str, str]:
    return ("g_rx", "g_ry") if _frame_of(vectors) == "scan" else ("qx", "qy")


def _units(vectors: xr.Dataset) -> str:
    name = _names(vectors)[0]
    return str(vectors[name].attrs.get("units", vectors.attrs.get("vector_units", "")))


def _has_orientation(ds: xr.Dataset | xr.DataArray) -> bool:
    return "scan_rotation" in ds.coords and "scan_flip" in ds.coords


def _detector_frame_warning(argname: str) -> None:
    warnings.warn(
        f"{argname} carries no scan-to-detector orientation (scan_rotation/scan_flip): the "
        "vectors and the strain are in the DETECTOR frame, rotated (and possibly mirrored) "
        "from the sample's scan frame. Store the orientation on the cube with "
        "stem4d.set_orientation(cube, scan_rotation, scan_flip) before finding the peaks, or "
        "pass frame='detector' to accept the detector frame knowingly",
        UserWarning, stacklevel=3)


def _edge_pixels(peaks: xr.Dataset, edge: Any) -> float:
    """Distance from the detector edge (pixels) within which raw peaks are dropped."""
    if isinstance(edge, str):
        if edge != "auto":
            raise ValueError(f"edge must be 'auto', a number of pixels or None, got {edge!r}")
        if "template_radius" in peaks.attrs:
            return float(peaks.attrs["template_radius"])
        if "edge_boundary" in peaks.attrs:
            return float(peaks.attrs["edge_boundary"]) + 1.0
        return 0.0
    if edge is None:
        return 0.0
    try:
        value = float(edge)
    except (TypeError, ValueError):
        raise TypeError(f"edge must be 'auto', a number of pixels or None, got {edge!r}") \
            from None
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"edge must be >= 0 pixels, got {edge!r}")
    return value


def _drop_edge_peaks(peaks: xr.Dataset, dist: float) -> xr.Dataset:
    """Raw peaks with those closer than ``dist`` pixels to the detector edge set to NaN."""
    if dist <= 0:
        return peaks
    x0, sx, y0, sy = _detector_map(peaks)
    nx, ny = peaks.sizes["detector_qx"], peaks.sizes["detector_qy"]
    px = (peaks["qx"] - x0) / sx
    py = (peaks["qy"] - y0) / sy
    keep = (px >= dist) & (px <= nx - 1 - dist) & (py >= dist) & (py <= ny - 1 - dist)
    out = peaks.copy()
    for name in ("qx", "qy", "intensity"):
        out[name] = peaks[name].where(keep)
    return out


def _fit_vectors(obj: Any, argname: str = "peaks", frame: str = "auto",
                 edge: Any = None) -> xr.Dataset:
    """Calibrated vectors in the fit frame (raw peaks are calibrated, vectors kept);
    raw peaks within ``edge`` pixels of the detector edge are dropped first."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    if _is_vectors(obj):
        if edge not in (None, "auto"):
            raise ValueError(f"edge={edge!r} needs raw peaks (detector positions); {argname} "
                             "holds calibrated vectors: drop edge peaks with "
                             "stem4d.mask_peaks before calibrate_vectors, or pass edge=None")
        have = _frame_of(obj)
        if frame != "auto" and frame != have:
            raise ValueError(f"frame={frame!r}, but {argname} holds calibrated vectors in the "
                             f"{have} frame: calibrate them again with rotate="
                             f"{frame == 'scan'}")
        for n in _names(obj):
            if n not in obj.data_vars or tuple(obj[n].dims) != ("rx", "ry", "peak"):
                raise ValueError(f"{argname} (calibrated vectors) needs a {n!r} variable over "
                                 "('rx', 'ry', 'peak')")
        return obj
    peaks = _raw_peaks(obj, argname)
    if frame == "auto":
        frame = "scan" if _has_orientation(peaks) else "detector"
        if frame == "detector":
            _detector_frame_warning(argname)
    peaks = _drop_edge_peaks(peaks, _edge_pixels(peaks, edge))
    current = str(peaks["qx"].attrs.get("units", "pixels"))
    units: str | None = None
    if current == "1/Å" or (current == "mrad" and "beam_energy" in peaks.coords):
        units = "1/Å"
    try:
        return calibrate_vectors(peaks, center=True, ellipse=None, rotate=frame == "scan",
                                 units=units)
    except ValueError as err:
        raise ValueError(f"{argname}: {err}") from None


def _as_vector2(value: Any, argname: str) -> np.ndarray:
    if isinstance(value, xr.DataArray):
        value = value.values
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be a pair of numbers (x, y), got {value!r}") from None
    if arr.shape != (2,):
        raise ValueError(f"{argname} must be a 2-vector (x, y) in the vectors' frame and "
                         f"units, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{argname} must be finite, got {arr.tolist()}")
    return arr


def _basis_matrix(g1: Any, g2: Any, names: tuple[str, str] = ("g1", "g2")) -> np.ndarray:
    """Columns ``g1``, ``g2`` as a checked 2 x 2 matrix (not parallel)."""
    a, b = _as_vector2(g1, names[0]), _as_vector2(g2, names[1])
    det = a[0] * b[1] - a[1] * b[0]
    if not abs(det) > 1e-6 * (a @ a + b @ b) or not (a @ a > 0 and b @ b > 0):
        raise ValueError(f"{names[0]} {a.tolist()} and {names[1]} {b.tolist()} must be "
                         "non-zero and not parallel")
    return np.stack([a, b], axis=1)


def _check_basis_frame(g: Any, vectors: xr.Dataset, argname: str) -> None:
    """A basis carrying frame/units attrs (from choose_basis) must match the vectors."""
    attrs = getattr(g, "attrs", {}) or {}
    frame, units = attrs.get("frame"), attrs.get("units")
    if frame is not None and frame != _frame_of(vectors):
        raise ValueError(f"{argname} is in the {frame} frame but the vectors are in the "
                         f"{_frame_of(vectors)} frame: choose the basis on the same vectors")
    if units is not None and units != _units(vectors):
        raise ValueError(f"{argname} has units {units!r} but the vectors have units "
                         f"{_units(vectors)!r}: choose the basis on the same vectors")


def _basis_args(g1: Any, g2: Any, vectors: xr.Dataset) -> np.ndarray:
    """``(g1, g2)`` given as vectors, or ``g1`` a basis Dataset of :func:`choose_basis`."""
    if isinstance(g1, xr.Dataset):
        if g2 is not None:
            raise ValueError("give g1 and g2 as vectors, or g1 = the basis Dataset of "
                             "choose_basis and g2=None")
        if "g1" not in g1 or "g2" not in g1:
            raise ValueError("g1 (a Dataset) must be the result of choose_basis, with 'g1' "
                             "and 'g2' variables")
        g1, g2 = g1["g1"], g1["g2"]
    elif g2 is None:
        raise ValueError("g2 is missing: give both basis vectors (or g1 = the basis Dataset "
                         "of choose_basis)")
    _check_basis_frame(g1, vectors, "g1")
    _check_basis_frame(g2, vectors, "g2")
    return _basis_matrix(g1, g2)


def _fraction(value: Any, argname: str, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argname} must be a number, got {value!r}") from None
    if not (np.isfinite(v) and low < v <= high):
        raise ValueError(f"{argname} must be in ({low}, {high}], got {value!r}")
    return v


def _vector_arrays(vectors: xr.Dataset) -> tuple[Any, Any, Any]:
    """``(vx, vy, intensity)`` arrays (rx, ry, peak), whole ``peak`` chunks for dask."""
    nx, ny = _names(vectors)
    arrs = [vectors[n].transpose("rx", "ry", "peak").data for n in (nx, ny, "intensity")]
    if isinstance(arrs[0], da.Array):
        chunks = arrs[0].chunks[:2] + (-1,)
        arrs = [da.asarray(a).rechunk(chunks) for a in arrs]
    return arrs[0], arrs[1], arrs[2]


def _component_coords(vectors: xr.Dataset) -> dict[str, Any]:
    frame = _frame_of(vectors)
    long = ("x: along rx, y: along ry (scan frame)" if frame == "scan" else
            "x: along qx (detector rows), y: along qy (detector columns)")
    return {_COMPONENT: xr.Variable((_COMPONENT,), ["x", "y"], {"long_name": long})}


# ====================================================================== indexing kernel
def _index_block(vx: np.ndarray, vy: np.ndarray, inten: np.ndarray, *, basis: np.ndarray,
                 tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, k, indexed)`` of a block of peaks ``(a, b, P)``; ``tol`` absolute distance."""
    inv = np.linalg.inv(basis)
    vx = np.asarray(vx, dtype=np.float64)
    vy = np.asarray(vy, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        h = np.rint(inv[0, 0] * vx + inv[0, 1] * vy)
        k = np.rint(inv[1, 0] * vx + inv[1, 1] * vy)
        dx = vx - (basis[0, 0] * h + basis[0, 1] * k)
        dy = vy - (basis[1, 0] * h + basis[1, 1] * k)
        ok = np.isfinite(h) & np.isfinite(k) & (np.hypot(dx, dy) <= tol)
    w = np.asarray(inten, dtype=np.float64)
    w = np.where(np.isfinite(w), w, -np.inf)
    npk = vx.shape[-1]
    if npk > 1 and ok.any():
        flat_ok = ok.reshape(-1, npk)
        key = np.where(flat_ok, h.reshape(-1, npk) * 4099.0 + k.reshape(-1, npk), np.nan)
        wf = w.reshape(-1, npk)
        idx = np.arange(npk)
        dup = np.zeros_like(flat_ok)
        rows = np.flatnonzero(flat_ok.sum(-1) > 1)
        step = max(1, _PAIR_ELEMENTS // (npk * npk))
        for start in range(0, rows.size, step):
            r = rows[start:start + step]
            kk, ww = key[r], wf[r]
            same = kk[:, :, None] == kk[:, None, :]  # NaN never equal
            better = (ww[:, None, :] > ww[:, :, None]) | (
                (ww[:, None, :] == ww[:, :, None]) & (idx[None, None, :] < idx[None, :, None]))
            dup[r] = np.any(same & better, axis=-1)
        ok = ok & ~dup.reshape(ok.shape)
    h = np.where(ok, h, np.nan)
    k = np.where(ok, k, np.nan)
    return h, k, ok


def _index_fields(vx: np.ndarray, vy: np.ndarray, inten: np.ndarray, *, basis: np.ndarray,
                  tol: float) -> np.ndarray:
    h, k, ok = _index_block(vx, vy, inten, basis=basis, tol=tol)
    return np.stack([h, k, ok.astype(np.float64)], axis=-1)


# ====================================================================== fit kernel
def _fit_block(vx: np.ndarray, vy: np.ndarray, inten: np.ndarray, *, params: dict
               ) -> np.ndarray:
    """Local lattice of a block of positions: ``(a, b, _NF)`` float64 fields."""
    h, k, ok = _index_block(vx, vy, inten, basis=params["basis"], tol=params["tol"])
    vx = np.asarray(vx, dtype=np.float64)
    vy = np.asarray(vy, dtype=np.float64)
    if params["weights"] == "intensity":
        w = np.asarray(inten, dtype=np.float64)
        ok = ok & np.isfinite(w) & (w > 0)
        w = np.where(ok, w, 0.0)
    else:
        w = ok.astype(np.float64)
    shape = vx.shape[:2]
    out = np.full(shape + (_NF,), np.nan)
    n = ok.sum(-1)
    out[..., 6] = n
    out[..., 8] = 0.0
    npar = 3 if params["fit_origin"] else 2
    cols = [np.where(ok, h, 0.0), np.where(ok, k, 0.0)]
    if params["fit_origin"]:
        cols.append(ok.astype(np.float64))
    design = np.stack(cols, axis=-1)  # (a, b, P, npar)
    vals = np.stack([np.where(ok, vx, 0.0), np.where(ok, vy, 0.0)], axis=-1)  # (a, b, P, 2)
    wsum = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        wn = w / np.where(wsum > 0, wsum, 1.0)[..., None]
    normal = np.einsum("...p,...pi,...pj->...ij", wn, design, design)
    rhs = np.einsum("...p,...pi,...pc->...ic", wn, design, vals)
    cand = n >= params["min_peaks"]
    if cand.any():
        nm = normal[cand]
        eig = np.linalg.eigvalsh(nm)
        good = eig[:, 0] > 1e-9 * np.maximum(eig[:, -1], 1e-300)
        sol = np.full((nm.shape[0], npar, 2), np.nan)
        if good.any():
            sol[good] = np.linalg.solve(nm[good], rhs[cand][good])
        full = np.full(shape + (npar, 2), np.nan)
        full[cand] = sol
        res = vals - np.einsum("...pi,...ic->...pc", design, full)
        with np.errstate(invalid="ignore"):
            rms = np.sqrt(np.einsum("...p,...pc,...pc->...", wn, res, res))
        valid = cand & np.all(np.isfinite(full), axis=(-2, -1))
        out[..., 0] = full[..., 0, 0]  # g1x
        out[..., 1] = full[..., 0, 1]  # g1y
        out[..., 2] = full[..., 1, 0]  # g2x
        out[..., 3] = full[..., 1, 1]  # g2y
        if params["fit_origin"]:
            out[..., 4] = full[..., 2, 0]
            out[..., 5] = full[..., 2, 1]
        else:
            out[..., 4:6] = 0.0
        out[..., 7] = rms
        out[..., 8] = valid
        out[~valid, :6] = np.nan
        out[~valid, 7] = np.nan
    return out


# ====================================================================== basis
def _deposit(x: np.ndarray, y: np.ndarray, w: np.ndarray, lo: float, step: float,
             nbins: int) -> np.ndarray:
    """Bilinear 2-D histogram (bin ``i`` centred at ``lo + i * step``)."""
    return bilinear_histogram((x - lo) / step, (y - lo) / step, w, (nbins, nbins))


def _find_spots(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, min_rel: float,
                max_spots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maxima of a map (``xs``, ``ys`` bin centres): centroid positions and summed
    intensities, by decreasing intensity."""
    from scipy import ndimage

    img = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64)), 0, None)
    smooth = ndimage.gaussian_filter(img, 1.0, mode="constant")
    peak = ndimage.maximum_filter(smooth, size=5, mode="constant")
    top = smooth.max() if smooth.size else 0.0
    if not top > 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    cand = (smooth == peak) & (smooth >= min_rel * top) & (smooth > 0)
    ix, iy = np.nonzero(cand)
    order = np.argsort(-smooth[ix, iy], kind="stable")[: 4 * max_spots]
    ix, iy = ix[order], iy[order]
    rad = 2
    sx, sy, si = [], [], []
    nx, ny = img.shape
    for i, j in zip(ix.tolist(), iy.tolist(), strict=True):
        a0, a1 = max(0, i - rad), min(nx, i + rad + 1)
        b0, b1 = max(0, j - rad), min(ny, j + rad + 1)
        win = img[a0:a1, b0:b1]
        tot = win.sum()
        if not tot > 0:
            continue
        sx.append(float((win.sum(1) * xs[a0:a1]).sum() / tot))
        sy.append(float((win.sum(0) * ys[b0:b1]).sum() / tot))
        si.append(float(tot))
    sx_a, sy_a, si_a = np.array(sx), np.array(sy), np.array(si)
    order = np.argsort(-si_a, kind="stable")[:max_spots]
    return sx_a[order], sy_a[order], si_a[order]


def _pick_basis(dx: np.ndarray, dy: np.ndarray, w: np.ndarray, min_angle: float
                ) -> tuple[int, int]:
    """Indices of g1 (shortest bright vector) and g2 (next shortest at >= min_angle)."""
    length = np.hypot(dx, dy)
    bright = w >= _BRIGHT * w.max()
    cand = np.flatnonzero(bright & (length > 0))
    if cand.size < 2:
        raise ValueError("the Bragg vector map has fewer than two bright diffracted spots: "
                         "give the basis with g1=, g2=")

    def shortest(idx: np.ndarray) -> int:
        lmin = length[idx].min()
        near = idx[length[idx] <= 1.05 * lmin]
        return int(near[np.argmax(w[near])])

    i1 = shortest(cand)
    with np.errstate(invalid="ignore", divide="ignore"):
        sin = np.abs(dx[i1] * dy - dy[i1] * dx) / (length[i1] * length)
    cand2 = cand[sin[cand] >= np.sin(min_angle) - 1e-12]
    if cand2.size == 0:
        raise ValueError(f"no bright spot of the Bragg vector map is at least "
                         f"{np.degrees(min_angle):.0f} degrees from g1 = "
                         f"({dx[i1]:.4g}, {dy[i1]:.4g}): give the basis with g1=, g2=")
    return i1, shortest(cand2)


def _refine_basis(basis: np.ndarray, dx: np.ndarray, dy: np.ndarray, w: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares basis over all spots indexed within 0.2 |g|min (intensity weights)."""
    tol = 0.2 * min(np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1]))
    h, k, ok = _index_block(dx[None, None], dy[None, None], w[None, None], basis=basis,
                            tol=tol)
    h, k, ok = h[0, 0], k[0, 0], ok[0, 0]
    a = np.stack([h[ok], k[ok]], axis=1)
    if a.shape[0] >= 2 and np.linalg.matrix_rank(a) == 2:
        sw = np.sqrt(w[ok])
        sol, *_ = np.linalg.lstsq(a * sw[:, None],
                                  np.stack([dx[ok], dy[ok]], 1) * sw[:, None], rcond=None)
        basis = sol.T
    return basis, h, k


def _basis_dataset(basis: np.ndarray, frame: str, units: str, method: str,
                   spots: dict[str, np.ndarray] | None = None,
                   extra_attrs: dict | None = None) -> xr.Dataset:
    comp = {_COMPONENT: ["x", "y"]}
    vattrs = {"units": units, "frame": frame}
    data = {"g1": ((_COMPONENT,), basis[:, 0], dict(vattrs, long_name="basis vector g1")),
            "g2": ((_COMPONENT,), basis[:, 1], dict(vattrs, long_name="basis vector g2"))}
    if spots is not None:
        data.update({
            "spot_x": (("spot",), spots["x"], {"units": units,
                                               "long_name": "Bragg vector map spot, x"}),
            "spot_y": (("spot",), spots["y"], {"units": units,
                                               "long_name": "Bragg vector map spot, y"}),
            "spot_intensity": (("spot",), spots["i"], {"long_name": "summed intensity"}),
            "spot_h": (("spot",), spots["h"], {"long_name": "index along g1 (NaN: none)"}),
            "spot_k": (("spot",), spots["k"], {"long_name": "index along g2 (NaN: none)"}),
        })
    attrs = {"stem4d_type": BASIS_TYPE, "frame": frame, "vector_units": units,
             "method": method}
    attrs.update(extra_attrs or {})
    return xr.Dataset(data, coords=comp, attrs=attrs)


def choose_basis(
    peaks_or_bvm: Any,
    *,
    g1: Any = None,
    g2: Any = None,
    indices: Sequence[int] | None = None,
    frame: str = "auto",
    min_angle: float = np.pi / 6,
    sampling: float = 2.0,
    min_relative_intensity: float = 0.005,
    max_spots: int = 60,
) -> xr.Dataset:
    """Lattice basis vectors ``g1``, ``g2`` from the Bragg vector map, or given.

    The vectors are histogrammed (bilinear deposit, ``sampling`` bins per detector pixel)
    in the fit frame and units (module docstring: calibrated, scan-frame 1/Å by default),
    the maxima of the map (Gaussian-smoothed by 1 bin, at least
    ``min_relative_intensity`` of its maximum) are the *spots* (intensity-weighted
    centroids), and the spot nearest to 0 is the origin. Among the bright spots (at
    least 10 % of the brightest diffracted one), ``g1`` is the shortest (within 5 %: the
    brightest of those) and ``g2`` the shortest at least ``min_angle`` from ``g1``
    (likewise), with its sign chosen so ``(g1, g2)`` is right-handed
    (``g1_x g2_y - g1_y g2_x > 0``). The pair is then refined by intensity-weighted least
    squares over every spot it indexes (within 0.2 of the shorter vector) and, from
    peaks or vectors, over every vector it indexes (with an offset term), so it is the
    scan's intensity-weighted mean lattice, free of the map's binning.

    Parameters
    ----------
    peaks_or_bvm
        Raw peaks (:func:`stem4d.find_bragg_disks`; calibrated here as in the module
        docstring), calibrated vectors (:func:`stem4d.calibrate_vectors`), or a Bragg
        vector map ``(qx, qy)`` (:func:`stem4d.bragg_vector_map`, better with
        ``calibrated=True``): then the basis is in the map's units, in the scan frame when
        the map carries ``scan_rotation``/``scan_flip`` (``frame="auto"``), else the
        detector frame. Dask peaks are computed (the small peak arrays).
    g1, g2
        Give the basis (fit frame and units); nothing is computed.
    indices
        ``(i, j)``: use spots ``i`` and ``j`` of the returned ``spot_*`` list (sorted by
        decreasing intensity; run once without to see it) as ``g1`` and ``g2``.
    frame
        ``"auto"``, ``"scan"`` or ``"detector"`` (module docstring).
    min_angle
        Smallest angle between ``g1`` and ``g2``, rad (default 30 degrees).
    sampling
        Map bins per detector pixel.
    min_relative_intensity
        Spots below this fraction of the map's maximum are ignored.
    max_spots
        Most spots kept.

    Returns
    -------
    Dataset: ``g1``, ``g2`` over ``component`` (``x``, ``y``; attrs ``units``, ``frame``),
    and, when found from the map, the spots ``spot_x``, ``spot_y``, ``spot_intensity``,
    ``spot_h``, ``spot_k`` (indices in the basis, NaN when not on the lattice); attrs
    ``frame``, ``vector_units``, ``method``. Pass it to :func:`fit_lattice` as ``g1``.
    """
    if indices is not None and (g1 is not None or g2 is not None):
        raise ValueError("give either g1=/g2= or indices=, not both")
    if (g1 is None) != (g2 is None):
        raise ValueError("give both g1= and g2= (or neither)")
    min_angle = _fraction(min_angle, "min_angle", 0.0, np.pi / 2)
    sampling = _fraction(sampling, "sampling", 0.0, 64.0)
    min_rel = _fraction(min_relative_intensity, "min_relative_intensity", 0.0, 1.0)
    if int(max_spots) != max_spots or max_spots < 3:
        raise ValueError(f"max_spots must be an integer >= 3, got {max_spots!r}")

    if isinstance(peaks_or_bvm, xr.DataArray):
        return _basis_from_bvm(peaks_or_bvm, g1, g2, indices, frame, min_angle, min_rel,
                               int(max_spots))
    if not isinstance(peaks_or_bvm, xr.Dataset):
        raise TypeError("peaks_or_bvm must be a peaks/vectors Dataset or a (qx, qy) Bragg "
                        f"vector map DataArray, got {type(peaks_or_bvm).__name__}")
    vectors = _fit_vectors(peaks_or_bvm, "peaks_or_bvm", frame, "auto")  # no edge disks
    fr, units = _frame_of(vectors), _units(vectors)
    if g1 is not None:
        return _basis_dataset(_basis_matrix(g1, g2), fr, units, "given")
    vx, vy, w = _vector_arrays(vectors)
    if isinstance(vx, da.Array):
        vx, vy, w = dask.compute(vx, vy, w)
    per_position = tuple(np.asarray(a, dtype=np.float64) for a in (vx, vy, w))
    vx, vy, w = (a.ravel() for a in per_position)
    ok = np.isfinite(vx) & np.isfinite(vy) & np.isfinite(w) & (w > 0)
    vx, vy, w = vx[ok], vy[ok], w[ok]
    if vx.size == 0:
        raise ValueError("peaks_or_bvm has no peaks with positive intensity: nothing to "
                         "choose a basis from")
    ndet = max(peaks_or_bvm.sizes.get("detector_qx", 128),
               peaks_or_bvm.sizes.get("detector_qy", 128))
    half = 1.001 * max(np.abs(vx).max(), np.abs(vy).max()) + 1e-12
    nbins = max(16, int(round(ndet * sampling)))
    step = 2 * half / (nbins - 1)
    centres = -half + step * np.arange(nbins)
    hist = _deposit(vx, vy, w, -half, step, nbins)
    found = _basis_from_spots(*_find_spots(hist, centres, centres, min_rel, int(max_spots)),
                              indices, min_angle, fr, units)
    # the map's spot centroids are binned: refine the pair on the vectors themselves
    basis = _refine_on_vectors(np.stack([found["g1"].values, found["g2"].values], axis=1),
                               *per_position)
    found["g1"].values[:], found["g2"].values[:] = basis[:, 0], basis[:, 1]
    return found


def _refine_on_vectors(basis: np.ndarray, vx: np.ndarray, vy: np.ndarray, w: np.ndarray
                       ) -> np.ndarray:
    """Intensity-weighted least squares of ``v = h g1 + k g2 + c`` over every vector
    ``(rx, ry, peak)`` indexed within 0.2 |g|min (``c`` absorbs a residual origin
    offset); the basis is returned unchanged when the indexed vectors do not span the
    plane."""
    tol = 0.2 * min(np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1]))
    h, k, ok = _index_block(vx, vy, w, basis=basis, tol=tol)
    h, k = h[ok], k[ok]
    design = np.stack([h, k, np.ones_like(h)], axis=1)
    if design.shape[0] < 3 or np.linalg.matrix_rank(design[:, :2]) < 2:
        return basis
    sw = np.sqrt(w[ok])
    sol, *_ = np.linalg.lstsq(design * sw[:, None],
                              np.stack([vx[ok], vy[ok]], axis=1) * sw[:, None], rcond=None)
    return sol[:2].T


def _basis_from_bvm(bvm: xr.DataArray, g1: Any, g2: Any, indices: Any, frame: str,
                    min_angle: float, min_rel: float, max_spots: int) -> xr.Dataset:
    if set(bvm.dims) != {"qx", "qy"}:
        raise ValueError(f"peaks_or_bvm (a DataArray) must be a (qx, qy) Bragg vector map, "
                         f"got dims {tuple(bvm.dims)}")
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    bvm = bvm.transpose("qx", "qy")
    units = str(bvm.coords["qx"].attrs.get("units", "pixels"))
    if frame == "auto":
        frame = "scan" if _has_orientation(bvm) else "detector"
        if frame == "detector":
            _detector_frame_warning("peaks_or_bvm")
    if frame == "scan" and not _has_orientation(bvm):
        raise ValueError("frame='scan' needs the scan-to-detector orientation, but "
                         "peaks_or_bvm has no scan_rotation/scan_flip coordinates")
    if g1 is not None:
        return _basis_dataset(_basis_matrix(g1, g2), frame, units, "given")
    xs = np.asarray(bvm.coords["qx"].values, dtype=float)
    ys = np.asarray(bvm.coords["qy"].values, dtype=float)
    sx, sy, si = _find_spots(np.asarray(bvm.values), xs, ys, min_rel, max_spots)
    if frame == "scan":
        from .orientation import get_orientation

        rot, flip = get_orientation(bvm)
        c, s = np.cos(rot), np.sin(rot)
        sx, sy = c * sx + s * sy, -s * sx + c * sy
        if flip:
            sy = -sy
    return _basis_from_spots(sx, sy, si, indices, min_angle, frame, units)


def _basis_from_spots(sx: np.ndarray, sy: np.ndarray, si: np.ndarray, indices: Any,
                      min_angle: float, frame: str, units: str) -> xr.Dataset:
    if sx.size < 3:
        raise ValueError(f"the Bragg vector map has {sx.size} spot(s); a lattice needs the "
                         "origin and two more: give the basis with g1=, g2=")
    o = int(np.argmin(np.hypot(sx, sy)))
    dx, dy = sx - sx[o], sy - sy[o]
    w = si.copy()
    if indices is not None:
        try:
            i1, i2 = (int(i) for i in indices)
        except (TypeError, ValueError):
            raise TypeError(f"indices must be a pair of spot numbers, got {indices!r}") \
                from None
        for i in (i1, i2):
            if not 0 <= i < sx.size or i == o:
                raise ValueError(f"indices must be two spot numbers in [0, {sx.size}) other "
                                 f"than the origin spot {o}, got {indices!r}")
        basis = _basis_matrix((dx[i1], dy[i1]), (dx[i2], dy[i2]),
                              (f"spot {i1}", f"spot {i2}"))
        method = "indices"
    else:
        wd = np.where(np.arange(sx.size) == o, 0.0, w)
        i1, i2 = _pick_basis(dx, dy, wd, min_angle)
        basis = np.array([[dx[i1], dx[i2]], [dy[i1], dy[i2]]])
        if np.linalg.det(basis) < 0:
            basis[:, 1] *= -1
        method = "auto"
    basis, h, k = _refine_basis(basis, dx, dy, w)
    spots = {"x": sx, "y": sy, "i": si, "h": h, "k": k}
    return _basis_dataset(basis, frame, units, method, spots,
                          {"origin_spot": o, "spots_for_basis": [i1, i2]})


# ====================================================================== indexing
def index_peaks(vectors: xr.Dataset, g1: Any, g2: Any = None, *, tolerance: float = 0.25,
                frame: str = "auto", edge: Any = "auto") -> xr.Dataset:
    """Integer indices ``(h, k)`` of every peak in the basis ``g1``, ``g2``.

    Parameters
    ----------
    vectors
        Raw peaks or calibrated vectors (the fit frame and units of the module docstring).
    g1, g2
        Basis vectors in that frame and units, or ``g1`` = the Dataset of
        :func:`choose_basis` (``g2=None``).
    tolerance
        A peak is indexed when it lies within ``tolerance * min(|g1|, |g2|)`` of the
        lattice point ``h g1 + k g2`` (0 < tolerance <= 0.5). Of two peaks on one point
        the brighter is kept.
    frame, edge
        As in :func:`fit_lattice` (used for raw peaks).

    Returns
    -------
    Dataset over ``(rx, ry, peak)``: ``h``, ``k`` (float, NaN where not indexed) and bool
    ``indexed``; scan coordinates carried. Lazy for dask input.
    """
    vectors = _fit_vectors(vectors, "vectors", frame, edge)
    basis = _basis_args(g1, g2, vectors)
    tol = _fraction(tolerance, "tolerance", 0.0, 0.5) * min(np.hypot(*basis[:, 0]),
                                                            np.hypot(*basis[:, 1]))
    vx, vy, w = _vector_arrays(vectors)
    if isinstance(vx, da.Array):
        out = da.map_blocks(_index_fields, vx, vy, w, basis=basis, tol=tol, dtype=np.float64,
                            chunks=vx.chunks + ((3,),), new_axis=3,
                            meta=np.array((), np.float64))
    else:
        out = _index_fields(np.asarray(vx), np.asarray(vy), np.asarray(w), basis=basis, tol=tol)
    dims = ("rx", "ry", "peak")
    return xr.Dataset(
        {"h": (dims, out[..., 0], {"long_name": "index along g1 (NaN: not indexed)"}),
         "k": (dims, out[..., 1], {"long_name": "index along g2 (NaN: not indexed)"}),
         "indexed": (dims, out[..., 2] > 0.5, {"long_name": "peak indexed"})},
        coords=_scan_coords(vectors),
        attrs={"frame": _frame_of(vectors), "vector_units": _units(vectors),
               "tolerance": float(tolerance)})


# ====================================================================== lattice fit
class _NoFitError(ValueError):
    """No scan position could be fitted (see :func:`_no_fit_message`)."""


def _no_fit_message(vectors: xr.Dataset | None, basis: np.ndarray, n_peaks: np.ndarray,
                    min_peaks: int, what: str, units: str = "", frame: str = "") -> str:
    """Why no position could be fitted: the basis lengths against the vectors' lengths
    (``units``, ``frame``: those of a lattice fit when ``vectors`` is None)."""
    if vectors is not None:
        units, frame = _units(vectors), _frame_of(vectors)
    g1, g2 = basis[:, 0], basis[:, 1]
    nmax = int(np.max(n_peaks)) if np.size(n_peaks) else 0
    msg = (f"no scan position could be fitted (all {np.size(n_peaks)} masked: at most "
           f"{nmax} indexed peak(s) per position, min_peaks = {min_peaks}) with the basis "
           f"{what}: g1 = {np.round(g1, 6).tolist()} (|g1| = {np.hypot(*g1):.4g}), g2 = "
           f"{np.round(g2, 6).tolist()} (|g2| = {np.hypot(*g2):.4g})")
    if vectors is not None:
        vx, vy, _ = _vector_arrays(vectors)
        length = np.hypot(np.asarray(vx, dtype=float), np.asarray(vy, dtype=float))
        length = length[np.isfinite(length)]
        if length.size == 0:
            return msg + "; the vectors hold no peaks (all NaN)"
        top = float(length.max())
        nonzero = length[length > 1e-3 * top] if top > 0 else length
        low = float(nonzero.min()) if nonzero.size else 0.0
        msg += (f", while the vectors ({frame} frame) have non-zero lengths from {low:.4g} "
                f"to {top:.4g} {units}")
    return msg + (f". Wrong units or frame? Give the basis in the vectors' units ({units}) "
                  f"and frame ({frame}), e.g. from choose_basis on the same peaks; or lower "
                  "min_peaks / raise tolerance if too few peaks are indexed")


def fit_lattice(
    vectors: xr.Dataset,
    g1: Any,
    g2: Any = None,
    *,
    tolerance: float = 0.25,
    min_peaks: int = 5,
    weights: str = "intensity",
    fit_origin: bool = True,
    frame: str = "auto",
    edge: Any = "auto",
) -> xr.Dataset:
    """Local lattice vectors at every scan position by weighted least squares.

    Parameters
    ----------
    vectors
        Raw peaks or calibrated vectors (fit frame and units: module docstring).
    g1, g2
        Reference basis (same frame and units) used to index the peaks, or ``g1`` = the
        Dataset of :func:`choose_basis` (``g2=None``).
    tolerance
        Indexing tolerance, fraction of the shorter basis vector (see :func:`index_peaks`).
    min_peaks
        Fewest indexed peaks for a fit (>= 3 with ``fit_origin``, else >= 2); positions
        with fewer are NaN and ``False`` in ``mask``.
    weights
        ``"intensity"`` (peak intensities; peaks with intensity <= 0 are skipped) or
        ``"uniform"``.
    fit_origin
        Fit an origin offset per position too (recommended: it absorbs residual origin
        errors instead of biasing ``g1``, ``g2``).
    frame
        As in :func:`strain_map` (used for raw peaks).
    edge
        Raw peaks whose centre lies closer than this to the detector edge (pixels) are
        not used: a disk cut by the edge is found off its centre (0.1-0.3 px for a
        4-pixel disk) and would bias the fit. ``"auto"``: the detection template's disk
        radius (``peaks.attrs["template_radius"]``) when recorded, else the peaks'
        ``edge_boundary + 1`` (about the radius for find_bragg_disks' default); ``None``:
        keep all. Calibrated vectors are used as they are.

    Returns
    -------
    Dataset over ``(rx, ry)``: ``g1``, ``g2``, ``origin`` over ``(rx, ry, component)``
    (vector units; ``origin`` the fitted offset, 0 without ``fit_origin``), ``n_peaks``
    (indexed peaks used), ``residual`` (weighted RMS distance of the indexed peaks from
    the fitted lattice, vector units), ``mask`` (bool, True where the fit is valid),
    ``g1_basis``/``g2_basis`` (the indexing basis); scan coordinates carried; attrs
    ``stem4d_type = "lattice_fit"``, ``frame``, ``vector_units`` and the settings.
    Lazy (per scan chunk) for dask input.

    Raises
    ------
    ValueError
        numpy input where no position at all can be fitted (typically a basis in other
        units or another frame than the vectors); the message gives the basis lengths and
        the vectors' range. Single starved positions are NaN and masked, not an error;
        dask input is not checked (the lazy result is then all NaN).
    """
    vectors = _fit_vectors(vectors, "vectors", frame, edge)
    basis = _basis_args(g1, g2, vectors)
    tol_frac = _fraction(tolerance, "tolerance", 0.0, 0.5)
    tol = tol_frac * min(np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1]))
    if not isinstance(fit_origin, (bool, np.bool_)):
        raise TypeError(f"fit_origin must be True or False, got {fit_origin!r}")
    least = 3 if fit_origin else 2
    if isinstance(min_peaks, bool) or not isinstance(min_peaks, (int, np.integer)) or \
            min_peaks < least:
        raise ValueError(f"min_peaks must be an integer >= {least} (the unknowns per "
                         f"component with fit_origin={fit_origin}), got {min_peaks!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    params = {"basis": basis, "tol": tol, "weights": weights, "fit_origin": bool(fit_origin),
              "min_peaks": int(min_peaks)}
    vx, vy, w = _vector_arrays(vectors)
    if isinstance(vx, da.Array):
        out = da.map_blocks(_fit_block, vx, vy, w, params=params, dtype=np.float64,
                            chunks=vx.chunks[:2] + ((_NF,),),
                            meta=np.array((), np.float64))
    else:
        out = _fit_block(np.asarray(vx), np.asarray(vy), np.asarray(w), params=params)
        if not np.any(out[..., 8] > 0.5):
            raise _NoFitError(_no_fit_message(vectors, basis, out[..., 6], int(min_peaks),
                                             "(g1, g2)"))
    units = _units(vectors)
    vdims = ("rx", "ry", _COMPONENT)
    va = {"units": units}
    coords = {**_scan_coords(vectors), **_component_coords(vectors)}
    return xr.Dataset(
        {
            "g1": (vdims, out[..., 0:2], dict(va, long_name="local lattice vector g1")),
            "g2": (vdims, out[..., 2:4], dict(va, long_name="local lattice vector g2")),
            "origin": (vdims, out[..., 4:6], dict(va, long_name="fitted origin offset")),
            "n_peaks": (SCAN_DIMS, out[..., 6].astype(np.int32),
                        {"units": "peaks", "long_name": "indexed peaks in the fit"}),
            "residual": (SCAN_DIMS, out[..., 7], dict(
                va, long_name="weighted RMS distance of the peaks from the fitted lattice")),
            "mask": (SCAN_DIMS, out[..., 8] > 0.5, {
                "long_name": "True where the lattice fit is valid (enough indexed peaks)"}),
            "g1_basis": ((_COMPONENT,), basis[:, 0], dict(va, long_name="indexing basis g1")),
            "g2_basis": ((_COMPONENT,), basis[:, 1], dict(va, long_name="indexing basis g2")),
        },
        coords=coords,
        attrs={"stem4d_type": LATTICE_TYPE, "frame": _frame_of(vectors),
               "vector_units": units, "tolerance": tol_frac, "min_peaks": int(min_peaks),
               "weights": weights, "fit_origin": int(bool(fit_origin)),
               "model": "v = h g1 + k g2 + origin (weighted least squares per position)"},
    )


# ====================================================================== strain
def _deformation(g: tuple[Any, Any, Any, Any], ref: tuple[Any, Any, Any, Any]
                 ) -> tuple[Any, Any, Any, Any]:
    """``F = (G_ref G^-1)^T`` elementwise, ``G = [[g1x, g2x], [g1y, g2y]]``."""
    a, b, c, d = g
    ra, rb, rc, rd = ref
    det = a * d - b * c
    p00 = (ra * d - rc * b) / det
    p01 = (rc * a - ra * c) / det
    p10 = (rb * d - rd * b) / det
    p11 = (rd * a - rb * c) / det
    return p00, p10, p01, p11  # F00, F01, F10, F11 (F = P^T)


def _strain_parts(f: tuple[Any, Any, Any, Any], decomposition: str
                  ) -> tuple[Any, Any, Any, Any]:
    f00, f01, f10, f11 = f
    if decomposition == "small":
        return f00 - 1.0, f11 - 1.0, 0.5 * (f01 + f10), 0.5 * (f10 - f01)
    theta = np.arctan2(f10 - f01, f00 + f11)
    c, s = np.cos(theta), np.sin(theta)
    u00 = c * f00 + s * f10
    u01 = c * f01 + s * f11
    u10 = -s * f00 + c * f10
    u11 = -s * f01 + c * f11
    return u00 - 1.0, u11 - 1.0, 0.5 * (u01 + u10), theta


def _rotated(exx: Any, eyy: Any, exy: Any, alpha: float) -> tuple[Any, Any, Any]:
    """``e' = R(alpha)^T e R(alpha)``."""
    c, s = np.cos(alpha), np.sin(alpha)
    return (c * c * exx + 2 * c * s * exy + s * s * eyy,
            s * s * exx - 2 * c * s * exy + c * c * eyy,
            c * s * (eyy - exx) + (c * c - s * s) * exy)


def _given_reference(reference: Any) -> np.ndarray | None:
    """The 2 x 2 matrix (columns g1, g2) of a reference given as vectors, else None."""
    if isinstance(reference, str):
        return None
    if isinstance(reference, (xr.DataArray, np.ndarray)) and reference.dtype == bool:
        return None
    if isinstance(reference, np.ndarray) and reference.shape != (2, 2):
        raise ValueError("reference must be 'median', a bool (rx, ry) region or a pair of "
                         f"vectors (g1, g2), got an array of shape {reference.shape} and "
                         f"dtype {reference.dtype}")
    try:
        r1, r2 = reference
    except (TypeError, ValueError):
        raise TypeError("reference must be 'median', a bool (rx, ry) region or a pair of "
                        f"vectors (g1, g2), got {reference!r}") from None
    return _basis_matrix(r1, r2, ("reference[0] (g1)", "reference[1] (g2)"))


def _reference(lattice: xr.Dataset, reference: Any) -> tuple[Any, Any, str, Any, Any]:
    """``(g1_ref, g2_ref, kind, region, matrix)``: DataArrays over ``component`` (maybe
    lazy), the region mask or None, the given matrix or None."""
    valid = lattice["mask"]
    if isinstance(reference, str):
        if reference != "median":
            raise ValueError(f"reference must be 'median', a bool (rx, ry) region or a pair "
                             f"of vectors (g1, g2), got {reference!r}")
        region = None
    elif isinstance(reference, (xr.DataArray, np.ndarray)) and reference.dtype == bool:
        shape = (lattice.sizes["rx"], lattice.sizes["ry"])
        if isinstance(reference, xr.DataArray):
            if set(reference.dims) != set(SCAN_DIMS):
                raise ValueError(f"reference (a region) must have dims ('rx', 'ry'), got "
                                 f"{tuple(reference.dims)}")
            reference = reference.transpose(*SCAN_DIMS).values
        region = np.asarray(reference)
        if region.shape != shape:
            raise ValueError(f"reference (a region) must have the scan shape {shape}, got "
                             f"{region.shape}")
        if not region.any():
            raise ValueError("reference (a region) selects no scan position")
        valid = valid & xr.DataArray(region, dims=SCAN_DIMS)
    else:
        mat = _given_reference(reference)
        comp = lattice.coords[_COMPONENT]
        return (xr.DataArray(mat[:, 0], coords={_COMPONENT: comp}),
                xr.DataArray(mat[:, 1], coords={_COMPONENT: comp}), "vectors", None, mat)
    g1 = lattice["g1"].where(valid).median(SCAN_DIMS)
    g2 = lattice["g2"].where(valid).median(SCAN_DIMS)
    if not isinstance(g1.data, da.Array) and not np.all(np.isfinite(g1.values)):
        where = "the reference region" if region is not None else "the scan"
        raise ValueError(f"no valid lattice fit in {where} (all positions masked): cannot "
                         "form the reference; check the peaks, tolerance and min_peaks")
    return g1, g2, ("median" if region is None else "region"), region, None


def _in_basis(lattice: xr.Dataset, mat: np.ndarray) -> np.ndarray:
    """Integer matrix ``M`` with ``G_ref = B M`` (``B`` the lattice's indexing basis), so
    the local counterparts of the reference vectors are ``G M``."""
    basis = np.stack([np.asarray(lattice["g1_basis"].values, dtype=float),
                      np.asarray(lattice["g2_basis"].values, dtype=float)], axis=1)
    m = np.rint(np.linalg.solve(basis, mat))
    tol = 0.5 * float(lattice.attrs.get("tolerance", 0.25)) * min(
        np.hypot(*basis[:, 0]), np.hypot(*basis[:, 1]))
    off = np.hypot(*(mat - basis @ m))
    if np.any(off > tol) or abs(np.linalg.det(m)) < 0.5:
        raise ValueError(
            f"reference vectors {mat.T.tolist()} are not lattice vectors of the indexing "
            f"basis g1 = {basis[:, 0].tolist()}, g2 = {basis[:, 1].tolist()} (nearest lattice "
            f"vectors {(basis @ m).T.tolist()}): give them in the same frame and units as the "
            "vectors, or pass them as basis= too")
    return m


def strain_map(
    peaks_or_lattice: xr.Dataset,
    *,
    reference: Any = "median",
    basis: Any = None,
    rotate_to: float | None = None,
    frame: str = "auto",
    decomposition: str = "polar",
    tolerance: float = 0.25,
    min_peaks: int = 5,
    weights: str = "intensity",
    fit_origin: bool = True,
    edge: Any = "auto",
) -> xr.Dataset:
    """Strain and rotation maps relative to a reference lattice.

    Conventions (frame, reciprocal-to-real sign, decomposition) are in the module
    docstring of :mod:`stem4d.strain`; in short: ``F = (G_ref G^-1)^T = R(theta) (I + e)``
    in the scan frame (``x`` along ``rx``, ``y`` along ``ry``) when the orientation is
    stored, a tensile strain shrinks the reciprocal vectors, and the **strain is relative
    to the reference lattice**, not absolute (thick-crystal disk contrast biases absolute
    lattice parameters from disk positions by up to several percent).

    Parameters
    ----------
    peaks_or_lattice
        Raw peaks (:func:`stem4d.find_bragg_disks`, calibrated as in the module
        docstring), calibrated vectors, or a lattice fit of :func:`fit_lattice`.
    reference
        ``"median"``: the median lattice over the valid positions; a bool ``(rx, ry)``
        region: the median over its valid positions (stored as the coordinate
        ``reference_region``); or a pair of vectors ``(g1, g2)`` in the fit frame and units.
    basis
        Indexing basis: ``None`` (:func:`choose_basis`), a :func:`choose_basis` Dataset or
        a pair ``(g1, g2)``. Not for a lattice fit.
    rotate_to
        Express the strain in axes turned by this angle (rad, from ``x`` towards ``y``):
        ``e' = R^T e R``. ``None``: the frame's own axes. ``|rotate_to| > 2 pi`` is still
        taken in rad but warns (``UserWarning``: degrees given by mistake?).
    frame
        ``"auto"`` (scan frame when the orientation is stored, else the detector frame
        with a warning), ``"scan"`` (orientation required) or ``"detector"``.
    decomposition
        ``"polar"`` (exact ``F = R(theta)(I + e)``) or ``"small"`` (linearized).
    tolerance, min_peaks, weights, fit_origin, edge
        Lattice fit settings (:func:`fit_lattice`).

    Returns
    -------
    Dataset over ``(rx, ry)``: ``exx``, ``eyy``, ``exy`` (dimensionless fractions),
    ``theta`` (rad), ``mask`` (True where valid; NaN strain elsewhere), ``residual``
    (fit RMS, vector units), ``n_peaks``, the local ``g1``, ``g2`` and the reference
    ``g1_reference``, ``g2_reference`` over ``component``; scan coordinates carried;
    attrs ``stem4d_type = "strain_map"``, ``frame``, ``rotate_to``, ``reference``,
    ``decomposition``, ``convention``. Lazy for dask input.

    Raises
    ------
    ValueError
        numpy input where no position at all can be fitted, e.g. a ``basis`` or vector
        ``reference`` in other units or another frame than the vectors (the message gives
        their lengths and the vectors' range); see :func:`fit_lattice`.
    """
    if decomposition not in DECOMPOSITIONS:
        raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got "
                         f"{decomposition!r}")
    alpha = 0.0
    if rotate_to is not None:
        try:
            alpha = float(rotate_to)
        except (TypeError, ValueError):
            raise TypeError(f"rotate_to must be an angle in rad or None, got "
                            f"{rotate_to!r}") from None
        if not np.isfinite(alpha):
            raise ValueError(f"rotate_to must be finite (rad), got {rotate_to!r}")
        if abs(alpha) > 2 * np.pi:
            warnings.warn(
                f"rotate_to = {alpha:.6g} is taken in RADIANS (|rotate_to| > 2 pi); if you "
                f"meant degrees, pass rotate_to=np.radians({alpha:.6g}) = "
                f"{np.radians(alpha):.6g}", UserWarning, stacklevel=2)
    if isinstance(peaks_or_lattice, xr.Dataset) and \
            peaks_or_lattice.attrs.get("stem4d_type") == LATTICE_TYPE:
        if basis is not None:
            raise ValueError("basis is for peaks or vectors; peaks_or_lattice is a lattice "
                             "fit already")
        lattice = peaks_or_lattice
        for name in ("g1", "g2", "mask"):
            if name not in lattice:
                raise ValueError(f"peaks_or_lattice (a lattice fit) has no {name!r} variable")
    else:
        if not isinstance(peaks_or_lattice, xr.Dataset):
            raise TypeError("peaks_or_lattice must be a peaks, vectors or lattice-fit "
                            f"Dataset, got {type(peaks_or_lattice).__name__}")
        vectors = _fit_vectors(peaks_or_lattice, "peaks_or_lattice", frame, edge)
        basis_from_reference = False
        if basis is None:
            given = _given_reference(reference)
            basis = choose_basis(vectors) if given is None else (given[:, 0], given[:, 1])
            basis_from_reference = given is not None
        if isinstance(basis, xr.Dataset):
            b1, b2 = basis, None
        else:
            try:
                b1, b2 = basis
            except (TypeError, ValueError):
                raise TypeError("basis must be None, a choose_basis Dataset or a pair "
                                f"(g1, g2), got {basis!r}") from None
        try:
            lattice = fit_lattice(vectors, b1, b2, tolerance=tolerance, min_peaks=min_peaks,
                                  weights=weights, fit_origin=fit_origin)
        except _NoFitError as err:
            if basis_from_reference:
                raise ValueError(f"reference (used as the indexing basis, as basis=None): "
                                 f"{err}") from None
            raise
    if not isinstance(lattice["mask"].data, da.Array) and not bool(lattice["mask"].any()):
        basis_mat = np.stack([np.asarray(lattice[n].values, dtype=float)
                              for n in ("g1_basis", "g2_basis")], axis=1) \
            if "g1_basis" in lattice and "g2_basis" in lattice else \
            np.full((2, 2), np.nan)
        n_peaks = lattice["n_peaks"].values if "n_peaks" in lattice else np.zeros(0)
        raise ValueError("peaks_or_lattice (a lattice fit): " + _no_fit_message(
            None, basis_mat, n_peaks, int(lattice.attrs.get("min_peaks", 0)),
            "of the lattice fit", str(lattice.attrs.get("vector_units", "")),
            str(lattice.attrs.get("frame", "detector"))))
    g1r, g2r, kind, region, mat = _reference(lattice, reference)
    loc1, loc2 = lattice["g1"], lattice["g2"]
    if mat is not None:  # local counterparts of the given reference vectors
        m = _in_basis(lattice, mat)
        if not np.array_equal(m, np.eye(2)):
            loc1, loc2 = m[0, 0] * loc1 + m[1, 0] * loc2, m[0, 1] * loc1 + m[1, 1] * loc2
    g = tuple(v.sel({_COMPONENT: c}, drop=True)
              for v, c in ((loc1, "x"), (loc1, "y"), (loc2, "x"), (loc2, "y")))
    ref = tuple(r.sel({_COMPONENT: c}, drop=True)
                for r, c in ((g1r, "x"), (g1r, "y"), (g2r, "x"), (g2r, "y")))
    with np.errstate(invalid="ignore", divide="ignore"):
        exx, eyy, exy, theta = _strain_parts(_deformation(g, ref), decomposition)
        if alpha != 0.0:
            exx, eyy, exy = _rotated(exx, eyy, exy, alpha)
    frame_used = lattice.attrs.get("frame", "detector")
    axes = ("x along rx, y along ry (scan frame)" if frame_used == "scan" else
            "x along qx, y along qy (DETECTOR frame: no scan orientation applied)")
    if alpha:
        axes += f", then axes turned by rotate_to = {alpha:.6g} rad"
    units = lattice.attrs.get("vector_units", lattice["g1"].attrs.get("units", ""))

    def strain_var(arr: Any, long: str, u: str = "") -> xr.DataArray:
        out = arr.reset_coords(drop=True) if isinstance(arr, xr.DataArray) else arr
        out = out.where(lattice["mask"])
        out.attrs = {"units": u, "long_name": long}
        return out

    data = {
        "exx": strain_var(exx, "normal strain along x (fraction)"),
        "eyy": strain_var(eyy, "normal strain along y (fraction)"),
        "exy": strain_var(exy, "shear strain e_xy (tensor, fraction)"),
        "theta": strain_var(theta, "lattice rotation, from x towards y", "rad"),
        "mask": lattice["mask"].reset_coords(drop=True),
        "residual": lattice["residual"].reset_coords(drop=True),
        "n_peaks": lattice["n_peaks"].reset_coords(drop=True),
        "g1": lattice["g1"].reset_coords(drop=True),
        "g2": lattice["g2"].reset_coords(drop=True),
        "g1_reference": g1r.reset_coords(drop=True).assign_attrs(
            units=units, long_name="reference lattice vector g1"),
        "g2_reference": g2r.reset_coords(drop=True).assign_attrs(
            units=units, long_name="reference lattice vector g2"),
    }
    ds = xr.Dataset(data, coords={k: v for k, v in lattice.coords.items()})
    if region is not None:
        ds = ds.assign_coords(reference_region=(SCAN_DIMS, region, {
            "long_name": "reference region (the median lattice there is the reference)"}))
    ds.attrs = {
        "stem4d_type": STRAIN_TYPE, "frame": frame_used, "axes": axes,
        "rotate_to": alpha, "reference": kind, "decomposition": decomposition,
        "vector_units": units,
        "convention": "F = (G_ref G^-1)^T = R(theta) (I + e) (real-space deformation from "
                      "the reference lattice; tensile strain shrinks reciprocal vectors); "
                      "strain relative to the reference lattice; see stem4d.strain",
    }
    return ds


def strain_from_cube(
    cube: xr.DataArray,
    template: Any,
    *,
    detect: dict[str, Any] | None = None,
    **strain_kwargs: Any,
) -> xr.Dataset:
    """Strain map of a datacube in one call: detection, calibration, basis, fit, strain.

    Runs ``strain_map(find_bragg_disks(cube, template, **detect), **strain_kwargs)``
    (a dask cube's peaks are persisted first, so the detection runs once while the basis
    is chosen and the result stays lazy).

    Parameters
    ----------
    cube
        Datacube with its origin set (and, for the scan frame, its orientation:
        :func:`stem4d.set_orientation`); numpy or dask.
    template
        Correlation kernel (:func:`stem4d.probe.kernel`).
    detect
        Keyword arguments of :func:`stem4d.find_bragg_disks` (default: its defaults).
    **strain_kwargs
        Keyword arguments of :func:`strain_map`.

    Returns
    -------
    The strain Dataset of :func:`strain_map`, with the detection settings in attrs
    (``detection_*``).
    """
    from .bragg import find_bragg_disks

    if detect is not None and not isinstance(detect, dict):
        raise TypeError(f"detect must be a dict of find_bragg_disks arguments or None, got "
                        f"{type(detect).__name__}")
    peaks = find_bragg_disks(cube, template, **(detect or {}))
    if isinstance(peaks["qx"].data, da.Array):
        peaks = peaks.persist()
    out = strain_map(peaks, **strain_kwargs)
    for key in ("template", "subpixel", "sigma_corr", "corr_power", "upsample_factor"):
        if key in peaks.attrs:
            out.attrs[f"detection_{key}"] = peaks.attrs[key]
    return out
