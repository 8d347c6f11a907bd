"""Attribution: what changing one axis alone does to each phase, per context.

For each axis, cells are grouped by their context (the values of the other
axes that vary in the report); in a group, cells sorted by this axis's
value are compared neighbour to neighbour ("tensorflow 2.15 -> 2.16").
Every cell sits in one group per axis and meets at most two neighbours, so
the work grows with cells x axes, never cells squared.

The same change seen in several contexts stays one effect per context: a
change that drifts under mixed_bfloat16 may be two ULP of rounding under
float32, and a float32 user must not be told "drift".  A phase is said once
only where its verdict agrees in every context; where it does not, each
context is named with its own verdict and numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from matrix.analysis.comparisons import PhaseResult, phase_sort_key
from matrix.analysis.context import (
    AxisValue,
    Context,
    axis_value_key,
    common_part,
    context_key,
    context_label,
    context_of,
    describe,
    distinguishing_axes,
    format_value,
    value_rank,
)
from matrix.analysis.drift import DriftClass, worst
from matrix.results.artifacts import CellArtifact

__all__ = [
    "Agreement",
    "AxisChange",
    "AxisEffect",
    "ContextChange",
    "PhaseSummary",
    "ProfileGroup",
    "agreement",
    "attribute",
    "axis_effects",
    "axis_value_key",
    "effect_text",
    "format_value",
    "merge_summaries",
    "neighbour_pairs",
    "profile_groups",
]


@dataclass(frozen=True, kw_only=True)
class PhaseSummary:
    """The worst a change did to one phase in one context (over scenarios or not)."""

    phase: str
    verdict: DriftClass
    max_abs: float
    max_rel: float
    max_ulp: float


@dataclass(frozen=True, kw_only=True)
class ContextChange:
    """One change of one axis in one context: the pair(s) behind it and what it did."""

    context: Context
    pairs: tuple[tuple[str, str], ...]  # (baseline cell, candidate cell)
    phases: tuple[PhaseSummary, ...]  # per phase name, worst over scenarios
    columns: tuple[PhaseSummary, ...]  # per scenario/phase
    first_layers: tuple[str, ...]  # "scenario: layer_03_dense (drift)" where localised
    varying: tuple[str, ...] = ()  # scenario/phase columns left out: unseeded on purpose

    @property
    def verdict(self) -> DriftClass:
        return worst(p.verdict for p in self.phases)


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """One phase of a change across its contexts.

    ``agreed`` is the verdict when every context compared the phase and all
    gave the same one; None when they differ, and then ``per_context`` is the
    only honest answer.
    """

    phase: str
    agreed: DriftClass | None
    per_context: tuple[tuple[Context, PhaseSummary | None], ...]  # None: not compared there

    @property
    def compared(self) -> tuple[Context, ...]:
        """The contexts that compared this phase (a mixed-precision cell runs
        only the precision scenario, so others are compared in float32 alone)."""
        return tuple(c for c, s in self.per_context if s is not None)

    @property
    def agreed_where_compared(self) -> DriftClass | None:
        """The verdict when every context that compared the phase gave the same one."""
        verdicts = {s.verdict for _, s in self.per_context if s is not None}
        return verdicts.pop() if len(verdicts) == 1 else None

    @property
    def peak(self) -> PhaseSummary | None:
        """Numbers merged over the contexts, only where their verdicts agree."""
        if self.agreed is None:
            return None
        found = [s for _, s in self.per_context if s is not None]
        return merge_summaries(self.phase, self.agreed, found)


@dataclass(frozen=True, kw_only=True)
class ProfileGroup:
    """Contexts in which a change gave the same verdict to every phase.

    Merging them is honest (their verdicts agree); ``phases`` carry the
    largest numbers of the group.
    """

    contexts: tuple[Context, ...]
    phases: tuple[PhaseSummary, ...]


@dataclass(frozen=True, kw_only=True)
class AxisChange:
    axis: str
    before: AxisValue
    after: AxisValue
    context_axes: tuple[str, ...]  # the axes whose values make a context
    contexts: tuple[ContextChange, ...]  # in plan order of the context values

    @cached_property
    def label_axes(self) -> tuple[str, ...]:
        """The context axes that tell this change's contexts apart."""
        return distinguishing_axes(c.context for c in self.contexts)

    @cached_property
    def common(self) -> Mapping[str, str]:
        """The context values all of this change's contexts share."""
        return common_part([c.context for c in self.contexts])

    def label(self, context: Context) -> str:
        return context_label(context, self.label_axes)

    def describe(self, group: Sequence[Context]) -> str:
        """A group of this change's contexts, named as briefly as the others allow."""
        if len(group) == 1:
            return self.label(group[0]) or context_label(group[0]) or "every cell"
        universe = [c.context for c in self.contexts]
        return describe(group, universe, self.label_axes)

    @property
    def verdict(self) -> DriftClass | None:
        """The worst verdict when it is the same in every context, else None."""
        verdicts = {c.verdict for c in self.contexts}
        return verdicts.pop() if len(verdicts) == 1 else None

    @property
    def worst_groups(self) -> tuple[tuple[str, DriftClass], ...]:
        """(contexts named briefly, verdict) per set of contexts with the same worst verdict."""
        return verdict_groups(((c.context, c.verdict) for c in self.contexts), self.describe)

    @cached_property
    def phases(self) -> tuple[Agreement, ...]:
        return agreement(self.contexts, lambda c: c.phases)

    @cached_property
    def columns(self) -> tuple[Agreement, ...]:
        return agreement(self.contexts, lambda c: c.columns)

    @cached_property
    def groups(self) -> tuple[ProfileGroup, ...]:
        """The contexts, merged where every phase's verdict agrees (only beyond a
        handful of contexts: a few keep their own numbers)."""
        return profile_groups(self.contexts)

    @property
    def head(self) -> str:
        """'stack tf-2.15 → tf-2.16 (3 contexts; onednn=default in all)'."""
        change = f"{self.axis} {format_value(self.before)} → {format_value(self.after)}"
        common = ", ".join(f"{a}={v}" for a, v in self.common.items())
        if not self.context_axes:
            return f"{change} (no other axis varies)"
        if len(self.contexts) == 1:
            return f"{change} (only where {context_label(self.contexts[0].context)})"
        where = f"; {common} in all" if common else ""
        return f"{change} ({len(self.contexts)} contexts{where})"

    @property
    def summary(self) -> str:
        """The head, then each phase said once where its contexts agree, else per context."""
        parts = [effect_text(a, self.describe) for a in self.phases]
        return f"{self.head}: {' | '.join(parts) or 'nothing compared'}"


@dataclass(frozen=True, kw_only=True)
class AxisEffect:
    """The worst any change of one axis did, per context: does this axis matter, and where?"""

    axis: str
    agreed: DriftClass | None  # the same in every context; None: depends on the context
    per_context: tuple[tuple[Context, DriftClass], ...]

    @cached_property
    def label_axes(self) -> tuple[str, ...]:
        return distinguishing_axes(c for c, _ in self.per_context)

    @property
    def groups(self) -> tuple[tuple[str, DriftClass], ...]:
        """(description, verdict) per set of contexts with the same verdict."""
        universe = [c for c, _ in self.per_context]
        return verdict_groups(
            self.per_context, lambda group: describe(group, universe, self.label_axes)
        )


def verdict_groups(
    per_context: Iterable[tuple[Context, DriftClass]],
    name: Callable[[Sequence[Context]], str],
) -> tuple[tuple[str, DriftClass], ...]:
    """(the contexts named by ``name``, verdict) per set of contexts with the
    same verdict, in the order the verdicts first appear."""
    by_verdict: dict[DriftClass, list[Context]] = {}
    for context, verdict in per_context:
        by_verdict.setdefault(verdict, []).append(context)
    return tuple((name(group), verdict) for verdict, group in by_verdict.items())


_NUMERIC = {DriftClass.ROUNDING, DriftClass.DRIFT, DriftClass.DIVERGENT}
#: Up to this many contexts, each keeps its own numbers in a sentence.
LISTED_CONTEXTS = 4


def _numbers(s: PhaseSummary, prefix: str = "") -> str:
    """'9 ULP' for rounding, 'rel 1.6e-03' for drift or worse, '' otherwise."""
    if s.verdict is DriftClass.ROUNDING and math.isfinite(s.max_ulp):
        return f"{prefix}{s.max_ulp:g} ULP"
    if s.verdict in _NUMERIC and s.verdict is not DriftClass.ROUNDING:
        if math.isfinite(s.max_rel):
            return f"{prefix}rel {s.max_rel:.1e}"
        return "NaN/Inf, shape or exact-zero change"
    return ""


def effect_text(item: Agreement, describe: Callable[[Sequence[Context]], str]) -> str:
    """'train: precision=float32: rounding (9 ULP); precision=mixed_bfloat16: drift (rel 8.8e-03)'.

    Said once ('init: identical in every context') where every context
    agrees.  Otherwise contexts with the same verdict share a clause, named
    by ``describe``; with a handful of contexts, those whose verdict carries
    a number keep their own, beyond that a clause gives the largest.
    """
    peak = item.peak
    if peak is not None:
        nums = _numbers(peak, "max ")
        tail = f" ({nums})" if nums else ""
        every = "in every context" if len(item.per_context) > 1 else "in its only context"
        return f"{item.phase}: {peak.verdict.value} {every}{tail}"
    few = len(item.per_context) <= LISTED_CONTEXTS
    groups: dict[str, list[tuple[Context, PhaseSummary | None]]] = {}
    for context, summary in item.per_context:
        verdict = summary.verdict.value if summary is not None else "not compared"
        groups.setdefault(verdict, []).append((context, summary))
    clauses = []
    for verdict, members in groups.items():
        found = [s for _, s in members if s is not None]
        if few and found and _numbers(found[0]):
            clauses += [f"{describe([c])}: {verdict} ({_numbers(s)})" for c, s in members if s]
            continue
        merged = merge_summaries(item.phase, found[0].verdict, found) if found else None
        nums = _numbers(merged, "max " if len(found) > 1 else "") if merged else ""
        tail = f" ({nums})" if nums else ""
        clauses.append(f"{describe([c for c, _ in members])}: {verdict}{tail}")
    return f"{item.phase}: {'; '.join(clauses)}"


def profile_groups(contexts: Sequence[ContextChange]) -> tuple[ProfileGroup, ...]:
    """One group per context up to :data:`LISTED_CONTEXTS`; beyond, contexts whose
    every phase has the same verdict merge (in order of first appearance)."""
    if len(contexts) <= LISTED_CONTEXTS:
        return tuple(ProfileGroup(contexts=(c.context,), phases=c.phases) for c in contexts)
    found: dict[tuple[tuple[str, DriftClass], ...], list[ContextChange]] = {}
    for change in contexts:
        found.setdefault(tuple((p.phase, p.verdict) for p in change.phases), []).append(change)
    out = []
    for profile, members in found.items():
        phases = tuple(
            merge_summaries(
                name, verdict, [p for m in members for p in m.phases if p.phase == name]
            )
            for name, verdict in profile
        )
        out.append(ProfileGroup(contexts=tuple(m.context for m in members), phases=phases))
    return tuple(out)


def agreement(
    contexts: Sequence[ContextChange],
    pick: Callable[[ContextChange], tuple[PhaseSummary, ...]],
) -> tuple[Agreement, ...]:
    """Each phase (or column) of a change across its contexts, in reading order."""
    names: list[str] = []
    by_context: list[dict[str, PhaseSummary]] = []
    for change in contexts:
        found = {s.phase: s for s in pick(change)}
        by_context.append(found)
        names += [n for n in found if n not in names]
    out = []
    for name in sorted(names, key=_reading_order):
        per = tuple(
            (c.context, found.get(name)) for c, found in zip(contexts, by_context, strict=True)
        )
        verdicts = {s.verdict for _, s in per if s is not None}
        complete = all(s is not None for _, s in per)
        agreed = verdicts.pop() if complete and len(verdicts) == 1 else None
        out.append(Agreement(phase=name, agreed=agreed, per_context=per))
    return tuple(out)


def _reading_order(name: str) -> tuple[str, tuple[int, str]]:
    scenario, _, phase = name.rpartition("/")
    return phase_sort_key((scenario, phase))


def neighbour_pairs(
    cells: Sequence[CellArtifact],
    axes: Sequence[str],
    context_axes: Sequence[str] | None = None,
) -> dict[str, list[tuple[CellArtifact, CellArtifact, Context]]]:
    """For each axis, the (lower, higher) neighbour pairs that differ in that axis alone,
    with their context.

    ``context_axes`` (default: ``axes``) are the axes that make a context;
    the others are equal in every cell or follow from one that is (a stack's
    versions), so they never split a group.
    """
    ctx_axes = tuple(context_axes) if context_axes is not None else tuple(axes)
    out: dict[str, list[tuple[CellArtifact, CellArtifact, Context]]] = {}
    for axis in axes:
        rank = value_rank(cells, axis)
        others = tuple(a for a in ctx_axes if a != axis)
        groups: dict[tuple[tuple[str, str], ...], list[CellArtifact]] = {}
        contexts: dict[tuple[tuple[str, str], ...], Context] = {}
        for cell in cells:
            if axis not in cell.axes:
                continue
            context = context_of(cell, others)
            key = tuple((a, repr(v)) for a, v in context)
            groups.setdefault(key, []).append(cell)
            contexts.setdefault(key, context)
        order = context_key(cells, others)
        pairs: list[tuple[CellArtifact, CellArtifact, Context]] = []
        for key in sorted(groups, key=lambda k: order(contexts[k])):
            members = sorted(groups[key], key=lambda c: (rank(c.axes[axis]), c.cell_id))
            for low, high in itertools.pairwise(members):
                if low.axes[axis] != high.axes[axis]:
                    pairs.append((low, high, contexts[key]))
        out[axis] = pairs
    return out


def attribute(
    cells: Sequence[CellArtifact],
    axes: Sequence[str],
    compare: Callable[[CellArtifact, CellArtifact], tuple[PhaseResult, ...]],
    context_axes: Sequence[str] | None = None,
) -> list[AxisChange]:
    """Attribution rows, one per (axis, before -> after), in axis then value order,
    each holding one effect per context.

    ``compare(candidate, baseline)`` returns the phase results of a pair; the
    caller memoises it so pairs shared with other comparisons are not redone.
    """
    ctx_axes = tuple(context_axes) if context_axes is not None else tuple(axes)
    rows: list[AxisChange] = []
    for axis, pairs in neighbour_pairs(cells, axes, ctx_axes).items():
        by_change: dict[tuple[str, str], dict[Context, list[tuple[str, str, PhaseResult]]]] = {}
        pair_ids: dict[tuple[tuple[str, str], Context], list[tuple[str, str]]] = {}
        values: dict[tuple[str, str], tuple[AxisValue, AxisValue]] = {}
        for low, high, context in pairs:
            change = (repr(low.axes[axis]), repr(high.axes[axis]))
            values[change] = (low.axes[axis], high.axes[axis])
            results = by_change.setdefault(change, {}).setdefault(context, [])
            results += [(low.cell_id, high.cell_id, r) for r in compare(high, low)]
            pair_ids.setdefault((change, context), []).append((low.cell_id, high.cell_id))
        rank = value_rank(cells, axis)
        ordered = sorted(by_change, key=lambda ch: (rank(values[ch][0]), rank(values[ch][1])))
        others = tuple(a for a in ctx_axes if a != axis)
        for change in ordered:
            before, after = values[change]
            rows.append(
                AxisChange(
                    axis=axis,
                    before=before,
                    after=after,
                    context_axes=others,
                    contexts=tuple(
                        _fold(context, pair_ids[(change, context)], [r for *_, r in results])
                        for context, results in by_change[change].items()
                    ),
                )
            )
    return rows


def _fold(
    context: Context, pairs: Sequence[tuple[str, str]], results: Sequence[PhaseResult]
) -> ContextChange:
    per_phase: dict[str, list[PhaseResult]] = {}
    per_column: dict[tuple[str, str], list[PhaseResult]] = {}
    layers: list[str] = []
    varying: list[str] = []
    for result in results:
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
    return ContextChange(
        context=context,
        pairs=tuple(pairs),
        phases=tuple(summarise(p, per_phase[p]) for p in phase_names),
        columns=tuple(
            summarise(f"{s}/{p}", per_column[(s, p)])
            for s, p in sorted(per_column, key=phase_sort_key)
        ),
        first_layers=tuple(layers),
        varying=tuple(sorted(varying)),
    )


def summarise(name: str, results: Sequence[PhaseResult]) -> PhaseSummary:
    """The worst verdict of ``results`` and the largest of each number."""

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


def merge_summaries(name: str, verdict: DriftClass, items: Sequence[PhaseSummary]) -> PhaseSummary:
    """Summaries of one phase that agree on ``verdict``, with the largest of each number."""

    def peak(attr: str) -> float:
        vals = [v for s in items if not math.isnan(v := getattr(s, attr))]
        return max(vals) if vals else math.nan

    return PhaseSummary(
        phase=name,
        verdict=verdict,
        max_abs=peak("max_abs"),
        max_rel=peak("max_rel"),
        max_ulp=peak("max_ulp"),
    )


def axis_effects(rows: Sequence[AxisChange]) -> tuple[AxisEffect, ...]:
    """Per axis, the worst any of its changes did in each context; said once where all agree."""
    found: dict[str, dict[Context, list[DriftClass]]] = {}
    for row in rows:
        per = found.setdefault(row.axis, {})
        for change in row.contexts:
            per.setdefault(change.context, []).append(change.verdict)
    out = []
    for axis, per in found.items():
        items = tuple((context, worst(v)) for context, v in per.items())
        verdicts = {v for _, v in items}
        out.append(
            AxisEffect(
                axis=axis, agreed=verdicts.pop() if len(verdicts) == 1 else None, per_context=items
            )
        )
    return tuple(out)
