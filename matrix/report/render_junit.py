"""junit.xml: one test case per comparison, so CI shows drift as results.

A test case is one cell compared with one baseline (the reference cell, the
float64 oracle, its own repeats, or its neighbour along an axis); its phases'
verdicts are in the message.  A gated comparison (see
:data:`matrix.findings.GATED_KINDS`) with a phase at or beyond ``--fail-on``
is a ``<failure>``, or an ``<error>`` when that phase is failed/missing.
Without ``--fail-on`` nothing fails.  Oracle and attribution comparisons
inform and never fail; an attribution case is named by its change and its
context ("stack tf-2.15 → tf-2.16 [precision=float32]"), never by the change
alone.  A comparison whose phases are all unsupported is ``<skipped>``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from matrix.analysis.drift import DriftClass
from matrix.analysis.findings import Findings, PhaseFinding
from matrix.report.serialize import number

__all__ = ["render_junit"]

# XML 1.0 cannot carry most control characters, even escaped.
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_KIND_NAMES = {
    "reference": "vs reference cell",
    "oracle": "vs float64 oracle",
    "repeat": "across repeats",
    "axis": "attribution (one axis changed)",
}


def _clean(text: object) -> str:
    return _BAD_XML.sub("\ufffd", str(text))


def _phase_line(phase: PhaseFinding) -> str:
    shown = [
        (label, value)
        for label, value in (
            ("max abs", phase.max_abs),
            ("max rel", phase.max_rel),
            ("max ULP", phase.max_ulp),
        )
        if not math.isnan(value)
    ]
    numbers = ", ".join(
        f"{label} {value:.3g}" if math.isfinite(value) else f"{label} {number(value)}"
        for label, value in shown
    )
    tail = f" ({numbers})" if numbers and phase.verdict != "identical" else ""
    note = " [expected to vary: unseeded on purpose, not counted]" if phase.expected_to_vary else ""
    return f"{phase.column}: {phase.verdict}{tail} - {phase.reason}{note}"


def render_junit(findings: Findings) -> str:
    gate = findings.gate
    fail_on = DriftClass(gate.fail_on) if gate.fail_on else None
    gated_kinds = set(gate.kinds)
    root = ET.Element("testsuites", name="keras-repro-matrix")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suites: dict[str, tuple[ET.Element, dict[str, int]]] = {}
    changes = {
        pair: f"{row.axis} {row.before} → {row.after} [{context.label or 'every cell'}]"
        for row in findings.attribution
        for context in row.contexts
        for pair in context.pairs
    }
    for comp in findings.comparisons:
        kind = comp.kind
        if kind not in suites:
            suite = ET.SubElement(root, "testsuite", name=_KIND_NAMES.get(kind, kind))
            suites[kind] = (suite, {"tests": 0, "failures": 0, "errors": 0, "skipped": 0})
        suite, counts = suites[kind]
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_clean(f"{kind}.{comp.candidate}"),
            name=_clean(
                f"{changes[(comp.baseline, comp.candidate)]}: {comp.candidate} vs {comp.baseline}"
                if kind == "axis" and (comp.baseline, comp.candidate) in changes
                else f"{comp.candidate} vs {comp.baseline}"
            ),
        )
        counts["tests"] += 1
        verdicts = [DriftClass(p.verdict) for p in comp.phases]
        body = _clean("\n".join(_phase_line(p) for p in comp.phases))
        hit = [
            p
            for p, v in zip(comp.phases, verdicts, strict=True)
            if fail_on is not None
            and kind in gated_kinds
            and not p.expected_to_vary
            and v is not DriftClass.UNSUPPORTED
            and v.rank >= fail_on.rank
        ]
        if verdicts and all(v is DriftClass.UNSUPPORTED for v in verdicts):
            ET.SubElement(case, "skipped", message="every phase unsupported here")
            counts["skipped"] += 1
        elif hit:
            absent = any(p.verdict in ("failed", "missing") for p in hit)
            tag = "error" if absent else "failure"
            summary = "; ".join(f"{p.column} {p.verdict}" for p in hit)
            element = ET.SubElement(
                case, tag, message=_clean(f"--fail-on {fail_on}: {summary}"), type=comp.verdict
            )
            element.text = body
            counts["errors" if absent else "failures"] += 1
        ET.SubElement(case, "system-out").text = body
    for suite, counts in suites.values():
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
