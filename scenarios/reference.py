"""The float64 NumPy oracle, and first-order float32 rounding-error bounds.

Inputs are the float32 canonical tensors widened to float64, so the oracle
and a float32 cell start from the same bits and differ only by arithmetic.
The bounds say how far a correct float32 implementation may be from the
oracle: classic forward error analysis (Higham, ch. 3) with the unit
roundoff u = 2**-24; they let a test check "within float32 rounding"
without a threshold taken from observed numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ACTIVATION_ULPS",
    "ADAM_DEFAULTS",
    "U32",
    "AdamConfig",
    "LstmResult",
    "MlpTrainResult",
    "adam_step",
    "gamma",
    "lstm_forward",
    "lstm_forward_bound",
    "mlp_forward",
    "mlp_forward_bound",
    "mlp_train",
    "mse",
]

U32 = 2.0**-24  # float32 unit roundoff
# Assumed accuracy of float32 exp/tanh/sigmoid kernels (Eigen, XLA, ATen use
# polynomial or rational approximations accurate to a few ulp). An
# implementation worse than this is itself a finding.
ACTIVATION_ULPS = 8


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n: bound on the relative error of n roundings."""
    return n * u / (1.0 - n * u)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


# ---- MLP ------------------------------------------------------------------


def mlp_forward(weights: Sequence[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Outputs of every Dense layer (linear activations, as in the tutorial)."""
    h = _f64(x)
    outputs = []
    for kernel, bias in zip(weights[0::2], weights[1::2], strict=True):
        h = h @ _f64(kernel) + _f64(bias)
        outputs.append(h)
    return outputs


def mlp_forward_bound(
    weights: Sequence[np.ndarray], x: np.ndarray, u: float = U32
) -> list[np.ndarray]:
    """Per-element bound on |float32 layer output - float64 oracle|.

    A Dense output sums K products and a bias: any summation order is within
    gamma_{K+1} * (|x| @ |W| + |b|); the error already in x reaches the
    output through |W|.
    """
    h = _f64(x)
    err = np.zeros_like(h)
    bounds = []
    for kernel, bias in zip(weights[0::2], weights[1::2], strict=True):
        k, b = _f64(kernel), _f64(bias)
        fan_in = k.shape[0]
        err = err @ np.abs(k) + gamma(fan_in + 1, u) * (np.abs(h) @ np.abs(k) + np.abs(b))
        h = h @ k + b
        bounds.append(err)
    return bounds


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((_f64(pred) - _f64(y)) ** 2))


@dataclass(frozen=True, kw_only=True)
class AdamConfig:
    """Keras' Adam defaults (Keras 2.11+ and Keras 3 share them)."""

    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


ADAM_DEFAULTS = AdamConfig()


@dataclass(frozen=True, kw_only=True)
class MlpTrainResult:
    weights: list[np.ndarray]
    losses: np.ndarray  # loss per epoch, before that epoch's update (as fit reports it)
    predictions: np.ndarray
    mse: float


def _mlp_gradients(
    weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, list[np.ndarray]]:
    k1, b1, k2, b2 = weights
    h = x @ k1 + b1
    pred = h @ k2 + b2
    resid = pred - y
    loss = float(np.mean(resid**2))
    # Keras MSE: mean over the last axis, then over the batch: d/dpred = 2 r / (N * D).
    g_pred = 2.0 * resid / resid.size
    g_k2 = h.T @ g_pred
    g_b2 = g_pred.sum(axis=0)
    g_h = g_pred @ k2.T
    g_k1 = x.T @ g_h
    g_b1 = g_h.sum(axis=0)
    return loss, [g_k1, g_b1, g_k2, g_b2]


def adam_step(
    weights: list[np.ndarray],
    grads: Sequence[np.ndarray],
    m: list[np.ndarray],
    v: list[np.ndarray],
    step: int,
    cfg: AdamConfig = ADAM_DEFAULTS,
) -> None:
    """One Keras Adam update in place; step counts from 1.

    Keras folds both bias corrections into the learning rate and adds epsilon
    to sqrt(v) (not to sqrt(v_hat)): w -= lr_t * m / (sqrt(v) + eps) with
    lr_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)  (keras Adam.update_step).
    """
    alpha = cfg.learning_rate * np.sqrt(1.0 - cfg.beta_2**step) / (1.0 - cfg.beta_1**step)
    for i, g in enumerate(grads):
        m[i] += (g - m[i]) * (1.0 - cfg.beta_1)
        v[i] += (g * g - v[i]) * (1.0 - cfg.beta_2)
        weights[i] -= (m[i] * alpha) / (np.sqrt(v[i]) + cfg.epsilon)


def mlp_train(
    weights: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    cfg: AdamConfig = ADAM_DEFAULTS,
) -> MlpTrainResult:
    """Full-batch training (batch_size=len(x)): one Adam step per epoch."""
    w = [_f64(a).copy() for a in weights]
    x64, y64 = _f64(x), _f64(y)
    m = [np.zeros_like(a) for a in w]
    v = [np.zeros_like(a) for a in w]
    losses = []
    for step in range(1, epochs + 1):
        loss, grads = _mlp_gradients(w, x64, y64)
        losses.append(loss)
        adam_step(w, grads, m, v, step, cfg)
    pred = mlp_forward(w, x64)[-1]
    return MlpTrainResult(
        weights=w, losses=np.asarray(losses), predictions=pred, mse=mse(pred, y64)
    )


# ---- LSTM -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LstmResult:
    lstm: np.ndarray  # last hidden state per sample (return_sequences=False)
    output: np.ndarray  # the Dense head on top
    state_h: np.ndarray  # states left in the layer after the last batch
    state_c: np.ndarray


def _lstm_cell(
    x: np.ndarray, h: np.ndarray, c: np.ndarray, k: np.ndarray, r: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    units = h.shape[1]
    z = x @ k + h @ r + b
    i = _sigmoid(z[:, :units])
    f = _sigmoid(z[:, units : 2 * units])
    g = np.tanh(z[:, 2 * units : 3 * units])
    o = _sigmoid(z[:, 3 * units :])
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return h_new, c_new, (i, f, g, o)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def lstm_forward(
    weights: Sequence[np.ndarray], x: np.ndarray, *, batch_size: int, stateful: bool
) -> LstmResult:
    """Keras LSTM (i, f, c, o gates; sigmoid recurrent activation, tanh) and
    a Dense head. Stateful: row r of batch b starts from the state row r of
    batch b-1 ended with; stateless: every sample starts from zeros."""
    k, r, b, dk, db = (_f64(w) for w in weights)
    x = _f64(x)
    units = r.shape[0]
    h_all = np.zeros((x.shape[0], units))
    h = np.zeros((batch_size, units))
    c = np.zeros((batch_size, units))
    for sl in _batches(x.shape[0], batch_size):
        rows = sl.stop - sl.start
        if not stateful:
            h, c = np.zeros((rows, units)), np.zeros((rows, units))
        hb, cb = h[:rows], c[:rows]
        for t in range(x.shape[1]):
            hb, cb, _ = _lstm_cell(x[sl, t, :], hb, cb, k, r, b)
        h_all[sl] = hb
        h, c = hb, cb
    return LstmResult(lstm=h_all, output=h_all @ dk + db, state_h=h, state_c=c)


def lstm_forward_bound(
    weights: Sequence[np.ndarray], x: np.ndarray, *, batch_size: int, stateful: bool, u: float = U32
) -> LstmResult:
    """First-order per-element bounds for lstm_forward's outputs in float32.

    Propagated step by step with the oracle's values: pre-activations as
    dot products (gamma_{F+U+1}); sigmoid' <= 1/4 and tanh' <= 1 carry input
    error, each activation adds ACTIVATION_ULPS ulp; c = f*c + i*g adds
    gamma_2; h = o * tanh(c) adds one rounding.
    """
    k, r, b, dk, db = (_f64(w) for w in weights)
    x = _f64(x)
    units = r.shape[0]
    fan = k.shape[0] + units + 1
    act = ACTIVATION_ULPS * u
    n = x.shape[0]
    h_all, e_all = np.zeros((n, units)), np.zeros((n, units))
    h = c = eh = ec = np.zeros((batch_size, units))
    for sl in _batches(n, batch_size):
        rows = sl.stop - sl.start
        if not stateful:
            h = c = eh = ec = np.zeros((rows, units))
        hb, cb, ehb, ecb = h[:rows], c[:rows], eh[:rows], ec[:rows]
        for t in range(x.shape[1]):
            xt = x[sl, t, :]
            ez = ehb @ np.abs(r) + gamma(fan, u) * (
                np.abs(xt) @ np.abs(k) + np.abs(hb) @ np.abs(r) + np.abs(b)
            )
            h_new, c_new, (i, f, g, o) = _lstm_cell(xt, hb, cb, k, r, b)
            ei = 0.25 * ez[:, :units] + act * i
            ef = 0.25 * ez[:, units : 2 * units] + act * f
            eg = ez[:, 2 * units : 3 * units] + act * np.abs(g)
            eo = 0.25 * ez[:, 3 * units :] + act * o
            ec_new = (
                f * ecb
                + np.abs(cb) * ef
                + i * eg
                + np.abs(g) * ei
                + gamma(2, u) * (np.abs(f * cb) + np.abs(i * g))
            )
            tc = np.tanh(c_new)
            eh_new = o * (ec_new + act * np.abs(tc)) + np.abs(tc) * eo + u * np.abs(h_new)
            hb, cb, ehb, ecb = h_new, c_new, eh_new, ec_new
        h_all[sl], e_all[sl] = hb, ehb
        h, c, eh, ec = hb, cb, ehb, ecb
    e_out = e_all @ np.abs(dk) + gamma(units + 1, u) * (np.abs(h_all) @ np.abs(dk) + np.abs(db))
    return LstmResult(lstm=e_all, output=e_out, state_h=eh, state_c=ec)
