"""portability: a model saved in one environment, loaded in another.

Stage one saves the canonical MLP and the stateful LSTM, with their canonical
weights and states reset, in every format this version can write, into the
artifact (``files/portability/<format>/<model><suffix>``), and predicts fixed
inputs with the model it saved (phase ``saved``). Stage two loads the files
of every source cell (``--sources``, read-only) in each format, as a user of
this version would, and predicts the same inputs (phase ``loaded``). The host
compares each loaded prediction with the saving cell's own: the report's
"saved in -> loaded in" matrix.

A format this version cannot write or read at all is ``unsupported`` with
the reason; any other error is ``failed`` with the exact error. Neither
stops the other formats, models or sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.canonical import INIT_SEED, LSTM_SHAPE, lstm_data, mlp_data
from scenarios.context import ScenarioContext, Unsupported, error_record
from scenarios.contract import scenario
from scenarios.models import build_lstm, build_mlp

__all__ = ["FORMATS", "MODELS", "run", "run_stage_two"]

#: format -> file suffix (a SavedModel is a directory). Order: the report's.
FORMATS = {"keras": ".keras", "h5": ".h5", "weights_h5": ".weights.h5", "savedmodel": ""}
MODELS = ("mlp", "lstm")
#: Lines of traceback kept per failed save or load: there can be hundreds of loads.
TRACEBACK_LINES = 8
_MAGIC = {b"PK\x03\x04": "zip", b"\x89HDF\r\n\x1a\n": "hdf5"}


@dataclass(frozen=True, kw_only=True)
class Canonical:
    build: Callable[[ScenarioContext, str], Any]  # the architecture, compiled
    weights: tuple[np.ndarray, ...]
    x: np.ndarray
    batch_size: int


def canonical(name: str) -> Canonical:
    if name == "mlp":
        mlp = mlp_data()
        return Canonical(
            build=build_mlp, weights=mlp.weights, x=mlp.forward_x, batch_size=len(mlp.forward_x)
        )
    lstm = lstm_data()
    return Canonical(
        build=lambda ctx, phase: build_lstm(ctx, phase, stateful=True),
        weights=lstm.weights,
        x=lstm.x,
        batch_size=LSTM_SHAPE.batch_size,
    )


def file_path(root: Path, fmt: str, model: str) -> Path:
    return root / fmt / f"{model}{FORMATS[fmt]}"


def _error(exc: BaseException) -> dict[str, str]:
    record = error_record(exc)
    record["traceback"] = "\n".join(record["traceback"].splitlines()[-TRACEBACK_LINES:])
    return record


def _container(path: Path) -> str:
    """What a save wrote: TF 2.12 writes HDF5 under a .keras name, for one."""
    if path.is_dir():
        return "directory"
    with open(path, "rb") as fh:
        head = fh.read(8)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), "other")


def _predict(ctx: ScenarioContext, model: Any, c: Canonical, phase: str) -> np.ndarray:
    fw = ctx.fw
    fw.reset_states(model)
    with ctx.timed(phase, "predict"):
        return np.asarray(fw.predict(model, c.x, batch_size=c.batch_size))


def _save_all(ctx: ScenarioContext, model: Any, name: str, root: Path) -> dict[str, Any]:
    saved: dict[str, Any] = {}
    for fmt in FORMATS:
        path = file_path(root, fmt, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with ctx.timed("saved", "save"):
                how = ctx.fw.save(model, fmt, path)
        except Unsupported as exc:
            saved[fmt] = {"status": "unsupported", "error": _error(exc)}
        except Exception as exc:  # broad on purpose: a format that fails is the finding
            saved[fmt] = {"status": "failed", "error": _error(exc)}
        else:
            saved[fmt] = {
                "status": "ok",
                "how": how,
                "file": path.relative_to(root.parent).as_posix(),
                "container": _container(path),
            }
    return saved


@scenario(
    "portability",
    phases=("saved",),
    summary="the canonical MLP and stateful LSTM saved in every format this version writes",
    default=False,
)
def run(ctx: ScenarioContext) -> None:
    fw, root = ctx.fw, ctx.file_dir()
    by_format: dict[str, dict[str, Any]] = {fmt: {} for fmt in FORMATS}
    ctx.maybe_fail()
    for name in MODELS:
        c = canonical(name)
        fw.clear()
        model = c.build(ctx, "saved")
        fw.set_weights(model, c.weights)
        # Saved with zero states, as a fresh model is: a stateful model saved
        # after a prediction would carry that prediction's states with it.
        fw.reset_states(model)
        for fmt, record in _save_all(ctx, model, name, root).items():
            by_format[fmt][name] = record
        ctx.put("saved", f"{name}_predictions", _predict(ctx, model, c, "saved"))
    ctx.data["formats"] = list(FORMATS)
    ctx.data["models"] = list(MODELS)
    ctx.data["saved"] = by_format


def _batches(fn: Callable[[np.ndarray], Any], c: Canonical) -> np.ndarray:
    """A loaded function (no Keras model) on every batch in order, as predict would."""
    outs = []
    for start in range(0, len(c.x), c.batch_size):
        out = fn(c.x[start : start + c.batch_size])
        outs.append(np.asarray(out.numpy() if hasattr(out, "numpy") else out))
    return np.concatenate(outs)


def load_and_predict(ctx: ScenarioContext, fmt: str, name: str, path: Path) -> tuple[Any, str]:
    """Load one saved file as a user of this version would; predict the canonical inputs."""
    fw, c = ctx.fw, canonical(name)
    with ctx.timed("loaded", "load"):
        if fmt in ("keras", "h5"):
            loaded, how = fw.load_model(path), "keras.models.load_model"
        elif fmt == "weights_h5":
            # A seeded fresh model: a load that silently keeps some initial
            # weights gives the same (wrong) numbers in every run.
            fw.seed_all(INIT_SEED)
            loaded, how = c.build(ctx, "loaded"), "model.load_weights"
            loaded.load_weights(str(path))
        else:
            loaded, how = fw.load_savedmodel(path)
    if hasattr(loaded, "predict"):
        return _predict(ctx, loaded, c, "loaded"), how
    with ctx.timed("loaded", "predict"):
        return _batches(loaded, c), how


@scenario(
    "portability",
    phases=("loaded",),
    summary="every source cell's saved files loaded here, each format, the same inputs",
    stage=2,
)
def run_stage_two(ctx: ScenarioContext) -> None:
    sources = ctx.settings.sources or {}
    loads: list[dict[str, Any]] = []
    for n, (cell_id, directory) in enumerate(sources.items()):
        root = Path(directory) / "portability"
        for fmt in FORMATS:
            for name in MODELS:
                path = file_path(root, fmt, name)
                if not path.exists():
                    continue  # not written there: the source's own manifest says why
                entry: dict[str, Any] = {"source": cell_id, "format": fmt, "model": name}
                ctx.fw.clear()
                try:
                    prediction, how = load_and_predict(ctx, fmt, name, path)
                except Unsupported as exc:
                    entry.update(status="unsupported", error=_error(exc))
                except Exception as exc:  # broad on purpose: a failed load is the finding
                    entry.update(status="failed", error=_error(exc))
                else:
                    key = f"s{n:03d}_{fmt}_{name}"
                    ctx.put("loaded", key, prediction)
                    entry.update(status="ok", how=how, tensor=f"{ctx.name}/loaded/{key}")
                loads.append(entry)
    ctx.data["sources"] = list(sources)
    ctx.data["loads"] = loads
