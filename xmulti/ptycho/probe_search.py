"""Initial probe from the data alone: aperture from the mean pattern, defocus by trial.

The mean diffraction pattern gives the pupil's modulus (the aperture), but not its phase: the
far-field intensity of the probe is the same for any defocus, yet the defocus sets the probe's
footprint and ptychography cannot start from a probe of the wrong size. So a few candidate
defocus values (footprint diameters spread over the frame, both signs, and no defocus) are
each tried for a few epochs on a patch of positions, and the one with the lowest detector
error is kept. The patch surrounds the most strongly scattering position, since over a flat
object (vacuum) every candidate fits equally well. The winner is only a start: the engine
refines it. On weakly scattering objects the candidates are hard to tell apart after a few
epochs and the search tends to pick too small a footprint: give the nominal footprint
(``probe_diameter_um`` of :func:`xmulti.ptycho.reconstruct.reconstruct`) when it is known.
"""

from __future__ import annotations

import numpy as np

from .data import Frames
from .engine import run_engine
from .fft import FFT2
from .probe import pupil_from_data, scale_probe_power
from .state import EngineOptions, ReconState

__all__ = ["defocused_pupil_probe", "search_probe"]


def defocused_pupil_probe(pupil: np.ndarray, diameter_px: float) -> np.ndarray:
    """Probe from a pupil modulus (zero frequency at the centre) with the defocus giving a
    geometric footprint of ``diameter_px`` (sign of ``diameter_px`` = sign of the defocus).

    A ray through pupil frequency ``q`` lands ``a * q`` pixels from the centre for the phase
    ``pi * a * |q|^2 / N``; ``a = D / (2 q_max)`` puts the pupil edge ``q_max`` at ``D / 2``.
    """
    n = pupil.shape[-1]
    q = np.arange(n) - n // 2
    qy, qx = np.meshgrid(q, q, indexing="ij")
    q2 = qy**2 + qx**2
    inside = pupil > 0.1 * pupil.max()
    qmax = float(np.sqrt(q2[inside].max())) if inside.any() else n / 4
    a = diameter_px / (2 * max(qmax, 1.0))
    field = pupil * np.exp(1j * np.pi * a * q2 / n)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(field), norm="ortho"))
    return probe.astype(np.complex64)


def search_probe(
    frames: Frames,
    positions_px: np.ndarray,
    obj_shape: tuple[int, int],
    diameters: tuple[float, ...] | None = None,
    epochs: int = 4,
    max_positions: int = 64,
    fft: FFT2 | None = None,
    trials: list | None = None,
) -> tuple[np.ndarray, float]:
    """The best starting probe (1, N, N) among defocus candidates, and its footprint diameter.

    Parameters
    ----------
    frames : Frames
    positions_px : ndarray (M, 2)
        Beam centres, fractional object indices.
    obj_shape : (int, int)
        Object array shape.
    diameters : tuple of float, optional
        Candidate footprint diameters (pixels); default 0.15 N to 0.75 N, both defocus signs,
        and 0 (focus).
    epochs : int
        rPIE epochs per candidate.
    fft : FFT2, optional
    trials : list, optional
        Filled with ``(diameter, detector error)`` of every candidate (diagnostics).
    max_positions : int
        Positions used for the trials: those nearest the position whose pattern differs most
        from the mean pattern (the most structured part of the object).

    Returns
    -------
    probe : ndarray (1, N, N) complex64
        Scaled to the measured counts.
    diameter : float
        The chosen candidate (signed).
    """
    n = frames.shape[-1]
    amp = np.where(frames.amplitude >= 0, frames.amplitude, 0)
    mean = np.fft.fftshift((amp[frames.usable] ** 2).mean(axis=0))
    pupil = pupil_from_data(mean)
    if diameters is None:
        base = [f * n for f in (0.15, 0.3, 0.45, 0.6, 0.75)]
        diameters = (0.0, *base, *(-d for d in base))
    # trial on the positions around the most strongly scattering one: where the object is
    # flat (vacuum) any probe fits and the candidates cannot be told apart
    usable = np.flatnonzero(frames.usable)
    mean_amp = np.sqrt(np.fft.ifftshift(mean))
    contrast = np.abs(amp[usable] - mean_amp[None]).sum(axis=(1, 2))
    centre = positions_px[usable[int(np.argmax(contrast))]]
    near = usable[np.argsort(np.hypot(*(positions_px[usable] - centre).T))[:max_positions]]
    sub = frames.subset(near)
    # plain amplitude-projection rPIE: the candidates are ranked by their detector error
    opts = EngineOptions(batch_size=16, probe_update_start=1, noise="gaussian", intensity_correction=False)
    best = (np.inf, None, 0.0)
    trials = [] if trials is None else trials
    for d in diameters:
        probe = scale_probe_power(defocused_pupil_probe(pupil, d)[None], frames.mean_counts)
        state = ReconState(np.ones(obj_shape, np.complex64), probe, positions_px[near].copy())
        run_engine(state, sub, "rpie", epochs, opts, fft)
        trials.append((d, state.errors[-1]))
        if state.errors[-1] < best[0]:
            best = (state.errors[-1], probe, d)
    return best[1], float(best[2])
