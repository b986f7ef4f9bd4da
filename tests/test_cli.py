"""The xmulti CLI: simulate and info, exit code 2 and one line on bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "xmulti.cli", *map(str, args)], capture_output=True, text=True)


def test_simulate_then_info(tmp_path):
    out = tmp_path / "scan.h5"
    result = run_cli("simulate", out, "--preset", "tiny", "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert "10 x 12 positions" in result.stdout
    info = run_cli("info", out)
    assert info.returncode == 0, info.stderr
    for expected in ("/xrf  (position: 120, channel: 1024)", "scan grid: 10 x 12", "object pixel 103.32 nm",
                     "validation: OK", "chunks"):
        assert expected in info.stdout
    # refuses to overwrite without --overwrite, exit 2 and one line
    again = run_cli("simulate", out, "--preset", "tiny")
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("content", [b"plain text", b""])
def test_info_on_bad_file_exits_2_with_one_line(tmp_path, content):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(content)
    result = run_cli("info", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not an HDF5 file" in lines[0]


def test_import_is_light():
    code = "import sys, xmulti; print(sorted(m for m in ('dask', 'xarray', 'h5py', 'xraylib', 'scipy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"
