"""The host's checks of --model / --scenario and their files: no framework, no
Docker. Each bad input is one line and exit 12, before anything is built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from matrix.errors import UserInputError
from matrix.user.check import check_user
from matrix.user.keras_config import _LOSS_SPELLINGS, HDF5_SIGNATURE, file_kind, read_model_info
from scenarios.contract import OPTIONS

GRU_CONFIG: dict[str, Any] = {
    "class_name": "Sequential",
    "config": {
        "name": "sequential",
        "layers": [
            {
                "class_name": "InputLayer",
                "config": {"batch_input_shape": [None, 10, 1], "name": "series"},
            },
            {"class_name": "GRU", "config": {"name": "gru", "units": 4}},
        ],
    },
}
ROOT = Path(__file__).resolve().parent.parent
TWO_INPUTS: dict[str, Any] = {
    "class_name": "Functional",
    "config": {
        "name": "model",
        "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 3], "name": "a"}},
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 2], "name": "b"}},
        ],
        "input_layers": [["a", 0, 0], ["b", 0, 0]],
    },
}


def keras_file(path: Path, config: dict[str, Any], loss: Any = "mae") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", json.dumps({**config, "compile_config": {"loss": loss}}))
        zf.writestr("model.weights.h5", HDF5_SIGNATURE + b"\0" * 64)
    return path


def h5_file(path: Path, config: dict[str, Any] | None = GRU_CONFIG, loss: str = "mse") -> Path:
    """HDF5 bytes with the two JSON attributes where h5py leaves them: inline."""
    body = HDF5_SIGNATURE + b"\0" * 200
    if config is not None:
        body += json.dumps(config).encode() + b"\0" * 16
    body += json.dumps({"loss": loss, "metrics": None}).encode() + b"\0" * 32
    path.write_bytes(body)
    return path


def npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    return npz(tmp_path / "x.npz", series=np.zeros((8, 10, 1), np.float32))


def fails(match: str, **kwargs: Any) -> UserInputError:
    with pytest.raises(UserInputError, match=match) as info:
        check_user(**kwargs)
    assert info.value.exit_code == 12
    assert "\n" not in info.value.message
    return info.value


# ---- the model file ---------------------------------------------------------------


def test_no_user_option_is_no_user_run() -> None:
    assert check_user() is None


def test_missing_model(tmp_path: Path, inputs: Path) -> None:
    fails("no such file", model=tmp_path / "nope.keras", inputs=inputs)


def test_a_file_that_is_no_model(tmp_path: Path, inputs: Path) -> None:
    text = tmp_path / "model.keras"
    text.write_text("not a model")
    fails("not a Keras model", model=text, inputs=inputs)


def test_a_zip_that_is_no_keras_model(tmp_path: Path, inputs: Path) -> None:
    fails("no config.json", model=inputs, inputs=inputs)


def test_a_directory_that_is_no_savedmodel(tmp_path: Path, inputs: Path) -> None:
    (tmp_path / "empty").mkdir()
    fails("no SavedModel", model=tmp_path / "empty", inputs=inputs)


def test_a_savedmodel_directory(tmp_path: Path, inputs: Path) -> None:
    saved = tmp_path / "export"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"\x08\x01")
    run = check_user(model=saved, inputs=inputs)
    assert run is not None and run.files[0].name == "model"


def test_a_keras_file_is_read_as_model_keras(tmp_path: Path, inputs: Path) -> None:
    run = check_user(model=keras_file(tmp_path / "m.keras", GRU_CONFIG), inputs=inputs)
    assert run is not None
    assert run.scenarios == ("user_model",)
    assert [(f.option, f.name) for f in run.files] == [
        ("user_model", "model.keras"),
        ("user_inputs", "inputs.npz"),
    ]


def test_hdf5_under_a_keras_name_is_read_as_h5(tmp_path: Path, inputs: Path) -> None:
    # TensorFlow 2.12 writes HDF5 for model.save("m.keras").
    run = check_user(model=h5_file(tmp_path / "m.keras"), inputs=inputs)
    assert run is not None and run.files[0].name == "model.h5"
    assert any("HDF5" in note for note in run.notes)


def test_weights_need_a_builder(tmp_path: Path, inputs: Path) -> None:
    weights = h5_file(tmp_path / "m.weights.h5", config=None)
    fails("--builder", model=weights, inputs=inputs)
    builder = tmp_path / "builder.py"
    builder.write_text("def build(keras):\n    return keras.Sequential()\n")
    run = check_user(model=weights, builder=builder, inputs=inputs)
    assert run is not None
    assert {f.name for f in run.files} == {"model.weights.h5", "builder.py", "inputs.npz"}


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("def build(:\n", "line 1"),
        ("x = 1\n", "no top-level build"),
        ("def build(a, b):\n    pass\n", "one: the keras module"),
    ],
)
def test_a_builder_that_cannot_be_used(
    tmp_path: Path, inputs: Path, source: str, match: str
) -> None:
    builder = tmp_path / "builder.py"
    builder.write_text(source)
    fails(match, model=h5_file(tmp_path / "m.weights.h5"), builder=builder, inputs=inputs)


def test_a_builder_with_a_model_file_is_refused(tmp_path: Path, inputs: Path) -> None:
    builder = tmp_path / "builder.py"
    builder.write_text("def build():\n    pass\n")
    fails(
        "goes with a .weights.h5",
        model=keras_file(tmp_path / "m.keras", GRU_CONFIG),
        builder=builder,
        inputs=inputs,
    )


# ---- inputs and targets -----------------------------------------------------------


def test_model_needs_inputs(tmp_path: Path) -> None:
    fails("needs --inputs", model=keras_file(tmp_path / "m.keras", GRU_CONFIG))


def test_inputs_that_do_not_fit_the_models_config(tmp_path: Path) -> None:
    model = keras_file(tmp_path / "m.keras", GRU_CONFIG)
    bad = npz(tmp_path / "x.npz", series=np.zeros((8, 12, 1), np.float32))
    error = fails("takes shape", model=model, inputs=bad)
    assert "(batch, 10, 1)" in error.message and "(8, 12, 1)" in error.message


def test_inputs_checked_against_an_h5_config_too(tmp_path: Path) -> None:
    bad = npz(tmp_path / "x.npz", series=np.zeros((8, 10), np.float32))
    fails("takes shape", model=h5_file(tmp_path / "m.h5"), inputs=bad)


def test_multiple_inputs_by_name(tmp_path: Path) -> None:
    model = keras_file(tmp_path / "m.keras", TWO_INPUTS)
    good = npz(tmp_path / "x.npz", a=np.zeros((4, 3)), b=np.zeros((4, 2)))
    assert check_user(model=model, inputs=good) is not None
    wrong = npz(tmp_path / "y.npz", x=np.zeros((4, 3)), b=np.zeros((4, 2)))
    fails("name each array after its input", model=model, inputs=wrong)


def test_an_npz_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    hostile = np.empty(1, dtype=object)
    hostile[0] = _Trap(str(marker))
    path = tmp_path / "x.npz"
    np.savez(path, series=hostile)
    fails("pickled", model=keras_file(tmp_path / "m.keras", GRU_CONFIG), inputs=path)
    assert not marker.exists()


class _Trap:
    """Unpickling it creates a file: proof that nobody unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"series": np.array(["a", "b"])}, "dtype"),
        ({"series": np.zeros((0, 10, 1))}, "no samples"),
        ({"a": np.zeros((3, 10, 1)), "b": np.zeros((4, 10, 1))}, "number of samples"),
    ],
)
def test_inputs_that_are_not_usable(tmp_path: Path, arrays: dict[str, Any], match: str) -> None:
    model = keras_file(tmp_path / "m.keras", GRU_CONFIG)
    fails(match, model=model, inputs=npz(tmp_path / "x.npz", **arrays))


def test_inputs_that_are_no_npz(tmp_path: Path) -> None:
    text = tmp_path / "x.npz"
    text.write_text("1,2,3")
    fails("not an .npz", model=keras_file(tmp_path / "m.keras", GRU_CONFIG), inputs=text)


def test_training_options_go_together(tmp_path: Path, inputs: Path) -> None:
    model = keras_file(tmp_path / "m.keras", GRU_CONFIG)
    y = npz(tmp_path / "y.npz", y=np.zeros((8, 1)))
    fails("needs --targets", model=model, inputs=inputs, train_steps=3)
    fails("add --train-steps", model=model, inputs=inputs, targets=y)
    fails("--loss is only used for training", model=model, inputs=inputs, loss="mae")
    fails("from 1", model=model, inputs=inputs, targets=y, train_steps=0)
    short = npz(tmp_path / "short.npz", y=np.zeros((5, 1)))
    fails("5 samples", model=model, inputs=inputs, targets=short, train_steps=3)


def test_training_takes_the_models_own_loss(tmp_path: Path, inputs: Path) -> None:
    y = npz(tmp_path / "y.npz", y=np.zeros((8, 1)))
    run = check_user(
        model=keras_file(tmp_path / "m.keras", GRU_CONFIG, loss="mae"),
        inputs=inputs,
        targets=y,
        train_steps=3,
    )
    assert run is not None and run.options == {"train_steps": "3", "loss": "mae"}
    serialised = {"class_name": "MeanSquaredError", "config": {"reduction": "sum_over_batch_size"}}
    run = check_user(
        model=keras_file(tmp_path / "k.keras", GRU_CONFIG, loss=serialised),
        inputs=inputs,
        targets=y,
        train_steps=3,
    )
    assert run is not None and run.options["loss"] == "mse"
    logits = {"class_name": "BinaryCrossentropy", "config": {"from_logits": True}}
    run = check_user(
        model=keras_file(tmp_path / "l.keras", GRU_CONFIG, loss=logits),
        inputs=inputs,
        targets=y,
        train_steps=3,
    )
    assert run is not None and run.options["loss"] == "mse"
    assert any("uses mse" in note for note in run.notes)
    run = check_user(
        model=h5_file(tmp_path / "m.h5", loss="mean_absolute_error"),
        inputs=inputs,
        targets=y,
        train_steps=2,
        loss="huber",
    )
    assert run is not None and run.options["loss"] == "huber"  # --loss wins


def test_the_loss_spellings_cover_the_runners_choices() -> None:
    choices = next(o for o in OPTIONS if o.name == "loss").choices
    assert tuple(_LOSS_SPELLINGS) == choices


def test_model_info_of_a_real_looking_h5(tmp_path: Path) -> None:
    path = h5_file(tmp_path / "m.h5", loss="mae")
    assert file_kind(path) == "hdf5"
    info = read_model_info(path, "hdf5")
    assert info is not None and info.loss == "mae"
    assert info.inputs is not None and info.inputs[0].shape == (None, 10, 1)


# ---- scenario modules ----------------------------------------------------------------

GOOD_MODULE = """
from scenarios.contract import scenario

@scenario("my_gru", phases=("forward",), summary="mine")
def run(ctx):
    ctx.put("forward", "output", [1.0])
"""


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("def run(ctx:\n", "line 1"),
        ("def run(ctx):\n    pass\n", "defines no scenario"),
        (GOOD_MODULE.replace('"my_gru"', "NAME"), "string literal"),
        (GOOD_MODULE.replace("my_gru", "seeded_mlp"), "built-in scenario"),
        (GOOD_MODULE.replace("my_gru", "My-GRU"), "lower case"),
        (GOOD_MODULE.replace(', summary="mine"', ""), "needs phases and summary"),
        (GOOD_MODULE.replace("def run(ctx)", "def run()"), "one argument"),
    ],
)
def test_scenario_modules_that_cannot_be_used(tmp_path: Path, source: str, match: str) -> None:
    module = tmp_path / "mine.py"
    module.write_text(source)
    fails(match, scenario=module)


def test_a_scenario_module(tmp_path: Path) -> None:
    module = tmp_path / "mine.py"
    module.write_text(GOOD_MODULE)
    run = check_user(scenario=module)
    assert run is not None and run.scenarios == ("my_gru",)
    assert run.files[0].name == "scenario.py" and run.label == "mine"


def test_options_that_do_not_go_together(tmp_path: Path, inputs: Path) -> None:
    module = tmp_path / "mine.py"
    module.write_text(GOOD_MODULE)
    model = keras_file(tmp_path / "m.keras", GRU_CONFIG)
    fails("exclusive", model=model, scenario=module, inputs=inputs)
    fails("goes with --model", scenario=module, inputs=inputs)
    fails("goes with --model", inputs=inputs)


# ---- the command line: exit 12 before anything is built -------------------------------


def test_cli_refuses_bad_input_before_any_build(tmp_path: Path, inputs: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    argv = [
        "run",
        "--executor",
        "venv",
        "--model",
        str(tmp_path / "gone.h5"),
        "--inputs",
        str(inputs),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "matrix", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KRM_CACHE": str(cache)},
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 12, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --model") and "no such file" in lines[0]
    # Nothing was built, provisioned or written: no venv, no results directory.
    assert not any(cache.iterdir())
    assert not (tmp_path / "results").exists()
