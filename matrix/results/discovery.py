"""Results directories (one per shard or per machine) -> the cells in them.

Cells appear in plan order, then any unplanned cells sorted by id, so the
merge of shards lists exactly what one unsharded directory would. A
directory that is missing or empty is a problem, not the end: the others are
still reported. A cell directory whose name is no printable UTF-8 is left
out with a warning (its name could not be shown or written back).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matrix.errors import ArtifactError, ResultsError
from matrix.execute.planfile import PlanFile, merge_plans, read_plan
from scenarios.contract import PLAN, STAGE_TWO

__all__ = ["CellEntry", "ResultsInventory", "discover_results", "shown_name"]


@dataclass(frozen=True, kw_only=True)
class CellEntry:
    """Where a cell's primary run and its repeats live (not yet loaded)."""

    cell_id: str
    directory: Path | None  # None: planned but absent from every results dir
    repeats: tuple[Path, ...] = ()
    stage_two: Path | None = None  # the cell's stage-two run, when there is one


@dataclass(frozen=True, kw_only=True)
class ResultsInventory:
    plan: PlanFile
    cells: tuple[CellEntry, ...]
    problems: tuple[tuple[str, str], ...]  # (kind, one line): results | warning


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
    found: dict[str, CellEntry] = {}
    skipped = {p.resolve() for p in skip}
    for root in results_dirs:
        where = ascii(str(root))[1:-1]
        if not root.is_dir():
            problems.append(("results", f"{where}: results directory does not exist"))
            continue
        plan_path = root / PLAN
        if plan_path.is_file():
            try:
                plans.append(read_plan(plan_path))
            except ArtifactError as exc:
                problems.append(("results", exc.message))
        cells_here = 0
        try:
            children = sorted(root.iterdir())
        except OSError as exc:
            problems.append(("results", f"{where}: cannot be listed ({exc.strerror or exc})"))
            continue
        for child in children:
            if child.name.startswith(".") or child.resolve() in skipped or not child.is_dir():
                continue
            if (child / "report.json").is_file() or (child / "index.html").is_file():
                continue  # an earlier report written into the results dir
            name = shown_name(child.name)
            if name is None:
                problems.append(
                    ("warning", f"{str(child)!a}: not a printable UTF-8 name; left out")
                )
                continue
            cells_here += 1
            if name in found:
                problems.append(
                    (
                        "warning",
                        f"{child}: cell {name} also in {found[name].directory}; using the first",
                    )
                )
                continue
            stage_two = child / STAGE_TWO
            found[name] = CellEntry(
                cell_id=name,
                directory=child,
                repeats=_repeat_dirs(child),
                stage_two=stage_two if stage_two.is_dir() else None,
            )
        if cells_here == 0:
            problems.append(("results", f"{where}: no cell directories in this results directory"))
    plan = merge_plans(plans)
    if not found and not plan.cells:
        detail = "; ".join(msg for _, msg in problems)
        raise ResultsError(f"nothing to report: {detail}")
    ordered: list[CellEntry] = []
    for cid in plan.cells:
        entry = found.pop(cid, None)
        ordered.append(entry or CellEntry(cell_id=cid, directory=None))
    ordered.extend(found[cid] for cid in sorted(found))
    return ResultsInventory(plan=plan, cells=tuple(ordered), problems=tuple(problems))


def _repeat_dirs(cell_dir: Path) -> tuple[Path, ...]:
    root = cell_dir / "repeats"
    if not root.is_dir():
        return ()
    dirs = [p for p in root.iterdir() if p.is_dir() and shown_name(p.name) is not None]
    return tuple(sorted(dirs, key=lambda p: _natural_key(p.name)))


def _natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|\D+", text))
