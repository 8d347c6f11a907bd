"""Findings: everything the report says, as typed data.

One dataclass per object of ``report.json`` (``matrix/report/report.schema.json``
describes the same shape), built here from the analysis (comparisons
against the reference cell, against the float64 oracles, across repeats;
attribution per axis and context, upgrade chains, the all-pairs digest
table, portable tolerances, localisation); the exit policy is in
:mod:`matrix.analysis.gate`. Renderers read these objects, so mypy checks
every field they use; :mod:`matrix.report.serialize` turns them into JSON.

Numbers stay floats here (NaN where there is none, infinities as they are);
the serialiser writes NaN as null and infinities as "inf"/"-inf".  Every
number a renderer shows is one of these fields, merged ones included (the
largest over contexts whose verdicts agree is kept as its own field).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matrix import __version__
from matrix.analysis.attribute import (
    LISTED_CONTEXTS,
    Agreement,
    AxisChange,
    AxisEffect,
    PhaseSummary,
    attribute,
    axis_effects,
    effect_text,
    merge_summaries,
)
from matrix.analysis.chains import Chain, ChainLine, Onset, chain_lines, inferred_chains
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
from matrix.analysis.context import (
    AxisValue,
    Context,
    axis_value_key,
    context_key,
    context_label,
    describe,
    distinguishing_axes,
    format_value,
    varying_axes,
)
from matrix.analysis.drift import DriftClass, Thresholds, worst
from matrix.analysis.gate import (
    GATED_KINDS,
    Problem,
    Summary,
    Verdicts,
    cell_failed,
    gate_matches,
    summarise,
)
from matrix.analysis.hardware import HardwareFinding, hardware_of
from matrix.analysis.localize import LayerFinding, Localisation
from matrix.analysis.pairs import PAIR_BUDGET, PairTable, all_pairs
from matrix.analysis.portability import FormatMatrix, portability_matrices
from matrix.analysis.tolerances import Tolerance, portable_tolerances, tolerance_axes
from matrix.execute.planfile import PlanFile
from matrix.plan.cells import derived_when_unrecorded
from matrix.results.artifacts import CellArtifact
from scenarios.contract import AXES, PHASES

__all__ = [
    "REPORT_SCHEMA_ID",
    "REPORT_SCHEMA_VERSION",
    "AttributionRow",
    "AxisEffectFinding",
    "CellFinding",
    "ChainFinding",
    "ComparisonFinding",
    "ContextEffect",
    "Findings",
    "PairsFinding",
    "PhaseFinding",
    "PortabilityFinding",
    "Summary",
    "ToleranceFinding",
    "build_findings",
    "pairs_finding",
]

REPORT_SCHEMA_ID = "keras-repro-matrix/report"
REPORT_SCHEMA_VERSION = 2


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
    #: the machine, the instruction-set cap and what the hardware chose
    hardware: HardwareFinding

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
    # the assert_allclose pair this tensor needs (see matrix.analysis.compare)
    allclose_rtol: float
    allclose_atol: float


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
class ContextEffect:
    """A change of one axis in one context: the pair(s) behind it and what it did."""

    context: Mapping[str, str]  # every context axis -> its value here
    label: str  # the values that tell this context from the change's others
    verdict: str  # the worst over the phases, in this context
    pairs: tuple[
        tuple[str, str], ...
    ]  # (baseline cell, candidate cell); per column: "axis" comparisons
    phases: tuple[PhaseEffect, ...]
    first_layers: tuple[str, ...]
    expected_to_vary: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ContextGroup:
    """Contexts in which a change gave every phase the same verdict (each context
    alone when a change has only a few): what the tables show, one column each."""

    label: str  # 'precision=mixed_float16 or mixed_bfloat16', or one context's label
    contexts: tuple[str, ...]  # the labels of its contexts
    verdict: str
    phases: tuple[PhaseEffect, ...]  # the shared verdicts; the largest numbers of the group


@dataclass(frozen=True, kw_only=True)
class PhaseAgreement:
    """One phase of a change across its contexts: said once only where they agree."""

    phase: str
    agreed: str | None  # the verdict of every context; None: they differ
    #: the verdict of every context that compared it (None: they differ), and
    #: those contexts named briefly ('every context' where all did)
    agreed_where_compared: str | None
    compared_in: str
    max_abs: float  # over the contexts, only when they agree (else NaN)
    max_rel: float
    max_ulp: float
    text: str  # 'train: precision=float32: rounding (9 ULP); precision=...: drift (rel 8.8e-03)'


@dataclass(frozen=True, kw_only=True)
class AttributionRow:
    axis: str
    before: str
    after: str
    context_axes: tuple[str, ...]  # the axes whose values make a context
    label_axes: tuple[str, ...]  # those that differ among this change's contexts
    common: Mapping[str, str]  # context values every one of its contexts shares
    verdict: str | None  # the same worst verdict in every context; None: it depends
    worst: tuple[GroupVerdict, ...]  # the contexts with the same worst verdict, named briefly
    groups: tuple[ContextGroup, ...]
    head: str  # 'stack tf-2.15 -> tf-2.16 (3 contexts; onednn=default in all)'
    summary: str  # the head, then every phase: once where contexts agree, else per context
    contexts: tuple[ContextEffect, ...]
    phases: tuple[PhaseAgreement, ...]
    columns: tuple[PhaseAgreement, ...]


@dataclass(frozen=True, kw_only=True)
class ContextVerdict:
    context: Mapping[str, str]
    label: str
    verdict: str


@dataclass(frozen=True, kw_only=True)
class GroupVerdict:
    label: str
    verdict: str


@dataclass(frozen=True, kw_only=True)
class AxisEffectFinding:
    """The worst any change of one axis did, per context."""

    axis: str
    verdict: str | None  # the same in every context; None: it depends on the context
    groups: tuple[GroupVerdict, ...]  # contexts with the same verdict, named briefly
    contexts: tuple[ContextVerdict, ...]


@dataclass(frozen=True, kw_only=True)
class ChainStepFinding:
    before: str
    after: str
    baseline: str
    candidate: str
    phases: tuple[PhaseEffect, ...]  # the main phases, worst over scenarios


@dataclass(frozen=True, kw_only=True)
class OnsetFinding:
    column: str
    first_change: str | None  # the first release not bitwise identical to the previous one
    change_verdict: str | None
    first_drift: str | None  # the first release that drifts (or worse) from the previous one
    drift_verdict: str | None
    not_compared: tuple[str, ...]  # releases where the phase failed, is missing or n/a


@dataclass(frozen=True, kw_only=True)
class ChainLineFinding:
    context: Mapping[str, str]
    label: str
    cells: tuple[str, ...]
    steps: tuple[ChainStepFinding, ...]
    onsets: tuple[OnsetFinding, ...]


@dataclass(frozen=True, kw_only=True)
class OnsetAgreement:
    column: str
    agreed: bool  # the same onsets in every context
    text: str


@dataclass(frozen=True, kw_only=True)
class ChainStepGroup:
    before: str
    after: str
    phases: tuple[PhaseEffect, ...]  # the shared verdicts; the largest numbers of the group


@dataclass(frozen=True, kw_only=True)
class ChainGroup:
    label: str
    contexts: tuple[str, ...]
    steps: tuple[ChainStepGroup, ...]


@dataclass(frozen=True, kw_only=True)
class ChainFinding:
    axis: str
    values: tuple[str, ...]
    declared: bool  # the spec's [[chain]]; False: read from version-like values in plan order
    at: Mapping[str, str]
    context_axes: tuple[str, ...]
    label_axes: tuple[str, ...]
    lines: tuple[ChainLineFinding, ...]
    onsets: tuple[OnsetAgreement, ...]
    groups: tuple[ChainGroup, ...]  # lines whose steps all agree, merged (beyond a few)

    @property
    def main_phases(self) -> tuple[str, ...]:
        """The standard phases (contract.PHASES) this chain's steps have, in
        reading order: the columns of its step tables."""
        seen = {p.phase for g in self.groups for s in g.steps for p in s.phases}
        return tuple(p for p in PHASES if p in seen)


@dataclass(frozen=True, kw_only=True)
class PairTensorFinding:
    key: str
    verdict: str
    dtype: str
    max_abs: float
    max_rel: float
    max_ulp: float


@dataclass(frozen=True, kw_only=True)
class PairPhaseFinding:
    """Two digests of one column compared (``baseline`` the earlier cell's)."""

    column: str
    baseline: int
    candidate: int
    verdict: str
    reason: str
    max_abs: float
    max_rel: float
    max_ulp: float
    expected_to_vary: bool
    identical_tensors: int  # tensors bitwise equal, left out of ``tensors``
    tensors: tuple[PairTensorFinding, ...]  # the others


@dataclass(frozen=True, kw_only=True)
class PairsFinding:
    """Any two cells: per cell and column a digest id; per digest pair a comparison."""

    cells: tuple[str, ...]
    columns: tuple[str, ...]
    digests: tuple[tuple[int, ...], ...]
    phases: tuple[PairPhaseFinding, ...]
    skipped: tuple[str, ...]
    budget: int
    tensor_comparisons: int


@dataclass(frozen=True, kw_only=True)
class ToleranceFinding:
    against: str  # reference | oracle
    baseline: str
    column: str
    dtype: str
    context: Mapping[str, str]
    label: str
    rtol: float
    atol: float
    verdict: str  # the worst tensor verdict the tolerance had to absorb
    line: str
    cells: tuple[str, ...]
    tensors: int
    not_compared: tuple[str, ...]


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
    derived_axes: tuple[str, ...]
    context_axes: tuple[str, ...]
    tolerance_axes: tuple[str, ...]
    thresholds: Mapping[str, Mapping[str, float]]
    classes: tuple[ClassInfo, ...]
    gate: Gate
    summary: Summary
    problems: tuple[ProblemFinding, ...]
    columns: tuple[str, ...]
    cells: tuple[CellFinding, ...]
    comparisons: tuple[ComparisonFinding, ...]
    attribution: tuple[AttributionRow, ...]
    axis_effects: tuple[AxisEffectFinding, ...]
    chains: tuple[ChainFinding, ...]
    tolerances: tuple[ToleranceFinding, ...]
    pairs: PairsFinding
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

    # Every axis the cells carry, the plan's first and in its order: axes
    # added later (a machine merged from several hosts) join attribution as they are.
    carried = sorted({a for c in cells for a in c.axes} - set(plan.axes))
    axes = (*plan.axes, *carried)
    present = [c for c in cells if not c.missing]
    varying = varying_axes(present, axes)
    derived = plan.derived if plan.derived is not None else derived_when_unrecorded(varying)
    context_axes = tuple(a for a in varying if a not in derived)
    attribution = attribute(present, context_axes, analysis.compare, context_axes)
    for row in attribution:
        comparisons += [
            CellComparison(
                kind="axis", candidate=high, baseline=low, phases=analysis.memo[(high, low)]
            )
            for change in row.contexts
            for low, high in change.pairs
        ]
    records = [(c, True) for c in plan.chains]
    records += [(c, False) for c in inferred_chains(present, context_axes, plan.chains)]
    chains = [
        chain_lines(present, record, context_axes, analysis.compare, declared=declared)
        for record, declared in records
    ]
    roles = {a.name: a.selects for a in AXES}
    tol_axes = tolerance_axes(context_axes, roles)
    tolerances = portable_tolerances(comparisons, present, tol_axes, context_key(present, tol_axes))
    pairs = all_pairs(cells, thresholds=thresholds, budget=PAIR_BUDGET)

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
        derived_axes=tuple(a for a in derived if a in axes),
        context_axes=context_axes,
        tolerance_axes=tol_axes,
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
        axis_effects=tuple(_axis_effect(e) for e in axis_effects(attribution)),
        chains=tuple(_chain(c) for c in chains if c.lines),
        tolerances=tuple(_tolerance(t) for t in tolerances),
        pairs=pairs_finding(pairs),
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
        hardware=hardware_of(cell.fingerprint),
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
        allclose_rtol=c.allclose_rtol,
        allclose_atol=c.allclose_atol,
    )


def _context(context: Context) -> dict[str, str]:
    return {axis: format_value(value) for axis, value in context}


def _effects(items: Sequence[PhaseSummary]) -> tuple[PhaseEffect, ...]:
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


def _agreements(row: AxisChange, items: Sequence[Agreement]) -> tuple[PhaseAgreement, ...]:
    out = []
    for item in items:
        peak = item.peak
        out.append(
            PhaseAgreement(
                phase=item.phase,
                agreed=item.agreed.value if item.agreed is not None else None,
                agreed_where_compared=item.agreed_where_compared.value
                if item.agreed_where_compared is not None
                else None,
                compared_in="every context"
                if len(item.compared) == len(item.per_context)
                else row.describe(item.compared),  # 'no context' where none did
                max_abs=peak.max_abs if peak else math.nan,
                max_rel=peak.max_rel if peak else math.nan,
                max_ulp=peak.max_ulp if peak else math.nan,
                text=effect_text(item, row.describe),
            )
        )
    return tuple(out)


def _attribution(row: AxisChange) -> AttributionRow:
    verdict = row.verdict
    return AttributionRow(
        axis=row.axis,
        before=format_value(row.before),
        after=format_value(row.after),
        context_axes=row.context_axes,
        label_axes=row.label_axes,
        common=dict(row.common),
        verdict=verdict.value if verdict is not None else None,
        worst=tuple(GroupVerdict(label=label, verdict=v.value) for label, v in row.worst_groups),
        groups=tuple(
            ContextGroup(
                label=row.describe(g.contexts),
                contexts=tuple(row.label(c) or context_label(c) for c in g.contexts),
                verdict=worst(p.verdict for p in g.phases).value,
                phases=_effects(g.phases),
            )
            for g in row.groups
        ),
        head=row.head,
        summary=row.summary,
        contexts=tuple(
            ContextEffect(
                context=_context(c.context),
                label=row.label(c.context) or context_label(c.context),
                verdict=c.verdict.value,
                pairs=c.pairs,
                phases=_effects(c.phases),
                first_layers=c.first_layers,
                expected_to_vary=c.varying,
            )
            for c in row.contexts
        ),
        phases=_agreements(row, row.phases),
        columns=_agreements(row, row.columns),
    )


def _axis_effect(effect: AxisEffect) -> AxisEffectFinding:
    names = effect.label_axes
    return AxisEffectFinding(
        axis=effect.axis,
        verdict=effect.agreed.value if effect.agreed is not None else None,
        groups=tuple(GroupVerdict(label=label, verdict=v.value) for label, v in effect.groups),
        contexts=tuple(
            ContextVerdict(
                context=_context(c),
                label=context_label(c, names) or context_label(c),
                verdict=v.value,
            )
            for c, v in effect.per_context
        ),
    )


def _onset(o: Onset) -> OnsetFinding:
    def shown(value: AxisValue) -> str | None:
        return None if value is None else format_value(value)

    return OnsetFinding(
        column=o.column,
        first_change=shown(o.first_change),
        change_verdict=o.change_verdict.value if o.change_verdict else None,
        first_drift=shown(o.first_drift),
        drift_verdict=o.drift_verdict.value if o.drift_verdict else None,
        not_compared=tuple(format_value(v) for v in o.not_compared),
    )


def onset_text(o: OnsetFinding) -> str:
    """'first not identical: tf-2.16 (rounding); first drift: tf-2.21 (drift)', or the like."""
    if o.first_change is None:
        text = "bitwise identical at every step"
    else:
        text = f"first not identical: {o.first_change} ({o.change_verdict})"
        if o.first_drift is None:
            text += "; never drifts"
        elif o.first_drift == o.first_change:
            text = f"first not identical and first drift: {o.first_drift} ({o.drift_verdict})"
        else:
            text += f"; first drift: {o.first_drift} ({o.drift_verdict})"
    if o.not_compared:
        text += f"; not compared at {', '.join(o.not_compared)}"
    return text


def _chain(chain: Chain) -> ChainFinding:
    names = distinguishing_axes(line.context for line in chain.lines)
    lines = tuple(_line(line, names) for line in chain.lines)
    columns: list[str] = []
    for line in lines:
        columns += [o.column for o in line.onsets if o.column not in columns]
    onsets = []
    for column in columns:
        per = [
            (line.label, next((o for o in line.onsets if o.column == column), None))
            for line in lines
        ]
        texts = [(label, onset_text(o) if o else "not compared") for label, o in per]
        # contexts that read the same share one clause, named as briefly as
        # the others allow; a phase some contexts never ran is said where it ran
        by_text: dict[str, list[Context]] = {}
        for step_line, (_, t) in zip(chain.lines, texts, strict=True):
            by_text.setdefault(t, []).append(step_line.context)
        universe = [step_line.context for step_line in chain.lines]
        compared = {t: g for t, g in by_text.items() if t != "not compared"}
        if len(by_text) == 1:
            every = "in every context" if len(texts) > 1 else "in its only context"
            text = f"{column}: {texts[0][1]} ({every})"
        elif len(compared) == 1:
            ((t, group),) = compared.items()
            text = f"{column}: {t} (where compared: {describe(group, universe, names)})"
        else:
            text = f"{column}: " + "; ".join(
                f"{describe(g, universe, names)}: {t}" for t, g in by_text.items()
            )
        onsets.append(OnsetAgreement(column=column, agreed=len(by_text) == 1, text=text))
    return ChainFinding(
        groups=_chain_groups(chain, names),
        axis=chain.axis,
        values=tuple(format_value(v) for v in chain.values),
        declared=chain.declared,
        at={a: format_value(v) for a, v in chain.at.items()},
        context_axes=chain.context_axes,
        label_axes=names,
        lines=lines,
        onsets=tuple(onsets),
    )


def _chain_groups(chain: Chain, names: Sequence[str]) -> tuple[ChainGroup, ...]:
    """Lines merged where every step gave every main phase the same verdict
    (each line alone when there are only a few)."""
    universe = [line.context for line in chain.lines]
    found: dict[tuple[object, ...], list[ChainLine]] = {}
    for n, line in enumerate(chain.lines):
        profile = tuple(
            (s.before, s.after, tuple((p.phase, p.verdict) for p in s.phases)) for s in line.steps
        )
        found.setdefault(profile if len(universe) > LISTED_CONTEXTS else (n,), []).append(line)
    out = []
    for members in found.values():
        contexts = [m.context for m in members]
        label = (
            context_label(contexts[0], names) or context_label(contexts[0]) or "every cell"
            if len(contexts) == 1
            else describe(contexts, universe, names)
        )
        steps = []
        for k, step in enumerate(members[0].steps):
            same = [p for m in members for p in m.steps[k].phases]
            steps.append(
                ChainStepGroup(
                    before=format_value(step.before),
                    after=format_value(step.after),
                    phases=_effects(
                        [
                            merge_summaries(
                                p.phase, p.verdict, [q for q in same if q.phase == p.phase]
                            )
                            for p in step.phases
                        ]
                    ),
                )
            )
        out.append(
            ChainGroup(
                label=label,
                contexts=tuple(context_label(c, names) or context_label(c) for c in contexts),
                steps=tuple(steps),
            )
        )
    return tuple(out)


def _line(line: ChainLine, names: Sequence[str]) -> ChainLineFinding:
    return ChainLineFinding(
        context=_context(line.context),
        label=context_label(line.context, names) or context_label(line.context) or "every cell",
        cells=line.cells,
        steps=tuple(
            ChainStepFinding(
                before=format_value(s.before),
                after=format_value(s.after),
                baseline=s.baseline,
                candidate=s.candidate,
                phases=_effects(s.phases),
            )
            for s in line.steps
        ),
        onsets=tuple(_onset(o) for o in line.onsets),
    )


def _tolerance(t: Tolerance) -> ToleranceFinding:
    return ToleranceFinding(
        against=t.against,
        baseline=t.baseline,
        column=t.column,
        dtype=t.dtype,
        context=_context(t.context),
        label=context_label(t.context) or "every cell",
        rtol=t.rtol,
        atol=t.atol,
        verdict=t.verdict.value,
        line=t.line,
        cells=t.cells,
        tensors=t.tensors,
        not_compared=t.not_compared,
    )


def pairs_finding(table: PairTable) -> PairsFinding:
    """The all-pairs table as report.json holds it: per-tensor rows only where not identical."""
    phases = []
    for entry in table.phases:
        p = entry.result
        kept = [(k, c) for k, c in p.tensors if c.verdict is not DriftClass.IDENTICAL]
        phases.append(
            PairPhaseFinding(
                column=entry.column,
                baseline=entry.baseline,
                candidate=entry.candidate,
                verdict=p.verdict.value,
                reason=p.reason,
                max_abs=p.peak("max_abs"),
                max_rel=p.peak("max_rel"),
                max_ulp=p.peak("max_ulp"),
                expected_to_vary=p.varies,
                identical_tensors=len(p.tensors) - len(kept),
                tensors=tuple(
                    PairTensorFinding(
                        key=k,
                        verdict=c.verdict.value,
                        dtype=c.dtype,
                        max_abs=c.max_abs,
                        max_rel=c.max_rel,
                        max_ulp=c.max_ulp,
                    )
                    for k, c in kept
                ),
            )
        )
    return PairsFinding(
        cells=table.cells,
        columns=table.columns,
        digests=table.digests,
        phases=tuple(phases),
        skipped=table.skipped,
        budget=table.budget,
        tensor_comparisons=table.tensor_comparisons,
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
