"""Measured diffraction frames prepared for the engines: validated, square-rooted, unshifted.

Engines compare model and measured *amplitudes* (square roots of the counts) in the unshifted FFT
layout (zero frequency at index 0), so the frames, stored with zero frequency at the centre, are
``ifftshift``-ed once here. Pixels that carry no information (masked detector pixels, saturated
pixels) are marked with amplitude ``-1``: the Fourier constraint leaves the model's amplitude
there, so they neither pull the model nor count in the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..jit import KERNEL_DTYPES
from . import fused

__all__ = ["Frames", "prepare_frames"]



@dataclass
class Frames:
    """Measured data as the engines use it.

    Attributes
    ----------
    amplitude : array (M, N, N) float32
        ``sqrt(counts)``, unshifted FFT layout; ``-1`` marks an invalid pixel.
    has_invalid : bool
        True when any pixel is marked invalid (the engines then pay for the masking step).
    usable : ndarray (M,) bool
        False for frames that are skipped (all zero, or no valid pixel).
    mean_counts : float
        Mean total counts of the usable frames (photons per frame, valid pixels only).
    counts : ndarray (M,) float64
        Total counts of each frame on its valid pixels.
    """

    amplitude: Any
    has_invalid: bool
    usable: np.ndarray
    mean_counts: float
    counts: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(M, N, N)."""
        return tuple(self.amplitude.shape)  # type: ignore[return-value]

    def subset(self, index: np.ndarray) -> Frames:
        """The frames of the given positions only (e.g. one tile of a decomposed reconstruction)."""
        index = np.asarray(index)
        usable = self.usable[index]
        counts = None if self.counts is None else self.counts[index]
        return Frames(self.amplitude[index], self.has_invalid, usable, self.mean_counts, counts)


def prepare_frames(
    diffraction: np.ndarray,
    mask: np.ndarray | None = None,
    saturation: float | None = None,
    clip_negative: bool = False,
    xp: ModuleType = np,
) -> Frames:
    """Validate measured frames and convert them to engine amplitudes.

    Parameters
    ----------
    diffraction : ndarray (M, N, N)
        Counts (photons), zero frequency at the frame centre.
    mask : ndarray (N, N) bool, optional
        True marks a bad detector pixel: its model amplitude is kept as is.
    saturation : float, optional
        Counts at or above this level are treated as unknown (like masked pixels) in that frame.
    clip_negative : bool
        Negative counts (e.g. after a background subtraction) raise an error unless this is True,
        in which case they are set to zero.
    xp : module
        Array module of the result (numpy or cupy).

    Returns
    -------
    Frames

    Raises
    ------
    InvalidInputError
        Not a stack of square frames, NaN/inf values, negative counts, a mask of another shape,
        or no usable frame at all. Frames that are all zero (e.g. a missed detector trigger) are
        not an error: they are skipped and reported by ``Frames.usable``.
    """
    data = np.asarray(diffraction)
    if data.ndim != 3 or data.shape[1] != data.shape[2] or data.shape[1] < 4:
        raise InvalidInputError(
            f"diffraction frames must be a stack (position, det_y, det_x) of square frames of at "
            f"least 4x4 pixels, got shape {data.shape}"
        )
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InvalidInputError(f"diffraction frames must be real counts, got dtype {data.dtype}")
    if fused.usable(np) and data.dtype in KERNEL_DTYPES:
        return _prepare_fused(data, mask, saturation, clip_negative, xp)
    data = data.astype(np.float32, copy=False)
    negative = (data < 0).any(axis=(1, 2))
    _check_values(~np.isfinite(data).all(axis=(1, 2)), negative, clip_negative, data)
    if negative.any():
        data = np.clip(data, 0, None)
    n = data.shape[1]
    invalid = np.zeros(data.shape, bool) if (mask is not None or saturation is not None) else None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (n, n):
            raise InvalidInputError(
                f"detector mask shape {mask.shape} does not match the frames ({n}, {n})"
            )
        invalid |= mask.astype(bool)[None]
    if saturation is not None:
        invalid |= data >= saturation
    amplitude = np.sqrt(data)
    if invalid is not None:
        amplitude[invalid] = -1.0
        valid_counts = np.where(invalid, 0.0, data).sum(axis=(1, 2))
        has_valid = (~invalid).any(axis=(1, 2))
    else:
        valid_counts = data.sum(axis=(1, 2), dtype=np.float64)
        has_valid = np.ones(len(data), bool)
    usable = (valid_counts > 0) & has_valid
    if not usable.any():
        raise InvalidInputError(
            "no usable diffraction frame: every frame is all zero (or fully masked)"
        )
    amplitude = np.fft.ifftshift(amplitude, axes=(-2, -1))
    return Frames(
        amplitude=xp.asarray(np.ascontiguousarray(amplitude, dtype=np.float32)),
        has_invalid=bool(invalid is not None and invalid.any()),
        usable=usable,
        mean_counts=float(valid_counts[usable].mean()),
        counts=np.asarray(valid_counts, dtype=np.float64),
    )


def _prepare_fused(data: np.ndarray, mask, saturation, clip_negative: bool, xp: ModuleType) -> Frames:
    """:func:`prepare_frames` in one pass per frame (:func:`xmulti.ptycho.fused.prepare`): the
    array code makes about ten passes over the frames with a temporary each, 7x slower on a
    streamed tile's frames."""
    n = data.shape[1]
    if mask is not None and np.shape(mask) != (n, n):
        raise InvalidInputError(f"detector mask shape {np.shape(mask)} does not match the frames ({n}, {n})")
    amplitude, counts, has_valid, nonfinite, negative, has_invalid = fused.prepare(
        data, None if mask is None else np.asarray(mask), saturation, clip_negative
    )
    _check_values(nonfinite, negative, clip_negative, data)
    usable = (counts > 0) & has_valid
    if not usable.any():
        raise InvalidInputError("no usable diffraction frame: every frame is all zero (or fully masked)")
    return Frames(
        amplitude=xp.asarray(amplitude),
        has_invalid=has_invalid,
        usable=usable,
        mean_counts=float(counts[usable].mean()),
        counts=counts,
    )


def _check_values(nonfinite: np.ndarray, negative: np.ndarray, clip_negative: bool, data: np.ndarray) -> None:
    """Raise on frames with NaN/inf values, or negative counts unless they are to be clipped."""
    if nonfinite.any():
        bad = np.flatnonzero(nonfinite)
        raise InvalidInputError(
            f"diffraction frames contain NaN or inf values in {bad.size} frame(s), first at "
            f"position index {int(bad[0])}"
        )
    if negative.any() and not clip_negative:
        bad = np.flatnonzero(negative)
        raise InvalidInputError(
            f"diffraction frames contain negative counts in {bad.size} frame(s), first at "
            f"position index {int(bad[0])} (min {float(np.nanmin(data)):g}); pass "
            f"clip_negative=True to set them to zero"
        )
