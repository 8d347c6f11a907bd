"""`python -m scenarios --out DIR [options]`: one cell, one artifact.

Exit codes: 0 an artifact was written (even if scenarios failed), 2 bad
arguments, 3 an --out that is refused, 4 the artifact could not be written.
Every refusal is one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

from scenarios.contract import EXECUTORS, OPTIONS, Meta, register_module, registry, setting_axes
from scenarios.settings import (
    SettingsError,
    apply_environment,
    backend_hint,
    parse_settings,
    resolve_scenarios,
)

__all__ = [
    "EXIT_BAD_ARGS",
    "EXIT_OUT_REFUSED",
    "EXIT_WRITE_FAILED",
    "build_parser",
    "main",
    "parse_meta",
]

EXIT_BAD_ARGS = 2
EXIT_OUT_REFUSED = 3
EXIT_WRITE_FAILED = 4


_METAVARS = {"count": "N", "scenarios": "A,B", "scenario": "SCENARIO", "path": "PATH",
             "sources": "JSON"}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not usage + message: the host logs it as the cell's reason.
        self.exit(EXIT_BAD_ARGS, f"scenarios: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m scenarios",
        description="Run the standard Keras reproducibility scenarios in this environment and "
        "write one cell artifact (manifest.json, tensors.npz, log.txt).",
        epilog="Flags override the same keys given in --settings. Exit codes: 0 artifact written "
        "(scenario failures are recorded in it), 2 bad arguments, 3 --out refused, "
        "4 artifact could not be written.",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="artifact directory to create (written atomically via a temporary sibling)",
    )
    # One flag per setting axis and per run option, from the contract.
    for axis in setting_axes():
        p.add_argument(
            axis.option,
            dest=axis.name,
            type=int if axis.runner == "count" else str,
            choices=axis.choices or None,
            metavar="|".join(axis.choices) if axis.choices else "N",
            help=f"{axis.help} (default {axis.default})",
        )
    for option in OPTIONS:
        if option.kind == "flag":
            p.add_argument(
                option.option, dest=option.name, action="store_const", const=True, help=option.help
            )
        else:
            p.add_argument(
                option.option,
                dest=option.name,
                type=int if option.kind == "count" else str,
                choices=option.choices or None,
                metavar="|".join(option.choices) if option.choices else _METAVARS[option.kind],
                help=f"{option.help} (default {option.default})"
                if option.default is not None
                else option.help,
            )
    p.add_argument(
        "--settings",
        metavar="JSON",
        help="settings as a JSON object with the keys above (underscores for dashes)",
    )
    p.add_argument(
        "--meta",
        metavar="JSON",
        help='the cell as the host names it: {"id", "axes", "executor", "repeat", '
        '"environment_id"} (default id "local", executor "manual")',
    )
    p.add_argument(
        "--force", action="store_true", help="replace an --out that already holds an artifact"
    )
    return p


def parse_meta(text: str | None) -> Meta:
    if not text:
        return Meta()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"--meta is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError("--meta must be a JSON object")
    unknown = set(raw) - {"id", "axes", "executor", "repeat", "environment_id"}
    if unknown:
        raise SettingsError(f"--meta: unknown keys {', '.join(sorted(unknown))}")
    executor = raw.get("executor", "manual")
    if executor not in EXECUTORS:
        raise SettingsError(
            f"--meta executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}"
        )
    axes = raw.get("axes", {})
    if not isinstance(axes, dict) or not all(
        isinstance(v, (str, int, bool)) for v in axes.values()
    ):
        raise SettingsError("--meta axes: expected an object of strings, integers or booleans")
    repeat = raw.get("repeat", 0)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
        raise SettingsError("--meta repeat: expected an integer >= 0")
    cell_id = raw.get("id", "local")
    if not isinstance(cell_id, str) or not cell_id:
        raise SettingsError("--meta id: expected a non-empty string")
    env_id = raw.get("environment_id")
    if env_id is not None and not isinstance(env_id, str):
        raise SettingsError("--meta environment_id: expected a string or null")
    return Meta(id=cell_id, axes=axes, executor=executor, repeat=repeat, environment_id=env_id)


def _refuse(code: int, message: str) -> int:
    print(f"scenarios: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
    args = build_parser().parse_args(argv)
    names = [a.name for a in setting_axes()] + [o.name for o in OPTIONS]
    overrides = {name: getattr(args, name) for name in names}
    try:
        settings = parse_settings(args.settings, overrides)
        meta = parse_meta(args.meta)
    except SettingsError as exc:
        return _refuse(EXIT_BAD_ARGS, str(exc))

    # Before NumPy's BLAS or any framework loads: they read these once.
    env_changes = apply_environment(settings, backend_hint())
    try:
        # The scenario modules load NumPy (no framework): only now.
        known = registry()
        if settings.user_scenario:
            # The user's module may import a framework: only after the environment is set.
            register_module(settings.user_scenario, settings.scenarios or ())
            known = registry()
        settings = resolve_scenarios(settings, known)
    except SettingsError as exc:
        return _refuse(EXIT_BAD_ARGS, str(exc))

    from scenarios.artifact import ArtifactError, check_out_dir, write_artifact
    from scenarios.logtee import LogTee
    from scenarios.runner import finish, run_cell

    out = args.out.resolve()
    try:
        check_out_dir(out, force=args.force)
    except ArtifactError as exc:
        return _refuse(EXIT_OUT_REFUSED, str(exc))

    # Files the scenarios save (models) go beside --out first, into the
    # artifact with the rest when it is written.
    files = out.parent / f".{out.name}.files-{os.getpid()}"
    try:
        with LogTee() as tee:
            result = run_cell(
                settings=settings,
                meta=meta,
                env_changes=env_changes,
                started_at=started_at,
                t_start=t_start,
                files=files,
            )
            summary = ", ".join(
                f"{k}={v['status']}" for k, v in result.manifest["scenarios"].items()
            )
            print(f"scenarios: {summary}; total {result.manifest['timings']['total']:.1f}s")
        finish(result, tee.text())
        write_artifact(
            out,
            store=result.store,
            manifest=result.manifest,
            log=tee.text(),
            force=args.force,
            files=files if files.is_dir() else None,
        )
    except ArtifactError as exc:
        return _refuse(EXIT_OUT_REFUSED, str(exc))
    except OSError as exc:
        return _refuse(EXIT_WRITE_FAILED, f"cannot write the artifact to {out}: {exc}")
    finally:
        shutil.rmtree(files, ignore_errors=True)
    return 0
