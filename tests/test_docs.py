"""The documentation stays in step with the code: docs/layout.md names every group, dataset and
attribute of the two layout schemas, and the README's documentation index points at files that
exist (issue 10)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "xmulti" / "schemas"


def _scan_schema_names() -> set[str]:
    """Group and dataset paths (``/xrf/spectra``) and attribute names of the scan schema."""
    schema = json.loads((SCHEMAS / "combined_scan.schema.json").read_text())
    names = set()
    for group, spec in schema["groups"].items():
        names.add(group)
        names.update(spec.get("attrs", {}))
        for dataset in spec.get("datasets", {}):
            names.add(f"{group.rstrip('/')}/{dataset}")
        for child in spec.get("groups", {}):
            names.add(f"{group.rstrip('/')}/{child}")
    return names


def _results_schema_names() -> set[str]:
    """Group paths, variable names and attribute names of the results schema."""
    schema = json.loads((SCHEMAS / "results.schema.json").read_text())
    names = set(schema["root_attrs"]) | set(schema["provenance_attrs"])
    for group, spec in schema["groups"].items():
        names.add(group)
        names.update(spec.get("variables", {}))
    return names


def _quoted(text: str) -> set[str]:
    """Everything written as inline code in a Markdown text."""
    return set(re.findall(r"`([^`\n]+)`", text))


@pytest.mark.parametrize("names", [_scan_schema_names, _results_schema_names], ids=["scan", "results"])
def test_layout_doc_names_every_schema_entry(names):
    quoted = _quoted((ROOT / "docs" / "layout.md").read_text())
    expected = names()
    assert len(expected) > 10  # the schemas were read
    missing = sorted(n for n in expected if n not in quoted)
    assert not missing, f"docs/layout.md does not name: {missing}"


def test_readme_documentation_links_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|notebooks|cluster)/[^)#\s]+)", readme)
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
