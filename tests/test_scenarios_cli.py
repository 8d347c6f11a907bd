"""The entry point as a process, in the host interpreter (no framework).

Without TensorFlow/Keras installed the runner still writes a valid artifact
in which every scenario failed on the import: the failure path for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "scenarios" / "manifest.schema.json").read_text())


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    # A backend no host has: the import must fail even where keras exists.
    full_env.setdefault("KERAS_BACKEND", "no_such_backend")
    return subprocess.run(
        [sys.executable, "-m", "scenarios", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=120,
    )


def test_help_documents_every_option() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for option in (
        "--out",
        "--precision",
        "--determinism",
        "--onednn",
        "--threads",
        "--device",
        "--jit",
        "--cudnn",
        "--scenarios",
        "--unseeded-repeats",
        "--settings",
        "--meta",
        "--force",
        "--quick",
        "--inject-failure",
    ):
        assert option in proc.stdout, option


@pytest.mark.parametrize(
    "args",
    [
        ("--out", "X", "--precision", "float64"),
        ("--out", "X", "--settings", "{bad"),
        ("--out", "X", "--scenarios", "seeded_mlp,unknown"),
        ("--out", "X", "--meta", '{"executor": "ssh"}'),
        ("--precision", "float32"),  # no --out
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    proc = _run(*[str(tmp_path / a) if a == "X" else a for a in args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scenarios: error:"), proc.stderr
    assert not (tmp_path / "X").exists()


def test_an_import_failure_is_a_valid_artifact_with_every_scenario_failed(tmp_path: Path) -> None:
    out = tmp_path / "cell"
    meta = {
        "id": "host-nokeras",
        "axes": {"stack": "none"},
        "executor": "host",
        "repeat": 1,
        "environment_id": "abc",
    }
    proc = _run(
        "--out", str(out), "--meta", json.dumps(meta), "--scenarios", "seeded_mlp,precision"
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["cell"] == meta
    assert set(manifest["scenarios"]) == {"seeded_mlp", "precision"}
    for entry in manifest["scenarios"].values():
        assert entry["status"] == "failed"
        assert entry["error"]["traceback"]
    assert manifest["settings"]["applied"] == {}
    assert (out / "log.txt").exists()


def test_out_with_an_artifact_is_refused_unless_force(tmp_path: Path) -> None:
    out = tmp_path / "cell"
    assert _run("--out", str(out), "--scenarios", "initializers").returncode == 0
    first = (out / "manifest.json").read_text()
    proc = _run("--out", str(out), "--scenarios", "initializers")
    assert proc.returncode == 3
    assert len(proc.stderr.strip().splitlines()) == 1 and "--force" in proc.stderr
    assert (out / "manifest.json").read_text() == first
    proc = _run("--out", str(out), "--scenarios", "initializers", "--force")
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads((out / "manifest.json").read_text())["started_at"]
        != json.loads(first)["started_at"]
    )
