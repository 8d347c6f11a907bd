"""Canonical data and weights: identical bits in every environment.

Drawn from NumPy's legacy RandomState (its stream is frozen across NumPy
versions; the Generator stream is not) in float64 and cast to float32 once.
Only IEEE-exact operations (+ - * / sqrt, correctly rounded) touch the draws:
np.sin, np.exp or reductions may differ between NumPy builds and CPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "INITIALIZER_SHAPE",
    "INIT_SEED",
    "LSTM_SHAPE",
    "LSTM_WEIGHT_NAMES",
    "MLP_HIDDEN",
    "MLP_WEIGHT_NAMES",
    "LstmData",
    "LstmShape",
    "MlpData",
    "lstm_data",
    "mlp_data",
]

INIT_SEED = 1234  # the seed the seeded phases and initializers use
INITIALIZER_SHAPE = (64, 32)


@dataclass(frozen=True, kw_only=True)
class LstmShape:
    batch_size: int = 4
    timesteps: int = 6
    features: int = 2
    units: int = 4
    samples: int = 16  # divisible by batch_size: 4 batches carry state
    indivisible_samples: int = 18  # not divisible: what does each version do?
    epochs: int = 3


LSTM_SHAPE = LstmShape()


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).astype(np.float32)


def _glorot_limit(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


@dataclass(frozen=True, kw_only=True)
class MlpData:
    x: np.ndarray  # (9, 1) the tutorial's inputs 0.0 .. 0.8
    y: np.ndarray  # (9, 1) the next values 0.1 .. 0.9
    forward_x: np.ndarray  # (16, 1) fixed inference inputs
    weights: tuple[np.ndarray, ...]  # dense_a kernel, bias; dense_b kernel, bias

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"x": self.x, "y": self.y, "forward_x": self.forward_x}
        for name, w in zip(MLP_WEIGHT_NAMES, self.weights, strict=True):
            out[name] = w
        return out


MLP_WEIGHT_NAMES = ("dense_a_kernel", "dense_a_bias", "dense_b_kernel", "dense_b_bias")
MLP_HIDDEN = 10


def mlp_data() -> MlpData:
    # The tutorial's sequence: [i / 10 for i in range(10)], each value
    # predicting the next. Division is correctly rounded: same bits anywhere.
    seq = np.arange(10, dtype=np.float64) / 10.0
    rs = np.random.RandomState(101)
    forward_x = rs.uniform(-1.0, 1.0, size=(16, 1))
    rs = np.random.RandomState(102)
    lim_a = _glorot_limit(1, MLP_HIDDEN)
    lim_b = _glorot_limit(MLP_HIDDEN, 1)
    weights = (
        rs.uniform(-lim_a, lim_a, size=(1, MLP_HIDDEN)),
        # Non-zero biases so the bias path is exercised, unlike a fresh init.
        rs.uniform(-0.1, 0.1, size=(MLP_HIDDEN,)),
        rs.uniform(-lim_b, lim_b, size=(MLP_HIDDEN, 1)),
        rs.uniform(-0.1, 0.1, size=(1,)),
    )
    return MlpData(
        x=_f32(seq[:-1].reshape(9, 1)),
        y=_f32(seq[1:].reshape(9, 1)),
        forward_x=_f32(forward_x),
        weights=tuple(_f32(w) for w in weights),
    )


LSTM_WEIGHT_NAMES = (
    "lstm_kernel",
    "lstm_recurrent_kernel",
    "lstm_bias",
    "dense_kernel",
    "dense_bias",
)


@dataclass(frozen=True, kw_only=True)
class LstmData:
    x: np.ndarray  # (samples, timesteps, features)
    y: np.ndarray  # (samples, 1)
    x_indivisible: np.ndarray  # (indivisible_samples, timesteps, features)
    y_indivisible: np.ndarray
    weights: tuple[np.ndarray, ...]  # Keras order: kernel, recurrent, bias; dense kernel, bias

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"x": self.x, "y": self.y}
        for name, w in zip(LSTM_WEIGHT_NAMES, self.weights, strict=True):
            out[name] = w
        return out


def lstm_data(shape: LstmShape = LSTM_SHAPE) -> LstmData:
    s = shape
    rs = np.random.RandomState(201)
    x = rs.uniform(-1.0, 1.0, size=(s.samples, s.timesteps, s.features))
    y = rs.uniform(-0.5, 0.5, size=(s.samples, 1))
    rs = np.random.RandomState(202)
    xi = rs.uniform(-1.0, 1.0, size=(s.indivisible_samples, s.timesteps, s.features))
    yi = rs.uniform(-0.5, 0.5, size=(s.indivisible_samples, 1))
    rs = np.random.RandomState(203)
    gates = 4 * s.units  # Keras gate order i, f, c, o along the last axis
    lim_k = _glorot_limit(s.features, gates)
    lim_r = _glorot_limit(s.units, gates)
    lim_d = _glorot_limit(s.units, 1)
    weights = (
        rs.uniform(-lim_k, lim_k, size=(s.features, gates)),
        rs.uniform(-lim_r, lim_r, size=(s.units, gates)),
        rs.uniform(-0.1, 0.1, size=(gates,)),
        rs.uniform(-lim_d, lim_d, size=(s.units, 1)),
        rs.uniform(-0.1, 0.1, size=(1,)),
    )
    return LstmData(
        x=_f32(x),
        y=_f32(y),
        x_indivisible=_f32(xi),
        y_indivisible=_f32(yi),
        weights=tuple(_f32(w) for w in weights),
    )
