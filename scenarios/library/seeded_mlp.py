"""seeded_mlp: the classic "same network, same data, different results".

Phases: init (seeded initial weights), seeded_train (train from them),
forward (canonical weights, inference), train (canonical weights, then the
same training); plus N unseeded repeats summarised by mean and std of MSE.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from scenarios import reference as ref
from scenarios.canonical import INIT_SEED, MlpData, mlp_data
from scenarios.context import ScenarioContext
from scenarios.contract import scenario
from scenarios.models import build_mlp, forward_layers, layer_names

__all__ = ["EPOCHS", "run"]

EPOCHS = 100  # the tutorial's


def _put_weights(ctx: ScenarioContext, phase: str, model: Any) -> None:
    for name, value in ctx.fw.get_weights(model):
        ctx.put(phase, name, value)


def _train(
    ctx: ScenarioContext, phase: str, model: Any, x: np.ndarray, y: np.ndarray, epochs: int
) -> tuple[list[float], np.ndarray]:
    with ctx.timed(phase, "fit"):
        losses = ctx.fw.fit(model, x, y, epochs=epochs, batch_size=len(x))
    with ctx.timed(phase, "predict"):
        pred = ctx.fw.predict(model, x, batch_size=len(x))
    return losses, np.asarray(pred)


def _put_training(
    ctx: ScenarioContext,
    phase: str,
    model: Any,
    losses: list[float],
    pred: np.ndarray,
    y: np.ndarray,
) -> None:
    _put_weights(ctx, phase, model)
    ctx.put(phase, "predictions", pred)
    ctx.put(phase, "loss", np.asarray(losses, dtype=np.float64))
    # MSE of the predictions in float64, so the metric itself adds no drift.
    ctx.put(phase, "mse", np.asarray(ref.mse(pred, y)))


def _put_oracle_training(
    ctx: ScenarioContext,
    phase: str,
    model: Any,
    start: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
) -> None:
    oracle = ref.mlp_train(start, x, y, epochs=epochs)
    for (name, _), w in zip(ctx.fw.named_weights(model), oracle.weights, strict=True):
        ctx.put_reference(phase, name, w)
    ctx.put_reference(phase, "predictions", oracle.predictions)
    ctx.put_reference(phase, "loss", oracle.losses)
    ctx.put_reference(phase, "mse", np.asarray(oracle.mse))


def _seeded(ctx: ScenarioContext, data: MlpData, epochs: int) -> None:
    """init + seeded_train: what a user who only sets a seed sees."""
    fw = ctx.fw
    fw.clear()
    fw.seed_all(INIT_SEED)
    model = build_mlp(ctx, "init")
    _put_weights(ctx, "init", model)
    init_weights = [w for _, w in fw.get_weights(model)]
    losses, pred = _train(ctx, "seeded_train", model, data.x, data.y, epochs)
    _put_training(ctx, "seeded_train", model, losses, pred, data.y)
    # The oracle trained from this cell's own seeded init separates "the
    # init differs" from "the arithmetic differs".
    _put_oracle_training(ctx, "seeded_train", model, init_weights, data.x, data.y, epochs)


def _forward(ctx: ScenarioContext, data: MlpData) -> None:
    """Canonical weights, inference only, every layer's output."""
    fw = ctx.fw
    fw.clear()
    model = build_mlp(ctx, "forward")
    with ctx.timed("forward", "build"):
        fw.set_weights(model, data.weights)
    n = len(data.forward_x)
    outs = forward_layers(ctx, model, data.forward_x, phase="forward", batch_size=n)
    refs = ref.mlp_forward(data.weights, data.forward_x)
    for key, out, r in zip(layer_names(model), outs, refs, strict=True):
        ctx.put("forward", key, out)
        ctx.put_reference("forward", key, r)
    with ctx.timed("forward", "predict"):
        output = fw.predict(model, data.forward_x, batch_size=n)
    ctx.put("forward", "output", output)
    ctx.put_reference("forward", "output", refs[-1])


def _canonical_train(ctx: ScenarioContext, data: MlpData, epochs: int) -> None:
    """Canonical weights, then the same training; the oracle trains too."""
    fw = ctx.fw
    fw.clear()
    model = build_mlp(ctx, "train")
    with ctx.timed("train", "build"):
        fw.set_weights(model, data.weights)
    losses, pred = _train(ctx, "train", model, data.x, data.y, epochs)
    _put_training(ctx, "train", model, losses, pred, data.y)
    _put_oracle_training(ctx, "train", model, list(data.weights), data.x, data.y, epochs)


def _unseeded(ctx: ScenarioContext, data: MlpData, epochs: int) -> None:
    """The tutorial's other answer: repeat without seeds, report the spread."""
    fw = ctx.fw
    mses = []
    for _ in range(ctx.settings.unseeded_repeats):
        fw.clear()
        fw.scramble_seeds()
        model = build_mlp(ctx, "unseeded")
        _, pred = _train(ctx, "unseeded", model, data.x, data.y, epochs)
        mses.append(ref.mse(pred, data.y))
    ctx.data["unseeded"] = {
        "repeats": len(mses),
        "mse": mses,
        "mean": statistics.fmean(mses) if mses else None,
        "std": statistics.stdev(mses) if len(mses) > 1 else None,
        "seeding": "fresh OS entropy for Python random, NumPy and the backend before each repeat",
    }


@scenario(
    "seeded_mlp",
    phases=("canonical", "init", "seeded_train", "forward", "train", "unseeded"),
    summary="the tutorial's seeded MLP: Dense(10, input_dim=1) + Dense(1), MSE, Adam, 100 epochs",
)
def run(ctx: ScenarioContext) -> None:
    data = mlp_data()
    epochs = ctx.epochs(EPOCHS)
    ctx.data["epochs"] = epochs
    for name, value in data.tensors().items():
        ctx.put("canonical", name, value)
    ctx.maybe_fail()
    with ctx.phase("seeded_train"):
        _seeded(ctx, data, epochs)
    with ctx.phase("forward"):
        _forward(ctx, data)
    with ctx.phase("train"):
        _canonical_train(ctx, data, epochs)
    with ctx.phase("unseeded"):
        _unseeded(ctx, data, epochs)
