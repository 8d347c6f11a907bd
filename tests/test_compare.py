from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from matrix.analysis.compare import bfloat16_round, compare_tensors, ulp_distance
from matrix.analysis.drift import DEFAULT_THRESHOLDS, DriftClass
from matrix.results.tensors import ArraySource

F32 = DEFAULT_THRESHOLDS["float32"]


def data(n: int = 1000, dtype: type = np.float32) -> np.ndarray:
    return np.random.RandomState(0).uniform(0.5, 2.0, n).astype(dtype)


def test_identical_copy_is_identical() -> None:
    a = data()
    r = compare_tensors(a.copy(), a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.IDENTICAL
    assert r.max_abs == 0 and r.max_ulp == 0 and r.worst == ()


def test_one_ulp_is_rounding_with_one_ulp() -> None:
    a = data()
    b = a.copy()
    b[17] = np.nextafter(b[17], np.float32(np.inf))
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.ROUNDING
    assert r.max_ulp == 1
    assert r.max_abs == pytest.approx(float(b[17]) - float(a[17]))
    assert r.worst[0].index == (17,)
    assert r.outside_rounding == 0


def test_relative_1e3_is_drift_with_fraction() -> None:
    a = data()
    b = a.copy()
    planted = np.arange(0, 1000, 100)  # 10 of 1000 elements
    b[planted] *= np.float32(1 + 1e-3)
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.DRIFT
    assert r.max_rel == pytest.approx(1e-3, rel=1e-3)
    assert r.fraction_outside == pytest.approx(10 / 1000)
    assert {w.index[0] for w in r.worst} <= set(planted.tolist())


def test_nan_on_one_side_is_divergent_and_worst() -> None:
    a = data()
    b = a.copy()
    b[3] = np.nan
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.DIVERGENT
    assert r.nonfinite_mismatch == 1
    assert r.worst[0].index == (3,)


def test_nan_in_same_place_is_identical_whatever_payload() -> None:
    a = data()
    a[5] = np.nan
    b = a.copy()
    b.view(np.uint32)[5] = 0x7FC00001  # another quiet NaN payload
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.IDENTICAL


@pytest.mark.parametrize(
    ("x", "y", "verdict"),
    [
        (np.inf, np.inf, DriftClass.IDENTICAL),
        (np.inf, -np.inf, DriftClass.DIVERGENT),
        (np.inf, 1.0, DriftClass.DIVERGENT),
    ],
)
def test_infinities(x: float, y: float, verdict: DriftClass) -> None:
    a = data()
    b = a.copy()
    a[0], b[0] = y, x
    assert compare_tensors(b, a, dtype="float32", thresholds=F32).verdict is verdict


def test_signed_zero_is_rounding_with_zero_error() -> None:
    a = np.zeros(8, np.float32)
    b = a.copy()
    b[2] = -0.0
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.ROUNDING
    assert r.max_abs == 0 and r.max_ulp == 0


def test_sign_flip_is_divergent() -> None:
    a = data()
    b = a.copy()
    b[9] = -b[9]
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.DIVERGENT
    assert r.max_rel == pytest.approx(2.0)


def test_shape_change_is_divergent() -> None:
    a = data(12).reshape(3, 4)
    b = data(12).reshape(4, 3)
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.DIVERGENT
    assert "shape" in r.reason


def test_near_zero_uses_atol_not_ulp() -> None:
    # Billions of ULP apart, yet far below atol: numerically the same.
    a = np.array([1e-30, 1.0, 1.5], np.float32)
    b = np.array([3e-30, 1.0, 1.5], np.float32)
    b[2] = np.nextafter(b[2], np.float32(9))  # and one real 1-ULP change
    assert ulp_distance(b[:1], a[:1], "float32")[0] > 1e6
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.verdict is DriftClass.ROUNDING
    assert r.max_ulp == 1  # the near-zero pair is left out of the ULP count
    # a real change from zero still counts: |difference| above atol
    c = np.array([0.0, 1.0], np.float32)
    d = np.array([0.5, 1.0], np.float32)
    assert compare_tensors(d, c, dtype="float32", thresholds=F32).max_ulp > 1e9


def test_worst_index_in_multidimensional_tensor() -> None:
    a = data(60).reshape(3, 4, 5)
    b = a.copy()
    b[2, 1, 3] *= np.float32(1.01)
    b[0, 0, 0] *= np.float32(1.001)
    r = compare_tensors(b, a, dtype="float32", thresholds=F32)
    assert r.worst[0].index == (2, 1, 3)
    assert r.worst[1].index == (0, 0, 0)


def test_bfloat16_ulp_counted_in_bfloat16() -> None:
    a = bfloat16_round(data())
    b = a.copy()
    # one bfloat16 ULP up: +1 in the top 16 bits
    b.view(np.uint32)[4] += np.uint32(1 << 16)
    th = DEFAULT_THRESHOLDS["bfloat16"]
    r = compare_tensors(b, a, dtype="bfloat16", thresholds=th)
    assert r.max_ulp == 1
    assert r.verdict is DriftClass.ROUNDING


def test_float16_ulp() -> None:
    a = data(100, np.float16)
    b = a.copy()
    b.view(np.int16)[7] += 3
    r = compare_tensors(b, a, dtype="float16", thresholds=DEFAULT_THRESHOLDS["float16"])
    assert r.max_ulp == 3


def test_oracle_correctly_rounded_is_identical_and_one_ulp_off_is_rounding() -> None:
    oracle = np.random.RandomState(1).standard_normal(500)
    cell = oracle.astype(np.float32)
    r = compare_tensors(
        cell, oracle, dtype="float32", baseline_dtype="float64", oracle=True, thresholds=F32
    )
    assert r.verdict is DriftClass.IDENTICAL
    cell[10] = np.nextafter(cell[10], np.float32(np.inf))
    r = compare_tensors(
        cell, oracle, dtype="float32", baseline_dtype="float64", oracle=True, thresholds=F32
    )
    assert r.verdict is DriftClass.ROUNDING
    assert r.max_ulp == 1


def test_dtype_change_is_never_identical() -> None:
    a = bfloat16_round(data())
    r = compare_tensors(
        a,
        a.copy(),
        dtype="bfloat16",
        baseline_dtype="float32",
        thresholds=DEFAULT_THRESHOLDS["bfloat16"],
    )
    assert r.verdict is DriftClass.ROUNDING


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_ulp_distance_matches_numpy_testing_for_same_sign(dtype: type) -> None:
    rng = np.random.RandomState(2)
    a = (rng.standard_normal(2000) * 10).astype(dtype)
    b = (a + rng.standard_normal(2000).astype(dtype) * np.finfo(dtype).eps * 4 * a).astype(dtype)
    # numpy's own integer-representation count (what assert_array_max_ulp uses)
    from numpy.testing._private.utils import nulp_diff

    expected = nulp_diff(a, b).astype(np.float64).reshape(-1)
    assert np.array_equal(ulp_distance(a, b, np.dtype(dtype).name), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_ulp_distance_across_zero_is_sum_of_distances_to_zero(dtype: type) -> None:
    x = np.array([1.5, 3e-3, 7.0], dtype)
    ints = x.view({2: np.int16, 4: np.int32, 8: np.int64}[x.itemsize]).astype(np.float64)
    # ulp(-x, x) = ulp(-x, 0) + ulp(0, x) = 2 * (bit pattern of |x|)
    assert np.array_equal(ulp_distance(-x, x, np.dtype(dtype).name), 2 * ints)
    assert (
        ulp_distance(np.array([-0.0], dtype), np.array([0.0], dtype), np.dtype(dtype).name)[0] == 0
    )


def test_chunking_does_not_change_the_result() -> None:
    rng = np.random.RandomState(3)
    a = rng.standard_normal(10_000).astype(np.float32)
    b = a * np.float32(1 + 1e-4) * (rng.rand(10_000) < 0.3).astype(np.float32) + a * (
        rng.rand(10_000) >= 0.3
    )
    b = b.astype(np.float32)
    b[77] = np.nan
    whole = compare_tensors(b, a, dtype="float32", thresholds=F32)
    chunked = compare_tensors(
        ArraySource(b), ArraySource(a), dtype="float32", thresholds=F32, chunk_elements=333
    )
    assert repr(whole) == repr(chunked)  # repr: NaN fields compare unequal with ==


def test_extra_memory_does_not_grow_with_tensor_size() -> None:
    def peak(n: int) -> int:
        a = np.random.RandomState(0).standard_normal(n).astype(np.float32)
        b = (a.view(np.int32) + 1).view(np.float32)
        tracemalloc.start()
        compare_tensors(b, a, dtype="float32", thresholds=F32)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(1 << 20), peak(1 << 23)  # 4 MiB and 32 MiB per side
    assert large < 8 << 20  # a few block-sized buffers, far below one input
    assert large < 2 * small + (1 << 20)


def test_integer_tensors_compare_exactly() -> None:
    a = np.arange(10, dtype=np.int64)
    b = a.copy()
    assert compare_tensors(b, a, dtype="int64", thresholds=F32).verdict is DriftClass.IDENTICAL
    b[3] += 1
    assert compare_tensors(b, a, dtype="int64", thresholds=F32).verdict is not DriftClass.IDENTICAL
