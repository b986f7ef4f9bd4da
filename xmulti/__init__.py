"""xmulti: simultaneous X-ray fluorescence + ptychography microscopy.

The public API is imported lazily so ``import xmulti`` stays fast; heavy libraries (dask, xarray,
h5py, xraylib, scipy) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "open_scan": "xmulti.io.scan",
    "validate_scan": "xmulti.io.scan",
    "simulate_scan": "xmulti.simulate",
    "XmultiError": "xmulti.errors",
    "InvalidScanError": "xmulti.errors",
    "InvalidInputError": "xmulti.errors",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'xmulti' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
