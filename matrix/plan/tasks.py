"""The plan of one run: which cells this shard runs, how often, against
which reference. Pure data from a spec; the scheduler executes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matrix.errors import SpecError
from matrix.plan.cells import Cell, expand, filter_cells, resolve_reference, shard
from matrix.plan.spec import LIMITS, Spec
from matrix.plan.stacks import Stack
from matrix.user.check import UserRun
from scenarios.contract import registry

__all__ = ["RunPlan", "Task", "make_plan"]


@dataclass(frozen=True, kw_only=True)
class Task:
    """One run of one cell: repeat 0 is the primary run, the rest its repeats.

    Stage 2 is the second stage of two-stage scenarios: it runs once per
    cell, after stage one of every cell, reading their saved files."""

    cell: Cell
    repeat: int
    stage: int = 1


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    spec: Spec
    cells: tuple[Cell, ...]  # this shard's cells
    all_cells: tuple[Cell, ...]  # every cell of the (filtered) matrix, for the report
    reference: str
    repeats: int
    shard: tuple[int, int] | None = None
    #: why the reference is not the spec's (it was filtered out by --only), or None
    reference_note: str | None = None
    #: what stage one runs: the spec's scenarios, or the user's alone
    scenarios: tuple[str, ...] = ()
    #: the user's model or scenario module (--model, --scenario), or None
    user: UserRun | None = None
    #: the scenarios among them with a second stage
    stage_two: tuple[str, ...] = ()

    @property
    def environments(self) -> list[tuple[str, str]]:
        """(stack, target) of every image or venv this shard needs, in order."""
        return list(dict.fromkeys((c.stack, c.target) for c in self.cells))

    @property
    def tasks(self) -> list[Task]:
        """Stage one: repeat 0 of every cell first, so a short run gives a full first picture."""
        return [Task(cell=c, repeat=r) for r in range(self.repeats) for c in self.cells]

    @property
    def stage_two_tasks(self) -> list[Task]:
        """One stage-two run per cell when a scenario has a second stage."""
        return [Task(cell=c, repeat=0, stage=2) for c in self.cells] if self.stage_two else []


def make_plan(
    spec: Spec,
    catalog: Mapping[str, Stack],
    *,
    only: Sequence[str] = (),
    shard_spec: tuple[int, int] | None = None,
    repeats: int | None = None,
    reference: str | None = None,
    environment: str | None = None,
    user: UserRun | None = None,
) -> RunPlan:
    if repeats is not None and not 1 <= repeats <= LIMITS.repeats:
        raise SpecError(f"--repeats must be from 1 to {LIMITS.repeats}")
    everything = expand(spec, catalog)
    # The spec's own reference must name one of its cells, filtered or not.
    spec_ref = resolve_reference(spec, everything)
    cells = filter_cells(everything, only)
    if not cells:
        shown = " ".join(repr(o) for o in only)
        shown = shown if len(shown) <= 200 else shown[:197] + "..."
        raise SpecError(f"--only {shown}: no cell of {spec.path} matches")
    note = None
    if reference is not None:
        ref = resolve_reference(spec, cells, reference)
    elif any(c.id == spec_ref for c in cells):
        ref = spec_ref
    else:
        # Resolved on the whole filtered matrix, so every shard agrees.
        ref = cells[0].id
        note = f"the spec's reference {spec_ref} is not among the cells --only kept; using {ref}"
    mine = shard(cells, *shard_spec) if shard_spec else cells
    # With the user's model or module, the cells run it alone: the spec
    # gives the environments and settings.
    scenarios = user.scenarios if user is not None else spec.scenarios
    known = registry()
    if environment is not None:
        # One CI job per environment: its cells only, the plan of all.
        envs = list(dict.fromkeys(c.environment for c in cells))
        if environment not in envs:
            raise SpecError(
                f"--environment {environment!a}: not an environment of this matrix "
                f"(environments: {', '.join(envs[:12])}{', ...' if len(envs) > 12 else ''})"
            )
        mine = [c for c in mine if c.environment == environment]
    return RunPlan(
        spec=spec,
        cells=tuple(mine),
        all_cells=tuple(cells),
        reference=ref,
        repeats=repeats if repeats is not None else spec.repeats,
        shard=shard_spec,
        reference_note=note,
        scenarios=scenarios,
        user=user,
        stage_two=tuple(n for n in scenarios if n in known and known[n].stage_two is not None),
    )
