"""Initial probe from the data alone: aperture from the mean pattern, defocus from parallax.

The mean diffraction pattern gives the pupil's modulus (the aperture), but not its phase: the
far-field intensity of the probe is the same for any defocus, yet the defocus sets the probe's
footprint and ptychography cannot start from a probe of the wrong size.

The defocus (and astigmatism) is read from the data by parallax, as in tilt-corrected
bright-field STEM (Spoth, Nguyen, Muller & Kourkoutis, Appl. Phys. Lett. 111, 223102 (2017);
Varnavides et al., "Iterative phase retrieval algorithms for scanning
transmission electron microscopy", arXiv:2309.05250 (2023)): with a
defocused probe whose pupil phase is ``pi q^T A q / N`` (``A`` symmetric, object pixels per
detector pixel), the ray through pupil frequency ``q`` crosses the sample ``A q`` pixels from
the beam centre, so inside the bright-field disc each detector pixel sees a shadow image of the
object, ``I_j(q) ~ |pupil(q)|^2 (1 + h(r_j - A q))`` (``r_j`` the beam position; the sign follows
the FFT convention of :mod:`xmulti.ptycho.forward`). Back-projecting every pixel's contrast to
``r_j - A q`` makes the shadows from different positions coincide only for the right ``A``:
the score is the cross-frame agreement of the back-projected contrast (products of pairs from
different positions landing on the same object pixel, so noise and the within-frame structure
of each pattern do not count). ``A`` is found by a sweep of isotropic defocus then a coordinate
search over ``(A_yy, A_xx, A_xy)``.

When the object shows too little structure for parallax (the best score is not clearly above
its level when the frames' contrasts are given random signs) the older trial search is used: a few candidate footprints (both
defocus signs, and focus) are each tried for a few rPIE epochs on a patch of positions, and the
one with the lowest detector error is kept; on weak objects it is rough. The result is a start:
the engine refines it.
"""

from __future__ import annotations

import numpy as np

from .data import Frames
from .engine import run_engine
from .fft import FFT2
from .probe import pupil_from_data, scale_probe_power
from .state import EngineOptions, ReconState

__all__ = ["defocused_pupil_probe", "pupil_probe", "parallax_defocus", "search_probe"]


def _frequencies(n: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.arange(n) - n // 2
    return np.meshgrid(q, q, indexing="ij")


def _pupil_radius(pupil: np.ndarray) -> float:
    """Largest frequency radius (pixels) of the pupil (above 10 % of its maximum)."""
    qy, qx = _frequencies(pupil.shape[-1])
    inside = pupil > 0.1 * pupil.max()
    return float(np.sqrt((qy**2 + qx**2)[inside].max())) if inside.any() else pupil.shape[-1] / 4


def pupil_probe(pupil: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Probe (N, N) from a pupil modulus (zero frequency at the centre) and the phase
    ``pi q^T a q / N``: the ray through frequency ``q`` lands ``a q`` pixels from the centre.

    Parameters
    ----------
    pupil : ndarray (N, N)
    a : ndarray (2, 2)
        Symmetric defocus/astigmatism matrix (object pixels per detector pixel), (y, x) order.
    """
    n = pupil.shape[-1]
    qy, qx = _frequencies(n)
    quad = a[0, 0] * qy**2 + (a[0, 1] + a[1, 0]) * qy * qx + a[1, 1] * qx**2
    field = pupil * np.exp(1j * np.pi * quad / n)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(field), norm="ortho"))
    return probe.astype(np.complex64)


def defocused_pupil_probe(pupil: np.ndarray, diameter_px: float) -> np.ndarray:
    """Probe from a pupil modulus (zero frequency at the centre) with the defocus giving a
    geometric footprint of ``diameter_px`` (sign of ``diameter_px`` = sign of the defocus).

    A ray through pupil frequency ``q`` lands ``a * q`` pixels from the centre for the phase
    ``pi * a * |q|^2 / N``; ``a = D / (2 q_max)`` puts the pupil edge ``q_max`` at ``D / 2``.
    """
    a = diameter_px / (2 * max(_pupil_radius(pupil), 1.0))
    return pupil_probe(pupil, a * np.eye(2))


class _Parallax:
    """Back-projection of the bright-field contrast of each frame for a trial matrix ``A``."""

    def __init__(self, contrast: np.ndarray, q: np.ndarray, positions_px: np.ndarray, reach: float):
        self.c = contrast  # (M, P) contrast of the P bright-field pixels
        self.q = q  # (P, 2) their frequencies (y, x)
        self.base = np.floor(positions_px).astype(np.int64)
        self.frac = positions_px - self.base
        self.r = int(np.ceil(reach)) + 2  # half width of the local box of one frame
        self.box = 2 * self.r + 1
        lo = self.base.min(axis=0) - self.r
        self.base -= lo
        self.width = int(self.base[:, 1].max()) + self.box
        self.cells = (int(self.base[:, 0].max()) + self.box) * self.width

    def score(self, a: np.ndarray) -> float:
        """Mean product of back-projected contrast over pairs of different frames that land
        on the same object pixel."""
        m = len(self.c)
        shift = -(self.q @ a.T)  # (P, 2) r_j - A q
        ly = np.rint(self.frac[:, :1] + shift[None, :, 0]).astype(np.int64) + self.r
        lx = np.rint(self.frac[:, 1:] + shift[None, :, 1]).astype(np.int64) + self.r
        ok = (ly >= 0) & (ly < self.box) & (lx >= 0) & (lx < self.box)
        # per frame, the sums over its pixels landing on the same object pixel (sorted runs)
        local = np.where(ok, ly * self.box + lx, 0)
        order = np.argsort(local, axis=1, kind="stable")
        key = (np.take_along_axis(local, order, 1) + (np.arange(m) * self.box**2)[:, None]).ravel()
        cs = np.take_along_axis(self.c * ok, order, 1).ravel()
        ks = np.take_along_axis(ok, order, 1).ravel().astype(np.float64)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
        t, k = np.add.reduceat(cs, starts), np.add.reduceat(ks, starts)
        j, cell = np.divmod(key[starts], self.box**2)
        cy, cx = np.divmod(cell, self.box)
        glob = (self.base[j, 0] + cy) * self.width + self.base[j, 1] + cx
        tt, kk = t, k
        big_t, big_k = np.bincount(glob, tt, self.cells), np.bincount(glob, kk, self.cells)
        pairs = float((big_k**2).sum() - (kk**2).sum())
        if pairs <= 0:
            return 0.0
        return float(((big_t**2).sum() - (tt**2).sum()) / pairs)


def parallax_defocus(
    frames: Frames, positions_px: np.ndarray, max_diameter: float = 0.8, max_frames: int = 1024,
    highpass_px: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Defocus/astigmatism matrix ``A`` (2, 2) of the probe from the parallax of the shadow
    images in the bright-field disc, and its significance.

    Parameters
    ----------
    frames : Frames
    positions_px : ndarray (M, 2)
        Beam centres, fractional object indices (y, x).
    max_diameter : float
        Largest footprint searched, a fraction of the frame width N.
    max_frames : int
        Frames used at most: those nearest the most structured one (cost bound).
    highpass_px : float
        Gaussian width (detector pixels) of a high-pass on each frame's contrast; 0 only removes
        each frame's mean (beam flux). The smooth cell phantoms were seen to need 0.

    Returns
    -------
    a : ndarray (2, 2)
        For :func:`pupil_probe` (object pixels per detector pixel).
    significance : float
        Best score over its RMS when each frame's contrast gets a random sign (no agreement
        between frames); below about 3 the object shows too little structure for parallax.
    """
    from scipy.ndimage import binary_erosion

    n = frames.shape[-1]
    usable = np.flatnonzero(frames.usable)
    amp = np.fft.fftshift(np.asarray(frames.amplitude), axes=(-2, -1))
    valid = amp >= 0
    counts = np.where(valid, amp.astype(np.float64) ** 2, 0.0)
    mean = counts[usable].sum(axis=0) / np.maximum(valid[usable].sum(axis=0), 1)
    if len(usable) > max_frames:
        contrast = np.abs(np.sqrt(counts[usable]) - np.sqrt(mean)[None]).sum(axis=(1, 2))
        centre = positions_px[usable[int(np.argmax(contrast))]]
        usable = usable[np.argsort(np.hypot(*(positions_px[usable] - centre).T))[:max_frames]]
    # interior of the bright-field disc: the pupil's edge carries differential-phase contrast
    # of either sign, not a shadow image
    disc = binary_erosion(mean >= 0.1 * mean.max(), iterations=2)
    if disc.sum() < 8:
        return np.zeros((2, 2)), 0.0
    qy, qx = _frequencies(n)
    q = np.stack([qy[disc], qx[disc]], axis=1).astype(np.float64)
    c = counts[usable][:, disc] / mean[disc] - 1.0
    ok = valid[usable][:, disc]
    c = np.where(ok, c, 0.0)
    if highpass_px > 0:
        # keep the fine shadow detail: a smooth object gives a broad, skewed score peak (its
        # shadows still agree roughly when A is scaled), which was seen to overestimate A
        from scipy.ndimage import gaussian_filter

        full = np.zeros((len(usable), n, n))
        weight = np.zeros((len(usable), n, n))
        full[:, disc], weight[:, disc] = c, ok
        sigma = (0, highpass_px, highpass_px)
        smooth = gaussian_filter(full, sigma) / np.maximum(gaussian_filter(weight, sigma), 1e-6)
        c = (c - smooth[:, disc]) * ok
    else:
        # each frame's mean (beam flux, absorption over the footprint) is not a shadow
        c -= (c.sum(axis=1) / np.maximum(ok.sum(axis=1), 1))[:, None] * ok
    qmax = float(np.sqrt((q**2).sum(axis=1).max()))
    amax = max_diameter * n / (2 * qmax)
    par = _Parallax(c, q, positions_px[usable], 1.5 * amax * qmax)
    sweep = np.linspace(-amax, amax, 33)
    scores = np.array([par.score(a * np.eye(2)) for a in sweep])
    best = int(np.argmax(scores))
    params = np.array([sweep[best], sweep[best], 0.0])  # A_yy, A_xx, A_xy

    def matrix(p: np.ndarray) -> np.ndarray:
        return np.array([[p[0], p[2]], [p[2], p[1]]])

    top = scores[best]
    step = sweep[1] - sweep[0]
    while step > 0.01 * amax:
        improved = False
        for i in range(3):
            for sign in (1, -1):
                trial = params.copy()
                trial[i] += sign * step
                value = par.score(matrix(trial))
                if value > top:
                    top, params, improved = value, trial, True
        if not improved:
            step /= 2
    # null level: the same score with each frame's contrast given a random sign, which keeps
    # noise and chance agreement but destroys the shadows' agreement between frames
    rng = np.random.default_rng(0)
    signal = par.c
    null = []
    for _ in range(4):
        par.c = signal * rng.choice([-1.0, 1.0], size=(len(signal), 1))
        null.append(par.score(matrix(params)))
    par.c = signal
    spread = float(np.sqrt(np.mean(np.square(null)))) + 1e-30
    return matrix(params), float(top / spread)


def search_probe(
    frames: Frames,
    positions_px: np.ndarray,
    obj_shape: tuple[int, int],
    diameters: tuple[float, ...] | None = None,
    epochs: int = 4,
    max_positions: int = 64,
    fft: FFT2 | None = None,
    trials: list | None = None,
    min_significance: float = 3.0,
) -> tuple[np.ndarray, float]:
    """A starting probe (1, N, N): defocus by parallax, else the best of a few trial footprints.

    Parameters
    ----------
    frames : Frames
    positions_px : ndarray (M, 2)
        Beam centres, fractional object indices.
    obj_shape : (int, int)
        Object array shape.
    diameters : tuple of float, optional
        Candidate footprint diameters (pixels) for the trial search. Default: the defocus and
        astigmatism from :func:`parallax_defocus`, or when the object shows too little
        structure for it, trials of 0.15 N to 0.75 N, both defocus signs, and 0 (focus).
    epochs : int
        rPIE epochs per candidate.
    fft : FFT2, optional
    trials : list, optional
        Filled with ``(diameter, detector error)`` of every candidate (diagnostics); with
        parallax, ``(diameter, -significance)``.
    min_significance : float
        Parallax significance below which the trial search is used.
    max_positions : int
        Positions used for the trials: those nearest the position whose pattern differs most
        from the mean pattern (the most structured part of the object).

    Returns
    -------
    probe : ndarray (1, N, N) complex64
        Scaled to the measured counts.
    diameter : float
        The chosen footprint (signed; with parallax the mean over the two axes).
    """
    n = frames.shape[-1]
    amp = np.where(frames.amplitude >= 0, frames.amplitude, 0)
    mean = np.fft.fftshift((amp[frames.usable] ** 2).mean(axis=0))
    pupil = pupil_from_data(mean)
    if diameters is None:
        a, significance = parallax_defocus(frames, positions_px)
        if significance >= min_significance:
            probe = scale_probe_power(pupil_probe(pupil, a)[None], frames.mean_counts)
            diameter = float(np.trace(a)) * _pupil_radius(pupil)  # mean of the two axes
            trials = [] if trials is None else trials
            trials.append((diameter, -significance))
            return probe, diameter
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
