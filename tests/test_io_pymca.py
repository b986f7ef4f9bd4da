"""Readers of PyMca's shipped spectra and fit configurations (../shared/data/pymca).

Counts are checked against an independent plain parse of each file; calibrations against the
physics (the strongest peaks land at their xraylib energies), element lists against the
configuration; bad input must raise InvalidInputError naming the file, and the readers must
leave their input untouched.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import xraylib
from shared_data import APS_2IDE

from xmulti.errors import InvalidInputError
from xmulti.io.pymca import read_fit_config, read_mca

DATA = APS_2IDE.parent / "pymca"
MCA = DATA / "XRFSpectrum.mca"
SPE = DATA / "Steel.spe"
STEEL_CFG = DATA / "Steel.cfg"
DEFAULT_CFG = DATA / "McaTheory.cfg"

pytestmark = pytest.mark.skipif(not MCA.exists(), reason="shared PyMca data not available")

#: The calibration and excitation PyMca's own test (PyMca5/tests/XrfTest.py, silx-kit/pymca)
#: fits XRFSpectrum.mca with: zero -0.492773 keV, gain 0.00502883 keV/channel, 17.5 keV.
XRF_SPECTRUM_ZERO_KEV, XRF_SPECTRUM_GAIN_KEV = -0.492773, 0.00502883


def _plain_numbers(path, skip_until=None) -> list[float]:
    """Every number of a file after the line ``skip_until`` (and its channel-range line)."""
    lines = path.read_text().splitlines()
    if skip_until is not None:
        lines = lines[lines.index(skip_until) + 2 :]
    return [float(t) for line in lines if not line.startswith("#") for t in line.split()]


def _ka_keV(symbol: str) -> float:
    z = xraylib.SymbolToAtomicNumber(symbol)
    rates = [xraylib.RadRate(z, xraylib.KL2_LINE), xraylib.RadRate(z, xraylib.KL3_LINE)]
    energies = [xraylib.LineEnergy(z, xraylib.KL2_LINE), xraylib.LineEnergy(z, xraylib.KL3_LINE)]
    return float(np.dot(rates, energies) / sum(rates))


def _local_max(counts: np.ndarray, channel: float, half_width: int = 8) -> int:
    lo = int(round(channel)) - half_width
    return lo + int(np.argmax(counts[lo : lo + 2 * half_width + 1]))


def test_single_column_mca():
    spectrum = read_mca(MCA)
    assert spectrum.format == "column"
    assert spectrum.counts.size == 4096
    assert np.array_equal(spectrum.channels, np.arange(4096))
    assert spectrum.counts.sum() == pytest.approx(sum(_plain_numbers(MCA)))
    assert spectrum.counts.dtype == np.float64 and np.all(spectrum.counts >= 0)
    assert any("500 ppm of Co" in line for line in spectrum.comments)
    assert spectrum.offset_keV is None  # the file carries no calibration


def test_xrf_spectrum_co_peak_near_channel_1474():
    """The header: "Main Co peak is found close to the channel 1474"; with PyMca's test
    calibration that is Co K-alpha (6.93 keV)."""
    counts = read_mca(MCA).counts
    nominal = (_ka_keV("Co") - XRF_SPECTRUM_ZERO_KEV) / XRF_SPECTRUM_GAIN_KEV
    assert abs(nominal - 1474) < 5
    assert abs(_local_max(counts, nominal) - nominal) <= 3


def test_dollar_data_spe():
    spectrum = read_mca(SPE)
    assert spectrum.format == "$DATA"
    assert spectrum.counts.size == 2048
    assert spectrum.channels[0] == 0 and spectrum.channels[-1] == 2047
    assert spectrum.counts.sum() == pytest.approx(sum(_plain_numbers(SPE, skip_until="$DATA:")))


def test_steel_and_xrf_spectrum_are_different_measurements():
    steel, mca = read_mca(SPE).counts, read_mca(MCA).counts
    assert not np.array_equal(steel, mca[:2048])
    assert not np.array_equal(steel, mca.reshape(-1, 2).sum(axis=1))
    assert abs(np.corrcoef(steel, mca[:2048])[0, 1]) < 0.5


def test_steel_cfg_fields():
    cfg = read_fit_config(STEEL_CFG)
    assert cfg.offset_keV == pytest.approx(-0.00612446976449)
    assert cfg.gain_keV == pytest.approx(0.0119281593146)
    assert cfg.noise_fwhm_keV == pytest.approx(0.127439) and cfg.fano == pytest.approx(0.101156)
    assert cfg.incident_energy_keV == 16.0 and cfg.energies_keV == [16.0]
    assert set(cfg.elements) == {"Ni", "Mn", "Pb", "As", "Fe", "W", "V", "Cr", "Cu"}
    assert cfg.peaks["Pb"] == ("L", "M") and cfg.peaks["Fe"] == ("Ka", "Kb")
    assert (cfg.xmin, cfg.xmax) == (200, 1432)
    assert "materials.SRM_1155" in cfg.sections


def test_steel_calibration_puts_fe_cr_ni_at_xraylib_energies():
    cfg = read_fit_config(STEEL_CFG)
    counts = read_mca(SPE).counts
    for symbol in ("Cr", "Fe", "Ni"):
        nominal = (_ka_keV(symbol) - cfg.offset_keV) / cfg.gain_keV
        assert abs(_local_max(counts, nominal) - nominal) <= 1.0, symbol


def test_default_cfg_without_energy_or_peaks():
    cfg = read_fit_config(DEFAULT_CFG)
    assert cfg.incident_energy_keV is None and cfg.energies_keV == []
    assert cfg.elements == ()
    assert cfg.offset_keV == pytest.approx(-0.0118) and cfg.gain_keV == pytest.approx(0.0174)


def test_readers_leave_files_untouched():
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in (MCA, SPE, STEEL_CFG)}
    read_mca(MCA), read_mca(SPE), read_fit_config(STEEL_CFG)
    after = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in (MCA, SPE, STEEL_CFG)}
    assert before == after


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("$SPEC_ID:\nsample\n$MEAS_TIM:\n1 1\n", "no \\$DATA block"),
        ("$DATA:\n0 3\n1 2 x 4\n", "non-numeric count 'x'"),
        ("$DATA:\n0 3\n1 2 3\n", "declares channels 0 .. 3"),
        ("$DATA:\n1 2 3 4\n", "first last"),
        ("$DATA:\n0 1\n1 -2\n", "negative counts"),
        ("# only a comment\n", "no counts"),
        ("", "empty file"),
        ("1\n2\nthree\n", "non-numeric count 'three'"),
    ],
)
def test_bad_spectra(tmp_path, text, problem):
    path = tmp_path / "bad.spe"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=problem) as info:
        read_mca(path)
    assert str(path) in str(info.value)


def test_missing_files(tmp_path):
    for reader in (read_mca, read_fit_config):
        with pytest.raises(InvalidInputError, match="no such file") as info:
            reader(tmp_path / "absent.mca")
        assert "absent.mca" in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[fit]\nenergy = 10.0\n", "no \\[detector\\]"),
        ("[detector]\nzero = 0.0\n", "has no 'gain'"),
        ("[detector]\nzero = 0.0\ngain = ten\n", "gain = 'ten' is not a number"),
        ("[detector]\nzero = 0.0\ngain = 0.01\n[fit]\nenergy = 10.0, abc\n", "non-numeric value 'abc'"),
        ("zero = 0.0\n", "not a PyMca configuration"),
    ],
)
def test_bad_configurations(tmp_path, text, problem):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=problem) as info:
        read_fit_config(path)
    assert str(path) in str(info.value)
