"""Canonical tensors: float32, reproducible, from the legacy RandomState stream."""

from __future__ import annotations

import math

import numpy as np

from scenarios.canonical import LSTM_SHAPE, lstm_data, mlp_data


def test_mlp_sequence_is_the_tutorials() -> None:
    data = mlp_data()
    # [i / 10 for i in range(10)] in Python floats, cast once to float32.
    seq = [i / 10 for i in range(10)]
    assert data.x.dtype == np.float32 and data.x.shape == (9, 1)
    assert data.x.ravel().tolist() == [float(np.float32(v)) for v in seq[:-1]]
    assert data.y.ravel().tolist() == [float(np.float32(v)) for v in seq[1:]]


def test_every_canonical_tensor_is_float32_and_regenerates_bit_for_bit() -> None:
    for make in (mlp_data, lstm_data):
        a, b = make().tensors(), make().tensors()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == np.float32, key
            assert a[key].tobytes() == b[key].tobytes(), key


def test_weights_are_the_float64_draw_cast_once() -> None:
    # Redraw from the documented stream independently: same seed, same order.
    rs = np.random.RandomState(102)
    lim = math.sqrt(6.0 / 11)
    kernel = rs.uniform(-lim, lim, size=(1, 10)).astype(np.float32)
    np.testing.assert_array_equal(mlp_data().weights[0], kernel)


def test_legacy_randomstate_stream_is_the_frozen_one() -> None:
    # The first draw of RandomState(0) is the widely published 0.5488135039273248:
    # if NumPy ever changed the legacy stream, canonical data would move too.
    assert np.random.RandomState(0).random_sample() == 0.5488135039273248


def test_lstm_shapes_and_indivisible_count() -> None:
    s = LSTM_SHAPE
    data = lstm_data()
    assert data.x.shape == (s.samples, s.timesteps, s.features)
    assert s.samples % s.batch_size == 0
    assert s.indivisible_samples % s.batch_size != 0
    assert data.weights[0].shape == (s.features, 4 * s.units)
    assert data.weights[1].shape == (s.units, 4 * s.units)
