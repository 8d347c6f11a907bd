"""Your model, inputs and scenario module, checked on the host before any
image or venv is built.

Everything that can be known without a framework is checked here, and a
problem is one line and exit 12 (:class:`UserInputError`): a missing file,
a file that is no model (by its signature: a ``.keras`` zip, an HDF5 file, a
SavedModel directory), an ``.npz`` that does not load with
``allow_pickle=False`` or holds anything but numbers, arrays whose shapes
the model's own config rules out, a builder or scenario module that does
not parse or defines nothing usable. What only a framework can tell (a
layer a version lacks, a module that raises on import) becomes a failure
recorded per cell while the rest of the matrix goes on.

The result, :class:`UserRun`, is plain data the plan carries: each file with
the name it gets in the run's read-only copy (the name tells Keras the
format), and the runner options that go with it.
"""

from __future__ import annotations

import ast
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matrix.errors import UserInputError
from matrix.user.keras_config import InputSpec, ModelInfo, file_kind, read_model_info
from scenarios.contract import OPTIONS, registry

__all__ = ["UserFile", "UserRun", "check_user", "shown"]

#: The scenario that runs a model file (scenarios/library/user_model.py).
USER_MODEL = "user_model"
#: A module or .npz far larger than this is not what these options take.
_MAX_MODULE_BYTES = 1 << 20
_MAX_ARRAYS = 256
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LOSSES = next(o for o in OPTIONS if o.name == "loss").choices
_MAX_TRAIN_STEPS = 100_000


@dataclass(frozen=True, kw_only=True)
class UserFile:
    """One file (or SavedModel directory) a run reads and never writes."""

    option: str  # the runner option that receives it (user_model, user_inputs, ...)
    given: Path  # as the user named it
    name: str  # its name in the run's read-only copy: model.keras, inputs.npz, ...


@dataclass(frozen=True, kw_only=True)
class UserRun:
    """What ``--model`` / ``--scenario`` add to every cell of a run."""

    scenarios: tuple[str, ...]  # user_model, or what the module registers
    files: tuple[UserFile, ...]
    options: Mapping[str, str] = field(default_factory=dict)  # train_steps, loss, batch_size
    notes: tuple[str, ...] = ()  # what the host found out, shown once

    @property
    def label(self) -> str:
        """A short name for the run: the model's or the module's file stem."""
        main = next((f for f in self.files if f.option in ("user_model", "user_scenario")), None)
        stem = main.given.name if main else "user"
        for suffix in (".weights.h5", ".keras", ".h5", ".hdf5", ".py"):
            stem = stem.removesuffix(suffix)
        return stem


def shown(path: Path) -> str:
    """A path as one printable line, whatever bytes its name holds."""
    text = str(path)
    return text if text.isprintable() else ascii(text)[1:-1]


def _fail(option: str, path: Path | None, message: str) -> UserInputError:
    where = f"--{option} {shown(path)}" if path is not None else f"--{option}"
    return UserInputError(f"{where}: {message}")


def check_user(
    *,
    model: Path | None = None,
    builder: Path | None = None,
    inputs: Path | None = None,
    targets: Path | None = None,
    scenario: Path | None = None,
    train_steps: int | None = None,
    loss: str | None = None,
    batch_size: int | None = None,
) -> UserRun | None:
    """The user's run, checked; None when no user option was given.

    Raises UserInputError (exit 12) naming the option and the file."""
    extras = {
        "builder": builder,
        "inputs": inputs,
        "targets": targets,
        "train-steps": train_steps,
        "loss": loss,
        "batch-size": batch_size,
    }
    given = [name for name, value in extras.items() if value is not None]
    if model is None and scenario is None:
        if given:
            raise UserInputError(f"--{given[0]} goes with --model PATH (your model file)")
        return None
    if model is not None and scenario is not None:
        raise UserInputError(
            "--model and --scenario are exclusive: a scenario module defines its own model and data"
        )
    if scenario is not None:
        if given:
            raise UserInputError(
                f"--{given[0]} goes with --model; a --scenario module defines its own data "
                "and steps"
            )
        names = check_scenario_module(scenario)
        return UserRun(
            scenarios=names,
            files=(UserFile(option="user_scenario", given=scenario, name="scenario.py"),),
        )
    assert model is not None
    return _model_run(model, builder, inputs, targets, train_steps, loss, batch_size)


def _model_run(
    model: Path,
    builder: Path | None,
    inputs: Path | None,
    targets: Path | None,
    train_steps: int | None,
    loss: str | None,
    batch_size: int | None,
) -> UserRun:
    if inputs is None:
        raise UserInputError("--model needs --inputs X.npz: the inputs every cell predicts")
    if train_steps is not None and not 1 <= train_steps <= _MAX_TRAIN_STEPS:
        raise UserInputError(f"--train-steps must be from 1 to {_MAX_TRAIN_STEPS}")
    if train_steps is not None and targets is None:
        raise UserInputError("--train-steps needs --targets Y.npz: what the model trains towards")
    if train_steps is None and (targets is not None or loss is not None):
        what = "--targets" if targets is not None else "--loss"
        raise UserInputError(f"{what} is only used for training: add --train-steps N")
    if loss is not None and loss not in _LOSSES:
        raise UserInputError(f"--loss {loss!r}: expected one of {', '.join(_LOSSES)}")
    if batch_size is not None and not 1 <= batch_size <= 1 << 20:
        raise UserInputError("--batch-size must be a whole number from 1")
    name, info, notes = check_model(model, builder)
    files = [UserFile(option="user_model", given=model, name=name)]
    if builder is not None:
        check_builder(builder)
        files.append(UserFile(option="user_builder", given=builder, name="builder.py"))
    x = read_npz(inputs, "inputs")
    if info is not None and info.inputs is not None:
        problem = fit_inputs(x, info.inputs)
        if problem is not None:
            raise _fail("inputs", inputs, problem)
    files.append(UserFile(option="user_inputs", given=inputs, name="inputs.npz"))
    options: dict[str, str] = {}
    if targets is not None and train_steps is not None:
        y = read_npz(targets, "targets")
        if _samples(y) != _samples(x):
            raise _fail(
                "targets",
                targets,
                f"{_samples(y)} samples, but the inputs have {_samples(x)}",
            )
        files.append(UserFile(option="user_targets", given=targets, name="targets.npz"))
        options["train_steps"] = str(train_steps)
        found = info.loss if info is not None else None
        chosen = loss or found
        if chosen is None:
            notes.append(
                "no loss the runner can use in the model's compile config: training uses mse"
            )
        elif loss is None:
            notes.append(f"training uses the model's own loss, {chosen}")
        options["loss"] = chosen or "mse"
    if batch_size is not None:
        options["batch_size"] = str(batch_size)
    return UserRun(scenarios=(USER_MODEL,), files=tuple(files), options=options, notes=tuple(notes))


# ---- the model ----------------------------------------------------------------


def _exists(option: str, path: Path) -> None:
    if not path.exists():
        raise _fail(option, path, "no such file or directory")


def check_model(path: Path, builder: Path | None) -> tuple[str, ModelInfo | None, list[str]]:
    """The model's name in the read-only copy, what its config says, notes."""
    _exists("model", path)
    if path.is_dir():
        if builder is not None:
            raise _fail("builder", builder, "goes with a weights file, not a SavedModel directory")
        if not any((path / n).is_file() for n in ("saved_model.pb", "saved_model.pbtxt")):
            raise _fail(
                "model",
                path,
                "a directory, but no SavedModel (no saved_model.pb); give a .keras or .h5 file, "
                "or a SavedModel directory",
            )
        return "model", None, []
    if not path.is_file():
        raise _fail("model", path, "not a regular file")
    try:
        kind = file_kind(path)
    except OSError as exc:
        raise _fail("model", path, f"cannot be read: {exc.strerror or exc}") from None
    notes: list[str] = []
    suffix = path.name.lower()
    if kind == "zip":
        if builder is not None:
            raise _fail("builder", builder, "goes with a .weights.h5 file, not a .keras model")
        try:
            with zipfile.ZipFile(path) as zf:
                members = set(zf.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise _fail("model", path, f"a damaged zip: {exc}") from None
        if "config.json" not in members:
            raise _fail("model", path, "a zip, but not a .keras model (no config.json inside)")
        if not suffix.endswith(".keras"):
            notes.append(f"{shown(path)} is a .keras zip: read as model.keras")
        return "model.keras", read_model_info(path, kind), notes
    if kind == "hdf5":
        if builder is not None:
            # Keras picks its weights reader by the name: keep the user's suffix.
            name = "model.weights.h5" if suffix.endswith(".weights.h5") else "model.h5"
            return name, None, notes
        if suffix.endswith(".weights.h5"):
            raise _fail(
                "model",
                path,
                "a weights file: add --builder builder.py, whose build() returns the model",
            )
        if suffix.endswith(".keras"):
            notes.append(
                f"{shown(path)} is an HDF5 file under a .keras name (TensorFlow 2.12 "
                "writes one): read as model.h5"
            )
        return "model.h5", read_model_info(path, kind), notes
    raise _fail(
        "model",
        path,
        "not a Keras model: expected a .keras file (a zip), an .h5 file (HDF5), a .weights.h5 "
        "file with --builder, or a SavedModel directory",
    )


# ---- arrays -----------------------------------------------------------------------

ArrayShapes = dict[str, tuple[int, ...]]


def read_npz(path: Path, option: str) -> ArrayShapes:
    """name -> shape of every array of an .npz, loaded with allow_pickle=False."""
    _exists(option, path)
    if not path.is_file():
        raise _fail(option, path, "not a regular file")
    try:
        if file_kind(path) != "zip":
            raise _fail(option, path, "not an .npz file (a zip of .npy arrays, np.savez)")
        shapes: ArrayShapes = {}
        with np.load(path, allow_pickle=False) as npz:
            if not npz.files:
                raise _fail(option, path, "holds no array")
            if len(npz.files) > _MAX_ARRAYS:
                raise _fail(option, path, f"holds more than {_MAX_ARRAYS} arrays")
            for name in npz.files:
                array = npz[name]
                if array.dtype.kind not in "biuf":
                    raise _fail(
                        option,
                        path,
                        f"array {name!r} has dtype {array.dtype}; the model takes numbers",
                    )
                if array.ndim == 0 or array.shape[0] == 0:
                    raise _fail(option, path, f"array {name!r} has shape {array.shape}: no samples")
                shapes[name] = tuple(int(d) for d in array.shape)
    except UserInputError:
        raise
    except ValueError as exc:
        # np.load refuses object arrays without unpickling them: say so plainly.
        why = "holds pickled objects" if "allow_pickle" in str(exc) else _one_line(str(exc))
        raise _fail(option, path, f"not usable: {why}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(option, path, f"not a readable .npz: {_one_line(str(exc))}") from None
    leading = {shape[0] for shape in shapes.values()}
    if len(leading) > 1:
        raise _fail(option, path, f"arrays differ in their number of samples: {shapes}")
    return shapes


def _samples(shapes: ArrayShapes) -> int:
    return next(iter(shapes.values()))[0]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _format(shape: Sequence[int | None]) -> str:
    dims = ["batch" if d is None else str(d) for d in shape]
    return f"({', '.join(dims)})"


def fit_inputs(arrays: ArrayShapes, specs: Sequence[InputSpec]) -> str | None:
    """Why the arrays cannot be the model's inputs, or None when they can."""
    if len(specs) == 1:
        if len(arrays) != 1:
            return (
                f"the model has one input, {specs[0].name!r}, but the file holds "
                f"{len(arrays)} arrays ({', '.join(arrays)})"
            )
        pairs = [(specs[0], next(iter(arrays.values())))]
    else:
        wanted = [s.name for s in specs]
        if sorted(arrays) != sorted(wanted):
            return (
                f"the model's inputs are {', '.join(wanted)}; the file holds "
                f"{', '.join(arrays)}: name each array after its input"
            )
        pairs = [(s, arrays[s.name]) for s in specs]
    for spec, shape in pairs:
        expected = spec.shape
        fits = len(shape) == len(expected) and all(
            want is None or want == got for want, got in zip(expected[1:], shape[1:], strict=True)
        )
        if not fits:
            return (
                f"input {spec.name!r} takes shape {_format(expected)}, the array has "
                f"{_format(shape)}"
            )
    return None


# ---- modules ------------------------------------------------------------------------


def _parse(option: str, path: Path) -> ast.Module:
    _exists(option, path)
    if not path.is_file() or path.suffix != ".py":
        raise _fail(option, path, "expected a Python file (.py)")
    try:
        if path.stat().st_size > _MAX_MODULE_BYTES:
            raise _fail(option, path, f"larger than {_MAX_MODULE_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
        return ast.parse(text, filename=path.name)
    except UserInputError:
        raise
    except UnicodeDecodeError:
        raise _fail(option, path, "not UTF-8 text") from None
    except SyntaxError as exc:
        raise _fail(option, path, f"line {exc.lineno}: {exc.msg}") from None
    except (OSError, ValueError) as exc:
        raise _fail(option, path, f"cannot be read: {_one_line(str(exc))}") from None


def check_builder(path: Path) -> None:
    """A module with a top-level ``build()`` or ``build(keras)``."""
    tree = _parse("builder", path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "build":
            args = node.args
            required = len(args.posonlyargs) + len(args.args) - len(args.defaults)
            if required > 1 or any(d is None for d in args.kw_defaults):
                raise _fail(
                    "builder", path, "build() must take no argument, or one: the keras module"
                )
            return
    raise _fail("builder", path, "defines no top-level build() returning the model")


def _decorator_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
    return None


def check_scenario_module(path: Path) -> tuple[str, ...]:
    """The scenario names a module registers with ``@scenario("name", ...)``,
    read from its source: the host plans without importing it."""
    tree = _parse("scenario", path)
    builtin = set(registry())
    names: list[str] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if _decorator_name(dec) != "scenario":
                continue
            assert isinstance(dec, ast.Call)
            first = dec.args[0] if dec.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                raise _fail(
                    "scenario",
                    path,
                    f"line {dec.lineno}: the scenario's name must be a string literal",
                )
            name = first.value
            if not _NAME.match(name):
                raise _fail(
                    "scenario",
                    path,
                    f"line {dec.lineno}: scenario name {name!r}: lower case letters, digits "
                    "and _, starting with a letter",
                )
            if name in builtin:
                raise _fail("scenario", path, f"{name!r} is a built-in scenario: pick another name")
            keywords = {k.arg for k in dec.keywords}
            if "phases" not in keywords or "summary" not in keywords:
                raise _fail(
                    "scenario",
                    path,
                    f"line {dec.lineno}: @scenario({name!r}, phases=(...), summary=...) "
                    "needs phases and summary",
                )
            if "stage" in keywords:
                raise _fail("scenario", path, "a user scenario has one stage: drop stage=")
            if len(node.args.args) + len(node.args.posonlyargs) != 1:
                raise _fail("scenario", path, f"{node.name}() must take one argument, ctx")
            if name not in names:
                names.append(name)
    if not names:
        raise _fail(
            "scenario",
            path,
            'defines no scenario: decorate a run(ctx) function with @scenario("name", '
            'phases=("forward",), summary="...")',
        )
    return tuple(names)
