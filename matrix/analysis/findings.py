"""Findings: everything the report says, as typed data.

One dataclass per object of ``report.json`` (``matrix/report/report.schema.json``
describes the same shape), built here from the analysis (comparisons
against the reference cell, against the float64 oracles, across repeats,
attribution per axis, localisation); the exit policy is in
:mod:`matrix.analysis.gate`. Renderers read these objects, so mypy checks
every field they use; :mod:`matrix.report.serialize` turns them into JSON.

Numbers stay floats here (NaN where there is none, infinities as they are);
the serialiser writes NaN as null and infinities as "inf"/"-inf".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matrix import __version__
from matrix.analysis.attribute import (
    AxisChange,
    PhaseSummary,
    attribute,
    axis_value_key,
    axis_verdicts,
    format_value,
)
from matrix.analysis.compare import TensorComparison
from matrix.analysis.comparisons import (
    ORACLE,
    CellComparison,
    PhaseResult,
    columns_of,
    compare_cells,
    compare_with_oracle,
    merge_repeats,
)
from matrix.analysis.drift import DriftClass, Thresholds
from matrix.analysis.gate import (
    GATED_KINDS,
    Problem,
    Summary,
    Verdicts,
    cell_failed,
    gate_matches,
    summarise,
)
from matrix.analysis.localize import LayerFinding, Localisation
from matrix.analysis.portability import FormatMatrix, portability_matrices
from matrix.execute.planfile import PlanFile
from matrix.results.artifacts import CellArtifact

__all__ = [
    "REPORT_SCHEMA_ID",
    "REPORT_SCHEMA_VERSION",
    "AttributionRow",
    "CellFinding",
    "ComparisonFinding",
    "Findings",
    "PhaseFinding",
    "PortabilityFinding",
    "Summary",
    "build_findings",
]

REPORT_SCHEMA_ID = "keras-repro-matrix/report"
REPORT_SCHEMA_VERSION = 1


# ---- the model -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Tool:
    name: str
    version: str


@dataclass(frozen=True, kw_only=True)
class ReferenceChoice:
    cell: str | None
    chosen_by: str  # option | plan | default


@dataclass(frozen=True, kw_only=True)
class ClassInfo:
    name: str
    rank: int
    description: str


@dataclass(frozen=True, kw_only=True)
class Gate:
    fail_on: str | None
    kinds: tuple[str, ...]
    matched: int


@dataclass(frozen=True, kw_only=True)
class ProblemFinding:
    kind: str
    cell: str | None
    message: str


@dataclass(frozen=True, kw_only=True)
class ErrorFinding:
    type: str
    message: str
    traceback: str


@dataclass(frozen=True, kw_only=True)
class ScenarioFinding:
    name: str
    status: str
    seconds: float
    error: ErrorFinding | None
    notes: tuple[str, ...]
    data: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class CellFinding:
    id: str
    status: str  # ok | failed | missing
    problem: str | None
    axes: Mapping[str, Any]
    executor: str | None
    environment_id: str | None
    repeats: int
    deterministic: bool | None
    fingerprint: Mapping[str, Any]
    settings: Mapping[str, Any]
    timings: Mapping[str, float]
    started_at: str | None
    finished_at: str | None
    scenarios: tuple[ScenarioFinding, ...]
    log_tail: str | None

    @property
    def applied(self) -> Mapping[str, Any]:
        """The settings as the framework reported them ({} when it never loaded)."""
        found = self.settings.get("applied") if isinstance(self.settings, Mapping) else None
        return found if isinstance(found, Mapping) else {}


@dataclass(frozen=True, kw_only=True)
class WorstFinding:
    index: tuple[int, ...]
    candidate: float
    baseline: float
    abs_error: float
    ulp: float


@dataclass(frozen=True, kw_only=True)
class TensorFinding:
    key: str
    verdict: str
    reason: str
    dtype: str
    shape: tuple[int, ...]
    baseline_shape: tuple[int, ...]
    size: int
    max_abs: float
    max_rel: float
    max_ulp: float
    outside_rounding: int
    outside_divergent: int
    nonfinite_mismatch: int
    fraction_outside: float
    worst: tuple[WorstFinding, ...]


@dataclass(frozen=True, kw_only=True)
class LayerPoint:
    index: int
    name: str
    key: str
    verdict: str
    max_rel: float
    max_ulp: float


@dataclass(frozen=True, kw_only=True)
class LocalisationFinding:
    layers: int
    first_change: LayerPoint | None
    first_drift: LayerPoint | None


@dataclass(frozen=True, kw_only=True)
class PhaseFinding:
    column: str
    scenario: str
    phase: str
    verdict: str
    reason: str
    max_abs: float
    max_rel: float
    max_ulp: float
    fraction_outside: float
    localisation: LocalisationFinding | None
    expected_to_vary: bool
    tensors: tuple[TensorFinding, ...]


@dataclass(frozen=True, kw_only=True)
class ComparisonFinding:
    id: str
    kind: str  # reference | oracle | repeat | axis
    candidate: str
    baseline: str
    verdict: str
    phases: tuple[PhaseFinding, ...]


@dataclass(frozen=True, kw_only=True)
class PhaseEffect:
    phase: str
    verdict: str
    max_abs: float
    max_rel: float
    max_ulp: float


@dataclass(frozen=True, kw_only=True)
class AttributionRow:
    axis: str
    before: str
    after: str
    verdict: str
    summary: str
    pairs: tuple[tuple[str, str], ...]
    phases: tuple[PhaseEffect, ...]
    columns: tuple[PhaseEffect, ...]
    first_layers: tuple[str, ...]
    expected_to_vary: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class SaveFinding:
    cell: str
    model: str
    status: str  # ok | failed | unsupported | missing
    reason: str
    container: str | None


@dataclass(frozen=True, kw_only=True)
class LoadFinding:
    saved_in: str
    loaded_in: str
    model: str
    status: str  # loaded | failed | unsupported | not_saved | missing
    verdict: str
    reason: str
    how: str | None
    max_abs: float
    max_rel: float
    max_ulp: float


@dataclass(frozen=True, kw_only=True)
class PortabilityFinding:
    """One format's "saved in -> loaded in" matrix (portability scenario)."""

    format: str
    cells: tuple[str, ...]
    models: tuple[str, ...]
    saved: tuple[SaveFinding, ...]
    loads: tuple[LoadFinding, ...]

    def load(self, saved_in: str, loaded_in: str, model: str) -> LoadFinding | None:
        return next(
            (
                x
                for x in self.loads
                if (x.saved_in, x.loaded_in, x.model) == (saved_in, loaded_in, model)
            ),
            None,
        )


@dataclass(frozen=True, kw_only=True)
class Findings:
    schema: str
    schema_version: int
    generated_at: str
    tool: Tool
    spec: str | None
    reference: ReferenceChoice
    axes: tuple[str, ...]
    axis_values: Mapping[str, tuple[str, ...]]
    thresholds: Mapping[str, Mapping[str, float]]
    classes: tuple[ClassInfo, ...]
    gate: Gate
    summary: Summary
    problems: tuple[ProblemFinding, ...]
    columns: tuple[str, ...]
    cells: tuple[CellFinding, ...]
    comparisons: tuple[ComparisonFinding, ...]
    attribution: tuple[AttributionRow, ...]
    axis_verdicts: Mapping[str, str]
    portability: tuple[PortabilityFinding, ...] = ()
    #: the user's files the cells read (--model, --inputs...): file name and sha256
    inputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def comparisons_of(self, kind: str) -> list[ComparisonFinding]:
        return [c for c in self.comparisons if c.kind == kind]


# ---- building it ----------------------------------------------------------------------


@dataclass(kw_only=True)
class _Analysis:
    """The comparisons of one report, memoised by (candidate, baseline)."""

    thresholds: Mapping[str, Thresholds]
    memo: dict[tuple[str, str], tuple[PhaseResult, ...]] = field(default_factory=dict)

    def compare(self, candidate: CellArtifact, baseline: CellArtifact) -> tuple[PhaseResult, ...]:
        key = (candidate.cell_id, baseline.cell_id)
        if key not in self.memo:
            self.memo[key] = compare_cells(candidate, baseline, thresholds=self.thresholds)
        return self.memo[key]


def build_findings(
    cells: Sequence[CellArtifact],
    repeats: Mapping[str, Sequence[CellArtifact]],
    *,
    plan: PlanFile,
    reference: ReferenceChoice,
    thresholds: Mapping[str, Thresholds],
    fail_on: DriftClass | None,
    problems: Sequence[Problem],
    generated_at: str,
    stage_two: Mapping[str, CellArtifact] | None = None,
) -> Findings:
    """Every comparison of the report and its summary; ``stage_two``: the
    cells' stage-two runs (the portability matrix)."""
    analysis = _Analysis(thresholds=thresholds)
    by_id = {c.cell_id: c for c in cells}
    ref_cell = by_id.get(reference.cell) if reference.cell else None
    comparisons = _reference_comparisons(cells, ref_cell, analysis)
    comparisons += _oracle_comparisons(cells, thresholds)
    repeat_comparisons, determinism = _repeat_comparisons(cells, repeats, thresholds)
    comparisons += repeat_comparisons

    axes = tuple(plan.axes) or tuple(sorted({a for c in cells for a in c.axes}))
    attribution = attribute([c for c in cells if not c.missing], axes, analysis.compare)
    for row in attribution:
        comparisons += [
            CellComparison(
                kind="axis", candidate=high, baseline=low, phases=analysis.memo[(high, low)]
            )
            for low, high in row.pairs
        ]

    all_problems = [
        *problems,
        *_cell_problems(cells, repeats),
        *(
            Problem(kind="run", message=f"stage two: {run.problem}", cell=cid)
            for cid, run in (stage_two or {}).items()
            if run.problem is not None
        ),
    ]
    gated = gate_matches(comparisons, fail_on)
    verdicts = Verdicts.count(comparisons)
    summary = summarise(cells, verdicts, determinism, gated, fail_on, all_problems)
    return Findings(
        schema=REPORT_SCHEMA_ID,
        schema_version=REPORT_SCHEMA_VERSION,
        generated_at=generated_at,
        tool=Tool(name="keras-repro-matrix", version=__version__),
        spec=plan.spec,
        reference=ReferenceChoice(
            cell=ref_cell.cell_id if ref_cell else None, chosen_by=reference.chosen_by
        ),
        axes=axes,
        axis_values={
            axis: tuple(
                format_value(v)
                for v in sorted({c.axes[axis] for c in cells if axis in c.axes}, key=axis_value_key)
            )
            for axis in axes
        },
        thresholds={dt: th.as_dict() for dt, th in sorted(thresholds.items())},
        classes=tuple(
            ClassInfo(name=cls.value, rank=cls.rank, description=cls.description)
            for cls in DriftClass
        ),
        gate=Gate(
            fail_on=fail_on.value if fail_on else None, kinds=GATED_KINDS, matched=len(gated)
        ),
        summary=summary,
        problems=tuple(
            ProblemFinding(kind=p.kind, cell=p.cell, message=p.message) for p in all_problems
        ),
        columns=tuple(f"{s}/{p}" for s, p in columns_of(comparisons)),
        cells=tuple(
            _cell(c, len(repeats.get(c.cell_id, ())), determinism.get(c.cell_id)) for c in cells
        ),
        comparisons=tuple(_comparison(c) for c in comparisons),
        attribution=tuple(_attribution(row) for row in attribution),
        axis_verdicts={a: v.value for a, v in sorted(axis_verdicts(attribution).items())},
        portability=tuple(
            _portability(m) for m in portability_matrices(cells, stage_two or {}, thresholds)
        ),
        inputs={k: dict(v) for k, v in plan.inputs.items()},
    )


def _reference_comparisons(
    cells: Sequence[CellArtifact], ref_cell: CellArtifact | None, analysis: _Analysis
) -> list[CellComparison]:
    if ref_cell is None:
        return []
    return [
        CellComparison(
            kind="reference",
            candidate=cell.cell_id,
            baseline=ref_cell.cell_id,
            phases=analysis.compare(cell, ref_cell),
        )
        for cell in cells
    ]


def _oracle_comparisons(
    cells: Sequence[CellArtifact], thresholds: Mapping[str, Thresholds]
) -> list[CellComparison]:
    out = []
    for cell in cells:
        if cell.ok:
            phases = compare_with_oracle(cell, thresholds=thresholds)
            if phases:
                out.append(
                    CellComparison(
                        kind="oracle", candidate=cell.cell_id, baseline=ORACLE, phases=phases
                    )
                )
    return out


def _repeat_comparisons(
    cells: Sequence[CellArtifact],
    repeats: Mapping[str, Sequence[CellArtifact]],
    thresholds: Mapping[str, Thresholds],
) -> tuple[list[CellComparison], dict[str, bool | None]]:
    """Each cell against its own repeats: is this environment deterministic?"""
    out: list[CellComparison] = []
    determinism: dict[str, bool | None] = {}
    for cell in cells:
        runs = [r for r in repeats.get(cell.cell_id, ()) if r.ok]
        if not cell.ok or not runs:
            determinism[cell.cell_id] = None
            continue
        merged = merge_repeats([compare_cells(run, cell, thresholds=thresholds) for run in runs])
        out.append(
            CellComparison(
                kind="repeat", candidate=cell.cell_id, baseline=cell.cell_id, phases=merged
            )
        )
        determinism[cell.cell_id] = all(
            p.verdict in (DriftClass.IDENTICAL, DriftClass.UNSUPPORTED)
            for p in merged
            if not p.varies and not p.failed_both
        )
    return out, determinism


def _cell_problems(
    cells: Sequence[CellArtifact], repeats: Mapping[str, Sequence[CellArtifact]]
) -> list[Problem]:
    out = []
    for cell in cells:
        if cell.problem is not None and not cell.missing:
            kind = "run" if cell.run_failed else "artifact"
            out.append(Problem(kind=kind, message=cell.problem, cell=cell.cell_id))
        for n, run in enumerate(repeats.get(cell.cell_id, ()), start=1):
            if run.problem is not None:
                kind = "run" if run.run_failed else "artifact"
                out.append(
                    Problem(kind=kind, message=f"repeat {n}: {run.problem}", cell=cell.cell_id)
                )
    return out


def _cell(cell: CellArtifact, repeats: int, deterministic: bool | None) -> CellFinding:
    status = "missing" if cell.missing else ("failed" if cell_failed(cell) else "ok")
    return CellFinding(
        id=cell.cell_id,
        status=status,
        problem=cell.problem,
        axes={k: cell.axes[k] for k in sorted(cell.axes)},
        executor=cell.executor,
        environment_id=cell.environment_id,
        repeats=repeats,
        deterministic=deterministic,
        fingerprint=cell.fingerprint,
        settings=cell.settings,
        timings=cell.timings,
        started_at=cell.started_at,
        finished_at=cell.finished_at,
        scenarios=tuple(
            ScenarioFinding(
                name=s.name,
                status=s.status,
                seconds=s.seconds,
                error=ErrorFinding(
                    type=s.error.type, message=s.error.message, traceback=s.error.traceback
                )
                if s.error
                else None,
                notes=tuple(s.notes),
                data=s.data,
            )
            for s in cell.scenarios.values()
        ),
        log_tail=cell.log_tail if status != "ok" else None,
    )


def _comparison(c: CellComparison) -> ComparisonFinding:
    # Attribution pairs keep phase-level numbers only: their per-tensor
    # detail would multiply the report by the number of axes, and the same
    # tensors' numbers are in the reference comparisons.
    with_tensors = c.kind != "axis"
    return ComparisonFinding(
        id=f"axis:{c.baseline}->{c.candidate}" if c.kind == "axis" else f"{c.kind}:{c.candidate}",
        kind=c.kind,
        candidate=c.candidate,
        baseline=c.baseline,
        verdict=c.verdict.value,
        phases=tuple(phase_finding(p, with_tensors) for p in c.phases),
    )


def phase_finding(p: PhaseResult, with_tensors: bool = True) -> PhaseFinding:
    size = sum(c.size for _, c in p.tensors)
    outside = sum(c.outside_rounding + c.nonfinite_mismatch for _, c in p.tensors)
    return PhaseFinding(
        column=p.column,
        scenario=p.scenario,
        phase=p.phase,
        verdict=p.verdict.value,
        reason=p.reason,
        max_abs=p.peak("max_abs"),
        max_rel=p.peak("max_rel"),
        max_ulp=p.peak("max_ulp"),
        fraction_outside=(outside / size) if size else 0.0,
        localisation=_localisation(p.localisation),
        expected_to_vary=p.varies,
        tensors=tuple(_tensor(k, c) for k, c in p.tensors) if with_tensors else (),
    )


def _localisation(loc: Localisation | None) -> LocalisationFinding | None:
    if loc is None:
        return None

    def layer(f: LayerFinding | None) -> LayerPoint | None:
        if f is None:
            return None
        return LayerPoint(
            index=f.index,
            name=f.name,
            key=f.key,
            verdict=f.verdict.value,
            max_rel=f.max_rel,
            max_ulp=f.max_ulp,
        )

    return LocalisationFinding(
        layers=loc.layers, first_change=layer(loc.first_change), first_drift=layer(loc.first_drift)
    )


def _tensor(key: str, c: TensorComparison) -> TensorFinding:
    return TensorFinding(
        key=key,
        verdict=c.verdict.value,
        reason=c.reason,
        dtype=c.dtype,
        shape=c.shape,
        baseline_shape=c.baseline_shape,
        size=c.size,
        max_abs=c.max_abs,
        max_rel=c.max_rel,
        max_ulp=c.max_ulp,
        outside_rounding=c.outside_rounding,
        outside_divergent=c.outside_divergent,
        nonfinite_mismatch=c.nonfinite_mismatch,
        fraction_outside=c.fraction_outside,
        worst=tuple(
            WorstFinding(
                index=w.index,
                candidate=w.candidate,
                baseline=w.baseline,
                abs_error=w.abs_error,
                ulp=w.ulp,
            )
            for w in c.worst
        ),
    )


def _attribution(row: AxisChange) -> AttributionRow:
    def effects(items: Sequence[PhaseSummary]) -> tuple[PhaseEffect, ...]:
        return tuple(
            PhaseEffect(
                phase=s.phase,
                verdict=s.verdict.value,
                max_abs=s.max_abs,
                max_rel=s.max_rel,
                max_ulp=s.max_ulp,
            )
            for s in items
        )

    return AttributionRow(
        axis=row.axis,
        before=format_value(row.before),
        after=format_value(row.after),
        verdict=row.verdict.value,
        summary=row.summary,
        pairs=row.pairs,
        phases=effects(row.phases),
        columns=effects(row.columns),
        first_layers=row.first_layers,
        expected_to_vary=row.varying,
    )


def _portability(matrix: FormatMatrix) -> PortabilityFinding:
    def peak(load: Any, attr: str) -> float:
        return float(getattr(load.comparison, attr)) if load.comparison is not None else math.nan

    return PortabilityFinding(
        format=matrix.format,
        cells=matrix.cells,
        models=matrix.models,
        saved=tuple(
            SaveFinding(
                cell=s.cell, model=s.model, status=s.status, reason=s.reason, container=s.container
            )
            for s in matrix.saved
        ),
        loads=tuple(
            LoadFinding(
                saved_in=x.saved_in,
                loaded_in=x.loaded_in,
                model=x.model,
                status=x.status,
                verdict=x.verdict.value,
                reason=x.reason,
                how=x.how,
                max_abs=peak(x, "max_abs"),
                max_rel=peak(x, "max_rel"),
                max_ulp=peak(x, "max_ulp"),
            )
            for x in matrix.loads
        ),
    )
