"""Attribution: what changing one axis alone does to each phase.

For each axis, cells are grouped by the values of all the *other* axes; in a
group, cells sorted by this axis's value are compared neighbour to
neighbour ("tensorflow 2.15 -> 2.16").  Every cell sits in one group per
axis and meets at most two neighbours, so the work grows with
cells x axes, never cells squared.  The comparisons of the same change in
different contexts (2.15 -> 2.16 on cpu and on gpu) are folded into one row
that keeps the worst verdict per phase and lists the pairs behind it.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from matrix.analysis.comparisons import PhaseResult, phase_sort_key
from matrix.analysis.drift import DriftClass, worst
from matrix.results.artifacts import CellArtifact

__all__ = [
    "AxisChange",
    "PhaseSummary",
    "attribute",
    "axis_value_key",
    "format_value",
    "neighbour_pairs",
]

AxisValue = str | int | bool | None


@dataclass(frozen=True, kw_only=True)
class PhaseSummary:
    """The worst a change did to one phase (aggregated over scenarios or not)."""

    phase: str
    verdict: DriftClass
    max_abs: float
    max_rel: float
    max_ulp: float


@dataclass(frozen=True, kw_only=True)
class AxisChange:
    axis: str
    before: AxisValue
    after: AxisValue
    pairs: tuple[tuple[str, str], ...]  # (baseline cell, candidate cell)
    phases: tuple[PhaseSummary, ...]  # per phase name, worst over scenarios
    columns: tuple[PhaseSummary, ...]  # per scenario/phase
    first_layers: tuple[str, ...]  # "scenario: layer_03_dense (drift)" where localised
    varying: tuple[str, ...] = ()  # scenario/phase columns left out: unseeded on purpose

    @property
    def verdict(self) -> DriftClass:
        return worst(p.verdict for p in self.phases)

    @property
    def summary(self) -> str:
        """One sentence: 'tensorflow 2.15 -> 2.16: init identical, train rounding, max 4 ULP'."""
        head = f"{self.axis} {format_value(self.before)} -> {format_value(self.after)}"
        parts = [f"{p.phase} {p.verdict.value}" for p in self.phases]
        changed = [p for p in self.phases if p.verdict in _NUMERIC_CHANGE]
        tail = ""
        if changed:
            ulp = max((p.max_ulp for p in changed if not math.isnan(p.max_ulp)), default=math.nan)
            rel = max((p.max_rel for p in changed if not math.isnan(p.max_rel)), default=math.nan)
            bits = []
            if not math.isnan(ulp):
                bits.append(f"max {ulp:g} ULP")
            if not math.isnan(rel):
                bits.append(f"max rel {rel:.2g}")
            tail = ", " + ", ".join(bits) if bits else ""
        return f"{head}: {', '.join(parts) or 'nothing compared'}{tail}"


_NUMERIC_CHANGE = {DriftClass.ROUNDING, DriftClass.DRIFT, DriftClass.DIVERGENT}


def format_value(value: AxisValue) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def axis_value_key(value: AxisValue) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """Sort axis values naturally: unset, booleans, numbers, then strings ('2.9' < '2.12')."""
    if value is None:
        return (0, ())
    if isinstance(value, bool):
        return (1, ((0, int(value)),))
    if isinstance(value, int):
        return (2, ((0, value),))
    parts = re.findall(r"\d+|\D+", value)
    return (3, tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts))


def neighbour_pairs(
    cells: Sequence[CellArtifact], axes: Sequence[str]
) -> dict[str, list[tuple[CellArtifact, CellArtifact]]]:
    """For each axis, the (lower, higher) neighbour pairs that differ in that axis alone."""
    out: dict[str, list[tuple[CellArtifact, CellArtifact]]] = {}
    for axis in axes:
        rank = _value_rank(cells, axis)
        groups: dict[tuple[tuple[str, str], ...], list[CellArtifact]] = {}
        for cell in cells:
            if axis not in cell.axes:
                continue
            context = tuple((other, repr(cell.axes.get(other))) for other in axes if other != axis)
            groups.setdefault(context, []).append(cell)
        pairs: list[tuple[CellArtifact, CellArtifact]] = []
        for context in sorted(groups):
            members = sorted(groups[context], key=lambda c: (rank(c.axes[axis]), c.cell_id))
            for low, high in itertools.pairwise(members):
                if low.axes[axis] != high.axes[axis]:
                    pairs.append((low, high))
        out[axis] = pairs
    return out


def _value_rank(
    cells: Sequence[CellArtifact], axis: str
) -> Callable[[AxisValue], tuple[int, tuple[int, tuple[tuple[int, int | str], ...]]]]:
    """Order an axis's values as the spec lists them (cells come in plan
    order: tf-2.15 -> tf-2.16 -> tf-2.21 -> jax, not alphabetical), with the
    natural order as the tie-break for values the plan does not rank."""
    first: dict[str, int] = {}
    for cell in cells:
        if axis in cell.axes:
            first.setdefault(repr(cell.axes[axis]), len(first))

    def rank(value: AxisValue) -> tuple[int, tuple[int, tuple[tuple[int, int | str], ...]]]:
        return (first.get(repr(value), len(first)), axis_value_key(value))

    return rank


def attribute(
    cells: Sequence[CellArtifact],
    axes: Sequence[str],
    compare: Callable[[CellArtifact, CellArtifact], tuple[PhaseResult, ...]],
) -> list[AxisChange]:
    """Attribution rows, one per (axis, before -> after), in axis then value order.

    ``compare(candidate, baseline)`` returns the phase results of a pair; the
    caller memoises it so pairs shared with other comparisons are not redone.
    """
    rows: list[AxisChange] = []
    for axis, pairs in neighbour_pairs(cells, axes).items():
        by_change: dict[
            tuple[str, str], list[tuple[CellArtifact, CellArtifact, tuple[PhaseResult, ...]]]
        ] = {}
        values: dict[tuple[str, str], tuple[AxisValue, AxisValue]] = {}
        for low, high in pairs:
            change = (repr(low.axes[axis]), repr(high.axes[axis]))
            values[change] = (low.axes[axis], high.axes[axis])
            by_change.setdefault(change, []).append((low, high, compare(high, low)))
        rank = _value_rank(cells, axis)
        ordered = sorted(by_change, key=lambda ch: (rank(values[ch][0]), rank(values[ch][1])))
        for change in ordered:
            before, after = values[change]
            rows.append(_fold(axis, before, after, by_change[change]))
    return rows


def _fold(
    axis: str,
    before: AxisValue,
    after: AxisValue,
    items: list[tuple[CellArtifact, CellArtifact, tuple[PhaseResult, ...]]],
) -> AxisChange:
    per_phase: dict[str, list[PhaseResult]] = {}
    per_column: dict[tuple[str, str], list[PhaseResult]] = {}
    layers: list[str] = []
    varying: list[str] = []
    for _low, _high, phases in items:
        for result in phases:
            if result.varies:  # unseeded on purpose: says nothing about the axis
                if result.column not in varying:
                    varying.append(result.column)
                continue
            if result.failed_both:  # fails with either value: not this axis's doing
                continue
            per_phase.setdefault(result.phase, []).append(result)
            per_column.setdefault((result.scenario, result.phase), []).append(result)
            loc = result.localisation
            if loc is not None and loc.first_drift is not None:
                layer = loc.first_drift.key.rsplit("/", 1)[-1]
                note = f"{result.scenario}: {layer} ({loc.first_drift.verdict.value})"
                if note not in layers:
                    layers.append(note)
    phase_names = sorted(per_phase, key=lambda p: phase_sort_key(("", p)))
    return AxisChange(
        axis=axis,
        before=before,
        after=after,
        pairs=tuple((low.cell_id, high.cell_id) for low, high, _ in items),
        phases=tuple(_summarise(p, per_phase[p]) for p in phase_names),
        columns=tuple(
            _summarise(f"{s}/{p}", per_column[(s, p)])
            for s, p in sorted(per_column, key=phase_sort_key)
        ),
        first_layers=tuple(layers),
        varying=tuple(sorted(varying)),
    )


def _summarise(name: str, results: list[PhaseResult]) -> PhaseSummary:
    def peak(attr: str) -> float:
        vals = [v for r in results if not math.isnan(v := r.peak(attr))]
        return max(vals) if vals else math.nan

    return PhaseSummary(
        phase=name,
        verdict=worst(r.verdict for r in results),
        max_abs=peak("max_abs"),
        max_rel=peak("max_rel"),
        max_ulp=peak("max_ulp"),
    )


def axis_verdicts(rows: Sequence[AxisChange]) -> Mapping[str, DriftClass]:
    """The worst any change of each axis did: does this axis matter at all?"""
    out: dict[str, list[DriftClass]] = {}
    for row in rows:
        out.setdefault(row.axis, []).append(row.verdict)
    return {axis: worst(v) for axis, v in out.items()}
