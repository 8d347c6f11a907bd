"""Drift classes and the per-dtype thresholds that assign them.

A comparison's verdict is one drift class, ordered by how much it should
worry a user::

    identical < rounding < drift < divergent      (two tensors were compared)
    failed, missing                               (a side gave no tensor)
    unsupported                                   (the scenario does not apply)

Verdicts combine absolute and relative error.  An element is inside a level
when ``|candidate - baseline| <= atol + rtol * |baseline|``.  ULP distance
alone misleads near zero: two activations of 1e-30 and 3e-30 are billions of
ULP apart yet numerically the same, while ``rtol`` alone would call any change
of an exact zero infinite.  ``atol`` absorbs the first case, ``rtol`` scales
with magnitude for the rest.  The max ULP distance is still reported because
it is the unit a numerics reader thinks in.

Default thresholds, per dtype (``eps`` = machine epsilon, the spacing at 1.0):

========  =========  ================  ================  ================  ================
dtype     eps        rounding rtol     rounding atol     divergent rtol    divergent atol
========  =========  ================  ================  ================  ================
float64   2.2e-16    1e-12 (~4500 eps) 1e-15             1e-4              1e-9
float32   1.2e-7     1e-5  (~84 eps)   1e-6              0.1               1e-3
float16   9.8e-4     4e-3  (~4 eps)    1e-4              0.25              1e-2
bfloat16  7.8e-3     3e-2  (~4 eps)    1e-3              0.5               5e-2
========  =========  ================  ================  ================  ================

Why these numbers:

* **rounding**: what a different summation order, an FMA, a fused kernel or
  a different BLAS blocking produce.  A length-n dot product reordered moves
  by up to ~n·eps relatively in the worst case and by ~sqrt(n)·eps typically;
  the layers in the scenarios are small (tens to hundreds of terms) and a
  100-epoch training run compounds a few such steps, so tens of eps for
  float32 and a few eps for the 16-bit types (whose eps is already coarse)
  cover reordering without covering real changes.  ``atol`` sits a little
  above the values at which activations of unit-scale models are
  noise: it keeps near-zero outputs (a ReLU edge, a centred bias) from being
  judged by relative error alone.
* **divergent**: beyond this the result is qualitatively different: a sign
  flip (relative error 2), a 10 % change in a float32 weight, a training run
  that went elsewhere.  Between rounding and divergent lies **drift**: real,
  explainable numeric change (mixed precision, a different kernel, oneDNN),
  e.g. 1e-3 relative in float32.
* **float64** thresholds apply only to cells computing in float64 (no
  setting does today).  A float64 tensor in a float32 cell (a Keras history
  of Python floats, a NumPy metric of float32 predictions) is a float32
  result stored wider and is judged as float32: one float32 ULP is 2**29
  float64 ULP and would otherwise read as drift.
* NaN or Inf where the other side has a finite number, opposite infinities,
  a shape or dtype change, or a tensor the baseline lacks are divergent (or
  missing) regardless of thresholds.

Every threshold can be overridden per dtype (``--tolerance
float32.rounding_rtol=1e-4``, ``tolerances`` in ``plan.json``, or the
spec's ``[tolerances.float32]`` table, whose names ``rtol``, ``atol``,
``divergence_rtol``, ``divergence_atol`` and ``max_ulp`` are accepted as
aliases).  ``rounding_max_ulp`` (default 0: off) adds a ULP allowance: a
tensor whose every element is within that many ULP is rounding even where
``rtol``/``atol`` alone would say drift.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum

from matrix.errors import MatrixError, SpecError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "GATE_CLASSES",
    "DriftClass",
    "Thresholds",
    "apply_overrides",
    "gate_class",
    "parse_tolerance_option",
    "thresholds_for",
    "worst",
]


class DriftClass(StrEnum):
    """The verdict of a comparison.  ``rank`` orders them by severity."""

    IDENTICAL = "identical"
    ROUNDING = "rounding"
    DRIFT = "drift"
    DIVERGENT = "divergent"
    FAILED = "failed"
    MISSING = "missing"
    UNSUPPORTED = "unsupported"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def description(self) -> str:
        return _DESCRIPTION[self]


# failed and missing share a rank: both mean "no answer", and a CI gate set at
# either catches both.  unsupported ranks below identical so that a scenario
# that does not apply never makes a row look worse than it is.
_RANK: dict[DriftClass, int] = {
    DriftClass.UNSUPPORTED: -1,
    DriftClass.IDENTICAL: 0,
    DriftClass.ROUNDING: 1,
    DriftClass.DRIFT: 2,
    DriftClass.DIVERGENT: 3,
    DriftClass.FAILED: 4,
    DriftClass.MISSING: 4,
}

_DESCRIPTION: dict[DriftClass, str] = {
    DriftClass.IDENTICAL: "bit for bit the same (NaN in the same places counts as equal)",
    DriftClass.ROUNDING: "differs only within the dtype's rounding tolerance",
    DriftClass.DRIFT: "beyond rounding but below the divergence threshold",
    DriftClass.DIVERGENT: (
        "beyond the divergence threshold, NaN/Inf on one side only, or a shape change"
    ),
    DriftClass.FAILED: "the scenario or the whole cell failed: no tensor to compare",
    DriftClass.MISSING: "a planned cell or an expected tensor is absent",
    DriftClass.UNSUPPORTED: "the scenario reported it does not apply in this environment",
}

#: Classes a ``--fail-on`` gate may name, mildest first.
GATE_CLASSES: tuple[DriftClass, ...] = (
    DriftClass.ROUNDING,
    DriftClass.DRIFT,
    DriftClass.DIVERGENT,
    DriftClass.FAILED,
    DriftClass.MISSING,
)


def gate_class(name: str | None) -> DriftClass | None:
    """The class a ``--fail-on`` names; SpecError (exit 3) for any other word.

    Checked before any work, so a bad choice never costs a matrix run. It
    lives here, with the classes, so that checking an option imports no
    comparison code (NumPy, jsonschema): ``--dry-run`` starts in a third of
    the time."""
    if name is None:
        return None
    names = [c.value for c in GATE_CLASSES]
    if name not in names:
        shown = repr(name) if len(name) <= 40 else repr(name[:37] + "...")
        raise SpecError(f"--fail-on {shown}: expected one of {', '.join(names)}")
    return DriftClass(name)


# Tie-break among equal ranks so that "worst" is deterministic.
_ORDER = {cls: i for i, cls in enumerate(DriftClass)}


def worst(classes: Iterable[DriftClass], default: DriftClass = DriftClass.IDENTICAL) -> DriftClass:
    """The most severe class of ``classes`` (``default`` when empty)."""
    result: DriftClass | None = None
    for cls in classes:
        if result is None or (cls.rank, _ORDER[cls]) > (result.rank, _ORDER[result]):
            result = cls
    return default if result is None else result


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Where rounding ends and divergence begins for one dtype."""

    rounding_rtol: float
    rounding_atol: float
    divergent_rtol: float
    divergent_atol: float
    # A tensor whose elements are all within this many ULP is rounding even
    # where rtol/atol say otherwise (0: no such allowance, the default).
    rounding_max_ulp: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_THRESHOLDS: Mapping[str, Thresholds] = {
    "float64": Thresholds(
        rounding_rtol=1e-12, rounding_atol=1e-15, divergent_rtol=1e-4, divergent_atol=1e-9
    ),
    "float32": Thresholds(
        rounding_rtol=1e-5, rounding_atol=1e-6, divergent_rtol=0.1, divergent_atol=1e-3
    ),
    "float16": Thresholds(
        rounding_rtol=4e-3, rounding_atol=1e-4, divergent_rtol=0.25, divergent_atol=1e-2
    ),
    "bfloat16": Thresholds(
        rounding_rtol=3e-2, rounding_atol=1e-3, divergent_rtol=0.5, divergent_atol=5e-2
    ),
}

_THRESHOLD_KEYS = tuple(f.name for f in fields(Thresholds))

#: The names the matrix spec's ``[tolerances.DTYPE]`` tables use.
KEY_ALIASES = {
    "rtol": "rounding_rtol",
    "atol": "rounding_atol",
    "divergence_rtol": "divergent_rtol",
    "divergence_atol": "divergent_atol",
    "max_ulp": "rounding_max_ulp",
}


def thresholds_for(dtype: str, table: Mapping[str, Thresholds] = DEFAULT_THRESHOLDS) -> Thresholds:
    """Thresholds for ``dtype``; integer and bool tensors must match exactly."""
    found = table.get(dtype)
    if found is not None:
        return found
    # Integers, booleans and anything else without rounding: any difference is
    # at least drift, a large one divergent.  Zero tolerance for rounding.
    return Thresholds(rounding_rtol=0.0, rounding_atol=0.0, divergent_rtol=0.1, divergent_atol=0.0)


def apply_overrides(
    overrides: Mapping[str, Mapping[str, float]],
    table: Mapping[str, Thresholds] = DEFAULT_THRESHOLDS,
) -> dict[str, Thresholds]:
    """Return ``table`` with ``{dtype: {key: value}}`` overrides applied.

    Raises :class:`MatrixError` naming the bad dtype, key or value.
    """
    result = dict(table)
    for dtype, values in overrides.items():
        if dtype not in result:
            raise MatrixError(
                f"tolerance override for unknown dtype {dtype!r}; "
                f"known: {', '.join(sorted(result))}"
            )
        changes: dict[str, float] = {}
        for given, value in values.items():
            key = KEY_ALIASES.get(given, given)
            if key not in _THRESHOLD_KEYS:
                raise MatrixError(
                    f"unknown tolerance key {dtype}.{key}; known: {', '.join(_THRESHOLD_KEYS)}"
                )
            number = float(value)
            if not math.isfinite(number) or number < 0:
                raise MatrixError(f"tolerance {dtype}.{key}={value!r} must be a finite number >= 0")
            changes[key] = number
        updated = replace(result[dtype], **changes)
        if (
            updated.divergent_rtol < updated.rounding_rtol
            or updated.divergent_atol < updated.rounding_atol
        ):
            raise MatrixError(
                f"tolerances for {dtype}: the divergent level must not be tighter than rounding"
            )
        result[dtype] = updated
    return result


def parse_tolerance_option(items: Iterable[str]) -> dict[str, dict[str, float]]:
    """Parse ``dtype.key=value`` strings from the command line."""
    parsed: dict[str, dict[str, float]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        dtype, dot, key = name.partition(".")
        if not sep or not dot or not dtype or not key:
            raise MatrixError(
                f"--tolerance {item!r}: expected DTYPE.KEY=VALUE, e.g. float32.rounding_rtol=1e-4"
            )
        try:
            number = float(value)
        except ValueError:
            raise MatrixError(f"--tolerance {item!r}: {value!r} is not a number") from None
        parsed.setdefault(dtype, {})[key] = number
    return parsed
