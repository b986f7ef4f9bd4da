"""Fused CPU kernels of the engines' element-wise steps (numba), used when ``xp`` is numpy.

The array-module code of :mod:`~xmulti.ptycho.batch`, :mod:`~xmulti.ptycho.fourier`,
:mod:`~xmulti.ptycho.updates`, :mod:`~xmulti.ptycho.shift`, :mod:`~xmulti.ptycho.rpie`,
:mod:`~xmulti.ptycho.lsqml` and the engine's momentum (which also runs on cupy) makes one pass
over the data per numpy operation: about 25 passes per position and epoch besides the two FFTs,
which on a CPU cost as much as the FFTs themselves. These kernels do the same arithmetic in one
pass each (windows and exit waves; the detector constraint, frame by frame while the frame is
in cache; the object and probe sums; the subpixel phase ramps; the update steps; and, once per
scan or streamed tile, the frames' conversion to amplitudes), compiled once
(cached on disk) and without the GIL, so the engines' threads run them concurrently. Each gives
what the array code gives to float32 rounding (per-frame sums are accumulated in float32, their
totals in float64), and :data:`ENABLED` switches them off (the tests compare both paths). The
formulas and their references are documented where the array code is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..jit import AVAILABLE
from ..jit import kernel as _jit

__all__ = [
    "ENABLED", "usable", "windows", "fourier", "sums", "divided_step", "ramped", "ramped_sum",
    "divide", "add_scaled", "momentum", "step_sums", "prepare",
]

# False forces the array-module code on numpy too
ENABLED = AVAILABLE


def usable(xp: Any) -> bool:
    """True when the fused kernels apply: numpy arrays and numba available."""
    return ENABLED and xp is np


# The loops run over rows taken as 1-D views: with 2-D/4-D indexing by computed offsets numba
# checks every index for wrap-around and the loops were 3-5x slower than numpy.


@_jit
def _windows(obj, corners, probes, patches, psi):  # pragma: no cover - compiled
    bsz, k_modes, n, _ = psi.shape
    for b in range(bsz):
        y0 = corners[b, 0]
        x0 = corners[b, 1]
        pb = b if probes.shape[0] > 1 else 0  # (1, K, N, N): the probe every window sees
        for i in range(n):
            orow = obj[y0 + i, x0 : x0 + n]
            prow = patches[b, i]
            for j in range(n):
                prow[j] = orow[j]
            for k in range(k_modes):
                qrow = probes[pb, k, i]
                srow = psi[b, k, i]
                for j in range(n):
                    srow[j] = qrow[j] * prow[j]


def windows(obj: np.ndarray, corners: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object windows (B, N, N) and exit waves ``P_jk O_j`` (B, K, N, N) in one pass.

    ``probes`` is (K, N, N) (every window sees the same probe) or (B, K, N, N).
    """
    p4 = probes[None] if probes.ndim == 3 else probes
    bsz, n = len(corners), probes.shape[-1]
    patches = np.empty((bsz, n, n), np.complex64)
    psi = np.empty((bsz, p4.shape[1], n, n), np.complex64)
    _windows(obj, np.ascontiguousarray(corners, np.int64), p4, patches, psi)
    return patches, psi


# reassociation lets the per-frame sums be vectorised (they are accumulated in float64)
@_jit(fastmath={"reassoc", "contract"})
def _fourier(spec, amp, scale, poisson, power, m2, work):  # pragma: no cover - compiled
    bsz, k_modes, npix = spec.shape
    eps = np.float32(1e-6)
    one = np.float32(1.0)
    two = np.float32(2.0)
    zero = np.float32(0.0)
    error = 0.0
    norm = 0.0
    for b in range(bsz):
        # frame by frame: its spectrum stays in cache between the two passes
        for p in range(npix):
            m2[p] = 0.0
        for k in range(k_modes):
            z = spec[b, k]
            for p in range(npix):
                m2[p] += z[p].real * z[p].real + z[p].imag * z[p].imag
        arow = amp[b]
        c = scale[b]
        # per-frame sums in float32 (vectorised), added up over the frames in float64; the
        # Newton step's sums are of positive terms only (see fourier._poisson_factor), so
        # float32 keeps their relative accuracy
        pw = zero
        e_b = zero
        n_b = zero
        s_num = zero
        s_den = zero
        for p in range(npix):
            a = arow[p]
            valid = a >= 0  # invalid pixels: the model keeps its amplitude, no update
            mod = np.sqrt(m2[p]) * c
            av = a if valid else mod
            d = av - mod
            pw += m2[p] if valid else zero
            e_b += d * d
            n_b += av * av if valid else zero
            if poisson:
                m2s = mod * mod + eps
                q = av * av / m2s
                r = q - one
                qp1 = q + one
                s = r / qp1
                h = r * r * m2s
                s_num += h * (two + s) * two / qp1  # h (1 - s)(2 + s), 1 - s = 2 / (1 + q)
                s_den += h * (two - s * s)
                work[p] = r if valid else zero
            else:
                work[p] = d / (mod + eps)
        error += e_b
        norm += n_b
        power[b] = pw
        step = one
        if poisson:
            a_b = 0.5 * float(s_num) / (float(s_den) + 1e-6)
            step = np.float32(min(max(a_b, 0.0), 1.0))
        for k in range(k_modes):
            z = spec[b, k]
            for p in range(npix):
                z[p] *= work[p] * step
    return error, norm


def fourier(spec: np.ndarray, amplitude: np.ndarray, noise: str, scale: np.ndarray | None
            ) -> tuple[float, float, np.ndarray]:
    """The detector constraint of :func:`xmulti.ptycho.fourier.fourier_update` in place on ``spec``.

    Returns the error ``sum (c|Psi| - A)^2`` and ``sum A^2`` over valid pixels, and the model
    power ``sum |Psi|^2`` of each frame over its valid pixels (B,) float64.
    """
    bsz, k_modes, n, _ = spec.shape
    flat = spec.reshape(bsz, k_modes, n * n)
    amp = np.ascontiguousarray(amplitude, np.float32).reshape(bsz, n * n)
    c = np.ones(bsz, np.float32) if scale is None else np.asarray(scale, np.float32)
    power = np.empty(bsz, np.float64)
    m2, work = np.empty(n * n, np.float32), np.empty(n * n, np.float32)
    error, norm = _fourier(flat, amp, c, noise == "poisson", power, m2, work)
    return float(error), float(norm), power


@_jit
def _sums(chi, probes, shared, patches, local, num, illum, pnum, pden, probe_sums):  # pragma: no cover
    bsz, k_modes, n, _ = chi.shape
    for b in range(bsz):
        y0 = local[b, 0]
        x0 = local[b, 1]
        pb = 0 if shared else b
        for i in range(n):
            orow = patches[b, i]
            nrow = num[y0 + i, x0 : x0 + n]
            irow = illum[y0 + i, x0 : x0 + n]
            if probe_sums:
                drow = pden[i]
                for j in range(n):
                    drow[j] += orow[j].real * orow[j].real + orow[j].imag * orow[j].imag
            for k in range(k_modes):
                crow = chi[b, k, i]
                qrow = probes[pb, k, i]
                for j in range(n):
                    q = qrow[j]
                    nrow[j] += q.conjugate() * crow[j]
                    irow[j] += q.real * q.real + q.imag * q.imag
                if not probe_sums:
                    continue
                if shared:
                    prow = pnum[k, i]
                    for j in range(n):
                        prow[j] += orow[j].conjugate() * crow[j]
                else:  # left per position for the shift back to the probe frame
                    for j in range(n):
                        crow[j] = orow[j].conjugate() * crow[j]


def sums(chi: np.ndarray, probes: np.ndarray, patches: np.ndarray, local: np.ndarray, num: np.ndarray,
         illum: np.ndarray, pnum: np.ndarray | None, pden: np.ndarray | None) -> None:
    """Add the object numerator and illumination (and the probe sums) of a batch, in one pass.

    ``num``/``illum`` get ``sum_k conj(P_jk) chi_jk`` and ``sum_k |P_jk|^2`` at the windows'
    corners ``local`` (B, 2); with ``pnum``/``pden`` given, ``pden`` gets ``sum_j |O_j|^2`` and,
    when every window sees the same probe (``probes`` (K, N, N)), ``pnum`` gets
    ``sum_j conj(O_j) chi_jk``; with per-window probes (B, K, N, N) ``chi`` is overwritten with
    the per-position terms ``conj(O_j) chi_jk`` instead (to be shifted back and summed by the
    caller, :func:`xmulti.ptycho.shift.unshift_sum`) and ``pnum`` is left alone.
    """
    shared = probes.ndim == 3
    p4 = probes[None] if shared else probes
    with_probe = pden is not None
    k, n = chi.shape[1], chi.shape[-1]
    pn = pnum if with_probe and shared else np.zeros((k, n, n), np.complex64)
    pd = pden if with_probe else np.zeros((n, n), np.float32)
    _sums(chi, p4, shared, patches, np.ascontiguousarray(local, np.int64), num, illum, pn, pd,
          with_probe)


@_jit
def _divided_step(target, num, illum, weight, floor, scale):  # pragma: no cover - compiled
    for i in range(target.shape[0]):
        trow = target[i]
        nrow = num[i]
        irow = illum[i]
        for j in range(trow.shape[0]):
            f = scale / (weight * irow[j] + floor)  # real factor: no complex division
            z = nrow[j]
            trow[j] += np.complex64(complex(z.real * f, z.imag * f))


def divided_step(target: np.ndarray, num: np.ndarray, illum: np.ndarray, weight: float, frac: float,
                 eps: float, scale: float) -> None:
    """``target += scale * num / (weight * illum + frac * max(illum) + eps)`` in one pass (2-D)."""
    floor = np.float32(frac * float(illum.max()) + eps)
    _divided_step(target, num, illum, np.float32(weight), floor, np.float32(scale))


@_jit
def _ramped(spec, ry, rx, out):  # pragma: no cover - compiled
    bsz, k_modes, n, _ = out.shape
    for b in range(bsz):
        xrow = rx[b]
        for k in range(k_modes):
            for i in range(n):
                f = ry[b, i]
                srow = spec[k, i]
                orow = out[b, k, i]
                for j in range(n):
                    orow[j] = srow[j] * (f * xrow[j])


def ramped(spec: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """``spec[None] * ry[:, None, :, None] * rx[:, None, None, :]``: (B, K, N, N) in one pass.

    ``spec`` (K, N, N), ``ry`` (B, N) and ``rx`` (B, N) the separable phase ramps.
    """
    out = np.empty((len(ry),) + spec.shape, np.complex64)
    _ramped(spec, ry, rx, out)
    return out


@_jit
def _ramped_sum(spec, ry, rx, out):  # pragma: no cover - compiled
    bsz, k_modes, n, _ = spec.shape
    for b in range(bsz):
        xrow = rx[b]
        for k in range(k_modes):
            for i in range(n):
                f = ry[b, i]
                srow = spec[b, k, i]
                orow = out[k, i]
                for j in range(n):
                    orow[j] += srow[j] * (f * xrow[j])


def ramped_sum(spec: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """``sum_b spec[b] * ry[b, :, None] * rx[b, None, :]`` for ``spec`` (B, K, N, N): (K, N, N)."""
    out = np.zeros(spec.shape[1:], np.complex64)
    _ramped_sum(spec, ry, rx, out)
    return out


@_jit
def _divide(target, illum, floor):  # pragma: no cover - compiled
    for i in range(target.shape[0]):
        trow = target[i]
        irow = illum[i]
        for j in range(trow.shape[0]):
            f = np.float32(1.0) / (irow[j] + floor)
            z = trow[j]
            trow[j] = np.complex64(complex(z.real * f, z.imag * f))


def divide(target: np.ndarray, illum: np.ndarray, floor: float) -> None:
    """``target /= illum + floor`` in place (2-D complex64 by float32), one pass."""
    _divide(target, illum, np.float32(floor))


@_jit
def _add_scaled(target, src, scale):  # pragma: no cover - compiled
    for i in range(target.shape[0]):
        trow = target[i]
        srow = src[i]
        for j in range(trow.shape[0]):
            z = srow[j]
            trow[j] += np.complex64(complex(z.real * scale, z.imag * scale))


def add_scaled(target: np.ndarray, src: np.ndarray, scale: float) -> None:
    """``target += scale * src`` in place (2-D complex64), one pass."""
    _add_scaled(target, src, np.float32(scale))


@_jit
def _momentum(x, before, v, m, fresh, move):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        xrow = x[i]
        brow = before[i]
        vrow = v[i]
        for j in range(xrow.shape[0]):
            d = xrow[j] - brow[j]
            w = d if fresh else vrow[j] * m + d
            vrow[j] = w
            if move:
                xrow[j] += w * m


def momentum(x: np.ndarray, before: np.ndarray, v: np.ndarray, m: float, fresh: bool,
             move: bool) -> None:
    """Heavy-ball step in one pass: ``v = m v + (x - before)`` (``v = x - before`` when
    ``fresh``), then ``x += m v`` when ``move``; 2-D complex64 arrays, in place."""
    _momentum(x, before, v, np.complex64(m), fresh, move)


@_jit(fastmath={"reassoc", "contract"})
def _step_sums(chi, patches, probes, d_obj, local, d_probes, with_probe, out):  # pragma: no cover
    bsz, k_modes, n, _ = chi.shape
    a11 = 0.0
    a12 = 0.0
    a22 = 0.0
    b1 = 0.0
    b2 = 0.0
    for b in range(bsz):
        y0 = local[b, 0]
        x0 = local[b, 1]
        pb = b if probes.shape[0] > 1 else 0
        db = b if d_probes.shape[0] > 1 else 0
        for k in range(k_modes):
            for i in range(n):
                crow = chi[b, k, i]
                orow = patches[b, i]
                prow = probes[pb, k, i]
                qrow = d_probes[db, k, i]
                drow = d_obj[y0 + i, x0 : x0 + n]
                for j in range(n):
                    u = drow[j] * prow[j]  # dO_j P_j
                    c = crow[j]
                    a11 += u.real * u.real + u.imag * u.imag
                    b1 += u.real * c.real + u.imag * c.imag
                    if with_probe:
                        v = orow[j] * qrow[j]  # O_j dP_j
                        a22 += v.real * v.real + v.imag * v.imag
                        a12 += u.real * v.real + u.imag * v.imag
                        b2 += v.real * c.real + v.imag * c.imag
    out[0] += a11
    out[1] += a12
    out[2] += a22
    out[3] += b1
    out[4] += b2


def step_sums(chi: np.ndarray, patches: np.ndarray, probes: np.ndarray, d_obj: np.ndarray,
              local: np.ndarray, d_probes: np.ndarray | None, out: np.ndarray) -> None:
    """Add the LSQ-ML step normal-equation sums of sampled windows to ``out`` (5,) float64.

    With ``u = dO_j P_j`` (``d_obj`` windows at ``local`` corners times the probes) and
    ``v = O_j dP_j``: ``out += [sum|u|^2, sum Re(u* v), sum|v|^2, sum Re(u* chi), sum Re(v* chi)]``,
    one pass and no (B, K, N, N) temporaries. ``probes``/``d_probes`` are (K, N, N) (every
    window) or (B, K, N, N); ``d_probes`` None: object step only (the ``v`` sums stay 0).
    """
    p4 = probes[None] if probes.ndim == 3 else probes
    with_probe = d_probes is not None
    q = (np.zeros((1,) + p4.shape[1:], np.complex64) if d_probes is None
         else d_probes[None] if d_probes.ndim == 3 else d_probes)
    _step_sums(chi, patches, p4, d_obj, np.ascontiguousarray(local, np.int64), q, with_probe, out)


@_jit
def _prepare(data, mask, saturation, clip, amplitude, counts, valid_any, nonfinite, negative):  # pragma: no cover
    m, n, _ = data.shape
    half = n // 2
    invalid_total = 0
    for b in range(m):
        total = 0.0
        valid = 0
        for i in range(n):
            src = data[b, i]
            dst = amplitude[b, (i - half) % n]  # ifftshift: input row half goes to row 0
            mrow = mask[i]
            for j in range(n):
                v = np.float32(src[j])
                if not np.isfinite(v):
                    nonfinite[b] = True
                    v = np.float32(0.0)
                elif v < 0:
                    negative[b] = True
                    if clip:
                        v = np.float32(0.0)
                jj = (j - half) % n
                if mrow[j] or v >= saturation:
                    dst[jj] = np.float32(-1.0)
                    invalid_total += 1
                else:
                    dst[jj] = np.sqrt(v)
                    total += v
                    valid += 1
        counts[b] = total
        valid_any[b] = valid > 0
    return invalid_total


def prepare(data: np.ndarray, mask: np.ndarray | None, saturation: float | None,
            clip_negative: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Counts (M, N, N) -> engine amplitudes in one pass per frame.

    ``sqrt(counts)`` in float32 in the unshifted FFT layout, ``-1`` where the mask or
    ``saturation`` marks a pixel invalid, negative counts set to zero when ``clip_negative``.

    Returns
    -------
    amplitude, counts (M,) float64 on the valid pixels, any valid pixel (M,), non-finite (M,),
    negative (M,) per frame, and whether any pixel is invalid.
    """
    m, n, _ = data.shape
    amplitude = np.empty((m, n, n), np.float32)
    counts = np.zeros(m)
    valid_any = np.zeros(m, np.bool_)
    nonfinite = np.zeros(m, np.bool_)
    negative = np.zeros(m, np.bool_)
    mask = np.zeros((n, n), np.bool_) if mask is None else np.ascontiguousarray(mask, np.bool_)
    level = np.float32(np.inf if saturation is None else saturation)
    invalid = _prepare(data, mask, level, bool(clip_negative), amplitude, counts, valid_any, nonfinite, negative)
    return amplitude, counts, valid_any, nonfinite, negative, bool(invalid > 0)
