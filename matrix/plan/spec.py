"""Matrix specs: TOML files that say which cells to run.

A spec is data (cibuildwheel's way), validated here with errors that name the
file, the key and what is allowed. The axes, their values and the runner
options come from the contract (``scenarios/contract.py``); expansion into
cells lives in cells.py.

    [matrix]            name, description, reference, repeats, timeout, memory, executor
    [axes]              axis = [values...]   (the cartesian product)
    [[include]]         GitHub Actions semantics (see cells.expand)
    [[exclude]]         drop combinations matching every key given
    [[chain]]           an upgrade chain: axis, values (in order), at, contexts
    [runner]            scenarios, unseeded_repeats
    [tolerances.DTYPE]  overrides of the drift thresholds per dtype

A spec is untrusted input: every value is checked for its type and range,
and sizes are bounded before any work (a spec cannot ask for a million
cells, a billion repeats or a results directory outside the results root).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from matrix.analysis.drift import KEY_ALIASES, Thresholds, apply_overrides
from matrix.errors import MatrixError, SpecError
from matrix.plan.stacks import Stack, load_catalog
from scenarios.contract import (
    OPTIONS,
    VERSION_AXES,
    AxisError,
    AxisValue,
    axis,
    default_scenarios,
    registry,
)

__all__ = [
    "EXECUTORS",
    "LIMITS",
    "Chain",
    "Limits",
    "Spec",
    "check_memory",
    "check_name",
    "load_spec",
    "parse_spec",
]

#: Where a matrix runs; "auto" is docker when an engine answers, else venv.
EXECUTORS = ("auto", "docker", "venv", "host")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds checked before any work: a spec is untrusted input."""

    spec_bytes: int = 1 << 20
    cells: int = 10_000
    values_per_axis: int = 1_000
    rules: int = 1_000
    repeats: int = 100
    unseeded_repeats: int = 100
    timeout: int = 7 * 24 * 3600
    description: int = 2_000
    #: the largest value of a count axis (threads): no machine has more cores
    count_value: int = 4_096
    #: combinations x include/exclude rules: the work of expanding a spec
    rule_checks: int = 1_000_000


LIMITS = Limits()

_DTYPES = ("float16", "bfloat16", "float32", "float64")
_TOLERANCE_KEYS = (*KEY_ALIASES, *(f.name for f in fields(Thresholds)))
_TOP_KEYS = {"matrix", "axes", "include", "exclude", "chain", "runner", "tolerances"}
_CHAIN_KEYS = {"axis", "values", "at", "contexts"}
_MATRIX_KEYS = {"name", "reference", "repeats", "timeout", "memory", "executor", "description"}
_SPEC_OPTIONS = {o.name: o for o in OPTIONS if o.spec}
#: A name is a directory under the results root: no separators, no dot-dot.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: What ``docker run --memory`` takes: a number and an optional unit.
_MEMORY = re.compile(r"^(\d{1,7})([bkmg]?)$", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True, kw_only=True)
class Chain:
    """An upgrade chain: ``axis`` takes ``values`` in order, so consecutive
    releases are compared (2.12 -> 2.13 -> ...), every other axis held at the
    reference (or at ``at``); the chain repeats in each combination of
    ``contexts`` (e.g. every precision) and nowhere else."""

    axis: str
    values: tuple[AxisValue, ...]
    at: dict[str, AxisValue] = field(default_factory=dict)
    contexts: dict[str, tuple[AxisValue, ...]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Spec:
    path: Path
    name: str
    description: str = ""
    axes: dict[str, tuple[AxisValue, ...]]
    include: tuple[dict[str, AxisValue], ...] = ()
    exclude: tuple[dict[str, AxisValue], ...] = ()
    chains: tuple[Chain, ...] = ()
    reference: dict[str, AxisValue] | str | None = None
    repeats: int = 2
    timeout: int = 900
    memory: str = "4g"
    executor: str = "auto"
    #: runner options the spec sets ([runner]), contract names; absent: the runner's default
    runner: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def scenarios(self) -> tuple[str, ...]:
        """The scenarios every cell runs: the spec's, or every registered one."""
        named = self.runner.get("scenarios")
        return tuple(named) if named else default_scenarios(registry())


def load_spec(path: Path, catalog: Mapping[str, Stack] | None = None) -> Spec:
    where = _shown(path)
    try:
        data = path.read_bytes() if path.stat().st_size <= LIMITS.spec_bytes else None
    except OSError as exc:
        raise SpecError(f"{where}: cannot read the spec: {exc.strerror or exc}") from None
    if data is None:
        raise SpecError(f"{where}: larger than {LIMITS.spec_bytes} bytes; not a matrix spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: not UTF-8 text (byte {exc.start}); a spec is TOML") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply to be a matrix spec") from None
    except ValueError as exc:
        # tomllib converts numbers with int()/float(), which refuse an integer
        # of more than 4300 digits with a ValueError of their own.
        raise SpecError(f"{where}: not a usable TOML value: {_quote(str(exc))}") from None
    return parse_spec(raw, path, catalog if catalog is not None else load_catalog())


def _shown(path: Path) -> str:
    """A path as one printable line, whatever bytes its name holds."""
    return ascii(str(path))[1:-1] if not str(path).isprintable() else str(path)


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise SpecError(
            f"{what} {_quote(name)} must be 1-64 letters, digits, '.', '_' or '-' "
            "(it names a results directory)"
        )
    return name


def check_memory(value: str, what: str) -> str:
    """A ``docker run --memory`` value of at least 64 MiB."""
    found = _MEMORY.match(value)
    if not found or int(found.group(1)) * _UNIT[found.group(2).lower()] < 64 << 20:
        raise SpecError(f"{what} {_quote(value)} is not a memory size of at least 64m (e.g. 4g)")
    return value


def _key(name: Any) -> str:
    """A table key as written, or quoted when it is not a plain name."""
    text = str(name)
    return text if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text) else _quote(text)


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_spec(raw: Mapping[str, Any], path: Path, catalog: Mapping[str, Stack]) -> Spec:
    where = _shown(path)
    _only_keys(raw, _TOP_KEYS, where, "")
    matrix = _table(raw, "matrix", where)
    _only_keys(matrix, _MATRIX_KEYS, where, "matrix.")
    runner_raw = _table(raw, "runner", where)
    _only_keys(runner_raw, set(_SPEC_OPTIONS), where, "runner.")

    axes_raw = _table(raw, "axes", where)
    axes: dict[str, tuple[AxisValue, ...]] = {}
    product = 1
    for name, values in axes_raw.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: axes.{name} must be a non-empty list of values")
        if len(values) > LIMITS.values_per_axis:
            raise SpecError(f"{where}: axes.{name} lists more than {LIMITS.values_per_axis} values")
        axes[name] = tuple(_check_value(name, v, where, f"axes.{name}", catalog) for v in values)
        if len(set(axes[name])) != len(axes[name]):
            raise SpecError(f"{where}: axes.{name} lists a value twice")
        product *= len(axes[name])
    include = _rules(raw, "include", where, catalog)
    exclude = _rules(raw, "exclude", where, catalog)
    chains = _chains(raw, where, catalog)
    total = (product if axes else 0) + len(include) + sum(_chain_size(c) for c in chains)
    if total > LIMITS.cells:
        raise SpecError(
            f"{where}: the spec expands to {total} combinations; "
            f"at most {LIMITS.cells} cells per spec (split it, or use --only)"
        )
    # Every combination is checked against every include and exclude rule.
    checks = total * (len(include) + len(exclude))
    if checks > LIMITS.rule_checks:
        raise SpecError(
            f"{where}: {total} combinations x {len(include) + len(exclude)} include/exclude "
            f"rules is more work than a spec may ask ({LIMITS.rule_checks} checks); "
            "fold rules into [axes] or split the spec"
        )

    reference = matrix.get("reference")
    if isinstance(reference, dict):
        reference = _check_rule(reference, where, "matrix.reference", catalog)
    elif reference is not None and not isinstance(reference, str):
        raise SpecError(f"{where}: matrix.reference must be a cell id or a table of axis values")

    if not _names_environment(axes, include, chains, reference):
        raise SpecError(
            f"{where}: the spec names no environment: give axes.stack (stacks from "
            "matrix/stacks.toml), version axes (axes.tensorflow, axes.keras, ...) or a [[chain]]"
        )

    executor = matrix.get("executor", "auto")
    if executor not in EXECUTORS:
        raise SpecError(f"{where}: matrix.executor must be one of {', '.join(EXECUTORS)}")

    return Spec(
        path=path,
        name=check_name(_string(matrix, "name", _stem(path), where), f"{where}: matrix.name"),
        description=_string(matrix, "description", "", where, limit=LIMITS.description),
        axes=axes,
        include=include,
        exclude=exclude,
        chains=chains,
        reference=reference,
        repeats=_int(matrix, "repeats", 2, 1, LIMITS.repeats, where),
        timeout=_int(matrix, "timeout", 900, 10, LIMITS.timeout, where),
        memory=check_memory(_string(matrix, "memory", "4g", where), f"{where}: matrix.memory"),
        executor=executor,
        runner=_runner_options(runner_raw, where),
        tolerances=_tolerances(raw.get("tolerances", {}), where),
    )


#: The axes that pick an environment by name: a stack, or the versions it is composed of.
_IDENTITY = ("stack", *(a for a in VERSION_AXES if a != "backend"))


def _names_environment(
    axes: Mapping[str, Any],
    include: tuple[dict[str, AxisValue], ...],
    chains: tuple[Chain, ...],
    reference: Any,
) -> bool:
    """Whether some part of the spec says which environment its cells run in
    (a backend alone does not: every Keras 3 stack has one). A chain holds
    the other axes at the reference, so the reference counts for chains."""
    named: set[str] = set(axes)
    for rule in include:
        named |= set(rule)
    for chain in chains:
        named |= {chain.axis, *chain.at}
        if isinstance(reference, dict):
            named |= set(reference)
    return any(a in named for a in _IDENTITY)


def _stem(path: Path) -> str:
    """The default name: the file's stem, made a safe directory name."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).strip(".-") or "matrix"
    return stem[:64]


def _runner_options(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        option = _SPEC_OPTIONS[name]
        key = f"runner.{name}"
        if option.kind == "scenarios":
            # A scenario that needs a run option (the user's model) comes
            # with that option on the command line, never from a spec.
            known = [name for name, s in registry().items() if s.needs is None]
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, str) and v in known for v in value)
            ):
                raise SpecError(
                    f"{where}: {key} must be a non-empty list drawn from {', '.join(known)}"
                )
            if len(set(value)) != len(value):
                raise SpecError(f"{where}: {key} lists a scenario twice")
            out[name] = tuple(value)
        elif option.kind == "count":
            limit = LIMITS.unseeded_repeats
            out[name] = _int(table, name, option.default, 0, limit, where, prefix="runner.")
    return out


def _chain_size(chain: Chain) -> int:
    size = len(chain.values)
    for values in chain.contexts.values():
        size *= len(values)
    return size


def _chains(raw: Mapping[str, Any], where: str, catalog: Mapping[str, Stack]) -> tuple[Chain, ...]:
    value = raw.get("chain", [])
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise SpecError(f"{where}: chain must be an array of tables ([[chain]])")
    if len(value) > LIMITS.rules:
        raise SpecError(f"{where}: more than {LIMITS.rules} [[chain]] tables")
    chains = []
    for n, table in enumerate(value):
        key = f"chain[{n}]"
        _only_keys(table, _CHAIN_KEYS, where, f"{key}.")
        name = table.get("axis")
        if not isinstance(name, str):
            raise SpecError(f"{where}: {key}.axis must name an axis")
        _check_value(name, axis_default(name, where, key), where, f"{key}.axis", catalog, bare=True)
        values = table.get("values")
        if not isinstance(values, list) or len(values) < 2:
            raise SpecError(f"{where}: {key}.values must list at least two values, in order")
        if len(values) > LIMITS.values_per_axis:
            raise SpecError(f"{where}: {key}.values lists more than {LIMITS.values_per_axis}")
        checked = tuple(_check_value(name, v, where, f"{key}.values", catalog) for v in values)
        if len(set(checked)) != len(checked):
            raise SpecError(f"{where}: {key}.values lists a value twice")
        at = table.get("at", {})
        if not isinstance(at, dict):
            raise SpecError(f"{where}: {key}.at must be a table of axis values")
        contexts = table.get("contexts", {})
        if not isinstance(contexts, dict):
            raise SpecError(f"{where}: {key}.contexts must be a table of axis = [values]")
        ctx: dict[str, tuple[AxisValue, ...]] = {}
        for axis_name, vals in contexts.items():
            if not isinstance(vals, list) or not vals or len(vals) > LIMITS.values_per_axis:
                raise SpecError(f"{where}: {key}.contexts.{_key(axis_name)} must be a list")
            ctx[axis_name] = tuple(
                _check_value(axis_name, v, where, f"{key}.contexts.{axis_name}", catalog)
                for v in vals
            )
        if name in at or name in ctx:
            raise SpecError(f"{where}: {key}: the chain's own axis cannot be in at or contexts")
        chains.append(
            Chain(
                axis=name,
                values=checked,
                at={a: _check_value(a, v, where, f"{key}.at.{a}", catalog) for a, v in at.items()},
                contexts=ctx,
            )
        )
    return tuple(chains)


def axis_default(name: str, where: str, key: str) -> AxisValue:
    try:
        return axis(name).default
    except AxisError as exc:
        raise SpecError(f"{where}: {key}: {exc}") from None


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise SpecError(
                f"{where}: unknown key {prefix}{_key(key)} (allowed: {', '.join(sorted(allowed))})"
            )


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}: [{key}] must be a table")
    return value


def _rules(
    raw: Mapping[str, Any], key: str, where: str, catalog: Mapping[str, Stack]
) -> tuple[dict[str, AxisValue], ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise SpecError(f"{where}: {key} must be an array of tables ([[{key}]])")
    if len(value) > LIMITS.rules:
        raise SpecError(f"{where}: more than {LIMITS.rules} [[{key}]] rules")
    return tuple(_check_rule(r, where, f"{key}[{i}]", catalog) for i, r in enumerate(value))


def _check_rule(
    rule: Mapping[str, Any], where: str, name: str, catalog: Mapping[str, Stack]
) -> dict[str, AxisValue]:
    if not rule:
        raise SpecError(f"{where}: {name} is empty")
    return {
        axis_name: _check_value(axis_name, v, where, f"{name}.{axis_name}", catalog)
        for axis_name, v in rule.items()
    }


def _check_value(
    name: str,
    value: Any,
    where: str,
    key: str,
    catalog: Mapping[str, Stack],
    *,
    bare: bool = False,
) -> AxisValue:
    """``value`` checked for axis ``name``; ``bare``: only that the axis exists."""
    try:
        found = axis(name)
        checked = found.check(value)
    except AxisError as exc:
        raise SpecError(f"{where}: {key}: {exc}") from None
    if bare:
        return checked
    if found.runner == "count" and int(checked) > LIMITS.count_value:
        raise SpecError(f"{where}: {key}: {name} must be at most {LIMITS.count_value}")
    if name == "stack" and checked not in catalog:
        raise SpecError(
            f"{where}: {key}: unknown stack {_quote(checked)} (known: {', '.join(sorted(catalog))})"
        )
    if name in VERSION_AXES and not found.choices:
        known = sorted({s.versions[name] for s in catalog.values()}, key=_natural)
        if checked not in known:
            raise SpecError(
                f"{where}: {key}: no stack in matrix/stacks.toml has {name} {_quote(checked)} "
                f"(known: {', '.join(known)})"
            )
    return checked


def _natural(text: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|\D+", text)]


def _string(table: Mapping[str, Any], key: str, default: str, where: str, limit: int = 256) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise SpecError(f"{where}: matrix.{key} must be a string")
    if len(value) > limit:
        raise SpecError(f"{where}: matrix.{key} is longer than {limit} characters")
    return value


def _int(
    table: Mapping[str, Any],
    key: str,
    default: int,
    minimum: int,
    maximum: int,
    where: str,
    prefix: str = "matrix.",
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise SpecError(
            f"{where}: {prefix}{key} must be a whole number from {minimum} to {maximum}"
        )
    return value


def _tolerances(raw: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: [tolerances] must be a table of dtypes")
    out: dict[str, dict[str, float]] = {}
    for dtype, table in raw.items():
        if dtype not in _DTYPES:
            raise SpecError(
                f"{where}: tolerances.{_key(dtype)}: unknown dtype (allowed: {', '.join(_DTYPES)})"
            )
        if not isinstance(table, dict):
            raise SpecError(f"{where}: tolerances.{dtype} must be a table")
        for key, value in table.items():
            if key not in _TOLERANCE_KEYS:
                raise SpecError(
                    f"{where}: tolerances.{dtype}.{_key(key)}: unknown key "
                    f"(allowed: {', '.join(_TOLERANCE_KEYS)})"
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise SpecError(f"{where}: tolerances.{dtype}.{key} must be a finite number >= 0")
        out[dtype] = {k: float(v) for k, v in table.items()}
    try:
        apply_overrides(out)
    except MatrixError as exc:
        raise SpecError(f"{where}: {exc.message}") from None
    return out
