"""Upgrade chains: consecutive releases compared, and where each phase first moves.

A chain is an ordered axis (2.12 -> 2.13 -> ... or tf-2.15 -> tf-2.16 ->
tf-2.21).  In each context (the values of the other axes that vary) the
cells along the chain are compared with their predecessor, and for every
scenario/phase the report names the first release whose result is no longer
bitwise identical to the previous release's, and the first that drifts (drift
or worse).  A step where the phase failed, is missing or does not apply is no
evidence either way: it is listed, never taken as the onset.

Chains come from the spec's ``[[chain]]`` tables (recorded in plan.json).
Without one, an axis whose values look like versions ("2.15", "tf-2.16")
is read as a chain of each family of values that differ only in their
numbers (tf-2.15, tf-2.16, tf-2.21; not keras-3.15-jax), in plan order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from matrix.analysis.attribute import PhaseSummary, summarise
from matrix.analysis.comparisons import PhaseResult
from matrix.analysis.context import (
    AxisValue,
    Context,
    context_key,
    context_of,
    value_rank,
)
from matrix.analysis.drift import DriftClass
from matrix.execute.planfile import ChainRecord
from matrix.results.artifacts import CellArtifact
from scenarios.contract import PHASES

__all__ = [
    "Chain",
    "ChainLine",
    "ChainStep",
    "Onset",
    "chain_lines",
    "inferred_chains",
]

_CHANGED = (DriftClass.ROUNDING, DriftClass.DRIFT, DriftClass.DIVERGENT)
_DRIFTED = (DriftClass.DRIFT, DriftClass.DIVERGENT)
_NO_EVIDENCE = (DriftClass.FAILED, DriftClass.MISSING, DriftClass.UNSUPPORTED)
#: "2.15", "tf-2.16", "keras-3.15-jax": a dotted number somewhere in the value.
_VERSION = re.compile(r"\d+\.\d+")


@dataclass(frozen=True, kw_only=True)
class ChainStep:
    """One release compared with the previous one in the chain."""

    before: AxisValue
    after: AxisValue
    baseline: str  # cell ids
    candidate: str
    phases: tuple[PhaseSummary, ...]  # the main phases (init, forward, ...), worst over scenarios
    columns: tuple[PhaseSummary, ...]  # every scenario/phase


@dataclass(frozen=True, kw_only=True)
class Onset:
    """Where one scenario/phase first moves along a chain line.

    ``first_change``/``first_drift`` are releases (the ``after`` of a step),
    None when it never happens in the steps compared.
    """

    column: str
    first_change: AxisValue | None
    change_verdict: DriftClass | None
    first_drift: AxisValue | None
    drift_verdict: DriftClass | None
    not_compared: tuple[AxisValue, ...]  # steps whose verdict is failed/missing/unsupported


@dataclass(frozen=True, kw_only=True)
class ChainLine:
    """A chain in one context: its cells in chain order, steps and onsets."""

    context: Context
    cells: tuple[str, ...]
    steps: tuple[ChainStep, ...]
    onsets: tuple[Onset, ...]


@dataclass(frozen=True, kw_only=True)
class Chain:
    axis: str
    values: tuple[AxisValue, ...]
    declared: bool  # the spec's [[chain]]; False: inferred from version-like values
    at: Mapping[str, AxisValue]
    context_axes: tuple[str, ...]
    lines: tuple[ChainLine, ...]


def inferred_chains(
    cells: Sequence[CellArtifact], axes: Sequence[str], declared: Sequence[ChainRecord]
) -> list[ChainRecord]:
    """Chains read from version-like values of axes that no declared chain covers."""
    covered = {c.axis for c in declared}
    out = []
    for axis in axes:
        if axis in covered:
            continue
        rank = value_rank(cells, axis)
        values = sorted(
            {repr(c.axes[axis]): c.axes[axis] for c in cells if axis in c.axes}.values(), key=rank
        )
        families: dict[str, list[str]] = {}
        for value in values:
            if isinstance(value, str) and _VERSION.search(value):
                families.setdefault(re.sub(r"\d+", "#", value), []).append(value)
        out += [
            ChainRecord(axis=axis, values=tuple(family))
            for family in families.values()
            if len(family) > 1
        ]
    return out


def chain_lines(
    cells: Sequence[CellArtifact],
    record: ChainRecord,
    context_axes: Sequence[str],
    compare: Callable[[CellArtifact, CellArtifact], tuple[PhaseResult, ...]],
    *,
    declared: bool,
) -> Chain:
    """The chain's lines, one per context in which two or more of its releases ran."""
    order = {repr(v): n for n, v in enumerate(record.values)}
    others = tuple(a for a in context_axes if a != record.axis)
    members = [
        c
        for c in cells
        if repr(c.axes.get(record.axis)) in order
        and all(c.axes.get(a) == v for a, v in record.at.items() if a in context_axes)
        and all(c.axes.get(a) in vals for a, vals in record.contexts.items())
    ]
    groups: dict[Context, list[CellArtifact]] = {}
    for cell in members:
        groups.setdefault(context_of(cell, others), []).append(cell)
    lines = []
    for context in sorted(groups, key=context_key(cells, others)):
        line = sorted(groups[context], key=lambda c: (order[repr(c.axes[record.axis])], c.cell_id))
        # one cell per release: a duplicate (same values, another id) is not a step
        line = [
            c
            for n, c in enumerate(line)
            if n == 0 or c.axes[record.axis] != line[n - 1].axes[record.axis]
        ]
        if len(line) > 1:
            lines.append(_line(context, line, record.axis, compare))
    return Chain(
        axis=record.axis,
        values=record.values,
        declared=declared,
        at={a: v for a, v in record.at.items() if a in context_axes},
        context_axes=others,
        lines=tuple(lines),
    )


def _line(
    context: Context,
    line: Sequence[CellArtifact],
    axis: str,
    compare: Callable[[CellArtifact, CellArtifact], tuple[PhaseResult, ...]],
) -> ChainLine:
    steps = []
    for low, high in itertools.pairwise(line):
        # unseeded on purpose, or failing on both sides: no evidence about the release
        results = [r for r in compare(high, low) if not r.varies and not r.failed_both]
        by_phase: dict[str, list[PhaseResult]] = {}
        for r in results:
            by_phase.setdefault(r.phase, []).append(r)
        steps.append(
            ChainStep(
                before=low.axes[axis],
                after=high.axes[axis],
                baseline=low.cell_id,
                candidate=high.cell_id,
                phases=tuple(summarise(p, by_phase[p]) for p in PHASES if p in by_phase),
                columns=tuple(summarise(r.column, [r]) for r in results),
            )
        )
    return ChainLine(
        context=context,
        cells=tuple(c.cell_id for c in line),
        steps=tuple(steps),
        onsets=_onsets(steps),
    )


def _onsets(steps: Sequence[ChainStep]) -> tuple[Onset, ...]:
    columns: list[str] = []
    for step in steps:
        columns += [s.phase for s in step.columns if s.phase not in columns]
    out = []
    for column in columns:
        change: tuple[AxisValue, DriftClass] | None = None
        drift: tuple[AxisValue, DriftClass] | None = None
        gaps: list[AxisValue] = []
        for step in steps:
            found = next((s for s in step.columns if s.phase == column), None)
            if found is None or found.verdict in _NO_EVIDENCE:
                gaps.append(step.after)
                continue
            if change is None and found.verdict in _CHANGED:
                change = (step.after, found.verdict)
            if drift is None and found.verdict in _DRIFTED:
                drift = (step.after, found.verdict)
        out.append(
            Onset(
                column=column,
                first_change=change[0] if change else None,
                change_verdict=change[1] if change else None,
                first_drift=drift[0] if drift else None,
                drift_verdict=drift[1] if drift else None,
                not_compared=tuple(gaps),
            )
        )
    return tuple(out)
