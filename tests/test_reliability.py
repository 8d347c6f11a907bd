"""Reliability promises proven by real processes: `python -m matrix run` on
the real Docker path, interrupted by a real SIGINT, killed by a real
SIGKILL, run twice at once on one results directory; and every documented
exit code produced by the real entry point with its one line.

The spec is small (TensorFlow 2.15, one quick scenario) so that a run takes
seconds, and runs one cell at a time, so that "mid-run" is a moment the
test can find: one run finished, the next one's container running.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_support import require_engine

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.docker

SPEC = """
[matrix]
name = "reliability"
repeats = 1
timeout = 600
[axes]
stack = ["tf-2.15"]
precision = ["float32", "mixed_float16", "mixed_bfloat16"]
[runner]
scenarios = ["initializers"]
unseeded_repeats = 0
"""
CELLS = ("tf-2.15__cpu", "tf-2.15__cpu__mixed_float16", "tf-2.15__cpu__mixed_bfloat16")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def start(spec: Path, results: Path, *extra: str, jobs: int = 1) -> subprocess.Popen[str]:
    """`python -m matrix run` in a process group of its own, as a shell runs
    a foreground job: a signal to the group is what Ctrl-C sends."""
    return subprocess.Popen(
        [sys.executable, "-m", "matrix", "run", "--spec", str(spec), "--executor", "docker",
         "--results", str(results), "--jobs", str(jobs), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _containers() -> set[str]:
    out = subprocess.run(
        ["docker", "ps", "--all", "--format", "{{.Names}}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return {n for n in out.split() if n.startswith("krm-")}


def _records(results: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    out = {}
    for path in results.glob("*/run.json"):
        out[path.parent.name] = json.loads(path.read_text())
    return out


def _wait_for(predicate, what: str, timeout: float = 600) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def _assert_every_result_whole(results: Path) -> int:
    """No manifest without its tensors, no tensors that are not the manifest's:
    what a reader takes for a finished run is one. Returns how many there are."""
    whole = 0
    for cell in CELLS:
        d = results / cell
        manifest = d / "manifest.json"
        if not manifest.exists():
            record = _records(results).get(cell)
            assert record is None or record["status"] != "ok", (cell, record)
            continue
        data = json.loads(manifest.read_text())
        digest = hashlib.sha256((d / "tensors.npz").read_bytes()).hexdigest()
        assert data["tensors"]["sha256"] == digest, cell
        assert _records(results)[cell]["status"] == "ok"
        whole += 1
    return whole


def _ran_reused(stderr: str) -> tuple[int, int, int]:
    found = re.search(r"runs: (\d+) ran, (\d+) reused from the cache, (\d+) failed", stderr)
    assert found, stderr[-2000:]
    ran, reused, failed = (int(g) for g in found.groups())
    return ran, reused, failed


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[Path]:
    require_engine()
    path = tmp_path / "reliability.toml"
    path.write_text(SPEC)
    before = _containers()
    yield path
    # Nothing a test started may outlive it, whatever it asserted.
    assert _containers() - before == set()


def _one_done_and_next_running(results: Path, before: set[str]) -> bool:
    done = [r for r in _records(results).values() if r.get("status") == "ok"]
    return len(done) >= 1 and bool(_containers() - before)


def test_ctrl_c_stops_keeps_finished_runs_and_the_next_run_does_the_rest(
    spec: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    before = _containers()
    proc = start(spec, results)
    _wait_for(lambda: _one_done_and_next_running(results, before), "one run done, one running")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    code, err = finish(proc, timeout=120)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err
    # The stop ends what ran: no container of this run is left, at the moment
    # the process exits (not some time later).
    assert _containers() - before == set()
    # Interrupted runs are not failures: nothing recorded as failed, nothing
    # started after the stop, every finished run whole.
    assert all(r["status"] == "ok" for r in _records(results).values())
    kept = _assert_every_result_whole(results)
    assert 1 <= kept < len(CELLS)
    assert not (results / "report").exists()  # no report of a run that was stopped

    again = start(spec, results)
    code, err = finish(again)
    assert code == 0, err[-2000:]
    assert _ran_reused(err) == (len(CELLS) - kept, kept, 0)
    assert _assert_every_result_whole(results) == len(CELLS)


def test_sigkill_of_the_scheduler_mid_cell_and_the_next_run_redoes_that_cell(
    spec: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    before = _containers()
    proc = start(spec, results)
    _wait_for(lambda: _one_done_and_next_running(results, before), "one run done, one running")
    os.kill(proc.pid, signal.SIGKILL)  # the scheduler alone: its container lives on
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = _assert_every_result_whole(results)
    # The cell that was running left a staging directory and perhaps a
    # container; neither may be read as a result.
    assert kept < len(CELLS)

    again = start(spec, results)
    code, err = finish(again)
    assert code == 0, err[-2000:]
    ran, reused, failed = _ran_reused(err)
    assert (ran, reused, failed) == (len(CELLS) - kept, kept, 0)
    assert _assert_every_result_whole(results) == len(CELLS)
    # What the killed scheduler left running was stopped by the next one.
    assert _containers() - before == set()
    staging = results / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_two_runs_at_once_on_one_results_directory_do_every_run_exactly_once(
    spec: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    first = start(spec, results)
    second = start(spec, results)
    (code_a, err_a), (code_b, err_b) = finish(first), finish(second)
    assert (code_a, code_b) == (0, 0), (err_a[-1500:], err_b[-1500:])
    ran_a, reused_a, failed_a = _ran_reused(err_a)
    ran_b, reused_b, failed_b = _ran_reused(err_b)
    assert failed_a == failed_b == 0
    assert ran_a + ran_b == len(CELLS)  # each run once, by one of them
    assert reused_a == len(CELLS) - ran_a and reused_b == len(CELLS) - ran_b
    assert _assert_every_result_whole(results) == len(CELLS)
    report = json.loads((results / "report" / "report.json").read_text())
    assert {c["id"] for c in report["cells"]} == set(CELLS)


ONE_CELL = """
[matrix]
name = "cache"
repeats = 1
timeout = 600
[axes]
stack = ["tf-2.15"]
[runner]
scenarios = ["initializers"]
unseeded_repeats = {unseeded}
"""


def test_the_cache_is_invalidated_by_scenario_code_image_and_settings_and_only_by_them(
    tmp_path: Path,
) -> None:
    """A copy of the checkout, so its scenario code can be edited: each change
    that can change a result re-runs the cell, anything else reuses it."""
    require_engine()
    import shutil

    copy = tmp_path / "checkout"
    for part in ("matrix", "scenarios", "docker"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    spec, results = tmp_path / "cache.toml", tmp_path / "results"
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        # the checkout's caches: the same wheels and base, no second download
        "KRM_CACHE": os.environ.get("KRM_CACHE", str(ROOT / ".cache")),
    }

    def run(unseeded: int = 0, *extra: str) -> tuple[int, int]:
        spec.write_text(ONE_CELL.format(unseeded=unseeded))
        proc = subprocess.run(
            [sys.executable, "-m", "matrix", "run", "--spec", str(spec), "--executor", "docker",
             "--results", str(results), "--no-report", *extra],
            capture_output=True, text=True, env=env, cwd=copy, timeout=1200,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        ran, reused, failed = _ran_reused(proc.stderr)
        assert failed == 0
        return ran, reused

    assert run() == (1, 0)
    assert run() == (0, 1)
    # Host-side code that cannot change a result: still cached.
    report_code = copy / "matrix" / "report" / "render_markdown.py"
    report_code.write_text(report_code.read_text() + "\n# an edit that changes no result\n")
    assert run() == (0, 1)
    # The scenario code that runs in the cell: re-run.
    scenario_code = copy / "scenarios" / "library" / "initializers.py"
    scenario_code.write_text(scenario_code.read_text() + "\n# an edit to the scenarios\n")
    assert run() == (1, 0)
    assert run() == (0, 1)
    # A setting the runner applies (same cell id, other runner arguments).
    assert run(1) == (1, 0)
    assert run(1) == (0, 1)
    # Another image for the same stack (built from the index instead of the
    # wheelhouse: another image id): re-run.
    assert run(1, "--build-mode", "index") == (1, 0)
    assert run(1, "--build-mode", "index") == (0, 1)
