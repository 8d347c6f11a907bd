"""The exit policy: from comparisons, cell states and input problems to one
exit code and one line saying why.

Precedence, most specific first: the user's own mistake (an unknown
reference), broken input (a corrupt artifact, no results), environments that
could not be built, absent cells, then the ``--fail-on`` drift gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matrix.analysis.comparisons import CellComparison, PhaseResult
from matrix.analysis.drift import DriftClass, gate_class
from matrix.errors import (
    ArtifactError,
    BuildError,
    CellsFailed,
    DriftGateFailed,
    MatrixError,
    ReferenceError_,
    ResultsError,
)
from matrix.results.artifacts import CellArtifact

__all__ = [
    "COMPARISON_KINDS",
    "GATED_KINDS",
    "Problem",
    "Summary",
    "Verdicts",
    "cell_failed",
    "exit_error",
    "gate_class",
    "gate_matches",
    "summarise",
]

#: Every kind of comparison a report holds.
COMPARISON_KINDS = ("reference", "oracle", "repeat", "axis")
#: Comparisons a --fail-on gate looks at.  The float64 oracle is left out:
#: float32 training is expected to drift from exact arithmetic, and a gate on
#: it would fire on every healthy run.  Attribution pairs repeat what the
#: reference comparisons already show.
GATED_KINDS = ("reference", "repeat")

_EXIT_ORDER: tuple[type[MatrixError], ...] = (
    ReferenceError_,
    ArtifactError,
    ResultsError,
    BuildError,
    CellsFailed,
    DriftGateFailed,
)
_KIND_ERROR: dict[str, type[MatrixError]] = {
    "reference": ReferenceError_,
    "artifact": ArtifactError,
    "results": ResultsError,
    "build": BuildError,
    "run": CellsFailed,
}


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One line about bad input; ``kind`` picks its exit code (``warning``: none)."""

    kind: str  # reference | artifact | results | build | run | warning
    message: str
    cell: str | None = None


@dataclass(frozen=True, kw_only=True)
class Summary:
    cells: int
    ok_cells: int
    failed_cells: tuple[str, ...]
    missing_cells: tuple[str, ...]
    nondeterministic_cells: tuple[str, ...]
    by_class: Mapping[str, Mapping[str, int]]  # comparison kind -> class -> phases
    expected_to_vary: Mapping[str, int]  # comparison kind -> phases left out
    exit_code: int
    outcome: str


@dataclass(frozen=True, kw_only=True)
class Verdicts:
    """Phase verdicts counted per comparison kind; phases that vary on
    purpose are counted apart (an unseeded draw compared with another is
    "divergent" by construction, not a finding)."""

    by_class: Mapping[str, Mapping[str, int]]
    varying: Mapping[str, int]

    @classmethod
    def count(cls, comparisons: Sequence[CellComparison]) -> Verdicts:
        by_class: dict[str, dict[str, int]] = {}
        varying: dict[str, int] = {}
        for kind in COMPARISON_KINDS:
            counts = {c.value: 0 for c in DriftClass}
            varying[kind] = 0
            for comp in comparisons:
                if comp.kind != kind:
                    continue
                for p in comp.phases:
                    if p.varies:
                        varying[kind] += 1
                    else:
                        counts[p.verdict.value] += 1
            by_class[kind] = counts
        return cls(by_class=by_class, varying=varying)


def gate_matches(
    comparisons: Sequence[CellComparison], fail_on: DriftClass | None
) -> list[tuple[CellComparison, PhaseResult]]:
    """The gated phase comparisons at or beyond ``fail_on``."""
    if fail_on is None:
        return []
    return [
        (c, p)
        for c in comparisons
        if c.kind in GATED_KINDS
        for p in c.phases
        if not p.varies and p.verdict.rank >= fail_on.rank
    ]


def cell_failed(cell: CellArtifact) -> bool:
    """A cell that did not run, or ran with a scenario that failed."""
    return cell.problem is not None or any(s.status == "failed" for s in cell.scenarios.values())


def summarise(
    cells: Sequence[CellArtifact],
    verdicts: Verdicts,
    determinism: Mapping[str, bool | None],
    gated: Sequence[tuple[CellComparison, PhaseResult]],
    fail_on: DriftClass | None,
    problems: Sequence[Problem],
) -> Summary:
    failed = {c.cell_id for c in cells if not c.missing and cell_failed(c)}
    missing = [c.cell_id for c in cells if c.missing]
    reasons: list[tuple[type[MatrixError], str]] = [
        (_KIND_ERROR[p.kind], p.message) for p in problems if p.kind in _KIND_ERROR
    ]
    if missing:
        more = " …" if len(missing) > 5 else ""
        reasons.append(
            (CellsFailed, f"{len(missing)} planned cell(s) missing: {', '.join(missing[:5])}{more}")
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
            more_problems = len(reasons) - 1
            outcome = hits[0] + (
                f" (+{more_problems} more problem(s), see the report)" if more_problems else ""
            )
            break
    return Summary(
        cells=len(cells),
        ok_cells=sum(1 for c in cells if c.ok),
        failed_cells=tuple(sorted(failed)),
        missing_cells=tuple(missing),
        nondeterministic_cells=tuple(cid for cid, det in determinism.items() if det is False),
        by_class=verdicts.by_class,
        expected_to_vary=verdicts.varying,
        exit_code=code,
        outcome=outcome,
    )


def exit_error(summary: Summary) -> MatrixError | None:
    """The MatrixError the summary's exit code stands for (None when 0)."""
    for error in _EXIT_ORDER:
        if error.exit_code == summary.exit_code:
            return error(summary.outcome)
    return None
