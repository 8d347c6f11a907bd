"""stateful_lstm: state carried across batches, reset between epochs.

Phases: forward (canonical weights, two inference passes with a reset
between, every layer's output and the states left behind), train (a few
epochs of fit, outputs after each epoch, final weights and states),
stateless (the same weights without state). And a sample count the batch
size does not divide: what this version does, recorded as data.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from scenarios import reference as ref
from scenarios.canonical import LSTM_SHAPE, lstm_data
from scenarios.context import ScenarioContext
from scenarios.contract import scenario
from scenarios.models import build_lstm, forward_layers, layer_names

__all__ = ["run"]

MESSAGE_CHARS = 600
# Lines of framework error texts that are stack or argument dumps, not the
# error: TF graph errors embed the Python stack, Keras 3 lists arguments.
NOISE = (
    "File ",
    "Detected at node",
    "Graph execution error",
    "Arguments received",
    "\u2022",
    "Exception encountered when calling",
)


def _lstm_layer(model: Any) -> Any:
    return next(layer for layer in model.layers if layer.name == "lstm")


def _put_states(ctx: ScenarioContext, phase: str, model: Any) -> list[np.ndarray]:
    states = ctx.fw.states(_lstm_layer(model))
    for name, value in zip(("state_h", "state_c"), states, strict=True):
        ctx.put(phase, name, value)
    return states


def _forward(ctx: ScenarioContext, weights: tuple[np.ndarray, ...], x: np.ndarray) -> None:
    fw, s = ctx.fw, LSTM_SHAPE
    model = build_lstm(ctx, "forward", stateful=True)
    with ctx.timed("forward", "build"):
        fw.set_weights(model, weights)
    fw.reset_states(model)
    outs = forward_layers(ctx, model, x, phase="forward", batch_size=s.batch_size)
    oracle = ref.lstm_forward(weights, x, batch_size=s.batch_size, stateful=True)
    for key, out, r in zip(layer_names(model), outs, (oracle.lstm, oracle.output), strict=True):
        ctx.put("forward", key, out)
        ctx.put_reference("forward", key, r)
    states = _put_states(ctx, "forward", model)
    # Keras 3 on JAX runs predict statelessly and may not write states back.
    ctx.data["predict_carries_state"] = bool(states) and any(np.any(st != 0) for st in states)
    ctx.put_reference("forward", "state_h", oracle.state_h)
    ctx.put_reference("forward", "state_c", oracle.state_c)
    # A second pass after reset must start from zeros again.
    fw.reset_states(model)
    with ctx.timed("forward", "predict"):
        output = np.asarray(fw.predict(model, x, batch_size=s.batch_size))
    ctx.put("forward", "output", output)
    ctx.put_reference("forward", "output", oracle.output)
    # predict() after a reset and the layer-by-layer pass run the same math
    # through different graphs: bitwise equal on some CPUs and kernels, within
    # rounding on others (Keras 2 without oneDNN). Which one is data.
    layered = np.asarray(outs[-1])
    gap = np.abs(output.astype(np.float64) - layered.astype(np.float64))
    ctx.data["reset_output"] = {
        "bitwise_equal": bool(np.array_equal(output, layered)),
        "max_abs_diff": float(gap.max()) if gap.size else 0.0,
    }
    fw.reset_states(model)


def _train(
    ctx: ScenarioContext, weights: tuple[np.ndarray, ...], x: np.ndarray, y: np.ndarray
) -> None:
    fw, s = ctx.fw, LSTM_SHAPE
    model = build_lstm(ctx, "train", stateful=True)
    with ctx.timed("train", "build"):
        fw.set_weights(model, weights)
    fw.reset_states(model)
    losses: list[float] = []
    epochs = s.epochs
    for epoch in range(epochs):
        with ctx.timed("train", "fit"):
            losses += fw.fit(model, x, y, epochs=1, batch_size=s.batch_size)
        fw.reset_states(model)
        with ctx.timed("train", "predict"):
            out = fw.predict(model, x, batch_size=s.batch_size)
        ctx.put("train", f"output_epoch_{epoch}", out)
        if epoch == epochs - 1:
            _put_states(ctx, "train", model)
        fw.reset_states(model)
    for name, value in fw.get_weights(model):
        ctx.put("train", name, value)
    ctx.put("train", "loss", np.asarray(losses, dtype=np.float64))


def _stateless(
    ctx: ScenarioContext,
    weights: tuple[np.ndarray, ...],
    x: np.ndarray,
    stateful_output: np.ndarray | None,
) -> None:
    fw, s = ctx.fw, LSTM_SHAPE
    model = build_lstm(ctx, "stateless", stateful=False)
    with ctx.timed("stateless", "build"):
        fw.set_weights(model, weights)
    with ctx.timed("stateless", "predict"):
        out = np.asarray(fw.predict(model, x, batch_size=s.batch_size))
    ctx.put("stateless", "output", out)
    ctx.put_reference(
        "stateless",
        "output",
        ref.lstm_forward(weights, x, batch_size=s.batch_size, stateful=False).output,
    )
    if stateful_output is not None:
        # The first batch starts from zeros either way; later ones must differ.
        first = slice(0, s.batch_size)
        ctx.data["stateless_vs_stateful"] = {
            "first_batch_equal": bool(np.array_equal(out[first], stateful_output[first])),
            "max_abs_diff_later_batches": float(
                np.max(
                    np.abs(out[s.batch_size :].astype(np.float64) - stateful_output[s.batch_size :])
                )
            ),
        }


def summarise_error(text: str) -> str:
    """The error's own words without the Python stack TF graph errors embed
    ("Detected at node ... File ..."), so versions compare on substance."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Keras 3 bolds with ANSI escapes
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(NOISE)]
    if len(kept) > 4:
        kept = kept[:1] + kept[-3:]
    return " | ".join(kept)[:MESSAGE_CHARS]


def _attempt(fn: Any) -> dict[str, Any]:
    try:
        result = fn()
    except Exception as exc:  # broad on purpose: the behaviour is the finding
        return {
            "outcome": "error",
            "error_type": type(exc).__name__,
            "message": summarise_error(str(exc)),
        }
    return {"outcome": "ok", **result}


def _indivisible(
    ctx: ScenarioContext, weights: tuple[np.ndarray, ...], x: np.ndarray, y: np.ndarray
) -> None:
    """18 samples, batch size 4: error, truncation or a short last batch?"""
    fw, s = ctx.fw, LSTM_SHAPE
    model = build_lstm(ctx, "indivisible", stateful=True)
    with ctx.timed("indivisible", "build"):
        fw.set_weights(model, weights)

    def fit() -> dict[str, Any]:
        with ctx.timed("indivisible", "fit"):
            losses = fw.fit(model, x, y, epochs=1, batch_size=s.batch_size)
        return {
            "loss": losses[-1] if losses else None,
            "loss_finite": bool(np.isfinite(losses).all()),
        }

    def predict() -> dict[str, Any]:
        fw.reset_states(model)
        with ctx.timed("indivisible", "predict"):
            out = np.asarray(fw.predict(model, x, batch_size=s.batch_size))
        return {
            "output_rows": int(out.shape[0]),
            "finite": bool(np.isfinite(out.astype(np.float64)).all()),
        }

    ctx.data["indivisible"] = {
        "samples": int(x.shape[0]),
        "batch_size": s.batch_size,
        "fit": _attempt(fit),
        "predict": _attempt(predict),
    }


@scenario(
    "stateful_lstm",
    phases=("canonical", "forward", "train", "stateless", "indivisible"),
    summary="a stateful LSTM: state carried across batches, reset between epochs",
)
def run(ctx: ScenarioContext) -> None:
    data, s = lstm_data(), LSTM_SHAPE
    ctx.data["shape"] = {
        "batch_size": s.batch_size,
        "timesteps": s.timesteps,
        "features": s.features,
        "units": s.units,
        "samples": s.samples,
        "epochs": s.epochs,
    }
    for name, value in data.tensors().items():
        ctx.put("canonical", name, value)
    ctx.maybe_fail()
    ctx.fw.clear()
    with ctx.phase("forward"):
        _forward(ctx, data.weights, data.x)
    stateful_output = ctx.store.arrays.get("stateful_lstm/forward/output")
    ctx.fw.clear()
    with ctx.phase("train"):
        _train(ctx, data.weights, data.x, data.y)
    ctx.fw.clear()
    with ctx.phase("stateless"):
        _stateless(ctx, data.weights, data.x, stateful_output)
    ctx.fw.clear()
    with ctx.phase("indivisible"):
        _indivisible(ctx, data.weights, data.x_indivisible, data.y_indivisible)
