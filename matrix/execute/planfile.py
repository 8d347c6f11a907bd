"""plan.json: what a results directory needs beyond its artifacts.

The cells the spec expanded to (in spec order, so the report lists cells and
orders axis values as the spec did, and names planned cells that never
produced a directory), the axes, the derived axes (those a named stack
implies: never attributed, never part of a context), the upgrade chains,
the reference cell, the repeats, the tolerances and the user's files the
cells read (name and sha256). The scheduler writes it; the report reads it,
merging the plan.json of every shard it is given.

A plan.json written before ``derived_axes`` and ``chains`` existed reads as
"not recorded" (None) and "no chain".
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.errors import ArtifactError
from matrix.plan.cells import derived_axes
from matrix.plan.spec import Spec
from matrix.plan.tasks import RunPlan
from matrix.untrusted import one_line, read_json, shown_path
from scenarios.contract import AXES, PLAN, AxisValue

__all__ = [
    "ChainRecord",
    "PlanFile",
    "atomic_write",
    "merge_plans",
    "plan_file",
    "read_plan",
    "write_plan",
]

_MAX_BYTES = 16 << 20


@dataclass(frozen=True, kw_only=True)
class ChainRecord:
    """An upgrade chain as the report needs it: ``axis`` through ``values`` in
    order, the other axes held at ``at`` (the spec's reference, then the
    chain's own ``at``), repeated in each combination of ``contexts``."""

    axis: str
    values: tuple[AxisValue, ...]
    at: Mapping[str, AxisValue] = field(default_factory=dict)
    contexts: Mapping[str, tuple[AxisValue, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "values": list(self.values),
            "at": dict(self.at),
            "contexts": {k: list(v) for k, v in self.contexts.items()},
        }


@dataclass(frozen=True, kw_only=True)
class PlanFile:
    cells: tuple[str, ...] = ()
    reference: str | None = None
    tolerances: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    axes: tuple[str, ...] = ()
    #: None: a plan.json from before they were recorded (the report infers them)
    derived: tuple[str, ...] | None = None
    chains: tuple[ChainRecord, ...] = ()
    spec: str | None = None
    name: str | None = None
    repeats: int | None = None
    shard: tuple[int, int] | None = None
    #: the user's files, by option (model, inputs...): {"file": as given, "sha256": ...}
    inputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "name": self.name,
            "cells": list(self.cells),
            "axes": list(self.axes),
            "derived_axes": list(self.derived) if self.derived is not None else None,
            "chains": [c.to_json() for c in self.chains],
            "reference": self.reference,
            "repeats": self.repeats,
            "tolerances": {k: dict(v) for k, v in self.tolerances.items()},
            "shard": list(self.shard) if self.shard else None,
            "inputs": {k: dict(v) for k, v in self.inputs.items()},
        }


def plan_file(plan: RunPlan, digests: Mapping[str, str] | None = None) -> PlanFile:
    """``digests``: content digest of each of the user's files, by its name in the copy."""
    files = plan.user.files if plan.user is not None else ()
    return PlanFile(
        inputs={
            f.option.removeprefix("user_"): {
                "file": f.given.name,
                "sha256": (digests or {}).get(f.name, ""),
            }
            for f in files
        },
        spec=str(plan.spec.path),
        name=plan.spec.name,
        cells=tuple(c.id for c in plan.all_cells),
        axes=tuple(a.name for a in AXES),
        derived=derived_axes(plan.spec),
        chains=chain_records(plan.spec),
        reference=plan.reference,
        repeats=plan.repeats,
        tolerances=plan.spec.tolerances,
        shard=plan.shard,
    )


def chain_records(spec: Spec) -> tuple[ChainRecord, ...]:
    """The spec's chains with what they hold fixed, as cells.chain_combos expands them."""
    base: dict[str, AxisValue] = dict(spec.reference) if isinstance(spec.reference, dict) else {}
    out = []
    for chain in spec.chains:
        held = {**base, **chain.at}
        out.append(
            ChainRecord(
                axis=chain.axis,
                values=chain.values,
                at={a: v for a, v in held.items() if a != chain.axis and a not in chain.contexts},
                contexts=dict(chain.contexts),
            )
        )
    return tuple(out)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place: never half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_plan(results: Path, plan: RunPlan, digests: Mapping[str, str] | None = None) -> None:
    text = json.dumps(plan_file(plan, digests).to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(results / PLAN, text)


def read_plan(path: Path) -> PlanFile:
    """Read a plan.json as untrusted data; ArtifactError (one line) when it is not one.

    Cell ids name directories under the results directory, so one that is
    not a plain directory name (``../x``, ``a/b``, control characters) is
    refused with the whole plan rather than shown as a planned cell.
    """
    where = shown_path(path)
    try:
        data = read_json(path, limit=_MAX_BYTES, within=path.parent, what="a plan")
    except ArtifactError as exc:
        raise ArtifactError(f"{exc.message}; ignored") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: expected a JSON object; ignored")
    try:
        cells = tuple(_cell_id(c) for c in _list(data.get("cells")))
        axes = tuple(_text(a) for a in _list(data.get("axes")))
        tolerances = {
            _text(dt): {_text(k): _number(v) for k, v in _table(vals).items()}
            for dt, vals in _table(data.get("tolerances")).items()
        }
        ref = data.get("reference")
        spec = data.get("spec")
        name = data.get("name")
        reference = _cell_id(ref) if ref is not None else None
        raw_derived = data.get("derived_axes")
        derived = tuple(_text(a) for a in _list(raw_derived)) if raw_derived is not None else None
        chains = tuple(_chain(c) for c in _list(data.get("chains")))
        inputs = {
            _text(option): {_text(k): _text(v) for k, v in _table(entry).items()}
            for option, entry in _table(data.get("inputs")).items()
        }
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ArtifactError(f"{where}: malformed ({one_line(str(exc))}); ignored") from None
    return PlanFile(
        cells=cells,
        reference=reference,
        tolerances=tolerances,
        axes=axes,
        derived=derived,
        chains=chains,
        spec=_text(spec) if spec is not None else None,
        name=_text(name) if name is not None else None,
        inputs=inputs,
    )


def merge_plans(plans: Sequence[PlanFile]) -> PlanFile:
    """Shards usually carry the same plan.json; take the union, first one leading."""
    if not plans:
        return PlanFile()
    first = plans[0]
    cells = list(first.cells)
    axes = list(first.axes)
    tolerances: dict[str, dict[str, float]] = {}
    for plan in reversed(plans):  # earlier plans win on conflicts
        for dt, vals in plan.tolerances.items():
            tolerances.setdefault(dt, {}).update(vals)
    seen = set(cells)
    for plan in plans[1:]:
        for c in plan.cells:
            if c not in seen:
                seen.add(c)
                cells.append(c)
        axes += [a for a in plan.axes if a not in axes]
    reference = next((p.reference for p in plans if p.reference), None)
    spec = next((p.spec for p in plans if p.spec), None)
    derived = next((p.derived for p in plans if p.derived is not None), None)
    chains: list[ChainRecord] = []
    for plan in plans:
        chains += [c for c in plan.chains if c not in chains]
    inputs = next((p.inputs for p in plans if p.inputs), {})
    return PlanFile(
        cells=tuple(cells),
        reference=reference,
        tolerances=tolerances,
        axes=tuple(axes),
        derived=derived,
        chains=tuple(chains),
        spec=spec,
        inputs=inputs,
    )


def _chain(data: Any) -> ChainRecord:
    if not isinstance(data, dict):
        raise TypeError(f"a chain must be an object, got {type(data).__name__}")
    values = data["values"]
    if not isinstance(values, list):
        raise TypeError("chain values must be a list")
    return ChainRecord(
        axis=_text(data["axis"]),
        values=tuple(_value(v) for v in values),
        at={_text(k): _value(v) for k, v in _table(data.get("at")).items()},
        contexts={
            _text(k): tuple(_value(v) for v in _list(vals))
            for k, vals in _table(data.get("contexts")).items()
        },
    )


def _value(value: Any) -> AxisValue:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _text(value)


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _table(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if len(value) > 4096:
        raise ValueError("a string longer than 4096 characters")
    return value


def _cell_id(value: Any) -> str:
    """A cell id: a printable directory name (read_json already cleaned surrogates)."""
    text = _text(value)
    if not text or len(text) > 255 or not text.isprintable() or "/" in text or text in {".", ".."}:
        raise ValueError(f"cell id {one_line(repr(text), 80)} is not a directory name")
    return text


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)
