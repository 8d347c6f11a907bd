"""Findings: every comparison the report needs, as one plain JSON-ready dict.

Pure over loaded cells (the only I/O is reading tensors through the cells):
comparisons against the reference cell, against the float64 oracles, across
repeats, attribution per axis and localisation, then the summary and the
exit code the ``--fail-on`` policy implies.  ``report.json`` is this dict;
every renderer reads only this dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matrix import __version__
from matrix.artifacts import CellArtifact, Plan
from matrix.attribute import AxisChange, attribute, axis_value_key, axis_verdicts, format_value
from matrix.compare import TensorComparison
from matrix.comparisons import (
    ORACLE,
    CellComparison,
    PhaseResult,
    columns_of,
    compare_cells,
    compare_with_oracle,
    merge_repeats,
)
from matrix.drift import DriftClass, Thresholds
from matrix.errors import (
    ArtifactError,
    CellsFailed,
    DriftGateFailed,
    MatrixError,
    ReferenceError_,
    ResultsError,
)
from matrix.localize import LayerFinding, Localisation

__all__ = [
    "GATED_KINDS",
    "REPORT_SCHEMA_ID",
    "REPORT_SCHEMA_VERSION",
    "Problem",
    "build_findings",
    "exit_error",
]

REPORT_SCHEMA_ID = "keras-repro-matrix/report"
REPORT_SCHEMA_VERSION = 1

#: Comparisons a --fail-on gate looks at.  The float64 oracle is left out:
#: float32 training is expected to drift from exact arithmetic, and a gate on
#: it would fire on every healthy run.  Attribution pairs repeat what the
#: reference comparisons already show.
GATED_KINDS = ("reference", "repeat")

# Exit precedence: the user's own mistake first, then broken input, then
# absent cells, then the drift gate.
_EXIT_ORDER: tuple[type[MatrixError], ...] = (
    ReferenceError_,
    ArtifactError,
    ResultsError,
    CellsFailed,
    DriftGateFailed,
)
_KIND_ERROR: dict[str, type[MatrixError]] = {
    "reference": ReferenceError_,
    "artifact": ArtifactError,
    "results": ResultsError,
    "run": CellsFailed,
}


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One line about bad input; ``kind`` picks its exit code (``warning``: none)."""

    kind: str  # reference | artifact | results | run | warning
    message: str
    cell: str | None = None


def build_findings(
    cells: Sequence[CellArtifact],
    repeats: Mapping[str, Sequence[CellArtifact]],
    *,
    plan: Plan,
    reference: str | None,
    reference_chosen_by: str,
    thresholds: Mapping[str, Thresholds],
    fail_on: DriftClass | None,
    problems: Sequence[Problem],
    generated_at: str,
) -> dict[str, Any]:
    """All comparisons and their summary as a JSON-ready dict (see report.schema.json)."""
    by_id = {c.cell_id: c for c in cells}
    memo: dict[tuple[str, str], tuple[PhaseResult, ...]] = {}

    def compare(candidate: CellArtifact, baseline: CellArtifact) -> tuple[PhaseResult, ...]:
        key = (candidate.cell_id, baseline.cell_id)
        if key not in memo:
            memo[key] = compare_cells(candidate, baseline, thresholds=thresholds)
        return memo[key]

    comparisons: list[CellComparison] = []
    ref_cell = by_id.get(reference) if reference else None
    if ref_cell is not None:
        for cell in cells:
            comparisons.append(
                CellComparison(
                    kind="reference",
                    candidate=cell.cell_id,
                    baseline=ref_cell.cell_id,
                    phases=compare(cell, ref_cell),
                )
            )
    for cell in cells:
        if cell.ok:
            phases = compare_with_oracle(cell, thresholds=thresholds)
            if phases:
                comparisons.append(
                    CellComparison(
                        kind="oracle", candidate=cell.cell_id, baseline=ORACLE, phases=phases
                    )
                )
    determinism: dict[str, bool | None] = {}
    for cell in cells:
        runs = [r for r in repeats.get(cell.cell_id, ()) if r.ok]
        if not cell.ok or not runs:
            determinism[cell.cell_id] = None
            continue
        merged = merge_repeats([compare_cells(run, cell, thresholds=thresholds) for run in runs])
        comparisons.append(
            CellComparison(
                kind="repeat", candidate=cell.cell_id, baseline=cell.cell_id, phases=merged
            )
        )
        determinism[cell.cell_id] = all(
            p.verdict in (DriftClass.IDENTICAL, DriftClass.UNSUPPORTED)
            for p in merged
            if not p.varies and not p.failed_both
        )

    axes = list(plan.axes) or sorted({a for c in cells for a in c.axes})
    present = [c for c in cells if not c.missing]
    attribution = attribute(present, axes, compare)
    for row in attribution:
        for low, high in row.pairs:
            comparisons.append(
                CellComparison(kind="axis", candidate=high, baseline=low, phases=memo[(high, low)])
            )

    all_problems = list(problems)
    for cell in cells:
        if cell.problem is not None and not cell.missing:
            kind = "run" if cell.run_failed else "artifact"
            all_problems.append(Problem(kind=kind, message=cell.problem, cell=cell.cell_id))
        for n, run in enumerate(repeats.get(cell.cell_id, ()), start=1):
            if run.problem is not None:
                kind = "run" if run.run_failed else "artifact"
                message = f"repeat {n}: {run.problem}"
                all_problems.append(Problem(kind=kind, message=message, cell=cell.cell_id))

    columns = columns_of(comparisons)
    gated = [
        (c, p)
        for c in comparisons
        if c.kind in GATED_KINDS
        for p in c.phases
        if fail_on is not None and not p.varies and p.verdict.rank >= fail_on.rank
    ]
    summary = _summary(cells, comparisons, determinism, gated, fail_on, all_problems)
    return {
        "schema": REPORT_SCHEMA_ID,
        "schema_version": REPORT_SCHEMA_VERSION,
        "generated_at": generated_at,
        "tool": {"name": "keras-repro-matrix", "version": __version__},
        "spec": plan.spec,
        "reference": {
            "cell": ref_cell.cell_id if ref_cell else None,
            "chosen_by": reference_chosen_by,
        },
        "axes": axes,
        "axis_values": {
            axis: [
                format_value(v)
                for v in sorted({c.axes[axis] for c in cells if axis in c.axes}, key=axis_value_key)
            ]
            for axis in axes
        },
        "thresholds": {dt: th.as_dict() for dt, th in sorted(thresholds.items())},
        "classes": [
            {"name": cls.value, "rank": cls.rank, "description": cls.description}
            for cls in DriftClass
        ],
        "gate": {
            "fail_on": fail_on.value if fail_on else None,
            "kinds": list(GATED_KINDS),
            "matched": len(gated),
        },
        "summary": summary,
        "problems": [{"kind": p.kind, "cell": p.cell, "message": p.message} for p in all_problems],
        "columns": [f"{s}/{p}" for s, p in columns],
        "cells": [
            _cell_json(c, len(repeats.get(c.cell_id, ())), determinism[c.cell_id]) for c in cells
        ],
        "comparisons": [_comparison_json(c) for c in comparisons],
        "attribution": [_attribution_json(row) for row in attribution],
        "axis_verdicts": {a: v.value for a, v in sorted(axis_verdicts(attribution).items())},
    }


def _summary(
    cells: Sequence[CellArtifact],
    comparisons: Sequence[CellComparison],
    determinism: Mapping[str, bool | None],
    gated: Sequence[tuple[CellComparison, PhaseResult]],
    fail_on: DriftClass | None,
    problems: Sequence[Problem],
) -> dict[str, Any]:
    # Phases that vary on purpose are counted apart: an unseeded draw compared
    # with another is "divergent" by construction, not a finding.
    by_class: dict[str, dict[str, int]] = {}
    varying: dict[str, int] = {}
    for kind in ("reference", "oracle", "repeat", "axis"):
        counts = {cls.value: 0 for cls in DriftClass}
        varying[kind] = 0
        for c in comparisons:
            if c.kind == kind:
                for p in c.phases:
                    if p.varies:
                        varying[kind] += 1
                    else:
                        counts[p.verdict.value] += 1
        by_class[kind] = counts
    failed = [c.cell_id for c in cells if c.problem is not None and not c.missing]
    failed += [
        c.cell_id for c in cells if c.ok and any(s.status == "failed" for s in c.scenarios.values())
    ]
    missing = [c.cell_id for c in cells if c.missing]
    reasons: list[tuple[type[MatrixError], str]] = []
    for problem in problems:
        if problem.kind in _KIND_ERROR:
            reasons.append((_KIND_ERROR[problem.kind], problem.message))
    if missing:
        reasons.append(
            (
                CellsFailed,
                f"{len(missing)} planned cell(s) missing: {', '.join(missing[:5])}"
                + (" …" if len(missing) > 5 else ""),
            )
        )
    if gated and fail_on is not None:
        absent = [p for _, p in gated if p.verdict in (DriftClass.FAILED, DriftClass.MISSING)]
        gate_error: type[MatrixError] = CellsFailed if absent else DriftGateFailed
        worst_seen = max((p.verdict for _, p in gated), key=lambda v: v.rank)
        reasons.append(
            (
                gate_error,
                f"--fail-on {fail_on.value}: {len(gated)} phase comparison(s) at or beyond "
                f"{fail_on.value} (worst: {worst_seen.value})",
            )
        )
    code, outcome = 0, "ok"
    for error in _EXIT_ORDER:
        hits = [msg for cls, msg in reasons if cls is error]
        if hits:
            code = error.exit_code
            more = (
                f" (+{len(reasons) - 1} more problem(s), see the report)"
                if len(reasons) > 1
                else ""
            )
            outcome = hits[0] + more
            break
    return {
        "cells": len(cells),
        "ok_cells": sum(1 for c in cells if c.ok),
        "failed_cells": sorted(set(failed)),
        "missing_cells": missing,
        "nondeterministic_cells": [cid for cid, det in determinism.items() if det is False],
        "by_class": by_class,
        "expected_to_vary": varying,
        "exit_code": code,
        "outcome": outcome,
    }


def exit_error(findings: Mapping[str, Any]) -> MatrixError | None:
    """The MatrixError the findings' exit code stands for (None when 0)."""
    summary = findings["summary"]
    for error in _EXIT_ORDER:
        if error.exit_code == summary["exit_code"]:
            return error(summary["outcome"])
    return None


# --------------------------------------------------------------------------
# JSON shaping: NaN -> null, +-inf -> "inf"/"-inf" (JSON has neither).


def number(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _cell_json(cell: CellArtifact, repeats: int, deterministic: bool | None) -> dict[str, Any]:
    if cell.missing:
        status = "missing"
    elif cell.problem is not None or any(s.status == "failed" for s in cell.scenarios.values()):
        status = "failed"
    else:
        status = "ok"
    show_log = status != "ok"
    return {
        "id": cell.cell_id,
        "status": status,
        "problem": cell.problem,
        "axes": {k: cell.axes[k] for k in sorted(cell.axes)},
        "executor": cell.executor,
        "environment_id": cell.environment_id,
        "repeats": repeats,
        "deterministic": deterministic,
        "fingerprint": cell.fingerprint,
        "settings": cell.settings,
        "timings": cell.timings,
        "started_at": cell.started_at,
        "finished_at": cell.finished_at,
        "scenarios": [
            {
                "name": s.name,
                "status": s.status,
                "seconds": s.seconds,
                "error": (
                    {
                        "type": s.error.type,
                        "message": s.error.message,
                        "traceback": s.error.traceback,
                    }
                    if s.error
                    else None
                ),
                "notes": list(s.notes),
                "data": s.data,
            }
            for s in cell.scenarios.values()
        ],
        "log_tail": cell.log_tail if show_log else None,
    }


def _comparison_json(c: CellComparison) -> dict[str, Any]:
    # Attribution pairs keep phase-level numbers only: their per-tensor
    # detail would multiply the report by the number of axes, and the same
    # tensors' numbers are in the reference comparisons.
    with_tensors = c.kind != "axis"
    return {
        "id": f"{c.kind}:{c.candidate}"
        if c.kind != "axis"
        else f"axis:{c.baseline}->{c.candidate}",
        "kind": c.kind,
        "candidate": c.candidate,
        "baseline": c.baseline,
        "verdict": c.verdict.value,
        "phases": [_phase_json(p, with_tensors) for p in c.phases],
    }


def _phase_json(p: PhaseResult, with_tensors: bool = True) -> dict[str, Any]:
    size = sum(c.size for _, c in p.tensors)
    outside = sum(c.outside_rounding + c.nonfinite_mismatch for _, c in p.tensors)
    return {
        "column": p.column,
        "scenario": p.scenario,
        "phase": p.phase,
        "verdict": p.verdict.value,
        "reason": p.reason,
        "max_abs": number(p.peak("max_abs")),
        "max_rel": number(p.peak("max_rel")),
        "max_ulp": number(p.peak("max_ulp")),
        "fraction_outside": (outside / size) if size else 0.0,
        "localisation": _localisation_json(p.localisation),
        "expected_to_vary": p.varies,
        "tensors": [_tensor_json(k, c) for k, c in p.tensors] if with_tensors else [],
    }


def _localisation_json(loc: Localisation | None) -> dict[str, Any] | None:
    if loc is None:
        return None

    def layer(f: LayerFinding | None) -> dict[str, Any] | None:
        if f is None:
            return None
        return {
            "index": f.index,
            "name": f.name,
            "key": f.key,
            "verdict": f.verdict.value,
            "max_rel": number(f.max_rel),
            "max_ulp": number(f.max_ulp),
        }

    return {
        "layers": loc.layers,
        "first_change": layer(loc.first_change),
        "first_drift": layer(loc.first_drift),
    }


def _tensor_json(key: str, c: TensorComparison) -> dict[str, Any]:
    return {
        "key": key,
        "verdict": c.verdict.value,
        "reason": c.reason,
        "dtype": c.dtype,
        "shape": list(c.shape),
        "baseline_shape": list(c.baseline_shape),
        "size": c.size,
        "max_abs": number(c.max_abs),
        "max_rel": number(c.max_rel),
        "max_ulp": number(c.max_ulp),
        "outside_rounding": c.outside_rounding,
        "outside_divergent": c.outside_divergent,
        "nonfinite_mismatch": c.nonfinite_mismatch,
        "fraction_outside": c.fraction_outside,
        "worst": [
            {
                "index": list(w.index),
                "candidate": number(w.candidate),
                "baseline": number(w.baseline),
                "abs_error": number(w.abs_error),
                "ulp": number(w.ulp),
            }
            for w in c.worst
        ],
    }


def _attribution_json(row: AxisChange) -> dict[str, Any]:
    def summ(items: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "phase": s.phase,
                "verdict": s.verdict.value,
                "max_abs": number(s.max_abs),
                "max_rel": number(s.max_rel),
                "max_ulp": number(s.max_ulp),
            }
            for s in items
        ]

    return {
        "axis": row.axis,
        "before": format_value(row.before),
        "after": format_value(row.after),
        "verdict": row.verdict.value,
        "summary": row.summary,
        "pairs": [list(p) for p in row.pairs],
        "phases": summ(row.phases),
        "columns": summ(row.columns),
        "first_layers": list(row.first_layers),
        "expected_to_vary": list(row.varying),
    }
