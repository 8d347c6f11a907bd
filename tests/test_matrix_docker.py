"""`python -m matrix run` end to end on the real Docker path, as `nox -s
matrix` runs it: hardened containers, repeats, cache and the report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
from docker_support import require_engine
from process_support import run_matrix

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.docker

SPEC = """
[matrix]
name = "e2e"
repeats = 2
timeout = 600
[axes]
stack = ["tf-2.15"]
determinism = ["on"]
[runner]
scenarios = ["initializers"]
unseeded_repeats = 0
"""


def matrix(*args: str) -> subprocess.CompletedProcess[str]:
    return run_matrix(*args, timeout=1800)


# A cold run builds the base image and the stack's image first (the run below
# allows 1800 s for that); the suite's 900 s limit is for everything else.
@pytest.mark.timeout(2400)
def test_matrix_run_in_docker_reports_and_caches(tmp_path: Path) -> None:
    require_engine()
    spec = tmp_path / "e2e.toml"
    spec.write_text(SPEC)
    results = tmp_path / "results"
    proc = matrix(
        "run", "--spec", str(spec), "--executor", "docker", "--results", str(results), "--jobs", "2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    manifest = json.loads((results / "tf-2.15__cpu" / "manifest.json").read_text())
    assert manifest["cell"]["executor"] == "docker"
    assert manifest["cell"]["environment_id"].startswith("sha256:")
    assert (results / "tf-2.15__cpu" / "repeats" / "1" / "manifest.json").is_file()

    report = json.loads((results / "report" / "report.json").read_text())
    jsonschema.validate(
        report, json.loads((ROOT / "matrix" / "report" / "report.schema.json").read_text())
    )
    (cell,) = report["cells"]
    assert cell["executor"] == "docker"
    # determinism on, two fresh containers: the seeded phases agree bit for bit
    assert cell["deterministic"] is True
    for name in ("index.html", "report.md", "junit.xml"):
        assert (results / "report" / name).stat().st_size > 0

    again = matrix("run", "--spec", str(spec), "--executor", "docker", "--results", str(results))
    assert again.returncode == 0
    assert "0 ran, 2 reused from the cache, 0 failed" in again.stderr
