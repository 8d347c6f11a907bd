"""The GitHub workflows, validated offline against GitHub's schema (vendored
by check-jsonschema), and the cell list they fan out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def check(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
    )


def test_both_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "matrix.yml"}


def test_workflows_match_githubs_schema() -> None:
    proc = check(WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps: 3\n")
    assert check([broken]).returncode != 0


def test_matrix_workflow_is_scheduled_and_dispatchable() -> None:
    text = (ROOT / ".github/workflows/matrix.yml").read_text()
    for needle in (
        "schedule:",
        "cron:",
        "workflow_dispatch:",
        "[self-hosted, gpu]",
        "--list-json",
        "GITHUB_STEP_SUMMARY",
        "deploy-pages",
        "nox -s report",
    ):
        assert needle in text


@pytest.mark.parametrize(
    "spec", ["full.toml", "gpu.toml", "default.toml", "atlas.toml", "isa.toml", "portability.toml"]
)
def test_list_json_is_a_ci_matrix_of_one_job_per_environment(spec: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "matrix", "run", "--spec", str(ROOT / "matrix" / spec),
         "--list-json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)["include"]
    names = [j["environment"] for j in jobs]
    assert len(names) == len(set(names)) > 0
    # GitHub allows 256 jobs in one matrix; one job per environment is far below.
    assert len(jobs) <= 64
    assert all(j["environment"] == f"{j['stack']}.{j['target']}" for j in jobs)


def test_the_full_spec_fans_out_to_far_fewer_jobs_than_cells() -> None:
    from matrix.cli import list_json
    from matrix.plan.spec import load_spec
    from matrix.plan.stacks import load_catalog
    from matrix.plan.tasks import make_plan

    catalog = load_catalog()
    plan = make_plan(load_spec(ROOT / "matrix" / "full.toml", catalog), catalog)
    jobs = list_json(plan)["include"]
    assert len(plan.cells) > 256 > 4 * len(jobs)
    assert sum(int(j["cells"]) for j in jobs) == len(plan.cells)  # type: ignore[call-overload]


def test_each_fan_out_job_runs_exactly_its_environments_cells() -> None:
    from matrix.cli import list_json
    from matrix.plan.spec import load_spec
    from matrix.plan.stacks import load_catalog
    from matrix.plan.tasks import make_plan

    catalog = load_catalog()
    spec = load_spec(ROOT / "matrix" / "full.toml", catalog)
    full = make_plan(spec, catalog)
    seen: list[str] = []
    for entry in list_json(full)["include"]:
        job = make_plan(spec, catalog, environment=str(entry["environment"]))
        assert {c.environment for c in job.cells} == {entry["environment"]}
        assert len(job.cells) == entry["cells"]
        assert entry["gpu"] == any(c.gpu for c in job.cells)
        seen += [c.id for c in job.cells]
        # every job writes the whole matrix and the same reference into plan.json
        assert job.all_cells == full.all_cells and job.reference == full.reference
    assert sorted(seen) == sorted(c.id for c in full.cells)  # each cell in one job


def test_an_unknown_environment_is_refused_before_any_work() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "matrix", "run", "--environment", "tf-9.99.cpu", "--dry-run"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3 and "tf-9.99.cpu" in proc.stderr
