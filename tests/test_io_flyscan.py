"""2-ID-E fly-scan raw XRF reader: real file, row blocks, dead time, element sum, bad input."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from shared_data import APS_2IDE  # noqa: E402

from xmulti.errors import InvalidScanError
from xmulti.io.flyscan import (
    dead_time_factor,
    effective_live_time,
    find_flyscan_files,
    read_flyscan_xrf,
    summed_spectra,
)

DATA = APS_2IDE
FLY = DATA / "flyXRF" / "2xfm_0011_2xfm3__0.h5"

pytestmark = pytest.mark.skipif(not FLY.exists(), reason="shared 2-ID-E data not available")


def test_reads_the_real_file():
    fly = read_flyscan_xrf(FLY)
    assert fly.spectra.shape == (4, 11, 9, 2048)
    assert fly.shape == (11, 9) and fly.n_elements == 4 and fly.n_channels == 2048
    with h5py.File(FLY, "r") as f:
        np.testing.assert_array_equal(fly.spectra[2, 4, 7], f["MAPS_RAW/data_c"][:, 4, 7])
        np.testing.assert_array_equal(fly.output_counts, f["MAPS_RAW/ouputcounts"][()])
    # clocks: real time >= live time, about 0.5 s per pixel after the first column
    assert np.all(fly.real_time_s >= fly.live_time_s)
    np.testing.assert_allclose(fly.real_time_s[:, :, 1:], 0.5, rtol=0.01)
    # the processed events within the 2048 channels cannot exceed the output counter
    assert np.all(fly.spectra.sum(axis=-1) <= fly.output_counts)


def test_finds_the_files_beside_the_mda():
    assert find_flyscan_files(DATA / "mda" / "2xfm_0011.mda") == [FLY]
    assert find_flyscan_files(DATA / "mda" / "axo_std.mda") == []


def test_dead_time_factor_formula_and_edge_cases():
    # 1000 fast-channel counts in 0.5 s live = 2000 cps in; 900 processed in 0.5 s real = 1800 cps out
    assert dead_time_factor(1000.0, 900.0, 0.5, 0.5) == pytest.approx(2000 / 1800)
    # same output but the slow channel was dead 10 % of the time: ICR rises by 1/0.9
    assert dead_time_factor(1000.0, 900.0, 0.45, 0.5) == pytest.approx((1000 / 0.45) / 1800)
    # nothing recorded: factor 1, not a division by zero
    np.testing.assert_array_equal(dead_time_factor(np.zeros(3), np.zeros(3), 0.5, 0.5), 1.0)


def test_dead_time_corrected_element_sum():
    fly = read_flyscan_xrf(FLY)
    factor = (fly.input_counts / fly.live_time_s) / (fly.output_counts / fly.real_time_s)
    assert np.all(factor >= 1.0) and np.all(factor < 1.1)  # a few % dead time at ~2 kcps
    expected = (fly.spectra.astype(np.float64) * factor[..., None]).sum(axis=0)
    total = summed_spectra(fly)
    assert total.shape == (11, 9, 2048) and total.dtype == np.float32
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-4)
    # corrected counts = true events over the real time: input * real/live, times the share of
    # processed events that fell within the 2048 channels
    inside = fly.spectra.sum(axis=-1) / fly.output_counts
    true_events = (fly.input_counts * fly.real_time_s / fly.live_time_s * inside).sum(axis=0)
    np.testing.assert_allclose(total.sum(axis=-1), true_events, rtol=1e-5)
    raw = summed_spectra(fly, dead_time_correct=False)
    np.testing.assert_array_equal(raw, fly.spectra.sum(axis=0))
    np.testing.assert_array_equal(summed_spectra(fly, [1], False), fly.spectra[1])


def test_row_blocks_are_concatenated_in_order(tmp_path):
    mda_dir, fly_dir = tmp_path / "mda", tmp_path / "flyXRF"
    mda_dir.mkdir()
    fly_dir.mkdir()
    shutil.copy(DATA / "mda" / "2xfm_0011.mda", mda_dir)
    with h5py.File(FLY, "r") as src:
        for k, rows in enumerate((slice(0, 4), slice(4, 11))):
            with h5py.File(fly_dir / f"2xfm_0011_2xfm3__{k}.h5", "w") as dst:
                g = dst.create_group("MAPS_RAW")
                for name, data in src["MAPS_RAW"].items():
                    g.create_dataset(name, data=data[:, rows])
    files = find_flyscan_files(mda_dir / "2xfm_0011.mda")
    assert [p.name for p in files] == ["2xfm_0011_2xfm3__0.h5", "2xfm_0011_2xfm3__1.h5"]
    joined, whole = read_flyscan_xrf(files), read_flyscan_xrf(FLY)
    np.testing.assert_array_equal(joined.spectra, whole.spectra)
    np.testing.assert_array_equal(joined.live_time_s, whole.live_time_s)


def test_counts_above_int16_are_unwrapped(tmp_path):
    path = tmp_path / "wrap__0.h5"
    counts = np.zeros((2048, 1, 2), dtype=np.uint16)
    counts[100, 0, 0] = 40000  # stored as int16 it reads -25536
    with h5py.File(path, "w") as f:
        g = f.create_group("MAPS_RAW")
        g.create_dataset("data_a", data=counts.view(np.int16))
        for name in ("livetime", "realtime", "inputcounts", "ouputcounts"):
            g.create_dataset(name, data=np.ones((1, 1, 2), dtype=np.float32))
    assert read_flyscan_xrf(path).spectra[0, 0, 0, 100] == 40000


def test_missing_group_and_dataset_are_clear_errors(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("other")
    with pytest.raises(InvalidScanError, match="/MAPS_RAW: missing group"):
        read_flyscan_xrf(path)
    with h5py.File(path, "a") as f:
        f.create_group("MAPS_RAW").create_dataset("data_a", data=np.zeros((8, 1, 2), np.int16))
    with pytest.raises(InvalidScanError, match="/MAPS_RAW/livetime: missing dataset"):
        read_flyscan_xrf(path)


def test_effective_live_time_reproduces_the_per_element_correction():
    fly = read_flyscan_xrf(FLY)
    factor = dead_time_factor(fly.input_counts, fly.output_counts, fly.live_time_s, fly.real_time_s)
    live = effective_live_time(fly.real_time_s, factor, fly.output_counts)
    real = fly.real_time_s.mean(axis=0)
    assert np.all(live <= real)
    # on the output counters exactly: sum(out) * real/live == sum(out * ICR/OCR)
    np.testing.assert_allclose(
        fly.output_counts.sum(axis=0) * real / live,
        (fly.output_counts * factor).sum(axis=0),
        rtol=1e-12,
    )
    # two elements, 10 % and 30 % dead, with 3:1 output counts: F = (3 * 1/0.9 + 1/0.7) / 4
    f = np.array([1 / 0.9, 1 / 0.7])
    expected = 1.0 / ((3 * f[0] + f[1]) / 4)
    assert effective_live_time([1.0, 1.0], f, [300.0, 100.0]) == pytest.approx(expected)
    # ICR/OCR below 1 by chance at low counts: never a live time above the real time
    assert effective_live_time([0.5], [0.98], [3.0]) == pytest.approx(0.5)
