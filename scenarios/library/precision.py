"""precision: the MLP and the LSTM under the settings' precision policy.

Phases: forward (MLP, canonical weights, every layer's output), train (MLP
training with whatever loss scaling compile() applies), lstm_forward
(stateless LSTM, canonical weights). The float64 oracle is the same as for
float32: the comparison says what the policy costs. Data records the
variable and compute dtypes each layer actually used and the loss scaling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scenarios import reference as ref
from scenarios.canonical import LSTM_SHAPE, lstm_data, mlp_data
from scenarios.context import ScenarioContext
from scenarios.contract import scenario
from scenarios.models import build_lstm, build_mlp, forward_layers, layer_names

__all__ = ["run"]

EPOCHS = 100


def _dtypes(ctx: ScenarioContext, model: Any) -> dict[str, dict[str, str]]:
    return {layer.name: ctx.fw.layer_dtypes(layer) for layer in model.layers}


def _mlp_forward(ctx: ScenarioContext) -> None:
    fw, data = ctx.fw, mlp_data()
    fw.clear()
    model = build_mlp(ctx, "forward")
    with ctx.timed("forward", "build"):
        fw.set_weights(model, data.weights)
    ctx.data["mlp_layers"] = _dtypes(ctx, model)
    outs = forward_layers(
        ctx, model, data.forward_x, phase="forward", batch_size=len(data.forward_x)
    )
    refs = ref.mlp_forward(data.weights, data.forward_x)
    for key, out, r in zip(layer_names(model), outs, refs, strict=True):
        ctx.put("forward", key, out)
        ctx.put_reference("forward", key, r)
    ctx.put("forward", "output", outs[-1])
    ctx.put_reference("forward", "output", refs[-1])
    ctx.data["output_dtype"] = str(np.asarray(outs[-1]).dtype)


def _mlp_train(ctx: ScenarioContext) -> None:
    fw, data = ctx.fw, mlp_data()
    fw.clear()
    model = build_mlp(ctx, "train")
    with ctx.timed("train", "build"):
        fw.set_weights(model, data.weights)
    epochs = ctx.epochs(EPOCHS)
    with ctx.timed("train", "fit"):
        losses = fw.fit(model, data.x, data.y, epochs=epochs, batch_size=len(data.x))
    with ctx.timed("train", "predict"):
        pred = fw.predict(model, data.x, batch_size=len(data.x))
    ctx.data["loss_scaling"] = fw.loss_scaling(model)
    for name, value in fw.get_weights(model):
        ctx.put("train", name, value)
    ctx.put("train", "predictions", pred)
    ctx.put("train", "loss", np.asarray(losses, dtype=np.float64))
    oracle = ref.mlp_train(data.weights, data.x, data.y, epochs=epochs)
    for (name, _), w in zip(fw.named_weights(model), oracle.weights, strict=True):
        ctx.put_reference("train", name, w)
    ctx.put_reference("train", "predictions", oracle.predictions)
    ctx.put_reference("train", "loss", oracle.losses)


def _lstm(ctx: ScenarioContext) -> None:
    fw, data, s = ctx.fw, lstm_data(), LSTM_SHAPE
    fw.clear()
    model = build_lstm(ctx, "lstm_forward", stateful=False)
    with ctx.timed("lstm_forward", "build"):
        fw.set_weights(model, data.weights)
    ctx.data["lstm_layers"] = _dtypes(ctx, model)
    outs = forward_layers(ctx, model, data.x, phase="lstm_forward", batch_size=s.batch_size)
    oracle = ref.lstm_forward(data.weights, data.x, batch_size=s.batch_size, stateful=False)
    for key, out, r in zip(layer_names(model), outs, (oracle.lstm, oracle.output), strict=True):
        ctx.put("lstm_forward", key, out)
        ctx.put_reference("lstm_forward", key, r)
    ctx.put("lstm_forward", "output", outs[-1])
    ctx.put_reference("lstm_forward", "output", oracle.output)


@scenario(
    "precision",
    phases=("forward", "train", "lstm_forward"),
    summary="the MLP and LSTM under the cell's precision policy",
)
def run(ctx: ScenarioContext) -> None:
    fw, policy = ctx.fw, ctx.settings.precision
    before = fw.global_policy()
    fw.set_policy(policy)
    try:
        ctx.data["policy"] = fw.global_policy()
        ctx.maybe_fail()
        with ctx.phase("forward"):
            _mlp_forward(ctx)
        with ctx.phase("train"):
            _mlp_train(ctx)
        with ctx.phase("lstm_forward"):
            _lstm(ctx)
    finally:
        # Later scenarios (initializers) must not inherit a mixed policy.
        fw.set_policy(before)
