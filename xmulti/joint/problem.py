"""The joint objective on one object grid, evaluated in batches of positions.

:class:`FrameSource` serves the diffraction frames batch by batch (loaded once when small,
re-read from the lazy array otherwise, so memory is bounded by a batch); :class:`JointProblem`
evaluates the objective of :mod:`xmulti.joint.solve` and its gradient with respect to the
thickness, the element maps and (optionally) the probe, with the kernels of
:mod:`xmulti.joint.model`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..ptycho.fft import FFT2
from ..ptycho.forward import accumulate_patches, check_windows, extract_patches, window_corners
from ..ptycho.shift import is_integral, shifted_probes, unshift_sum
from .model import (
    AbsorptionModel,
    ObjectModel,
    absorption_factors,
    background_plane,
    ptycho_batch,
    smoothness,
    transmission,
    xrf_batch,
    xrf_count_scale,
    xrf_probe_weight,
    xrf_shifted_counts,
)

__all__ = ["FrameSource", "JointProblem"]


def _accumulate_stack(target: np.ndarray, patches: np.ndarray, corners: np.ndarray) -> None:
    """``target[:, y:y+n, x:x+n] += patches[:, b]`` for every corner (all maps in one pass)."""
    n = patches.shape[-1]
    for b, (y, x) in enumerate(corners.tolist()):
        target[:, y : y + n, x : x + n] += patches[:, b]


class FrameSource:
    """Diffraction frames in batches: ``sqrt(counts)`` in the unshifted FFT layout and validity.

    Frames are loaded once when they take at most ``max_bytes``; otherwise every pass reads
    each batch from the (lazy, Dask-backed) array again, so memory stays bounded by one batch.

    Parameters
    ----------
    diffraction : array-like (M, N, N)
        Counts, zero frequency at the frame centre (numpy, Dask or xarray).
    mask : ndarray (N, N) bool, optional
        True marks a bad detector pixel.
    batch : int
        Positions per batch.
    max_bytes : float
        Load everything when the float32 amplitudes take at most this.

    Attributes
    ----------
    counts : array-like (M, N, N)
        The counts as given (numpy or lazy Dask), frame centre at the array centre.
    mask : ndarray (N, N) bool
        True marks a bad detector pixel (same layout).
    """

    def __init__(self, diffraction: Any, mask: np.ndarray | None = None, batch: int = 64, max_bytes: float = 1e9):
        # an xarray's array (lazy or not); a numpy array's own ``.data`` is its raw buffer
        data = diffraction.data if hasattr(diffraction, "dims") else diffraction
        if len(data.shape) != 3 or data.shape[1] != data.shape[2]:
            raise InvalidInputError(f"diffraction must be (position, N, N) square frames, got {tuple(data.shape)}")
        self.shape = tuple(int(s) for s in data.shape)
        self.batch = max(1, int(batch))
        good = np.ones(self.shape[1:], bool) if mask is None else ~np.asarray(mask, bool)
        if good.shape != self.shape[1:]:
            raise InvalidInputError(f"detector mask shape {good.shape} does not match the frames {self.shape[1:]}")
        self.mask = ~good
        self.counts = data
        self._good = np.fft.ifftshift(good)
        self._loaded = None
        if 4.0 * np.prod(self.shape) <= max_bytes:
            self._loaded = [self._prepare(s, np.asarray(data[s])) for s in self.batches()]

    def batches(self) -> list[slice]:
        """The positions of each batch, in order (reads nothing)."""
        m = self.shape[0]
        return [slice(i, min(i + self.batch, m)) for i in range(0, m, self.batch)]

    def _prepare(self, sl: slice, counts: np.ndarray):
        counts = np.asarray(counts, dtype=np.float32)
        bad = ~np.isfinite(counts).all(axis=(1, 2)) | (counts < 0).any(axis=(1, 2))
        if bad.any():
            first = sl.start + int(np.flatnonzero(bad)[0])
            raise InvalidInputError(f"diffraction frame at position index {first} has negative, NaN or inf counts")
        amp = np.fft.ifftshift(np.sqrt(counts), axes=(-2, -1))
        valid = np.broadcast_to(self._good, amp.shape) & (counts.sum(axis=(1, 2)) > 0)[:, None, None]
        return sl, amp, valid

    def __iter__(self) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        if self._loaded is not None:
            yield from self._loaded
            return
        for sl in self.batches():
            yield self._prepare(sl, np.asarray(self.counts[sl]))


@dataclass
class JointProblem:
    """Everything the objective needs, on one object grid.

    Attributes
    ----------
    shape : (H, W)
        Object grid.
    probe : ndarray (K, N, N) complex64
        Probe modes (held fixed), pixel (N//2, N//2) the beam centre.
    positions_px : ndarray (M, 2)
        Beam centres as fractional object indices (y, x).
    frames : FrameSource
    object_model : ObjectModel
    absorption : AbsorptionModel
    xrf_data, xrf_sigma : ndarray (M, E)
        Per-position XRF signal and 1-sigma (map units); ``sigma = inf`` drops a value.
    sensitivity : ndarray (E,)
        Map units per ug/cm2.
    xrf_weight : float
        ``lambda``.
    smooth_scale : ndarray (E,)
        Weight of the smoothness of each element map (0: none).
    edge_weight_y, edge_weight_x : ndarray
        Neighbour-pair weights of the smoothness, (H-1, W) and (H, W-1).
    background : ndarray (H, W) bool, optional
        Pixels without material (vacuum or ice): the plane of ``t`` over them is pinned to zero
        with ``background_weight`` (see :func:`xmulti.joint.model.background_plane`).
    background_weight : float
    noise : {"poisson", "gaussian"}
        Likelihood of the frames (:func:`xmulti.joint.model.ptycho_batch`).
    fft : FFT2
    complex_dtype : numpy dtype
        Precision of the exit waves and FFTs (complex64 by default, twice as fast; complex128
        for gradient checks). Sums and gradients are accumulated in float64.
    thickness_smooth_scale : float
        Weight (per um^2) of the edge-weighted smoothness of the thickness, with the same pair
        weights as the element maps (0: none).
    xrf_noise : {"gaussian", "poisson"}
        Likelihood of the XRF values (:func:`xmulti.joint.model.xrf_batch`): Gaussian with the
        fit's uncertainties, or shifted Poisson with the fit's variance at the data.
    xrf_count_scale : ndarray (E,), optional
        Counts per map unit of each element for ``xrf_noise="poisson"``; default estimated from
        ``xrf_data`` and ``xrf_sigma`` (:func:`xmulti.joint.model.xrf_count_scale`; a tile of a
        distributed problem is given its whole problem's).
    """

    shape: tuple[int, int]
    probe: np.ndarray
    positions_px: np.ndarray
    frames: FrameSource
    object_model: ObjectModel
    absorption: AbsorptionModel
    xrf_data: np.ndarray
    xrf_sigma: np.ndarray
    sensitivity: np.ndarray
    xrf_weight: float = 1.0
    smooth_scale: np.ndarray | None = None
    edge_weight_y: np.ndarray | None = None
    edge_weight_x: np.ndarray | None = None
    background: np.ndarray | None = None
    background_weight: float = 0.0
    noise: str = "poisson"
    fft: FFT2 = field(default_factory=FFT2)
    complex_dtype: Any = np.complex64
    thickness_smooth_scale: float = 0.0
    xrf_noise: str = "gaussian"
    xrf_count_scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.probe.shape[-1]
        if self.frames.shape[0] != len(self.positions_px) or self.frames.shape[1] != n:
            raise InvalidInputError(
                f"{len(self.positions_px)} positions and a {n}x{n} probe for frames of shape {self.frames.shape}"
            )
        if self.noise not in ("gaussian", "poisson"):
            raise InvalidInputError(f"unknown noise model {self.noise!r}; use 'gaussian' or 'poisson'")
        if self.xrf_noise not in ("gaussian", "poisson"):
            raise InvalidInputError(f"unknown XRF noise model {self.xrf_noise!r}; use 'gaussian' or 'poisson'")
        self.corners, self.frac = window_corners(self.positions_px, n)
        check_windows(self.corners, self.frac, n, self.shape)
        self.probe = np.asarray(self.probe, self.complex_dtype)
        self._spectrum = self.fft.forward(self.probe.copy())
        self.n_elements = self.xrf_data.shape[1]
        self.evaluations = 0
        self._xrf_counts = None
        if self.xrf_noise == "poisson":
            if self.xrf_count_scale is None:
                self.xrf_count_scale = xrf_count_scale(self.xrf_data, self.xrf_sigma)
            self.xrf_count_scale = np.asarray(self.xrf_count_scale, float)
            if self.xrf_count_scale.shape != (self.n_elements,):
                raise InvalidInputError(
                    f"xrf_count_scale has shape {self.xrf_count_scale.shape}, expected ({self.n_elements},)"
                )
            self._xrf_counts = xrf_shifted_counts(self.xrf_data, self.xrf_sigma, self.xrf_count_scale)

    # -- per-batch probes and footprints --------------------------------------------------------
    def probes(self, sl: slice) -> np.ndarray:
        """Probe modes at the positions of ``sl``: (B, K, N, N), or (1, K, N, N) when integral."""
        frac = self.frac[sl]
        if is_integral(frac):
            return self.probe[None]
        return shifted_probes(self._spectrum, frac, self.fft)

    @staticmethod
    def footprints(probes: np.ndarray, count: int) -> np.ndarray:
        """Normalised probe intensity (B, N, N) from the probe modes at each position."""
        inten = (np.abs(probes) ** 2).sum(axis=1)
        inten /= inten.sum(axis=(1, 2), keepdims=True)
        return np.broadcast_to(inten, (count,) + inten.shape[1:])

    def curvatures(self) -> tuple[np.ndarray, np.ndarray]:
        """Diagonal Gauss-Newton curvature scales: illumination ``sum_j |P_j|^2`` (H, W) and the XRF
        data curvature ``lambda s_i^2 sum_j I_j^2 / sigma_ij^2`` (E, H, W) (preconditioning and the
        smoothness scale)."""
        n = self.probe.shape[-1]
        illum = np.zeros(self.shape)
        xrf = np.zeros((self.n_elements,) + self.shape)
        w = self.xrf_weight * self.sensitivity[None, :] ** 2 / self.xrf_sigma**2
        for sl in self.frames.batches():  # the probe and positions only: no frame is read
            probes = self.probes(sl)
            count = sl.stop - sl.start
            accumulate_patches(illum, np.broadcast_to((np.abs(probes) ** 2).sum(axis=1), (count, n, n)), self.corners[sl])
            fp2 = self.footprints(probes, count) ** 2
            _accumulate_stack(xrf, w[sl].T[:, :, None, None] * fp2[None], self.corners[sl])
        return illum, xrf

    # -- objective -----------------------------------------------------------------------------
    def _xrf_likelihood(self, sl: slice) -> dict:
        """Keywords of :func:`xrf_batch` for the positions ``sl``: none for the Gaussian term."""
        if self._xrf_counts is None:
            return {}
        shifted, shift = self._xrf_counts
        return {"count_scale": self.xrf_count_scale, "shifted": shifted[sl], "shift": shift[sl]}

    def set_probe(self, probe: np.ndarray) -> None:
        """Replace the probe modes (K, N, N) used by the next evaluations."""
        self.probe = np.asarray(probe, self.complex_dtype).reshape(self.probe.shape)
        self._spectrum = self.fft.forward(self.probe.copy())

    def regularisers(self, t_um: np.ndarray, c_ug_cm2: np.ndarray) -> tuple[float, np.ndarray | float, np.ndarray | float]:
        """The terms that involve no data: value and gradients with respect to ``t`` and ``c``.

        The edge-weighted smoothness of the element maps (``smooth_scale``) and of the thickness
        (``thickness_smooth_scale``, same pair weights), and the background pin of ``t``. They act
        on the whole grid at once, so a tile-parallel evaluation sums the tiles' data terms and
        adds these once.
        """
        reg, grad_t, grad_c = 0.0, 0.0, 0.0
        if self.smooth_scale is not None and np.any(self.smooth_scale > 0):
            reg, grad_c = smoothness(c_ug_cm2, self.edge_weight_y, self.edge_weight_x, self.smooth_scale)
        if self.thickness_smooth_scale > 0:
            value, grad = smoothness(t_um[None], self.edge_weight_y, self.edge_weight_x, [self.thickness_smooth_scale])
            reg += value
            grad_t = grad[0]
        if self.background is not None and self.background_weight > 0:
            pin, grad_pin = background_plane(t_um, self.background, self.background_weight)
            reg += pin
            grad_t = grad_t + grad_pin
        return reg, grad_t, grad_c

    def evaluate(
        self, t_um: np.ndarray, c_ug_cm2: np.ndarray, probe: np.ndarray | None = None
    ) -> tuple[float, dict, dict]:
        """Objective, its gradients and its terms.

        Parameters
        ----------
        t_um : ndarray (H, W)
            Matrix thickness (um).
        c_ug_cm2 : ndarray (E, H, W)
            Element areal densities (ug/cm2).
        probe : ndarray (K, N, N) complex, optional
            Probe modes; given, the probe is refined too and its gradient returned.

        Returns
        -------
        value : float
        gradients : dict
            ``"t"`` (H, W), ``"c"`` (E, H, W) real; ``"probe"`` ``dL/dP*`` (K, N, N) complex
            when ``probe`` is given (``dL/dRe P = 2 Re``, ``dL/dIm P = 2 Im`` of it).
        terms : dict
            ``ptycho``, ``xrf`` (before the weight ``lambda``) and ``smoothness`` (all of
            :meth:`regularisers`: both smoothness terms and the background pin).
        """
        n = self.probe.shape[-1]
        lam = self.xrf_weight
        if probe is not None:
            self.set_probe(probe)
        obj, dobj = transmission(t_um, c_ug_cm2, self.object_model)
        factor, dfactor = absorption_factors(t_um, self.absorption)
        emitted = c_ug_cm2 * factor
        grad_obj = np.zeros(self.shape, complex)
        grad_emit = np.zeros_like(emitted)
        grad_probe = np.zeros(self.probe.shape, complex) if probe is not None else None
        obj_c = obj.astype(self.complex_dtype)
        emit_view = np.lib.stride_tricks.sliding_window_view(emitted, (n, n), axis=(1, 2))
        loss_p = loss_x = 0.0
        for sl, amp, valid in self.frames:
            corners = self.corners[sl]
            count = sl.stop - sl.start
            probes = self.probes(sl)
            windows = extract_patches(obj_c, corners, n)
            lp, gw, gpsi = ptycho_batch(windows, probes, amp, valid, self.fft, self.noise)
            loss_p += lp
            accumulate_patches(grad_obj, gw, corners)
            fp = self.footprints(probes, count)
            ew = emit_view[:, corners[:, 0], corners[:, 1]]
            lx, gx, model, resid = xrf_batch(ew, fp, self.xrf_data[sl], self.xrf_sigma[sl], self.sensitivity,
                                             **self._xrf_likelihood(sl))
            loss_x += lx
            _accumulate_stack(grad_emit, gx, corners)
            if grad_probe is not None:
                power = np.broadcast_to((np.abs(probes) ** 2).sum(axis=(1, 2, 3)), (count,))
                q = xrf_probe_weight(ew, model, resid, self.sensitivity, power)
                per_position = np.conj(windows)[:, None] * gpsi + lam * q[:, None] * probes
                # back to the probe's own frame: the adjoint of the subpixel shift
                if is_integral(self.frac[sl]):
                    grad_probe += per_position.sum(axis=0)
                else:
                    grad_probe += unshift_sum(per_position.astype(self.complex_dtype), self.frac[sl], self.fft)
        grad_t = 2.0 * np.real(np.conj(grad_obj) * dobj) + lam * (grad_emit * c_ug_cm2 * dfactor).sum(axis=0)
        grad_c = lam * grad_emit * factor
        eps = self.object_model.element_path_um
        if eps is not None:
            # dO/dc_i = O (-i k eps_i): dL/dc_i = 2 Re(conj(G) O (-i k) eps_i)
            base = np.conj(grad_obj) * obj * (-1j * self.object_model.wavenumber_per_um)
            grad_c = grad_c + 2.0 * np.real(base[None] * np.asarray(eps)[:, None, None])
        reg, reg_t, reg_c = self.regularisers(t_um, c_ug_cm2)
        grad_t = grad_t + reg_t
        grad_c = grad_c + reg_c
        self.evaluations += 1
        grads = {"t": grad_t, "c": grad_c}
        if grad_probe is not None:
            grads["probe"] = grad_probe
        return loss_p + lam * loss_x + reg, grads, {"ptycho": loss_p, "xrf": loss_x, "smoothness": reg}
