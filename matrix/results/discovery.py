"""Results directories (one per shard or per machine) -> the cells in them.

Cells appear in plan order, then any unplanned cells sorted by id, so the
merge of shards lists exactly what one unsharded directory would. A
directory that is missing or empty is a problem, not the end: the others are
still reported. A cell directory whose name is no printable UTF-8 is left
out with a warning (its name could not be shown or written back); one that
is a symlink leading out of its results directory is kept as a corrupt cell
(it is never read: results are data from wherever they came, not a way to
make the report read other files). A plan.json that cannot be read is a
corrupt artifact: the cells are still reported, in directory order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matrix.errors import ArtifactError, ResultsError
from matrix.execute.planfile import PlanFile, merge_plans, read_plan
from matrix.untrusted import inside, shown_path
from scenarios.contract import PLAN, STAGE_TWO

__all__ = ["CellEntry", "ResultsInventory", "discover_results", "shown_name"]


@dataclass(frozen=True, kw_only=True)
class CellEntry:
    """Where a cell's primary run and its repeats live (not yet loaded)."""

    cell_id: str
    directory: Path | None  # None: planned but absent from every results dir
    repeats: tuple[Path, ...] = ()
    root: int = 0  # which results directory, by its index
    #: why the directory must not be read (a symlink out of the results directory)
    problem: str | None = None
    stage_two: Path | None = None  # the cell's stage-two run, when there is one


@dataclass(frozen=True, kw_only=True)
class ResultsInventory:
    plan: PlanFile  # every directory's plan.json, merged
    cells: tuple[CellEntry, ...]  # one per cell id, in plan order (the first found wins)
    problems: tuple[tuple[str, str], ...]  # (kind, one line): results | artifact | warning
    #: every cell directory of every results directory, duplicates included:
    #: the same cell made on two machines is two cells once merged
    entries: tuple[CellEntry, ...] = ()
    roots: tuple[Path, ...] = ()
    root_plans: tuple[PlanFile | None, ...] = ()


def shown_name(name: str) -> str | None:
    """``name`` if it is printable UTF-8 (a directory name may be any bytes), else None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return name if name.isprintable() else None


def discover_results(
    results_dirs: Sequence[Path], *, skip: Sequence[Path] = ()
) -> ResultsInventory:
    """Find the cells in one or more results directories and merge them.

    Raises ResultsError only when nothing at all is left.
    """
    if not results_dirs:
        raise ResultsError("no results directory given")
    problems: list[tuple[str, str]] = []
    plans: list[PlanFile] = []
    root_plans: list[PlanFile | None] = []
    found: dict[str, CellEntry] = {}
    entries: list[CellEntry] = []
    skipped = {p.resolve() for p in skip}
    for index, root in enumerate(results_dirs):
        where = shown_path(root)
        root_plans.append(None)
        if not root.is_dir():
            state = "is not a directory" if root.exists() else "does not exist"
            problems.append(("results", f"{where}: results directory {state}"))
            continue
        plan_path = root / PLAN
        if plan_path.exists() or plan_path.is_symlink():
            try:
                plans.append(read_plan(plan_path))
                root_plans[index] = plans[-1]
            except ArtifactError as exc:
                problems.append(("artifact", exc.message))
        cells_here = 0
        try:
            children = sorted(root.iterdir())
        except OSError as exc:
            problems.append(("results", f"{where}: cannot be listed ({exc.strerror or exc})"))
            continue
        for child in children:
            if child.name.startswith(".") or not child.is_dir() or child.resolve() in skipped:
                continue
            name = shown_name(child.name)
            if name is None:
                problems.append(
                    ("warning", f"{str(child)!a}: not a printable UTF-8 name; left out")
                )
                continue
            if child.is_symlink() and not inside(child, root):
                cells_here += 1
                refused = CellEntry(
                    cell_id=name,
                    directory=child,
                    root=index,
                    problem=f"{shown_path(child)}: a symlink out of the results directory "
                    f"{where}; not read",
                )
                entries.append(refused)
                found.setdefault(name, refused)
                continue
            if (child / "report.json").is_file() or (child / "index.html").is_file():
                continue  # an earlier report written into the results dir
            cells_here += 1
            stage_two = child / STAGE_TWO
            entry = CellEntry(
                cell_id=name,
                directory=child,
                repeats=_repeat_dirs(child),
                root=index,
                stage_two=stage_two if stage_two.is_dir() else None,
            )
            entries.append(entry)
            found.setdefault(name, entry)
        if cells_here == 0:
            problems.append(("results", f"{where}: no cell directories in this results directory"))
    plan = merge_plans(plans)
    if not found and not plan.cells:
        detail = "; ".join(msg for _, msg in problems)
        raise ResultsError(f"nothing to report: {detail}")
    ordered: list[CellEntry] = []
    for cid in plan.cells:
        held = found.pop(cid, None)
        ordered.append(held or CellEntry(cell_id=cid, directory=None))
    ordered.extend(found[cid] for cid in sorted(found))
    return ResultsInventory(
        plan=plan,
        cells=tuple(ordered),
        problems=tuple(problems),
        entries=tuple(entries),
        roots=tuple(results_dirs),
        root_plans=tuple(root_plans),
    )


def _repeat_dirs(cell_dir: Path) -> tuple[Path, ...]:
    root = cell_dir / "repeats"
    if not root.is_dir():
        return ()
    dirs = [
        p
        for p in root.iterdir()
        if p.is_dir() and shown_name(p.name) is not None and inside(p, cell_dir)
    ]
    return tuple(sorted(dirs, key=lambda p: _natural_key(p.name)))


def _natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|\D+", text))
