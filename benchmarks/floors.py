"""Cost floors shared by the benchmarks: the work an algorithm cannot avoid, timed in the run."""

from __future__ import annotations

import time

import numpy as np
import scipy.fft as sfft

__all__ = ["fft_floor"]


def fft_floor(m: int, n: int, workers: int) -> float:
    """Seconds for forward + inverse FFTs of m complex64 n x n frames (scipy.fft, in place)."""
    a = np.ones((m, n, n), np.complex64)
    t = time.perf_counter()
    a = sfft.fft2(a, axes=(-2, -1), norm="ortho", overwrite_x=True, workers=workers)
    a = sfft.ifft2(a, axes=(-2, -1), norm="ortho", overwrite_x=True, workers=workers)
    return time.perf_counter() - t
