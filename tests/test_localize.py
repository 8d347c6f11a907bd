from __future__ import annotations

import numpy as np
import pytest

from matrix.analysis.compare import compare_tensors
from matrix.analysis.drift import DEFAULT_THRESHOLDS, DriftClass
from matrix.analysis.localize import layer_of, localize


def forward(
    layers: int, changed_from: int | None, drift_from: int | None
) -> list[tuple[str, object]]:
    """Layer outputs where layers >= changed_from are 1 ULP off and >= drift_from 1e-2 off."""
    rng = np.random.RandomState(0)
    out = []
    for i in range(layers):
        base = rng.uniform(0.5, 2, 64).astype(np.float32)
        cand = base.copy()
        if changed_from is not None and i >= changed_from:
            cand = np.nextafter(cand, np.float32(9))
        if drift_from is not None and i >= drift_from:
            cand = (cand * np.float32(1.01)).astype(np.float32)
        key = f"mlp/forward/layer_{i:02d}_dense{i}"
        out.append(
            (
                key,
                compare_tensors(
                    cand, base, dtype="float32", thresholds=DEFAULT_THRESHOLDS["float32"]
                ),
            )
        )
    return out


@pytest.mark.parametrize("k", [0, 3, 11])
def test_first_drifting_layer_is_the_planted_one(k: int) -> None:
    loc = localize(forward(12, None, k))
    assert loc is not None and loc.layers == 12
    assert loc.first_drift is not None and loc.first_drift.index == k
    assert loc.first_drift.verdict is DriftClass.DRIFT
    assert loc.first_change is not None and loc.first_change.index == k


def test_rounding_before_drift_is_reported_as_first_change() -> None:
    loc = localize(forward(8, 2, 5))
    assert loc is not None
    assert loc.first_change is not None and loc.first_change.index == 2
    assert loc.first_change.verdict is DriftClass.ROUNDING
    assert loc.first_drift is not None and loc.first_drift.index == 5


def test_order_is_numeric_not_listing_order() -> None:
    tensors = forward(12, None, 10)
    loc = localize(list(reversed(tensors)))
    assert loc is not None and loc.first_drift is not None and loc.first_drift.index == 10


def test_no_drift_and_no_layers() -> None:
    loc = localize(forward(4, None, None))
    assert loc is not None and loc.first_drift is None and loc.first_change is None
    assert localize([("mlp/forward/output", forward(1, None, None)[0][1])]) is None


def test_layer_key_parsing() -> None:
    assert layer_of("lstm/forward/layer_03_lstm_1") == (3, "lstm_1")
    assert layer_of("lstm/forward/output") is None
