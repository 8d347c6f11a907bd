"""The float64 oracle and its float32 error bounds, with the host NumPy only."""

from __future__ import annotations

import numpy as np
import pytest

from scenarios import reference as ref
from scenarios.canonical import LSTM_SHAPE, lstm_data, mlp_data


def _numeric_grad(f, w: list[np.ndarray], i: int, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(w[i])
    for idx in np.ndindex(w[i].shape):
        plus = [a.copy() for a in w]
        minus = [a.copy() for a in w]
        plus[i][idx] += h
        minus[i][idx] -= h
        g[idx] = (f(plus) - f(minus)) / (2 * h)
    return g


def test_mlp_gradients_match_finite_differences() -> None:
    data = mlp_data()
    w = [a.astype(np.float64) for a in data.weights]
    x, y = data.x.astype(np.float64), data.y.astype(np.float64)
    _, grads = ref._mlp_gradients(w, x, y)

    def loss(ws: list[np.ndarray]) -> float:
        return ref.mse(ref.mlp_forward(ws, x)[-1], y)

    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, _numeric_grad(loss, w, i), rtol=1e-6, atol=1e-9)


def test_adam_first_step_moves_each_weight_by_learning_rate() -> None:
    # With m0 = v0 = 0, step 1 gives m = (1-b1) g, v = (1-b2) g^2 and
    # alpha = lr sqrt(1-b2)/(1-b1): the update is lr * g/(|g| + eps/sqrt(1-b2)).
    cfg = ref.ADAM_DEFAULTS
    g = np.array([3.0, -0.5, 1e-3])
    w = [np.zeros(3)]
    m, v = [np.zeros(3)], [np.zeros(3)]
    ref.adam_step(w, [g], m, v, 1, cfg)
    expected = -cfg.learning_rate * g / (np.abs(g) + cfg.epsilon / np.sqrt(1 - cfg.beta_2))
    np.testing.assert_allclose(w[0], expected, rtol=1e-12)


def test_adam_matches_textbook_form_with_epsilon_hat() -> None:
    # Kingma & Ba's "epsilon hat" form: w -= lr_t m / (sqrt(v) + eps) with
    # lr_t = lr sqrt(1 - b2^t)/(1 - b1^t) and classic moment recursions.
    cfg = ref.ADAM_DEFAULTS
    rs = np.random.RandomState(0)
    grads = rs.normal(size=(20, 4))
    w, m, v = [np.zeros(4)], [np.zeros(4)], [np.zeros(4)]
    w2, m2, v2 = np.zeros(4), np.zeros(4), np.zeros(4)
    for t, g in enumerate(grads, start=1):
        ref.adam_step(w, [g], m, v, t, cfg)
        m2 = cfg.beta_1 * m2 + (1 - cfg.beta_1) * g
        v2 = cfg.beta_2 * v2 + (1 - cfg.beta_2) * g * g
        lr_t = cfg.learning_rate * np.sqrt(1 - cfg.beta_2**t) / (1 - cfg.beta_1**t)
        w2 = w2 - lr_t * m2 / (np.sqrt(v2) + cfg.epsilon)
    np.testing.assert_allclose(w[0], w2, rtol=1e-12, atol=1e-15)


def test_mlp_train_reduces_loss_and_reports_pre_update_losses() -> None:
    data = mlp_data()
    result = ref.mlp_train(data.weights, data.x, data.y, epochs=100)
    assert result.losses.shape == (100,)
    # Keras reports each epoch's loss before that epoch's update.
    assert result.losses[0] == pytest.approx(
        ref.mse(ref.mlp_forward(data.weights, data.x)[-1], data.y)
    )
    assert result.losses[-1] < result.losses[0]
    assert result.mse == pytest.approx(ref.mse(result.predictions, data.y))
    # The canonical inputs are never modified in place.
    np.testing.assert_array_equal(data.weights[0], mlp_data().weights[0])


def test_lstm_stateless_equals_per_sample_recurrence() -> None:
    data = lstm_data()
    out = ref.lstm_forward(data.weights, data.x, batch_size=LSTM_SHAPE.batch_size, stateful=False)
    k, r, b, dk, db = (w.astype(np.float64) for w in data.weights)
    units = LSTM_SHAPE.units
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for s in range(data.x.shape[0]):
        h = np.zeros(units)
        c = np.zeros(units)
        for t in range(data.x.shape[1]):
            z = data.x[s, t].astype(np.float64) @ k + h @ r + b
            i, f, g, o = (
                sig(z[:units]),
                sig(z[units : 2 * units]),
                np.tanh(z[2 * units : 3 * units]),
                sig(z[3 * units :]),
            )
            c = f * c + i * g
            h = o * np.tanh(c)
        np.testing.assert_allclose(out.lstm[s], h, rtol=1e-14)
        np.testing.assert_allclose(out.output[s], h @ dk + db, rtol=1e-13)


def test_lstm_stateful_carries_state_by_row_across_batches() -> None:
    data = lstm_data()
    bs = LSTM_SHAPE.batch_size
    stateful = ref.lstm_forward(data.weights, data.x, batch_size=bs, stateful=True)
    stateless = ref.lstm_forward(data.weights, data.x, batch_size=bs, stateful=False)
    np.testing.assert_array_equal(stateful.output[:bs], stateless.output[:bs])
    assert np.abs(stateful.output[bs:] - stateless.output[bs:]).max() > 1e-4
    # Row r of the second batch equals running sample r then sample bs + r.
    seq = np.concatenate([data.x[0:1], data.x[bs : bs + 1]], axis=1)
    joined = ref.lstm_forward(data.weights, seq, batch_size=1, stateful=False)
    np.testing.assert_allclose(stateful.lstm[bs], joined.lstm[0], rtol=1e-13)


def test_dense_bound_covers_float32_evaluation_and_is_tight() -> None:
    """The bound must hold for an actual float32 evaluation and not be
    vacuous (a bound far above the real error would pass anything)."""
    data = mlp_data()
    ref64 = ref.mlp_forward(data.weights, data.forward_x)
    bounds = ref.mlp_forward_bound(data.weights, data.forward_x)
    h = data.forward_x
    for (k, b), r, bound in zip(
        zip(data.weights[0::2], data.weights[1::2], strict=True), ref64, bounds, strict=True
    ):
        h = (h @ k + b).astype(np.float32)
        err = np.abs(h.astype(np.float64) - r)
        assert np.all(err <= bound)
    # Scale check: the bound is a handful of ulp of the outputs, not more.
    rel = bounds[-1] / np.maximum(np.abs(ref64[-1]), 1e-30)
    assert np.median(rel) < 64 * ref.U32


def test_lstm_bound_covers_float32_evaluation() -> None:
    data = lstm_data()
    bs = LSTM_SHAPE.batch_size
    for stateful in (True, False):
        r64 = ref.lstm_forward(data.weights, data.x, batch_size=bs, stateful=stateful)
        bound = ref.lstm_forward_bound(data.weights, data.x, batch_size=bs, stateful=stateful)
        f32 = _lstm_forward_f32(data.weights, data.x, bs, stateful)
        assert np.all(np.abs(f32 - r64.output) <= bound.output)
        assert np.all(bound.output < 1e-5)  # float32 scale, not a blanket tolerance


def _lstm_forward_f32(weights, x, bs, stateful):  # type: ignore[no-untyped-def]
    """The same recurrence evaluated in float32 by NumPy."""
    k, r, b, dk, db = weights
    units = r.shape[0]
    f32 = np.float32
    sig = lambda z: (f32(1) / (f32(1) + np.exp(-z))).astype(f32)  # noqa: E731
    out = np.zeros((x.shape[0], 1), dtype=f32)
    h = np.zeros((bs, units), f32)
    c = np.zeros((bs, units), f32)
    for s in range(0, x.shape[0], bs):
        if not stateful:
            h, c = np.zeros((bs, units), f32), np.zeros((bs, units), f32)
        for t in range(x.shape[1]):
            z = x[s : s + bs, t] @ k + h @ r + b
            i, f, g, o = (
                sig(z[:, :units]),
                sig(z[:, units : 2 * units]),
                np.tanh(z[:, 2 * units : 3 * units]),
                sig(z[:, 3 * units :]),
            )
            c = f * c + i * g
            h = o * np.tanh(c)
        out[s : s + bs] = h @ dk + db
    return out.astype(np.float64)


def test_gamma_grows_linearly_and_refuses_nonsense() -> None:
    assert ref.gamma(1) == pytest.approx(ref.U32, rel=1e-6)
    assert ref.gamma(10) == pytest.approx(10 * ref.U32, rel=1e-5)
