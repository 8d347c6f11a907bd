"""Your model and the portability scenario for real: `python -m matrix run`
with the venv executor on a Keras 2 stack (tf-2.15) and Keras 3 stacks
(tf-2.16, keras-3.15-jax), and the runner alone where a case needs no matrix.

What is asserted holds for any model and any version: keys follow the
model's own layers, shapes follow the inputs, the same weights file reads
the same bits everywhere, an environment reads back what it saved, and
whatever a version cannot do is recorded with its error, never raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from matrix.plan.stacks import load_catalog

pytestmark = pytest.mark.frameworks

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "timeseries"
MANIFEST_SCHEMA = json.loads((ROOT / "scenarios" / "manifest.schema.json").read_text())
REPORT_SCHEMA = json.loads((ROOT / "matrix" / "report" / "report.schema.json").read_text())
CATALOG = load_catalog()
RANK = {"identical": 0, "rounding": 1, "drift": 2, "divergent": 3}


def spec(tmp_path: Path, stacks: Sequence[str], scenarios: Sequence[str] = ()) -> Path:
    path = tmp_path / "spec.toml"
    text = f"[matrix]\nname = 'test'\nrepeats = 1\n[axes]\nstack = {list(stacks)!r}\n"
    if scenarios:
        text += f"[runner]\nscenarios = {list(scenarios)!r}\n"
    path.write_text(text)
    return path


def matrix_run(
    stack_python: Callable[[str], Path], stacks: Sequence[str], results: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    for stack in stacks:
        stack_python(stack)  # provisioned (or a failure), never skipped
    argv = ["run", "--executor", "venv", "--jobs", "2", "--results", str(results), *args]
    proc = subprocess.run(
        [sys.executable, "-m", "matrix", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=1200,
    )
    return proc


def manifest(directory: Path) -> dict[str, Any]:
    data = json.loads((directory / "manifest.json").read_text())
    jsonschema.validate(data, MANIFEST_SCHEMA)
    return data


def tensors(directory: Path) -> dict[str, np.ndarray]:
    with np.load(directory / "tensors.npz") as npz:
        return {k: npz[k] for k in npz.files}


def report(results: Path) -> dict[str, Any]:
    data = json.loads((results / "report" / "report.json").read_text())
    jsonschema.validate(data, REPORT_SCHEMA)
    return data


def samples(path: Path) -> int:
    with np.load(path) as npz:
        return int(npz[npz.files[0]].shape[0])


# ---- your model ------------------------------------------------------------------

USER_STACKS = ("tf-2.15", "tf-2.16", "keras-3.15-jax")
STEPS = 3


def test_weights_and_builder_across_keras_2_and_3(
    stack_python: Callable[[str], Path], tmp_path: Path
) -> None:
    results = tmp_path / "results"
    proc = matrix_run(
        stack_python,
        USER_STACKS,
        results,
        "--spec", str(spec(tmp_path, USER_STACKS)),
        "--model", str(EXAMPLE / "model.weights.h5"),
        "--builder", str(EXAMPLE / "builder.py"),
        "--inputs", str(EXAMPLE / "inputs.npz"),
        "--targets", str(EXAMPLE / "targets.npz"),
        "--train-steps", str(STEPS),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = samples(EXAMPLE / "inputs.npz")
    loaded: dict[str, dict[str, np.ndarray]] = {}
    for stack in USER_STACKS:
        cell = results / f"{stack}__cpu"
        entry = manifest(cell)["scenarios"]["user_model"]
        # Loading weights into the model the builder makes is the portable
        # path: every version takes it.
        assert entry["status"] == "ok", entry["error"]
        layers = entry["data"]["layers"]
        t = tensors(cell)
        forward = sorted(k for k in t if k.startswith("user_model/forward/layer_"))
        assert forward == [
            f"user_model/forward/layer_{i:02d}_{name}" for i, name in enumerate(layers)
        ]
        assert t["user_model/forward/predictions"].shape[0] == n
        np.testing.assert_array_equal(
            t["user_model/forward/predictions"], t[forward[-1]]
        )  # predict and the last layer agree in one cell
        loss = t["user_model/train/loss"]
        assert loss.shape == (STEPS,) and np.isfinite(loss).all()
        load = {k.split("/")[-1]: v for k, v in t.items() if k.startswith("user_model/load/")}
        train = {k.split("/")[-1] for k in t if k.startswith("user_model/train/")}
        assert set(load) <= train and load
        loaded[stack] = load
    # The same file reads the same bits in every version.
    first = loaded[USER_STACKS[0]]
    for stack in USER_STACKS[1:]:
        assert loaded[stack].keys() == first.keys()
        for name in first:
            np.testing.assert_array_equal(loaded[stack][name], first[name], err_msg=stack)
    found = report(results)
    for comp in found["comparisons"]:
        if comp["kind"] != "reference":
            continue
        phases = {p["phase"]: p for p in comp["phases"]}
        assert phases["load"]["verdict"] == "identical"
        # Same weights, same inputs: versions may round differently, never diverge.
        assert RANK[phases["forward"]["verdict"]] <= RANK["drift"], comp["candidate"]
        assert phases["forward"]["localisation"]["layers"] == len(layers)


def test_a_model_file_a_version_cannot_read_is_a_recorded_failure(
    stack_python: Callable[[str], Path], tmp_path: Path
) -> None:
    stacks = ("tf-2.15", "keras-3.15-jax")
    results = tmp_path / "results"
    proc = matrix_run(
        stack_python,
        stacks,
        results,
        "--spec", str(spec(tmp_path, stacks)),
        "--model", str(EXAMPLE / "model.h5"),
        "--inputs", str(EXAMPLE / "inputs.npz"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    saver = manifest(results / "tf-2.15__cpu")["scenarios"]["user_model"]
    assert saver["status"] == "ok", saver["error"]  # the version that wrote it reads it
    other = manifest(results / "keras-3.15-jax__cpu")["scenarios"]["user_model"]
    assert other["status"] in ("ok", "failed", "unsupported")
    if other["status"] != "ok":
        assert other["error"]["type"] and other["error"]["message"]
        md = (results / "report" / "report.md").read_text()
        assert "keras-3.15-jax" in md and other["error"]["type"] in md


def runner(
    stack_python: Callable[[str], Path], stack: str, out: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(stack_python(stack)), "-m", "scenarios", "--out", str(out), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **CATALOG[stack].env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=600,
    )


def test_inputs_that_do_not_fit_fail_the_cell_not_the_run(
    stack_python: Callable[[str], Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, series=np.zeros((4, 7, 3), np.float32))  # the model takes (batch, 24, 1)
    out = tmp_path / "cell"
    proc = runner(
        stack_python, "tf-2.15", out,
        "--scenarios", "user_model",
        "--user-model", str(EXAMPLE / "model.h5"),
        "--user-inputs", str(bad),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = manifest(out)["scenarios"]["user_model"]
    assert entry["status"] == "failed"
    assert entry["error"]["message"]
    assert "user_model/forward/predictions" not in tensors(out)


SCENARIO_MODULE = """
import numpy as np

from scenarios.context import ScenarioContext
from scenarios.contract import scenario
from scenarios.models import forward_layers, layer_names


@scenario("tiny_dense", phases=("forward",), summary="a Dense stack with fixed weights")
def run(ctx: ScenarioContext) -> None:
    keras = ctx.fw.keras
    layers = [keras.layers.Dense(4, name="hidden"), keras.layers.Dense(1, name="out")]
    model = keras.Sequential([keras.Input(shape=(3,)), *layers])
    rs = np.random.RandomState(0)
    model.set_weights([rs.uniform(-1, 1, w.shape).astype("float32") for w in model.get_weights()])
    x = rs.uniform(-1, 1, (8, 3)).astype("float32")
    outs = forward_layers(ctx, model, x, phase="forward", batch_size=8)
    for key, out in zip(layer_names(model), outs):
        ctx.put("forward", key, out)
"""


def test_a_scenario_module_runs_like_a_built_in_one(
    stack_python: Callable[[str], Path], tmp_path: Path
) -> None:
    module = tmp_path / "tiny.py"
    module.write_text(SCENARIO_MODULE)
    stacks = ("tf-2.15", "keras-3.15-jax")
    results = tmp_path / "results"
    proc = matrix_run(
        stack_python,
        stacks,
        results,
        "--spec",
        str(spec(tmp_path, stacks)),
        "--scenario",
        str(module),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stack in stacks:
        cell = results / f"{stack}__cpu"
        assert manifest(cell)["scenarios"]["tiny_dense"]["status"] == "ok"
        keys = sorted(tensors(cell))
        assert keys == ["tiny_dense/forward/layer_00_hidden", "tiny_dense/forward/layer_01_out"]
    (comp,) = [
        c
        for c in report(results)["comparisons"]
        if c["kind"] == "reference" and c["candidate"] != c["baseline"]
    ]
    (phase,) = comp["phases"]
    assert phase["column"] == "tiny_dense/forward" and phase["localisation"]["layers"] == 2


def test_a_scenario_module_that_raises_on_import_is_a_recorded_failure(
    stack_python: Callable[[str], Path], tmp_path: Path
) -> None:
    module = tmp_path / "broken.py"
    module.write_text(SCENARIO_MODULE + "\nraise RuntimeError('broken on purpose')\n")
    out = tmp_path / "cell"
    proc = runner(
        stack_python, "tf-2.15", out,
        "--scenarios", "tiny_dense", "--user-scenario", str(module),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = manifest(out)["scenarios"]["tiny_dense"]
    assert entry["status"] == "failed"
    assert "broken on purpose" in entry["error"]["message"]


# ---- saved here, loaded there --------------------------------------------------------

PORTABILITY_STACKS = ("tf-2.15", "tf-2.16")


def test_portability_saved_in_loaded_in(
    stack_python: Callable[[str], Path], tmp_path: Path
) -> None:
    results = tmp_path / "results"
    path = spec(tmp_path, PORTABILITY_STACKS, ["portability"])
    proc = matrix_run(stack_python, PORTABILITY_STACKS, results, "--spec", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = [f"{s}__cpu" for s in PORTABILITY_STACKS]
    for cell in cells:
        one = manifest(results / cell)
        saved = one["scenarios"]["portability"]["data"]["saved"]
        for fmt, models in saved.items():
            for model, record in models.items():
                if record["status"] == "ok":
                    # every saved file is in the artifact, listed with its sha256
                    assert any(f.startswith(record["file"]) for f in one["files"]), (fmt, model)
                else:
                    assert record["error"]["message"]
        two = manifest(results / cell / "stage-2")
        assert two["scenarios"]["portability"]["data"]["sources"] == cells
    matrices = report(results)["portability"]
    assert {m["format"] for m in matrices} == {"keras", "h5", "weights_h5", "savedmodel"}
    for m in matrices:
        assert m["cells"] == cells
        saved_ok = {(s["cell"], s["model"]) for s in m["saved"] if s["status"] == "ok"}
        for load in m["loads"]:
            where = (m["format"], load["saved_in"], load["loaded_in"], load["model"])
            if load["status"] == "loaded":
                assert load["verdict"] in RANK, where
            else:
                assert load["reason"], where  # the error, never a silent gap
            if (
                load["saved_in"] == load["loaded_in"]
                and (load["saved_in"], load["model"]) in saved_ok
            ):
                # an environment reads back what it wrote, to the bit
                assert (load["status"], load["verdict"]) == ("loaded", "identical"), where
    again = matrix_run(stack_python, PORTABILITY_STACKS, results, "--spec", str(path))
    assert "0 ran, 4 reused from the cache" in again.stderr, again.stderr[-2000:]
