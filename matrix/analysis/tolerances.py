"""Portable tolerances: the tightest ``assert_allclose`` that every cell of a context passes.

A test that pins a model's outputs needs an ``rtol``/``atol`` that holds in
every environment it will run in.  Per scenario/phase, tensor dtype and
context, this takes every comparison of a cell in that context against a
baseline (the reference cell, or the float64 oracle: kept apart) and reads
off the per-tensor numbers of :mod:`matrix.analysis.compare`:

* ``atol`` = the largest ``|actual - desired|`` among elements whose
  ``|desired|`` is at most ``s`` = rounding atol / rounding rtol of the dtype
  (where its rounding tolerance is mostly absolute: 0.1 for float32,
  0.025 for float16, 1/30 for bfloat16),
* ``rtol`` = the largest ``|actual - desired| / |desired|`` among the others,

each 0 where there is no such element, so that every element satisfies
``|actual - desired| <= atol + rtol * |desired|``.  NaN or Inf on one side
only, or a shape change, leaves no finite pair (both infinite).  Phases that
failed, are missing or do not apply give no numbers and are listed; phases
unseeded on purpose are left out.

The printed line rounds each value up to two significant digits after
allowing ``4 eps`` of the dtype for the rounding of assert_allclose's own
arithmetic (it computes in the arrays' dtype), so it passes as pasted.

The context of a tolerance is the values of the varying *setting* axes (how
a run is configured: precision, oneDNN, device...): the tolerance then
holds across every environment (stack, versions, target, machine) a user
of that configuration may meet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal

import numpy as np

from matrix.analysis.comparisons import CellComparison, phase_sort_key
from matrix.analysis.context import Context, context_of
from matrix.analysis.drift import DriftClass, worst
from matrix.results.artifacts import CellArtifact

__all__ = ["Tolerance", "allclose_line", "portable_tolerances", "round_up", "tolerance_axes"]

_NO_NUMBERS = (DriftClass.FAILED, DriftClass.MISSING, DriftClass.UNSUPPORTED)
_EPS = {
    "bfloat16": 2.0**-7,
    "float16": float(np.finfo(np.float16).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float64": float(np.finfo(np.float64).eps),
}


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    against: str  # reference | oracle
    baseline: str  # the reference cell's id, or the oracle's name
    column: str
    dtype: str
    context: Context
    rtol: float  # inf: no finite pair passes
    atol: float
    verdict: DriftClass  # the worst tensor verdict behind it: how much it had to absorb
    cells: tuple[str, ...]  # the candidates whose tensors set it
    tensors: int  # tensor comparisons behind it
    not_compared: tuple[str, ...]  # cells whose phase gave no tensor to compare

    @property
    def line(self) -> str:
        return allclose_line(self.rtol, self.atol, self.dtype)


def round_up(value: float, dtype: str) -> float:
    """``value`` with 4 eps of ``dtype`` to spare, rounded up to two significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    padded = Decimal(value) * (1 + Decimal(4 * _EPS.get(dtype, _EPS["float64"])))
    step = Decimal(1).scaleb(padded.adjusted() - 1)
    return float(padded.quantize(step, rounding=ROUND_CEILING))


def allclose_line(rtol: float, atol: float, dtype: str) -> str:
    if not (math.isfinite(rtol) and math.isfinite(atol)):
        return "no finite rtol/atol passes (NaN/Inf on one side only, or a shape change)"
    r, a = round_up(rtol, dtype), round_up(atol, dtype)
    return f"numpy.testing.assert_allclose(actual, desired, rtol={r:.2g}, atol={a:.2g})"


def _column_key(column: str) -> tuple[str, tuple[int, str]]:
    scenario, _, phase = column.partition("/")
    return phase_sort_key((scenario, phase))


def _dtype(name: str) -> str:
    """'float32 (stored float64)' is a float32 result: its tolerance is float32's."""
    return name.split(" ", 1)[0]


@dataclass(kw_only=True)
class _Slot:
    baseline: str
    rtol: float = 0.0
    atol: float = 0.0
    verdict: DriftClass = DriftClass.IDENTICAL
    cells: list[str] = field(default_factory=list)
    tensors: int = 0


def portable_tolerances(
    comparisons: Sequence[CellComparison],
    cells: Sequence[CellArtifact],
    context_axes: Sequence[str],
    order: Callable[[Context], tuple[object, ...]],
) -> tuple[Tolerance, ...]:
    """One tolerance per (baseline kind, column, dtype, context), from the reference
    and oracle comparisons' per-tensor numbers."""
    by_id = {c.cell_id: c for c in cells}
    found: dict[tuple[str, str, str, Context], _Slot] = {}
    gaps: dict[tuple[str, str, Context], list[str]] = {}
    for comp in comparisons:
        if comp.kind not in ("reference", "oracle") or comp.candidate not in by_id:
            continue
        context = context_of(by_id[comp.candidate], context_axes)
        for phase in comp.phases:
            if phase.varies:
                continue
            if phase.verdict in _NO_NUMBERS and not phase.tensors:
                gaps.setdefault((comp.kind, phase.column, context), []).append(comp.candidate)
                continue
            for _key, t in phase.tensors:
                if t.verdict in _NO_NUMBERS:
                    continue
                rtol, atol = t.allclose_rtol, t.allclose_atol
                if math.isnan(rtol) or math.isnan(atol):  # a shape or dtype change
                    rtol = atol = math.inf
                slot = found.setdefault(
                    (comp.kind, phase.column, _dtype(t.dtype), context),
                    _Slot(baseline=comp.baseline),
                )
                slot.rtol = max(slot.rtol, rtol)
                slot.atol = max(slot.atol, atol)
                slot.tensors += 1
                slot.verdict = worst((slot.verdict, t.verdict))
                if comp.candidate not in slot.cells:
                    slot.cells.append(comp.candidate)
    kinds = {"reference": 0, "oracle": 1}
    return tuple(
        Tolerance(
            against=kind,
            baseline=slot.baseline,
            column=column,
            dtype=dtype,
            context=context,
            rtol=slot.rtol,
            atol=slot.atol,
            verdict=slot.verdict,
            cells=tuple(slot.cells),
            tensors=slot.tensors,
            not_compared=tuple(gaps.get((kind, column, context), ())),
        )
        for (kind, column, dtype, context), slot in sorted(
            found.items(),
            key=lambda kv: (order(kv[0][3]), _column_key(kv[0][1]), kv[0][2], kinds[kv[0][0]]),
        )
    )


def tolerance_axes(context_axes: Sequence[str], roles: Mapping[str, str]) -> tuple[str, ...]:
    """The context axes that configure a run (``roles``: axis -> environment | setting)."""
    return tuple(a for a in context_axes if roles.get(a) == "setting")
