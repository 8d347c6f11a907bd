"""user_model: your own model, loaded from your file, in every cell.

Phases:

* ``load``: the weights as this version read them from the file (keys
  ``<layer>_<variable>``): a version that reads a weight differently shows
  here before any arithmetic.
* ``forward``: every layer's output for your inputs (``layer_NN_<name>``,
  input layers left out), so the report names the first layer that drifts,
  and ``predictions`` from ``model.predict``.
* ``train`` (``--train-steps N`` with targets): N steps of plain SGD
  (learning rate 0.01, no momentum) from the loaded weights, one batch per
  step in order, with the loss the host found in the file's compile config
  (else ``--loss``, default mse): ``loss`` per step, the weights after,
  ``predictions`` after. SGD keeps no state and has no epsilon, so two
  versions differ here only by the arithmetic of the steps themselves.

The files are the host's read-only copy, named by format: ``model.keras``,
``model.h5``, ``model.weights.h5`` (with a builder module) or a SavedModel
directory. A format this version cannot read at all (a SavedModel without
TensorFlow) makes the scenario ``unsupported``; any other error, including
inputs that do not fit the model, fails it with the exact error.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.context import ScenarioContext
from scenarios.contract import scenario

__all__ = ["LEARNING_RATE", "run"]

LEARNING_RATE = 0.01


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz, never unpickling (the host checked it too)."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: np.asarray(npz[name]) for name in npz.files}


def as_model_input(arrays: dict[str, np.ndarray]) -> Any:
    """One array as it is; several by the names of the model's inputs."""
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    return dict(arrays)


def _take(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def _samples(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, dict) else x
    return int(first.shape[0])


def _builder(ctx: ScenarioContext, path: str) -> Any:
    """The user's build() (or build(keras), given this environment's Keras)."""
    spec = importlib.util.spec_from_file_location("krm_user_builder", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build = getattr(module, "build", None)
    if not callable(build):
        raise AttributeError(f"{path} defines no build() function")
    takes_keras = len(inspect.signature(build).parameters) >= 1
    return build(ctx.fw.keras) if takes_keras else build()


def load(ctx: ScenarioContext, path: Path, builder: str | None, x: Any) -> tuple[Any, str]:
    """The user's model as a user of this version loads it, and how."""
    fw = ctx.fw
    if path.is_dir():
        model, how = fw.load_savedmodel(path)
        return model, how
    if builder is not None:
        # A weights file: Keras picks its reader by the name (.weights.h5 or .h5).
        model = _builder(ctx, builder)
        if not model.built:
            # A model built without an input shape gets its variables on the first call.
            model(_take(x, 0, 1))
        model.load_weights(str(path))
        return model, "build() + model.load_weights"
    return fw.load_model(path), "keras.models.load_model"


def _named_weights(ctx: ScenarioContext, model: Any) -> list[tuple[str, np.ndarray]]:
    """``<layer>_<variable>`` per weight, numbered where a layer repeats a name."""
    seen: dict[str, int] = {}
    out = []
    for name, value in ctx.fw.get_weights(model):
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}_{seen[name]}", value))
    return out


def _predict(ctx: ScenarioContext, model: Any, x: Any, batch_size: int, phase: str) -> np.ndarray:
    fw = ctx.fw
    if not hasattr(model, "predict"):  # a SavedModel function (Keras 3): no layers
        outs = []
        for start in range(0, _samples(x), batch_size):
            out = model(_take(x, start, start + batch_size))
            outs.append(np.asarray(out.numpy() if hasattr(out, "numpy") else out))
        return np.concatenate(outs)
    fw.reset_states(model)
    with ctx.timed(phase, "predict"):
        return np.asarray(fw.predict(model, x, batch_size=batch_size))


def _forward(ctx: ScenarioContext, model: Any, x: Any, batch_size: int) -> None:
    fw = ctx.fw
    if hasattr(model, "layers"):
        layers = fw.output_layers(model)
        try:
            probe = fw.outputs_model(model, layers)
        except Exception as exc:  # broad on purpose: a model without a graph still predicts
            ctx.note(f"per-layer outputs unavailable: {type(exc).__name__}: {exc}"[:400])
        else:
            fw.reset_states(model)
            with ctx.timed("forward", "predict"):
                outs = fw.predict(probe, x, batch_size=batch_size)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            names = [f"layer_{i:02d}_{layer.name}" for i, layer in enumerate(layers)]
            for key, out in zip(names, outs, strict=True):
                ctx.put("forward", key, out)
    else:
        ctx.note("a SavedModel read as a function: predictions only, no per-layer outputs")
    ctx.put("forward", "predictions", _predict(ctx, model, x, batch_size, "forward"))


def _train(ctx: ScenarioContext, model: Any, x: Any, y: Any, batch_size: int) -> None:
    fw, s = ctx.fw, ctx.settings
    if not hasattr(model, "train_on_batch"):
        raise TypeError("this model was read as a function (SavedModel in Keras 3): not trainable")
    kwargs: dict[str, Any] = {"optimizer": fw.sgd(LEARNING_RATE), "loss": s.loss}
    if s.jit != "default":
        kwargs["jit_compile"] = s.jit == "on"
    with ctx.timed("train", "compile"):
        model.compile(**kwargs)
    ctx.observed_jit.append(fw.effective_jit(model))
    n = _samples(x)
    batches = max(1, n // batch_size) if fw.fixed_batch_size(model) else -(-n // batch_size)
    losses = []
    fw.reset_states(model)
    with ctx.timed("train", "fit"):
        for step in range(s.train_steps):
            start = (step % batches) * batch_size
            stop = start + batch_size
            losses.append(fw.train_step(model, _take(x, start, stop), _take(y, start, stop)))
    ctx.put("train", "loss", np.asarray(losses, dtype=np.float64))
    for name, value in _named_weights(ctx, model):
        ctx.put("train", name, value)
    ctx.put("train", "predictions", _predict(ctx, model, x, batch_size, "train"))


@scenario(
    "user_model",
    phases=("load", "forward", "train"),
    summary="your model from your file: weights as read, every layer's output, N SGD steps",
    needs="user_model",
)
def run(ctx: ScenarioContext) -> None:
    s = ctx.settings
    path = Path(s.user_model)
    x = as_model_input(read_arrays(s.user_inputs))
    ctx.data["file"] = path.name
    ctx.maybe_fail()
    ctx.fw.clear()
    with ctx.timed("load", "build"):
        model, how = load(ctx, path, s.user_builder, x)
    ctx.data["loaded_with"] = how
    fixed = ctx.fw.fixed_batch_size(model) if hasattr(model, "inputs") else None
    batch_size = fixed or s.batch_size
    ctx.data["batch_size"] = batch_size
    if hasattr(model, "layers"):
        ctx.data["layers"] = [layer.name for layer in ctx.fw.output_layers(model)]
        with ctx.phase("load"):
            for name, value in _named_weights(ctx, model):
                ctx.put("load", name, value)
    with ctx.phase("forward"):
        _forward(ctx, model, x, batch_size)
    if s.train_steps:
        ctx.data["train"] = {
            "steps": s.train_steps,
            "optimizer": f"SGD(learning_rate={LEARNING_RATE})",
            "loss": s.loss,
        }
        with ctx.phase("train"):
            y = as_model_input(read_arrays(s.user_targets))
            _train(ctx, model, x, y, batch_size)
