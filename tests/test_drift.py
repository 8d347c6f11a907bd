from __future__ import annotations

import numpy as np
import pytest

from matrix.analysis.compare import compare_tensors
from matrix.analysis.drift import (
    DEFAULT_THRESHOLDS,
    DriftClass,
    apply_overrides,
    parse_tolerance_option,
    thresholds_for,
    worst,
)
from matrix.errors import MatrixError


def test_classes_are_ordered_by_severity() -> None:
    order = [
        DriftClass.IDENTICAL,
        DriftClass.ROUNDING,
        DriftClass.DRIFT,
        DriftClass.DIVERGENT,
        DriftClass.FAILED,
    ]
    assert [c.rank for c in order] == sorted(c.rank for c in order)
    assert len({c.rank for c in order}) == len(order)
    assert (
        worst([DriftClass.ROUNDING, DriftClass.DIVERGENT, DriftClass.IDENTICAL])
        is DriftClass.DIVERGENT
    )
    assert worst([DriftClass.UNSUPPORTED, DriftClass.IDENTICAL]) is DriftClass.IDENTICAL
    assert worst([]) is DriftClass.IDENTICAL


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_defaults_scale_with_machine_epsilon(dtype: str) -> None:
    th = DEFAULT_THRESHOLDS[dtype]
    eps = 2.0**-7 if dtype == "bfloat16" else float(np.finfo(dtype).eps)
    # rounding tolerates a few eps and more, divergence is far beyond it
    assert 2 * eps <= th.rounding_rtol < th.divergent_rtol
    assert th.rounding_atol < th.divergent_atol


def test_overrides_change_the_verdict() -> None:
    a = np.linspace(1, 2, 100, dtype=np.float32)
    b = a * np.float32(1 + 1e-3)
    default = compare_tensors(b, a, dtype="float32", thresholds=thresholds_for("float32"))
    table = apply_overrides({"float32": {"rounding_rtol": 1e-2}})
    loosened = compare_tensors(b, a, dtype="float32", thresholds=thresholds_for("float32", table))
    assert default.verdict is DriftClass.DRIFT
    assert loosened.verdict is DriftClass.ROUNDING
    assert DEFAULT_THRESHOLDS["float32"].rounding_rtol == 1e-5  # defaults untouched


@pytest.mark.parametrize(
    "overrides",
    [
        {"float8": {"rounding_rtol": 1.0}},
        {"float32": {"rtol": 1.0}},
        {"float32": {"rounding_rtol": -1.0}},
        {"float32": {"rounding_rtol": 0.5}},  # looser than divergent (0.1)
    ],
)
def test_bad_overrides_are_user_errors(overrides: dict[str, dict[str, float]]) -> None:
    with pytest.raises(MatrixError):
        apply_overrides(overrides)


def test_parse_tolerance_option() -> None:
    assert parse_tolerance_option(
        ["float32.rounding_rtol=1e-4", "bfloat16.divergent_atol=0.1"]
    ) == {
        "float32": {"rounding_rtol": 1e-4},
        "bfloat16": {"divergent_atol": 0.1},
    }
    for bad in ["float32=1", "float32.rounding_rtol", "float32.rounding_rtol=abc"]:
        with pytest.raises(MatrixError):
            parse_tolerance_option([bad])


def test_integer_dtypes_have_no_rounding() -> None:
    th = thresholds_for("int32")
    assert th.rounding_rtol == 0 and th.rounding_atol == 0


def test_spec_aliases_and_ulp_allowance() -> None:
    table = apply_overrides({"float32": {"rtol": 1e-6, "divergence_rtol": 0.2, "max_ulp": 8}})
    th = thresholds_for("float32", table)
    assert (th.rounding_rtol, th.divergent_rtol, th.rounding_max_ulp) == (1e-6, 0.2, 8)
    a = np.linspace(1, 2, 100, dtype=np.float32)
    # 40 ULP at [1, 2) is 40 * 2**-23 ~ 4.8e-6 relative: outside rtol 1e-6 + atol 1e-6
    b = (a.view(np.int32) + 40).view(np.float32)
    strict = thresholds_for("float32", apply_overrides({"float32": {"rtol": 1e-6}}))
    assert compare_tensors(b, a, dtype="float32", thresholds=strict).verdict is DriftClass.DRIFT
    allowed = thresholds_for("float32", apply_overrides({"float32": {"rtol": 1e-6, "max_ulp": 40}}))
    assert compare_tensors(b, a, dtype="float32", thresholds=allowed).verdict is DriftClass.ROUNDING
