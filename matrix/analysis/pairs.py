"""Any two cells: every pair's per-phase comparison, computed once per distinct content.

A reader may pick any two cells of a report.  Comparing all n(n-1)/2 pairs
tensor by tensor costs about 4 ms a pair (``benchmarks/bench_pairs.py``: 60
cells 6 s, 1,000 cells ~50 min).  But a phase's result depends only on what
the two cells hold for it, and most cells hold the same thing for most
phases (seeded initial weights agree across precisions, float32 phases
across oneDNN settings...).  So each cell gets, per scenario/phase, a
**digest**: a number that two cells share exactly when their tensors for
that phase are bitwise equal (sha256 of the bytes, dtype, shape) and their
scenario states agree.  A pair of cells reads its result from the
comparison of its two digests, and only the distinct digest pairs that
occur are compared: 60 cells 0.03 s, 1,000 cells 0.7 s when the content
repeats as real axes make it; 2 s for 60 cells that all differ in three
phases.

The baseline of a pair is the cell that comes first in the report.  The
work is bounded by :data:`PAIR_BUDGET` tensor comparisons (about 2.5 s and
5 MB of report.json): phases are taken cheapest first, and a phase whose
distinct contents would exceed what is left (1,000 cells that all differ in
a phase: 500,000 pairs) keeps only what its digests say exactly (same
digest: the result of comparing the cell with itself; different: not
bitwise identical) and is listed in ``skipped``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matrix.analysis.comparisons import (
    PhaseResult,
    _judged_dtype,
    cell_columns,
    compare_phase,
)
from matrix.analysis.drift import Thresholds
from matrix.results.artifacts import CellArtifact

__all__ = ["PAIR_BUDGET", "PairPhase", "PairTable", "all_pairs", "phase_digest"]

#: Tensor comparisons the all-pairs table may spend: about 100 us each on
#: small tensors, so ~2.5 s, and ~5 MB of report.json (bench_pairs.py: 60
#: cells all different in three phases take 21,256).
PAIR_BUDGET = 25_000

_READ = 1 << 20  # elements hashed per chunk


@dataclass(frozen=True, kw_only=True)
class PairPhase:
    """The comparison of two digests of one column (baseline first in the report)."""

    column: str
    baseline: int
    candidate: int
    result: PhaseResult


@dataclass(frozen=True, kw_only=True)
class PairTable:
    cells: tuple[str, ...]
    columns: tuple[str, ...]
    #: per cell, per column: its digest id; a pair shows a column when the
    #: table has an entry for its two digests (one of the cells has the column)
    digests: tuple[tuple[int, ...], ...]
    phases: tuple[PairPhase, ...]
    #: columns over the budget: only "same digest or not" is known for distinct digests
    skipped: tuple[str, ...]
    budget: int
    tensor_comparisons: int


def phase_digest(cell: CellArtifact, scenario: str, phase: str) -> tuple[object, ...]:
    """What a comparison of ``scenario/phase`` reads from ``cell``.

    Two cells with equal digests compare the same way with any third cell.
    """
    record = cell.scenarios.get(scenario)
    state: tuple[object, ...] = (cell.problem, cell.missing)
    if record is not None:
        err = record.error
        status = record.phases.get(phase)
        state += (
            record.status,
            (err.type, err.message) if err else None,
            status[0] if status else None,
            (status[1].type, status[1].message) if status and status[1] else None,
            phase in record.varying_phases,
        )
    content = tuple(
        (
            key,
            cell.tensors[key].dtype,
            cell.tensors[key].stored_dtype,
            cell.tensors[key].shape,
            _judged_dtype(cell, cell.tensors[key].dtype),
            _sha(cell, key),
        )
        for key in cell.phase_index.get((scenario, phase), ())
    )
    return (*state, content)


def _sha(cell: CellArtifact, key: str) -> str:
    digest = hashlib.sha256()
    try:
        for chunk in cell.source(key).chunks(_READ):
            digest.update(chunk.tobytes())
    except (OSError, ValueError, EOFError) as exc:  # compared as unreadable, like any pair
        return f"unreadable: {type(exc).__name__}: {exc}"
    return digest.hexdigest()


def all_pairs(
    cells: Sequence[CellArtifact],
    *,
    thresholds: Mapping[str, Thresholds],
    budget: int = PAIR_BUDGET,
) -> PairTable:
    """Every pair of ``cells`` (earlier one as baseline), per column, through digests."""
    columns = cell_columns(*cells)
    ids: list[list[int]] = [[] for _ in cells]
    groups: list[list[list[int]]] = []  # per column, per digest: the cells holding it
    sizes: list[list[int]] = []  # per column, per digest: its tensor count
    present: list[list[bool]] = []
    own = [set(cell_columns(cell)) for cell in cells]
    for scenario, phase in columns:
        seen: dict[tuple[object, ...], int] = {}
        members: list[list[int]] = []
        size: list[int] = []
        has: list[bool] = []
        for n, cell in enumerate(cells):
            key = phase_digest(cell, scenario, phase)
            if key not in seen:
                seen[key] = len(seen)
                members.append([])
                size.append(len(cell.phase_index.get((scenario, phase), ())))
                has.append(False)
            has[seen[key]] = has[seen[key]] or (scenario, phase) in own[n]
            ids[n].append(seen[key])
            members[seen[key]].append(n)
        groups.append(members)
        sizes.append(size)
        present.append(has)

    # A digest pair (a, b) occurs among the cell pairs (i < j) iff min(a) < max(b).
    needed: list[list[tuple[int, int]]] = []
    work: list[int] = []
    for members, size, has in zip(groups, sizes, present, strict=True):
        found = [
            (a, b)
            for a, ma in enumerate(members)
            for b, mb in enumerate(members)
            if ma[0] < mb[-1] and (has[a] or has[b])
        ]
        needed.append(found)
        work.append(sum(max(size[a], size[b], 1) for a, b in found if a != b))
    spent = 0
    skipped: set[int] = set()
    for c in sorted(range(len(columns)), key=lambda c: (work[c], c)):
        if spent + work[c] <= budget:
            spent += work[c]
        else:
            skipped.add(c)

    phases: list[PairPhase] = []
    for c, (scenario, phase) in enumerate(columns):
        members = groups[c]
        for a, b in needed[c]:
            if c in skipped and a != b:
                continue
            i = members[a][0]
            j = next(m for m in reversed(members[b]) if m > i)
            # the page shows no worst elements for a pair: not keeping them saves a third
            result = compare_phase(
                cells[j], cells[i], scenario, phase, thresholds=thresholds, top_k=0
            )
            phases.append(
                PairPhase(column=f"{scenario}/{phase}", baseline=a, candidate=b, result=result)
            )
    return PairTable(
        cells=tuple(c.cell_id for c in cells),
        columns=tuple(f"{s}/{p}" for s, p in columns),
        digests=tuple(tuple(row) for row in ids),
        phases=tuple(phases),
        skipped=tuple(f"{columns[c][0]}/{columns[c][1]}" for c in sorted(skipped)),
        budget=budget,
        tensor_comparisons=spent,
    )
