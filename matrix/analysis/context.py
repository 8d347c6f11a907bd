"""Contexts: the values of the other axes under which a comparison was made.

"tf-2.15 -> tf-2.16 drifts" is true in mixed_bfloat16 and false in float32,
so every effect the report states carries its context.  A context holds the
axes that vary in the report (an axis with one value everywhere tells no
context from another) and never the derived axes (a named stack implies its
versions: they vary with it and add nothing).

Values keep the report's order: the order in which the plan lists them
(cells come in plan order: tf-2.15 -> tf-2.16 -> tf-2.21 -> jax, not
alphabetical), with the natural order as the tie-break.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from matrix.results.artifacts import CellArtifact

__all__ = [
    "AxisValue",
    "Context",
    "ValueRank",
    "axis_value_key",
    "common_part",
    "context_key",
    "context_label",
    "context_of",
    "describe",
    "distinguishing_axes",
    "format_value",
    "value_rank",
    "varying_axes",
]

AxisValue = str | int | bool | None
#: (axis, value) for every context axis, in the report's axis order.
Context = tuple[tuple[str, AxisValue], ...]
ValueRank = Callable[[AxisValue], tuple[int, tuple[int, tuple[tuple[int, int | str], ...]]]]


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


def value_rank(cells: Sequence[CellArtifact], axis: str) -> ValueRank:
    """Order an axis's values as the plan lists them, naturally among values it does not rank."""
    first: dict[str, int] = {}
    for cell in cells:
        if axis in cell.axes:
            first.setdefault(repr(cell.axes[axis]), len(first))

    def rank(value: AxisValue) -> tuple[int, tuple[int, tuple[tuple[int, int | str], ...]]]:
        return (first.get(repr(value), len(first)), axis_value_key(value))

    return rank


def varying_axes(cells: Sequence[CellArtifact], axes: Sequence[str]) -> tuple[str, ...]:
    """The axes with more than one value among ``cells`` (a cell without the axis: unset)."""
    out = []
    for axis in axes:
        seen = {repr(cell.axes.get(axis)) for cell in cells}
        if len(seen) > 1:
            out.append(axis)
    return tuple(out)


def context_of(cell: CellArtifact, axes: Sequence[str]) -> Context:
    return tuple((axis, cell.axes.get(axis)) for axis in axes)


def context_key(
    cells: Sequence[CellArtifact], axes: Sequence[str]
) -> Callable[[Context], tuple[object, ...]]:
    """Sort contexts by the plan order of each axis's value, axis by axis."""
    ranks = {axis: value_rank(cells, axis) for axis in axes}

    def key(context: Context) -> tuple[object, ...]:
        return tuple(ranks[a](v) if a in ranks else axis_value_key(v) for a, v in context)

    return key


def distinguishing_axes(contexts: Iterable[Context]) -> tuple[str, ...]:
    """The axes whose values differ among ``contexts``: what a label must name."""
    values: dict[str, set[str]] = {}
    order: list[str] = []
    for context in contexts:
        for axis, value in context:
            if axis not in values:
                values[axis] = set()
                order.append(axis)
            values[axis].add(repr(value))
    return tuple(a for a in order if len(values[a]) > 1)


def common_part(contexts: Sequence[Context]) -> Mapping[str, str]:
    """The context values every one of ``contexts`` shares."""
    if not contexts:
        return {}
    named = set(distinguishing_axes(contexts))
    return {axis: format_value(value) for axis, value in contexts[0] if axis not in named}


def context_label(context: Context, axes: Sequence[str] | None = None) -> str:
    """'precision=float32, onednn=off' (only ``axes`` when given); '' for no axis."""
    return ", ".join(
        f"{axis}={format_value(value)}" for axis, value in context if axes is None or axis in axes
    )


#: How many labels a description lists before it counts the rest.
_LISTED = 6


def describe(
    group: Sequence[Context], universe: Sequence[Context], axes: Sequence[str] | None = None
) -> str:
    """Name a set of contexts as briefly as the rest of ``universe`` allows.

    'every context'; else the fewest axis constraints (one axis, then two)
    that pick out exactly ``group`` ('onednn=off', 'precision=mixed_float16 or mixed_bfloat16,
    device=gpu'); else the labels themselves (``axes`` only), the first few.
    """
    members = set(group)
    everything = set(universe)
    if not members:
        return "no context"
    if members == everything:
        return "every context"
    names = list(axes) if axes is not None else [a for a, _ in universe[0]]
    order: dict[str, list[AxisValue]] = {a: [] for a in names}
    for context in universe:
        for axis, value in context:
            if axis in order and value not in order[axis]:
                order[axis].append(value)
    for size in (1, 2):
        best: tuple[int, dict[str, list[AxisValue]]] | None = None
        for combo in itertools.combinations(names, size):
            allowed = {a: [v for v in order[a] if any((a, v) in c for c in group)] for a in combo}
            picked = {c for c in everything if all(dict(c)[a] in allowed[a] for a in combo)}
            cost = sum(len(v) for v in allowed.values())
            if picked == members and (best is None or cost < best[0]):
                best = (cost, allowed)
        if best is not None:
            return ", ".join(
                f"{a}={' or '.join(format_value(v) for v in vals)}" for a, vals in best[1].items()
            )
    labels = [context_label(c, names) for c in group]
    more = f"; and {len(labels) - _LISTED} more" if len(labels) > _LISTED else ""
    return "; ".join(labels[:_LISTED]) + more
