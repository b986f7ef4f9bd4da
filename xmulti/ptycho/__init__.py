"""Ptychographic reconstruction: forward model, rPIE/ePIE and LSQ-ML engines, probe modes,
position correction, and the labelled operation :func:`reconstruct`.

Kernels (everything but :mod:`xmulti.ptycho.reconstruct`) take plain numpy (or cupy) arrays:

- ``fft``: in-place complex64 FFTs (scipy.fft workers / cupy), array-module helpers;
- ``shift``: subpixel Fourier shifts (skipped when positions are integral);
- ``forward``: object grid, windows, patches, far-field model;
- ``data``: measured frames validated and converted to engine amplitudes (mask, saturation);
- ``probe``, ``probe_search``: probe guess from the data, power, mixed-state modes;
- ``state``: :class:`ReconState` (object, probe, positions) and :class:`EngineOptions`;
- ``batch``, ``fourier``, ``updates``: the shared per-batch pipeline;
- ``rpie``, ``lsqml``: the engines' updates; ``positions``: position correction;
- ``engine``: :func:`run_engine`, the epoch loop (any subset of positions / object sub-array).

Small simulated ptychography problems for tests: :func:`xmulti.simulate.optics.make_problem`.
"""

from __future__ import annotations

from .data import Frames, prepare_frames
from .engine import ENGINES, run_engine
from .fft import FFT2, get_xp
from .forward import far_field, object_grid, window_corners
from .state import EngineOptions, ReconState

__all__ = [
    "ENGINES",
    "EngineOptions",
    "FFT2",
    "Frames",
    "ReconState",
    "far_field",
    "get_xp",
    "object_grid",
    "prepare_frames",
    "reconstruct",
    "run_engine",
    "window_corners",
]


def __getattr__(name: str):
    # the labelled op imports xarray: load it only when asked for
    if name == "reconstruct":
        from .reconstruct import reconstruct

        return reconstruct
    raise AttributeError(f"module 'xmulti.ptycho' has no attribute {name!r}")
