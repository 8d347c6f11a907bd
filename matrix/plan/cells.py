"""Expand a spec into cells, filter them, split them into shards.

All pure functions over plain data: no I/O, no Docker, no framework.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from matrix.errors import SpecError
from matrix.plan.spec import Chain, Spec
from matrix.plan.stacks import Stack
from scenarios.contract import AXES, OPTIONS, VERSION_AXES, AxisValue, setting_axes

__all__ = [
    "AXIS_DEFAULTS",
    "Cell",
    "cell_id",
    "cell_scenarios",
    "chain_combos",
    "derived_axes",
    "derived_when_unrecorded",
    "expand",
    "filter_cells",
    "parse_shard",
    "resolve_reference",
    "runner_args",
    "shard",
]

#: Every axis at its default: a cell leaves these out of its id.
AXIS_DEFAULTS: dict[str, AxisValue] = {a.name: a.default for a in AXES}
#: target and device make one part of an id ("where" the cell computes).
_WHERE = ("target", "device")


@dataclass(frozen=True, kw_only=True)
class Cell:
    """Environment x settings: the unit of work, caching and reporting."""

    id: str
    axes: dict[str, AxisValue]

    @property
    def stack(self) -> str:
        return str(self.axes["stack"])

    @property
    def target(self) -> str:
        return str(self.axes["target"])

    @property
    def environment(self) -> str:
        """The image or venv this cell runs in: stack and target, no settings."""
        return f"{self.stack}.{self.target}"

    @property
    def gpu(self) -> bool:
        return self.axes["device"] == "gpu"


def cell_id(axes: Mapping[str, AxisValue]) -> str:
    """Readable, stable id: the stack, where it runs, then every setting that
    differs from its default (so adding an axis renames no existing cell)."""
    target, device = axes["target"], axes["device"]
    where = "cpu" if target == "cpu" else ("gpu" if device == "gpu" else f"{target}-cpu")
    parts = [str(axes["stack"]), where]
    for axis in AXES:
        if axis.name == "stack" or axis.name in _WHERE:
            continue
        value = axes.get(axis.name, axis.default)
        part = axis.id_part(value) if value != axis.default else None
        if part is not None:
            parts.append(part)
    return "__".join(parts)


def expand(spec: Spec, catalog: Mapping[str, Stack]) -> list[Cell]:
    """The spec's cells in a stable order: the product of its axes, then its
    upgrade chains.

    include/exclude follow GitHub Actions: excludes drop every product
    combination they match partially, then each include extends every
    combination whose original axis values it does not overwrite, or else is
    added as a combination of its own. Unset axes take their defaults, and
    each combination's environment is resolved to one stack (named, or found
    from its versions).
    """
    combos: list[dict[str, AxisValue]] = []
    if spec.axes:
        names = list(spec.axes)
        product = [
            dict(zip(names, vals, strict=True)) for vals in itertools.product(*spec.axes.values())
        ]
        kept = [c for c in product if not any(_matches(c, rule) for rule in spec.exclude)]
        extended: list[dict[str, AxisValue]] = [dict(c) for c in kept]
        added: list[dict[str, AxisValue]] = []
        for rule in spec.include:
            hit = False
            for original, combo in zip(kept, extended, strict=True):
                if all(original[k] == v for k, v in rule.items() if k in original):
                    combo.update(rule)
                    hit = True
            if not hit:
                added.append(dict(rule))
        combos = extended + added
    else:
        combos = [dict(rule) for rule in spec.include]
    for chain in spec.chains:
        combos += [
            c for c in chain_combos(spec, chain) if not any(_matches(c, r) for r in spec.exclude)
        ]

    cells: list[Cell] = []
    seen: set[str] = set()
    for combo in combos:
        axes = {name: combo.get(name, default) for name, default in AXIS_DEFAULTS.items()}
        axes.update(_environment(combo, spec, catalog))
        _check_cell(axes, spec, catalog)
        cid = cell_id(axes)
        if cid not in seen:
            seen.add(cid)
            cells.append(Cell(id=cid, axes=axes))
    if not cells:
        raise SpecError(f"{spec.path}: the matrix is empty (excludes removed every combination)")
    return cells


def chain_combos(spec: Spec, chain: Chain) -> list[dict[str, AxisValue]]:
    """A chain's combinations: each value in order, in every context, the
    other axes at the chain's ``at`` or else at the spec's reference."""
    base: dict[str, AxisValue] = dict(spec.reference) if isinstance(spec.reference, dict) else {}
    base.update(chain.at)
    names = list(chain.contexts)
    out = []
    for values in itertools.product(*chain.contexts.values()):
        context = dict(zip(names, values, strict=True))
        for value in chain.values:
            out.append({**base, **context, chain.axis: value})
    return out


def _environment(
    combo: Mapping[str, AxisValue], spec: Spec, catalog: Mapping[str, Stack]
) -> dict[str, AxisValue]:
    """The stack and its versions for a combination that names either."""
    asked = {a: combo[a] for a in VERSION_AXES if a in combo}
    if "stack" in combo:
        stack = catalog[str(combo["stack"])]
        clash = {a: v for a, v in asked.items() if stack.versions[a] != v}
        if clash:
            a, v = next(iter(clash.items()))
            raise SpecError(
                f"{spec.path}: stack {stack.name} has {a} {stack.versions[a]}, not {v} "
                f"(in the combination {_shown(combo)})"
            )
        return {"stack": stack.name, **stack.versions}
    if not asked:
        raise SpecError(
            f"{spec.path}: a combination names no environment (no stack, no version axis): "
            f"{_shown(combo)}"
        )
    wanted = {a: asked.get(a, AXIS_DEFAULTS[a]) for a in VERSION_AXES}
    found = [s for s in catalog.values() if dict(s.versions) == wanted]
    if len(found) != 1:
        what = ", ".join(f"{a}={v}" for a, v in wanted.items() if v != AXIS_DEFAULTS[a])
        if not found:
            raise SpecError(
                f"{spec.path}: no stack in matrix/stacks.toml is {what or 'all defaults'}; "
                "add one (and its lock: nox -s lock) or drop the combination"
            )
        raise SpecError(f"{spec.path}: stacks {', '.join(s.name for s in found)} are all {what}")
    return {"stack": found[0].name, **found[0].versions}


def _shown(combo: Mapping[str, AxisValue]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in combo.items())
    return text if len(text) <= 200 else text[:197] + "..."


def _quote(value: object) -> str:
    """A value the user gave, quoted and bounded for a one-line message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _matches(combo: Mapping[str, AxisValue], rule: Mapping[str, AxisValue]) -> bool:
    return all(combo.get(k, AXIS_DEFAULTS[k]) == v for k, v in rule.items())


def _check_cell(axes: Mapping[str, AxisValue], spec: Spec, catalog: Mapping[str, Stack]) -> None:
    stack = catalog[str(axes["stack"])]
    if not stack.supports(str(axes["target"])):
        raise SpecError(
            f"{spec.path}: stack {stack.name!r} has no {axes['target']} build "
            f"(add cuda_requirements in matrix/stacks.toml, or exclude it)"
        )
    if axes["device"] == "gpu" and axes["target"] != "cuda":
        raise SpecError(
            f"{spec.path}: device = 'gpu' needs target = 'cuda' (stack {stack.name!r}); "
            "exclude the combination or add target = ['cuda']"
        )


def derived_axes(spec: Spec) -> tuple[str, ...]:
    """The environment axes the spec never names: they follow from the ones it
    does (a named stack implies its versions; versions imply the stack), so
    they are shown but never attributed."""
    named: set[str] = set(spec.axes)
    for rule in spec.include:
        named |= set(rule)
    for chain in spec.chains:
        named |= {chain.axis, *chain.at, *chain.contexts}
    identity = ("stack", *VERSION_AXES)
    return tuple(a for a in identity if a not in named)


def derived_when_unrecorded(varying: Sequence[str]) -> tuple[str, ...]:
    """The derived axes of results whose plan.json does not record them:
    specs then named environments by stack, so a varying stack implies its
    versions."""
    if "stack" not in varying:
        return ()
    return tuple(a for a in VERSION_AXES if a in varying)


def resolve_reference(spec: Spec, cells: Sequence[Cell], override: str | None = None) -> str:
    """The cell every other cell is compared against: --reference, the spec's,
    or the first cell."""
    wanted = override if override is not None else spec.reference
    if wanted is None:
        return cells[0].id
    where = "--reference" if override is not None else f"{spec.path}: matrix.reference"
    if isinstance(wanted, str):
        if any(c.id == wanted for c in cells):
            return wanted
        raise SpecError(f"{where} {_quote(wanted)} is not a cell of the matrix (see --dry-run)")
    for cell in cells:
        if _matches(cell.axes, wanted):
            return cell.id
    raise SpecError(f"{where}: no cell matches {_shown(wanted)} (see --dry-run)")


def filter_cells(cells: Iterable[Cell], exprs: Sequence[str]) -> list[Cell]:
    """Keep cells matching any expression.

    An expression is either a glob on the cell id (``tf-2.21__*``) or
    comma-separated ``axis=glob`` terms that must all hold
    (``stack=tf-2.*,precision=float32``).
    """
    cells = list(cells)
    if not exprs:
        return cells
    predicates = [_predicate(e) for e in exprs]
    return [c for c in cells if any(p(c) for p in predicates)]


def _predicate(expr: str) -> Callable[[Cell], bool]:
    if "=" not in expr:
        return lambda c: fnmatch.fnmatchcase(c.id, expr)
    terms: list[tuple[str, str]] = []
    for term in expr.split(","):
        axis, sep, pattern = term.partition("=")
        axis = axis.strip()
        if not sep or axis not in AXIS_DEFAULTS:
            raise SpecError(
                f"--only {_quote(expr)}: {_quote(term)} is not axis=value "
                f"(axes: {', '.join(AXIS_DEFAULTS)})"
            )
        terms.append((axis, pattern.strip()))
    return lambda c: all(fnmatch.fnmatchcase(str(c.axes[a]), p) for a, p in terms)


def parse_shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        # More digits than any shard count: refused before int() (which
        # refuses 4300 digits with a message about itself).
        i, n = (int(index), int(count)) if len(text) <= 20 else (0, 0)
    except ValueError:
        i = n = 0
    if not sep or n < 1 or not 1 <= i <= n:
        raise SpecError(f"--shard {_quote(text)}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return i, n


def shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Shard ``index`` of ``count`` (1-based): round-robin over the stable cell
    order, so every shard gets a mix of stacks and the union is the whole."""
    return [c for k, c in enumerate(cells) if k % count == index - 1]


def cell_scenarios(cell: Cell, scenarios: Sequence[str]) -> tuple[str, ...]:
    """The scenarios a cell runs: at a value of an axis other than its default,
    only those that apply that axis (contract ``Axis.scenarios``); the
    others would compute exactly what the default's cell computes. When that
    leaves nothing (a scenario list of none that apply it), all of them."""
    kept = list(scenarios)
    for axis in setting_axes():
        if axis.scenarios is not None and cell.axes.get(axis.name, axis.default) != axis.default:
            kept = [name for name in kept if name in axis.scenarios]
    return tuple(kept) or tuple(scenarios)


def runner_args(cell: Cell, spec: Spec, scenarios: Sequence[str] = ()) -> list[str]:
    """The ``python -m scenarios`` options that apply the cell's settings:
    every setting axis (the environment axes pick the image), the scenarios
    (default: the spec's) the cell runs, then the spec's runner options."""
    args: list[str] = []
    for axis in setting_axes():
        args += [axis.option, str(cell.axes[axis.name])]
    args += ["--scenarios", ",".join(cell_scenarios(cell, scenarios or spec.scenarios))]
    for option in OPTIONS:
        if option.spec and option.kind != "scenarios":
            args += [option.option, str(spec.runner.get(option.name, option.default))]
    return args
