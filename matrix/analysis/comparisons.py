"""Comparisons: two artifacts (or an artifact and its float64 oracle), tensor by tensor.

The result is grouped by ``scenario/phase``: a phase's verdict is the worst of
its tensors', or failed/missing/unsupported when a side has no tensors for
it.  A cell that could not be read fails every phase its counterpart has.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from matrix.analysis.compare import TOP_K, TensorComparison, compare_tensors, missing_comparison
from matrix.analysis.drift import DriftClass, Thresholds, thresholds_for, worst
from matrix.analysis.localize import Localisation, localize
from matrix.errors import ArtifactError
from matrix.results.artifacts import CellArtifact
from matrix.results.tensors import ChunkSource, RealView
from scenarios.contract import ORACLE_PREFIX, phase_rank

__all__ = [
    "CellComparison",
    "Comparator",
    "PhaseResult",
    "cell_columns",
    "compare_cells",
    "compare_phase",
    "compare_with_oracle",
    "merge_repeats",
    "phase_sort_key",
]

ORACLE = "float64 reference"


def phase_sort_key(column: tuple[str, str]) -> tuple[str, tuple[int, str]]:
    """Columns by scenario, then its phases in reading order (contract.PHASES)."""
    scenario, phase = column
    return scenario, phase_rank(phase)


@dataclass(frozen=True, kw_only=True)
class PhaseResult:
    scenario: str
    phase: str
    verdict: DriftClass
    reason: str
    tensors: tuple[tuple[str, TensorComparison], ...]
    localisation: Localisation | None = None
    varies: bool = False  # unseeded on purpose: shown, but kept out of every verdict
    # Failed on both sides: the pair's difference did not cause it, so it is
    # no evidence about the axis (attribution) or about determinism (repeats).
    failed_both: bool = False

    @property
    def column(self) -> str:
        return f"{self.scenario}/{self.phase}"

    def peak(self, attr: str) -> float:
        """The largest finite-or-inf value of ``attr`` over the tensors (NaN: none)."""
        values = [getattr(c, attr) for _, c in self.tensors if not math.isnan(getattr(c, attr))]
        return max(values) if values else math.nan


@dataclass(frozen=True, kw_only=True)
class CellComparison:
    """``candidate`` compared with ``baseline`` (a cell id or :data:`ORACLE`)."""

    kind: str  # reference | oracle | repeat | axis
    candidate: str
    baseline: str
    phases: tuple[PhaseResult, ...]

    @property
    def verdict(self) -> DriftClass:
        return worst(p.verdict for p in self.phases if not p.varies)


#: What attribution and the report use to compare two cells (memoised by the caller).
Comparator = Callable[[CellArtifact, CellArtifact], tuple[PhaseResult, ...]]


def _phases_of(cell: CellArtifact) -> Mapping[tuple[str, str], tuple[str, ...]]:
    """(scenario, phase) -> tensor keys, from the tensors the cell wrote."""
    return cell.phase_index


def _scenario_phases(cell: CellArtifact) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for scenario, phase in _phases_of(cell):
        out.setdefault(scenario, set()).add(phase)
    return out


def _status_verdict(
    cell: CellArtifact, scenario: str, phase: str | None, side: str, has_tensors: bool
) -> tuple[DriftClass, str] | None:
    """Why a side has no usable tensors for ``scenario/phase`` (None: compare them).

    A failed scenario may still hold the tensors of the phases that ran
    before (or apart from) the failure: those are compared; the phases that
    failed, or that the side has no tensors for, are failed.
    """
    if cell.problem is not None:
        cls = DriftClass.MISSING if _is_missing(cell) else DriftClass.FAILED
        return cls, f"{side} {cell.problem}"
    record = cell.scenarios.get(scenario)
    if record is None:
        return DriftClass.MISSING, f"{side} did not run scenario {scenario}"
    if record.status == "unsupported":
        err = record.error
        why = f": {_one_line(err.message)}" if err else ""
        return DriftClass.UNSUPPORTED, f"{side} unsupported{why}"
    if record.status != "failed":
        return None
    phase_status = record.phases.get(phase) if phase is not None else None
    if phase_status is not None:
        status, err = phase_status
        if status == "ok" and has_tensors:
            return None
        err = err or record.error
    else:
        if has_tensors:
            return None
        err = record.error
    what = f"{err.type}: {err.message}" if err else "no error recorded"
    return DriftClass.FAILED, f"{side} failed: {_one_line(what)}"


def _is_missing(cell: CellArtifact) -> bool:
    return cell.missing


def _one_line(text: str) -> str:
    return " ".join(text.split())[:240]


def compare_cells(
    candidate: CellArtifact,
    baseline: CellArtifact,
    *,
    thresholds: Mapping[str, Thresholds],
) -> tuple[PhaseResult, ...]:
    """Compare every phase of two cells, tensor by tensor."""
    return tuple(
        compare_phase(candidate, baseline, scenario, phase, thresholds=thresholds)
        for scenario, phase in cell_columns(candidate, baseline)
    )


def cell_columns(*cells: CellArtifact) -> list[tuple[str, str]]:
    """The scenario/phase columns a comparison of ``cells`` has, in reading order.

    A declared phase with no tensors on either side is only worth a column
    when it failed; an ok phase that writes nothing (a summary kept in data)
    has nothing to compare.  A scenario with no phase at all gets ``run``.
    """
    scenarios: set[str] = set()
    for cell in cells:
        scenarios |= set(_scenario_phases(cell)) | set(cell.scenarios)
    # A comparison covers the scenarios each cell was asked to run (its
    # manifest lists every one, run or failed): a mixed-precision cell runs
    # only the precision scenario, and is not "missing" the others. A cell
    # with no manifest (a failed run) restricts nothing: it is failed everywhere.
    for cell in cells:
        if cell.scenarios:
            scenarios &= set(cell.scenarios)
    out: list[tuple[str, str]] = []
    for scenario in sorted(scenarios):
        phases: set[str] = set()
        for cell in cells:
            phases |= {p for s, p in _phases_of(cell) if s == scenario}
            record = cell.scenarios.get(scenario)
            if record is not None:
                phases |= {p for p, (status, _err) in record.phases.items() if status != "ok"}
        ordered = sorted(phases, key=lambda p: phase_sort_key((scenario, p)))
        out += [(scenario, p) for p in ordered or ["run"]]
    return out


def compare_phase(
    candidate: CellArtifact,
    baseline: CellArtifact,
    scenario: str,
    phase: str,
    *,
    thresholds: Mapping[str, Thresholds],
    top_k: int = TOP_K,
) -> PhaseResult:
    """Compare one scenario/phase of two cells (what :func:`compare_cells` does per column).

    ``top_k``: how many worst elements each tensor keeps (0: none, and faster).
    """
    varies = any(
        phase in record.varying_phases
        for record in (candidate.scenarios.get(scenario), baseline.scenarios.get(scenario))
        if record is not None
    )
    cand_keys = _phases_of(candidate).get((scenario, phase), ())
    base_keys = _phases_of(baseline).get((scenario, phase), ())
    cand_block = _status_verdict(candidate, scenario, phase, "candidate", bool(cand_keys))
    base_block = _status_verdict(baseline, scenario, phase, "baseline", bool(base_keys))
    blocked = cand_block or base_block
    if blocked is not None:
        cls, reason = blocked
        both = (
            cand_block is not None
            and base_block is not None
            and cand_block[0] is DriftClass.FAILED
            and base_block[0] is DriftClass.FAILED
        )
        result = PhaseResult(
            scenario=scenario,
            phase=phase,
            verdict=cls,
            reason=reason,
            tensors=(),
            failed_both=both,
        )
    else:
        keys = sorted(set(cand_keys) | set(base_keys))
        tensors = tuple(
            (key, _compare_key(candidate, baseline, key, thresholds, top_k)) for key in keys
        )
        result = _phase_result(scenario, phase, tensors)
    return replace(result, varies=True) if varies else result


def _compare_key(
    candidate: CellArtifact,
    baseline: CellArtifact,
    key: str,
    thresholds: Mapping[str, Thresholds],
    top_k: int = TOP_K,
) -> TensorComparison:
    a, b = candidate.tensors.get(key), baseline.tensors.get(key)
    if a is None or b is None:
        present = a or b
        assert present is not None
        side = "candidate" if a is None else "baseline"
        return missing_comparison(present.dtype, present.shape, f"not in the {side}")
    if _is_complex(a.dtype) != _is_complex(b.dtype):
        return replace(
            missing_comparison(a.dtype, a.shape, f"dtype {a.dtype} vs {b.dtype}"),
            verdict=DriftClass.DIVERGENT,
            baseline_shape=b.shape,
        )
    try:
        src_a, judged_a = _source(candidate, key, a.dtype)
        src_b, judged_b = _source(baseline, key, b.dtype)
        dtype_a, dtype_b = _judged_dtype(candidate, judged_a), _judged_dtype(baseline, judged_b)
        result = compare_tensors(
            src_a,
            src_b,
            dtype=dtype_a,
            baseline_dtype=dtype_b,
            thresholds=thresholds_for(_coarser(dtype_a, dtype_b), thresholds),
            top_k=top_k,
        )
    except _READ_ERRORS as exc:
        return unreadable_comparison(a.dtype, a.shape, exc)
    if judged_a != a.dtype:
        return replace(result, dtype=a.dtype, reason=f"{result.reason} (real and imaginary parts)")
    if dtype_a != a.dtype:
        return replace(result, dtype=_NARROWED, reason=f"{result.reason} ({_NARROWED_WHY})")
    return result


def _is_complex(dtype: str) -> bool:
    return dtype.startswith("complex")


def _source(cell: CellArtifact, key: str, dtype: str) -> tuple[ChunkSource, str]:
    """A tensor's reader and the dtype it is judged in: a complex tensor as
    its two float parts, so that neither part is dropped."""
    source = cell.source(key)
    if _is_complex(dtype):
        view = RealView(source)
        return view, str(view.dtype)
    return source, dtype


_NARROWED = "float32 (stored float64)"
_NARROWED_WHY = "float64 holding a float32 computation: judged as float32"


def _judged_dtype(cell: CellArtifact, dtype: str) -> str:
    """The precision a cell's tensor really has.

    The frameworks in a cell compute in float32 at most (the precision axis
    has no float64 policy), so a float64 tensor in an artifact is a float32
    result stored wider: a Keras history of Python floats, a NumPy metric of
    float32 predictions.  Judged in float64, one float32 ULP (2**29 float64
    ULP) would read as drift.  Only a cell whose applied precision is float64
    keeps float64 thresholds.
    """
    if dtype != "float64":
        return dtype
    applied = cell.settings.get("applied") if isinstance(cell.settings, Mapping) else None
    precision = applied.get("precision") if isinstance(applied, Mapping) else None
    return "float64" if precision == "float64" else "float32"


# What reading a tensor that passed validation can still raise (a file changed
# or truncated after the cell was loaded): the tensor fails, the report goes on.
_READ_ERRORS = (ArtifactError, OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def unreadable_comparison(dtype: str, shape: tuple[int, ...], exc: Exception) -> TensorComparison:
    message = exc.message if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
    return replace(missing_comparison(dtype, shape, _one_line(message)), verdict=DriftClass.FAILED)


_PRECISION = {"bfloat16": 0, "float16": 1, "float32": 2, "float64": 3}


def _coarser(a: str, b: str) -> str:
    if a in _PRECISION and b in _PRECISION:
        return min(a, b, key=_PRECISION.__getitem__)
    return a


def _phase_result(
    scenario: str, phase: str, tensors: tuple[tuple[str, TensorComparison], ...]
) -> PhaseResult:
    verdict = worst(c.verdict for _, c in tensors)
    reason = "all tensors bitwise equal"
    if verdict is not DriftClass.IDENTICAL:
        key, cmp = next((k, c) for k, c in tensors if c.verdict is verdict)
        reason = f"{key.rsplit('/', 1)[-1]}: {cmp.reason}"
    return PhaseResult(
        scenario=scenario,
        phase=phase,
        verdict=verdict,
        reason=reason,
        tensors=tensors,
        # any phase that saved per-layer outputs (forward, lstm_forward, ...)
        localisation=localize(tensors),
    )


def compare_with_oracle(
    cell: CellArtifact, *, thresholds: Mapping[str, Thresholds]
) -> tuple[PhaseResult, ...]:
    """Compare a cell's tensors with the float64 oracle tensors it carries."""
    by_phase: dict[tuple[str, str], list[tuple[str, TensorComparison]]] = {}
    for ref_key in cell.tensors:
        if not ref_key.startswith(ORACLE_PREFIX):
            continue
        key = ref_key[len(ORACLE_PREFIX) :]
        parts = key.split("/", 2)
        if len(parts) != 3:
            continue
        info = cell.tensors.get(key)
        column = (parts[0], parts[1])
        if _status_verdict(cell, parts[0], parts[1], "cell", info is not None) is not None:
            continue
        if info is None:
            ref = cell.tensors[ref_key]
            cmp = missing_comparison(ref.dtype, ref.shape, "the cell has no tensor for this oracle")
        else:
            try:
                source, judged = _source(cell, key, info.dtype)
                oracle, _ = _source(cell, ref_key, cell.tensors[ref_key].dtype)
                dtype = _judged_dtype(cell, judged)
                narrowed = dtype != info.dtype and judged == info.dtype
                cmp = compare_tensors(
                    source,
                    oracle,
                    dtype=dtype,
                    baseline_dtype="float64",
                    oracle=True,
                    thresholds=thresholds_for(dtype, thresholds),
                )
                if narrowed:
                    cmp = replace(cmp, dtype=_NARROWED, reason=f"{cmp.reason} ({_NARROWED_WHY})")
            except _READ_ERRORS as exc:
                cmp = unreadable_comparison(info.dtype, info.shape, exc)
        by_phase.setdefault(column, []).append((key, cmp))
    return tuple(
        _phase_result(s, p, tuple(sorted(by_phase[(s, p)])))
        for s, p in sorted(by_phase, key=phase_sort_key)
    )


def merge_repeats(runs: Sequence[tuple[PhaseResult, ...]]) -> tuple[PhaseResult, ...]:
    """Fold several repeat-vs-primary comparisons into the worst per phase."""
    merged: dict[tuple[str, str], PhaseResult] = {}
    for phases in runs:
        for result in phases:
            key = (result.scenario, result.phase)
            held = merged.get(key)
            if held is None or result.verdict.rank > held.verdict.rank:
                merged[key] = result
    return tuple(merged[k] for k in sorted(merged, key=phase_sort_key))


def columns_of(comparisons: Iterable[CellComparison]) -> list[tuple[str, str]]:
    seen = {(p.scenario, p.phase) for c in comparisons for p in c.phases}
    return sorted(seen, key=phase_sort_key)
