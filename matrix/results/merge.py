"""Merge the cells of several results directories: shards of one run, or
runs of the same matrix on different machines.

Shards of one machine simply add up (a cell found twice keeps the first).
When the cells come from more than one machine (derived from each
fingerprint, :mod:`matrix.results.machine`), the machine becomes an axis:
every cell is named ``<cell-id>@<machine>``, so the same cell made on two
hosts is kept twice and compared ("changing the machine alone moves phase P
by ..."), never overwritten. Pure: the caller loads the artifacts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from matrix.execute.planfile import PlanFile
from matrix.results.artifacts import CellArtifact
from matrix.results.machine import MACHINE_AXIS, UNKNOWN, Machine, distinct_labels, machine_of

__all__ = ["Loaded", "Merged", "merge_cells", "merged_axes", "qualify"]


@dataclass(frozen=True, kw_only=True)
class Loaded:
    """One cell directory as loaded, with the results directory it came from."""

    root: int
    cell: CellArtifact
    repeats: tuple[CellArtifact, ...] = ()
    stage_two: CellArtifact | None = None  # the cell's stage-two run, when there is one


@dataclass(frozen=True, kw_only=True)
class Merged:
    cells: tuple[CellArtifact, ...]
    repeats: Mapping[str, tuple[CellArtifact, ...]]
    #: the machine label of each cell id, when several machines are merged (else empty)
    machines: Mapping[str, str]
    #: one line each: cells found twice on the same machine
    problems: tuple[str, ...]
    #: the machine most cells of each results directory ran on (by its index)
    root_machines: Mapping[int, str]
    #: each cell's stage-two run (portability), by merged cell id
    stage_two: Mapping[str, CellArtifact] = field(default_factory=dict)

    @property
    def multi_machine(self) -> bool:
        return len(set(self.machines.values())) > 1


def merge_cells(
    loaded: Sequence[Loaded],
    roots: Sequence[Path],
    plans: Sequence[PlanFile | None],
    *,
    missing_problem: str,
) -> Merged:
    """The cells of every results directory, in plan order, then the rest by id.

    ``roots`` are the results directories and ``plans`` their plan.json
    (None: it has none), by index. A cell planned but absent from every
    directory of its machine comes back ``missing``.
    """
    # A host is its CPU: a cell on the CPU of a GPU machine hides the GPU
    # from itself, and still ran there. The GPU is added to the label of
    # the host whose cells saw one.
    machine_by_key: dict[str, Machine] = {}
    key_of: list[str | None] = []
    gpu_of: list[str | None] = []
    for item in loaded:
        machine = machine_of(item.cell.fingerprint) if item.cell.fingerprint else None
        if machine is None:
            key_of.append(None)
            gpu_of.append(None)
            continue
        host = machine.host()
        machine_by_key.setdefault(host.key, host)
        key_of.append(host.key)
        gpu_of.append(machine.gpu_label)
    labels = distinct_labels(machine_by_key)
    # One results directory is one run on one host (the scheduler refuses
    # another machine's runs in it): its machine is the one its sound cells
    # name. A cell without a fingerprint (failed before its manifest) ran
    # there too; a cell whose fingerprint names another machine is flagged,
    # never made a machine of its own (a damaged manifest could name anything).
    root_cpu: dict[int, str] = {}
    votes: dict[int, Counter[str]] = {}
    gpus: dict[int, Counter[str]] = {}
    for item, key, gpu in zip(loaded, key_of, gpu_of, strict=True):
        if key is not None and item.cell.ok:
            votes.setdefault(item.root, Counter())[labels[key]] += 1
            if gpu is not None:
                gpus.setdefault(item.root, Counter())[gpu] += 1
    for root, counter in votes.items():
        root_cpu[root] = counter.most_common(1)[0][0]
    root_label = {
        root: cpu + (f"+{gpus[root].most_common(1)[0][0]}" if root in gpus else "")
        for root, cpu in root_cpu.items()
    }
    problems: list[str] = []
    for item, key in zip(loaded, key_of, strict=True):
        held = root_cpu.get(item.root)
        if key is not None and held is not None and labels[key] != held and item.cell.ok:
            problems.append(
                f"{item.cell.directory}: its fingerprint names machine {labels[key]}, the rest "
                f"of its results directory {held}; counted as {root_label[item.root]}"
            )

    def label(index: int) -> str:
        return root_label.get(loaded[index].root, UNKNOWN)

    multi = len(set(root_label.values())) > 1
    cells: dict[str, CellArtifact] = {}
    repeats: dict[str, tuple[CellArtifact, ...]] = {}
    second: dict[str, CellArtifact] = {}
    machines: dict[str, str] = {}
    origin: dict[str, str] = {}  # merged id -> the cell id its directory has
    for n, item in enumerate(loaded):
        name = item.cell.cell_id
        where = label(n)
        if multi:
            cid = f"{name}@{where}"
            axes = {**item.cell.axes, MACHINE_AXIS: where}
            cell = replace(item.cell, cell_id=cid, axes=axes)
            runs = tuple(replace(r, cell_id=cid, axes=axes) for r in item.repeats)
            two = replace(item.stage_two, cell_id=cid, axes=axes) if item.stage_two else None
        else:
            cid, cell, runs, two = name, item.cell, item.repeats, item.stage_two
        if cid in cells:
            problems.append(
                f"{item.cell.directory}: cell {cid} also in {cells[cid].directory}; using the first"
            )
            continue
        cells[cid], repeats[cid], origin[cid] = cell, runs, name
        if two is not None:
            second[cid] = two
        if multi:
            machines[cid] = where

    # Planned cells that no directory holds, on any machine, are missing. A
    # cell run on one machine and not on another is not: the runners of one
    # CI fan-out can differ in their CPU.
    present = set(origin.values())
    for root, plan in enumerate(plans):
        if plan is None:
            continue
        where = root_label.get(root, UNKNOWN)
        for name in plan.cells:
            cid = f"{name}@{where}" if multi else name
            if name not in present and cid not in cells:
                cells[cid] = CellArtifact(
                    cell_id=cid,
                    directory=roots[root] / name,
                    problem=missing_problem,
                    missing=True,
                    axes={MACHINE_AXIS: where} if multi else {},
                )
                repeats[cid], origin[cid] = (), name
                if multi:
                    machines[cid] = where
    # Plan order (machine by machine, in the order of the directories), then
    # the cells no plan.json names, by id.
    rank: dict[str, int] = {}
    for plan in plans:
        for name in plan.cells if plan is not None else ():
            rank.setdefault(name, len(rank))
    by_machine = list(dict.fromkeys([*root_label.values(), *machines.values()]))
    ordered = sorted(
        cells,
        key=lambda c: (
            by_machine.index(machines[c]) if multi and machines[c] in by_machine else 0,
            rank.get(origin[c], len(rank)),
            c,
        ),
    )
    return Merged(
        cells=tuple(cells[c] for c in ordered),
        repeats={c: repeats[c] for c in ordered},
        machines=machines,
        problems=tuple(problems),
        root_machines=root_label,
        stage_two=second,
    )


def qualify(cell_id: str | None, merged: Merged) -> str | None:
    """A plan's cell id (the reference) in the merged naming: on the machine
    of the first results directory."""
    if cell_id is None or not merged.multi_machine:
        return cell_id
    first = merged.root_machines.get(0)
    return f"{cell_id}@{first}" if first else None


def merged_axes(axes: Sequence[str], merged: Merged) -> tuple[str, ...]:
    """The plan's axes, and the machine when several machines are merged."""
    if merged.multi_machine and MACHINE_AXIS not in axes:
        return (*axes, MACHINE_AXIS)
    return tuple(axes)
