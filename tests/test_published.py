"""The published reports are what their artifacts say: each report in
``reports/`` is rebuilt here from the results directories it ships with
(``reports/sources.toml``) and must equal the published one, number for
number and word for word (its timestamp aside)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from matrix.report.command import build_report

REPORTS = Path(__file__).resolve().parent.parent / "reports"
SOURCES = tomllib.loads((REPORTS / "sources.toml").read_text())


def test_every_published_report_names_its_sources() -> None:
    published = {p.parent.name for p in REPORTS.glob("*/report.json")}
    assert published == set(SOURCES), "a report in reports/ without its sources, or the reverse"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_published_report_is_rebuilt_from_its_artifacts(name: str, tmp_path: Path) -> None:
    published = REPORTS / name
    before = json.loads((published / "report.json").read_text())
    dirs = [REPORTS / d for d in SOURCES[name]["results"]]
    assert all((d / "plan.json").is_file() for d in dirs)
    build_report(dirs, tmp_path, generated_at=before["generated_at"])
    after = json.loads((tmp_path / "report.json").read_text())
    assert sorted(after) == sorted(before)
    for key in before:
        assert after[key] == before[key], f"{name}/report.json: {key} differs when rebuilt"
    assert (tmp_path / "report.md").read_text() == (published / "report.md").read_text()
