"""The scenarios' models, built through compat so every version builds the
same architecture from the same calls."""

from __future__ import annotations

from typing import Any

from scenarios.canonical import LSTM_SHAPE, MLP_HIDDEN, LstmShape
from scenarios.context import ScenarioContext

__all__ = ["build_lstm", "build_mlp", "forward_layers", "layer_names"]


def build_mlp(ctx: ScenarioContext, phase: str) -> Any:
    """The tutorial's model: Dense(10, input_dim=1), Dense(1), linear, MSE, Adam."""
    fw = ctx.fw
    with ctx.timed(phase, "build"):
        layers = fw.keras.layers
        model = fw.sequential(
            [layers.Dense(MLP_HIDDEN, input_dim=1, name="dense_a"), fw.dense(1, name="dense_b")],
            name="mlp",
        )
    with ctx.timed(phase, "compile"):
        fw.compile(model, jit=ctx.settings.jit)
    ctx.observed_jit.append(fw.effective_jit(model))
    return model


def build_lstm(
    ctx: ScenarioContext, phase: str, *, stateful: bool, shape: LstmShape = LSTM_SHAPE
) -> Any:
    """LSTM(units) then Dense(1); stateful models fix the batch size."""
    fw, s = ctx.fw, shape
    with ctx.timed(phase, "build"):
        if stateful:
            inp = fw.input(batch_shape=(s.batch_size, s.timesteps, s.features), name="x")
        else:
            inp = fw.input(shape=(s.timesteps, s.features), name="x")
        model = fw.sequential(
            [
                inp,
                fw.lstm(s.units, name="lstm", stateful=stateful, cudnn=ctx.settings.cudnn),
                fw.dense(1, name="dense"),
            ],
            name="stateful_lstm" if stateful else "stateless_lstm",
        )
    with ctx.timed(phase, "compile"):
        fw.compile(model, jit=ctx.settings.jit)
    ctx.observed_jit.append(fw.effective_jit(model))
    return model


def layer_names(model: Any) -> list[str]:
    """`layer_<NN>_<name>` for each layer's output, in model order."""
    return [f"layer_{i:02d}_{layer.name}" for i, layer in enumerate(model.layers)]


def forward_layers(
    ctx: ScenarioContext, model: Any, x: Any, *, phase: str, batch_size: int
) -> list[Any]:
    """Every layer's output for x, through one multi-output predict."""
    fw = ctx.fw
    with ctx.timed(phase, "build"):
        probe = fw.layer_outputs_model(model)
    with ctx.timed(phase, "predict"):
        outs = fw.predict(probe, x, batch_size=batch_size)
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]
