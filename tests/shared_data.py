"""Where the shared real beamline files are (read-only): $XMULTI_SHARED_DATA, else the
workplace's ``shared/data`` beside the checkout, else /work/shared/data."""

from __future__ import annotations

import os
from pathlib import Path


def _shared_data() -> Path:
    candidates = [os.environ.get("XMULTI_SHARED_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data",
                  "/work/shared/data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "aps-2ide").is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


APS_2IDE = _shared_data() / "aps-2ide"
