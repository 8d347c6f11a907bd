"""plan.json: what a results directory needs beyond its artifacts.

The cells the spec expanded to (in spec order, so the report lists cells and
orders axis values as the spec did, and names planned cells that never
produced a directory), the axes, the reference cell, the repeats, the
tolerances and the user's files the cells read (name and sha256). The
scheduler writes it; the report reads it, merging the plan.json of every
shard it is given.
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
    #: the user's files, by option (model, inputs...): {"file": as given, "sha256": ...}
    inputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

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


def write_plan(results: Path, plan: RunPlan, digests: Mapping[str, str] | None = None) -> None:
    text = json.dumps(plan_file(plan, digests).to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(results / PLAN, text)


def read_plan(path: Path) -> PlanFile:
    """Read a plan.json; ArtifactError (one line) when it is not one."""
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise ArtifactError(f"{path}: larger than {_MAX_BYTES} bytes; ignored")
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not readable JSON ({_one_line(str(exc))}); ignored") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object; ignored")
    try:
        cells = tuple(_text(c) for c in data.get("cells") or ())
        axes = tuple(_text(a) for a in data.get("axes") or ())
        tolerances = {
            _text(dt): {_text(k): _number(v) for k, v in vals.items()}
            for dt, vals in (data.get("tolerances") or {}).items()
        }
        ref = data.get("reference")
        spec = data.get("spec")
        name = data.get("name")
        inputs = {
            _text(option): {_text(k): _text(v) for k, v in entry.items()}
            for option, entry in (data.get("inputs") or {}).items()
        }
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: malformed ({_one_line(str(exc))}); ignored") from None
    return PlanFile(
        cells=cells,
        reference=_text(ref) if ref is not None else None,
        tolerances=tolerances,
        axes=axes,
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
    inputs = next((p.inputs for p in plans if p.inputs), {})
    return PlanFile(
        cells=tuple(cells),
        reference=reference,
        tolerances=tolerances,
        axes=tuple(axes),
        spec=spec,
        inputs=inputs,
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if len(value) > 4096:
        raise ValueError("a string longer than 4096 characters")
    return value.encode("utf-8", "replace").decode("utf-8")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
