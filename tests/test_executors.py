"""venv and host executors with the real runner and a real TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from matrix.execute.executors.host import HostExecutor
from matrix.execute.executors.venv import VenvExecutor
from matrix.execute.scheduler import execute
from matrix.plan.spec import load_spec
from matrix.plan.stacks import load_catalog
from matrix.plan.tasks import make_plan

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "scenarios" / "manifest.schema.json").read_text())
CATALOG = load_catalog()

pytestmark = pytest.mark.frameworks

SPEC = """
[axes]
stack = ["tf-2.15"]
[matrix]
repeats = 1
timeout = 600
[runner]
scenarios = ["initializers"]
unseeded_repeats = 0
"""


def plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "m.toml"
    path.write_text(SPEC)
    return make_plan(load_spec(path, CATALOG), CATALOG)


def check_artifact(cell_dir: Path, executor: str) -> dict:  # type: ignore[type-arg]
    manifest = json.loads((cell_dir / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["cell"]["id"] == "tf-2.15__cpu"
    assert manifest["cell"]["executor"] == executor
    assert manifest["fingerprint"]["packages"]["tensorflow-cpu"] == "2.15.1"
    assert manifest["scenarios"]["initializers"]["status"] == "ok"
    return manifest


def test_venv_executor_runs_a_cell_then_caches_it(tmp_path: Path, stack_python) -> None:  # type: ignore[no-untyped-def]
    stack_python("tf-2.15")
    results = tmp_path / "results"
    summary = execute(plan(tmp_path), VenvExecutor(), CATALOG, results, jobs=1)
    assert summary.count("ok") == 1, summary.failed
    manifest = check_artifact(results / "tf-2.15__cpu", "venv")
    assert manifest["cell"]["environment_id"].startswith("venv:")
    again = execute(plan(tmp_path), VenvExecutor(), CATALOG, results, jobs=1)
    assert again.count("cached") == 1


def test_host_executor_uses_the_given_interpreter(tmp_path: Path, stack_python) -> None:  # type: ignore[no-untyped-def]
    python = stack_python("tf-2.15")
    results = tmp_path / "results"
    summary = execute(plan(tmp_path), HostExecutor(str(python)), CATALOG, results, jobs=1)
    assert summary.count("ok") == 1, summary.failed
    manifest = check_artifact(results / "tf-2.15__cpu", "host")
    assert manifest["cell"]["environment_id"].startswith("host:")


def test_a_crashing_runner_is_recorded_not_raised(tmp_path: Path) -> None:
    # An interpreter that answers but crashes in the runner: the cell fails
    # with the last line it printed, and the run goes on.
    crashing = tmp_path / "crashing-python"
    crashing.write_text(
        '#!/bin/sh\n[ "$1" = -c ] && exec python3 "$@"\n'
        'echo "ImportError: no module named tensorflow"; exit 1\n'
    )
    crashing.chmod(0o755)
    results = tmp_path / "results"
    summary = execute(plan(tmp_path), HostExecutor(str(crashing)), CATALOG, results, jobs=1)
    assert summary.count("failed") == 1
    record = json.loads((results / "tf-2.15__cpu" / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["reason"] == "exit 1: ImportError: no module named tensorflow"


def test_an_interpreter_that_does_not_run_fails_its_environment(tmp_path: Path) -> None:
    summary = execute(plan(tmp_path), HostExecutor("/bin/false"), CATALOG, tmp_path / "r", jobs=1)
    assert summary.count("failed") == 1
    assert "does not run" in (summary.failed[0].reason or "")


def test_timeout_kills_the_run(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(SPEC.replace("timeout = 600", "timeout = 10"))
    sleeper = tmp_path / "sleepy-python"
    sleeper.write_text('#!/bin/sh\n[ "$1" = -c ] && exec python3 "$@"\nexec sleep 60\n')
    sleeper.chmod(0o755)
    results = tmp_path / "results"
    summary = execute(
        make_plan(load_spec(path, CATALOG), CATALOG),
        HostExecutor(str(sleeper)),
        CATALOG,
        results,
        jobs=1,
    )
    assert summary.failed and summary.failed[0].reason == "timeout after 10 s"


def test_gpu_cell_on_a_machine_without_a_gpu(tmp_path: Path, stack_python) -> None:  # type: ignore[no-untyped-def]
    """The GPU path as far as a CPU allows: a cuda/gpu cell runs, every
    scenario says it is unsupported here (never a crash or a silent CPU run),
    and the report shows it as such."""
    from matrix.report.command import build_report

    python = stack_python("keras-3.15-torch")  # PyPI's torch is the CUDA build
    path = tmp_path / "gpu.toml"
    path.write_text(
        SPEC.replace(
            'stack = ["tf-2.15"]',
            'stack = ["keras-3.15-torch"]\ntarget = ["cuda"]\ndevice = ["gpu"]',
        )
    )
    results = tmp_path / "results"
    plan_ = make_plan(load_spec(path, CATALOG), CATALOG)
    assert [c.id for c in plan_.cells] == ["keras-3.15-torch__gpu"]
    summary = execute(plan_, HostExecutor(str(python)), CATALOG, results, jobs=1)
    assert summary.count("ok") == 1, summary.failed
    manifest = json.loads((results / "keras-3.15-torch__gpu" / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    record = manifest["scenarios"]["initializers"]
    assert record["status"] == "unsupported"
    assert "no GPU" in record["error"]["message"]
    assert manifest["settings"]["requested"]["device"] == "gpu"
    report = build_report([results], tmp_path / "report")
    assert report.cells == 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "keras-3.15-torch" in md
