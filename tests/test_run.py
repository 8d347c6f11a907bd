"""The scheduler's guarantees, with a stand-in executor (the Executor
protocol's contract) so they are checked fast and exactly; the real
executors are exercised in test_executors.py and the Docker tests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from matrix.execute.cache import read_record
from matrix.execute.executors.base import CellRun, Environment, Prepared
from matrix.execute.scheduler import Stop, execute, run_dir
from matrix.plan.spec import load_spec
from matrix.plan.stacks import load_catalog
from matrix.plan.tasks import make_plan

CATALOG = load_catalog()


class FakeExecutor:
    """Writes a tiny artifact; behaviour per cell id is scripted."""

    name = "venv"

    def __init__(
        self,
        *,
        fail: set[str] | None = None,
        sleep: float = 0.0,
        env_error: str | None = None,
        build_seconds: dict[str, float] | None = None,
        stop_after: tuple[Stop, int] | None = None,
    ) -> None:
        self.fail = fail or set()
        self.sleep = sleep
        self.env_error = env_error
        self.build_seconds = build_seconds or {}
        self.stop_after = stop_after
        self.runs: list[str] = []
        self.events: list[str] = []  # "built X" and "ran Y", in the order they happened
        self.lock = threading.Lock()
        self.terminated = 0

    def prepare(self, env: Environment) -> Prepared:
        from matrix.errors import BuildError

        time.sleep(self.build_seconds.get(env.stack.name, 0.0))
        if self.env_error and env.stack.name == self.env_error:
            raise BuildError(f"cannot build {env.name}")
        with self.lock:
            self.events.append(f"built {env.stack.name}")
        return Prepared(id=f"fake:{env.name}", built=True)

    def terminate_all(self) -> None:
        self.terminated += 1

    def reap(self, staging: Path) -> None:
        return None

    def input_path(self, item):  # type: ignore[no-untyped-def]
        return str(item.path)

    def run_cell(
        self, env, environment_id, runner_args, out_dir, *, timeout, memory, gpu, extra_env,
        inputs=(),
    ):  # type: ignore[no-untyped-def]
        meta = json.loads(runner_args[runner_args.index("--meta") + 1])
        with self.lock:
            self.runs.append(f"{meta['id']}/{meta['repeat']}")
            self.events.append(f"ran {meta['id']}")
            if self.stop_after is not None and len(self.runs) >= self.stop_after[1]:
                self.stop_after[0].request()
        time.sleep(self.sleep)
        if meta["id"] in self.fail:
            return CellRun(
                returncode=1, seconds=0.1, reason="exit 1: RuntimeError: boom", output_tail="boom"
            )
        out_dir.mkdir()
        (out_dir / "tensors.npz").write_bytes(b"npz")
        (out_dir / "log.txt").write_text("log")
        (out_dir / "manifest.json").write_text(json.dumps({"cell": meta}))
        return CellRun(returncode=0, seconds=0.1)


def plan_for(
    tmp_path: Path,
    text: str = "[axes]\nstack=['tf-2.15','tf-2.21']\nprecision=['float32','mixed_float16']\n",
):  # type: ignore[no-untyped-def]
    path = tmp_path / "m.toml"
    path.write_text(text)
    return make_plan(load_spec(path, CATALOG), CATALOG)


def test_runs_every_cell_and_repeat_then_caches(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    results = tmp_path / "results"
    fake = FakeExecutor()
    summary = execute(plan, fake, CATALOG, results, jobs=2)
    assert summary.count("ok") == 8  # 4 cells x 2 repeats
    for cell in plan.cells:
        for r in range(2):
            d = run_dir(results, cell.id, r)
            assert (d / "manifest.json").is_file()
            assert read_record(d)["status"] == "ok"  # type: ignore[index]
    assert json.loads((results / "plan.json").read_text())["cells"] == [c.id for c in plan.cells]

    again = FakeExecutor()
    summary = execute(plan, again, CATALOG, results, jobs=2)
    assert summary.count("cached") == 8 and again.runs == []
    summary = execute(plan, again, CATALOG, results, jobs=2, use_cache=False)
    assert summary.count("ok") == 8


def test_changed_settings_invalidate_only_that_cell(tmp_path: Path) -> None:
    results = tmp_path / "results"
    execute(plan_for(tmp_path), FakeExecutor(), CATALOG, results, jobs=1)
    fake = FakeExecutor()
    # Same cells, different unseeded repeats: every cache key changes.
    plan = plan_for(
        tmp_path,
        "[axes]\nstack=['tf-2.15','tf-2.21']\nprecision=['float32','mixed_float16']\n[runner]\nunseeded_repeats=7\n",
    )
    execute(plan, fake, CATALOG, results, jobs=1)
    assert len(fake.runs) == 8


def test_failed_cell_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    results = tmp_path / "results"
    fake = FakeExecutor(fail={"tf-2.21__cpu"})
    summary = execute(plan, fake, CATALOG, results, jobs=2)
    assert summary.count("ok") == 6 and summary.count("failed") == 2
    record = read_record(results / "tf-2.21__cpu")
    assert record is not None and record["status"] == "failed" and "boom" in record["reason"]
    assert not (results / "tf-2.21__cpu" / "manifest.json").exists()
    # a failure is never cached: the next run tries again
    fixed = FakeExecutor()
    execute(plan, fixed, CATALOG, results, jobs=2)
    assert sorted(fixed.runs) == ["tf-2.21__cpu/0", "tf-2.21__cpu/1"]


def test_failed_rerun_replaces_an_old_success(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    results = tmp_path / "results"
    execute(plan, FakeExecutor(), CATALOG, results, jobs=2)
    execute(plan, FakeExecutor(fail={"tf-2.15__cpu"}), CATALOG, results, jobs=2, use_cache=False)
    assert not (results / "tf-2.15__cpu" / "manifest.json").exists()
    assert read_record(results / "tf-2.15__cpu")["status"] == "failed"  # type: ignore[index]


def test_environment_build_failure_fails_its_cells_only(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    summary = execute(plan, FakeExecutor(env_error="tf-2.15"), CATALOG, tmp_path / "r", jobs=2)
    failed = {o.task.cell.stack for o in summary.failed}
    assert failed == {"tf-2.15"} and summary.count("ok") == 4
    assert "cannot build" in (summary.failed[0].reason or "")


def test_concurrent_runs_do_not_corrupt_each_other(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    results = tmp_path / "results"
    a, b = FakeExecutor(sleep=0.05), FakeExecutor(sleep=0.05)
    threads = [
        threading.Thread(target=execute, args=(plan, x, CATALOG, results), kwargs={"jobs": 2})
        for x in (a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each (cell, repeat) ran exactly once across both runs; the other found it cached
    assert sorted(a.runs + b.runs) == sorted({*a.runs, *b.runs})
    assert len(a.runs) + len(b.runs) == 8
    assert not any((results / ".staging").iterdir())


def test_interrupt_keeps_finished_cells_and_resumes(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    results = tmp_path / "results"
    stop = Stop()
    fake = FakeExecutor(stop_after=(stop, 3))
    summary = execute(plan, fake, CATALOG, results, jobs=1, stop=stop)
    assert summary.interrupted and fake.terminated == 1
    # the run during which the stop came is not recorded, as if it never started
    finished = {o.task.cell.id + f"/{o.task.repeat}" for o in summary.outcomes if o.status == "ok"}
    assert len(finished) == 2 and len(fake.runs) == 3
    assert all(o.status in ("ok", "interrupted") for o in summary.outcomes)
    resumed = FakeExecutor()
    execute(plan, resumed, CATALOG, results, jobs=1)
    # nothing finished before the interrupt runs again; everything else does
    assert not finished & set(resumed.runs)
    everything = {f"{c.id}/{r}" for c in plan.cells for r in range(2)}
    assert finished | set(resumed.runs) == everything


def test_only_that_matches_nothing(tmp_path: Path) -> None:
    from matrix.errors import SpecError

    path = tmp_path / "m.toml"
    path.write_text("[axes]\nstack=['tf-2.15']\n")
    with pytest.raises(SpecError, match="no cell"):
        make_plan(load_spec(path, CATALOG), CATALOG, only=["stack=tf-2.99"])


def test_cells_start_while_later_images_build(tmp_path: Path) -> None:
    """Pipelining: tf-2.15's cells run while tf-2.21's image is still building."""
    plan = plan_for(tmp_path)
    fake = FakeExecutor(build_seconds={"tf-2.21": 0.5})
    execute(plan, fake, CATALOG, tmp_path / "results", jobs=2)
    second_build = fake.events.index("built tf-2.21")
    assert any(e == "ran tf-2.15__cpu" for e in fake.events[:second_build]), fake.events
    assert len(fake.runs) == 8
