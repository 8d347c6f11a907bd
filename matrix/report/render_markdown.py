"""report.md: short enough for a CI step summary.

It leads with attribution per context (the heart of the report: what
changing one axis alone does, said once where every context agrees and per
context where they do not), then the upgrade chains, the portable
tolerances per context, verdict counts, the cells that differ from the
reference, failures and problems; each list is capped and says how much it
left out.  Every artifact string is escaped: GitHub renders HTML inside
Markdown.  Every number comes from the findings (report.json).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from matrix.analysis.findings import (
    AttributionRow,
    ChainFinding,
    Findings,
    LoadFinding,
    PhaseEffect,
    PhaseFinding,
    PortabilityFinding,
    ToleranceFinding,
)
from scenarios.contract import PHASES

__all__ = ["md", "render_markdown"]

MAX_ROWS = 40
#: Step tables per chain (one per group of contexts).
MAX_TABLES = 6

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|#~!"})


def md(text: object) -> str:
    """Escape text for a Markdown table cell or line: HTML, Markdown syntax, newlines."""
    flat = " ".join(str(text).split())
    return html.escape(flat, quote=False).translate(_MD_SPECIAL)


def _capped(rows: Sequence[str], total: int, what: str) -> list[str]:
    out = list(rows[:MAX_ROWS])
    if total > MAX_ROWS:
        out.append(f"\n… and {total - MAX_ROWS} more {what}: see index.html / report.json.")
    return out


def _attribution(findings: Findings) -> list[str]:
    ctx = ", ".join(md(a) for a in findings.context_axes) or "none"
    lines = [
        "## What changing one axis alone does, per context",
        "",
        f"A context is the values of the other axes that vary in this report ({ctx}). "
        "A phase is said once where its verdict is the same in every context, "
        "else per context.",
        "",
    ]
    rows = findings.attribution
    if not rows:
        return [*lines, "No two cells differ in exactly one axis."]
    body: list[str] = []
    for row in rows[:MAX_ROWS]:
        body += _row(row)
    body += _capped([], len(rows), "attribution rows")
    return lines + body


def _row(row: AttributionRow) -> list[str]:
    lines = [f"### {md(row.head)}", ""]
    if row.verdict is not None:
        every = "every context" if len(row.contexts) > 1 else "its only context"
        lines.append(f"Worst: **{row.verdict}** in {every}.")
    else:
        lines.append(
            "Worst, per context: " + "; ".join(f"{md(g.label)}: **{g.verdict}**" for g in row.worst)
        )
    lines.append("")
    # Phases identical wherever they were compared are listed together, by
    # where that was: a phase that only float32 cells run is not "differing"
    # from the mixed-precision contexts, merely not compared there.
    quiet: dict[str, list[str]] = {}
    for p in row.phases:
        if p.agreed_where_compared == "identical":
            quiet.setdefault(p.compared_in, []).append(p.phase)
        else:
            lines.append(f"- {md(p.text)}")
    every = "every context" if len(row.contexts) > 1 else "its only context"
    for where, phases in quiet.items():
        scope = f"in {every}" if where == "every context" else f"where compared ({md(where)})"
        lines.append(f"- identical {scope}: {', '.join(md(q) for q in phases)}")
    layers = [
        f"{md(c.label)}: {md('; '.join(c.first_layers))}" for c in row.contexts if c.first_layers
    ]
    if layers:
        lines.append(f"- first layer beyond rounding: {'; '.join(layers)}")
    pairs = sum(len(c.pairs) for c in row.contexts)
    lines += [f"- pairs compared: {pairs}", ""]
    return lines


def _chains(findings: Findings) -> list[str]:
    if not findings.chains:
        return []
    lines = [
        "## Upgrade chains: where each phase first moves",
        "",
        "Each release compared with the previous one in the chain, per context: the first "
        "release that is not bitwise identical, and the first that drifts (drift or worse).",
        "",
    ]
    for chain in findings.chains[:MAX_ROWS]:
        lines += _chain(chain)
    return lines + _capped([], len(findings.chains), "chains")


def _chain(chain: ChainFinding) -> list[str]:
    how = "declared in the spec" if chain.declared else "read from version-like values, plan order"
    at = ", ".join(f"{md(a)}={md(v)}" for a, v in chain.at.items())
    lines = [
        f"### {md(chain.axis)}: {' → '.join(md(v) for v in chain.values)}",
        "",
        f"{how.capitalize()}{'; held at ' + at if at else ''}.",
        "",
    ]
    lines += [f"- {md(o.text)}" for o in chain.onsets[:MAX_ROWS]]
    lines += _capped([], len(chain.onsets), "phases")
    phases = chain.main_phases
    for group in chain.groups[:MAX_TABLES]:
        merged = len(group.contexts) > 1
        note = f" ({len(group.contexts)} contexts, the same verdicts; largest numbers)"
        lines += [
            "",
            f"{md(group.label)}{note if merged else ''}:",
            "",
            "| step | " + " | ".join(phases) + " |",
            "| --- |" + " --- |" * len(phases),
        ]
        for step in group.steps:
            found = {p.phase: p for p in step.phases}
            cells = [_effect(found[p], merged) if p in found else "—" for p in phases]
            lines.append(f"| {md(step.before)} → {md(step.after)} | " + " | ".join(cells) + " |")
    if len(chain.groups) > MAX_TABLES:
        more = len(chain.groups) - MAX_TABLES
        lines.append(f"\n… and {more} more tables: see index.html / report.json.")
    return [*lines, ""]


def _effect(p: PhaseEffect, merged: bool = False) -> str:
    peak = "max " if merged else ""
    if p.verdict == "rounding" and math.isfinite(p.max_ulp):
        return f"rounding ({peak}{p.max_ulp:g} ULP)"
    if p.verdict in ("drift", "divergent") and math.isfinite(p.max_rel):
        return f"{p.verdict} ({peak}rel {p.max_rel:.1e})"
    return p.verdict


def _tolerances(findings: Findings) -> list[str]:
    items = findings.tolerances
    if not items:
        return []
    lines = [
        "## Portable tolerances, per context",
        "",
        "The tightest `rtol`/`atol` every cell of a context passes, per scenario phase and "
        "dtype, against the reference cell and against the float64 oracle (see "
        "README, Reading the report). A context is the values of the setting axes that vary "
        f"({', '.join(md(a) for a in findings.tolerance_axes) or 'none'}); "
        "the tolerance holds across every environment of it. The main phases "
        f"({', '.join(PHASES)}) are listed here; every phase is in index.html and report.json.",
    ]
    by_label: dict[str, list[ToleranceFinding]] = {}
    for t in items:
        if t.column.rpartition("/")[2] in PHASES:  # the others: index.html, report.json
            by_label.setdefault(t.label, []).append(t)
    for label, group in by_label.items():
        cells = sorted({c for t in group for c in t.cells})
        lines += [
            "",
            f"### {md(label)} ({len(cells)} cell{'s' if len(cells) != 1 else ''})",
            "",
            "| phase | dtype | against | worst | assert |",
            "| --- | --- | --- | --- | --- |",
        ]
        body = [
            f"| {md(t.column)} | {md(t.dtype)} | "
            f"{'oracle' if t.against == 'oracle' else 'reference ' + md(t.baseline)} | "
            f"{t.verdict} | `{t.line}` |"
            for t in group
        ]
        lines += _capped(body, len(body), "tolerances")
    return lines


def _hardware(findings: Findings) -> list[str]:
    """Where each cell ran and what its CPU decided: the machine, the
    instruction-set cap and what each library did with it, and the defaults
    the framework chose from the hardware (each reason said once)."""
    cells = [c for c in findings.cells if c.status != "missing"]
    if not cells:
        return []
    machines: dict[str, list[str]] = {}
    for cell in cells:
        hw = cell.hardware
        label = f"{hw.machine} ({hw.cpu_model})" if hw.machine else "unknown machine"
        machines.setdefault(label, []).append(cell.id)
    lines = ["", "## Hardware: where each cell ran, and what the CPU decided", ""]
    for label, ids in machines.items():
        lines.append(f"- **{md(label)}**: {len(ids)} cell{'s' if len(ids) != 1 else ''}")
    reasons: dict[str, int] = {}
    rows = []
    for cell in cells:
        hw = cell.hardware
        chosen = []
        for d in hw.defaults:
            note = reasons.setdefault(d.reason, len(reasons) + 1) if d.reason else None
            chosen.append(
                f"{md(d.name)} {md(d.value)} ({md(d.chosen_by)}{f' [{note}]' if note else ''})"
            )
        rows.append(f"| {md(cell.id)} | {md(hw.isa_summary)} | {', '.join(chosen) or '-'} |")
    lines += ["", "| cell | instruction set | chosen from the hardware |", "| --- | --- | --- |"]
    lines += _capped(rows, len(rows), "cells")
    if reasons:
        lines += ["", *(f"{n}. {md(reason)}" for reason, n in reasons.items())]
    return lines


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
        *_attribution(findings),
        *_chains(findings),
        *_tolerances(findings),
        "",
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
    lines += _hardware(findings)
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
