"""Labelled operation: reconstruct the ptychography part of a scan into a ``/reconstructed``-
shaped :class:`xarray.Dataset`.

This layer only converts between xarray and the numpy kernels of :mod:`xmulti.ptycho`; it reads
no file. The diffraction frames are computed (loaded) in full: a single-node reconstruction
needs them all every epoch (the tile-parallel variant splits them by position first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .data import prepare_frames
from .engine import ENGINES, run_engine
from .fft import FFT2
from .forward import accumulate_patches, object_grid, window_corners
from .probe import add_modes, fit_probe_to_frame, fourier_support, scale_probe_power
from .probe_search import search_probe
from .state import EngineOptions, ReconState

__all__ = ["reconstruct", "normalize_ambiguities"]


def _ptycho_dataset(scan: Any):
    import xarray as xr

    if isinstance(scan, xr.Dataset):
        ds = scan
    elif hasattr(scan, "children") and "ptychography" in scan.children:
        ds = scan["ptychography"].to_dataset()
    elif hasattr(scan, "to_dataset"):
        ds = scan.to_dataset()
    else:
        raise InvalidInputError(
            f"scan must be the DataTree from xmulti.open_scan or its /ptychography Dataset, got "
            f"{type(scan).__name__}"
        )
    missing = [v for v in ("diffraction", "position_y", "position_x") if v not in ds.variables]
    if missing:
        raise InvalidInputError(f"scan has no ptychography data: missing {', '.join(missing)}")
    if "object_pixel_size_m" not in ds.attrs:
        raise InvalidInputError("ptychography data lacks the 'object_pixel_size_m' attribute")
    return ds


def illumination_map(probe: np.ndarray, positions_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``sum_j sum_k |P_k|^2`` placed at every window (integer corners): (Hy, Hx) float32."""
    n = probe.shape[-1]
    corners, _ = window_corners(positions_px, n)
    one = (np.abs(probe) ** 2).sum(axis=0).astype(np.float32)
    out = np.zeros(shape, np.float32)
    accumulate_patches(out, np.broadcast_to(one, (len(corners), n, n)), corners)
    return out


def normalize_ambiguities(
    obj: np.ndarray, probe: np.ndarray, illumination: np.ndarray, percentile: float = 98.0
) -> tuple[np.ndarray, np.ndarray]:
    """Fix the global phase and amplitude scale that ptychography leaves free.

    On the well-illuminated region (illumination >= 10 % of the maximum), the object is scaled
    and rotated so the ``percentile`` of its phase is 0 and of its amplitude is 1: the least
    dense parts (vacuum, ice) then transmit fully with zero phase, so material has negative
    phase. The probe gets the inverse factor, so exit waves are unchanged.
    """
    region = illumination >= 0.1 * illumination.max()
    values = obj[region]
    phase0 = np.percentile(np.angle(values * np.exp(-1j * np.angle(np.mean(values)))), percentile)
    phase0 += np.angle(np.mean(values))
    amp0 = float(np.percentile(np.abs(values), percentile))
    factor = np.complex64(np.exp(-1j * phase0) / max(amp0, 1e-30))
    return obj * factor, probe / factor


def scan_positions_um(ds, diffraction_shape) -> np.ndarray:
    """Beam-centre positions (M, 2) in um, checked against the frames and for NaN/inf."""
    positions_um = np.stack(
        [np.asarray(ds["position_y"].values, float), np.asarray(ds["position_x"].values, float)], 1
    )
    if len(diffraction_shape) != 3 or len(positions_um) != diffraction_shape[0]:
        raise InvalidInputError(
            f"{len(positions_um)} positions for diffraction of shape {tuple(diffraction_shape)}"
        )
    if not np.isfinite(positions_um).all():
        bad = np.flatnonzero(~np.isfinite(positions_um).all(axis=1))
        raise InvalidInputError(
            f"positions contain NaN or inf ({bad.size} position(s), first index {int(bad[0])})"
        )
    return positions_um


def object_setup(
    ds, positions_um, n: int, options: EngineOptions | None, noise: str | None, position_correction: bool
):
    """Object pixel (um), engine options, grid margin, origin (um), shape and fractional positions."""
    dx_um = float(ds.attrs["object_pixel_size_m"]) * 1e6
    if not dx_um > 0:
        raise InvalidInputError(f"object pixel size must be positive, got {dx_um} um")
    opts = options or EngineOptions()
    noise = noise if noise is not None else opts.noise
    opts = EngineOptions(**{**opts.__dict__, "noise": noise, "position_correction": position_correction})
    # room for position corrections around the scanned area
    margin = 2 + (int(np.ceil(8 * opts.max_shift_px)) + 8 if position_correction else 0)
    origin, shape = object_grid(positions_um, dx_um, n, margin)
    return dx_um, opts, margin, origin, shape, (positions_um - origin) / dx_um


def reconstruct(
    scan: Any,
    engine: str = "lsqml",
    iterations: int = 100,
    probe_modes: int = 1,
    position_correction: bool = False,
    *,
    probe: np.ndarray | None = None,
    probe_diameter_um: float | None = None,
    probe_support: bool = True,
    noise: str | None = None,
    saturation: float | None = None,
    clip_negative: bool = False,
    options: EngineOptions | None = None,
    workers: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    tiles: tuple[int, int] | None = None,
    halo_um: float | None = None,
    sync_every: int | None = None,
    client: Any = None,
    lazy: bool = False,
):
    """Reconstruct object and probe from the ptychography data of a scan.

    Parameters
    ----------
    scan : xarray.DataTree or xarray.Dataset
        From :func:`xmulti.open_scan`, or its ``/ptychography`` Dataset: ``diffraction
        (position, det_y, det_x)`` counts with zero frequency at the frame centre, coords
        ``position_y``, ``position_x`` (um, beam centre, stage frame), attr
        ``object_pixel_size_m``; optional ``mask`` (True = bad pixel) and ``probe``.
    engine : {"lsqml", "rpie", "epie"}
        LSQ-ML (Odstrcil et al. 2018) or rPIE/ePIE (Maiden et al. 2017 / 2009).
    iterations : int
        Epochs.
    probe_modes : int
        Incoherent probe modes (mixed states).
    position_correction : bool
        Refine the positions (recovers errors of several pixels).
    probe : ndarray (N, N) or (K, N, N), optional
        Initial probe; default the scan's ``probe``. Its power is always set from the measured
        counts.
    probe_diameter_um : float, optional
        Without a probe: the nominal beam footprint (e.g. from the zone plate's defocus). The
        start is then the aperture implied by the mean pattern with the defocus giving that
        footprint (the sign of the defocus chosen by a short trial). Without it, a few
        footprints between 0.15 and 0.75 of the frame are tried (see
        :func:`xmulti.ptycho.probe_search.search_probe`); that search is rough, so give the
        footprint when it is known.
    probe_support : bool
        Confine the probe's spectrum to the aperture seen in the mean pattern (zone-plate or
        mirror optics); turn off for probes without a sharp far-field aperture.
    noise : {"poisson", "gaussian"}, optional
        Likelihood of the exit-wave update: Poisson or Gaussian (amplitude projection, biased
        at low counts: weak phase objects come out with a few % too little contrast). Default:
        Poisson for LSQ-ML, Gaussian for rPIE/ePIE.
    saturation : float, optional
        Counts at or above this level are left free (like masked pixels).
    clip_negative : bool
        Set negative counts to zero instead of raising.
    options : EngineOptions, optional
        Further engine settings; ``noise`` and ``position_correction`` above override it.
    workers : int, optional
        FFT threads (default: all CPUs of the process).
    progress : callable, optional
        ``progress(epoch, iterations, error)`` after each epoch (each round when tiled).
    tiles : (int, int), optional
        Tile-parallel reconstruction on a Dask cluster with this tile grid
        (:mod:`xmulti.ptycho.tiled`); None or (1, 1) reconstructs in this process.
    halo_um : float, optional
        Tiles: halo width (um); default the probe radius or two scan steps.
    sync_every : int, optional
        Tiles: epochs between probe/overlap synchronisation; None = independent tiles.
    client : dask.distributed.Client, optional
        Tiles: where they run; default a local process cluster for the call.
    lazy : bool
        Tiles on a given ``client``: ``phase``, ``amplitude`` and ``illumination`` stay Dask
        arrays blended block by block on the workers, so this process never holds the image;
        compute or write them (e.g. :func:`xmulti.io.results.write_group`) while the client is
        open.

    Returns
    -------
    xarray.Dataset
        ``phase`` (rad) and ``amplitude`` on ``(y, x)`` with pixel-centre coordinates in um in
        the stage frame; ``illumination (y, x)``; ``probe`` ``(probe_y, probe_x)`` or
        ``(probe_mode, probe_y, probe_x)`` complex64; ``pixel_size`` (nm);
        ``error (iteration)`` (normalised detector amplitude error per epoch); the positions
        used, ``corrected_position_y/x (position)`` um, with the nominal ones as coordinates.
        The global phase and amplitude scale are fixed as in :func:`normalize_ambiguities`.
    """

    ds = _ptycho_dataset(scan)
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}")
    if tiles is not None and tuple(tiles) != (1, 1):
        from .tiled import reconstruct_tiled

        return reconstruct_tiled(
            ds, engine, iterations, probe_modes, position_correction, tiles=tuple(tiles), halo_um=halo_um,
            sync_every=sync_every, client=client, probe=probe, probe_diameter_um=probe_diameter_um,
            noise=noise, saturation=saturation, clip_negative=clip_negative, options=options,
            progress=progress, probe_support=probe_support, lazy=lazy and client is not None,
        )
    diffraction = np.asarray(ds["diffraction"].values)
    positions_um = scan_positions_um(ds, diffraction.shape)
    mask = np.asarray(ds["mask"].values) if "mask" in ds else None
    frames = prepare_frames(diffraction, mask, saturation, clip_negative)
    n = frames.shape[-1]
    dx_um, opts, margin, origin, shape, positions_px = object_setup(
        ds, positions_um, n, options, noise, position_correction
    )

    if probe is None and "probe" in ds:
        probe = np.asarray(ds["probe"].values)
    fft = FFT2(np, workers)
    if probe is not None:
        start = scale_probe_power(fit_probe_to_frame(probe, n), frames.mean_counts)
    else:
        if probe_diameter_um is not None:
            if not probe_diameter_um > 0:
                raise InvalidInputError(f"probe_diameter_um must be positive, got {probe_diameter_um}")
            d = probe_diameter_um / dx_um
            diameters = (d, -d)
        else:
            diameters = None
        start, _ = search_probe(frames, positions_px, shape, diameters, fft=fft)
    start = add_modes(start, probe_modes)

    support = None
    if probe_support:
        amp = np.where(frames.amplitude >= 0, frames.amplitude, 0)
        support = fourier_support(np.fft.fftshift((amp[frames.usable] ** 2).mean(axis=0)))
    state = ReconState(
        np.ones(shape, np.complex64), start.astype(np.complex64), positions_px.copy(),
        probe_support=support,
    )

    def _callback(s: ReconState) -> None:
        if progress is not None:
            progress(s.epoch, iterations, s.errors[-1])

    if opts.noise is None:
        opts.noise = "poisson" if engine == "lsqml" else "gaussian"
    run_engine(state, frames, engine, iterations, opts, fft, _callback)

    return result_dataset(
        state.obj, state.probe, state.positions_px, state.errors, origin, dx_um, positions_um,
        {
            "engine": engine,
            "iterations": int(iterations),
            "probe_modes": int(probe_modes),
            "noise": opts.noise,
            "position_correction": bool(position_correction),
            "skipped_frames": int((~frames.usable).sum()),
        },
    )


def result_dataset(obj, probe, positions_px, errors, origin, dx_um: float, positions_um, attrs: dict):
    """The ``/reconstructed``-shaped Dataset of a finished reconstruction (ambiguities fixed by
    :func:`normalize_ambiguities`; coordinates in um, pixel centres, stage frame)."""
    illum = illumination_map(probe, positions_px, obj.shape)
    obj, probe_out = normalize_ambiguities(obj, probe, illum)
    return assemble_result(obj, illum / illum.max(), probe_out, positions_px, errors, origin, dx_um,
                           positions_um, attrs)


def assemble_result(obj, illumination, probe, positions_px, errors, origin, dx_um: float, positions_um,
                    attrs: dict):
    """The ``/reconstructed``-shaped Dataset from a normalised object and probe.

    ``obj`` (complex) and ``illumination`` (relative, float) are numpy arrays or Dask arrays
    (a stitched object blended on the workers); the images keep their kind. Coordinates are
    pixel centres in um in the stage frame: ``origin + index * dx_um``.
    """
    import xarray as xr

    shape = obj.shape
    y = origin[0] + dx_um * np.arange(shape[0])
    x = origin[1] + dx_um * np.arange(shape[1])
    corrected = origin + positions_px * dx_um
    if probe.shape[0] == 1:
        probe_var = (("probe_y", "probe_x"), probe[0], {"units": "sqrt(photons)"})
    else:
        probe_var = (("probe_mode", "probe_y", "probe_x"), probe, {"units": "sqrt(photons)"})
    return xr.Dataset(
        {
            # np.angle / np.abs dispatch to Dask for Dask arrays
            "phase": (("y", "x"), np.angle(obj).astype(np.float32), {"units": "rad"}),
            "amplitude": (("y", "x"), np.abs(obj).astype(np.float32), {"units": "1"}),
            "illumination": (("y", "x"), illumination, {"units": "1", "long_name": "relative illumination"}),
            "probe": probe_var,
            "pixel_size": ((), dx_um * 1e3, {"units": "nm"}),
            "error": (("iteration",), np.asarray(errors, np.float64), {"units": "1"}),
            "corrected_position_y": (("position",), corrected[:, 0], {"units": "um"}),
            "corrected_position_x": (("position",), corrected[:, 1], {"units": "um"}),
        },
        coords={
            "y": ("y", y, {"units": "um"}),
            "x": ("x", x, {"units": "um"}),
            "position_y": ("position", positions_um[:, 0], {"units": "um"}),
            "position_x": ("position", positions_um[:, 1], {"units": "um"}),
        },
        attrs={**attrs, "pixel_size_nm": dx_um * 1e3, "origin_um": [float(origin[0]), float(origin[1])]},
    )
