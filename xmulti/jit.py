"""Compilation of xmulti's fused CPU kernels with numba (one place for its options).

The fused kernels (:mod:`xmulti.ptycho.fused`, :mod:`xmulti.xrf.fused`) do in one pass over the
data what the array-module code does in several; they run when the array module is numpy, and
the array code stays for cupy and as the fallback.
"""

from __future__ import annotations

from typing import Any

try:  # numba is a dependency; without it (an unusual install) the array code runs
    from numba import njit
except ImportError:  # pragma: no cover - numba is installed with xmulti
    njit = None

import numpy as np

__all__ = ["AVAILABLE", "KERNEL_DTYPES", "kernel"]

#: real dtypes (native byte order) the fused kernels are compiled for; others take the array code
KERNEL_DTYPES = frozenset(np.dtype(t) for t in (
    np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64
))

#: numba could be imported.
AVAILABLE = njit is not None


def kernel(func: Any = None, **options: Any) -> Any:
    """Compile ``func`` with numba: no GIL, cached on disk, numpy's error model.

    Used as ``@kernel`` or ``@kernel(fastmath=...)``. Without numba the function is returned
    as it is (the callers then use their array code, see ``AVAILABLE``).
    """
    if func is None:
        return lambda f: kernel(f, **options)
    if njit is None:  # pragma: no cover - numba is installed with xmulti
        return func
    # numpy error model: a division by zero gives inf/nan instead of raising (and the loops
    # vectorise); nogil: threads run the kernels concurrently
    try:
        return njit(nogil=True, cache=True, error_model="numpy", **options)(func)
    except RuntimeError:  # pragma: no cover - no writable cache directory: compile per process
        return njit(nogil=True, error_model="numpy", **options)(func)
