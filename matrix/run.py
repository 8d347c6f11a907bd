"""Plan and run the cells of a matrix: parallel, cached, resumable, sharded.

The plan is pure data (``make_plan``); ``execute`` is the I/O edge that
prepares environments, runs every (cell, repeat) through an executor and
moves finished artifacts into ``RESULTS/<cell-id>/`` (repeats under
``RESULTS/<cell-id>/repeats/<n>/``).

Safety properties:
- a run's files are moved into place with the manifest last and ``run.json``
  after it, so an interrupted move never looks finished or cached;
- each (cell, repeat) is guarded by a file lock, so two runs at once
  serialise on the same cell instead of corrupting it, and the second finds
  it cached;
- Ctrl-C kills the running processes, keeps every finished cell and records
  nothing for the interrupted ones: the next run resumes where this stopped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrix.cache import RUN_RECORD, cache_key, cached, scenarios_hash
from matrix.cells import Cell, expand, filter_cells, resolve_reference, runner_args, shard
from matrix.errors import BuildError, DiskFullError, SpecError
from matrix.executors.base import SCENARIOS_ROOT, CellRun, Environment, Executor
from matrix.spec import AXES, Spec
from matrix.stacks import Stack

__all__ = [
    "Plan",
    "RunOutcome",
    "RunSummary",
    "Task",
    "execute",
    "make_plan",
    "run_dir",
    "write_plan",
]

_ARTIFACT_FILES = ("tensors.npz", "log.txt", "manifest.json")  # manifest last


@dataclass(frozen=True, kw_only=True)
class Task:
    cell: Cell
    repeat: int


@dataclass(frozen=True, kw_only=True)
class Plan:
    spec: Spec
    cells: tuple[Cell, ...]  # this shard's cells
    all_cells: tuple[Cell, ...]  # every cell of the (filtered) matrix, for the report
    reference: str
    repeats: int
    shard: tuple[int, int] | None = None

    @property
    def environments(self) -> list[tuple[str, str]]:
        """(stack, target) of every image or venv this shard needs, in order."""
        return list(dict.fromkeys((c.stack, c.target) for c in self.cells))

    @property
    def tasks(self) -> list[Task]:
        # Repeat 0 of every cell first: a short run gives a full first picture.
        return [Task(cell=c, repeat=r) for r in range(self.repeats) for c in self.cells]


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    task: Task
    status: str  # "ok", "cached", "failed"
    seconds: float
    reason: str | None = None


@dataclass(kw_only=True)
class RunSummary:
    outcomes: list[RunOutcome] = field(default_factory=list)
    interrupted: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def make_plan(
    spec: Spec,
    catalog: Mapping[str, Stack],
    *,
    only: Sequence[str] = (),
    shard_spec: tuple[int, int] | None = None,
    repeats: int | None = None,
    reference: str | None = None,
) -> Plan:
    cells = filter_cells(expand(spec, catalog), only)
    if not cells:
        raise SpecError(f"--only {' '.join(only)}: no cell of {spec.path} matches")
    # The reference is resolved on the whole matrix so every shard agrees.
    try:
        ref = resolve_reference(spec, cells, reference)
    except SpecError:
        if reference is not None:
            raise
        ref = cells[0].id  # the spec's reference was filtered out by --only
    mine = shard(cells, *shard_spec) if shard_spec else cells
    return Plan(
        spec=spec,
        cells=tuple(mine),
        all_cells=tuple(cells),
        reference=ref,
        repeats=repeats if repeats is not None else spec.repeats,
        shard=shard_spec,
    )


def run_dir(results: Path, cell_id: str, repeat: int) -> Path:
    base = results / cell_id
    return base if repeat == 0 else base / "repeats" / str(repeat)


def write_plan(results: Path, plan: Plan) -> None:
    """plan.json: what the report needs beyond the artifacts (cell order,
    the reference, planned cells that never produced a directory)."""
    data = {
        "spec": str(plan.spec.path),
        "name": plan.spec.name,
        "cells": [c.id for c in plan.all_cells],
        "axes": list(AXES),
        "reference": plan.reference,
        "repeats": plan.repeats,
        "tolerances": plan.spec.tolerances,
        "shard": list(plan.shard) if plan.shard else None,
    }
    _atomic_write(results / "plan.json", json.dumps(data, indent=2, sort_keys=True) + "\n")


Progress = Callable[[str, str], None]  # (kind, message); kind: stage, build, ok, cached, failed


def execute(
    plan: Plan,
    executor: Executor,
    catalog: Mapping[str, Stack],
    results: Path,
    *,
    jobs: int,
    use_cache: bool = True,
    progress: Progress | None = None,
    terminate: Callable[[], None] | None = None,
) -> RunSummary:
    """Run every task of the plan. Never raises for a failing cell: that is
    recorded in its run.json and in the summary. Raises DiskFullError (after
    keeping what finished) when the disk is full."""
    say = progress or (lambda kind, msg: None)
    summary = RunSummary()
    results = results.absolute()
    results.mkdir(parents=True, exist_ok=True)
    write_plan(results, plan)
    scen_hash = scenarios_hash(SCENARIOS_ROOT / "scenarios")

    started = time.monotonic()
    env_ids: dict[str, str] = {}
    env_errors: dict[str, str] = {}
    for stack_name, target in plan.environments:
        env = Environment(stack=catalog[stack_name], target=target)
        say("build", f"environment {env.name}")
        try:
            env_ids[env.name] = executor.prepare(env)
        except DiskFullError:
            raise
        except BuildError as exc:
            env_errors[env.name] = exc.message
            say("failed", f"environment {env.name}: {exc.message}")
    summary.stage_seconds["environments"] = time.monotonic() - started

    started = time.monotonic()
    stop = threading.Event()
    disk_full: list[DiskFullError] = []

    def work(task: Task) -> RunOutcome:
        cell = task.cell
        if cell.environment in env_errors:
            outcome = RunOutcome(
                task=task,
                status="failed",
                seconds=0.0,
                reason=f"environment: {env_errors[cell.environment]}",
            )
            _record_failure(results, task, outcome, executor.name, None)
            return outcome
        return _run_task(
            task,
            plan,
            executor,
            catalog,
            results,
            env_ids[cell.environment],
            scen_hash,
            use_cache=use_cache,
            stop=stop,
        )

    total = len(plan.tasks)
    done = 0
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="cell")
    futures: dict[Future[RunOutcome], Task] = {pool.submit(work, t): t for t in plan.tasks}
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    outcome = fut.result()
                except DiskFullError as exc:
                    disk_full.append(exc)
                    stop.set()
                    continue
                if outcome.status == "interrupted":
                    continue
                done += 1
                summary.outcomes.append(outcome)
                label = f"[{done}/{total}] {outcome.task.cell.id} r{outcome.task.repeat}"
                if outcome.status == "failed":
                    say("failed", f"{label}: {outcome.reason}")
                else:
                    say(outcome.status, f"{label} {outcome.seconds:.1f}s")
            if disk_full:
                for fut in pending:
                    fut.cancel()
    except KeyboardInterrupt:
        summary.interrupted = True
        stop.set()
        for fut in pending:
            fut.cancel()
        if terminate is not None:
            terminate()
        say("stage", "interrupted: stopping running cells; finished cells are kept")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    summary.stage_seconds["cells"] = time.monotonic() - started
    if disk_full:
        raise disk_full[0]
    return summary


def _run_task(
    task: Task,
    plan: Plan,
    executor: Executor,
    catalog: Mapping[str, Stack],
    results: Path,
    environment_id: str,
    scen_hash: str,
    *,
    use_cache: bool,
    stop: threading.Event,
) -> RunOutcome:
    cell, repeat = task.cell, task.repeat
    args = runner_args(cell, plan.spec)
    key = cache_key(
        environment_id=environment_id,
        scenarios=scen_hash,
        runner_args=args,
        repeat=repeat,
        executor=executor.name,
    )
    target = run_dir(results, cell.id, repeat)
    with _cell_lock(results, cell.id, repeat):
        if stop.is_set():
            return RunOutcome(task=task, status="interrupted", seconds=0.0)
        if use_cache and cached(target, key):
            return RunOutcome(task=task, status="cached", seconds=0.0)
        meta = {
            "id": cell.id,
            "axes": cell.axes,
            "executor": executor.name,
            "repeat": repeat,
            "environment_id": environment_id,
        }
        staging = results / ".staging" / f"{cell.id}.{repeat}.{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir(parents=True)
            out = staging / "artifact"
            env = Environment(stack=catalog[cell.stack], target=cell.target)
            run = executor.run_cell(
                env,
                environment_id,
                [*args, "--meta", json.dumps(meta, sort_keys=True)],
                out,
                timeout=plan.spec.timeout,
                memory=plan.spec.memory,
                gpu=cell.gpu,
                extra_env={},
            )
            if stop.is_set():
                return RunOutcome(task=task, status="interrupted", seconds=run.seconds)
            reason = run.reason
            if reason is None and not (out / "manifest.json").is_file():
                reason = "the runner exited 0 but left no manifest.json"
            if reason is not None:
                outcome = RunOutcome(task=task, status="failed", seconds=run.seconds, reason=reason)
                _record_failure(results, task, outcome, executor.name, environment_id, run)
                return outcome
            _install(out, target)
            _write_record(
                target,
                {
                    "status": "ok",
                    "cache_key": key,
                    "seconds": round(run.seconds, 3),
                    "executor": executor.name,
                    "environment_id": environment_id,
                },
                task,
            )
            return RunOutcome(task=task, status="ok", seconds=run.seconds)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(
                    f"{results}: no space left on the device while writing {cell.id}; "
                    "free some space (docker system prune, .cache/) and run again: "
                    "finished cells are kept"
                ) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _install(artifact: Path, target: Path) -> None:
    """Move an artifact into its run directory, manifest last.

    A stale record and manifest go first, so a crash mid-way leaves a
    directory that reads as 'not finished', never as an old or mixed result.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in (RUN_RECORD, "manifest.json"):
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    for name in _ARTIFACT_FILES:
        src = artifact / name
        if src.exists():
            os.replace(src, target / name)


def _record_failure(
    results: Path,
    task: Task,
    outcome: RunOutcome,
    executor: str,
    environment_id: str | None,
    run: CellRun | None = None,
) -> None:
    target = run_dir(results, task.cell.id, task.repeat)
    target.mkdir(parents=True, exist_ok=True)
    # A failed run replaces whatever was there: an old success would
    # otherwise be reported as this run's result.
    for name in (RUN_RECORD, *_ARTIFACT_FILES):
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    if run is not None and run.output_tail:
        _atomic_write(target / "log.txt", run.output_tail + "\n")
    _write_record(
        target,
        {
            "status": "failed",
            "reason": outcome.reason,
            "seconds": round(outcome.seconds, 3),
            "executor": executor,
            "environment_id": environment_id,
        },
        task,
    )


def _write_record(target: Path, data: dict[str, Any], task: Task) -> None:
    record = {
        "cell": task.cell.id,
        "axes": task.cell.axes,
        "repeat": task.repeat,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **data,
    }
    _atomic_write(target / RUN_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _cell_lock(results: Path, cell_id: str, repeat: int) -> Iterator[None]:
    locks = results / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{cell_id}.{repeat}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
