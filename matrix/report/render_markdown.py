"""report.md: short enough for a CI step summary.

Verdict counts, the attribution table (the heart of the report), the cells
that differ from the reference, failures and problems; each list is capped
and says how much it left out.  Every artifact string is escaped: GitHub
renders HTML inside Markdown.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from matrix.analysis.findings import (
    Findings,
    LoadFinding,
    PhaseEffect,
    PhaseFinding,
    PortabilityFinding,
)

__all__ = ["md", "render_markdown"]

MAX_ROWS = 40

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|#~!"})


def md(text: object) -> str:
    """Escape text for a Markdown table cell or line: HTML, Markdown syntax, newlines."""
    flat = " ".join(str(text).split())
    return html.escape(flat, quote=True).translate(_MD_SPECIAL)


def _capped(rows: Sequence[str], total: int, what: str) -> list[str]:
    out = list(rows[:MAX_ROWS])
    if total > MAX_ROWS:
        out.append(f"\n… and {total - MAX_ROWS} more {what}: see index.html / report.json.")
    return out


def _phases_text(phases: Sequence[PhaseEffect]) -> str:
    """'init identical, train rounding (max 4 ULP), forward drift (max rel 4e-03)'."""
    parts = []
    for p in phases:
        text = f"{md(p.phase)} {p.verdict}"
        if p.verdict == "rounding" and math.isfinite(p.max_ulp):
            text += f" (max {p.max_ulp:g} ULP)"
        elif p.verdict in ("drift", "divergent") and math.isfinite(p.max_rel):
            text += f" (max rel {p.max_rel:.1e})"
        parts.append(text)
    return ", ".join(parts)


def render_markdown(findings: Findings) -> str:
    s = findings.summary
    ref = findings.reference.cell
    lines = [
        "# Keras reproducibility matrix",
        "",
        f"{s.cells} cells · reference cell **{md(ref)}** "
        f"({findings.reference.chosen_by}) · generated {md(findings.generated_at)}",
        "",
        f"**Outcome:** {md(s.outcome)} (exit code {s.exit_code})",
        "",
        *_inputs(findings),
        "## Verdicts (scenario phases)",
        "",
        "| class | vs reference cell | vs float64 oracle | across repeats |",
        "| --- | ---: | ---: | ---: |",
    ]
    by = s.by_class
    for cls in findings.classes:
        counts = [by[k][cls.name] for k in ("reference", "oracle", "repeat")]
        if any(counts):
            lines.append(f"| {cls.name} | {counts[0]} | {counts[1]} | {counts[2]} |")
    varying = s.expected_to_vary
    if any(varying.values()):
        lines += [
            "",
            f"Not counted: {varying['reference']} / {varying['oracle']} / {varying['repeat']} "
            "phase comparisons the scenarios mark as unseeded on purpose (expected to vary).",
        ]
    lines += ["", "## Attribution: what changing one axis alone does", ""]
    rows = findings.attribution
    if rows:
        lines += [
            "| axis | change | verdict | per phase | pairs |",
            "| --- | --- | --- | --- | ---: |",
        ]
        body = [
            f"| {md(r.axis)} | {md(r.before)} → {md(r.after)} | {r.verdict} | "
            f"{_phases_text(r.phases)} | {len(r.pairs)} |"
            for r in rows
        ]
        lines += _capped(body, len(body), "attribution rows")
    else:
        lines.append("No two cells differ in exactly one axis.")
    differing = []
    for comp in findings.comparisons_of("reference"):
        if comp.verdict in ("identical", "unsupported"):
            continue
        bad = [
            f"{md(p.column)} {p.verdict}{_first_layer(p)}"
            for p in comp.phases
            if p.verdict != "identical" and not p.expected_to_vary
        ]
        differing.append(f"| {md(comp.candidate)} | {comp.verdict} | {', '.join(bad)} |")
    lines += ["", "## Cells that differ from the reference", ""]
    if differing:
        lines += ["| cell | worst | phases |", "| --- | --- | --- |"]
        lines += _capped(differing, len(differing), "cells")
    else:
        lines.append("None: every cell is bitwise identical to the reference.")
    lines += _portability(findings.portability)
    failures = []
    for cell in findings.cells:
        if cell.problem:
            failures.append(f"- **{md(cell.id)}** ({cell.status}): {md(cell.problem)}")
        for sc in cell.scenarios:
            if sc.status == "failed":
                err = sc.error
                kind, message = (err.type, err.message) if err else ("?", "no error recorded")
                failures.append(f"- **{md(cell.id)}** {md(sc.name)}: {md(kind)}: {md(message)}")
    if failures:
        lines += ["", "## Failures", "", *_capped(failures, len(failures), "failures")]
    problems = [f"- {md(p.message)}" for p in findings.problems]
    if problems:
        lines += [
            "",
            "## Problems with the input",
            "",
            *_capped(problems, len(problems), "problems"),
        ]
    nondet = s.nondeterministic_cells
    if nondet:
        lines += [
            "",
            f"**Not deterministic across repeats:** {', '.join(md(c) for c in nondet[:MAX_ROWS])}",
        ]
    lines += [
        "",
        "Classes: identical (same bits) < rounding (within the dtype's rounding tolerance) "
        "< drift < divergent (beyond the divergence threshold, NaN/Inf on one side, "
        "shape change); "
        "failed / missing: no tensor. ULP = units in the last place of the tensor's dtype.",
        "",
    ]
    return "\n".join(lines)


def _inputs(findings: Findings) -> list[str]:
    """What the cells ran besides the built-in scenarios: the user's files."""
    if not findings.inputs:
        return []
    parts = [
        f"--{md(option)} {md(entry.get('file', ''))} (sha256 {md(entry.get('sha256', '')[:12])})"
        for option, entry in findings.inputs.items()
    ]
    return [f"**Your files:** {' · '.join(parts)}", ""]


def _first_layer(phase: PhaseFinding) -> str:
    """' from layer gru': where a forward pass first leaves identical."""
    loc = phase.localisation
    first = loc.first_change if loc is not None else None
    return f" from layer {md(first.name)}" if first is not None else ""


def _short(text: str, limit: int = 360) -> str:
    """An error as the report lists it: its start and its end, where Keras puts
    the cause after a dump of the config; report.json keeps it whole."""
    flat = " ".join(text.split())
    half = limit // 2
    return flat if len(flat) <= limit else f"{flat[:half]} … {flat[-half:]}"


def _load_text(load: LoadFinding | None, notes: dict[str, int]) -> str:
    """``identical``, ``rounding (max 3 ULP)``, ``failed [2]`` (the note holds the error)."""
    if load is None:
        return "—"
    text = load.verdict
    if load.status == "loaded":
        if load.verdict == "rounding" and math.isfinite(load.max_ulp):
            text += f" ({load.max_ulp:g} ULP)"
        elif load.verdict in ("drift", "divergent") and math.isfinite(load.max_rel):
            text += f" (rel {load.max_rel:.1e})"
        return text
    if load.status == "not_saved":
        return "not saved"
    number = notes.setdefault(load.reason, len(notes) + 1)
    return f"{text} [{number}]"


def _portability(matrices: Sequence[PortabilityFinding]) -> list[str]:
    """One table per format: saved in (rows) x loaded in (columns), each entry
    per model; errors numbered once below, however many loads they hit."""
    if not matrices:
        return []
    lines = [
        "",
        "## Saved in → loaded in",
        "",
        "Each saved file loaded in each cell, as a user of that version loads it; the "
        "class compares the loaded model's predictions with the saving cell's own.",
    ]
    notes: dict[str, int] = {}
    for matrix in matrices:
        lines += [
            "",
            f"### {md(matrix.format)}",
            "",
            "| saved in ↓ · loaded in → | " + " | ".join(md(c) for c in matrix.cells) + " |",
            "| --- |" + " --- |" * len(matrix.cells),
        ]
        for saver in matrix.cells:
            entries = []
            for loader in matrix.cells:
                parts = [
                    f"{md(model)}: {md(_load_text(matrix.load(saver, loader, model), notes))}"
                    for model in matrix.models
                ]
                entries.append("<br>".join(parts))
            lines.append(f"| {md(saver)} | " + " | ".join(entries) + " |")
        remarks = [
            f"- not saved in {md(item.cell)} ({md(item.model)}): {md(_short(item.reason))}"
            for item in matrix.saved
            if item.status != "ok"
        ]
        remarks += [
            f"- {md(item.cell)} wrote its {md(item.model)} .keras file as HDF5, not a zip"
            for item in matrix.saved
            if matrix.format == "keras" and item.container == "hdf5"
        ]
        if remarks:
            lines += ["", *remarks]
    if notes:
        lines += ["", "Errors:", ""]
        errors = [f"{n}. {md(_short(reason))}" for reason, n in notes.items()]
        lines += _capped(errors, len(errors), "errors")
    return lines
