"""Shared pieces of the ptychography benchmark runners (numpy + scipy only).

The runners (``ptyrad_runner.py``, ``py4dstem_ptycho_runner.py``) run in the peers
virtualenv, not in stem4d's environment, so this module imports nothing from stem4d.

* :func:`pin_threads` — one core, one thread (call before importing numpy/torch);
* :func:`simulate` — a thin phase object scanned by a defocused probe, noise-free,
  with its exact answer, in the layout the runners read;
* :func:`load_inputs` — read and check a runner's ``.npz`` input;
* :func:`aligned_ncc` — normalized cross-correlation of a reconstructed phase with the
  truth over the scanned region, after the best integer shift.

Input ``.npz`` layout (what every runner reads)
----------------------------------------------
``patterns``      float32 ``(N, ky, kx)``: N = slow·fast patterns in raster order (fast
                  axis fastest), detector rows ``ky`` first, DC at pixel ``(n//2, n//2)``
``scan_shape``    ``(slow, fast)``
``scan_step``     scan step, Å
``dk``            detector pixel size, 1/Å
``kv``            beam energy, kV
``convergence``   probe convergence semiangle, mrad
``defocus``       Å, positive = underfocus (C10 = -defocus)
optional truth (for :func:`aligned_ncc`): ``truth_phase`` (rad, sampled at
``dx = 1 / (n dk)``) and ``truth_centers`` ``(N, 2)`` probe centres in its pixels.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

REQUIRED = ("patterns", "scan_shape", "scan_step", "dk", "kv", "convergence", "defocus")


def pin_threads(cpu: int | None = 0) -> None:
    """One thread for BLAS/OpenMP/FFT libraries and (if given) one CPU for the process.

    Call before importing numpy, torch or scipy: the thread counts are read at import.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        os.environ[var] = "1"
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(cpu)})


def wavelength(kv: float) -> float:
    """Relativistic electron wavelength, Å (kv in kV)."""
    v = kv * 1e3
    return 12.2642598 / math.sqrt(v * (1 + 0.978476e-6 * v))


def simulate(
    scan: tuple[int, int] = (40, 40),
    npix: int = 96,
    kv: float = 300.0,
    convergence: float = 20.0,
    defocus: float = 100.0,
    scan_step: float = 0.6,
    bf_radius_px: float = 24.0,
    phase_max: float = 0.4,
    seed: int = 0,
) -> dict[str, Any]:
    """A noise-free single-slice dataset with a known phase object.

    The object is a triangular lattice (3 Å) of Gaussian atoms of two weights plus a few
    random vacancies, peak phase ``phase_max`` rad, sampled at the reconstruction pixel
    ``dx = 1 / (npix dk)`` with ``dk`` set so the bright-field disk has ``bf_radius_px``
    pixels. The probe (aperture ``convergence`` mrad, ``defocus`` Å underfocus) is
    shifted by sub-pixel amounts in Fourier space; patterns are ``|FFT(P·O)|²``
    (orthonormal FFT, DC moved to the centre), as PtyRAD and py4DSTEM model them.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    lam = wavelength(kv)
    dk = convergence / (1000 * lam * bf_radius_px)
    dx = 1.0 / (npix * dk)
    pad = 16
    step_px = scan_step / dx
    size = (int(math.ceil((scan[0] - 1) * step_px)) + npix + 2 * pad,
            int(math.ceil((scan[1] - 1) * step_px)) + npix + 2 * pad)

    # object: Gaussian atoms on a triangular lattice
    a = 3.0 / dx
    img = np.zeros(size)
    rows = np.arange(-2, size[0] / (a * math.sqrt(3) / 2) + 2)
    for i in rows:
        y = i * a * math.sqrt(3) / 2
        for x in np.arange(-2, size[1] / a + 2) * a + (a / 2 if int(i) % 2 else 0):
            iy, ix = int(round(y)), int(round(x))
            if 0 <= iy < size[0] and 0 <= ix < size[1] and rng.random() > 0.05:
                img[iy, ix] += 1.0 if (int(i) + int(round(x / a))) % 3 else 0.6
    phase = gaussian_filter(img, 0.35 / dx, mode="wrap")
    phase *= phase_max / phase.max()
    obj = np.exp(1j * phase).astype(np.complex64)

    # probe: aperture, defocus (chi = pi lambda C10 k^2, C10 = -defocus), transfer exp(-i chi)
    k = np.fft.fftfreq(npix, dx)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    alpha = 1000 * lam * np.sqrt(k2)
    aperture = np.clip((convergence - alpha) / (1000 * lam * dk) + 0.5, 0, 1)
    chi = math.pi * lam * (-defocus) * k2
    probe = np.fft.fftshift(np.fft.ifft2(aperture * np.exp(-1j * chi)))
    probe = (probe / np.sqrt((np.abs(probe) ** 2).sum())).astype(np.complex64)
    probe_k = np.fft.fft2(probe)

    n_pat = scan[0] * scan[1]
    tl = np.array([(pad + i * step_px, pad + j * step_px)
                   for i in range(scan[0]) for j in range(scan[1])])
    corner = np.floor(tl).astype(int)
    frac = tl - corner
    f = np.fft.fftfreq(npix)
    patterns = np.empty((n_pat, npix, npix), np.float32)
    batch = 128
    for s in range(0, n_pat, batch):
        sl = slice(s, min(s + batch, n_pat))
        ramp = np.exp(-2j * np.pi * (frac[sl, 0, None, None] * f[None, :, None]
                                     + frac[sl, 1, None, None] * f[None, None, :]))
        shifted = np.fft.ifft2(probe_k[None] * ramp)
        patches = np.stack([obj[c0:c0 + npix, c1:c1 + npix] for c0, c1 in corner[sl]])
        far = np.fft.fft2(shifted * patches, norm="ortho")
        patterns[sl] = np.fft.fftshift(np.abs(far) ** 2, axes=(-2, -1))
    return {
        "patterns": patterns,
        "scan_shape": np.array(scan),
        "scan_step": float(scan_step),
        "dk": float(dk),
        "kv": float(kv),
        "convergence": float(convergence),
        "defocus": float(defocus),
        "truth_phase": phase.astype(np.float32),
        "truth_centers": (tl + npix // 2).astype(np.float32),
    }


def load_inputs(path: str) -> dict[str, Any]:
    """The runner inputs from an ``.npz`` file (see the module docstring), checked."""
    with np.load(path) as f:
        missing = [k for k in REQUIRED if k not in f]
        if missing:
            raise SystemExit(f"{path}: missing arrays {missing}; needs {list(REQUIRED)}")
        out = {k: f[k] for k in f.files}
    pats = np.asarray(out["patterns"], dtype=np.float32)
    scan = tuple(int(v) for v in out["scan_shape"])
    if pats.ndim != 3 or pats.shape[1] != pats.shape[2]:
        raise SystemExit(f"patterns must be (N, n, n), got {pats.shape}")
    if scan[0] * scan[1] != pats.shape[0]:
        raise SystemExit(f"scan_shape {scan} does not match {pats.shape[0]} patterns")
    out["patterns"], out["scan_shape"] = pats, scan
    for k in ("scan_step", "dk", "kv", "convergence", "defocus"):
        out[k] = float(out[k])
    return out


def aligned_ncc(recon: np.ndarray, truth: np.ndarray, truth_centers: np.ndarray,
                inset: int = 4, subpixel: float = 0.1) -> tuple[float, tuple[float, float]]:
    """NCC of ``recon`` with ``truth`` over the truth's scanned region, best shift.

    The window is the bounding box of ``truth_centers`` (inset by ``inset`` pixels).
    The integer shift of ``recon`` maximizing the cross-correlation is found by FFT and
    the exact NCC evaluated around it; then sub-pixel shifts on a ``subpixel`` grid
    within ±0.5 pixel (Fourier shifts of ``recon``) refine it, since the tools place
    their scan grid at fractional offsets of the truth's. Both maps must share the pixel
    size. Returns ``(ncc, (row_shift, col_shift))`` in pixels.
    """
    lo = np.ceil(truth_centers.min(0)).astype(int) + inset
    hi = np.floor(truth_centers.max(0)).astype(int) - inset
    t = truth[lo[0]:hi[0], lo[1]:hi[1]].astype(np.float64)
    t = t - t.mean()
    tnorm = math.sqrt((t * t).sum())
    r = recon.astype(np.float64)
    shape = (r.shape[0] + t.shape[0], r.shape[1] + t.shape[1])
    xc = np.fft.irfft2(np.fft.rfft2(r - r.mean(), shape)
                       * np.conj(np.fft.rfft2(t, shape)), shape)
    valid = xc[: r.shape[0] - t.shape[0] + 1, : r.shape[1] - t.shape[1] + 1]

    def ncc_at(img: np.ndarray, y: int, x: int) -> float:
        w = img[y:y + t.shape[0], x:x + t.shape[1]]
        w = w - w.mean()
        return float((w * t).sum() / (math.sqrt((w * w).sum()) * tnorm))

    best, where = -2.0, (0, 0)
    for p in np.argsort(valid, axis=None)[-5:]:
        cy, cx = np.unravel_index(p, valid.shape)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                y, x = int(cy + dy), int(cx + dx)
                if 1 <= y < valid.shape[0] - 1 and 1 <= x < valid.shape[1] - 1:
                    ncc = ncc_at(r, y, x)
                    if ncc > best:
                        best, where = ncc, (y, x)
    shift = (float(where[0] - lo[0]), float(where[1] - lo[1]))
    if subpixel:
        spec = np.fft.fft2(r)
        fy, fx = np.fft.fftfreq(r.shape[0]), np.fft.fftfreq(r.shape[1])
        steps = np.arange(-0.5, 0.5 + 1e-9, subpixel)
        for sy in steps:
            for sx in steps:
                ramp = np.exp(2j * np.pi * (sy * fy[:, None] + sx * fx[None, :]))
                moved = np.fft.ifft2(spec * ramp).real  # moved(i) = r(i + s)
                ncc = ncc_at(moved, *where)
                if ncc > best:
                    best = ncc
                    shift = (where[0] + sy - lo[0], where[1] + sx - lo[1])
    return best, shift


def process_seconds(fallback_start: float) -> float:
    """Seconds since the process started (interpreter start-up and imports included);
    without psutil, since ``fallback_start`` (a ``time.perf_counter()`` taken first)."""
    import time

    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except ImportError:
        return time.perf_counter() - fallback_start
