"""Matrix specs: TOML files that say which cells to run.

A spec is data (cibuildwheel's way), validated here with errors that name the
file, the key and what is allowed. Expansion into cells lives in cells.py.

    [matrix]            name, reference, repeats, timeout, memory, executor
    [axes]              axis = [values...]   (the cartesian product)
    [[include]]         GitHub Actions semantics (see cells.expand)
    [[exclude]]         drop combinations matching every key given
    [runner]            scenarios, unseeded_repeats
    [tolerances.DTYPE]  overrides of the drift thresholds per dtype
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from matrix.drift import KEY_ALIASES, Thresholds, apply_overrides
from matrix.errors import MatrixError, SpecError
from matrix.stacks import Stack, load_catalog

__all__ = ["AXES", "AXIS_DEFAULTS", "Spec", "load_spec", "parse_spec"]

AxisValue = str | int

#: Every axis the runner understands, in cell-id order, with its default.
#: A cell leaves an axis at its default out of its id, so adding an axis
#: never renames existing cells.
AXIS_DEFAULTS: dict[str, AxisValue] = {
    "stack": "",
    "target": "cpu",
    "device": "cpu",
    "precision": "float32",
    "determinism": "on",
    "onednn": "default",
    "threads": 0,
    "jit": "default",
    "cudnn": "default",
}
AXES = tuple(AXIS_DEFAULTS)

_ALLOWED: dict[str, tuple[AxisValue, ...]] = {
    "target": ("cpu", "cuda"),
    "device": ("cpu", "gpu"),
    "precision": ("float32", "mixed_float16", "mixed_bfloat16"),
    "determinism": ("on", "off"),
    "onednn": ("on", "off", "default"),
    "jit": ("on", "off", "default"),
    "cudnn": ("on", "off", "default"),
}
_SCENARIOS = ("seeded_mlp", "stateful_lstm", "precision", "initializers")
_DTYPES = ("float16", "bfloat16", "float32", "float64")
_TOLERANCE_KEYS = (*KEY_ALIASES, *(f.name for f in fields(Thresholds)))
_EXECUTORS = ("auto", "docker", "venv", "host")

_TOP_KEYS = {"matrix", "axes", "include", "exclude", "runner", "tolerances"}
_MATRIX_KEYS = {"name", "reference", "repeats", "timeout", "memory", "executor", "description"}
_RUNNER_KEYS = {"scenarios", "unseeded_repeats"}


@dataclass(frozen=True, kw_only=True)
class Spec:
    path: Path
    name: str
    description: str = ""
    axes: dict[str, tuple[AxisValue, ...]]
    include: tuple[dict[str, AxisValue], ...] = ()
    exclude: tuple[dict[str, AxisValue], ...] = ()
    reference: dict[str, AxisValue] | str | None = None
    repeats: int = 2
    timeout: int = 900
    memory: str = "4g"
    executor: str = "auto"
    scenarios: tuple[str, ...] = _SCENARIOS
    unseeded_repeats: int = 3
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)


def load_spec(path: Path, catalog: Mapping[str, Stack] | None = None) -> Spec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    return parse_spec(raw, path, catalog if catalog is not None else load_catalog())


def parse_spec(raw: Mapping[str, Any], path: Path, catalog: Mapping[str, Stack]) -> Spec:
    where = str(path)
    _only_keys(raw, _TOP_KEYS, where, "")
    matrix = _table(raw, "matrix", where)
    _only_keys(matrix, _MATRIX_KEYS, where, "matrix.")
    runner = _table(raw, "runner", where)
    _only_keys(runner, _RUNNER_KEYS, where, "runner.")

    axes_raw = _table(raw, "axes", where)
    if "stack" not in axes_raw:
        raise SpecError(
            f"{where}: axes.stack is required (one or more stacks from matrix/stacks.toml)"
        )
    axes: dict[str, tuple[AxisValue, ...]] = {}
    for axis, values in axes_raw.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: axes.{axis} must be a non-empty list of values")
        axes[axis] = tuple(_check_value(axis, v, where, f"axes.{axis}", catalog) for v in values)
        if len(set(axes[axis])) != len(axes[axis]):
            raise SpecError(f"{where}: axes.{axis} lists a value twice")

    include = tuple(
        _check_rule(r, where, f"include[{i}]", catalog)
        for i, r in enumerate(_rules(raw, "include", where))
    )
    exclude = tuple(
        _check_rule(r, where, f"exclude[{i}]", catalog)
        for i, r in enumerate(_rules(raw, "exclude", where))
    )

    reference = matrix.get("reference")
    if isinstance(reference, dict):
        reference = _check_rule(reference, where, "matrix.reference", catalog)
    elif reference is not None and not isinstance(reference, str):
        raise SpecError(f"{where}: matrix.reference must be a cell id or a table of axis values")

    scenarios = runner.get("scenarios", list(_SCENARIOS))
    if not isinstance(scenarios, list) or not all(s in _SCENARIOS for s in scenarios):
        raise SpecError(
            f"{where}: runner.scenarios must be a list drawn from {', '.join(_SCENARIOS)}"
        )

    executor = matrix.get("executor", "auto")
    if executor not in _EXECUTORS:
        raise SpecError(f"{where}: matrix.executor must be one of {', '.join(_EXECUTORS)}")

    return Spec(
        path=path,
        name=_string(matrix, "name", path.stem, where),
        description=_string(matrix, "description", "", where),
        axes=axes,
        include=include,
        exclude=exclude,
        reference=reference,
        repeats=_int(matrix, "repeats", 2, 1, where),
        timeout=_int(matrix, "timeout", 900, 10, where),
        memory=_string(matrix, "memory", "4g", where),
        executor=executor,
        scenarios=tuple(scenarios),
        unseeded_repeats=_int(runner, "unseeded_repeats", 3, 0, where, prefix="runner."),
        tolerances=_tolerances(raw.get("tolerances", {}), where),
    )


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise SpecError(
                f"{where}: unknown key {prefix}{key} (allowed: {', '.join(sorted(allowed))})"
            )


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}: [{key}] must be a table")
    return value


def _rules(raw: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise SpecError(f"{where}: {key} must be an array of tables ([[{key}]])")
    return value


def _check_rule(
    rule: Mapping[str, Any], where: str, name: str, catalog: Mapping[str, Stack]
) -> dict[str, AxisValue]:
    if not rule:
        raise SpecError(f"{where}: {name} is empty")
    return {
        axis: _check_value(axis, v, where, f"{name}.{axis}", catalog) for axis, v in rule.items()
    }


def _check_value(
    axis: str, value: Any, where: str, key: str, catalog: Mapping[str, Stack]
) -> AxisValue:
    if axis not in AXIS_DEFAULTS:
        raise SpecError(f"{where}: {key}: unknown axis {axis!r} (axes: {', '.join(AXES)})")
    if axis == "stack":
        if value not in catalog:
            raise SpecError(
                f"{where}: {key}: unknown stack {value!r} (known: {', '.join(sorted(catalog))})"
            )
        return str(value)
    if axis == "threads":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(f"{where}: {key}: threads must be a whole number >= 0 (0 = all cores)")
        return value
    # TOML booleans are a natural way to write on/off.
    if isinstance(value, bool) and "on" in _ALLOWED[axis]:
        value = "on" if value else "off"
    if value not in _ALLOWED[axis]:
        allowed = ", ".join(str(v) for v in _ALLOWED[axis])
        raise SpecError(f"{where}: {key}: {value!r} is not allowed (allowed: {allowed})")
    return str(value)


def _string(table: Mapping[str, Any], key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise SpecError(f"{where}: matrix.{key} must be a string")
    return value


def _int(
    table: Mapping[str, Any],
    key: str,
    default: int,
    minimum: int,
    where: str,
    prefix: str = "matrix.",
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}: {prefix}{key} must be a whole number >= {minimum}")
    return value


def _tolerances(raw: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: [tolerances] must be a table of dtypes")
    out: dict[str, dict[str, float]] = {}
    for dtype, table in raw.items():
        if dtype not in _DTYPES:
            raise SpecError(
                f"{where}: tolerances.{dtype}: unknown dtype (allowed: {', '.join(_DTYPES)})"
            )
        if not isinstance(table, dict):
            raise SpecError(f"{where}: tolerances.{dtype} must be a table")
        for key, value in table.items():
            if key not in _TOLERANCE_KEYS:
                raise SpecError(
                    f"{where}: tolerances.{dtype}.{key}: unknown key "
                    f"(allowed: {', '.join(_TOLERANCE_KEYS)})"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise SpecError(f"{where}: tolerances.{dtype}.{key} must be a number >= 0")
        out[dtype] = {k: float(v) for k, v in table.items()}
    try:
        apply_overrides(out)
    except MatrixError as exc:
        raise SpecError(f"{where}: {exc.message}") from None
    return out
