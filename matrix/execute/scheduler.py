"""Run the tasks of a plan: parallel, cached, resumable, pipelined.

``execute`` is the I/O edge that prepares environments, runs every (cell,
repeat) through an executor and moves finished artifacts into
``RESULTS/<cell-id>/`` (repeats under ``RESULTS/<cell-id>/repeats/<n>/``).

Environments are prepared one after another by a builder thread while the
cells of those already prepared run: a cell starts as soon as its image
exists (builds are mostly I/O and one core; cells are CPU).

Safety properties:
- a run's files are moved into place with the manifest last and ``run.json``
  after it, so an interrupted move never looks finished or cached;
- each (cell, repeat) is guarded by a file lock, so two schedulers on one
  results directory serialise on the same cell instead of corrupting it, and
  the second finds it cached; under the lock, what a killed scheduler left
  running for that cell (a container, a process) is stopped first;
- :meth:`Stop.request` (the CLI calls it on SIGINT/SIGTERM) ends the running
  cells, starts no new one, keeps every finished cell and records nothing
  for the interrupted ones: the next run resumes where this one stopped.

Two stages: when a scenario has a second stage, each cell gets one more run
(``RESULTS/<cell-id>/stage-2/``) that reads the stage-one files of every
cell; those runs are queued after every stage-one run and start once the
primary stage-one run of every cell has finished.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrix.console import RunProgress
from matrix.errors import BuildError, DiskFullError, SpecError
from matrix.execute.cache import cache_key, cached, read_record, scenarios_hash
from matrix.execute.executors.base import CellRun, Environment, Executor
from matrix.execute.inputs import run_inputs
from matrix.execute.planfile import atomic_write, write_plan
from matrix.paths import SCENARIOS
from matrix.plan.stacks import Stack
from matrix.plan.tasks import RunPlan, Task
from matrix.results.machine import Machine, machine_of
from matrix.user.snapshot import Snapshot, snapshot
from scenarios import hardware
from scenarios.contract import ARTIFACT_FILES, FILES, MANIFEST, RUN_RECORD, STAGE_TWO, Meta

__all__ = ["RunOutcome", "RunSummary", "Stop", "execute", "run_dir"]


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    task: Task
    status: str  # "ok", "cached", "failed", "interrupted"
    seconds: float
    reason: str | None = None


@dataclass(kw_only=True)
class RunSummary:
    outcomes: list[RunOutcome] = field(default_factory=list)
    interrupted: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: environments that could not be built: name -> reason
    build_errors: dict[str, str] = field(default_factory=dict)
    #: environment name -> (seconds, built: False when it was already there)
    environments: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class Stop:
    """A stop request, safe to call from a signal handler: it only sets a flag
    and asks the executor to end what it runs."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._terminate: list[Callable[[], None]] = []
        self._ender: threading.Thread | None = None

    def on_stop(self, fn: Callable[[], None]) -> None:
        self._terminate.append(fn)

    def request(self) -> None:
        first = not self._event.is_set()
        self._event.set()
        if first:
            # Off the signal handler's stack: killing containers takes docker calls.
            self._ender = threading.Thread(target=self._end_all, name="stop", daemon=True)
            self._ender.start()

    def join(self, timeout: float = 120.0) -> None:
        """Wait until what was running has been ended (containers removed)."""
        if self._ender is not None:
            self._ender.join(timeout)

    def _end_all(self) -> None:
        for fn in self._terminate:
            with contextlib.suppress(Exception):
                fn()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


def run_dir(results: Path, cell_id: str, repeat: int, stage: int = 1) -> Path:
    base = results / cell_id
    if stage == 2:
        return base / STAGE_TWO
    return base if repeat == 0 else base / "repeats" / str(repeat)


def _slot(task: Task) -> str:
    """How a run is named in lock and staging files: its repeat, or its stage."""
    return str(task.repeat) if task.stage == 1 else f"stage{task.stage}"


_DONE = object()


def execute(
    plan: RunPlan,
    executor: Executor,
    catalog: Mapping[str, Stack],
    results: Path,
    *,
    jobs: int,
    use_cache: bool = True,
    progress: RunProgress | None = None,
    stop: Stop | None = None,
) -> RunSummary:
    """Run every task of the plan. Never raises for a failing cell: that is
    recorded in its run.json and in the summary. Raises DiskFullError (after
    keeping what finished) when the disk is full."""
    stop = stop or Stop()
    stop.on_stop(executor.terminate_all)
    summary = RunSummary()
    results = results.absolute()
    results.mkdir(parents=True, exist_ok=True)
    host = this_machine()
    _check_machine(results, host.label)
    # The user's files are copied (and hashed) once, before any cell reads them.
    user = snapshot(plan.user, results) if plan.user is not None else None
    write_plan(results, plan, user.digests if user is not None else None)
    scen_hash = scenarios_hash(SCENARIOS)
    started = time.monotonic()

    second = plan.stage_two_tasks
    order = {(t.cell.id, t.repeat, t.stage): n for n, t in enumerate([*plan.tasks, *second])}
    # Stage two starts once every cell's primary stage-one run has finished.
    primaries = [sum(1 for t in plan.tasks if t.repeat == 0)]
    stage_one_done = threading.Event()
    by_env: dict[str, list[Task]] = {}
    for task in plan.tasks:
        by_env.setdefault(task.cell.environment, []).append(task)
    ready: queue.PriorityQueue[tuple[int, Any]] = queue.PriorityQueue()
    lock = threading.Lock()
    env_ids: dict[str, str] = {}
    fatal: list[BaseException] = []

    def report(outcome: RunOutcome) -> None:
        with lock:
            summary.outcomes.append(outcome)
            if outcome.task.stage == 1 and outcome.task.repeat == 0:
                primaries[0] -= 1
                if primaries[0] <= 0:
                    stage_one_done.set()
        if progress is not None and outcome.status != "interrupted":
            task = outcome.task
            which = f"r{task.repeat}" if task.stage == 1 else f"stage {task.stage}"
            label = f"{task.cell.id} {which}"
            progress.run(label, outcome.status, outcome.seconds, outcome.reason)

    def build() -> None:
        try:
            for stack_name, target in plan.environments:
                env = Environment(stack=catalog[stack_name], target=target)
                if stop.is_set():
                    break
                t0 = time.monotonic()
                try:
                    prepared = executor.prepare(env)
                except BuildError as exc:
                    seconds = time.monotonic() - t0
                    if stop.is_set():
                        break  # a build killed by the stop is no build failure
                    summary.build_errors[env.name] = exc.message
                    if progress is not None:
                        progress.image(env.name, seconds, built=True, error=exc.message)
                    for task in by_env[env.name]:
                        outcome = RunOutcome(
                            task=task, status="failed", seconds=0.0,
                            reason=f"environment: {exc.message}",
                        )  # fmt: skip
                        _record_failure(results, task, outcome, executor.name, None)
                        report(outcome)
                    continue
                seconds = time.monotonic() - t0
                summary.environments[env.name] = (seconds, prepared.built)
                if progress is not None:
                    progress.image(env.name, seconds, built=prepared.built)
                env_ids[env.name] = prepared.id
                for task in by_env[env.name]:
                    ready.put((order[(task.cell.id, task.repeat, task.stage)], task))
            # Stage two last: the queue hands these out after every stage-one run.
            for task in second:
                environment = task.cell.environment
                if stop.is_set():
                    break
                if environment in env_ids:
                    ready.put((order[(task.cell.id, task.repeat, task.stage)], task))
                    continue
                outcome = RunOutcome(
                    task=task, status="failed", seconds=0.0,
                    reason=f"environment: {summary.build_errors.get(environment)}",
                )  # fmt: skip
                _record_failure(results, task, outcome, executor.name, None)
                report(outcome)
        except BaseException as exc:  # DiskFullError and bugs alike end the run
            fatal.append(exc)
            stop.request()
        finally:
            summary.stage_seconds["environments"] = time.monotonic() - started
            for _ in range(jobs):
                ready.put((len(order), _DONE))

    def work() -> None:
        while True:
            _, item = ready.get()
            if item is _DONE:
                return
            task: Task = item
            while task.stage == 2 and not stage_one_done.is_set() and not stop.is_set():
                stop.wait(0.2)
            if stop.is_set():
                continue
            try:
                outcome = _run_task(
                    task, plan, executor, catalog, results,
                    env_ids[task.cell.environment], scen_hash, host, use_cache=use_cache,
                    stop=stop, user=user,
                )  # fmt: skip
            except BaseException as exc:
                fatal.append(exc)
                stop.request()
                continue
            report(outcome)

    threads = [threading.Thread(target=build, name="builder", daemon=True)]
    threads += [
        threading.Thread(target=work, name=f"cell-{n}", daemon=True) for n in range(max(1, jobs))
    ]
    for thread in threads:
        thread.start()
    # The main thread only waits, so that signals reach their handlers at once.
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    # Return only once every container and process of a stopped run is gone.
    stop.join()
    summary.stage_seconds["cells"] = time.monotonic() - started
    summary.interrupted = stop.is_set() and not fatal
    for exc in fatal:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"{results}: no space left on the device; free some space "
                "(docker system prune, .cache/) and run again: finished cells are kept"
            ) from None
        raise exc
    return summary


def _run_task(
    task: Task,
    plan: RunPlan,
    executor: Executor,
    catalog: Mapping[str, Stack],
    results: Path,
    environment_id: str,
    scen_hash: str,
    host: Machine,
    *,
    use_cache: bool,
    stop: Stop,
    user: Snapshot | None = None,
) -> RunOutcome:
    cell, repeat = task.cell, task.repeat
    reads = run_inputs(task, plan, results, executor, user)
    args = reads.args
    key = cache_key(
        environment_id=environment_id,
        scenarios=scen_hash,
        runner_args=args,
        repeat=repeat,
        executor=executor.name,
        machine=host.key,
        inputs=reads.digests,
    )
    target = run_dir(results, cell.id, repeat, task.stage)
    slot = _slot(task)
    with _cell_lock(results, cell.id, slot, stop) as locked:
        if not locked or stop.is_set():
            return RunOutcome(task=task, status="interrupted", seconds=0.0)
        _reap_stale(results, cell.id, slot, executor)
        if use_cache and cached(target, key):
            return RunOutcome(task=task, status="cached", seconds=0.0)
        meta = Meta(
            id=cell.id,
            axes=dict(cell.axes),
            executor=executor.name,
            repeat=repeat,
            environment_id=environment_id,
        ).to_json()
        staging = results / ".staging" / f"{cell.id}.{slot}.{uuid.uuid4().hex[:8]}"
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
                inputs=reads.inputs,
            )
            if stop.is_set():
                return RunOutcome(task=task, status="interrupted", seconds=run.seconds)
            reason = run.reason
            if reason is None and not (out / MANIFEST).is_file():
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
                    "machine": host.label,
                    "seconds": round(run.seconds, 3),
                    "executor": executor.name,
                    "environment_id": environment_id,
                },
                task,
            )
            return RunOutcome(task=task, status="ok", seconds=run.seconds)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def this_machine() -> Machine:
    """The host as a fingerprint would name it (containers see the same CPU)."""
    found = machine_of({"cpu": hardware.cpu_info(), "device": {"kind": "cpu"}})
    return found or Machine(
        cpu_label="unknown", cpu_model=None, cpu_family=None, flags=(), arch=None
    )


def _check_machine(results: Path, label: str) -> None:
    """Refuse a results directory that holds another machine's runs: they
    would be overwritten, and results from two hosts belong side by side
    (``nox -s report -- DIR_A DIR_B`` merges them with the machine as an axis)."""
    try:
        children = [c for c in results.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:
        return
    for child in children:
        record = read_record(child)
        other = record.get("machine") if record else None
        if isinstance(other, str) and other != label:
            raise SpecError(
                f"{results} holds runs made on machine {other!a} (this is {label}); give "
                "--results another directory, then merge both with `nox -s report -- DIR DIR`"
            )


def _reap_stale(results: Path, cell_id: str, repeat: int | str, executor: Executor) -> None:
    """Staging directories of this (cell, repeat) that no live scheduler owns
    (we hold its lock): a killed scheduler's. Stop what it left running."""
    root = results / ".staging"
    if not root.is_dir():
        return
    for stale in root.glob(f"{_glob_escape(cell_id)}.{repeat}.*"):
        with contextlib.suppress(Exception):
            executor.reap(stale)
        shutil.rmtree(stale, ignore_errors=True)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _install(artifact: Path, target: Path) -> None:
    """Move an artifact into its run directory, manifest last.

    A stale record and manifest go first, so a crash mid-way leaves a
    directory that reads as 'not finished', never as an old or mixed result.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in (RUN_RECORD, MANIFEST):
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    shutil.rmtree(target / FILES, ignore_errors=True)
    if (artifact / FILES).is_dir():
        os.replace(artifact / FILES, target / FILES)
    for name in ARTIFACT_FILES:
        src = artifact / name
        if src.exists():
            os.replace(src, target / name)
    _fsync_dir(target)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record_failure(
    results: Path,
    task: Task,
    outcome: RunOutcome,
    executor: str,
    environment_id: str | None,
    run: CellRun | None = None,
) -> None:
    target = run_dir(results, task.cell.id, task.repeat, task.stage)
    target.mkdir(parents=True, exist_ok=True)
    # A failed run replaces whatever was there: an old success would
    # otherwise be reported as this run's result.
    for name in (RUN_RECORD, *ARTIFACT_FILES):
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    shutil.rmtree(target / FILES, ignore_errors=True)
    if run is not None and run.output_tail:
        atomic_write(target / "log.txt", run.output_tail + "\n")
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
        "stage": task.stage,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **data,
    }
    atomic_write(target / RUN_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _cell_lock(results: Path, cell_id: str, repeat: int | str, stop: Stop) -> Iterator[bool]:
    """Hold the (cell, repeat) lock; yields False when a stop came first.

    Polled rather than blocking, so that a stop request is seen while another
    scheduler runs this cell."""
    locks = results / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{cell_id}.{repeat}.lock", "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop.wait(0.2):
                    yield False
                    return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
