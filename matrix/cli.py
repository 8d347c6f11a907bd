"""``python -m matrix``: the entry point behind every nox session.

Subcommands: run (``nox -s matrix``), report, images, base-image, lock.
User-caused failures are :class:`MatrixError`: printed here as one line with
their own exit code, never a traceback. Ctrl-C (or SIGTERM) during a run
stops its cells, keeps what finished and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

from matrix.analysis.drift import GATE_CLASSES, gate_class
from matrix.console import RunProgress, build_log, console, output
from matrix.errors import INTERRUPTED, BuildError, CellsFailed, EngineError, MatrixError, SpecError
from matrix.execute.executors.base import Executor
from matrix.execute.scheduler import RunSummary, Stop, execute, run_dir
from matrix.paths import DEFAULT_SPEC
from matrix.plan.cells import parse_shard
from matrix.plan.spec import EXECUTORS, check_name, load_spec
from matrix.plan.stacks import Stack, load_catalog
from matrix.plan.tasks import RunPlan, make_plan
from matrix.user.check import UserRun, check_user

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        # A path or a cell id may hold characters the terminal's encoding
        # cannot: printed escaped, never a UnicodeEncodeError mid-report.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        return _dispatch(args)
    except MatrixError as exc:
        console.error(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        console.line("interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        # `... --list-json | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return 0


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in {"-h", "--help"}:
        output.line(
            "usage: python -m matrix {run,report,images,base-image,lock} [options]\n"
            "  run         plan, build, run and report a matrix (nox -s matrix)\n"
            "  report      compare artifact directories and render the report (nox -s report)\n"
            "  images      build the Docker images a spec needs (nox -s images)\n"
            "  base-image  bootstrap the local Debian base image (nox -s base-image)\n"
            "  lock        regenerate docker/locks from matrix/stacks.toml (nox -s lock)"
        )
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        return cmd_run(rest)
    if command == "report":
        from matrix.report.command import report_command

        return report_command(rest)
    if command == "images":
        return cmd_images(rest)
    if command == "base-image":
        from matrix.environments.base_image import base_image_command

        return base_image_command(rest)
    if command == "lock":
        from matrix.environments.locks import lock_command

        return lock_command(rest)
    raise SpecError(f"unknown command {command!r}: run `python -m matrix --help`")


class _Parser(argparse.ArgumentParser):
    """argparse that raises SpecError (one line, exit 3) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise SpecError(f"{self.prog}: {message}")


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nox -s matrix --", description="Run a reproducibility matrix and report it.")
    p.add_argument(
        "--spec",
        type=Path,
        default=DEFAULT_SPEC,
        help="matrix spec (TOML); default: matrix/default.toml",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="EXPR",
        help="keep cells matching a cell-id glob or axis=glob[,axis=glob]; repeatable (OR)",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=None,
        help="where cells run; auto = docker when an engine answers, else venv",
    )
    p.add_argument(
        "--engine",
        choices=("docker", "podman"),
        default=None,
        help="container engine for --executor docker (default: $KRM_ENGINE or docker)",
    )
    p.add_argument(
        "--base",
        default=None,
        help="base image for the environment images (default: python:3.11-slim when it can "
        "be pulled, else the local Debian bootstrap; also $KRM_BASE_IMAGE)",
    )
    _registry_options(p)
    p.add_argument(
        "--build-mode",
        choices=("wheelhouse", "index"),
        default="wheelhouse",
        help="wheelhouse: the host downloads the locked wheels, builds need no network "
        "(default); index: builds fetch from the package index",
    )
    p.add_argument(
        "--python", default=None, help="interpreter for --executor host (default: python3 on PATH)"
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="cells in parallel (default: from cores and memory)"
    )
    p.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (1-based)")
    p.add_argument(
        "--environment",
        default=None,
        metavar="STACK.TARGET",
        help="run only the cells of one environment (one CI job each: see --list-json)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="fresh runs per cell (default: the spec's, 2)"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results directory (default: results/<spec name>)",
    )
    p.add_argument(
        "--reference", default=None, help="reference cell id (default: the spec's, or the first)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (cells, images, cache) and stop"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="run every cell even if its artifact is current"
    )
    p.add_argument(
        "--fail-on",
        choices=[c.value for c in GATE_CLASSES],
        default=None,
        help="exit 1 when any comparison is at or beyond this drift class",
    )
    p.add_argument(
        "--list-json", action="store_true", help="print the cells as JSON for a CI matrix and stop"
    )
    p.add_argument("--no-report", action="store_true", help="run cells only; render nothing")
    _user_options(p)
    return p


def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        default=None,
        metavar="REPO",
        help="look for content-tagged images in this repository before building "
        "(e.g. ghcr.io/OWNER/krm; also $KRM_REGISTRY)",
    )
    p.add_argument(
        "--push", action="store_true", help="push the images this run builds or uses to --registry"
    )


def _apply_image_options(opts: argparse.Namespace) -> None:
    """The image options, where every image build reads them."""
    if opts.base:
        os.environ["KRM_BASE_IMAGE"] = opts.base
    if opts.registry:
        os.environ["KRM_REGISTRY"] = opts.registry
    if opts.push:
        if not (opts.registry or os.environ.get("KRM_REGISTRY")):
            raise SpecError("--push needs --registry (or $KRM_REGISTRY)")
        os.environ["KRM_PUSH"] = "1"
    from matrix.environments.images import registry_settings

    registry_settings()  # a malformed --registry is refused before any work


def _user_options(p: argparse.ArgumentParser) -> None:
    """Your own model (or scenario module) in every cell, instead of the built-in scenarios."""
    g = p.add_argument_group("your model (instead of the built-in scenarios)")
    g.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="a .keras or .h5 file, a .weights.h5 file (with --builder) or a SavedModel directory",
    )
    g.add_argument(
        "--builder",
        type=Path,
        metavar="PY",
        help="with a .weights.h5 --model: a module whose build() (or build(keras)) returns "
        "the model",
    )
    g.add_argument(
        "--inputs",
        type=Path,
        metavar="X.npz",
        help="the inputs every cell predicts: one array, or one per model input named after it",
    )
    g.add_argument(
        "--targets", type=Path, metavar="Y.npz", help="training targets (with --train-steps)"
    )
    g.add_argument(
        "--train-steps",
        type=int,
        metavar="N",
        help="also train N batches with SGD (learning rate 0.01) from the given weights",
    )
    g.add_argument(
        "--loss",
        default=None,
        help="the training loss (default: the model's own compiled loss where the file names "
        "one, else mse)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="predict and training batch size (default 32, or the batch the model fixes)",
    )
    g.add_argument(
        "--scenario",
        type=Path,
        metavar="PATH.py",
        help="a module defining a scenario with @scenario(...): its own model, data and steps",
    )


def _user_run(opts: argparse.Namespace) -> UserRun | None:
    return check_user(
        model=opts.model,
        builder=opts.builder,
        inputs=opts.inputs,
        targets=opts.targets,
        scenario=opts.scenario,
        train_steps=opts.train_steps,
        loss=opts.loss,
        batch_size=opts.batch_size,
    )


def default_jobs() -> int:
    """One TensorFlow process needs ~1 GiB and is happiest with a core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 4.0
    return max(1, min(cores or 1, int(mem_gib // 2)))


def cmd_run(argv: list[str]) -> int:
    opts = _run_parser().parse_args(argv)
    gate_class(opts.fail_on)  # every choice is checked before any work
    if opts.jobs is not None and not 1 <= opts.jobs <= 256:
        raise SpecError("--jobs must be from 1 to 256")
    # The user's files, before any image or venv is built (exit 12).
    user = _user_run(opts)
    catalog = load_catalog()
    spec = load_spec(opts.spec, catalog)
    shard_spec = parse_shard(opts.shard) if opts.shard else None
    plan = make_plan(
        spec,
        catalog,
        only=opts.only,
        shard_spec=shard_spec,
        repeats=opts.repeats,
        reference=opts.reference,
        environment=opts.environment,
        user=user,
    )
    if opts.list_json:
        # ensure_ascii: every string an ASCII escape, whatever the spec held.
        sys.stdout.write(json.dumps(list_json(plan), indent=None) + "\n")
        return 0
    if plan.reference_note:
        console.notice(plan.reference_note)
    for note in user.notes if user is not None else ():
        console.notice(note)

    name = spec.name if user is None else _user_results_name(spec.name, user)
    results = opts.results or _default_results(name, shard_spec, opts.environment)
    _check_results_dir(results)
    if opts.engine:
        from matrix.environments.engine import select_engine

        select_engine(opts.engine)
    _apply_image_options(opts)
    executor_name = opts.executor or spec.executor
    if opts.dry_run:
        if executor_name == "auto":
            executor_name = "docker" if _engine_answers() else "venv"
        return _dry_run(plan, executor_name, results, catalog)

    executor = select_executor(executor_name, opts.python, build_mode=opts.build_mode)
    jobs = opts.jobs or default_jobs()
    console.line(
        (spec.name, "bold"),
        f": {len(plan.cells)} cells x {plan.repeats} repeats in {len(plan.environments)} "
        f"environments, executor {executor.name}, {jobs} jobs -> {results}",
    )
    started = time.monotonic()
    runs = len(plan.tasks) + len(plan.stage_two_tasks)
    progress = RunProgress(out=console, images=len(plan.environments), runs=runs, jobs=jobs)
    stop = Stop()
    with _signals_stop(stop), console.live(progress.status):
        try:
            summary = execute(
                plan,
                executor,
                catalog,
                results,
                jobs=jobs,
                use_cache=not opts.no_cache,
                progress=progress,
                stop=stop,
            )
        except KeyboardInterrupt:
            # A second Ctrl-C: leave at once, but not with containers running.
            stop.request()
            stop.join(30)
            raise
    stages = dict(summary.stage_seconds)
    console.line(
        f"runs: {summary.count('ok')} ran, {summary.count('cached')} reused from the cache, "
        f"{summary.count('failed')} failed"
    )
    if summary.interrupted:
        console.line("interrupted: finished runs are kept; run the same command again to resume")
        return INTERRUPTED

    error: MatrixError | None = None
    if not opts.no_report:
        t0 = time.monotonic()
        from matrix.analysis.gate import Problem
        from matrix.report.command import build_report

        out = results / "report"
        build_problems = [
            Problem(kind="build", message=f"environment {name}: {reason}")
            for name, reason in summary.build_errors.items()
        ]
        # The reference comes from plan.json, so the report names its source.
        report = build_report(
            [results],
            out,
            reference=None,
            fail_on=opts.fail_on,
            tolerances=spec.tolerances or None,
            problems=build_problems,
        )
        stages["report"] = time.monotonic() - t0
        console.line(f"report: {out / 'index.html'} ({out / 'report.md'})")
        error = report.error
    stages["total"] = time.monotonic() - started
    console.line("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    _write_timings(results, stages, summary)
    if error is not None:
        raise error
    _raise_for_runs(summary, results)
    return 0


#: What the last run of a results directory cost, stage by stage (bench_cold reads it).
TIMINGS = "timings.json"


def _write_timings(results: Path, stages: dict[str, float], summary: RunSummary) -> None:
    """The wall time of each stage (they overlap: images build while cells
    run) and of each environment, beside the results."""
    from matrix.execute.planfile import atomic_write

    data = {
        "stages": {k: round(v, 3) for k, v in stages.items()},
        "environments": {
            name: {"seconds": round(seconds, 3), "built": built}
            for name, (seconds, built) in summary.environments.items()
        },
        "runs": {
            status: summary.count(status) for status in ("ok", "cached", "failed", "interrupted")
        },
        "run_seconds": round(sum(o.seconds for o in summary.outcomes if o.status == "ok"), 3),
    }
    with contextlib.suppress(OSError):  # a timing record is never worth failing a run
        atomic_write(results / TIMINGS, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _raise_for_runs(summary: RunSummary, results: Path) -> None:
    """Without a report (--no-report, or a report that found nothing wrong):
    an environment that could not be built is exit 5, failed runs exit 10."""
    if summary.build_errors:
        name, reason = next(iter(summary.build_errors.items()))
        more = len(summary.build_errors) - 1
        raise BuildError(
            f"environment {name} could not be built: {reason}"
            + (f" (+{more} more)" if more else "")
        )
    if summary.failed:
        first = summary.failed[0]
        raise CellsFailed(
            f"{len(summary.failed)} run(s) failed, e.g. {first.task.cell.id} r{first.task.repeat}: "
            f"{first.reason} "
            f"(see {run_dir(results, first.task.cell.id, first.task.repeat, first.task.stage)})"
        )


@contextmanager
def _signals_stop(stop: Stop) -> Iterator[None]:
    """SIGINT and SIGTERM ask the run to stop (finished cells are kept); a
    second one interrupts at once."""
    if sys.platform == "win32":  # pragma: no cover - the matrix needs POSIX
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        console.line(("stopping: ", "bold"), "ending running cells; finished cells are kept")
        stop.request()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _check_results_dir(results: Path) -> None:
    if results.exists() and not results.is_dir():
        raise SpecError(f"--results {results}: exists and is not a directory")


def _user_results_name(spec_name: str, user: UserRun) -> str:
    """``<spec>-<model or module stem>``: your runs do not replace the built-in ones."""
    label = re.sub(r"[^A-Za-z0-9._-]", "-", user.label).strip(".-") or "user"
    return f"{spec_name}-{label}"[:64]


def _default_results(
    name: str, shard_spec: tuple[int, int] | None, environment: str | None = None
) -> Path:
    check_name(name, "the spec's name")
    base = Path("results") / name
    if environment is not None:
        return base.with_name(f"{name}-{check_name(environment, '--environment')}")
    return (
        base.with_name(f"{name}-shard-{shard_spec[0]}-of-{shard_spec[1]}") if shard_spec else base
    )


def list_json(plan: RunPlan) -> dict[str, list[dict[str, object]]]:
    """The plan as a CI matrix's ``include`` list (GitHub Actions ``fromJSON``,
    GitLab ``parallel:matrix``, a Kubernetes indexed Job, a Slurm array): one
    job per environment, which builds (or pulls) its image once and runs all
    of its cells. Every job writes the same plan.json, so the merged
    directories report exactly as one unsharded run."""
    jobs: dict[str, dict[str, object]] = {}
    for cell in plan.cells:
        job = jobs.setdefault(
            cell.environment,
            {"environment": cell.environment, "stack": cell.stack, "target": cell.target,
             "gpu": False, "cells": 0, "runs": 0},
        )  # fmt: skip
        job["gpu"] = bool(job["gpu"]) or cell.gpu
        job["cells"] = int(job["cells"]) + 1  # type: ignore[call-overload]
        job["runs"] = int(job["runs"]) + plan.repeats  # type: ignore[call-overload]
    return {"include": list(jobs.values())}


def _dry_run(plan: RunPlan, executor_name: str, results: Path, catalog: dict[str, Stack]) -> int:
    output.line(
        (plan.spec.name, "bold"),
        f" ({plan.spec.path}): {len(plan.cells)} cells, {plan.repeats} repeats, "
        f"reference {plan.reference}, executor {executor_name}",
    )
    output.line(f"scenarios: {', '.join(plan.scenarios)}")
    if plan.stage_two:
        output.line(f"stage two: {', '.join(plan.stage_two)}, once per cell after stage one")
    if plan.user is not None:
        for item in plan.user.files:
            flag = item.option.removeprefix("user_")
            output.line(f"  --{flag}: {item.given} (read as {item.name})")
    output.line("environments:")
    for stack_name, target in plan.environments:
        state = _environment_state(catalog[stack_name], target, executor_name)
        output.line(f"  {stack_name}.{target}: {state}")
    output.line(f"cells ({results}):")
    for cell in plan.cells:
        output.line(
            f"  {cell.id}  ", (f"previous: {_previous(results, cell.id, plan.repeats)}", "dim")
        )
    return 0


def _previous(results: Path, cell_id: str, repeats: int) -> str:
    """What earlier runs left for each repeat: ``none, ok`` (or counts, for many repeats)."""
    from matrix.execute.cache import read_record

    if not (results / cell_id).is_dir():  # nothing ran: skip a stat per repeat
        states = ["none"] * repeats
    else:
        states = []
        for r in range(repeats):
            record = read_record(run_dir(results, cell_id, r))
            status = None if record is None else record.get("status")
            # A record is data anyone could have written: only its known states are shown.
            states.append(status if status in _RUN_STATES else "none" if record is None else "?")
    if repeats <= 4:
        return ", ".join(states)
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    return ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {repeats} repeats)"


#: What a run record's status can be (see execute/scheduler.py).
_RUN_STATES = ("ok", "failed")


def _environment_state(stack: Stack, target: str, executor_name: str) -> str:
    """Best-effort: would this environment be built? Never fails the dry run."""
    try:
        if executor_name == "docker":
            from matrix.environments.images import planned_image

            return planned_image(stack, target)
        if executor_name == "venv":
            from matrix.environments.venvs import venv_dir

            return (
                "venv ready"
                if (venv_dir(stack, target) / "bin" / "python").exists()
                else "venv to build"
            )
        return "host interpreter"
    except MatrixError as exc:
        return f"unknown ({exc.message})"


def _engine_answers() -> bool:
    from matrix.environments.engine import check_engine

    try:
        check_engine()
    except EngineError:
        return False
    return True


def select_executor(
    name: str, python: str | None = None, *, build_mode: str = "wheelhouse"
) -> Executor:
    if name == "host":
        from matrix.execute.executors.host import HostExecutor

        return HostExecutor(python or "python3")
    if name == "venv":
        from matrix.execute.executors.venv import VenvExecutor

        return VenvExecutor()
    from matrix.environments.engine import check_engine

    try:
        check_engine()
    except EngineError as exc:
        if name == "docker":
            raise
        console.notice(f"{exc.message.split(':')[0]}; falling back to --executor venv")
        from matrix.execute.executors.venv import VenvExecutor

        return VenvExecutor()
    from matrix.execute.executors.docker import DockerExecutor

    return DockerExecutor(mode=build_mode, log=build_log)


def cmd_images(argv: list[str]) -> int:
    p = _Parser(prog="nox -s images --", description="Build the Docker images a spec needs.")
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--only", action="append", default=[])
    p.add_argument("--engine", choices=("docker", "podman"), default=None)
    p.add_argument("--base", default=None, help="base image (default: see nox -s matrix)")
    _registry_options(p)
    opts = p.parse_args(argv)
    _apply_image_options(opts)
    catalog = load_catalog()
    plan = make_plan(load_spec(opts.spec, catalog), catalog, only=opts.only)
    from matrix.environments.engine import check_engine, select_engine
    from matrix.execute.executors.base import Environment
    from matrix.execute.executors.docker import DockerExecutor

    if opts.engine:
        select_engine(opts.engine)
    check_engine()
    executor = DockerExecutor(log=build_log)
    for stack_name, target in plan.environments:
        env = Environment(stack=catalog[stack_name], target=target)
        t0 = time.monotonic()
        image = executor.prepare(env)
        state = "built" if image.built else "ready"
        output.line(f"{env.name}: {image.id} {state} ({time.monotonic() - t0:.1f}s)")
    return 0
