"""Detector calibrations: elliptical distortion, reciprocal pixel size, beamstop, background.

Elliptical distortion
---------------------
:func:`fit_ellipse` fits a ring (an amorphous halo, a polycrystalline ring, or the ring of a
Bragg vector map) in an annulus of a diffraction image with the 2-D model ::

    I(q) = c0 + c1 (rho - 1) + A exp(-(rho - 1)**2 / (2 s**2)),
    rho(q)**2 = (q - q0)^T M (q - q0),  M = R(theta) diag(1/a**2, 1/b**2) R(-theta),

by :func:`scipy.optimize.least_squares` over the pixels of the annulus (pixel centres, in
the image's coordinate units). ``M`` is fitted through its three elements, so the fit is
smooth through ``a = b``; the reported ``a >= b`` are the semi-axes of the ring's peak and
``theta`` (rad, in ``(-pi/2, pi/2]``) the direction of ``a`` measured from ``qx`` towards
``qy`` (``R(t) = [[cos t, -sin t], [sin t, cos t]]``). A circle of radius ``R`` distorted
by the stretch ``R(phi) diag(a_s, b_s) R(-phi)`` of :func:`stem4d.simulate.ellipse_matrix`
(``a_s >= b_s``) gives ``a = a_s R``, ``b = b_s R``, ``theta = phi`` (mod pi).

The ellipse calibration stored on a cube (:func:`correct_ellipse`) is that stretch with the
scale left out: 0-d coordinates ``ellipse_a = a / sqrt(a b)``, ``ellipse_b = b / sqrt(a b)``
(dimensionless, ``ellipse_a * ellipse_b = 1``) and ``ellipse_theta`` (rad). Corrected
coordinates undo it about ``q = 0`` (the mean origin)::

    q_c = T q,  T = R(theta) diag(1 / ellipse_a, 1 / ellipse_b) R(-theta),

an area-preserving map in which the ring is a circle of radius ``sqrt(a b)``.
Set the pixel size after (or independently of) the ellipse: the ellipse is dimensionless,
so an isotropic change of pixel size leaves it as it is. Functions that change the q
coordinates keep it valid: :func:`stem4d.flip_q` maps ``ellipse_theta`` to
``-ellipse_theta``, :func:`stem4d.transpose_q` to ``pi/2 - ellipse_theta`` (``ellipse_a``
stays the semi-axis along ``ellipse_theta``), and :func:`stem4d.set_q_calibration` /
:func:`stem4d.convert_q_units` re-express it when the pixels' aspect ratio changes. They,
and :func:`stem4d.set_origin`, drop ``qx_c``/``qy_c``; ``correct_ellipse(obj)`` recomputes
them from the stored ellipse.

Reciprocal pixel size
---------------------
``q = 1 / d`` (no 2 pi) in 1/Å; angles ``alpha [mrad] = 1000 lambda q``. :func:`calibrate_q`
takes PtyRAD's ``meas_calibration`` modes (``N`` the detector side, pixels): ``dk`` (1/Å
per pixel), ``kMax`` (1/Å at the detector edge, ``dk = 2 kMax / N``), ``dx`` (real-space
pixel of a reconstruction, Å, ``dk = 1 / (N dx)``), ``da`` (mrad per pixel), ``angleMax``
(``da = 2 angleMax / N``), ``n_alpha`` (``angleMax = n_alpha alpha``), ``RBF`` (bright-field
disk radius, pixels, ``da = alpha / RBF``) and ``fitRBF`` (``RBF`` measured on the mean
pattern: the flux radius ``radius_flux`` of :func:`stem4d.probe.measure_disk`, the radius of
the unblurred aperture; the 50 % contour of a blurred disk lies ``s**2 / (2 RBF)`` inside it).

Beamstop and background
-----------------------
:func:`beamstop_mask` (True on the beamstop: pixels to leave out), :func:`radial_background`
(median over rings about the origin), :func:`subtract_radial_background` and
:func:`local_average` (mean pattern around a scan position).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage, optimize

from .datacube import (
    DETECTOR_DIMS,
    _as_pattern,
    _half_turn,
    _origin_offsets,  # noqa: F401  (stem4d.bragg imports it from here)
    _require_origin,
    as_float,
    electron_wavelength,
    q_pixel_size,
    rotation_matrix,
    set_beam,
    set_q_calibration,
    validate_cube,
)
from .detectors import _center, _detector, _in_ring, _mask_array, _positive, _radii

__all__ = [
    "fit_ellipse",
    "correct_ellipse",
    "ellipse_corrected_coordinates",
    "corrected_circle",
    "corrected_annulus",
    "q_pixel_size_from_ring",
    "q_pixel_size_from_lattice",
    "q_pixel_size_from_probe",
    "calibrate_q",
    "beamstop_mask",
    "radial_background",
    "subtract_radial_background",
    "local_average",
]

_BATCH = 256  # patterns per batch in the ring-median kernel


# ===================================================================== helpers
def _non_negative(value: Any, argname: str, units: str) -> float:
    """A finite number ``>= 0``, or a ValueError naming ``argname``."""
    v = as_float(value, argname)
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{argname} must be >= 0 ({units}), got {value!r}")
    return v


def _check_q_object(obj: Any, argname: str) -> xr.DataArray:
    """A cube ``(rx, ry, qx, qy)`` or a pattern ``(qx, qy)`` DataArray."""
    if not isinstance(obj, xr.DataArray):
        raise TypeError(
            f"{argname} must be a (qx, qy) pattern or (rx, ry, qx, qy) cube DataArray, "
            f"got {type(obj).__name__}"
        )
    if obj.ndim == 4:
        return validate_cube(obj, argname)
    return _as_pattern(obj, argname)


def _exclude_mask(obj: xr.DataArray, mask: Any, argname: str) -> np.ndarray | None:
    """A bool ``(qx, qy)`` mask of pixels to leave out (True = excluded), or None."""
    if mask is None:
        return None
    return _mask_array(mask, (obj.sizes["qx"], obj.sizes["qy"]), argname, bool_only=True)


# ============================================================ ellipse fitting
def _conic_guess(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and ``M`` from the weighted peak radius in angular sectors (unit-scaled
    coordinates centred on the guess); falls back to a circle."""
    phi = np.arctan2(y, x)
    r = np.hypot(x, y)
    nsec = int(np.clip(x.size // 40, 8, 48))
    sec = np.minimum(((phi + np.pi) / (2 * np.pi) * nsec).astype(int), nsec - 1)
    wsum = np.bincount(sec, w, nsec)
    rbar = np.bincount(sec, w * r, nsec)
    cx = np.bincount(sec, w * np.cos(phi), nsec)
    cy = np.bincount(sec, w * np.sin(phi), nsec)
    ok = wsum > 0
    r_all = float((w * r).sum() / w.sum()) if w.sum() > 0 else 1.0
    circle = (np.zeros(2), np.eye(2) / r_all**2)
    if ok.sum() < 6:
        return circle
    rad = rbar[ok] / wsum[ok]
    ang = np.arctan2(cy[ok], cx[ok])
    px, py = rad * np.cos(ang), rad * np.sin(ang)
    design = np.stack([px**2, px * py, py**2, px, py], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.ones_like(px), rcond=None)
    k = np.array([[coef[0], coef[1] / 2], [coef[1] / 2, coef[2]]])
    try:
        x0 = -0.5 * np.linalg.solve(k, coef[3:])
    except np.linalg.LinAlgError:
        return circle
    denom = 1.0 + x0 @ k @ x0
    m = k / denom if denom > 0 else -k
    if np.any(np.linalg.eigvalsh(m) <= 0) or np.hypot(*x0) > 0.5:
        return circle
    return x0, m


def _ring_model(p: np.ndarray, x: np.ndarray, y: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model values, rho and the Gaussian term for parameters ``p``."""
    x0, y0, m11, m12, m22, s, amp, c0, c1 = p
    dx, dy = x - x0, y - y0
    rho = np.sqrt(np.maximum(m11 * dx * dx + 2 * m12 * dx * dy + m22 * dy * dy, 1e-24))
    g = np.exp(-((rho - 1.0) ** 2) / (2 * s * s))
    return c0 + c1 * (rho - 1.0) + amp * g, rho, g


def _ring_jacobian(p: np.ndarray, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    x0, y0, m11, m12, m22, s, amp, c0, c1 = p
    _, rho, g = _ring_model(p, x, y)
    dx, dy = x - x0, y - y0
    u = rho - 1.0
    dmodel_drho = c1 - amp * g * u / (s * s)
    drho_dq = dmodel_drho / (2 * rho)  # d model / d (rho^2)
    jac = np.empty((x.size, 9))
    jac[:, 0] = -drho_dq * (2 * m11 * dx + 2 * m12 * dy)
    jac[:, 1] = -drho_dq * (2 * m12 * dx + 2 * m22 * dy)
    jac[:, 2] = drho_dq * dx * dx
    jac[:, 3] = drho_dq * 2 * dx * dy
    jac[:, 4] = drho_dq * dy * dy
    jac[:, 5] = amp * g * u * u / s**3
    jac[:, 6] = g
    jac[:, 7] = 1.0
    jac[:, 8] = u
    return jac


_MIN_RING_SNR = 5.0  # fit_ellipse: ring amplitude / its standard error, at least


def _amplitude_snr(res: optimize.OptimizeResult) -> float:
    """Fitted ring amplitude over its standard error (from the Jacobian at the solution).

    ``inf`` for a noise-free fit (zero residual), 0 when the amplitude is not determined.
    """
    jac, n = np.asarray(res.jac, dtype=float), res.fun.size
    sigma2 = float(res.fun @ res.fun) / max(n - jac.shape[1], 1)
    var = float(np.linalg.pinv(jac.T @ jac)[6, 6]) * sigma2
    amp = float(res.x[6])
    if not var > 0:
        return np.inf if amp != 0 and sigma2 == 0 else 0.0
    return amp / np.sqrt(var)


def _check_ring_in_annulus(a: float, b: float, width: float, amplitude: float, snr: float,
                           offset: float, annulus: tuple[float, float], radii: Sequence[float],
                           pixels: bool, units: str) -> None:
    """Raise a ValueError unless the fitted ring is a bright ring that the annulus holds.

    ``a >= b`` are the fitted semi-axes, ``width`` the ring's Gaussian width, ``offset``
    the distance of the fitted centre from the annulus centre (coordinate units);
    ``annulus`` is ``(inner, outer)`` in coordinate units, ``radii`` as the user gave them.
    A fit is rejected when

    * the ring amplitude is not positive (a dip, or the background's curvature), or is
      below ``_MIN_RING_SNR`` standard errors (a noise ripple);
    * the ring's peak misses the annulus: ``a + offset < inner - width`` or
      ``b - offset > outer + width`` (the annulus holds only the ring's tail);
    * the semi-axes leave the annulus by more than ``m = min(3 width, (outer - inner)/2)``:
      ``b + offset < inner - m`` or ``a - offset > outer + m``.
    """
    r_in, r_out = annulus
    given = f"radii={tuple(float(r) for r in radii)!r}" + (" pixels" if pixels else "")
    found = (f"the fit found semi-axes a = {a:.4g}, b = {b:.4g} {units}, width {width:.3g} "
             f"{units} and ring amplitude {amplitude:.4g} ({snr:.3g} standard errors)")
    hint = ("; choose radii that bracket the ring's peak with room for its width (look at "
            "the image, e.g. stem4d.plot.show_diffraction)")
    if not amplitude > 0:
        raise ValueError(f"fit_ellipse found no bright ring in the annulus {given}: {found}; "
                         f"a ring's amplitude must be positive{hint}")
    if not snr >= _MIN_RING_SNR:
        raise ValueError(f"fit_ellipse found no significant ring in the annulus {given}: "
                         f"{found}; at least {_MIN_RING_SNR:g} standard errors are needed{hint}")
    if a + offset < r_in - width or b - offset > r_out + width:
        raise ValueError(
            f"fit_ellipse found a ring whose peak lies outside the annulus {given} ({r_in:.4g} "
            f"to {r_out:.4g} {units}): {found}; the annulus holds only its tail{hint}"
        )
    margin = min(3.0 * width, 0.5 * (r_out - r_in))
    if b + offset < r_in - margin or a - offset > r_out + margin:
        raise ValueError(
            f"fit_ellipse found a ring reaching outside the annulus {given} ({r_in:.4g} to "
            f"{r_out:.4g} {units}, allowing {margin:.3g} {units} for the ring's width): "
            f"{found}{hint}"
        )


def fit_ellipse(
    image: xr.DataArray | np.ndarray,
    *,
    radii: Sequence[float],
    center: Sequence[float] | None = None,
    pixels: bool = False,
    exclude: Any = None,
    max_nfev: int = 200,
) -> xr.Dataset:
    """Fit an ellipse (centre, semi-axes, angle) to a ring in an annulus of an image.

    Model and conventions: see :mod:`stem4d.calibrate`. The fit is a least-squares fit of
    ``c0 + c1 (rho - 1) + A exp(-(rho - 1)^2 / (2 s^2))`` to every pixel of the annulus,
    started from an algebraic ellipse through the ring's peak radius in angular sectors.

    Parameters
    ----------
    image
        ``(qx, qy)`` diffraction image (an amorphous ring, a mean pattern, a Bragg vector
        map); a dask-backed image is computed. A 2-D numpy array is taken in pixels.
    radii
        ``(inner, outer)`` radii of the annulus holding the ring, in the image's coordinate
        units (1/Å, mrad or pixels), or in pixels with ``pixels=True``.
    center
        Centre of the annulus, which is also the starting centre of the fit: coordinate
        units, default ``(0, 0)`` (the origin, which must then be set); with
        ``pixels=True`` a fractional pixel index ``(row, column)``.
    pixels
        Read ``radii`` and ``center`` in detector pixels (radii scaled by the geometric
        mean pixel size).
    exclude
        Optional ``(qx, qy)`` bool mask of pixels to leave out (True = excluded), e.g.
        :func:`beamstop_mask`. NaN pixels are always left out.
    max_nfev
        Maximum number of model evaluations of the least-squares fit.

    Returns
    -------
    0-d Dataset: ``qx0``, ``qy0`` centre and ``a >= b`` semi-axes of the ring's peak
    (coordinate units); ``qx0_pixels``, ``qy0_pixels`` the centre as a fractional pixel
    index; ``theta`` (rad, direction of ``a`` from ``qx`` towards ``qy``, in
    ``(-pi/2, pi/2]``); ``ratio = a / b``; ``width`` the Gaussian radial width at the
    radius ``sqrt(a b)`` (coordinate units); ``amplitude``, ``background`` and
    ``background_slope`` (per unit of ``rho``) in the image's units. Attrs: the number of
    pixels fitted, the rms residual and ``amplitude_snr``, the amplitude over its standard
    error.

    Raises
    ------
    ValueError
        When the fit does not find the ring in the annulus, instead of returning a
        confident wrong ellipse: the ring amplitude is not positive or below 5 standard
        errors, the ring's peak misses the annulus (it holds only the tail), or the
        semi-axes reach outside it by more than ``min(3 width, (outer - inner) / 2)``.
        Also for a plain array with ``center=None`` (no origin: give
        ``center=(row, col), pixels=True``).
    """
    img = _as_pattern(image, "image")
    sx, sy, units = q_pixel_size(img)
    qx = img.coords["qx"].values.astype(float)
    qy = img.coords["qy"].values.astype(float)
    if np.ndim(radii) != 1 or len(radii) != 2:
        raise ValueError(f"radii must be a pair (inner, outer), got {radii!r}")
    r_in = as_float(radii[0], "radii[0] (inner)")
    r_out = _positive(radii[1], "radii[1] (outer)")
    if not 0 <= r_in < r_out:
        raise ValueError(f"radii must satisfy 0 <= inner < outer, got {tuple(radii)!r}")
    if pixels:
        pix = float(np.sqrt(sx * sy))
        r_in, r_out = r_in * pix, r_out * pix
        if center is None:
            raise ValueError("center is required with pixels=True (a fractional pixel index)")
        ci, cj = _center(center)
        cx, cy = qx[0] + ci * sx, qy[0] + cj * sy
    elif center is None:
        if not isinstance(image, xr.DataArray):
            raise ValueError(
                "fit_ellipse with center=None needs the origin (q = 0) of a (qx, qy) "
                f"DataArray, but image is a plain {type(image).__name__} (pixel coordinates, "
                "no origin): give the ring's centre as a pixel index with "
                "center=(row, col), pixels=True (radii are then in pixels too)"
            )
        _require_origin(img, "image", "fit_ellipse with center=None")
        cx, cy = 0.0, 0.0
    else:
        cx, cy = _center(center)
    values = np.asarray(img.values, dtype=float)
    skip = _exclude_mask(img, exclude, "exclude")
    gx, gy = np.meshgrid(qx - cx, qy - cy, indexing="ij")
    r = np.hypot(gx, gy)
    sel = (r >= r_in) & (r <= r_out) & np.isfinite(values)
    if skip is not None:
        sel &= ~skip
    if sel.sum() < 30:
        raise ValueError(
            f"the annulus radii={tuple(radii)!r} around center ({cx:.4g}, {cy:.4g}) {units} "
            f"holds {int(sel.sum())} usable pixels; at least 30 are needed for an ellipse fit"
        )
    scale = 0.5 * (r_in + r_out)
    x, y, v = gx[sel] / scale, gy[sel] / scale, values[sel]
    lo, hi = np.percentile(v, [10, 99])
    if not hi > lo:
        raise ValueError("the annulus holds a constant image: there is no ring to fit")
    w = np.clip(v - lo, 0, None) ** 2
    c0, m0 = _conic_guess(x, y, w)
    rho0 = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", np.stack([x - c0[0], y - c0[1]], 1),
                                        m0, np.stack([x - c0[0], y - c0[1]], 1)), 0))
    wr = np.clip(v - lo, 0, None)
    s0 = float(np.sqrt((wr * (rho0 - 1) ** 2).sum() / max(wr.sum(), 1e-300)))
    s0 = float(np.clip(s0, 0.005, 0.3))
    p0 = np.array([c0[0], c0[1], m0[0, 0], m0[0, 1], m0[1, 1], s0, hi - lo, lo, 0.0])
    res = optimize.least_squares(
        lambda p: _ring_model(p, x, y)[0] - v, p0,
        jac=lambda p: _ring_jacobian(p, x, y, v), method="lm", x_scale="jac",
        max_nfev=max_nfev,
    )
    p = res.x
    m = np.array([[p[2], p[3]], [p[3], p[4]]]) / scale**2
    evals, evecs = np.linalg.eigh(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = 1 / np.sqrt(evals[0]), 1 / np.sqrt(evals[1])
    if not np.all(np.isfinite(p)) or np.any(evals <= 0) or p[6] == 0:
        raise ValueError(
            f"the ellipse fit did not converge to a ring: fitted a = {a:.4g}, b = {b:.4g} "
            f"{units}, ring amplitude {p[6]:.4g}, for the annulus radii = ({r_in:.4g}, "
            f"{r_out:.4g}) {units} around ({cx:.4g}, {cy:.4g}): check that radii bracket "
            "the ring and center is near its centre"
        )
    q0x, q0y = cx + p[0] * scale, cy + p[1] * scale
    width = float(abs(p[5]) * np.sqrt(a * b))
    snr = _amplitude_snr(res)
    _check_ring_in_annulus(float(a), float(b), width, float(p[6]), snr,
                           float(np.hypot(p[0], p[1]) * scale), (r_in, r_out), radii, pixels,
                           units)
    vec = evecs[:, 0]
    theta = _half_turn(float(np.arctan2(vec[1], vec[0])))
    rms = float(np.sqrt(np.mean(res.fun**2)))
    img_units = img.attrs.get("units", "arbitrary")
    cu = {"units": units}
    return xr.Dataset(
        {
            "qx0": ((), q0x, cu),
            "qy0": ((), q0y, cu),
            "qx0_pixels": ((), (q0x - qx[0]) / sx, {"units": "pixels"}),
            "qy0_pixels": ((), (q0y - qy[0]) / sy, {"units": "pixels"}),
            "a": ((), float(a), cu),
            "b": ((), float(b), cu),
            "theta": ((), theta, {"units": "rad"}),
            "ratio": ((), float(a / b), {"units": ""}),
            "width": ((), width, cu),
            "amplitude": ((), float(p[6]), {"units": img_units}),
            "background": ((), float(p[7]), {"units": img_units}),
            "background_slope": ((), float(p[8]), {"units": img_units}),
        },
        attrs={"n_pixels": int(sel.sum()), "rms_residual": rms, "amplitude_snr": snr,
               "radii": [float(r_in), float(r_out)], "converged": int(res.success),
               "convention": "rho^2 = (q-q0)^T R(theta) diag(1/a^2, 1/b^2) R(-theta) (q-q0); "
                             "see stem4d.calibrate"},
    )


# ========================================================= ellipse correction
def _ellipse_params(ellipse: Any, argname: str = "ellipse") -> tuple[float, float, float]:
    """``(a, b, theta)`` normalized so ``a * b = 1`` (``a >= b``)."""
    if isinstance(ellipse, xr.Dataset | Mapping):
        keys = ("a", "b", "theta") if "a" in ellipse else (
            "ellipse_a", "ellipse_b", "ellipse_theta")
        try:
            vals = [float(np.asarray(ellipse[k])) for k in keys]
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{argname} must hold 'a', 'b', 'theta' (a fit_ellipse result) or "
                f"'ellipse_a', 'ellipse_b', 'ellipse_theta', got keys {list(ellipse)}"
            ) from None
    else:
        try:
            vals = [float(v) for v in ellipse]
        except (TypeError, ValueError):
            raise TypeError(
                f"{argname} must be a fit_ellipse result or (a, b, theta), got {ellipse!r}"
            ) from None
        if len(vals) != 3:
            raise ValueError(f"{argname} must be (a, b, theta), got {ellipse!r}")
    a, b, theta = vals
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(theta) and a > 0 and b > 0):
        raise ValueError(f"{argname} must have a > 0, b > 0 and a finite theta, got {vals}")
    if a < b:
        a, b, theta = b, a, theta + np.pi / 2
    theta = _half_turn(theta)
    g = np.sqrt(a * b)
    return a / g, b / g, theta


def _stored_ellipse(obj: xr.DataArray, ellipse: Any) -> tuple[float, float, float]:
    if ellipse is not None:
        return _ellipse_params(ellipse)
    if all(k in obj.coords for k in ("ellipse_a", "ellipse_b", "ellipse_theta")):
        return _ellipse_params({k: obj.coords[k].values for k in
                                ("ellipse_a", "ellipse_b", "ellipse_theta")}, "obj's ellipse")
    raise ValueError(
        "no ellipse: pass ellipse=(a, b, theta) or a fit_ellipse result, or store one on "
        "the object with stem4d.calibrate.correct_ellipse(obj, ellipse)"
    )


def _correction_matrix(a: float, b: float, theta: float) -> np.ndarray:
    rot = rotation_matrix(theta)
    return rot @ np.diag([1 / a, 1 / b]) @ rot.T


def ellipse_corrected_coordinates(
    obj: xr.DataArray, ellipse: Any = None
) -> tuple[xr.DataArray, xr.DataArray]:
    """Corrected detector coordinates ``qx_c(qx, qy)``, ``qy_c(qx, qy)``.

    ``q_c = T q`` with ``T = R(theta) diag(1/a, 1/b) R(-theta)`` (``a b = 1``), about
    ``q = 0``, the origin (which must be set); a ring fitted by :func:`fit_ellipse` is a
    circle of radius ``sqrt(a b)`` in them. Units are those of ``qx``/``qy``.

    Parameters
    ----------
    obj
        Pattern or cube with ``qx``/``qy`` coordinates.
    ellipse
        A :func:`fit_ellipse` result or ``(a, b, theta)``; default: the ``ellipse_*``
        coordinates stored by :func:`correct_ellipse`.
    """
    obj = _check_q_object(obj, "obj")
    _require_origin(obj, "obj", "ellipse correction")
    a, b, theta = _stored_ellipse(obj, ellipse)
    t = _correction_matrix(a, b, theta)
    qx, qy = np.meshgrid(obj.coords["qx"].values, obj.coords["qy"].values, indexing="ij")
    units = obj.coords["qx"].attrs.get("units", "pixels")
    coords = {"qx": obj.coords["qx"].variable, "qy": obj.coords["qy"].variable}
    out = []
    for i, name in enumerate(("qx_c", "qy_c")):
        out.append(xr.DataArray(t[i, 0] * qx + t[i, 1] * qy, dims=DETECTOR_DIMS,
                                coords=coords, name=name,
                                attrs={"units": units, "long_name": "ellipse-corrected q"}))
    return out[0], out[1]


def correct_ellipse(obj: xr.DataArray, ellipse: Any = None) -> xr.DataArray:
    """Store an elliptical-distortion calibration on a pattern or cube.

    Adds the 0-d coordinates ``ellipse_a``, ``ellipse_b`` (dimensionless stretch,
    ``ellipse_a * ellipse_b = 1``, ``ellipse_a >= ellipse_b``) and ``ellipse_theta`` (rad,
    direction of ``ellipse_a`` from ``qx`` towards ``qy``), and the 2-D coordinates
    ``qx_c``, ``qy_c`` of :func:`ellipse_corrected_coordinates`. The data are unchanged.
    ``qx_c``/``qy_c`` hold for the current q coordinates: functions that change those
    (:func:`stem4d.set_origin`, ``set_q_calibration``, ``convert_q_units``, ``flip_q``,
    ``transpose_q``) drop them and keep ``ellipse_*``; ``correct_ellipse(obj)`` puts them
    back (the corrected detectors always recompute them from ``ellipse_*``).

    Parameters
    ----------
    ellipse
        A :func:`fit_ellipse` result (its ``a``, ``b``, ``theta``) or ``(a, b, theta)``
        (any scale; e.g. the simulator's ``(a, b, phi)``); default: the ellipse already
        stored on ``obj``.
    """
    obj = _check_q_object(obj, "obj")
    a, b, theta = _stored_ellipse(obj, ellipse)
    out = obj.assign_coords(
        ellipse_a=xr.Variable((), a, {"units": ""}),
        ellipse_b=xr.Variable((), b, {"units": ""}),
        ellipse_theta=xr.Variable((), theta, {"units": "rad"}),
    )
    qx_c, qy_c = ellipse_corrected_coordinates(out)
    return out.assign_coords(qx_c=qx_c.variable, qy_c=qy_c.variable)


def _corrected_grid(obj: Any, ellipse: Any) -> tuple[np.ndarray, np.ndarray, dict, tuple]:
    obj = _check_q_object(obj, "obj")
    qx_c, qy_c = ellipse_corrected_coordinates(obj, ellipse)
    coords = {"qx": obj.coords["qx"].variable, "qy": obj.coords["qy"].variable}
    return qx_c.values, qy_c.values, coords, _stored_ellipse(obj, ellipse)


def corrected_circle(
    obj: xr.DataArray, radius: float, center: Sequence[float] = (0.0, 0.0), ellipse: Any = None
) -> xr.DataArray:
    """Disk detector ``|q_c - center| <= radius`` in ellipse-corrected coordinates.

    ``radius`` and ``center`` are in the (corrected) coordinate units; the detector is a
    bool ``(qx, qy)`` DataArray on ``obj``'s grid, usable with
    :func:`stem4d.virtual_image`. ``ellipse`` as in :func:`ellipse_corrected_coordinates`.
    """
    qxc, qyc, coords, ell = _corrected_grid(obj, ellipse)
    cx, cy = _center(center)
    r = _positive(radius, "radius")
    values = (qxc - cx) ** 2 + (qyc - cy) ** 2 <= r**2
    return _detector(values, coords, "corrected_circle", coords["qx"].attrs.get("units"),
                     center=(cx, cy), radius=r, ellipse=tuple(map(float, ell)))


def corrected_annulus(
    obj: xr.DataArray, radii: Sequence[float], center: Sequence[float] = (0.0, 0.0),
    ellipse: Any = None,
) -> xr.DataArray:
    """Ring detector ``inner <= |q_c - center| <= outer`` in ellipse-corrected coordinates.

    Units and ``ellipse`` as in :func:`corrected_circle`.
    """
    qxc, qyc, coords, ell = _corrected_grid(obj, ellipse)
    cx, cy = _center(center)
    inner, outer = _radii(radii)
    values = _in_ring(qxc - cx, qyc - cy, inner, outer)
    return _detector(values, coords, "corrected_annulus", coords["qx"].attrs.get("units"),
                     center=(cx, cy), radii=(inner, outer), ellipse=tuple(map(float, ell)))


# ======================================================== reciprocal pixel size
def q_pixel_size_from_ring(
    radius_px: float, *, d_spacing: float | None = None, ring_q: float | None = None
) -> float:
    """Reciprocal pixel size from a ring of known spacing, 1/Å per pixel.

    ``ring_q / radius_px`` with ``ring_q = 1 / d_spacing`` (Å) or given directly (1/Å, no
    2 pi); ``radius_px`` is the measured ring radius in pixels (e.g. ``sqrt(a b)`` of
    :func:`fit_ellipse` on a pixel-calibrated image).
    """
    r = _positive(radius_px, "radius_px")
    if (d_spacing is None) == (ring_q is None):
        raise ValueError(
            "give exactly one of d_spacing (Å) or ring_q (1/Å), got "
            f"d_spacing={d_spacing!r} and ring_q={ring_q!r}")
    q = 1.0 / _positive(d_spacing, "d_spacing") if ring_q is None else _positive(ring_q, "ring_q")
    return q / r


def q_pixel_size_from_lattice(
    peak_distance_px: float | Sequence[float],
    d_spacing: float | Sequence[float],
    *,
    order: int | Sequence[int] = 1,
) -> float:
    """Reciprocal pixel size from Bragg peaks of known lattice spacing, 1/Å per pixel.

    Parameters
    ----------
    peak_distance_px
        Measured distance(s), pixels, from the origin to the reflection of order ``order``
        of the planes of spacing ``d_spacing`` (for the distance between a peak and its
        Friedel mate pass ``order=2``).
    d_spacing
        Lattice plane spacing(s), Å (one per distance, or one for all).
    order
        Diffraction order(s) ``n``: the reflection lies at ``n / d``.

    Returns
    -------
    ``dk`` minimizing ``sum (dk r_i - n_i / d_i)^2``, i.e. ``sum(r q) / sum(r^2)``.
    """
    r = np.atleast_1d(np.asarray(peak_distance_px, dtype=float))
    try:
        d = np.broadcast_to(np.asarray(d_spacing, dtype=float), r.shape)
        n = np.broadcast_to(np.asarray(order, dtype=float), r.shape)
    except ValueError:
        raise ValueError(
            f"d_spacing and order must be one value or one per distance ({r.size}), got "
            f"{np.shape(d_spacing)} and {np.shape(order)}"
        ) from None
    for name, arr in (("peak_distance_px", r), ("d_spacing", d), ("order", n)):
        if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be positive and finite, got {arr.tolist()}")
    q = n / d
    return float((r * q).sum() / (r * r).sum())


def q_pixel_size_from_probe(
    convergence_semiangle: float,
    bf_radius_px: float,
    beam_energy: float | None = None,
    *,
    units: str = "1/Å",
) -> float:
    """Reciprocal pixel size from the bright-field disk radius.

    ``mrad per pixel = convergence_semiangle / bf_radius_px``; in 1/Å per pixel that is
    divided by ``1000 lambda`` (λ the relativistic wavelength of ``beam_energy``).

    Parameters
    ----------
    convergence_semiangle
        Probe semiangle, mrad.
    bf_radius_px
        Measured bright-field disk radius, pixels.
    beam_energy
        Electron energy, eV; needed for ``units="1/Å"``.
    units
        ``"1/Å"`` or ``"mrad"``.
    """
    alpha = _positive(convergence_semiangle, "convergence_semiangle")
    r = _positive(bf_radius_px, "bf_radius_px")
    if units == "mrad":
        return alpha / r
    if units not in ("1/Å", "1/A"):
        raise ValueError(f"units must be '1/Å' or 'mrad', got {units!r}")
    if beam_energy is None:
        raise ValueError("beam_energy (eV) is needed for a pixel size in 1/Å")
    lam = electron_wavelength(_positive(beam_energy, "beam_energy"))
    return alpha / r / (1000.0 * lam)


def _bright_field_radius(pattern: xr.DataArray, argname: str) -> float:
    """Bright-field disk radius, pixels: :func:`stem4d.probe.measure_disk`'s ``radius_flux``.

    The radius of the unblurred aperture, ``sqrt(F / (pi (I0 - bg)))``, which a blur of
    the disk's edge does not change (its 50 % contour shrinks by ``s**2 / (2 r)``).
    """
    from .probe import measure_disk

    disk = measure_disk(pattern)
    radius = float(disk["radius_flux"])
    if not np.isfinite(radius):
        i0, bg = float(disk.attrs["plateau"]), float(disk.attrs["background"])
        why = ("is not above" if not i0 > bg else
               "is above, but the disk holds no positive flux over")
        raise ValueError(
            f"fitRBF could not measure the bright-field disk of {argname}'s mean pattern: its "
            f"plateau I0 = {i0:.4g} {why} the background {bg:.4g} (median beyond the "
            "disk); check that the pattern has a bright-field disk, or give its radius "
            "with mode='RBF'"
        )
    return radius


_CALIBRATION_MODES = ("dk", "kMax", "dx", "da", "angleMax", "n_alpha", "RBF", "fitRBF")


def calibrate_q(
    obj: xr.DataArray,
    mode: str,
    value: float | None = None,
    *,
    units: str = "1/Å",
    convergence_semiangle: float | None = None,
    beam_energy: float | None = None,
) -> xr.DataArray:
    """Set the detector pixel size by one of PtyRAD's ``meas_calibration`` modes.

    Parameters
    ----------
    obj
        Cube ``(rx, ry, qx, qy)``, stack ``(scan, qx, qy)`` or pattern ``(qx, qy)``; numpy
        or dask (``fitRBF`` on a cube or stack computes its mean pattern, one pass).
    mode, value
        ``"dk"`` 1/Å per pixel; ``"kMax"`` 1/Å at the detector edge (``dk = 2 kMax / N``);
        ``"dx"`` real-space pixel size of a reconstruction on this ``N``-pixel detector, Å
        (``dk = 1 / (N dx)``); ``"da"`` mrad per pixel; ``"angleMax"`` mrad at the edge
        (``da = 2 angleMax / N``); ``"n_alpha"`` edge angle in units of the convergence
        semiangle; ``"RBF"`` bright-field disk radius, pixels (``da = alpha / RBF``);
        ``"fitRBF"`` (no value) measures the bright-field radius on the mean pattern with
        :func:`stem4d.probe.measure_disk` (its ``radius_flux``: the aperture edge, which
        a blur of the disk does not move; the 50 % contour reads about 1 % small for a
        1.2-pixel blur of a 9-pixel disk).
        ``N`` is the side of the (square) detector.
    units
        Units of the result: ``"1/Å"`` or ``"mrad"`` (converting uses the beam energy).
    convergence_semiangle, beam_energy
        mrad and eV; default: the object's ``convergence_semiangle``/``beam_energy``
        coordinates. Given values are also stored on the result.

    Returns
    -------
    ``obj`` with its pixel size set (:func:`stem4d.set_q_calibration`; origin kept).
    """
    if isinstance(obj, xr.DataArray) and obj.ndim == 3 and {"qx", "qy"} <= set(obj.dims):
        pass  # a ("scan", "qx", "qy") stack of patterns
    else:
        obj = _check_q_object(obj, "obj")
    if mode not in _CALIBRATION_MODES:
        raise ValueError(f"mode must be one of {_CALIBRATION_MODES}, got {mode!r}")
    if units in ("1/A", "A^-1", "Å^-1"):
        units = "1/Å"
    if units not in ("1/Å", "mrad"):
        raise ValueError(f"units must be '1/Å' or 'mrad', got {units!r}")
    if mode == "fitRBF":
        if value is not None:
            raise ValueError("mode='fitRBF' measures the radius itself: leave value=None")
    elif value is None:
        raise ValueError(f"mode={mode!r} needs a value")
    else:
        value = _positive(value, "value")
    if beam_energy is not None or convergence_semiangle is not None:
        obj = set_beam(obj, beam_energy=beam_energy, convergence_semiangle=convergence_semiangle)
    nx, ny = obj.sizes["qx"], obj.sizes["qy"]
    if mode in ("kMax", "dx", "angleMax", "n_alpha") and nx != ny:
        raise ValueError(
            f"mode={mode!r} is defined for a square detector (N x N), got {nx} x {ny}; "
            "use 'dk' or 'da'"
        )

    def need(name: str, unit: str) -> float:
        if name not in obj.coords:
            raise ValueError(
                f"mode={mode!r} with units={units!r} needs {name} ({unit}): pass {name}=... "
                f"or set it with stem4d.set_beam"
            )
        return float(obj.coords[name].values)

    native = "1/Å" if mode in ("dk", "kMax", "dx") else "mrad"
    if mode == "dk":
        step = value
    elif mode == "kMax":
        step = 2 * value / nx
    elif mode == "dx":
        step = 1 / (nx * value)
    elif mode == "da":
        step = value
    elif mode == "angleMax":
        step = 2 * value / nx
    elif mode == "n_alpha":
        step = 2 * value * need("convergence_semiangle", "mrad") / nx
    else:
        if mode == "RBF":
            rbf = value
        else:
            pattern = obj.mean([d for d in obj.dims if d not in ("qx", "qy")])
            rbf = _bright_field_radius(pattern.transpose("qx", "qy"), "obj")
        step = need("convergence_semiangle", "mrad") / rbf
    if native != units:
        lam = electron_wavelength(need("beam_energy", "eV"))
        step = step / (1000 * lam) if units == "1/Å" else step * 1000 * lam
    return set_q_calibration(obj, step, units)


# ============================================================ beamstop mask
def beamstop_mask(
    obj: xr.DataArray,
    *,
    threshold: float = 0.05,
    distance_edge: float = 2.0,
    blur: float = 0.0,
    reduce: str = "mean",
    connected_to_edge: bool = True,
) -> xr.DataArray:
    """Mask of the beamstop (True on it: pixels to leave out) from a mean or max pattern.

    The pattern (optionally blurred by a Gaussian of ``blur`` pixels) is thresholded at
    ``threshold * max``; of the dark pixels, those in regions touching the detector edge
    (the beamstop's arm enters from the edge) are kept, and the mask is grown by
    ``distance_edge`` pixels. Dim high-angle corners below the threshold are also
    connected to the edge: lower ``threshold`` if they are picked up.

    Parameters
    ----------
    obj
        Pattern ``(qx, qy)`` or cube (numpy or dask; a cube is reduced by ``reduce``,
        one pass over the data).
    threshold
        Fraction of the maximum (0 < threshold < 1) below which a pixel is dark.
    distance_edge
        Grow the mask by this many pixels (Euclidean), >= 0.
    blur
        Gaussian standard deviation (pixels) applied before thresholding, >= 0.
    reduce
        ``"mean"`` or ``"max"`` pattern of a cube.
    connected_to_edge
        Keep only dark regions touching the detector edge (False: every dark pixel).

    Returns
    -------
    bool ``(qx, qy)`` DataArray on the detector grid (``~mask`` selects the usable pixels).
    """
    obj = _check_q_object(obj, "obj")
    t = as_float(threshold, "threshold")
    if not 0 < t < 1:
        raise ValueError(
            f"threshold must be in (0, 1) (fraction of the maximum), got {threshold!r}")
    grow = _non_negative(distance_edge, "distance_edge", "pixels")
    sigma = _non_negative(blur, "blur", "pixels")
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    if obj.ndim == 4:
        from .virtual import virtual_diffraction

        pattern = virtual_diffraction(obj, reduce)
    else:
        pattern = obj
    img = np.asarray(pattern.values, dtype=float)
    finite = np.isfinite(img)
    if not finite.any():
        raise ValueError("obj is entirely NaN: no pattern to threshold")
    img = np.where(finite, img, np.nanmin(img))
    if sigma > 0:
        img = ndimage.gaussian_filter(img, sigma)
    dark = img < t * img.max()
    if connected_to_edge:
        labels, _ = ndimage.label(dark, structure=np.ones((3, 3)))
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        dark = np.isin(labels, edge[edge > 0])
    if grow > 0 and dark.any():
        dark = ndimage.distance_transform_edt(~dark) <= grow
    return xr.DataArray(dark, dims=DETECTOR_DIMS,
                        coords={d: obj.coords[d].variable for d in DETECTOR_DIMS},
                        name="beamstop",
                        attrs={"long_name": "beamstop mask (True = blocked)",
                               "threshold": t, "distance_edge": grow, "blur": sigma})


# ===================================================== radial background
class _Rings:
    """Ring geometry of a detector: pixel coordinates, correction matrix, bins."""

    def __init__(self, obj: xr.DataArray, bin_width: float | None, use_ellipse: bool,
                 exclude: np.ndarray | None, ox: np.ndarray, oy: np.ndarray) -> None:
        self.qx = obj.coords["qx"].values.astype(float)
        self.qy = obj.coords["qy"].values.astype(float)
        sx, sy, _ = q_pixel_size(obj)
        has_ellipse = all(k in obj.coords for k in ("ellipse_a", "ellipse_b", "ellipse_theta"))
        self.t = (_correction_matrix(*_stored_ellipse(obj, None))
                  if use_ellipse and has_ellipse else np.eye(2))
        self.bw = min(sx, sy) if bin_width is None else _positive(bin_width, "bin_width")
        self.exclude = None if exclude is None else exclude.reshape(-1)
        corners_x = np.array([self.qx[0], self.qx[0], self.qx[-1], self.qx[-1]])
        corners_y = np.array([self.qy[0], self.qy[-1], self.qy[0], self.qy[-1]])
        ox, oy = np.ravel(ox), np.ravel(oy)
        rmax = 0.0
        for ex, ey in ((ox.min(), oy.min()), (ox.min(), oy.max()), (ox.max(), oy.min()),
                       (ox.max(), oy.max())):
            rmax = max(rmax, float(self.radii(np.array([ex]), np.array([ey]),
                                              corners_x, corners_y).max()))
        self.nbins = int(np.floor(rmax / self.bw)) + 2
        self.centres = (np.arange(self.nbins) + 0.5) * self.bw

    def radii(self, ox: np.ndarray, oy: np.ndarray, qx: np.ndarray | None = None,
              qy: np.ndarray | None = None) -> np.ndarray:
        """``(P, N)`` corrected distances of the pixels from each pattern's origin."""
        if qx is None:
            gx, gy = np.meshgrid(self.qx, self.qy, indexing="ij")
            qx, qy = gx.reshape(-1), gy.reshape(-1)
        dx = qx[None, :] - ox[:, None]
        dy = qy[None, :] - oy[:, None]
        t = self.t
        return np.hypot(t[0, 0] * dx + t[0, 1] * dy, t[1, 0] * dx + t[1, 1] * dy)

    def medians(self, vals: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """``(P, nbins)`` median of each ring (NaN for an empty ring).

        Each row is sorted once by the key ``bin + 0.5 * normalized value``, which orders
        pixels by ring and by value within a ring; the medians are then read at the
        middle of each ring's run.
        """
        p, n = vals.shape
        nb = self.nbins
        idx = np.minimum((radii / self.bw).astype(np.int64), nb - 1)
        bad = ~np.isfinite(vals)
        if self.exclude is not None:
            bad |= self.exclude[None, :]
        idx[bad] = nb
        v = np.where(bad, np.nan, vals)
        with np.errstate(all="ignore"):
            vmin = np.nanmin(v, axis=1, keepdims=True)
            span = np.nanmax(v, axis=1, keepdims=True) - vmin
        vmin = np.nan_to_num(vmin)
        span = np.where(np.isfinite(span) & (span > 0), span, 1.0)
        key = idx + np.where(bad, 0.0, 0.5 * (np.nan_to_num(v) - vmin) / span)
        key.sort(axis=1)
        counts = np.bincount((np.arange(p)[:, None] * (nb + 1) + idx).reshape(-1),
                             minlength=p * (nb + 1)).reshape(p, nb + 1)[:, :nb]
        starts = np.cumsum(counts, axis=1) - counts
        lo = np.minimum(starts + (counts - 1) // 2, n - 1)
        hi = np.minimum(starts + counts // 2, n - 1)
        bins = np.arange(nb)[None, :]
        vlo = (np.take_along_axis(key, np.maximum(lo, 0), 1) - bins) / 0.5 * span + vmin
        vhi = (np.take_along_axis(key, hi, 1) - bins) / 0.5 * span + vmin
        return np.where(counts > 0, 0.5 * (vlo + vhi), np.nan)

    def smooth_fill(self, prof: np.ndarray, sigma: float) -> np.ndarray:
        """Fill empty rings by linear interpolation; Gaussian smoothing over ``sigma`` rings."""
        prof = prof.copy()
        for i in np.flatnonzero(np.isnan(prof).any(axis=1)):
            ok = np.isfinite(prof[i])
            prof[i] = (np.interp(self.centres, self.centres[ok], prof[i, ok]) if ok.any()
                       else 0.0)
        if sigma > 0:
            prof = ndimage.gaussian_filter1d(prof, sigma, axis=1, mode="nearest")
        return prof

    def image(self, prof: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """``(P, N)`` background: the profile linearly interpolated at each pixel's radius."""
        t = radii / self.bw - 0.5
        i0 = np.clip(np.floor(t).astype(np.int64), 0, self.nbins - 2)
        f = np.clip(t - i0, 0.0, 1.0)
        p0 = np.take_along_axis(prof, i0, 1)
        p1 = np.take_along_axis(prof, i0 + 1, 1)
        return p0 * (1 - f) + p1 * f


def _rings_block(data: np.ndarray, ox: np.ndarray, oy: np.ndarray, rings: _Rings,
                 sigma: float, what: str) -> np.ndarray:
    """Profile (``what="profile"``), background or subtracted patterns of a block.

    ``data`` is ``(..., qx, qy)`` (or ``(..., q)`` profiles for ``"image"``); ``ox``/``oy``
    broadcast to ``data.shape[:-2]`` (or ``[:-1]``).
    """
    core = 1 if what == "image" else 2
    lead = data.shape[:-core]
    npat = int(np.prod(lead))
    oxf = np.broadcast_to(ox, lead).reshape(-1).astype(float)
    oyf = np.broadcast_to(oy, lead).reshape(-1).astype(float)
    nqx, nqy = rings.qx.size, rings.qy.size
    if what == "profile":
        out = np.empty((npat, rings.nbins), dtype=np.float64)
    else:
        out = np.empty((npat, nqx * nqy), dtype=np.float32)
    flat = data.reshape((npat, -1))
    for s in range(0, npat, _BATCH):
        sl = slice(s, s + _BATCH)
        radii = rings.radii(oxf[sl], oyf[sl])
        if what == "image":
            out[sl] = rings.image(flat[sl].astype(np.float64), radii)
            continue
        vals = flat[sl].astype(np.float64)
        prof = rings.smooth_fill(rings.medians(vals, radii), sigma)
        if what == "profile":
            out[sl] = prof
        else:
            out[sl] = vals - rings.image(prof, radii)
    if what == "profile":
        return out.reshape(lead + (rings.nbins,))
    return out.reshape(lead + (nqx, nqy))


def _prepare_rings(obj: Any, argname: str, bin_width: float | None, sigma: float,
                   exclude: Any, use_ellipse: bool
                   ) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray, _Rings, float]:
    obj = _check_q_object(obj, argname)
    _require_origin(obj, argname, "the radial background")
    sig = _non_negative(sigma, "sigma", "rings")
    skip = _exclude_mask(obj, exclude, "exclude")
    if skip is not None and skip.all():
        raise ValueError("exclude leaves out every detector pixel")
    ox, oy = _origin_offsets(obj)
    rings = _Rings(obj, bin_width, use_ellipse, skip, np.asarray(ox.values),
                   np.asarray(oy.values))
    if isinstance(obj.data, da.Array):
        obj = obj.chunk({"qx": -1, "qy": -1})
    return obj, ox, oy, rings, sig


def radial_background(
    obj: xr.DataArray,
    *,
    bin_width: float | None = None,
    sigma: float = 0.0,
    exclude: Any = None,
    use_ellipse: bool = True,
) -> xr.Dataset:
    """Radial background: the median intensity over rings about the origin.

    Each pattern's pixels are binned by their distance from that pattern's origin (the
    per-position ``qx0``/``qy0`` when present, else ``q = 0``; the origin must be set);
    with an ellipse stored by :func:`correct_ellipse` and ``use_ellipse``, the distance is
    measured in ellipse-corrected coordinates. The background image is the ring medians
    linearly interpolated at each pixel's distance.

    Parameters
    ----------
    obj
        Pattern ``(qx, qy)`` or cube ``(rx, ry, qx, qy)``, numpy or dask (lazy result).
    bin_width
        Ring width in coordinate units; default one pixel (the smaller pixel size).
    sigma
        Gaussian smoothing of the profile, in rings (0: none).
    exclude
        ``(qx, qy)`` bool mask of pixels left out of the medians (e.g. the beamstop).
    use_ellipse
        Measure distances in ellipse-corrected coordinates when an ellipse is stored.

    Returns
    -------
    Dataset with ``profile`` (``(..., q)``, ``q`` the ring centres in coordinate units)
    and ``background`` (``(..., qx, qy)``), float32 background in the data's units.
    """
    obj, ox, oy, rings, sig = _prepare_rings(obj, "obj", bin_width, sigma, exclude,
                                             use_ellipse)
    kw = {"dask": "parallelized", "output_dtypes": [np.float64]}
    profile = xr.apply_ufunc(
        _rings_block, obj, ox, oy,
        input_core_dims=[list(DETECTOR_DIMS), [], []], output_core_dims=[["q"]],
        kwargs={"rings": rings, "sigma": sig, "what": "profile"},
        dask_gufunc_kwargs={"output_sizes": {"q": rings.nbins}}, **kw)
    units = obj.coords["qx"].attrs.get("units", "pixels")
    profile = profile.assign_coords(q=("q", rings.centres, {"units": units}))
    background = xr.apply_ufunc(
        _rings_block, profile, ox, oy,
        input_core_dims=[["q"], [], []], output_core_dims=[list(DETECTOR_DIMS)],
        kwargs={"rings": rings, "sigma": sig, "what": "image"},
        dask_gufunc_kwargs={"output_sizes": {"qx": rings.qx.size, "qy": rings.qy.size}},
        dask="parallelized", output_dtypes=[np.float32])
    background = background.drop_vars("q", errors="ignore").assign_coords(
        {d: obj.coords[d].variable for d in DETECTOR_DIMS})
    attrs = {"units": obj.attrs.get("units", "arbitrary")}
    profile.attrs = {**attrs, "long_name": "median over rings about the origin"}
    background.attrs = {**attrs, "long_name": "radial background"}
    return xr.Dataset({"profile": profile, "background": background},
                      attrs={"bin_width": rings.bw, "sigma": sig,
                             "ellipse_corrected": int(not np.allclose(rings.t, np.eye(2)))})


def subtract_radial_background(
    obj: xr.DataArray,
    *,
    bin_width: float | None = None,
    sigma: float = 0.0,
    exclude: Any = None,
    use_ellipse: bool = True,
) -> xr.DataArray:
    """Patterns minus their :func:`radial_background` (per pattern; one pass, lazy on dask).

    Parameters as in :func:`radial_background`. Returns float32 data with every coordinate
    and attr of ``obj`` kept; the ``exclude`` pixels (e.g. a beamstop, which holds no
    signal) are set to 0 rather than left at minus the background.
    """
    src = obj
    obj, ox, oy, rings, sig = _prepare_rings(obj, "obj", bin_width, sigma, exclude,
                                             use_ellipse)
    out = xr.apply_ufunc(
        _rings_block, obj, ox, oy,
        input_core_dims=[list(DETECTOR_DIMS), [], []],
        output_core_dims=[list(DETECTOR_DIMS)],
        kwargs={"rings": rings, "sigma": sig, "what": "subtract"},
        dask="parallelized", output_dtypes=[np.float32])
    if rings.exclude is not None:
        blocked = xr.DataArray(rings.exclude.reshape(obj.sizes["qx"], obj.sizes["qy"]),
                               dims=DETECTOR_DIMS)
        out = out.where(~blocked, np.float32(0.0))
    out = out.transpose(*src.dims).assign_coords(
        {k: v.variable for k, v in src.coords.items()})
    out.attrs = dict(src.attrs)
    out.name = src.name
    return out


# ============================================================ local average
def local_average(
    cube: xr.DataArray,
    rx: int,
    ry: int,
    *,
    radius: float = 1.0,
    sigma: float | None = None,
    shift_center: bool = False,
    subpixel: bool = False,
) -> xr.DataArray:
    """Mean pattern of the scan positions around ``(rx, ry)``.

    Positions ``(i, j)`` with ``(i - rx)^2 + (j - ry)^2 <= radius^2`` (scan steps; the
    window is clipped at the scan edges): ``radius=1`` is the position and its 4
    neighbours, ``radius=1.5`` the 3 x 3 block. With ``sigma`` (scan steps) the patterns
    are weighted by ``exp(-d^2 / (2 sigma^2))``. ``shift_center`` aligns the patterns on
    their origins first (see :func:`stem4d.virtual_diffraction`).

    Parameters
    ----------
    rx, ry
        Integer scan indices (row, column).

    Returns
    -------
    ``(qx, qy)`` DataArray (lazy for a dask cube) with scalar ``rx``/``ry`` coordinates of
    the centre position.
    """
    from .virtual import virtual_diffraction

    validate_cube(cube)
    nrx, nry = cube.sizes["rx"], cube.sizes["ry"]
    for name, val, n in (("rx", rx, nrx), ("ry", ry, nry)):
        if isinstance(val, bool) or not isinstance(val, int | np.integer):
            raise TypeError(f"{name} must be an integer scan index, got {val!r}")
        if not 0 <= val < n:
            raise ValueError(f"{name} must be a scan index in [0, {n - 1}], got {val}")
    rad = _non_negative(radius, "radius", "scan steps")
    k = int(np.floor(rad))
    i0, i1 = max(0, rx - k), min(nrx, rx + k + 1)
    j0, j1 = max(0, ry - k), min(nry, ry + k + 1)
    ii, jj = np.meshgrid(np.arange(i0, i1) - rx, np.arange(j0, j1) - ry, indexing="ij")
    d2 = ii**2 + jj**2
    weights = (d2 <= rad**2).astype(float)
    if sigma is not None:
        s = _positive(sigma, "sigma")
        weights *= np.exp(-d2 / (2 * s * s))
    window = cube.isel(rx=slice(i0, i1), ry=slice(j0, j1))
    out = virtual_diffraction(window, "mean", mask=weights, shift_center=shift_center,
                              subpixel=subpixel)
    out = out.assign_coords(rx=cube.coords["rx"].values[rx], ry=cube.coords["ry"].values[ry])
    out.name = "local_average"
    out.attrs = {"long_name": f"local average, radius {rad:g} scan steps",
                 "units": cube.attrs.get("units", "arbitrary")}
    return out
