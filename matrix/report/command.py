"""``matrix report``: results directories in, report.json/md/html + junit.xml out.

The chain, top to bottom: discover the cells of one or more results
directories (shards, machines) -> load each artifact (a corrupt one becomes
a failed cell) -> choose the reference cell -> build the findings -> render
them four ways -> an exit code from the gate.

Two entry points: :func:`report_command` for ``python -m matrix report`` and
``nox -s report``, and :func:`build_report` for the scheduler at the end of
``nox -s matrix``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from matrix.analysis.drift import (
    DEFAULT_THRESHOLDS,
    GATE_CLASSES,
    DriftClass,
    Thresholds,
    apply_overrides,
    parse_tolerance_option,
)
from matrix.analysis.findings import Findings, ReferenceChoice, build_findings
from matrix.analysis.gate import Problem, exit_error, gate_class
from matrix.console import output
from matrix.errors import DiskFullError, MatrixError, ResultsError, SpecError
from matrix.report.render_html import render_html
from matrix.report.render_json import render_json
from matrix.report.render_junit import render_junit
from matrix.report.render_markdown import render_markdown
from matrix.results.artifacts import CellArtifact, load_cell_safely
from matrix.results.discovery import discover_results
from matrix.results.merge import Loaded, merge_cells, merged_axes, qualify
from matrix.untrusted import shown_path
from scenarios.contract import MANIFEST, RUN_RECORD

__all__ = [
    "OUTPUT_FILES",
    "ReportSummary",
    "build_report",
    "check_out_dir",
    "make_findings",
    "report_command",
    "write_outputs",
]

OUTPUT_FILES = ("report.json", "report.md", "index.html", "junit.xml")


@dataclass(frozen=True, kw_only=True)
class ReportSummary:
    """What a caller needs after a report: where it is, what it found, how to exit."""

    out_dir: Path
    files: tuple[Path, ...]
    reference: str | None
    cells: int
    by_class: Mapping[str, int]  # vs the reference cell, per phase comparison
    failed_cells: tuple[str, ...]
    missing_cells: tuple[str, ...]
    problems: tuple[str, ...]
    exit_code: int
    outcome: str  # one line: "ok" or why the exit code is not 0
    error: MatrixError | None  # the error the exit code stands for
    findings: Findings


def make_findings(
    results_dirs: Sequence[Path],
    *,
    reference: str | None = None,
    fail_on: DriftClass | str | None = None,
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    generated_at: str | None = None,
    skip: Sequence[Path] = (),
    problems: Sequence[Problem] = (),
) -> Findings:
    """Load the results and return the findings (report.json's content)."""
    gate = fail_on if isinstance(fail_on, DriftClass) or fail_on is None else gate_class(fail_on)
    if gate is not None and gate not in GATE_CLASSES:
        raise SpecError(f"--fail-on {gate.value!r}: expected one of "
                        f"{', '.join(c.value for c in GATE_CLASSES)}")  # fmt: skip
    inventory = discover_results([Path(d) for d in results_dirs], skip=skip)
    found = [*problems, *(Problem(kind=kind, message=m) for kind, m in inventory.problems)]
    overrides: dict[str, dict[str, float]] = {
        dt_: dict(v) for dt_, v in inventory.plan.tolerances.items()
    }
    for dtype, values in (tolerances or {}).items():  # the command line beats plan.json
        overrides.setdefault(dtype, {}).update(values)
    try:
        thresholds: Mapping[str, Thresholds] = apply_overrides(overrides, DEFAULT_THRESHOLDS)
    except MatrixError as exc:
        if tolerances:
            raise
        # A plan.json's tolerances are data, not the user's option: say so, use the defaults.
        found.append(
            Problem(kind="artifact", message=f"plan.json tolerances ignored: {exc.message}")
        )
        thresholds = DEFAULT_THRESHOLDS

    loaded = [
        Loaded(
            root=entry.root,
            cell=load_cell_safely(entry.directory, cell_id=entry.cell_id)
            if entry.problem is None
            else CellArtifact(
                cell_id=entry.cell_id, directory=entry.directory, problem=entry.problem
            ),
            repeats=tuple(load_cell_safely(d, cell_id=entry.cell_id) for d in entry.repeats),
            stage_two=load_cell_safely(entry.stage_two, cell_id=entry.cell_id)
            if entry.stage_two is not None and entry.problem is None
            else None,
        )
        for entry in inventory.entries
        if entry.directory is not None
    ]
    merged = merge_cells(
        loaded,
        inventory.roots,
        inventory.root_plans,
        missing_problem="planned in plan.json but absent from every results directory",
    )
    found += [Problem(kind="warning", message=m) for m in merged.problems]
    cells = list(merged.cells)
    repeats = {cid: list(runs) for cid, runs in merged.repeats.items()}
    stage_two = dict(merged.stage_two)
    plan = replace(
        inventory.plan,
        axes=merged_axes(inventory.plan.axes, merged),
        reference=qualify(inventory.plan.reference, merged),
    )
    choice = _choose_reference(cells, reference, plan.reference, found)
    return build_findings(
        cells,
        repeats,
        plan=plan,
        reference=choice,
        thresholds=thresholds,
        fail_on=gate,
        problems=found,
        generated_at=generated_at or _now(),
        stage_two=stage_two,
    )


def _choose_reference(
    cells: Sequence[CellArtifact],
    requested: str | None,
    planned: str | None,
    problems: list[Problem],
) -> ReferenceChoice:
    """--reference, else plan.json's, else the first cell (in plan order) that loaded."""
    ids = [c.cell_id for c in cells]
    usable = [c.cell_id for c in cells if c.ok]
    default = usable[0] if usable else (ids[0] if ids else None)
    if requested is not None:
        if requested in ids:
            return ReferenceChoice(cell=requested, chosen_by="option")
        problems.append(
            Problem(
                kind="reference",
                message=f"--reference {requested!r} is not among the {len(ids)} cells "
                f"(e.g. {', '.join(ids[:3])}); compared against {default!r} instead",
            )
        )
        return ReferenceChoice(cell=default, chosen_by="default")
    if planned is not None:
        if planned in ids:
            return ReferenceChoice(cell=planned, chosen_by="plan")
        problems.append(
            Problem(
                kind="reference",
                message=f"plan.json reference {planned!r} is not among the cells; "
                f"compared against {default!r} instead",
            )
        )
    return ReferenceChoice(cell=default, chosen_by="default")


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that is not a directory we can write, before any work."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecError(f"--out {out_dir}: exists and is not a directory")
    parent = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(f"--out {out_dir}: cannot create or write it here")
    # A report written into a cell's artifact would change the artifact, and
    # discovery skips the output directory: the cell would vanish from its own report.
    for place in [out_dir, *out_dir.parents]:
        if any((place / name).is_file() for name in (MANIFEST, RUN_RECORD)):
            raise SpecError(
                f"--out {out_dir}: inside the cell directory {place}; "
                "write the report outside every cell"
            )


def _default_out(roots: Sequence[Path]) -> Path:
    """``report/`` in the first results directory that is one; the others are
    still reported (as problems) if they are missing or are files."""
    for root in roots:
        if root.is_dir():
            return root / "report"
    shown = ", ".join(shown_path(r) for r in roots[:3])
    raise ResultsError(f"nothing to report: no results directory among {shown}")


def write_outputs(findings: Findings, out_dir: Path) -> tuple[Path, ...]:
    """Render the findings four ways into ``out_dir`` (each file written atomically)."""
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "report.json": render_json(findings),
        "report.md": render_markdown(findings),
        "index.html": render_html(findings),
        "junit.xml": render_junit(findings),
    }
    written = []
    for name, text in texts.items():
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(
                    f"--out {out_dir}: no space left on the device while writing {name}; "
                    "free some space and run `nox -s report` again (the results are untouched)"
                ) from None
            why = exc.strerror or str(exc)
            raise SpecError(f"--out {out_dir}: cannot write {name}: {why}") from None
        written.append(path)
    return tuple(written)


def build_report(
    results_dirs: Sequence[Path | str],
    out_dir: Path | str | None = None,
    *,
    reference: str | None = None,
    fail_on: DriftClass | str | None = None,
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    generated_at: str | None = None,
    problems: Sequence[Problem] = (),
) -> ReportSummary:
    """Compare, attribute, localise and write the report; never raises for a bad cell.

    Raises :class:`ResultsError` when there is nothing to report and
    :class:`MatrixError` for a bad ``fail_on``, tolerance or output directory.
    Everything else (corrupt cells, an unknown reference, the drift gate) is
    in the summary's ``exit_code``/``error``, after the report has been written.
    """
    roots = [Path(d) for d in results_dirs]
    if not roots:
        raise ResultsError("no results directory given")
    out = Path(out_dir) if out_dir is not None else _default_out(roots)
    check_out_dir(out)
    findings = make_findings(
        roots,
        reference=reference,
        fail_on=fail_on,
        tolerances=tolerances,
        generated_at=generated_at,
        skip=[out],
        problems=problems,
    )
    files = write_outputs(findings, out)
    summary = findings.summary
    return ReportSummary(
        out_dir=out,
        files=files,
        reference=findings.reference.cell,
        cells=summary.cells,
        by_class=dict(summary.by_class["reference"]),
        failed_cells=summary.failed_cells,
        missing_cells=summary.missing_cells,
        problems=tuple(p.message for p in findings.problems),
        exit_code=summary.exit_code,
        outcome=summary.outcome,
        error=exit_error(summary),
        findings=findings,
    )


class _Parser(argparse.ArgumentParser):
    """argparse that raises SpecError (one line, exit 3) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise SpecError(f"matrix report: {message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="matrix report",
        description="Compare the cells of one or more results directories and write the report.",
    )
    parser.add_argument("results_dirs", nargs="+", type=Path, metavar="RESULTS_DIR")
    parser.add_argument("--out", type=Path, help="output directory (default: RESULTS_DIR/report)")
    parser.add_argument("--reference", help="cell id to compare every cell against")
    parser.add_argument(
        "--fail-on",
        choices=[c.value for c in GATE_CLASSES],
        help="exit non-zero when a cell vs reference (or repeat) comparison reaches this class",
    )
    parser.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="DTYPE.KEY=VALUE",
        help="override a threshold, e.g. float32.rounding_rtol=1e-4 (repeatable)",
    )
    return parser


def report_command(argv: list[str]) -> int:
    """``matrix report RESULTS_DIR... [--out DIR] [--reference CELL] [--fail-on CLASS]``.

    Prints where the report is and a one-line outcome; returns 0, or raises
    the :class:`MatrixError` subclass whose exit code the outcome implies
    (after writing the report).
    """
    args = _parser().parse_args(argv)
    tolerances = parse_tolerance_option(args.tolerance)
    apply_overrides(tolerances, DEFAULT_THRESHOLDS)  # a bad --tolerance: exit 2, before any work
    summary = build_report(
        args.results_dirs,
        args.out,
        reference=args.reference,
        fail_on=args.fail_on,
        tolerances=tolerances,
    )
    counts = ", ".join(f"{n} {cls}" for cls, n in summary.by_class.items() if n)
    output.line(f"report: {summary.out_dir / 'index.html'}")
    output.line(
        f"{summary.cells} cells vs reference {summary.reference}: {counts or 'nothing compared'}"
    )
    for line in summary.problems[:20]:
        output.line(f"  problem: {line}")
    if summary.error is not None:
        raise summary.error
    return 0
