"""``convert``: real 2-ID-E files (fly scan, step-scan standard) and Eiger frames to the layout."""

from __future__ import annotations

import shutil
import struct

import h5py
import numpy as np
import pytest
from shared_data import APS_2IDE  # noqa: E402

import xmulti
from xmulti import physics
from xmulti.cli import main
from xmulti.errors import InvalidInputError, InvalidScanError
from xmulti.io.convert import convert, read_fit_override
from xmulti.io.mda import read_mda

DATA = APS_2IDE
FLY_MDA = DATA / "mda" / "2xfm_0011.mda"
AXO_MDA = DATA / "mda" / "axo_std.mda"
FLY_XRF = DATA / "flyXRF" / "2xfm_0011_2xfm3__0.h5"

pytestmark = pytest.mark.skipif(not FLY_MDA.exists(), reason="shared 2-ID-E data not available")


@pytest.fixture(scope="module")
def fly_scan(tmp_path_factory):
    return convert([FLY_MDA], tmp_path_factory.mktemp("fly") / "fly.h5")


@pytest.fixture(scope="module")
def axo_scan(tmp_path_factory):
    return convert([AXO_MDA], tmp_path_factory.mktemp("axo") / "axo.h5")


def test_fly_scan_dimensions_positions_and_calibration(fly_scan):
    tree = xmulti.open_scan(fly_scan)
    assert tuple(tree.attrs["scan_shape"]) == (11, 9)  # two junk columns dropped
    assert tree.attrs["incident_energy_keV"] == 10.0  # COHERENT_SCT_ENERGY of the override file
    xrf = tree["xrf"].ds
    assert xrf.sizes == {"position": 99, "channel": 2048}
    y = xrf["position_y"].values.reshape(11, 9)
    x = xrf["position_x"].values.reshape(11, 9)
    np.testing.assert_allclose(y[:, 0], np.linspace(3250.0, 3750.0, 11), atol=1e-6)  # um
    np.testing.assert_allclose(x[0], np.linspace(-1500.0, -1100.0, 9), atol=1e-6)
    assert np.all(y == y[:, :1]) and np.all(x == x[:1])  # row by row, y slow
    np.testing.assert_allclose(xrf["energy"].values, 0.05 + 0.0094 * np.arange(2048), rtol=1e-12)


def test_fly_scan_i0_raw_counts_and_dead_time_through_the_live_time(fly_scan, tmp_path):
    tree = xmulti.open_scan(fly_scan)
    xrf = tree["xrf"].ds
    mda = read_mda(FLY_MDA)
    us_ic = mda.dimension(1).detectors["2xfm:mcs:mca2.VAL"]  # scaler1.NM2 = "US Ion Cham."
    np.testing.assert_array_equal(xrf["i0"].values, us_ic[:, :9].ravel())
    with h5py.File(FLY_XRF, "r") as f:
        g = f["MAPS_RAW"]
        raw = np.stack([g[f"data_{c}"][()] for c in "abcd"]).astype(np.float64)  # (4, ch, y, x)
        live, real = g["livetime"][()], g["realtime"][()]
        icr, ocr = g["inputcounts"][()] / live, g["ouputcounts"][()] / real
    # raw integer counts: the element sum, bit-exact
    spectra = xrf["spectra"].values
    assert spectra.dtype.kind == "u"
    np.testing.assert_array_equal(spectra, raw.sum(axis=0).transpose(1, 2, 0).reshape(99, 2048))
    np.testing.assert_allclose(xrf["real_time"].values, real.mean(axis=0).ravel(), rtol=1e-6)
    # real/live applies the pulse processor's correction: the per-element ICR/OCR-corrected
    # sum, to within the spread of ICR/OCR between elements (0.1 % here)
    corrected = np.einsum("ecyx,eyx->yx", raw, icr / ocr).ravel()
    live_eff = xrf["live_time"].values
    assert np.all(live_eff <= xrf["real_time"].values)
    np.testing.assert_allclose(
        spectra.sum(axis=1) * xrf["real_time"].values / live_eff, corrected, rtol=2e-3
    )
    assert "ICR" in tree.attrs["xrf_live_time"]
    # the MCA's own live time on request
    mca = xmulti.open_scan(convert([FLY_MDA], tmp_path / "mca.h5", live_time="mca"))["xrf"].ds
    np.testing.assert_allclose(mca["live_time"].values, live.mean(axis=0).ravel(), rtol=1e-6)
    np.testing.assert_array_equal(mca["spectra"].values, spectra)


def test_step_scan_standard_alone_gives_an_xrf_scan(axo_scan):
    tree = xmulti.open_scan(axo_scan)
    assert "ptychography" not in tree.children
    assert tuple(tree.attrs["scan_shape"]) == (11, 11)
    xrf = tree["xrf"].ds
    assert xrf.sizes == {"position": 121, "channel": 2000}
    override = read_fit_override(DATA / "maps_fit_parameters_override.txt")
    assert override["US_IC"] == "2xfm:scaler3_cts1.B"
    mda = read_mda(AXO_MDA)
    np.testing.assert_array_equal(
        xrf["i0"].values, mda.dimension(1).detectors["2xfm:scaler3_cts1.B"].ravel()
    )
    y = xrf["position_y"].values.reshape(11, 11)
    x = xrf["position_x"].values.reshape(11, 11)
    np.testing.assert_allclose(np.diff(y[:, 0]), 100.0, atol=1e-6)  # 0.1 mm steps, in um
    np.testing.assert_allclose(np.diff(x, axis=1), 100.0, atol=1e-6)
    # effective live time from the XIA count rates: ICR/OCR = 1.0-1.03 at ~7 kcps
    inner = mda.dimension(1).detectors
    f = np.array([inner[f"dxpXMAP2xfm3:dxp{k}:InputCountRate"] for k in (1, 2, 3, 4)]) / np.array(
        [inner[f"dxpXMAP2xfm3:dxp{k}:OutputCountRate"] for k in (1, 2, 3, 4)]
    )
    ratio = xrf["real_time"].values / xrf["live_time"].values
    assert np.all(ratio >= f.min(axis=0).ravel() - 1e-6) and np.all(
        ratio <= f.max(axis=0).ravel() + 1e-6
    )
    spectra = mda.dimension(2).detectors
    total = sum(spectra[f"dxpXMAP2xfm3:mca{k}.VAL"] for k in (1, 2, 3, 4)).reshape(121, 2000)
    np.testing.assert_array_equal(xrf["spectra"].values, total)


def _peak_channel(spectrum: np.ndarray, guess: float, search: int = 20, half: int = 5) -> float:
    """Centroid of the highest peak within ``search`` channels of ``guess``, above a linear
    background drawn between the window's edges."""
    lo = int(guess) - search
    k = lo + int(np.argmax(spectrum[lo : lo + 2 * search + 1]))
    idx = np.arange(k - half, k + half + 1)
    window = spectrum[idx]
    background = np.linspace(window[0], window[-1], window.size)
    net = np.clip(window - background, 0, None)
    return float((net * idx).sum() / net.sum())


def test_standard_shows_ca_fe_cu_where_xraylib_puts_them(axo_scan):
    """Integrated spectrum of the AXO standard: the Ka peaks of its three certified elements.

    The nominal MCA calibration (PVs) places them within a few % of the gain; one linear
    calibration through the three peaks then puts every one within one channel of the
    xraylib Ka energy (cross-section-weighted KL2/KL3), which checks the spectra are read
    without any channel shift or scrambling.
    """
    xrf = xmulti.open_scan(axo_scan)["xrf"].ds
    total = xrf["spectra"].values.sum(axis=0).astype(np.float64)
    offset, gain = xrf.attrs["energy_offset_keV"], xrf.attrs["energy_gain_keV"]
    energies, channels = [], []
    for element in ("Ca", "Fe", "Cu"):
        ka = [ln for ln in physics.emission_lines(element, 10.0) if ln.name in ("KL2", "KL3")]
        weights = np.array([ln.cross_section_cm2_g for ln in ka])
        energy = float(np.dot(weights, [ln.energy_keV for ln in ka]) / weights.sum())
        nominal = (energy - offset) / gain
        found = _peak_channel(total, nominal)
        assert abs(found - nominal) < 0.02 * nominal  # nominal calibration within 2 % of gain
        energies.append(energy)
        channels.append(found)
    fit_gain, fit_offset = np.polyfit(channels, energies, 1)
    residual_channels = (
        np.array(energies) - (fit_offset + fit_gain * np.array(channels))
    ) / fit_gain
    assert np.all(np.abs(residual_channels) < 1.0)
    assert fit_gain == pytest.approx(gain, rel=0.03)


def test_cli_convert_and_info(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert main(["convert", str(AXO_MDA), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert "position" in capsys.readouterr().out
    # exists: refused without --overwrite, one line and exit code 2
    assert main(["convert", str(AXO_MDA), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (
        main(["convert", str(AXO_MDA), "--out", str(out), "--overwrite", "--energy-keV", "9.5"])
        == 0
    )
    assert xmulti.open_scan(out).attrs["incident_energy_keV"] == 9.5


def test_bad_sources_are_clear_errors(tmp_path, capsys):
    truncated = tmp_path / "cut.mda"
    truncated.write_bytes(AXO_MDA.read_bytes()[:100_000])
    assert main(["convert", str(truncated), "--out", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "cut.mda" in err and "truncated" in err and len(err.strip().splitlines()) == 1
    # a fly-scan MDA without its flyXRF files, and without the override file (no energy)
    lonely = tmp_path / "mda"
    lonely.mkdir()
    shutil.copy(FLY_MDA, lonely)
    with pytest.raises(InvalidScanError, match="flyXRF"):
        convert([lonely / FLY_MDA.name], tmp_path / "o.h5", energy_keV=10.0)
    shutil.copy(AXO_MDA, lonely)
    with pytest.raises(InvalidInputError, match="incident energy"):
        convert([lonely / AXO_MDA.name], tmp_path / "o.h5")
    with pytest.raises(InvalidInputError, match="cannot be converted on its own"):
        convert([FLY_XRF], tmp_path / "o.h5")


def test_maps_file_converts(tmp_path):
    from test_io_maps import NX, NY, _content, write_v10

    c = _content(2)
    write_v10(tmp_path / "maps.h5", c)
    tree = xmulti.open_scan(convert([tmp_path / "maps.h5"], tmp_path / "out.h5", energy_keV=10.0))
    xrf = tree["xrf"].ds
    assert tuple(tree.attrs["scan_shape"]) == (NY, NX - 2)
    np.testing.assert_allclose(xrf["position_x"].values[: NX - 2], c["x_mm"][: NX - 2] * 1e3)
    np.testing.assert_array_equal(xrf["i0"].values, c["scalers"][1, :, : NX - 2].ravel())
    fe = tree["xrf/elemental_maps"].ds["Fe"].values
    np.testing.assert_array_equal(fe, c["counts"][1, :, : NX - 2])
    assert "COMPTON_AMPLITUDE" not in tree["xrf/elemental_maps"].ds
    np.testing.assert_array_equal(
        xrf["spectra"].values.reshape(NY, NX - 2, -1),
        np.moveaxis(c["spectra"][:, :, : NX - 2], 0, -1),
    )


def test_eiger_frames_with_mda_positions_on_a_process_cluster(tmp_path, process_cluster, axo_scan):
    """Eiger master + Bitshuffle/LZ4 data files, one frame per MDA position, cropped around the
    beam, read back bit-exact through open_scan on a process-based cluster."""
    from test_io_eiger import BEAM_YX, H, W, _frames, write_eiger

    n_positions = 121
    frames = _frames(n_positions, seed=5)
    master, frames, mask = write_eiger(tmp_path, frames=frames, frames_per_file=(100, 21))
    out = convert([AXO_MDA, master], tmp_path / "both.h5", crop_size=16)
    tree = xmulti.open_scan(out)
    ptycho, xrf = tree["ptychography"].ds, tree["xrf"].ds
    cy, cx = (int(np.floor(c + 0.5)) for c in BEAM_YX)
    expected = frames[:, cy - 8 : cy + 8, cx - 8 : cx + 8]
    assert expected.shape[1:] == (16, 16) and (H, W) == frames.shape[1:]
    got = process_cluster.compute(ptycho["diffraction"].data).result()
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == frames.dtype
    np.testing.assert_array_equal(ptycho["position_y"].values, xrf["position_y"].values)
    np.testing.assert_array_equal(
        ptycho["mask"].values.astype(bool), mask[cy - 8 : cy + 8, cx - 8 : cx + 8]
    )
    assert ptycho.attrs["energy_keV"] == pytest.approx(10.0)
    assert ptycho.attrs["object_pixel_size_m"] == pytest.approx(
        physics.object_pixel_size_m(10.0, 1.95, 16, 75e-6), rel=1e-9
    )


def test_eiger_data_file_without_master_needs_and_takes_the_geometry(tmp_path):
    from test_io_eiger import _frames, write_eiger

    frames = _frames(121, seed=6, dtype=np.uint16)
    write_eiger(tmp_path, frames=frames, dtype=np.uint16, frames_per_file=(121,))
    data_file = tmp_path / "scan_data_000001.h5"
    with pytest.raises(
        InvalidInputError, match="give the energy, detector distance and pixel size"
    ):
        convert([AXO_MDA, data_file], tmp_path / "a.h5")
    out = convert(
        [AXO_MDA, data_file],
        tmp_path / "b.h5",
        detector_distance_m=2.5,
        detector_pixel_size_m=55e-6,
        crop_size=12,
        beam_center_yx="auto",
    )
    ptycho = xmulti.open_scan(out)["ptychography"].ds
    assert ptycho.attrs["detector_distance_m"] == 2.5
    assert ptycho.attrs["energy_keV"] == 10.0  # the XRF source's incident energy
    diffraction = ptycho["diffraction"].values
    peak = np.unravel_index(np.argmax(diffraction.sum(axis=0)), diffraction.shape[1:])
    assert peak == (6, 6)  # direct beam found from the data and put at the frame centre


def test_aborted_step_scan_keeps_its_complete_rows(tmp_path, axo_scan):
    data = bytearray(AXO_MDA.read_bytes())
    # the outer scan record follows the 32-byte header: rank, npts, current point
    assert struct.unpack(">iii", data[32:44]) == (3, 11, 11)
    data[40:44] = struct.pack(">i", 8)  # stopped after 8 of 11 rows
    (tmp_path / "mda").mkdir()
    aborted = tmp_path / "mda" / "aborted.mda"
    aborted.write_bytes(bytes(data))
    shutil.copy(DATA / "maps_fit_parameters_override.txt", tmp_path)  # names the US_IC scaler
    with pytest.warns(UserWarning, match="stopped after 8 of 11 rows"):
        out = convert([aborted], tmp_path / "a.h5")
    tree = xmulti.open_scan(out)
    assert tuple(tree.attrs["scan_shape"]) == (8, 11)
    kept, full = tree["xrf"].ds, xmulti.open_scan(axo_scan)["xrf"].ds
    assert kept.sizes["position"] == 88
    np.testing.assert_array_equal(kept["spectra"].values, full["spectra"].values[:88])
    np.testing.assert_array_equal(kept["position_y"].values, full["position_y"].values[:88])
    np.testing.assert_array_equal(kept["i0"].values, full["i0"].values[:88])


def test_unrecognised_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a scan at all")
    with pytest.raises(InvalidInputError, match="neither an MDA nor an HDF5 file"):
        convert([text], tmp_path / "o.h5")
    with pytest.raises(InvalidInputError, match="no such file"):
        convert([tmp_path / "missing.mda"], tmp_path / "o.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_group("something")
    with pytest.raises(InvalidInputError, match="unrecognised kind"):
        convert([tmp_path / "other.h5"], tmp_path / "o.h5")
