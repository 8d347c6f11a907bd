"""Compare two tensors and give a drift class with the numbers behind it.

Both tensors are read in lockstep chunks of a fixed number of elements, so
the extra memory is a handful of chunk-sized buffers whatever the tensor's
size, and the numbers (max absolute, max relative, max ULP, counts outside
each tolerance, the worst elements) are folded chunk by chunk.

Semantics, decided once here:

* **identical** means the same bits, except that NaN in the same place on
  both sides counts as equal whatever its payload (payloads carry no meaning
  across libraries).  The same infinity on both sides is equal.
* **+0 vs -0** is not identical (the bits differ and ``1/x`` tells them
  apart) but its error is 0, so it is at worst ``rounding``.  Its ULP
  distance is 0, as in :func:`numpy.testing.assert_array_max_ulp`.
* **NaN or Inf on one side only**, or opposite infinities, make the tensor
  divergent whatever the thresholds; those elements are counted in
  ``nonfinite_mismatch`` and lead the worst elements.
* **ULP** distance is measured in the candidate's true dtype: float16 via
  its 16-bit pattern, bfloat16 (stored widened to float32) as the top 16 bits
  of the float32 pattern, float32, float64.  Elements of opposite sign are
  ``ulp(a, 0) + ulp(0, b)`` apart.  ``max_ulp`` leaves out elements that are
  numerically zero (``|baseline|`` and ``|difference|`` both below the
  rounding ``atol``): near zero the spacing shrinks so fast that 1e-30 vs
  3e-30 is a billion ULP, which says nothing (ULP alone misleads near zero).
* **relative** error is ``|candidate - baseline| / |baseline|``: the baseline
  is the reference.  A non-zero difference from an exact zero is infinitely
  relative, which is why verdicts also use ``atol`` (see :mod:`matrix.analysis.drift`).
* Against a float64 **oracle**, the oracle is first rounded to the
  candidate's dtype: identical then means "the correctly rounded answer"; the
  absolute and relative errors are taken against the unrounded oracle.
* Two cells whose tensor **dtypes differ** (a float32 tensor vs its
  bfloat16 twin under mixed precision) are judged in the coarser dtype, and
  never better than rounding.
* **allclose** numbers: an ``rtol``/``atol`` pair with which
  ``numpy.testing.assert_allclose(candidate, baseline, rtol, atol)`` passes,
  split where the dtype's rounding tolerance turns from absolute to
  relative, ``|b| = rounding atol / rounding rtol`` ("small": 0.1 for
  float32): ``allclose_atol`` is the largest ``|a - b|`` where ``|b|`` is at
  most that, ``allclose_rtol`` the largest ``|a - b| / |b|`` above it (0
  where there is no such element).  Each element then passes
  ``|a - b| <= atol + rtol * |b|``.  NaN or Inf on one side only leaves no
  finite pair (both are infinite).
* A **complex** tensor is judged on its real and imaginary parts together
  (as a float tensor with a last axis of 2: index ``(..., 0)`` is the real
  part, ``(..., 1)`` the imaginary one), whatever dtype label it came with;
  a complex tensor against a real one is divergent.  Casting to float would
  keep the real part alone and call a changed imaginary part identical.
* Tensors that hold no numbers (strings, records, objects, dates) are
  refused with ValueError: there is no error to measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from matrix.analysis.drift import DriftClass, Thresholds
from matrix.results.tensors import ArraySource, ChunkSource, RealView

#: Arrays of any dtype: numpy's generic typing cannot follow the views
#: (float <-> int bit patterns) this module relies on.
Arr = npt.NDArray[Any]

__all__ = [
    "TensorComparison",
    "WorstElement",
    "allclose_split",
    "bfloat16_round",
    "compare_tensors",
    "missing_comparison",
    "ulp_distance",
]

#: Elements read per chunk from each source: 4 MiB of float32 per read.
CHUNK_ELEMENTS = 1 << 20

#: Elements per compute block: 512 KiB of float32.  Each block goes through
#: about fifteen vectorised passes, so its scratch buffers must stay in the
#: per-core cache; larger blocks measured 2x slower, smaller ones pay Python
#: overhead per call.
BLOCK_ELEMENTS = 1 << 17

#: How many of the worst elements a comparison keeps.
TOP_K = 5

# Precision order, coarsest first: a mixed pair is judged in the coarser one.
_PRECISION = {"bfloat16": 0, "float16": 1, "float32": 2, "float64": 3}
# How each true dtype is stored in tensors.npz.
_STORAGE: dict[str, np.dtype[Any]] = {
    "bfloat16": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
_INT_VIEW = {2: np.int16, 4: np.int32, 8: np.int64}
# A max ULP above this is checked for near-zero noise (see _fold_ulp).
_NOISE_ULP = 1024
# 2**(mantissa bits) per storage width: the smallest bit-pattern difference a
# pair of finite floats of opposite signs can have (see _fold_ulp).
_SIGN_CROSSING = {2: 1 << 10, 4: 1 << 23, 8: 1 << 52}


@dataclass(frozen=True, kw_only=True)
class WorstElement:
    """One of the elements furthest outside the rounding tolerance."""

    index: tuple[int, ...]
    candidate: float
    baseline: float
    abs_error: float
    ulp: float


@dataclass(frozen=True, kw_only=True)
class TensorComparison:
    """The verdict on one tensor and the numbers that justify it."""

    verdict: DriftClass
    reason: str
    dtype: str
    shape: tuple[int, ...]
    baseline_shape: tuple[int, ...]
    size: int
    max_abs: float
    max_rel: float
    max_ulp: float
    outside_rounding: int
    outside_divergent: int
    nonfinite_mismatch: int
    worst: tuple[WorstElement, ...]
    # the tightest numpy.testing.assert_allclose pair (see the module docstring)
    allclose_rtol: float = math.nan
    allclose_atol: float = math.nan

    @property
    def fraction_outside(self) -> float:
        """Fraction of elements outside the rounding tolerance."""
        if self.size == 0:
            return 0.0
        return (self.outside_rounding + self.nonfinite_mismatch) / self.size


def missing_comparison(dtype: str, shape: tuple[int, ...], reason: str) -> TensorComparison:
    """The verdict for a tensor one side does not have."""
    return TensorComparison(
        verdict=DriftClass.MISSING,
        reason=reason,
        dtype=dtype,
        shape=shape,
        baseline_shape=shape,
        size=0,
        max_abs=math.nan,
        max_rel=math.nan,
        max_ulp=math.nan,
        outside_rounding=0,
        outside_divergent=0,
        nonfinite_mismatch=0,
        worst=(),
    )


# --------------------------------------------------------------------------
# ULP arithmetic on bit patterns


def bfloat16_round(values: Arr) -> Arr:
    """Round to bfloat16 (nearest, ties to even), returned widened to float32.

    float64 input goes through float32 first; the double rounding this can
    cause is at most one bfloat16 ULP on exact ties, which no threshold sees.
    """
    f32 = np.asarray(values, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint32, copy=True)
    nan = np.isnan(f32)
    bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    bits &= np.uint32(0xFFFF0000)
    out = bits.view(np.float32)
    if nan.any():
        out[nan] = np.nan
    return out


def _ordered(bits: Arr) -> Arr:
    """Map sign-magnitude float bit patterns to integers that sort like the floats.

    -0 and +0 both map to 0, so their distance is 0 as in numpy.testing.
    """
    wide = bits.astype(np.int64)
    if bits.dtype.itemsize == 8:
        # int64 min - x cannot overflow for x < 0.
        return np.where(wide < 0, np.iinfo(np.int64).min - wide, wide)
    low = np.iinfo(bits.dtype).min
    return np.where(wide < 0, low - wide, wide)


def _storage_ulp(a: Arr, b: Arr) -> Arr:
    """Element-wise ULP distance of two arrays of one float storage dtype (exact path)."""
    view = _INT_VIEW[a.dtype.itemsize]
    oa = _ordered(a.view(view))
    ob = _ordered(b.view(view))
    if a.dtype.itemsize < 8:
        exact: Arr = np.abs(oa - ob).astype(np.float64)  # int64 holds any 32-bit distance
        return exact
    # float64: a same-sign distance fits int64 exactly; across zero it can
    # exceed int64, and float64 is exact enough for such distances.
    with np.errstate(over="ignore"):
        same = np.abs(oa - ob).astype(np.float64)
    across = np.abs(oa.astype(np.float64)) + np.abs(ob.astype(np.float64))
    return np.where((oa < 0) == (ob < 0), same, across)


def ulp_distance(candidate: npt.ArrayLike, baseline: npt.ArrayLike, dtype: str) -> Arr:
    """ULP distance between two arrays measured in ``dtype``.

    Both sides are first rounded to ``dtype`` (bfloat16 as the top 16 bits of
    float32).  NaN positions give NaN.
    """
    a = _round_to(np.asarray(candidate), dtype)
    b = _round_to(np.asarray(baseline), dtype)
    dist = _storage_ulp(a.reshape(-1), b.reshape(-1))
    if dtype == "bfloat16":
        dist = dist / 65536.0
    dist[np.isnan(a.reshape(-1)) | np.isnan(b.reshape(-1))] = np.nan
    return dist.reshape(np.broadcast_shapes(a.shape, b.shape))


def _round_to(values: Arr, dtype: str) -> Arr:
    if dtype == "bfloat16":
        if values.dtype == np.float32 and _is_bf16_exact(values):
            return values
        return bfloat16_round(values)
    storage = _STORAGE[dtype]
    if values.dtype == storage:
        return values
    return values.astype(storage)


def _is_bf16_exact(values: Arr) -> bool:
    return not bool(np.any(values.view(np.uint32) & np.uint32(0xFFFF)))


# --------------------------------------------------------------------------
# The chunked comparison


class _Accumulator:
    """Running statistics of one comparison, folded chunk by chunk."""

    def __init__(self, top_k: int) -> None:
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.max_ulp = 0.0
        self.allclose_rtol = 0.0
        self.allclose_atol = 0.0
        self.outside_rounding = 0
        self.outside_divergent = 0
        self.nonfinite_mismatch = 0
        self.bits_differ = False  # a finite element whose bits differ (incl. +-0)
        self.top_k = top_k
        # (score, flat index, candidate, baseline); score = |error| / rounding tolerance
        self.worst: list[tuple[float, int, float, float]] = []

    def threshold(self) -> float:
        """Score an element must beat to enter the worst list (0: equal never does)."""
        if self.top_k == 0:  # no list kept: nothing enters
            return math.inf
        if len(self.worst) < self.top_k:
            return 0.0
        return self.worst[-1][0]

    def offer(
        self,
        scores: Arr,
        positions: Arr,
        a: Arr,
        b: Arr,
    ) -> None:
        """Consider elements (already above the threshold) for the worst list."""
        if self.top_k == 0:
            return
        if positions.size > 4 * self.top_k:
            kth = np.partition(scores, -self.top_k)[-self.top_k]
            keep = scores >= kth
            scores, positions, a, b = scores[keep], positions[keep], a[keep], b[keep]
        # Ties go to the lowest index, so the list does not depend on chunking.
        order = np.lexsort((positions, -scores))[: self.top_k]
        merged = self.worst + [
            (float(scores[i]), int(positions[i]), float(a[i]), float(b[i])) for i in order
        ]
        merged.sort(key=lambda item: (-item[0], item[1]))
        self.worst = merged[: self.top_k]


class _PairTreatment:
    """How to treat one pair of dtypes: storage, working precision, rounding."""

    def __init__(
        self,
        cand_dtype: str,
        base_dtype: str,
        oracle: bool,
        storage_a: np.dtype[Any],
        storage_b: np.dtype[Any],
    ) -> None:
        self.is_float = (
            cand_dtype in _PRECISION
            and base_dtype in _PRECISION
            and storage_a.kind == "f"
            and storage_b.kind == "f"
        )
        coarse = min(cand_dtype, base_dtype, key=_PRECISION.__getitem__) if self.is_float else ""
        self.ulp_dtype = coarse
        self.oracle = oracle
        self.dtype_change = (not oracle) and cand_dtype != base_dtype
        # Work in float32 only when both sides are stored as float32 (the
        # common, large case); float16 is upcast so that differences cannot
        # overflow, and anything mixed goes to float64.
        f32 = np.dtype(np.float32)
        self.work = f32 if storage_a == f32 and storage_b == f32 else np.dtype(np.float64)
        if storage_a == np.float16 and storage_b == np.float16:
            self.work = f32
        self.round_a = self.is_float and not (
            storage_a == _STORAGE[coarse] and cand_dtype == coarse
        )
        self.round_b = self.is_float and not (
            storage_b == _STORAGE[coarse] and base_dtype == coarse
        )
        self.ulp_scale = 1.0 / 65536.0 if coarse == "bfloat16" else 1.0
        self.same_storage = storage_a == storage_b and not oracle and not self.dtype_change


class _Workspace:
    """Chunk-sized scratch buffers, allocated once per comparison.

    Reusing them keeps the extra memory constant and avoids the page faults
    of fresh multi-MiB allocations on every chunk.
    """

    def __init__(self, n: int, work: np.dtype[Any]) -> None:
        self.diff = np.empty(n, work)
        self.mag = np.empty(n, work)
        self.tmp = np.empty(n, work)
        self.flags = np.empty(n, np.bool_)
        self.wa = np.empty(n, work)
        self.wb = np.empty(n, work)
        self.ints: dict[int, Arr] = {}

    def int_buffer(self, itemsize: int, n: int) -> Arr:
        buf = self.ints.get(itemsize)
        if buf is None or buf.size < n:
            buf = self.ints[itemsize] = np.empty(n, _INT_VIEW[itemsize])
        return buf[:n]


def compare_tensors(
    candidate: ChunkSource | npt.ArrayLike,
    baseline: ChunkSource | npt.ArrayLike,
    *,
    dtype: str,
    thresholds: Thresholds,
    baseline_dtype: str | None = None,
    oracle: bool = False,
    top_k: int = TOP_K,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> TensorComparison:
    """Compare ``candidate`` with ``baseline`` and classify the difference.

    ``dtype`` is the candidate's true dtype (``bfloat16`` for a tensor stored
    widened to float32), ``baseline_dtype`` the baseline's (default: the
    same).  ``oracle=True`` marks the baseline as a float64 reference to be
    rounded to ``dtype`` before the bitwise and ULP checks.  ``thresholds``
    are those of the dtype the pair is judged in (see :mod:`matrix.analysis.drift`).

    One thread: a second one measured slower on the shared 2-core machine
    this was tuned on (the loops are memory-bound).
    """
    src_a: ChunkSource = candidate if _is_source(candidate) else ArraySource(candidate)  # type: ignore[assignment,arg-type]
    src_b: ChunkSource = baseline if _is_source(baseline) else ArraySource(baseline)  # type: ignore[assignment,arg-type]
    base_dtype = baseline_dtype or dtype
    for src in (src_a, src_b):
        if src.dtype.kind not in _NUMERIC_KINDS:
            raise ValueError(f"cannot compare a tensor of dtype {src.dtype.str!r}: not numbers")
    if src_a.dtype.kind == "c" or src_b.dtype.kind == "c":
        return _compare_complex(
            src_a,
            src_b,
            dtype=dtype,
            base_dtype=base_dtype,
            thresholds=thresholds,
            oracle=oracle,
            top_k=top_k,
            chunk_elements=chunk_elements,
        )
    shape_a, shape_b = tuple(src_a.shape), tuple(src_b.shape)
    size = int(np.prod(shape_a, dtype=np.int64))
    plan = _PairTreatment(dtype, base_dtype, oracle, src_a.dtype, src_b.dtype)

    def result(verdict: DriftClass, reason: str, acc: _Accumulator | None) -> TensorComparison:
        return TensorComparison(
            verdict=verdict,
            reason=reason,
            dtype=dtype,
            shape=shape_a,
            baseline_shape=shape_b,
            size=size,
            max_abs=acc.max_abs if acc else math.nan,
            max_rel=acc.max_rel if acc else math.nan,
            max_ulp=acc.max_ulp if acc else math.nan,
            outside_rounding=acc.outside_rounding if acc else 0,
            outside_divergent=acc.outside_divergent if acc else 0,
            nonfinite_mismatch=acc.nonfinite_mismatch if acc else 0,
            worst=_worst_elements(acc, shape_a, plan) if acc else (),
            allclose_rtol=_allclose(acc, "allclose_rtol"),
            allclose_atol=_allclose(acc, "allclose_atol"),
        )

    if shape_a != shape_b:
        return result(DriftClass.DIVERGENT, f"shape {list(shape_a)} vs {list(shape_b)}", None)
    if _small_and_bitwise_equal(src_a, src_b, plan):
        return result(DriftClass.IDENTICAL, "bitwise equal", _Accumulator(top_k))

    acc = _Accumulator(top_k)
    n = max(1, min(chunk_elements, size))
    block = max(1, min(BLOCK_ELEMENTS, n))
    ws = _Workspace(block, plan.work)
    bitwise = True
    offset = 0
    with np.errstate(all="ignore"):
        for ca, cb in zip(src_a.chunks(n), src_b.chunks(n), strict=True):
            for start in range(0, ca.size, block):
                ba, bb = ca[start : start + block], cb[start : start + block]
                if not _chunk_bitwise_equal(ba, bb, plan, ws):
                    bitwise = False
                    _fold_chunk(acc, ws, ba, bb, plan, thresholds, offset=offset)
                offset += ba.size

    if acc.nonfinite_mismatch or acc.outside_divergent:
        parts = []
        if acc.nonfinite_mismatch:
            parts.append(f"{acc.nonfinite_mismatch} NaN/Inf on one side only")
        if acc.outside_divergent:
            parts.append(f"{acc.outside_divergent} beyond the divergence threshold")
        return result(DriftClass.DIVERGENT, "; ".join(parts), acc)
    ulp_allowance = thresholds.rounding_max_ulp > 0 and acc.max_ulp <= thresholds.rounding_max_ulp
    if acc.outside_rounding and not ulp_allowance:
        return result(
            DriftClass.DRIFT, f"{acc.outside_rounding} of {size} outside rounding tolerance", acc
        )
    if plan.dtype_change:
        return result(DriftClass.ROUNDING, f"dtype {dtype} vs {base_dtype}", acc)
    if bitwise or not acc.bits_differ:
        return result(DriftClass.IDENTICAL, "bitwise equal", acc)
    if acc.max_abs == 0.0:
        return result(DriftClass.ROUNDING, "equal up to the sign of zero", acc)
    return result(DriftClass.ROUNDING, "within rounding tolerance", acc)


def allclose_split(th: Thresholds) -> float:
    """The |baseline| at and below which the allclose numbers use absolute error."""
    if th.rounding_rtol > 0:
        return th.rounding_atol / th.rounding_rtol
    return th.rounding_atol


def _allclose(acc: _Accumulator | None, attr: str) -> float:
    """No tolerance passes NaN/Inf on one side: infinite; none measured: NaN."""
    if acc is None:
        return math.nan
    if acc.nonfinite_mismatch:
        return math.inf
    value: float = getattr(acc, attr)
    return value


#: bool, signed and unsigned integers, floats, complex numbers.
_NUMERIC_KINDS = "biufc"


def _compare_complex(
    src_a: ChunkSource,
    src_b: ChunkSource,
    *,
    dtype: str,
    base_dtype: str,
    thresholds: Thresholds,
    oracle: bool,
    top_k: int,
    chunk_elements: int,
) -> TensorComparison:
    """Both parts of complex tensors, judged as floats (see the module's notes)."""
    if src_a.dtype.kind != src_b.dtype.kind:
        shape_a, shape_b = tuple(src_a.shape), tuple(src_b.shape)
        return replace(
            missing_comparison(dtype, shape_a, ""),
            verdict=DriftClass.DIVERGENT,
            reason=f"complex vs real: {src_a.dtype.name} vs {src_b.dtype.name}",
            baseline_shape=shape_b,
            size=int(np.prod(shape_a, dtype=np.int64)),
        )
    view_a, view_b = RealView(src_a), RealView(src_b)
    result = compare_tensors(
        view_a,
        view_b,
        dtype=_part_dtype(dtype, view_a),
        baseline_dtype=_part_dtype(base_dtype, view_b),
        thresholds=thresholds,
        oracle=oracle,
        top_k=top_k,
        chunk_elements=chunk_elements,
    )
    return replace(result, dtype=dtype, reason=f"{result.reason} (real and imaginary parts)")


def _part_dtype(label: str, view: RealView) -> str:
    """The float dtype each part of a complex tensor is judged in."""
    return {"complex64": "float32", "complex128": "float64"}.get(label, view.dtype.name)


def _small_and_bitwise_equal(src_a: ChunkSource, src_b: ChunkSource, plan: _PairTreatment) -> bool:
    """The common case of a report, in-memory tensors that did not change, without set-up."""
    if not (
        plan.same_storage and isinstance(src_a, ArraySource) and isinstance(src_b, ArraySource)
    ):
        return False
    a, b = src_a.array, src_b.array
    if a.size > BLOCK_ELEMENTS or a.dtype.kind != "f":
        return False
    view = _INT_VIEW[a.dtype.itemsize]
    return bool(np.array_equal(a.view(view), b.view(view)))


def _is_source(value: object) -> bool:
    return hasattr(value, "chunks") and hasattr(value, "shape") and hasattr(value, "dtype")


def _chunk_bitwise_equal(ca: Arr, cb: Arr, plan: _PairTreatment, ws: _Workspace) -> bool:
    if not plan.same_storage:
        return False
    view = _INT_VIEW.get(ca.dtype.itemsize)
    if view is None or ca.dtype.kind != "f":
        return bool(np.array_equal(ca, cb))
    flags = ws.flags[: ca.size]
    np.equal(ca.view(view), cb.view(view), out=flags)
    return bool(flags.all())


def _fold_chunk(
    acc: _Accumulator,
    ws: _Workspace,
    ca: Arr,
    cb: Arr,
    plan: _PairTreatment,
    th: Thresholds,
    *,
    offset: int,
) -> None:
    """Fold one chunk that is not bitwise equal into ``acc``."""
    n = ca.size
    a_w = ca if ca.dtype == plan.work else _cast_into(ws.wa[:n], ca)
    b_w = cb if cb.dtype == plan.work else _cast_into(ws.wb[:n], cb)
    diff = np.subtract(a_w, b_w, out=ws.diff[:n])
    np.abs(diff, out=diff)
    peak = float(diff.max())
    if not math.isfinite(peak):
        _fold_nonfinite(acc, a_w, b_w, ca, cb, plan, th, offset=offset)
        return
    acc.max_abs = max(acc.max_abs, peak)
    _fold_finite(acc, ws, diff, a_w, b_w, ca, cb, plan, th, positions=None, offset=offset)


def _cast_into(buf: Arr, values: Arr) -> Arr:
    np.copyto(buf, values, casting="unsafe")
    return buf


def _fold_nonfinite(
    acc: _Accumulator,
    a_w: Arr,
    b_w: Arr,
    ca: Arr,
    cb: Arr,
    plan: _PairTreatment,
    th: Thresholds,
    *,
    offset: int,
) -> None:
    """The rare chunk with NaN or Inf: split it into finite pairs and the rest."""
    fin_a, fin_b = np.isfinite(a_w), np.isfinite(b_w)
    both = fin_a & fin_b
    nonfinite_equal = ~fin_a & ~fin_b & ((np.isnan(a_w) & np.isnan(b_w)) | (a_w == b_w))
    mismatch = ~both & ~nonfinite_equal
    count = int(np.count_nonzero(mismatch))
    if count:
        acc.nonfinite_mismatch += count
        pos = np.flatnonzero(mismatch)
        acc.offer(np.full(pos.size, math.inf), pos + offset, a_w[pos], b_w[pos])
    if both.any():
        pos = np.flatnonzero(both)
        fa, fb = a_w[pos], b_w[pos]
        diff = np.abs(fa - fb)
        sub = _Workspace(pos.size, plan.work)
        _fold_finite(
            acc, sub, diff, fa, fb, ca[pos], cb[pos], plan, th, positions=pos, offset=offset
        )


def _fold_finite(
    acc: _Accumulator,
    ws: _Workspace,
    diff: Arr,
    a_w: Arr,
    b_w: Arr,
    ca: Arr,
    cb: Arr,
    plan: _PairTreatment,
    th: Thresholds,
    *,
    positions: Arr | None,
    offset: int,
) -> None:
    """Statistics of finite pairs; ``diff`` holds |a - b|."""
    n = diff.size
    if n == 0:
        return
    if positions is not None:  # finite pairs picked out of a NaN/Inf block: peak not yet folded
        acc.max_abs = max(acc.max_abs, float(diff.max()))
    mag = np.abs(b_w, out=ws.mag[:n])
    tmp = ws.tmp[:n]
    # fmax skips the NaN of 0/0 (equal zeros); a non-zero difference from an
    # exact zero is an honest infinity.
    np.divide(diff, mag, out=tmp)
    acc.max_rel = max(acc.max_rel, float(np.fmax.reduce(tmp)))
    # The assert_allclose split: absolute error where the rounding tolerance
    # is mostly absolute (near zero relative error says nothing: any change
    # of an exact zero is infinitely relative), relative error above.
    tiny = np.less_equal(mag, allclose_split(th), out=ws.flags[:n])
    acc.allclose_atol = max(acc.allclose_atol, float(np.max(diff, where=tiny, initial=0.0)))
    np.logical_not(tiny, out=tiny)
    acc.allclose_rtol = max(acc.allclose_rtol, float(np.fmax.reduce(tmp, where=tiny, initial=0.0)))
    # score = |error| / (atol + rtol*|b|): > 1 means outside rounding.  A zero
    # tolerance (integers, exact zeros) makes 0/0 NaN, never chosen, and any
    # real difference infinite.
    np.multiply(mag, th.rounding_rtol, out=tmp)
    np.add(tmp, th.rounding_atol, out=tmp)
    score = np.divide(diff, tmp, out=tmp)
    peak = float(np.fmax.reduce(score))
    if peak > 1.0:
        flags = np.greater(score, 1.0, out=ws.flags[:n])
        acc.outside_rounding += int(np.count_nonzero(flags))
        np.multiply(mag, th.divergent_rtol, out=mag)
        np.add(mag, th.divergent_atol, out=mag)
        acc.outside_divergent += int(np.count_nonzero(np.greater(diff, mag, out=flags)))
    if peak > acc.threshold():
        chosen = np.flatnonzero(score > acc.threshold())
        pos = chosen if positions is None else positions[chosen]
        acc.offer(score[chosen], pos + offset, a_w[chosen], b_w[chosen])
    if plan.is_float:
        _fold_ulp(acc, ws, ca, cb, plan, diff, b_w, th.rounding_atol)
    else:
        acc.max_ulp = acc.max_abs
        acc.bits_differ = acc.bits_differ or acc.max_abs > 0


def _fold_ulp(
    acc: _Accumulator,
    ws: _Workspace,
    ca: Arr,
    cb: Arr,
    plan: _PairTreatment,
    diff: Arr,
    b_w: Arr,
    atol: float,
) -> None:
    a = _round_to(ca, plan.ulp_dtype) if plan.round_a else ca
    b = _round_to(cb, plan.ulp_dtype) if plan.round_b else cb
    view = _INT_VIEW[a.dtype.itemsize]
    ia, ib = a.view(view), b.view(view)
    scratch = ws.int_buffer(a.dtype.itemsize, a.size)
    # Fast path: for same-sign floats the difference of the bit patterns is
    # the ULP distance.  For a finite pair of opposite signs (or +0/-0) the
    # (wrapping) integer difference is at least 2**mantissa_bits in size, so
    # a result below that proves no sign crossed and the distance is exact.
    delta = np.subtract(ia, ib, out=scratch)
    hi, lo = int(delta.max()), int(delta.min())
    if max(hi, -lo) < _SIGN_CROSSING[a.dtype.itemsize]:
        chunk_ulp = float(max(hi, -lo))
        bits_differ = hi != 0 or lo != 0
    else:
        dist = _storage_ulp(a, b)
        chunk_ulp = float(dist.max())
        bits_differ = bool(np.any(ia != ib))
    if chunk_ulp * plan.ulp_scale > _NOISE_ULP and atol > 0:
        # Near zero the ULP spacing shrinks to nothing: 1e-30 vs 3e-30 is a
        # billion ULP.  Count only elements that are not numerically zero
        # (|baseline| or |difference| above atol); this costs a few passes,
        # and only on blocks whose count is large enough to be such noise.
        keep = (np.abs(b_w) >= atol) | (diff > atol)
        chunk_ulp = float(_storage_ulp(a[keep], b[keep]).max()) if keep.any() else 0.0
    acc.max_ulp = max(acc.max_ulp, chunk_ulp * plan.ulp_scale)
    acc.bits_differ = acc.bits_differ or bits_differ


def _worst_elements(
    acc: _Accumulator, shape: tuple[int, ...], plan: _PairTreatment
) -> tuple[WorstElement, ...]:
    if not acc.worst:
        return ()
    out = []
    if plan.is_float:
        # one vectorised call for all of them; NaN/Inf pairs give NaN
        pairs = np.array([[a, b] for _s, _f, a, b in acc.worst], dtype=np.float64)
        with np.errstate(all="ignore"):
            ulps = ulp_distance(pairs[:, 0], pairs[:, 1], plan.ulp_dtype)
        finite: Arr = np.asarray(np.isfinite(pairs).all(axis=1))
    for n, (_score, flat, a, b) in enumerate(acc.worst):
        index = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
        # integers: the distance is the difference itself
        ulp = (float(ulps[n]) if finite[n] else math.nan) if plan.is_float else abs(a - b)
        with np.errstate(all="ignore"):
            err = abs(a - b) if not (math.isnan(a) and math.isnan(b)) else 0.0
        out.append(WorstElement(index=index, candidate=a, baseline=b, abs_error=err, ulp=ulp))
    return tuple(out)
