"""APS 2-ID-E fly-scan raw fluorescence files (``flyXRF/<scan>_<det>__<k>.h5``).

Each file holds, under ``/MAPS_RAW``, one spectrum per pixel for each element of a 4-element
silicon drift detector (``data_a`` .. ``data_d``, shape (channels, rows, cols)) and per-pixel
detector clocks and counters of shape (elements, rows, cols): ``livetime``, ``realtime`` (s),
``inputcounts`` and ``ouputcounts`` (sic; counts, not rates). A scan is stored in one file or in
several files of consecutive row blocks (``__0``, ``__1``, ...).

Dead time: a pulse processor's fast trigger channel counts every incident photon while the
slow (energy) channel is live; the input count rate is ``ICR = input_counts / live_time`` and
the output count rate ``OCR = output_counts / real_time``. The spectrum scaled by ``ICR / OCR``
estimates the counts a dead-time-free detector would record during the real time (Knoll,
*Radiation Detection and Measurement*, 4th ed., ch. 4; XIA, "Dead time and throughput of
digital x-ray spectrometers", application note).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidScanError

__all__ = [
    "FlyScanXRF",
    "read_flyscan_xrf",
    "find_flyscan_files",
    "dead_time_factor",
    "summed_spectra",
    "effective_live_time",
]

_ELEMENT_DATASETS = ("data_a", "data_b", "data_c", "data_d")
_COUNTERS = {
    "live_time_s": "livetime",
    "real_time_s": "realtime",
    "input_counts": "inputcounts",
    "output_counts": "ouputcounts",  # the beamline's spelling
}


@dataclass
class FlyScanXRF:
    """Raw fly-scan fluorescence of one scan.

    Attributes
    ----------
    files : list of Path
        The files read, in row order.
    spectra : ndarray (elements, rows, cols, channels)
        Counts per channel as recorded (int16 at 2-ID-E), position-major for whole-spectrum access.
    live_time_s, real_time_s : ndarray (elements, rows, cols)
        Live and real time of each detector element per pixel (s).
    input_counts, output_counts : ndarray (elements, rows, cols)
        Fast-channel (trigger) and processed event counts per pixel.
    """

    files: list[Path]
    spectra: np.ndarray
    live_time_s: np.ndarray
    real_time_s: np.ndarray
    input_counts: np.ndarray
    output_counts: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the map."""
        return self.spectra.shape[1], self.spectra.shape[2]

    @property
    def n_elements(self) -> int:
        """Number of detector elements."""
        return self.spectra.shape[0]

    @property
    def n_channels(self) -> int:
        """Channels per spectrum."""
        return self.spectra.shape[3]


def find_flyscan_files(mda_path: str | os.PathLike) -> list[Path]:
    """The flyXRF files of the fly scan recorded in ``mda_path``, as laid out at the beamline.

    Looks for ``<stem>_*__<k>.h5`` in ``flyXRF/`` beside the MDA's directory (``<dataset>/mda``
    and ``<dataset>/flyXRF``), then in ``flyXRF/`` inside it and in the MDA's own directory.

    Returns
    -------
    list of Path
        Sorted by block index ``k``; empty when none exist.
    """
    mda_path = Path(mda_path)
    stem = mda_path.stem
    pattern = re.compile(rf"^{re.escape(stem)}_.*__(\d+)\.h5$")
    for folder in (mda_path.parent.parent / "flyXRF", mda_path.parent / "flyXRF", mda_path.parent):
        if not folder.is_dir():
            continue
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
        if found:
            return [p for _, p in sorted(found)]
    return []


def _read_one(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise InvalidScanError(path, "/", f"cannot open fly-scan XRF file: {exc}") from None
    with f:
        if "MAPS_RAW" not in f:
            raise InvalidScanError(
                path, "/MAPS_RAW", "missing group: not a 2-ID-E fly-scan XRF file"
            )
        g = f["MAPS_RAW"]
        names = [n for n in _ELEMENT_DATASETS if n in g]
        if not names:
            raise InvalidScanError(
                path, "/MAPS_RAW/data_a", "missing dataset: no detector-element spectra"
            )
        spectra = []
        for name in names:
            data = g[name]
            if data.ndim != 3:
                raise InvalidScanError(
                    path,
                    f"/MAPS_RAW/{name}",
                    f"expected (channels, rows, cols), got shape {data.shape}",
                )
            values = data[()]
            if values.dtype == np.int16 and (values < 0).any():
                values = values.view(np.uint16)  # counts above 32767 wrap in int16 storage
            spectra.append(np.moveaxis(values, 0, -1))  # -> (rows, cols, channels)
        out = {"spectra": np.stack(spectra)}
        shape = out["spectra"].shape[:3]
        for key, name in _COUNTERS.items():
            if name not in g:
                raise InvalidScanError(path, f"/MAPS_RAW/{name}", "missing dataset")
            values = np.asarray(g[name][()], dtype=np.float64)
            if values.shape[1:] != shape[1:] or values.shape[0] < shape[0]:
                raise InvalidScanError(
                    path,
                    f"/MAPS_RAW/{name}",
                    f"shape {values.shape} does not match spectra {shape}",
                )
            out[key] = values[: shape[0]]
    return out


def read_flyscan_xrf(paths: str | os.PathLike | list[str | os.PathLike]) -> FlyScanXRF:
    """Read one scan's fly-scan XRF file(s), concatenating row blocks in the order given.

    Parameters
    ----------
    paths : path-like or list of path-like
        One file, or the row-block files of a scan in row order (see :func:`find_flyscan_files`).

    Returns
    -------
    FlyScanXRF
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files = [Path(p) for p in paths]
    if not files:
        raise InvalidScanError(None, "/MAPS_RAW", "no fly-scan XRF files given")
    parts = [_read_one(p) for p in files]
    ref = parts[0]["spectra"].shape
    for p, part in zip(files, parts, strict=True):
        shape = part["spectra"].shape
        if shape[0] != ref[0] or shape[2:] != ref[2:]:
            raise InvalidScanError(
                p, "/MAPS_RAW", f"spectra shape {shape} does not match the first file's {ref}"
            )
    joined = {key: np.concatenate([part[key] for part in parts], axis=1) for key in parts[0]}
    return FlyScanXRF(files=files, **joined)


def dead_time_factor(input_counts, output_counts, live_time_s, real_time_s, xp=np):
    """Dead-time correction factor ``ICR / OCR`` (kernel; any array module ``xp``).

    Parameters
    ----------
    input_counts, output_counts : array
        Fast-channel (trigger) and processed event counts.
    live_time_s, real_time_s : array
        Trigger live time and real time (s).
    xp : module
        numpy or cupy.

    Returns
    -------
    array
        ``(input_counts / live_time) / (output_counts / real_time)``, >= 1 for a physical
        detector; 1 where nothing was recorded (no output counts or zero times).
    """
    icr = xp.asarray(input_counts, dtype=xp.float64)
    ocr = xp.asarray(output_counts, dtype=xp.float64)
    live = xp.asarray(live_time_s, dtype=xp.float64)
    real = xp.asarray(real_time_s, dtype=xp.float64)
    valid = (icr > 0) & (ocr > 0) & (live > 0) & (real > 0)
    ratio = xp.where(valid, icr * real, 1.0) / xp.where(valid, ocr * live, 1.0)
    return xp.where(valid, ratio, 1.0)


def summed_spectra(
    fly: FlyScanXRF, elements: list[int] | None = None, dead_time_correct: bool = True
) -> np.ndarray:
    """Detector-element sum of the spectra, optionally dead-time corrected per element.

    Parameters
    ----------
    fly : FlyScanXRF
        The raw data.
    elements : list of int, optional
        Indices of the elements to sum (default: all).
    dead_time_correct : bool
        Scale each element's spectrum by its :func:`dead_time_factor` before summing.

    Returns
    -------
    ndarray (rows, cols, channels) float32
        Counts (dead-time corrected: counts over the real time).
    """
    idx = list(range(fly.n_elements)) if elements is None else list(elements)
    total = np.zeros(fly.spectra.shape[1:], dtype=np.float32)
    for e in idx:
        spectrum = fly.spectra[e].astype(np.float32)
        if dead_time_correct:
            factor = dead_time_factor(
                fly.input_counts[e], fly.output_counts[e], fly.live_time_s[e], fly.real_time_s[e]
            )
            spectrum *= factor[..., None].astype(np.float32)
        total += spectrum
    return total


def effective_live_time(real_time_s, correction, output_counts, xp=np):
    """Live time that makes ``counts * real_time / live_time`` the dead-time corrected counts.

    For a sum over detector elements with per-element factors ``f_e = ICR_e / OCR_e`` (see
    :func:`dead_time_factor`), the summed counts are corrected by the output-count-weighted
    mean factor ``F = sum_e(out_e f_e) / sum_e(out_e)``, so the effective live time is
    ``mean_e(real_time_e) / F``. ``F`` is floored at 1: at very low counts ICR/OCR can dip
    below 1 by chance, and a live time above the real time is unphysical.

    Parameters
    ----------
    real_time_s, correction, output_counts : array (elements, ...)
        Per-element real times (s), dead-time factors and output counts.
    xp : module
        numpy or cupy.

    Returns
    -------
    array (...)
        Effective live time (s).
    """
    real = xp.asarray(real_time_s, dtype=xp.float64)
    f = xp.asarray(correction, dtype=xp.float64)
    out = xp.asarray(output_counts, dtype=xp.float64)
    total = out.sum(axis=0)
    weighted = xp.where(total > 0, (out * f).sum(axis=0) / xp.where(total > 0, total, 1.0), 1.0)
    return real.mean(axis=0) / xp.maximum(weighted, 1.0)
