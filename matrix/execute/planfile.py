"""plan.json: what a results directory needs beyond its artifacts.

The cells the spec expanded to (in spec order, so the report lists cells and
orders axis values as the spec did, and names planned cells that never
produced a directory), the axes, the reference cell, the repeats and the
tolerances. The scheduler writes it; the report reads it, merging the
plan.json of every shard it is given.
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
from matrix.plan.tasks import RunPlan
from matrix.untrusted import one_line, read_json, shown_path
from scenarios.contract import AXES, PLAN

__all__ = ["PlanFile", "atomic_write", "merge_plans", "plan_file", "read_plan", "write_plan"]

_MAX_BYTES = 16 << 20


@dataclass(frozen=True, kw_only=True)
class PlanFile:
    cells: tuple[str, ...] = ()
    reference: str | None = None
    tolerances: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    axes: tuple[str, ...] = ()
    spec: str | None = None
    name: str | None = None
    repeats: int | None = None
    shard: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "name": self.name,
            "cells": list(self.cells),
            "axes": list(self.axes),
            "reference": self.reference,
            "repeats": self.repeats,
            "tolerances": {k: dict(v) for k, v in self.tolerances.items()},
            "shard": list(self.shard) if self.shard else None,
        }


def plan_file(plan: RunPlan) -> PlanFile:
    return PlanFile(
        spec=str(plan.spec.path),
        name=plan.spec.name,
        cells=tuple(c.id for c in plan.all_cells),
        axes=tuple(a.name for a in AXES),
        reference=plan.reference,
        repeats=plan.repeats,
        tolerances=plan.spec.tolerances,
        shard=plan.shard,
    )


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place: never half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_plan(results: Path, plan: RunPlan) -> None:
    text = json.dumps(plan_file(plan).to_json(), indent=2, sort_keys=True) + "\n"
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
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: malformed ({one_line(str(exc))}); ignored") from None
    return PlanFile(
        cells=cells,
        reference=reference,
        tolerances=tolerances,
        axes=axes,
        spec=_text(spec) if spec is not None else None,
        name=_text(name) if name is not None else None,
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
    return PlanFile(
        cells=tuple(cells), reference=reference, tolerances=tolerances, axes=tuple(axes), spec=spec
    )


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
