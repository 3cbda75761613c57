"""Synthetic 4D-STEM data with a known answer.

:func:`crystal` renders a crystal's diffraction: a lattice of soft-edged disks whose
positions, intensities and origin are known exactly, with optional origin drift, strain,
scan-to-detector rotation/flip, elliptical detector distortion and Poisson noise. It
returns the datacube and a truth :class:`xarray.Dataset`. :func:`probe_disk` renders a
single disk (a vacuum probe image), with the same kernel.

Frames and conventions (provisional: the calibration module will pin the
scan-to-detector convention and may rename these parameters)
-----------------------------------------------------------------------------------------
* **Detector frame**: a vector ``(qx, qy)`` in detector pixels, ``qx`` along the detector
  rows (first detector axis), ``qy`` along the columns. Disk positions in the truth are
  absolute fractional pixel indices: pixel ``(i, j)`` has its centre at ``(i, j)``.
* **Scan frame**: a real-space vector ``(x, y)`` with ``x`` along ``rx`` (slow scan
  rows) and ``y`` along ``ry`` (fast scan columns). Strain fields are given in this frame.
* Rotations: ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` acts on column vectors, so a
  positive angle turns the first axis towards the second (``x`` towards ``y``, ``qx``
  towards ``qy``).
* **Scan to detector**: a direction ``v`` of the scan frame appears on the detector as
  ``Q @ v`` with ``Q = R(scan_rotation) @ diag(1, -1 if scan_flip else 1)`` (the flip
  acts first, on ``y``). With ``scan_rotation = pi/2`` and no flip, real-space ``x`` (along
  ``rx``) appears along detector ``qy``.
* **Strain**: the real-space deformation gradient in the scan frame is
  ``F = R(theta) @ (I + [[exx, exy], [exy, eyy]])`` (small symmetric strain, fractions;
  ``theta`` a rigid rotation, rad). Reciprocal vectors transform with ``F^-T``, so in the
  detector frame ``g(r) = Q @ F^-T @ Q^-1 @ g_ref``: tensile strain *shrinks* the
  reciprocal vectors (``exx = 0.01`` divides their scan-``x`` component by 1.01), and a
  lattice rotation ``theta`` rotates the pattern by ``theta`` (by ``-theta`` when
  ``scan_flip``).
* **Ellipse**: ``(a, b, phi)`` stretches detector offsets from the origin by ``a`` along
  the direction at angle ``phi`` (rad, from ``qx`` towards ``qy``) and by ``b``
  perpendicular to it: ``A = R(phi) @ diag(a, b) @ R(-phi)``. Only disk *positions* are
  distorted; the disks themselves stay circular.
* Disk centre of peak ``(h, k)`` at a scan position:
  ``origin(r) + A @ (h * g1(r) + k * g2(r))``.
* **Disk profile**: an ideal disk of radius ``disk_radius`` integrated over the square
  pixel and blurred by a Gaussian of standard deviation ``edge_width`` (pixels), modelled
  radially as ``0.5 * erfc((rho - r_eff) / (sqrt(2) * s))`` with
  ``s = sqrt(edge_width**2 + 1/12)`` and ``r_eff = sqrt(disk_radius**2 - s**2)``, which keeps
  the integral at ``pi * disk_radius**2`` times the amplitude. A fully covered pixel has
  the disk's amplitude.
* **Intensities**: the central disk has amplitude ``central_intensity``; disk ``(h, k)``
  has ``0.5 * central_intensity * m(h, k) * exp(-|g|**2 / (2 * intensity_decay**2))`` with
  ``|g|`` the reference length in pixels and ``m`` in ``[0.25, 1]`` a pseudo-random
  "structure factor" drawn from ``seed`` and ``(h, k)`` (equal for Friedel pairs), so all
  diffracted disks are weaker than the central one and differ from each other.
* **Noise**: with ``dose``, the pattern is scaled so a fully covered central-disk pixel
  has a mean of ``dose`` electrons, and Poisson counts are drawn. Scan row ``i`` uses
  ``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))``, so the noise is
  the same however the cube is chunked (eager or dask).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from scipy.special import erfc

from .datacube import (
    datacube,
    electron_wavelength,
    rotation_matrix,
    scan_to_detector_matrix,
    set_origin,
)

__all__ = ["crystal", "probe_disk", "rotation_matrix", "scan_to_detector_matrix",
           "ellipse_matrix"]

_STRAIN_KEYS = ("exx", "eyy", "exy", "theta")
_PIXEL_VARIANCE = 1.0 / 12.0  # variance of a uniform 1-pixel box, pixels^2
_TAIL = 4.0  # render the edge out to this many edge standard deviations
_BLOCK_ELEMENTS = 1 << 22  # rendered window pixels per block (bounds memory to ~100 MB)


# ------------------------------------------------------------------ geometry helpers
def ellipse_matrix(a: float, b: float, phi: float) -> np.ndarray:
    """``R(phi) @ diag(a, b) @ R(-phi)``: stretch ``a`` along angle ``phi`` (rad), ``b`` across."""
    return rotation_matrix(phi) @ np.diag([a, b]) @ rotation_matrix(-phi)


# ------------------------------------------------------------------ disk rendering
def _ellipse_params(ellipse: Any) -> tuple[float, float, float]:
    """``(a, b, phi)`` of an ellipse argument (``None`` → no distortion)."""
    if ellipse is None:
        return (1.0, 1.0, 0.0)
    ell = tuple(float(v) for v in ellipse)
    if len(ell) != 3 or not all(np.isfinite(ell)) or min(ell[:2]) <= 0:
        raise ValueError(f"ellipse must be (a > 0, b > 0, phi rad) or None, got {ellipse!r}")
    return ell


def _edge_sigma(edge_width: float) -> float:
    return float(np.sqrt(edge_width**2 + _PIXEL_VARIANCE))


def _check_radius(disk_radius: float, edge_width: float) -> tuple[float, float]:
    if not np.isfinite(edge_width) or edge_width < 0:
        raise ValueError(f"edge_width must be >= 0 (pixels), got {edge_width!r}")
    sigma = _edge_sigma(edge_width)
    if not np.isfinite(disk_radius) or disk_radius <= 1.5 * sigma:
        raise ValueError(
            f"disk_radius must be larger than 1.5 x the edge blur ({1.5 * sigma:.3g} pixels "
            f"for edge_width={edge_width}), got {disk_radius!r}"
        )
    return float(np.sqrt(disk_radius**2 - sigma**2)), sigma


def _render(
    out: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    amp: np.ndarray,
    disk_radius: float,
    edge_width: float,
) -> None:
    """Add disks to ``out`` in place.

    ``out`` is ``(P, Nx, Ny)`` float64; ``cx``, ``cy``, ``amp`` are ``(P, D)`` disk centres
    (pixels) and amplitudes. Each disk is evaluated only in its square window around
    ``round(centre)``, and all windows of a block of positions are scatter-added with one
    ``np.bincount``.
    """
    n_pos, nx, ny = out.shape
    n_disk = cx.shape[1]
    if n_pos == 0 or n_disk == 0:
        return
    r_eff, sigma = _check_radius(disk_radius, edge_width)
    half = int(np.ceil(r_eff + _TAIL * sigma + 0.5))
    offs = np.arange(-half, half + 1)
    width = offs.size
    inv = np.float32(1.0 / (np.sqrt(2.0) * sigma))
    n_frame = nx * ny
    flat_out = out.reshape(n_pos, n_frame)
    block = max(1, _BLOCK_ELEMENTS // (n_disk * width * width))
    for start in range(0, n_pos, block):
        stop = min(n_pos, start + block)
        bx, by, ba = cx[start:stop], cy[start:stop], amp[start:stop]
        # pixel rows/columns of each window: (b, D, W)
        rows = np.rint(bx).astype(np.int64)[..., None] + offs
        cols = np.rint(by).astype(np.int64)[..., None] + offs
        dx = (rows - bx[..., None]).astype(np.float32)
        dy = (cols - by[..., None]).astype(np.float32)
        rho = np.sqrt(dx[..., :, None] ** 2 + dy[..., None, :] ** 2)  # (b, D, W, W)
        val = erfc((rho - np.float32(r_eff)) * inv)
        row_ok = (rows >= 0) & (rows < nx)
        col_ok = (cols >= 0) & (cols < ny)
        weight = (0.5 * ba).astype(np.float32)[..., None, None] * (
            row_ok[..., :, None] & col_ok[..., None, :]
        )
        val *= weight
        rows = np.where(row_ok, rows, 0) * ny
        cols = np.where(col_ok, cols, 0)
        frame = (np.arange(stop - start, dtype=np.int64) * n_frame)[:, None, None]
        index = (rows + frame)[..., :, None] + cols[..., None, :]
        flat_out[start:stop] += np.bincount(
            index.ravel(), weights=val.ravel(), minlength=(stop - start) * n_frame
        ).reshape(stop - start, n_frame)


# ------------------------------------------------------------------ argument helpers
def _shape2(value: Any, argname: str) -> tuple[int, int]:
    try:
        shape = tuple(int(v) for v in value)
    except TypeError as err:
        raise ValueError(f"{argname} must be a pair of positive ints, got {value!r}") from err
    if len(shape) != 2 or min(shape) < 1 or any(int(v) != v for v in value):
        raise ValueError(f"{argname} must be a pair of positive ints, got {value!r}")
    return shape  # type: ignore[return-value]


def _vec2(value: Any, argname: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{argname} must be a finite (qx, qy) pair in detector pixels, got {value!r}"
        )
    return arr


def _scan_field(value: Any, scan_shape: tuple[int, int], argname: str) -> np.ndarray:
    if isinstance(value, xr.DataArray):
        value = value.transpose(*[d for d in ("rx", "ry") if d in value.dims]).values
    arr = np.asarray(value, dtype=float)
    if arr.ndim not in (0, 2) or (arr.ndim == 2 and arr.shape != scan_shape):
        raise ValueError(
            f"{argname} must be a number or an array of the scan shape {scan_shape} "
            f"(rx, ry), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{argname} must be finite, got NaN/inf")
    return np.broadcast_to(arr, scan_shape).astype(float)


def _strain_fields(
    strain: Mapping[str, Any] | xr.Dataset | None, scan_shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    fields = {k: np.zeros(scan_shape) for k in _STRAIN_KEYS}
    if strain is None:
        return fields
    keys = list(strain.data_vars) if isinstance(strain, xr.Dataset) else list(strain)
    unknown = [k for k in keys if k not in _STRAIN_KEYS]
    if unknown:
        raise ValueError(
            f"strain may only hold {list(_STRAIN_KEYS)} (scan frame, fractions / rad), "
            f"got unknown keys {unknown}"
        )
    for k in keys:
        fields[k] = _scan_field(strain[k], scan_shape, f"strain[{k!r}]")
    return fields


def _friedel_modulation(h: np.ndarray, k: np.ndarray, seed: int) -> np.ndarray:
    """Pseudo-random factor in [0.25, 1] per (h, k), equal for (h, k) and (-h, -k)."""
    out = np.empty(h.shape)
    for i, (hh, kk) in enumerate(zip(h.tolist(), k.tolist(), strict=True)):
        if (hh, kk) < (-hh, -kk):
            hh, kk = -hh, -kk
        ss = np.random.SeedSequence([abs(int(seed)), 7919, hh + (1 << 20), kk + (1 << 20)])
        out[i] = 0.25 + 0.75 * np.random.default_rng(ss).random()
    return out


# ------------------------------------------------------------------ public API
def crystal(
    scan_shape: Sequence[int] = (16, 16),
    detector_shape: Sequence[int] = (64, 64),
    *,
    g1: Sequence[float] = (9.0, 2.0),
    g2: Sequence[float] = (-3.0, 10.0),
    q_max: float | None = None,
    disk_radius: float = 4.0,
    edge_width: float = 0.5,
    origin: Sequence[Any] | None = None,
    origin_drift: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    strain: Mapping[str, Any] | xr.Dataset | None = None,
    ellipse: Sequence[float] | None = None,
    scan_rotation: float = 0.0,
    scan_flip: bool = False,
    intensity_decay: float | None = None,
    central_intensity: float = 1.0,
    dose: float | None = None,
    background: float = 0.0,
    r_step: float | Sequence[float] = 1.0,
    q_pixel_size: float | None = None,
    beam_energy: float | None = 300e3,
    convergence_semiangle: float | None = None,
    dtype: Any = "float32",
    seed: int = 0,
    chunks: int | None = None,
) -> tuple[xr.DataArray, xr.Dataset]:
    """Simulate a crystal's 4D-STEM datacube of Bragg disks, and its exact answer.

    Conventions (frames, strain, ellipse, disk profile, noise) are in the module
    docstring of :mod:`stem4d.simulate`.

    Parameters
    ----------
    scan_shape, detector_shape
        ``(rx, ry)`` probe positions and ``(qx, qy)`` detector pixels.
    g1, g2
        Reference reciprocal basis ``(qx, qy)``, detector pixels, as seen on the detector
        for the unstrained crystal without ellipse.
    q_max
        Keep only disks with ``|h g1 + k g2| <= q_max`` (reference lattice, pixels).
        ``None``: every disk that overlaps the detector at some scan position.
    disk_radius, edge_width
        Disk radius and extra Gaussian edge blur (standard deviation), pixels.
    origin
        Mean origin ``(qx0, qy0)``, detector pixels (fractional row, column index);
        two numbers or two ``(rx, ry)`` arrays. Default: the detector centre
        ``((Nqx - 1) / 2, (Nqy - 1) / 2)``.
    origin_drift
        Planar drift ``(dqx0/drx, dqx0/dry, dqy0/drx, dqy0/dry)``, pixels per scan step,
        added about the scan centre (so the mean origin stays ``origin``).
    strain
        Dict or Dataset of ``exx``, ``eyy``, ``exy`` (fractions) and ``theta`` (rad), in the
        scan frame; each a number or a ``(rx, ry)`` array. Missing fields are zero.
    ellipse
        ``(a, b, phi)``: detector stretch ``a`` along angle ``phi`` (rad from ``qx`` to
        ``qy``) and ``b`` across it. ``None``: no distortion.
    scan_rotation, scan_flip
        Scan-to-detector rotation (rad) and flip: ``Q = R(scan_rotation) @ diag(1, ±1)``.
    intensity_decay
        Width (pixels) of the Gaussian envelope of diffracted amplitudes. Default
        ``2 * max(|g1|, |g2|)``.
    central_intensity
        Amplitude of the central disk (value of a fully covered pixel) without ``dose``.
    dose
        Mean electron count of a fully covered central-disk pixel; Poisson noise is drawn.
        ``None``: noise-free data in units of ``central_intensity``.
    background
        Constant added to every pixel, in the units of ``central_intensity`` (scaled with
        ``dose`` like the disks).
    r_step
        Scan step, Å (one number or ``(rx, ry)``).
    q_pixel_size
        Detector pixel size, 1/Å per pixel. ``None``: q coordinates in pixels.
    beam_energy
        Electron energy, eV (``None``: not set).
    convergence_semiangle
        Probe semiangle, mrad. Default: ``1000 * wavelength * disk_radius * q_pixel_size``
        when ``q_pixel_size`` and ``beam_energy`` are given, else not set.
    dtype
        Data type of the cube (float32 default; integer types are rounded after noise).
    seed
        Seeds the structure-factor modulation and the Poisson noise.
    chunks
        Scan rows per chunk: return a dask-backed cube, rendered lazily, chunked along
        ``rx`` (values identical to the eager result).

    Returns
    -------
    cube
        DataArray ``(rx, ry, qx, qy)``: ``rx``/``ry`` in Å, ``qx``/``qy`` in 1/Å or pixels
        centred on the mean origin, per-position ``qx0``/``qy0`` coordinates when the
        origin varies, ``beam_energy``/``convergence_semiangle`` scalar coordinates.
    truth
        Dataset with the known answer, on the cube's ``rx``/``ry`` coordinates:
        ``qx0``, ``qy0`` (rx, ry) origin, pixels; ``g1``, ``g2`` (rx, ry, vector) basis as
        seen on the detector (strain, rotation and ellipse applied), pixels;
        ``g1_undistorted``, ``g2_undistorted`` the same before the ellipse;
        ``g1_reference``, ``g2_reference`` (vector) the inputs; ``bragg_qx``,
        ``bragg_qy`` (rx, ry, peak) absolute disk centres, pixels; ``bragg_h``,
        ``bragg_k`` (peak) indices (peak 0 is the central beam, then by increasing
        ``|g|``); ``bragg_amplitude`` (rx, ry, peak) value of a fully covered pixel and
        ``bragg_intensity`` = ``pi r^2`` x amplitude, the integrated disk intensity
        (counts when ``dose`` is given); ``bragg_inside`` (rx, ry, peak) True when the
        whole disk lies on the detector; strain fields ``exx``, ``eyy``, ``exy``,
        ``theta`` (rx, ry); scalars ``disk_radius``, ``edge_width``, ``scan_rotation``,
        ``scan_flip``, ``ellipse_a``, ``ellipse_b``, ``ellipse_phi``, ``background``.
    """
    scan_shape = _shape2(scan_shape, "scan_shape")
    detector_shape = _shape2(detector_shape, "detector_shape")
    nx, ny = detector_shape
    g1v, g2v = _vec2(g1, "g1"), _vec2(g2, "g2")
    basis_ref = np.stack([g1v, g2v], axis=1)  # columns g1, g2
    if abs(np.linalg.det(basis_ref)) < 1e-9 * (g1v @ g1v + g2v @ g2v):
        raise ValueError(f"g1 {tuple(g1v)} and g2 {tuple(g2v)} must not be parallel")
    _check_radius(disk_radius, edge_width)
    if q_max is not None and not q_max > 0:
        raise ValueError(f"q_max must be positive (pixels) or None, got {q_max!r}")
    if not (np.isfinite(central_intensity) and central_intensity > 0):
        raise ValueError(f"central_intensity must be positive, got {central_intensity!r}")
    if dose is not None and not (np.isfinite(dose) and dose > 0):
        raise ValueError(f"dose must be a positive count per pixel or None, got {dose!r}")
    if not (np.isfinite(background) and background >= 0):
        raise ValueError(f"background must be >= 0, got {background!r}")
    if intensity_decay is None:
        intensity_decay = 2.0 * max(np.hypot(*g1v), np.hypot(*g2v))
    if not (np.isfinite(intensity_decay) and intensity_decay > 0):
        raise ValueError(f"intensity_decay must be positive (pixels), got {intensity_decay!r}")
    if chunks is not None and (int(chunks) != chunks or chunks < 1):
        raise ValueError(f"chunks must be a positive number of scan rows or None, got {chunks!r}")
    drift = np.asarray(origin_drift, dtype=float)
    if drift.shape != (4,) or not np.all(np.isfinite(drift)):
        raise ValueError(
            "origin_drift must be 4 numbers (dqx0/drx, dqx0/dry, dqy0/drx, dqy0/dry), "
            f"pixels per scan step, got {origin_drift!r}"
        )
    ell = _ellipse_params(ellipse)

    # ---- origin over the scan (pixels)
    if origin is None:
        origin = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    if len(origin) != 2:
        raise ValueError(f"origin must be a pair (qx0, qy0) in pixels, got {origin!r}")
    ix = np.arange(scan_shape[0]) - (scan_shape[0] - 1) / 2.0
    iy = np.arange(scan_shape[1]) - (scan_shape[1] - 1) / 2.0
    qx0 = _scan_field(origin[0], scan_shape, "origin[0]") + drift[0] * ix[:, None] + drift[1] * iy
    qy0 = _scan_field(origin[1], scan_shape, "origin[1]") + drift[2] * ix[:, None] + drift[3] * iy

    # ---- per-position lattice (detector frame): g = Q F^-T Q^-1 g_ref, then ellipse
    fields = _strain_fields(strain, scan_shape)
    eps = np.empty(scan_shape + (2, 2))
    eps[..., 0, 0] = 1 + fields["exx"]
    eps[..., 1, 1] = 1 + fields["eyy"]
    eps[..., 0, 1] = eps[..., 1, 0] = fields["exy"]
    deform = rotation_matrix(fields["theta"]) @ eps
    q_mat = scan_to_detector_matrix(scan_rotation, scan_flip)
    recip = q_mat @ np.linalg.inv(np.swapaxes(deform, -1, -2)) @ q_mat.T  # Q^-1 = Q^T
    basis_und = recip @ basis_ref  # (rx, ry, 2, 2), columns g1, g2
    a_mat = ellipse_matrix(*ell)
    basis = a_mat @ basis_und

    # ---- disk list: every (h, k) overlapping the detector somewhere (and within q_max)
    corners = np.array([[0, 0], [0, ny - 1], [nx - 1, 0], [nx - 1, ny - 1]], float)
    reach = np.sqrt(((corners[:, None, None, :] - np.stack([qx0, qy0], -1)) ** 2).sum(-1))
    reach = reach.max(0) + disk_radius + 1.0  # (rx, ry)
    inv_rows = np.linalg.norm(np.linalg.inv(basis), axis=-1)  # (rx, ry, 2)
    hk_max = np.ceil((inv_rows * reach[..., None]).max(axis=(0, 1))).astype(int)
    hh, kk = np.meshgrid(np.arange(-hk_max[0], hk_max[0] + 1),
                         np.arange(-hk_max[1], hk_max[1] + 1), indexing="ij")
    hh, kk = hh.ravel(), kk.ravel()
    g_ref = basis_ref @ np.stack([hh, kk])  # (2, n)
    g_len = np.hypot(*g_ref)
    keep = np.ones(hh.shape, bool) if q_max is None else g_len <= q_max
    keep[(hh == 0) & (kk == 0)] = True
    hh, kk, g_ref, g_len = hh[keep], kk[keep], g_ref[:, keep], g_len[keep]
    offsets = basis @ np.stack([hh, kk]).astype(float)  # (rx, ry, 2, n)
    bqx = qx0[..., None] + offsets[..., 0, :]
    bqy = qy0[..., None] + offsets[..., 1, :]
    overlaps = ((bqx > -disk_radius) & (bqx < nx - 1 + disk_radius)
                & (bqy > -disk_radius) & (bqy < ny - 1 + disk_radius))
    keep = overlaps.any(axis=(0, 1)) | ((hh == 0) & (kk == 0))
    order = np.lexsort((np.arctan2(g_ref[1], g_ref[0]), np.round(g_len, 9)))
    order = order[keep[order]]
    hh, kk, g_len = hh[order], kk[order], g_len[order]
    bqx, bqy = bqx[..., order], bqy[..., order]

    # ---- amplitudes
    scale = 1.0 if dose is None else dose / central_intensity
    amp = 0.5 * central_intensity * _friedel_modulation(hh, kk, seed) * np.exp(
        -(g_len**2) / (2.0 * intensity_decay**2)
    )
    amp[(hh == 0) & (kk == 0)] = central_intensity
    amp = amp * scale
    amp_map = np.broadcast_to(amp, bqx.shape)

    # ---- render
    args = (detector_shape, disk_radius, edge_width, background * scale, dose is not None,
            int(seed), np.dtype(dtype))
    if chunks is None:
        data: Any = _render_rows(0, bqx, bqy, amp_map, *args)
    else:
        import dask
        import dask.array as da

        step = int(chunks)
        parts = []
        for start in range(0, scan_shape[0], step):
            stop = min(scan_shape[0], start + step)
            rows = slice(start, stop)
            part = dask.delayed(_render_rows, pure=True)(
                start, bqx[rows], bqy[rows], np.ascontiguousarray(amp_map[rows]), *args)
            parts.append(da.from_delayed(part, (stop - start, scan_shape[1]) + detector_shape,
                                         dtype=np.dtype(dtype)))
        data = da.concatenate(parts, axis=0)

    # ---- cube
    rs = np.broadcast_to(np.asarray(r_step, dtype=float), (2,))
    wavelength = None if beam_energy is None else electron_wavelength(beam_energy)
    if convergence_semiangle is None and q_pixel_size is not None and wavelength is not None:
        convergence_semiangle = 1000.0 * wavelength * disk_radius * q_pixel_size
    cube = datacube(
        data,
        r_step=tuple(rs),
        r_units="Å",
        q_step=1.0 if q_pixel_size is None else q_pixel_size,
        q_units="pixels" if q_pixel_size is None else "1/Å",
        beam_energy=beam_energy,
        convergence_semiangle=convergence_semiangle,
        attrs={"source": "stem4d.simulate.crystal",
               "units": "counts" if dose is not None else "arbitrary"},
    )
    varies = np.ptp(qx0) > 0 or np.ptp(qy0) > 0
    cube = set_origin(cube, qx0, qy0) if varies else set_origin(cube, qx0[0, 0], qy0[0, 0])

    # ---- truth
    px = {"units": "pixels"}
    scan = ("rx", "ry")
    vec = ("rx", "ry", "vector")
    pk = ("rx", "ry", "peak")
    disk_area = np.pi * disk_radius**2
    inside = ((bqx - disk_radius >= -0.5) & (bqx + disk_radius <= nx - 0.5)
              & (bqy - disk_radius >= -0.5) & (bqy + disk_radius <= ny - 0.5))
    truth = xr.Dataset(
        {
            "qx0": (scan, qx0, px),
            "qy0": (scan, qy0, px),
            "g1": (vec, basis[..., :, 0], px),
            "g2": (vec, basis[..., :, 1], px),
            "g1_undistorted": (vec, basis_und[..., :, 0], px),
            "g2_undistorted": (vec, basis_und[..., :, 1], px),
            "g1_reference": (("vector",), g1v, px),
            "g2_reference": (("vector",), g2v, px),
            "bragg_qx": (pk, bqx, px),
            "bragg_qy": (pk, bqy, px),
            "bragg_h": (("peak",), hh, {"units": ""}),
            "bragg_k": (("peak",), kk, {"units": ""}),
            "bragg_amplitude": (pk, np.array(amp_map), {
                "units": "counts" if dose is not None else "arbitrary",
                "description": "value of a pixel fully inside the disk"}),
            "bragg_intensity": (pk, amp_map * disk_area, {
                "units": "counts" if dose is not None else "arbitrary",
                "description": "integrated disk intensity, pi * disk_radius**2 * amplitude"}),
            "bragg_inside": (pk, inside, {"units": "",
                                          "description": "whole disk on the detector"}),
            "exx": (scan, fields["exx"], {"units": ""}),
            "eyy": (scan, fields["eyy"], {"units": ""}),
            "exy": (scan, fields["exy"], {"units": ""}),
            "theta": (scan, fields["theta"], {"units": "rad"}),
            "disk_radius": ((), float(disk_radius), px),
            "edge_width": ((), float(edge_width), px),
            "scan_rotation": ((), float(scan_rotation), {"units": "rad"}),
            "scan_flip": ((), bool(scan_flip), {"units": ""}),
            "ellipse_a": ((), ell[0], {"units": ""}),
            "ellipse_b": ((), ell[1], {"units": ""}),
            "ellipse_phi": ((), ell[2], {"units": "rad"}),
            "background": ((), float(background * scale),
                           {"units": "counts" if dose is not None else "arbitrary"}),
        },
        coords={"rx": cube.coords["rx"].variable, "ry": cube.coords["ry"].variable,
                "vector": ("vector", ["qx", "qy"]), "peak": ("peak", np.arange(hh.size))},
        attrs={"source": "stem4d.simulate.crystal",
               "convention": "g(r) = A @ Q @ F^-T @ Q^-1 @ g_ref; see stem4d.simulate"},
    )
    return cube, truth


def _render_rows(
    start: int,
    bqx: np.ndarray,
    bqy: np.ndarray,
    amp: np.ndarray,
    detector_shape: tuple[int, int],
    disk_radius: float,
    edge_width: float,
    background: float,
    noisy: bool,
    seed: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Render the scan rows ``start, start + 1, ...`` whose ``(rows, ry, peak)`` disk
    centres and amplitudes are given (noise seeded by the absolute row index); returns
    ``(rows, ry, qx, qy)``."""
    n_rows, n_cols, n_peak = bqx.shape
    out = np.full((n_rows * n_cols,) + tuple(detector_shape), background, dtype=np.float64)
    _render(out, bqx.reshape(-1, n_peak), bqy.reshape(-1, n_peak),
            np.asarray(amp).reshape(-1, n_peak), disk_radius, edge_width)
    out = out.reshape((n_rows, n_cols) + tuple(detector_shape))
    if noisy:
        for i in range(n_rows):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(start + i,)))
            out[i] = rng.poisson(out[i])
    if np.issubdtype(dtype, np.integer):
        np.rint(out, out=out)
    return out.astype(dtype, copy=False)


def probe_disk(
    detector_shape: Sequence[int],
    radius: float,
    *,
    center: Sequence[float] | None = None,
    edge_width: float = 0.5,
    intensity: float = 1.0,
    dtype: Any = "float32",
) -> xr.DataArray:
    """A single soft-edged disk: a synthetic vacuum probe image.

    Parameters
    ----------
    detector_shape
        ``(qx, qy)`` pixels.
    radius, edge_width
        Disk radius and extra Gaussian edge blur, pixels (profile as in :func:`crystal`).
    center
        Disk centre ``(qx, qy)``, fractional pixel index. Default: the detector centre.
    intensity
        Value of a fully covered pixel; the sum is ``pi * radius**2 * intensity``.
    dtype
        Data type of the image.

    Returns
    -------
    DataArray ``(qx, qy)`` with coordinates in pixels, zero at ``center``.
    """
    nx, ny = _shape2(detector_shape, "detector_shape")
    if center is None:
        center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    c = _vec2(center, "center")
    out = np.zeros((1, nx, ny))
    _render(out, c[:1][None], c[1:][None], np.array([[float(intensity)]]), radius, edge_width)
    return xr.DataArray(
        out[0].astype(dtype),
        dims=("qx", "qy"),
        coords={"qx": ("qx", np.arange(nx) - c[0], {"units": "pixels"}),
                "qy": ("qy", np.arange(ny) - c[1], {"units": "pixels"})},
        name="probe",
        attrs={"source": "stem4d.simulate.probe_disk", "radius": float(radius)},
    )


# ------------------------------------------------------------------ amorphous ring
def ring_pattern(
    detector_shape: Sequence[int] = (128, 128),
    *,
    radius: float,
    width: float,
    center: Sequence[Any] | None = None,
    ellipse: Sequence[float] | None = None,
    background: float | Sequence[float] = (0.2, 40.0),
    intensity: float = 1.0,
    dose: float | None = None,
    seed: int = 0,
    q_pixel_size: float | None = None,
    scan_shape: Sequence[int] | None = None,
    dtype: Any = "float32",
) -> tuple[xr.DataArray, xr.Dataset]:
    """Simulate an amorphous-like diffraction ring with a known elliptical distortion.

    The intensity at detector pixel ``q`` (pixel centres, no pixel integration) is
    ``intensity * exp(-(rho - radius)**2 / (2 width**2)) + background(rho)`` with
    ``rho = |A^-1 (q - center)|`` the *undistorted* distance from the centre, pixels, and
    ``A = ellipse_matrix(a, b, phi)`` the detector stretch of :func:`crystal` (stretch
    ``a`` along the direction at ``phi`` rad from ``qx`` towards ``qy``, ``b`` across it,
    about the centre). The ring's peak is therefore the ellipse of semi-axes
    ``a * radius`` (along ``phi``) and ``b * radius``; the diffuse background is distorted
    in the same way.

    Parameters
    ----------
    detector_shape
        ``(qx, qy)`` pixels.
    radius, width
        Undistorted ring radius and Gaussian standard deviation of its radial profile,
        pixels.
    center
        Ring centre ``(qx0, qy0)``, fractional pixel index; with ``scan_shape`` each may
        be a ``(rx, ry)`` array (a per-position origin). Default: the detector centre.
    ellipse
        ``(a, b, phi)`` as in :func:`crystal`; ``None``: no distortion.
    background
        A number (constant) or ``(amplitude, decay)``: ``amplitude * exp(-rho / decay)``
        with ``decay`` in pixels; in the units of ``intensity``.
    intensity
        Peak value of the ring (above the background) without ``dose``.
    dose
        Mean electron count at the ring's peak (the pattern is scaled by
        ``dose / intensity``); Poisson counts are drawn, seeded by ``seed`` (scan row ``i``
        of a cube uses ``SeedSequence(seed, spawn_key=(i,))``). ``None``: noise-free.
    q_pixel_size
        Detector pixel size, 1/Å per pixel. ``None``: q coordinates in pixels.
    scan_shape
        ``(rx, ry)``: return a datacube holding the pattern at every position (noise drawn
        independently). ``None``: one ``(qx, qy)`` pattern.
    dtype
        Data type of the result.

    Returns
    -------
    pattern
        ``(qx, qy)`` DataArray, or ``(rx, ry, qx, qy)`` datacube with ``scan_shape``;
        q coordinates (pixels or 1/Å) are zero at the (mean) centre, a per-position
        centre is stored as ``qx0``/``qy0`` coordinates.
    truth
        Dataset: ``radius``, ``width`` (pixels, undistorted); ``qx0``, ``qy0`` the centre
        (pixels); ``ellipse_a``, ``ellipse_b``, ``ellipse_phi``; the ring's peak ellipse as
        a fit should find it, ``ring_a >= ring_b`` semi-axes (pixels) and ``ring_theta``
        (rad, direction of ``ring_a`` from ``qx`` towards ``qy``, in ``(-pi/2, pi/2]``);
        ``background_amplitude``, ``background_decay`` (``inf`` for a constant);
        ``scale`` (counts per unit of ``intensity``, 1 without ``dose``).
    """
    nx, ny = _shape2(detector_shape, "detector_shape")
    for name, val in (("radius", radius), ("width", width), ("intensity", intensity)):
        if not (np.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be positive and finite, got {val!r}")
    if dose is not None and not (np.isfinite(dose) and dose > 0):
        raise ValueError(f"dose must be a positive count per pixel or None, got {dose!r}")
    if np.ndim(background) == 0:
        bg_amp, bg_decay = float(background), np.inf
    else:
        try:
            bg_amp, bg_decay = (float(v) for v in background)
        except (TypeError, ValueError):
            raise ValueError(
                f"background must be a number or (amplitude, decay pixels), got {background!r}"
            ) from None
    if not (np.isfinite(bg_amp) and bg_amp >= 0 and bg_decay > 0):
        raise ValueError(
            f"background amplitude must be >= 0 and decay > 0 (pixels), got {background!r}")
    ell = _ellipse_params(ellipse)
    scan = None if scan_shape is None else _shape2(scan_shape, "scan_shape")
    if center is None:
        center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    if len(center) != 2:
        raise ValueError(f"center must be a pair (qx0, qy0) in pixels, got {center!r}")
    if scan is None:
        c = _vec2(center, "center")
        cx, cy = np.full((1, 1), c[0]), np.full((1, 1), c[1])
    else:
        cx = _scan_field(center[0], scan, "center[0]")
        cy = _scan_field(center[1], scan, "center[1]")

    # ---- render (P, nx, ny) in float64, one scan row at a time
    inv = np.linalg.inv(ellipse_matrix(*ell))
    gx = np.arange(nx, dtype=float)[:, None]
    gy = np.arange(ny, dtype=float)[None, :]
    scale = 1.0 if dose is None else dose / intensity
    out = np.empty(cx.shape + (nx, ny), dtype=np.dtype(dtype))
    for i in range(cx.shape[0]):
        dx = gx - cx[i][:, None, None]
        dy = gy - cy[i][:, None, None]
        ux = inv[0, 0] * dx + inv[0, 1] * dy
        uy = inv[1, 0] * dx + inv[1, 1] * dy
        rho = np.sqrt(ux**2 + uy**2)
        row = intensity * np.exp(-((rho - radius) ** 2) / (2.0 * width**2))
        row += bg_amp * np.exp(-rho / bg_decay) if np.isfinite(bg_decay) else bg_amp
        row *= scale
        if dose is not None:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
            row = rng.poisson(row).astype(float)
        out[i] = np.rint(row) if np.issubdtype(out.dtype, np.integer) else row

    # ---- xarray objects
    a_s, b_s, phi = ell
    if a_s >= b_s:
        ring_a, ring_b, theta = a_s * radius, b_s * radius, phi
    else:
        ring_a, ring_b, theta = b_s * radius, a_s * radius, phi + np.pi / 2
    theta = float(np.pi / 2 - np.mod(np.pi / 2 - theta, np.pi))  # wrap to (-pi/2, pi/2]
    units = "counts" if dose is not None else "arbitrary"
    px = {"units": "pixels"}
    truth_vars: dict[str, Any] = {
        "radius": ((), float(radius), px),
        "width": ((), float(width), px),
        "ellipse_a": ((), a_s, {"units": ""}),
        "ellipse_b": ((), b_s, {"units": ""}),
        "ellipse_phi": ((), phi, {"units": "rad"}),
        "ring_a": ((), ring_a, px),
        "ring_b": ((), ring_b, px),
        "ring_theta": ((), theta, {"units": "rad"}),
        "background_amplitude": ((), bg_amp * scale, {"units": units}),
        "background_decay": ((), bg_decay, px),
        "scale": ((), scale, {"units": ""}),
    }
    attrs = {"source": "stem4d.simulate.ring_pattern", "units": units}
    q_step = 1.0 if q_pixel_size is None else float(q_pixel_size)
    q_units = "pixels" if q_pixel_size is None else "1/Å"
    if scan is None:
        pattern = xr.DataArray(
            out[0, 0], dims=("qx", "qy"),
            coords={"qx": ("qx", np.arange(nx) * q_step, {"units": q_units}),
                    "qy": ("qy", np.arange(ny) * q_step, {"units": q_units})},
            name="ring", attrs=attrs)
        pattern = set_origin(pattern, cx[0, 0], cy[0, 0])
        truth_vars["qx0"] = ((), float(cx[0, 0]), px)
        truth_vars["qy0"] = ((), float(cy[0, 0]), px)
        return pattern, xr.Dataset(truth_vars, attrs=attrs)
    cube = datacube(out, q_step=q_step, q_units=q_units, attrs=attrs, name="ring")
    varies = np.ptp(cx) > 0 or np.ptp(cy) > 0
    cube = set_origin(cube, cx, cy) if varies else set_origin(cube, cx[0, 0], cy[0, 0])
    truth_vars["qx0"] = (("rx", "ry"), cx, px)
    truth_vars["qy0"] = (("rx", "ry"), cy, px)
    truth = xr.Dataset(truth_vars, coords={"rx": cube.coords["rx"].variable,
                                           "ry": cube.coords["ry"].variable}, attrs=attrs)
    return cube, truth


__all__.append("ring_pattern")


# ------------------------------------------------------------------ thin phase object
def _phase_object_atoms(
    atoms: Any, atom_potential: Any, extent: np.ndarray, margin: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scan-frame atom positions ``(N, 2)`` (Å) and peak projected potentials ``(N,)``."""
    if atoms is None:
        spacing = 2.1
        lo, hi = -margin * np.ones(2), extent + margin
        gx = np.arange(lo[0], hi[0] + spacing, spacing)
        gy = np.arange(lo[1], hi[1] + spacing, spacing)
        xs, ys = np.meshgrid(gx, gy, indexing="ij")
        pos = np.stack([xs.ravel(), ys.ravel()], axis=1)
        rng = np.random.default_rng(np.random.SeedSequence([abs(int(seed)), 2718]))
        pos = pos + rng.uniform(-0.3, 0.3, size=pos.shape)
        weight = rng.uniform(0.5, 1.0, size=pos.shape[0])
    else:
        pos = np.asarray(atoms, dtype=float)
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] < 1:
            raise ValueError(
                "atoms must be an (N, 2) array of scan-frame positions (x along rx, y along "
                f"ry), Å, got shape {pos.shape}"
            )
        if not np.all(np.isfinite(pos)):
            raise ValueError("atoms must be finite positions, got NaN/inf")
        weight = np.ones(pos.shape[0])
    potential = np.asarray(atom_potential, dtype=float)
    if potential.ndim not in (0, 1) or (potential.ndim == 1 and potential.size != pos.shape[0]):
        raise ValueError(
            "atom_potential must be a number or one value per atom "
            f"({pos.shape[0]}), V·Å, got shape {potential.shape}"
        )
    if not np.all(np.isfinite(potential)) or np.any(potential <= 0):
        raise ValueError(f"atom_potential must be positive (V·Å), got {atom_potential!r}")
    return pos, weight * potential


def _gaussian_sum(points: np.ndarray, centres: np.ndarray, amps: np.ndarray,
                  width: float, gradient: bool = False) -> np.ndarray:
    """``f = sum_j amps_j exp(-|p - c_j|^2 / (2 width^2))`` at ``points (..., 2)``.

    With ``gradient``, returns ``(..., 3)``: ``f`` and its two partial derivatives.
    """
    flat = points.reshape(-1, 2)
    res = np.zeros((flat.shape[0], 3 if gradient else 1))
    reach = 6.0 * width
    for c, a in zip(centres, amps, strict=True):
        dxy = flat - c
        d2 = dxy[:, 0] ** 2 + dxy[:, 1] ** 2
        near = d2 < reach**2
        val = a * np.exp(-d2[near] / (2.0 * width**2))
        res[near, 0] += val
        if gradient:
            res[near, 1:] -= (val / width**2)[:, None] * dxy[near]
    return res.reshape(points.shape[:-1] + ((3,) if gradient else ()))


def phase_object(
    scan_shape: Sequence[int] = (24, 24),
    detector_shape: Sequence[int] = (64, 64),
    *,
    atoms: Any = None,
    atom_potential: float | Sequence[float] = 800.0,
    atom_width: float = 0.35,
    convergence_semiangle: float = 20.0,
    defocus: float = 0.0,
    r_step: float | Sequence[float] = 0.4,
    q_pixel_size: float | None = None,
    beam_energy: float = 300e3,
    scan_rotation: float = 0.0,
    scan_flip: bool = False,
    dose: float | None = None,
    dtype: Any = "float32",
    seed: int = 0,
    chunks: int | None = None,
) -> tuple[xr.DataArray, xr.Dataset]:
    """Wave-optical 4D-STEM datacube of a thin phase object, and its exact answer.

    The specimen is a pure phase object ``t(s) = exp(i phi(s))`` with
    ``phi(s) = sigma * V(s)``: ``sigma`` the relativistic interaction parameter
    (:func:`stem4d.interaction_parameter`, rad / (V Å)) and ``V`` a projected potential
    made of positive Gaussian "atoms" (peak ``atom_potential`` V·Å, standard deviation
    ``atom_width`` Å) at known positions in the **scan frame** (``x`` along ``rx``, ``y``
    along ``ry``, Å, the frame of the cube's ``rx``/``ry`` coordinates; scan position
    ``(i, j)`` is at ``(i * r_step_x, j * r_step_y)``).

    The probe is the inverse Fourier transform of a circular aperture of semiangle
    ``convergence_semiangle`` (soft edge one detector pixel wide) times the lens transfer
    ``exp(-i chi)``, ``chi(k) = -pi * lambda * defocus * |k|^2`` (``defocus = -C10`` Å,
    positive = underfocus), normalized to unit total intensity. Each pattern is
    ``|F[P(r - r_p) t(r)]|^2`` with the forward transform ``exp(-2 pi i k.r)``, so a phase
    gradient ``grad phi`` deflects the beam by ``+grad phi / (2 pi)`` (1/Å): the centre of
    mass of each pattern is ``(|P|^2 * grad phi)(r_p) / (2 pi)`` exactly.

    **Frames.** The computation is done in the detector frame: the real-space window of
    each pattern has its rows along ``qx`` and its columns along ``qy`` (pixel
    ``1 / (N q_pixel_size)`` Å), the object is evaluated at ``Q^-1 u`` for a
    detector-frame point ``u``, and scan position ``p`` sits at ``Q p``, with
    ``Q = R(scan_rotation) @ diag(1, -1 if scan_flip else 1)``
    (:func:`scan_to_detector_matrix`). So a scan-frame vector ``v`` appears on the
    detector as ``Q v``, the stem4d convention: the centre of mass of the cube is
    ``Q (|P|^2 * grad phi) / (2 pi)`` with the gradient taken in the scan frame. The
    probe at position ``p`` is shifted to ``Q p`` by a Fourier phase ramp (sub-pixel) and
    the object window is cut at whole pixels of a detector-frame object grid.

    Parameters
    ----------
    scan_shape, detector_shape
        ``(rx, ry)`` probe positions and ``(qx, qy)`` detector pixels.
    atoms
        ``(N, 2)`` atom positions in the scan frame, Å. Default: a square grid of spacing
        2.1 Å covering the scan and the probe window around it, each atom moved by up to
        ±0.3 Å and weighted by a factor in ``[0.5, 1]`` (pseudo-random from ``seed``), so
        the object has no mirror or rotation symmetry.
    atom_potential
        Peak projected potential of an atom, V·Å (a number or one per atom). 800 V·Å
        gives a peak phase of 0.52 rad at 300 kV.
    atom_width
        Gaussian standard deviation of an atom, Å.
    convergence_semiangle
        Probe semiangle, mrad.
    defocus
        Probe defocus, Å (``-C10``; positive = underfocus).
    r_step
        Scan step, Å (one number or ``(rx, ry)``).
    q_pixel_size
        Detector pixel size, 1/Å per pixel. Default: the aperture radius spans
        ``min(detector_shape) / 5`` pixels. The aperture must fit inside 0.45 of the
        detector half-width (no aliasing).
    beam_energy
        Electron energy, eV.
    scan_rotation, scan_flip
        Scan-to-detector rotation (rad) and flip of the stem4d convention.
    dose
        Mean number of electrons per pattern (the noise-free pattern sums to 1); Poisson
        counts are drawn, scan row ``i`` seeded by ``SeedSequence(seed, spawn_key=(i,))``.
        ``None``: noise-free patterns, each summing to 1.
    dtype
        Data type of the cube.
    seed
        Seeds the default atom arrangement and the noise.
    chunks
        Scan rows per chunk: return a dask-backed cube (same values).

    Returns
    -------
    cube
        DataArray ``(rx, ry, qx, qy)``: ``rx``/``ry`` in Å, ``qx``/``qy`` in 1/Å with
        ``q = 0`` at the unscattered beam (detector pixel ``N // 2``), ``beam_energy`` and
        ``convergence_semiangle``. The orientation is *not* stored on the cube.
    truth
        Dataset: ``phase`` ``(rx, ry)``, the object phase at each scan position (rad);
        ``phase_blurred``, that phase convolved with the probe intensity (what an ideal
        integrated centre of mass recovers, up to a constant); ``com_qx``, ``com_qy``, the
        exact centre of mass of each pattern relative to ``q = 0`` in the detector frame
        (1/Å); ``scan_rotation`` (rad), ``scan_flip``, ``scan_to_detector`` (the 2x2
        ``Q``, rows detector ``qx, qy``, columns scan ``x, y``); ``atom_x``, ``atom_y``
        (Å, scan frame), ``atom_potential`` (V·Å), ``atom_phase`` (rad);
        ``wavelength`` (Å), ``sigma`` (rad / (V Å)), ``atom_width`` (Å).
    """
    import scipy.fft

    from .datacube import _pair, interaction_parameter

    nrx, nry = _shape2(scan_shape, "scan_shape")
    nqx, nqy = _shape2(detector_shape, "detector_shape")
    if min(nqx, nqy) < 8:
        raise ValueError(f"detector_shape must be at least (8, 8), got {(nqx, nqy)}")
    for name, value in (("atom_width", atom_width),
                        ("convergence_semiangle", convergence_semiangle),
                        ("beam_energy", beam_energy)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if not np.isfinite(defocus):
        raise ValueError(f"defocus must be finite (Å), got {defocus!r}")
    if dose is not None and (not np.isfinite(dose) or dose <= 0):
        raise ValueError(f"dose must be positive (electrons per pattern), got {dose!r}")
    if beam_energy < 1000:
        raise ValueError(f"beam_energy is in eV (e.g. 300e3 for 300 kV), got {beam_energy!r}")
    steps = np.array(_pair(r_step, "r_step"), dtype=float)
    lam = float(electron_wavelength(beam_energy))
    sigma = float(interaction_parameter(beam_energy))
    k_ap = convergence_semiangle * 1e-3 / lam  # aperture radius, 1/Å
    if q_pixel_size is None:
        dq = k_ap / (min(nqx, nqy) / 5.0)
    else:
        dq = float(q_pixel_size)
        if not np.isfinite(dq) or dq <= 0:
            raise ValueError(f"q_pixel_size must be positive (1/Å per pixel), got {dq!r}")
    if k_ap > 0.45 * min(nqx, nqy) * dq:
        raise ValueError(
            f"the aperture (radius {k_ap / dq:.1f} pixels) does not fit in the detector "
            f"{(nqx, nqy)}: it must stay within 0.45 of the half-width; use a larger "
            "q_pixel_size or detector"
        )
    dx = np.array([1.0 / (nqx * dq), 1.0 / (nqy * dq)])  # real-space pixel, Å
    q_mat = scan_to_detector_matrix(scan_rotation, scan_flip)

    # atoms (scan frame) and the object on a detector-frame grid
    extent = steps * (np.array([nrx, nry]) - 1)
    window = np.array([nqx, nqy]) * dx
    atoms_xy, amps = _phase_object_atoms(
        atoms, atom_potential, extent, 0.5 * float(np.hypot(*window)) + 4 * atom_width, seed)
    ii, jj = np.meshgrid(np.arange(nrx) * steps[0], np.arange(nry) * steps[1], indexing="ij")
    scan_pos = np.stack([ii, jj], axis=-1)  # (rx, ry, 2), scan frame, Å
    det_pos = scan_pos @ q_mat.T  # Q p
    g = det_pos.reshape(-1, 2) / dx  # detector-frame position, pixels
    gmin = np.floor(g.min(axis=0)) - np.array([nqx, nqy]) // 2 - 2
    g = g - gmin
    size = (np.ceil(g.max(axis=0)).astype(int) + np.array([nqx, nqy]) + 4)
    gx = (np.arange(size[0]) + gmin[0]) * dx[0]
    gy = (np.arange(size[1]) + gmin[1]) * dx[1]
    grid = np.stack(np.meshgrid(gx, gy, indexing="ij"), axis=-1)
    det_atoms = atoms_xy @ q_mat.T
    phi_det = sigma * _gaussian_sum(grid, det_atoms, amps, atom_width, gradient=True)
    transmission = np.exp(1j * phi_det[..., 0]).astype(np.complex64)

    # probe in Fourier space
    kx = np.fft.fftfreq(nqx, d=dx[0])
    ky = np.fft.fftfreq(nqy, d=dx[1])
    k = np.hypot(kx[:, None], ky[None, :])
    aperture = np.clip((k_ap - k) / dq + 0.5, 0.0, 1.0)
    chi = -np.pi * lam * defocus * k**2
    probe_k = aperture * np.exp(-1j * chi)
    probe_k /= np.sqrt(np.sum(np.abs(probe_k) ** 2))

    # patterns, in batches of positions
    start = np.floor(g).astype(np.int64)
    frac = g - start
    corner = start - np.array([nqx, nqy]) // 2
    shift = (np.array([nqx, nqy]) // 2 + frac) * dx  # probe centre in the window, Å
    n_pos = nrx * nry
    out = np.empty((n_pos, nqx, nqy), dtype=np.float64)
    seen = np.empty((n_pos, 3))  # probe-weighted phase and phase gradient
    ar_x, ar_y = np.arange(nqx), np.arange(nqy)
    batch = max(1, (1 << 21) // (nqx * nqy))
    for b0 in range(0, n_pos, batch):
        b1 = min(n_pos, b0 + batch)
        ramp_x = np.exp(-2j * np.pi * shift[b0:b1, 0, None] * kx[None, :])
        ramp_y = np.exp(-2j * np.pi * shift[b0:b1, 1, None] * ky[None, :])
        spec = (probe_k[None] * ramp_x[:, :, None] * ramp_y[:, None, :]).astype(np.complex64)
        probe = scipy.fft.ifft2(spec, norm="ortho", workers=-1)
        rows = corner[b0:b1, 0, None, None] + ar_x[None, :, None]
        cols = corner[b0:b1, 1, None, None] + ar_y[None, None, :]
        weight = np.abs(probe) ** 2
        seen[b0:b1] = np.einsum("nij,nijc->nc", weight, phi_det[rows, cols], optimize=True)
        probe *= transmission[rows, cols]
        far = scipy.fft.fft2(probe, norm="ortho", workers=-1)
        out[b0:b1] = np.fft.fftshift(np.abs(far) ** 2, axes=(1, 2))
    out = out.reshape(nrx, nry, nqx, nqy)
    if dose is not None:
        out *= dose
        for i in range(nrx):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
            out[i] = rng.poisson(out[i])
    cube = datacube(
        out.astype(dtype), r_step=tuple(steps), r_units="Å", q_step=dq, q_units="1/Å",
        beam_energy=beam_energy, convergence_semiangle=convergence_semiangle,
        origin=(nqx // 2, nqy // 2), name="phase_object",
        attrs={"source": "stem4d.simulate.phase_object"},
    )
    if chunks is not None:
        cube = cube.chunk({"rx": int(chunks)})

    # truth: phase at the scan positions, and what the probe sees
    phase = sigma * _gaussian_sum(scan_pos, atoms_xy, amps, atom_width)
    seen = seen.reshape(nrx, nry, 3)
    phase_blurred = seen[..., 0]
    com_det = seen[..., 1:] / (2 * np.pi)
    scan = ("rx", "ry")
    truth = xr.Dataset(
        {
            "phase": (scan, phase, {"units": "rad"}),
            "phase_blurred": (scan, phase_blurred, {
                "units": "rad", "description": "phase convolved with the probe intensity"}),
            "com_qx": (scan, com_det[..., 0], {"units": "1/Å"}),
            "com_qy": (scan, com_det[..., 1], {"units": "1/Å"}),
            "scan_to_detector": (("detector_axis", "scan_axis"), q_mat),
            "atom_x": (("atom",), atoms_xy[:, 0], {"units": "Å"}),
            "atom_y": (("atom",), atoms_xy[:, 1], {"units": "Å"}),
            "atom_potential": (("atom",), amps, {"units": "V·Å"}),
            "atom_phase": (("atom",), sigma * amps, {"units": "rad"}),
        },
        coords={
            "rx": cube.coords["rx"].variable, "ry": cube.coords["ry"].variable,
            "detector_axis": ("detector_axis", ["qx", "qy"]),
            "scan_axis": ("scan_axis", ["x", "y"]),
            "scan_rotation": ((), float(scan_rotation), {"units": "rad"}),
            "scan_flip": ((), bool(scan_flip), {"units": ""}),
            "wavelength": ((), lam, {"units": "Å"}),
            "sigma": ((), sigma, {"units": "rad/(V·Å)"}),
            "atom_width": ((), float(atom_width), {"units": "Å"}),
            "defocus": ((), float(defocus), {"units": "Å"}),
        },
        attrs={"source": "stem4d.simulate.phase_object",
               "convention": "pattern = |FFT(P(r - Q p) exp(i phi(Q^-1 r)))|^2, "
                             "Q = R(scan_rotation) diag(1, -1 if scan_flip else 1)"},
    )
    return cube, truth


__all__.append("phase_object")
