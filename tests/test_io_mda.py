"""MDA (EPICS saveData) reader against the real 2-ID-E files in ../shared/data/aps-2ide."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from shared_data import APS_2IDE  # noqa: E402

from xmulti.errors import InvalidScanError
from xmulti.io.mda import read_mda

DATA = APS_2IDE
FLY_MDA = DATA / "mda" / "2xfm_0011.mda"
AXO_MDA = DATA / "mda" / "axo_std.mda"

pytestmark = pytest.mark.skipif(not FLY_MDA.exists(), reason="shared 2-ID-E data not available")


def test_fly_scan_header_positioners_and_extra_pvs():
    mda = read_mda(FLY_MDA)
    assert mda.version == pytest.approx(1.3)
    assert mda.scan_number == 11
    assert mda.dimensions == (11, 11)
    outer = mda.dimension(0)
    y = outer.positioners["2xfm:m13.VAL"]
    assert outer.positioner_info["2xfm:m13.VAL"].description == "Sample Y"
    assert outer.positioner_info["2xfm:m13.VAL"].unit == "mm"
    # 11 rows from 3.25 to 3.75 mm: a 50 um step
    np.testing.assert_allclose(y, np.linspace(3.25, 3.75, 11), atol=1e-9)
    inner = mda.dimension(1)
    x = inner.positioners["2xfm:FLYuserCalc10.A"]
    assert x.shape == (11, 11)
    np.testing.assert_allclose(x, np.broadcast_to(np.linspace(-1.5, -1.0, 11), (11, 11)), atol=1e-9)
    # energy calibration and scaler names recorded once per scan
    assert mda.extra("dxpXMAP2xfm3:mca1.CALO") == pytest.approx(0.05)
    assert mda.extra("dxpXMAP2xfm3:mca1.CALS") == pytest.approx(0.0094)
    assert mda.extra("dxpXMAP2xfm3:mca2.CALO") == pytest.approx(0.0501)
    assert mda.extra("2xfm:scaler1.NM2").startswith("US Ion Cham.")
    assert mda.extra("2xfm:scaler1.NM3").startswith("DS Ion Cham.")
    assert mda.extra("2xfm:A1sens_unit.VAL") == "nA/V"
    assert mda.extra_pvs["dxpXMAP2xfm3:mca1.CALO"].description == "CAL_OFFSET:"


def test_fly_scan_clock_matches_the_xrf_real_time():
    """The MCS channel 1 counts a 25 MHz clock: its counts / 25 MHz must equal the XRF real time
    recorded independently by the XIA electronics (pixels after the first, whose dwell includes
    the acceleration)."""
    h5py = pytest.importorskip("h5py")
    mda = read_mda(FLY_MDA)
    clock = mda.dimension(1).detectors["2xfm:mcs:mca1.VAL"]
    with h5py.File(DATA / "flyXRF" / "2xfm_0011_2xfm3__0.h5", "r") as f:
        real = f["MAPS_RAW/realtime"][0]
    n_cols = real.shape[1]
    assert np.all(clock[:, n_cols:] == 0)  # the two junk columns at the end of each row
    np.testing.assert_allclose(clock[:, 1:n_cols] / 25e6, real[:, 1:], rtol=5e-3)


def test_step_scan_spectra_match_the_mca_regions_of_interest():
    """Rank-3 step scan: the spectra decoded from the innermost dimension, summed over ROI 3's
    channel range (R3LO..R3HI, extra PVs), equal the ROI counts the MCA recorded itself."""
    mda = read_mda(AXO_MDA)
    assert mda.dimensions == (11, 11, 2000)
    spectra = mda.dimension(2).detectors
    rois = mda.dimension(1).detectors
    for k in (1, 2, 3, 4):
        spectrum = spectra[f"dxpXMAP2xfm3:mca{k}.VAL"]
        assert spectrum.shape == (11, 11, 2000)
        assert np.all(spectrum >= 0) and np.all(spectrum == np.round(spectrum))
        lo = int(mda.extra(f"dxpXMAP2xfm3:mca{k}.R3LO"))
        hi = int(mda.extra(f"dxpXMAP2xfm3:mca{k}.R3HI"))
        np.testing.assert_array_equal(
            spectrum[:, :, lo : hi + 1].sum(axis=-1), rois[f"dxpXMAP2xfm3:mca{k}.R3"]
        )
    x = mda.dimension(1).positioners["2xfm:m24.VAL"]
    np.testing.assert_allclose(np.diff(x, axis=1), 0.1, atol=1e-9)  # 100 um steps in x
    # the readback of Sample Y recorded as a detector agrees with the commanded positions
    y = mda.dimension(0).positioners["2xfm:m13.VAL"]
    np.testing.assert_allclose(mda.dimension(0).detectors["2xfm:m13.RBV"], y, atol=1e-3)


def _copy(tmp_path: Path, data: bytes, name: str = "bad.mda") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("keep", [6, 200, 40_000, 112_000])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    data = FLY_MDA.read_bytes()[:keep]
    with pytest.raises(InvalidScanError, match="truncated") as info:
        read_mda(_copy(tmp_path, data))
    assert info.value.file.endswith("bad.mda")


def test_unknown_version_is_a_clear_error(tmp_path):
    data = bytearray(FLY_MDA.read_bytes())
    data[:4] = struct.pack(">f", 2.0)
    with pytest.raises(InvalidScanError, match=r"unsupported MDA \(saveData\) version 2"):
        read_mda(_copy(tmp_path, bytes(data)))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidScanError, match="cannot read MDA file"):
        read_mda(tmp_path / "nothing.mda")


def _xdr_string(text: str) -> bytes:
    """A saveData counted string: length, then (if nonzero) an XDR string."""
    raw = text.encode()
    if not raw:
        return struct.pack(">i", 0)
    return struct.pack(">ii", len(raw), len(raw)) + raw + b"\0" * (-len(raw) % 4)


def _write_rank1_mda(path: Path, npts: int, current: int, extra: list[tuple]) -> np.ndarray:
    """A rank-1 MDA written from the format description (not by the reader's code)."""
    positions = np.linspace(0.0, 1.0, npts)
    counts = np.arange(npts, dtype=np.float32) * 10
    scan = struct.pack(">iii", 1, npts, current) + _xdr_string("x:scan1") + _xdr_string("now")
    scan += struct.pack(">iii", 1, 1, 0)  # one positioner, one detector, no trigger
    scan += struct.pack(">i", 0) + b"".join(
        _xdr_string(t) for t in ("x:m1.VAL", "Sample X", "LINEAR", "um", "", "", "")
    )
    scan += struct.pack(">i", 0) + b"".join(_xdr_string(t) for t in ("x:det", "counts", "cts"))
    scan += positions.astype(">f8").tobytes() + counts.astype(">f4").tobytes()
    header_size = 4 * 6  # version, number, rank, dims[1], regular, extra offset
    body = b""
    for name, dbr, values in extra:
        body += _xdr_string(name) + _xdr_string("desc") + struct.pack(">i", dbr)
        if dbr == 0:
            body += _xdr_string(values)
            continue
        if dbr == 32:  # char array: fixed-length opaque
            body += struct.pack(">i", len(values)) + _xdr_string("")
            body += values + b"\0" * (-len(values) % 4)
            continue
        dtype = {29: ">i4", 30: ">f4", 33: ">i4", 34: ">f8"}[dbr]
        body += struct.pack(">i", len(values)) + _xdr_string("u")
        body += np.asarray(values, dtype=dtype).tobytes()
    header = struct.pack(">fiiiii", 1.3, 7, 1, npts, 1, header_size + len(scan))
    path.write_bytes(header + scan + struct.pack(">i", len(extra)) + body)
    return positions


def test_synthetic_rank1_aborted_scan_and_every_extra_pv_type(tmp_path):
    extra = [
        ("s", 0, "hello"),
        ("short", 29, [1, -2]),
        ("float", 30, [1.5]),
        ("char", 32, b"abc\0\0"),
        ("long", 33, [7]),
        ("double", 34, [2.5, 3.5]),
    ]
    positions = _write_rank1_mda(tmp_path / "r1.mda", npts=5, current=3, extra=extra)
    mda = read_mda(tmp_path / "r1.mda")
    assert mda.rank == 1 and mda.dimensions == (5,) and mda.scan_number == 7
    dim = mda.dimension(0)
    x = dim.positioners["x:m1.VAL"]
    np.testing.assert_array_equal(x[:3], positions[:3])
    assert np.all(np.isnan(x[3:]))  # never reached: the scan was aborted after 3 points
    np.testing.assert_array_equal(dim.detectors["x:det"][:3], [0.0, 10.0, 20.0])
    assert dim.positioner_info["x:m1.VAL"].unit == "um"
    assert mda.extra("s") == "hello"
    np.testing.assert_array_equal(mda.extra_pvs["short"].value, [1, -2])
    assert mda.extra("float") == 1.5 and mda.extra("long") == 7.0
    assert mda.extra("char") == "abc"
    np.testing.assert_array_equal(mda.extra_pvs["double"].value, [2.5, 3.5])
    with pytest.raises(InvalidScanError, match="no scan level 1"):
        mda.dimension(1)
