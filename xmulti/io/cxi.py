"""CXI files (Coherent X-ray Imaging data bank format) for ptychography: import and export.

Paths used (SI units, energy in joules; Maia et al., "The Coherent X-ray Imaging Data Bank",
Nature Methods 9, 854 (2012); CXI file format 1.5)::

    /cxi_version                                   150
    /entry_1/data_1/data                           (N, H, W) frames
    /entry_1/data_1/translation                    (N, 3) m, order (x, y, z)
    /entry_1/instrument_1/source_1/energy          J
    /entry_1/instrument_1/source_1/probe           optional initial probe (complex)
    /entry_1/instrument_1/detector_1/distance      m
    /entry_1/instrument_1/detector_1/{x,y}_pixel_size   m
    /entry_1/instrument_1/detector_1/mask          optional, nonzero = bad pixel

Translations here are the beam-centre positions on the sample in the stage frame (our
``position_x``, ``position_y``), written in metres with z = 0; reading inverts exactly.
Frames are stored as recorded (zero frequency at the frame centre), the convention of
xmulti's layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InvalidScanError
from ..physics import wavelength_m
from .layout import PtychoData

__all__ = ["read_cxi", "write_cxi", "export_cxi"]

_KEV_TO_J = 1.602176634e-16  # 1 keV in joules (exact, SI 2019)


def _scalar(f, path: Path, name: str) -> float:
    if name not in f:
        raise InvalidScanError(path, "/" + name, "missing dataset required by the CXI reader")
    return float(np.asarray(f[name][()]).ravel()[0])


def read_cxi(path: str | os.PathLike) -> PtychoData:
    """Read ptychography frames, positions and geometry from a CXI file.

    Parameters
    ----------
    path : path-like
        The ``.cxi`` file.

    Returns
    -------
    xmulti.io.layout.PtychoData
        Frames as stored, positions (y, x) in um, energy in keV, geometry in m, mask (True
        marks a bad pixel) and initial probe when present: what a combined-layout scan's
        ``/ptychography`` group holds.

    Raises
    ------
    InvalidScanError
        Missing datasets, non-square pixels, or translations not matching the frames.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise InvalidScanError(path, "/", f"cannot open CXI file: {exc}") from None
    with f:
        if "entry_1/data_1/data" not in f:
            raise InvalidScanError(
                path, "/entry_1/data_1/data", "missing dataset: not a CXI ptychography file"
            )
        frames = f["entry_1/data_1/data"][()]
        if frames.ndim != 3:
            raise InvalidScanError(
                path, "/entry_1/data_1/data", f"expected (N, H, W), got {frames.shape}"
            )
        tr_name = "entry_1/data_1/translation"
        if tr_name not in f:
            tr_name = "entry_1/sample_1/geometry_1/translation"
        if tr_name not in f:
            raise InvalidScanError(path, "/entry_1/data_1/translation", "missing dataset")
        translation = np.asarray(f[tr_name][()], dtype=np.float64)
        if (
            translation.ndim != 2
            or translation.shape[0] != frames.shape[0]
            or translation.shape[1] < 2
        ):
            raise InvalidScanError(
                path,
                "/" + tr_name,
                f"shape {translation.shape} does not match {frames.shape[0]} frames",
            )
        det = "entry_1/instrument_1/detector_1/"
        energy_J = _scalar(f, path, "entry_1/instrument_1/source_1/energy")
        distance = _scalar(f, path, det + "distance")
        px = _scalar(f, path, det + "x_pixel_size")
        py = _scalar(f, path, det + "y_pixel_size") if det + "y_pixel_size" in f else px
        if not np.isclose(px, py, rtol=1e-6):
            raise InvalidScanError(
                path, "/" + det + "y_pixel_size", f"non-square pixels ({px} x {py} m)"
            )
        mask = f[det + "mask"][()] != 0 if det + "mask" in f else None
        probe_name = "entry_1/instrument_1/source_1/probe"
        probe = f[probe_name][()] if probe_name in f else None
    return PtychoData(
        diffraction=frames,
        positions_um=np.stack([translation[:, 1], translation[:, 0]], axis=1) * 1e6,
        energy_keV=energy_J / _KEV_TO_J,
        detector_distance_m=distance,
        detector_pixel_size_m=px,
        mask=mask,
        probe=probe,
    )


def write_cxi(path: str | os.PathLike, data: PtychoData, overwrite: bool = False) -> Path:
    """Write ptychography data as a CXI file readable by other ptychography codes.

    Parameters
    ----------
    path : path-like
        Output ``.cxi`` file, written under a temporary name and renamed when complete.
    data : xmulti.io.layout.PtychoData
        Frames, positions (um), energy (keV), geometry (m), optional mask and probe.
    overwrite : bool
        Replace an existing file.
    """
    import tempfile

    import h5py
    import hdf5plugin

    from ..errors import InvalidInputError

    path = Path(path)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path}: exists; pass overwrite=True to replace it")
    positions = np.asarray(data.positions_um, dtype=np.float64)
    frames = np.asarray(data.diffraction)
    if positions.shape != (frames.shape[0], 2):
        raise InvalidInputError(
            f"positions shape {positions.shape} does not match {frames.shape[0]} frames"
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=150)
            entry = f.create_group("entry_1")
            g = entry.create_group("data_1")
            g.create_dataset(
                "data",
                data=frames,
                chunks=(1, *frames.shape[1:]),
                **hdf5plugin.Bitshuffle(cname="lz4"),
            )
            translation = np.zeros((frames.shape[0], 3))
            translation[:, 0] = positions[:, 1] * 1e-6
            translation[:, 1] = positions[:, 0] * 1e-6
            g.create_dataset("translation", data=translation)
            source = entry.create_group("instrument_1/source_1")
            source.create_dataset("energy", data=float(data.energy_keV) * _KEV_TO_J)
            source.create_dataset("wavelength", data=float(wavelength_m(data.energy_keV)))
            if data.probe is not None:
                source.create_dataset("probe", data=np.asarray(data.probe))
            det = entry.create_group("instrument_1/detector_1")
            det.create_dataset("distance", data=float(data.detector_distance_m))
            det.create_dataset("x_pixel_size", data=float(data.detector_pixel_size_m))
            det.create_dataset("y_pixel_size", data=float(data.detector_pixel_size_m))
            if data.mask is not None:
                det.create_dataset("mask", data=np.asarray(data.mask).astype(np.uint32))
            det["data"] = g["data"]  # CXI convention: the detector also links its data
            geometry = entry.create_group("sample_1/geometry_1")
            geometry["translation"] = g["translation"]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def export_cxi(
    scan_path: str | os.PathLike, cxi_path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Export the ptychography part of a combined-layout scan file to CXI.

    Parameters
    ----------
    scan_path : path-like
        A file in xmulti's combined layout with a ``/ptychography`` group.
    cxi_path : path-like
        The CXI file to write.
    overwrite : bool
        Replace an existing output.
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Bitshuffle/LZ4 filter for reading)

    scan_path = Path(scan_path)
    try:
        f = h5py.File(scan_path, "r", locking=False)
    except OSError as exc:
        raise InvalidScanError(scan_path, "/", f"cannot open scan file: {exc}") from None
    with f:
        if "ptychography" not in f:
            raise InvalidScanError(
                scan_path, "/ptychography", "missing group: nothing to export to CXI"
            )
        g = f["ptychography"]
        for name in ("diffraction", "positions"):
            if name not in g:
                raise InvalidScanError(scan_path, f"/ptychography/{name}", "missing dataset")
        for name in ("energy_keV", "detector_distance_m", "detector_pixel_size_m"):
            if name not in g.attrs:
                raise InvalidScanError(scan_path, f"/ptychography@{name}", "missing attribute")
        data = PtychoData(
            diffraction=g["diffraction"][()],
            positions_um=g["positions"][()],
            energy_keV=float(g.attrs["energy_keV"]),
            detector_distance_m=float(g.attrs["detector_distance_m"]),
            detector_pixel_size_m=float(g.attrs["detector_pixel_size_m"]),
            mask=g["mask"][()] != 0 if "mask" in g else None,
            probe=g["probe"][()] if "probe" in g else None,
        )
    return write_cxi(cxi_path, data, overwrite=overwrite)

