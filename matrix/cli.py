"""``python -m matrix``: the entry point behind every nox session.

Subcommands: run (``nox -s matrix``), report, images, base-image, lock.
User-caused failures are :class:`MatrixError`: printed here as one line with
their own exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from matrix.cells import parse_shard
from matrix.errors import CellsFailed, EngineError, MatrixError, SpecError
from matrix.executors.base import Executor
from matrix.run import Plan, execute, make_plan, run_dir
from matrix.spec import load_spec
from matrix.stacks import Stack, load_catalog

__all__ = ["main"]

DEFAULT_SPEC = Path(__file__).resolve().parent / "default.toml"
DRIFT_CLASSES = ("identical", "rounding", "drift", "divergent", "failed", "missing")

console = Console(stderr=True, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except MatrixError as exc:
        console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except BrokenPipeError:
        # `... --list-json | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return 0


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in {"-h", "--help"}:
        console.print(
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
        from matrix.report import report_command

        return report_command(rest)
    if command == "images":
        return cmd_images(rest)
    if command == "base-image":
        return cmd_base_image(rest)
    if command == "lock":
        from matrix.lock import lock_command

        return lock_command(rest)
    raise SpecError(f"unknown command {command!r}: run `python -m matrix --help`")


class _Parser(argparse.ArgumentParser):
    """argparse that raises SpecError (one line, exit 3) instead of exiting 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
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
        choices=("auto", "docker", "venv", "host"),
        default=None,
        help="where cells run; auto = docker when an engine answers, else venv",
    )
    p.add_argument(
        "--python", default=None, help="interpreter for --executor host (default: python3 on PATH)"
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="cells in parallel (default: from cores and memory)"
    )
    p.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (1-based)")
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
        choices=DRIFT_CLASSES,
        default=None,
        help="exit 1 when any comparison is at or beyond this drift class",
    )
    p.add_argument(
        "--list-json", action="store_true", help="print the cells as JSON for a CI matrix and stop"
    )
    p.add_argument("--no-report", action="store_true", help="run cells only; render nothing")
    return p


def default_jobs() -> int:
    """One TensorFlow process needs ~1 GiB and is happiest with a core."""
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 4.0
    return max(1, min(cores, int(mem_gib // 2)))


def cmd_run(argv: list[str]) -> int:
    opts = _run_parser().parse_args(argv)
    catalog = load_catalog()
    spec = load_spec(opts.spec, catalog)
    if opts.repeats is not None and opts.repeats < 1:
        raise SpecError("--repeats must be at least 1")
    if opts.jobs is not None and opts.jobs < 1:
        raise SpecError("--jobs must be at least 1")
    shard_spec = parse_shard(opts.shard) if opts.shard else None
    plan = make_plan(
        spec,
        catalog,
        only=opts.only,
        shard_spec=shard_spec,
        repeats=opts.repeats,
        reference=opts.reference,
    )

    if opts.list_json:
        print(json.dumps(list_json(plan), indent=None))
        return 0

    results = opts.results or _default_results(spec.name, shard_spec)
    executor_name = opts.executor or spec.executor
    if opts.dry_run:
        if executor_name == "auto":
            executor_name = "docker" if _engine_answers() else "venv"
        return _dry_run(plan, executor_name, results)

    executor = select_executor(executor_name, opts.python)
    jobs = opts.jobs or default_jobs()
    console.print(
        f"[bold]{spec.name}[/]: {len(plan.cells)} cells x {plan.repeats} repeats "
        f"in {len(plan.environments)} environments, executor {executor.name}, "
        f"{jobs} jobs -> {results}"
    )
    started = time.monotonic()
    terminate = getattr(executor, "terminate_all", None)
    from matrix.executors.process import terminate_all

    def stop_all() -> None:
        terminate_all()
        if terminate is not None:
            terminate()

    summary = execute(
        plan,
        executor,
        catalog,
        results,
        jobs=jobs,
        use_cache=not opts.no_cache,
        progress=_progress,
        terminate=stop_all,
    )
    stages = dict(summary.stage_seconds)
    console.print(
        f"cells: {summary.count('ok')} ran, {summary.count('cached')} cached, "
        f"{summary.count('failed')} failed"
    )
    if summary.interrupted:
        console.print("interrupted: run the same command again to resume")
        return 130

    if not opts.no_report:
        t0 = time.monotonic()
        from matrix.report import build_report

        out = results / "report"
        # The reference comes from plan.json, so the report names its source.
        report = build_report(
            [results], out, reference=None, fail_on=opts.fail_on, tolerances=spec.tolerances or None
        )
        stages["report"] = time.monotonic() - t0
        console.print(f"report: {out / 'index.html'} ({out / 'report.md'})")
        error = report.error
    else:
        error = None
    stages["total"] = time.monotonic() - started
    console.print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    if error is not None:
        raise error
    if summary.failed:
        first = summary.failed[0]
        raise CellsFailed(
            f"{len(summary.failed)} run(s) failed, e.g. {first.task.cell.id} r{first.task.repeat}: "
            f"{first.reason} (see {results / first.task.cell.id / 'run.json'})"
        )
    return 0


def _progress(kind: str, message: str) -> None:
    style = {"ok": "green", "cached": "dim", "failed": "red", "build": "cyan", "stage": "bold"}.get(
        kind, ""
    )
    console.print(
        f"[{style}]{kind:>7}[/] {message}" if style else f"{kind:>7} {message}", soft_wrap=True
    )


def _default_results(name: str, shard_spec: tuple[int, int] | None) -> Path:
    base = Path("results") / name
    return (
        base.with_name(f"{name}-shard-{shard_spec[0]}-of-{shard_spec[1]}") if shard_spec else base
    )


def list_json(plan: Plan) -> dict[str, list[dict[str, object]]]:
    """Cells as a GitHub Actions ``matrix.include`` (also fine for GitLab or
    a Kubernetes indexed Job): one job per cell, GPU cells flagged."""
    # Each job runs its cell as shard k/N of the same matrix (round-robin
    # sharding over N cells gives one cell per shard), so every job writes
    # the same plan.json and the merged report equals an unsharded run.
    n = len(plan.cells)
    return {
        "include": [
            {
                "cell": c.id,
                "shard": f"{k}/{n}",
                "environment": c.environment,
                "gpu": c.gpu,
                **c.axes,
            }
            for k, c in enumerate(plan.cells, start=1)
        ]
    }


def _dry_run(plan: Plan, executor_name: str, results: Path) -> int:
    from matrix.cache import read_record

    out = Console(highlight=False, soft_wrap=True)
    out.print(
        f"[bold]{plan.spec.name}[/] ({plan.spec.path}): {len(plan.cells)} cells, "
        f"{plan.repeats} repeats, reference {plan.reference}, executor {executor_name}"
    )
    out.print("environments:")
    catalog = load_catalog()
    for stack_name, target in plan.environments:
        state = _environment_state(catalog[stack_name], target, executor_name)
        out.print(f"  {stack_name}.{target}: {state}")
    out.print(f"cells ({results}):")
    for cell in plan.cells:
        states = []
        for r in range(plan.repeats):
            record = read_record(run_dir(results, cell.id, r))
            states.append("none" if record is None else str(record.get("status")))
        out.print(f"  {cell.id}  [dim]previous: {', '.join(states)}[/]")
    return 0


def _environment_state(stack: Stack, target: str, executor_name: str) -> str:
    """Best-effort: would this environment be built? Never fails the dry run."""
    try:
        if executor_name == "docker":
            from matrix.images import planned_image

            return planned_image(stack, target)
        if executor_name == "venv":
            from matrix.venvs import venv_dir

            return (
                "venv ready"
                if (venv_dir(stack, target) / "bin" / "python").exists()
                else "venv to build"
            )
        return "host interpreter"
    except MatrixError as exc:
        return f"unknown ({exc.message})"


def _engine_answers() -> bool:
    from matrix.engine import check_engine

    try:
        check_engine()
    except EngineError:
        return False
    return True


def select_executor(name: str, python: str | None = None) -> Executor:
    if name == "host":
        from matrix.executors.host import HostExecutor

        return HostExecutor(python or "python3")
    if name == "venv":
        from matrix.executors.venv import VenvExecutor

        return VenvExecutor()
    from matrix.engine import check_engine

    try:
        check_engine()
    except EngineError as exc:
        if name == "docker":
            raise
        console.print(
            f"[yellow]notice:[/] {exc.message.split(':')[0]}; falling back to --executor venv"
        )
        from matrix.executors.venv import VenvExecutor

        return VenvExecutor()
    from matrix.executors.docker import DockerExecutor

    return DockerExecutor(log=_build_log)


def _build_log(message: str) -> None:
    console.print(f"[cyan]  build[/] {message}", soft_wrap=True)


def cmd_images(argv: list[str]) -> int:
    p = _Parser(prog="nox -s images --", description="Build the Docker images a spec needs.")
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--only", action="append", default=[])
    opts = p.parse_args(argv)
    catalog = load_catalog()
    plan = make_plan(load_spec(opts.spec, catalog), catalog, only=opts.only)
    from matrix.engine import check_engine
    from matrix.executors.base import Environment
    from matrix.executors.docker import DockerExecutor

    check_engine()
    executor = DockerExecutor(log=_build_log)
    for stack_name, target in plan.environments:
        env = Environment(stack=catalog[stack_name], target=target)
        t0 = time.monotonic()
        image = executor.prepare(env)
        console.print(f"{env.name}: {image} ({time.monotonic() - t0:.1f}s)")
    return 0


def cmd_base_image(argv: list[str]) -> int:
    from matrix.base_image import base_image_command

    return base_image_command(argv)
