"""Saved here, loaded there: the portability scenario's two stages, compared.

Stage one of each cell (its primary artifact) says, per format and model,
whether it saved the file (``data.saved``) and holds its own predictions
(``portability/saved/<model>_predictions``). Stage two of each cell (its
``stage-2`` artifact) lists every load it tried (``data.loads``: source cell,
format, model, status, the error, the tensor of its predictions). For every
format this gives a matrix: saved in (rows) x loaded in (columns), each entry
whether the file loaded (the error where not) and the drift class of the
loaded model's predictions against the saving cell's own.

Pure: artifacts in, plain data out. Manifests are untrusted data, so every
field is checked for its type; what does not fit is "missing".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matrix.analysis.compare import TensorComparison, compare_tensors, missing_comparison
from matrix.analysis.comparisons import unreadable_comparison
from matrix.analysis.drift import DriftClass, Thresholds, thresholds_for
from matrix.results.artifacts import CellArtifact

__all__ = ["SCENARIO", "FormatMatrix", "Load", "Saved", "portability_matrices"]

SCENARIO = "portability"
_SAVE_CLASS = {
    "failed": DriftClass.FAILED,
    "unsupported": DriftClass.UNSUPPORTED,
    "missing": DriftClass.MISSING,
}


@dataclass(frozen=True, kw_only=True)
class Saved:
    """What one cell did when saving one model in one format."""

    cell: str
    model: str
    status: str  # ok | failed | unsupported | missing
    reason: str  # the error where it did not save; what it wrote where it did
    container: str | None = None  # zip, hdf5, directory (TF 2.12 writes HDF5 as .keras)


@dataclass(frozen=True, kw_only=True)
class Load:
    """One saved file loaded in one cell."""

    saved_in: str
    loaded_in: str
    model: str
    status: str  # loaded | failed | unsupported | not_saved | missing
    verdict: DriftClass  # of the predictions when loaded; else failed/unsupported/missing
    reason: str
    how: str | None = None
    comparison: TensorComparison | None = None


@dataclass(frozen=True, kw_only=True)
class FormatMatrix:
    format: str
    cells: tuple[str, ...]
    models: tuple[str, ...]
    saved: tuple[Saved, ...]
    loads: tuple[Load, ...]


def _record(cell: CellArtifact | None) -> tuple[Mapping[str, Any], str | None, str | None]:
    """The scenario's data, and (status, reason) when it has none to give."""
    if cell is None:
        return {}, "missing", "no run"
    if cell.problem is not None:
        return {}, ("missing" if cell.missing else "failed"), cell.problem
    record = cell.scenarios.get(SCENARIO)
    if record is None:
        return {}, "missing", f"did not run {SCENARIO}"
    data = record.data if isinstance(record.data, Mapping) else {}
    if record.status != "ok" and not data:
        err = record.error
        return {}, record.status, f"{err.type}: {err.message}" if err else record.status
    return data, None, None


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _error_text(entry: Mapping[str, Any]) -> str:
    err = entry.get("error")
    if not isinstance(err, Mapping):
        return "no error recorded"
    return f"{err.get('type', 'Error')}: {err.get('message', '')}"


def _saved(cell_id: str, data: Mapping[str, Any], fmt: str, model: str) -> Saved:
    by_format = data.get("saved")
    entry = by_format.get(fmt, {}).get(model) if isinstance(by_format, Mapping) else None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("status"), str):
        return Saved(cell=cell_id, model=model, status="missing", reason="no record of this save")
    status = entry["status"]
    if status == "ok":
        container = entry.get("container")
        return Saved(
            cell=cell_id,
            model=model,
            status="ok",
            reason=str(entry.get("how", "")),
            container=container if isinstance(container, str) else None,
        )
    return Saved(
        cell=cell_id,
        model=model,
        status=status if status in _SAVE_CLASS else "failed",
        reason=_error_text(entry),
    )


def _loads_by_key(data: Mapping[str, Any]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    out: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    loads = data.get("loads")
    for entry in loads if isinstance(loads, list) else ():
        if isinstance(entry, Mapping):
            key = (entry.get("source"), entry.get("format"), entry.get("model"))
            if all(isinstance(k, str) for k in key):
                out[key] = entry  # type: ignore[index]
    return out


def _compare(
    loaded: CellArtifact,
    key: str,
    saver: CellArtifact,
    base_key: str,
    thresholds: Mapping[str, Thresholds],
) -> TensorComparison:
    a, b = loaded.tensors.get(key), saver.tensors.get(base_key)
    if a is None or b is None:
        present = a or b
        side = "the loading run" if a is None else "the saving run"
        if present is None:
            return missing_comparison("float32", (), "no predictions on either side")
        return missing_comparison(present.dtype, present.shape, f"no predictions in {side}")
    try:
        return compare_tensors(
            loaded.source(key),
            saver.source(base_key),
            dtype=a.dtype,
            baseline_dtype=b.dtype,
            thresholds=thresholds_for(a.dtype, thresholds),
        )
    except (OSError, ValueError, EOFError) as exc:
        return unreadable_comparison(a.dtype, a.shape, exc)


def _load(
    saver: CellArtifact,
    saved: Saved,
    loader_id: str,
    loader: CellArtifact | None,
    loader_state: tuple[str | None, str | None],
    entry: Mapping[str, Any] | None,
    thresholds: Mapping[str, Thresholds],
) -> Load:
    def load(
        status: str,
        verdict: DriftClass,
        reason: str,
        how: str | None = None,
        comparison: TensorComparison | None = None,
    ) -> Load:
        return Load(
            saved_in=saver.cell_id,
            loaded_in=loader_id,
            model=saved.model,
            status=status,
            verdict=verdict,
            reason=reason,
            how=how,
            comparison=comparison,
        )

    if saved.status != "ok":
        cls = _SAVE_CLASS.get(saved.status, DriftClass.FAILED)
        return load("not_saved", cls, f"not saved in {saver.cell_id}: {saved.reason}")
    status, why = loader_state
    if loader is None or status is not None:
        cls = _SAVE_CLASS.get(status or "missing", DriftClass.FAILED)
        return load("missing", cls, f"stage two: {why}")
    if entry is None:
        why = f"{loader_id} did not try to load it (the file was not among its sources)"
        return load("missing", DriftClass.MISSING, why)
    how = entry.get("how") if isinstance(entry.get("how"), str) else None
    state = entry.get("status")
    if state in ("failed", "unsupported"):
        return load(str(state), DriftClass(state), _error_text(entry), how)
    key = entry.get("tensor")
    if state != "ok" or not isinstance(key, str):
        return load("missing", DriftClass.MISSING, "no prediction recorded", how)
    cmp = _compare(loader, key, saver, f"{SCENARIO}/saved/{saved.model}_predictions", thresholds)
    return load("loaded", cmp.verdict, cmp.reason, how, cmp)


def portability_matrices(
    cells: Sequence[CellArtifact],
    stage_two: Mapping[str, CellArtifact],
    thresholds: Mapping[str, Thresholds],
) -> tuple[FormatMatrix, ...]:
    """One matrix per format, over the cells that ran the portability scenario
    (in plan order); empty when none did."""
    stage_one = [c for c in cells if SCENARIO in c.scenarios or c.cell_id in stage_two]
    if not stage_one:
        return ()
    records = {c.cell_id: _record(c) for c in stage_one}
    formats: list[str] = []
    models: list[str] = []
    for data, _, _ in records.values():
        formats += [f for f in _strings(data.get("formats")) if f not in formats]
        models += [m for m in _strings(data.get("models")) if m not in models]
    loaders = {c.cell_id: _record(stage_two.get(c.cell_id)) for c in stage_one}
    entries = {cid: _loads_by_key(rec[0]) for cid, rec in loaders.items()}
    out = []
    for fmt in formats:
        saved = [
            _saved(c.cell_id, records[c.cell_id][0], fmt, model)
            if records[c.cell_id][1] is None
            else Saved(
                cell=c.cell_id,
                model=model,
                status=str(records[c.cell_id][1]),
                reason=str(records[c.cell_id][2]),
            )
            for c in stage_one
            for model in models
        ]
        by_saver = {(s.cell, s.model): s for s in saved}
        loads = [
            _load(
                saver,
                by_saver[(saver.cell_id, model)],
                loader.cell_id,
                stage_two.get(loader.cell_id),
                (loaders[loader.cell_id][1], loaders[loader.cell_id][2]),
                entries[loader.cell_id].get((saver.cell_id, fmt, model)),
                thresholds,
            )
            for saver in stage_one
            for loader in stage_one
            for model in models
        ]
        out.append(
            FormatMatrix(
                format=fmt,
                cells=tuple(c.cell_id for c in stage_one),
                models=tuple(models),
                saved=tuple(saved),
                loads=tuple(loads),
            )
        )
    return tuple(out)
