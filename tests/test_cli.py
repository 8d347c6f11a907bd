"""The entry point as a user meets it: one line and a distinct exit code for
every mistake a user can make, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "matrix", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.mark.parametrize(
    ("spec_text", "code", "needle"),
    [
        ("[axes]\nstack = ['tf-2.15']\nfoo = [1]\n", 3, "unknown axis 'foo'"),
        ("[axes]\nstack = ['tf-0.1']\n", 3, "unknown stack"),
        ("[axes]\nstack = ['tf-2.15']\n[[exclude]]\nstack = 'tf-2.15'\n", 3, "matrix is empty"),
        ("not toml [", 3, "not valid TOML"),
    ],
)
def test_bad_specs(tmp_path: Path, spec_text: str, code: int, needle: str) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(spec_text)
    proc = run("run", "--spec", str(spec), "--dry-run")
    assert proc.returncode == code
    assert needle in one_line_error(proc)


def test_bad_options() -> None:
    assert run("run", "--shard", "9/2", "--dry-run").returncode == 3
    assert run("run", "--only", "stack=nothing-*", "--dry-run").returncode == 3
    proc = run("run", "--reference", "no-such-cell", "--dry-run")
    assert proc.returncode == 3 and "no-such-cell" in one_line_error(proc)
    proc = run("run", "--no-such-flag")
    assert proc.returncode == 3 and "unrecognized arguments" in one_line_error(proc)
    proc = run("frobnicate")
    assert proc.returncode == 3


def test_missing_docker_engine_is_exit_4(tmp_path: Path) -> None:
    proc = run(
        "run",
        "--executor",
        "docker",
        "--results",
        str(tmp_path / "r"),
        env={"KRM_DOCKER": "/nonexistent/docker"},
    )
    assert proc.returncode == 4
    assert "not on PATH" in one_line_error(proc)
    assert not (tmp_path / "r").exists()


def test_auto_falls_back_to_venv_with_a_notice(tmp_path: Path) -> None:
    proc = run("run", "--executor", "auto", "--dry-run", env={"KRM_DOCKER": "/nonexistent/docker"})
    assert proc.returncode == 0
    assert "executor venv" in proc.stdout


def test_dry_run_prints_the_plan() -> None:
    from matrix.paths import DEFAULT_SPEC
    from matrix.plan.spec import load_spec
    from matrix.plan.stacks import load_catalog
    from matrix.plan.tasks import make_plan

    catalog = load_catalog()
    plan = make_plan(load_spec(DEFAULT_SPEC, catalog), catalog)
    proc = run("run", "--dry-run", "--executor", "venv")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(plan.cells)} cells" in proc.stdout
    for cell in plan.cells:
        assert cell.id in proc.stdout
    assert "tf-2.21__cpu__onednn-off" in proc.stdout
    assert "reference tf-2.15__cpu" in proc.stdout.replace("\n", " ")


def test_help_lists_every_option() -> None:
    proc = run("run", "--help")
    for option in (
        "--spec",
        "--only",
        "--executor",
        "--jobs",
        "--shard",
        "--repeats",
        "--dry-run",
        "--no-cache",
        "--fail-on",
        "--list-json",
    ):
        assert option in proc.stdout
