"""The layout schemas (``schemas/*.json``): the single source of paths, dims, dtypes and units.

Readers, writers and validators take group paths, dims and units from here rather than
repeating them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

__all__ = ["load_schema", "combined_scan_schema", "dataset_spec", "POSITION_UNITS_TO_UM"]


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """Load ``schemas/<name>.schema.json`` shipped with the package."""
    text = resources.files("xmulti").joinpath("schemas", f"{name}.schema.json").read_text()
    return json.loads(text)


def combined_scan_schema() -> dict[str, Any]:
    """The combined XRF + ptychography scan layout (input files)."""
    return load_schema("combined_scan")


def dataset_spec(group: str, name: str) -> dict[str, Any]:
    """The schema entry of dataset ``name`` in ``group`` (e.g. ``"/xrf"``, ``"spectra"``)."""
    return combined_scan_schema()["groups"][group]["datasets"][name]


#: Scale factors from the allowed position units to um.
POSITION_UNITS_TO_UM: dict[str, float] = dict(combined_scan_schema()["position_units"])
