"""Write files in the combined-scan HDF5 layout (``schemas/combined_scan.schema.json``).

Used by the simulator and the format converters. Files are written to a temporary name beside
the target and renamed once complete, so a crash never leaves a half-written file that looks
complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

__all__ = ["XRFData", "PtychoData", "ReconstructedData", "write_scan"]

LAYOUT_VERSION = 1


@dataclass
class XRFData:
    """Fluorescence part of a scan, ready to write.

    Attributes
    ----------
    spectra : ndarray (Npos, Nch)
        Counts per channel.
    positions_um : ndarray (Npos, 2)
        Beam-centre positions (y, x) in um, stage frame.
    energy_keV : ndarray (Nch,), optional
        Channel energies (keV). Alternatively give ``calibration_keV``.
    calibration_keV : tuple (offset, gain[, quadratic]), optional
        Energy calibration ``E = offset + gain * ch + quadratic * ch^2`` (keV).
    i0, live_time_s, real_time_s : ndarray (Npos,), optional
        Incident-flux monitor counts, detector live and real time (s).
    elemental_maps : dict of str to ndarray (Ny, Nx)
        Maps on the scan grid, one per element symbol.
    """

    spectra: np.ndarray
    positions_um: np.ndarray
    energy_keV: np.ndarray | None = None
    calibration_keV: tuple[float, ...] | None = None
    i0: np.ndarray | None = None
    live_time_s: np.ndarray | None = None
    real_time_s: np.ndarray | None = None
    elemental_maps: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class PtychoData:
    """Ptychography part of a scan, ready to write.

    Attributes
    ----------
    diffraction : ndarray (Npos, Ndy, Ndx)
        Far-field intensities (counts), zero frequency at the frame centre.
    positions_um : ndarray (Npos, 2)
        Beam-centre positions (y, x) in um. When equal to the XRF positions the dataset is
        written once and linked.
    energy_keV, detector_distance_m, detector_pixel_size_m : float
        Photon energy (keV), sample-detector distance (m), detector pixel (m).
    mask : ndarray (Ndy, Ndx), optional
        Nonzero marks a bad pixel.
    probe : ndarray (Npy, Npx) or (modes, Npy, Npx), optional
        Initial probe on the object grid (complex).
    """

    diffraction: np.ndarray
    positions_um: np.ndarray
    energy_keV: float
    detector_distance_m: float
    detector_pixel_size_m: float
    mask: np.ndarray | None = None
    probe: np.ndarray | None = None

    @property
    def wavelength_m(self) -> float:
        """Wavelength (m) of ``energy_keV``."""
        from ..physics import wavelength_m

        return float(wavelength_m(self.energy_keV))


@dataclass
class ReconstructedData:
    """A phase/amplitude reconstruction on the object grid.

    ``origin_um`` is the stage position (y, x) of the centre of pixel (0, 0).
    """

    phase: np.ndarray
    amplitude: np.ndarray
    pixel_size_nm: float
    origin_um: tuple[float, float] | None = None


def _compression(kind: str) -> dict:
    """HDF5 filter options: Bitshuffle+LZ4 for counts (as Eiger writes), gzip otherwise."""
    if kind == "counts":
        import hdf5plugin

        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    return {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def _positions_chunk(n_positions: int, bytes_per_position: int, target_bytes: int = 4 << 20) -> int:
    """Positions per HDF5 chunk: whole spectra/frames, about ``target_bytes`` per chunk."""
    return int(max(1, min(n_positions, target_bytes // max(1, bytes_per_position))))


def write_scan(
    path: str | os.PathLike,
    *,
    incident_energy_keV: float | None = None,
    scan_shape: tuple[int, int] | None = None,
    xrf: XRFData | None = None,
    ptychography: PtychoData | None = None,
    reconstructed: ReconstructedData | None = None,
    extra_groups: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    attrs: Mapping[str, object] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a combined-scan HDF5 file.

    Parameters
    ----------
    path : path-like
        Output file. Written under a temporary name and renamed when complete.
    incident_energy_keV : float, optional
        Incident photon energy (keV); required with ``xrf``.
    scan_shape : (ny, nx), optional
        Raster shape; positions are then row by row (y slow, x fast).
    xrf, ptychography, reconstructed : optional
        The parts of the scan.
    extra_groups : mapping, optional
        Further groups (e.g. ``{"truth": {...}}``): group name to a mapping of dataset name to
        an array or a ``(dims, array)`` tuple (dims are stored in a ``dims`` attribute that
        :func:`xmulti.open_scan` uses); a key ``"@attrs"`` holds a dict of attributes.
    attrs : mapping, optional
        Extra root attributes.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The written file.
    """
    import h5py

    path = Path(path)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path}: exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if xrf is not None and incident_energy_keV is None:
        raise InvalidInputError("incident_energy_keV is required when writing /xrf")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; results follow the user's umask
    try:
        with h5py.File(tmp_name, "w") as f:
            f.attrs["layout_version"] = LAYOUT_VERSION
            f.attrs["creator"] = "xmulti"
            if incident_energy_keV is not None:
                f.attrs["incident_energy_keV"] = float(incident_energy_keV)
            if scan_shape is not None:
                f.attrs["scan_shape"] = np.asarray(scan_shape, dtype=np.int64)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            xrf_positions = None
            if xrf is not None:
                xrf_positions = _write_xrf(f, xrf)
            if ptychography is not None:
                _write_ptycho(f, ptychography, xrf_positions)
            if reconstructed is not None:
                _write_reconstructed(f, reconstructed)
            for group_name, content in (extra_groups or {}).items():
                _write_plain_group(f.require_group(group_name), content)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _write_xrf(f, xrf: XRFData) -> np.ndarray:
    spectra = np.asarray(xrf.spectra)
    n_pos, n_ch = spectra.shape
    g = f.create_group("xrf")
    chunk = _positions_chunk(n_pos, n_ch * spectra.dtype.itemsize)
    g.create_dataset("spectra", data=spectra, chunks=(chunk, n_ch), **_compression("counts"))
    g["spectra"].attrs["units"] = "counts"
    positions = np.asarray(xrf.positions_um, dtype=np.float64)
    g.create_dataset("positions", data=positions)
    g["positions"].attrs["units"] = "um"
    if xrf.energy_keV is not None:
        g.create_dataset("energy", data=np.asarray(xrf.energy_keV, dtype=np.float64))
        g["energy"].attrs["units"] = "keV"
    if xrf.calibration_keV is not None:
        names = ("energy_offset_keV", "energy_gain_keV", "energy_quadratic_keV")
        for name, value in zip(names, xrf.calibration_keV, strict=False):
            g.attrs[name] = float(value)
    for name, values, units in (
        ("i0", xrf.i0, "counts"),
        ("live_time", xrf.live_time_s, "s"),
        ("real_time", xrf.real_time_s, "s"),
    ):
        if values is not None:
            g.create_dataset(name, data=np.asarray(values))
            g[name].attrs["units"] = units
    if xrf.elemental_maps:
        maps = g.create_group("elemental_maps")
        for element, image in xrf.elemental_maps.items():
            maps.create_dataset(element, data=np.asarray(image))
    return positions


def _write_ptycho(f, data: PtychoData, xrf_positions: np.ndarray | None) -> None:
    frames = np.asarray(data.diffraction)
    n_pos = frames.shape[0]
    g = f.create_group("ptychography")
    g.attrs["energy_keV"] = float(data.energy_keV)
    g.attrs["detector_distance_m"] = float(data.detector_distance_m)
    g.attrs["detector_pixel_size_m"] = float(data.detector_pixel_size_m)
    chunk = _positions_chunk(n_pos, frames[0].nbytes)
    g.create_dataset(
        "diffraction", data=frames, chunks=(chunk, *frames.shape[1:]), **_compression("counts")
    )
    g["diffraction"].attrs["units"] = "counts"
    positions = np.asarray(data.positions_um, dtype=np.float64)
    if xrf_positions is not None and np.array_equal(positions, xrf_positions):
        g["positions"] = f["xrf/positions"]  # hard link: one stage record for both modalities
    else:
        g.create_dataset("positions", data=positions)
        g["positions"].attrs["units"] = "um"
    if data.mask is not None:
        g.create_dataset("mask", data=np.asarray(data.mask).astype(np.uint8))
    if data.probe is not None:
        g.create_dataset("probe", data=np.asarray(data.probe, dtype=np.complex64))


def _write_reconstructed(f, rec: ReconstructedData) -> None:
    g = f.create_group("reconstructed")
    g.create_dataset("phase", data=np.asarray(rec.phase, dtype=np.float32))
    g["phase"].attrs["units"] = "rad"
    g.create_dataset("amplitude", data=np.asarray(rec.amplitude, dtype=np.float32))
    g.create_dataset("pixel_size", data=float(rec.pixel_size_nm))
    g["pixel_size"].attrs["units"] = "nm"
    if rec.origin_um is not None:
        g.create_dataset("origin", data=np.asarray(rec.origin_um, dtype=np.float64))
        g["origin"].attrs["units"] = "um"


def _write_plain_group(group, content: Mapping[str, object]) -> None:
    for name, value in content.items():
        if name == "@attrs":
            for key, attr in dict(value).items():
                group.attrs[key] = attr
        elif isinstance(value, Mapping):
            _write_plain_group(group.require_group(name), value)
        else:
            dims = None
            if isinstance(value, tuple):  # (dims, array): dims recorded for open_scan
                dims, value = value
            array = np.asarray(value)
            options = _compression("float") if array.ndim >= 2 else {}
            dset = group.create_dataset(name, data=array, **options)
            if dims is not None:
                dset.attrs["dims"] = np.array(dims, dtype="S")
