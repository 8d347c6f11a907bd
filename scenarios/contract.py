"""The contract between the host (``matrix``) and the runner (``scenarios``),
declared once and read by both sides.

* **Axes**: every dimension of a matrix, with its allowed values, its default,
  whether it selects an environment (an image or a venv) or a setting of one
  run, how a value shows in a cell id and how the runner holds it. Spec
  validation, cell expansion, the runner's command line and its settings are
  all built from :data:`AXES`.
* **Scenarios**: registered by the :func:`scenario` decorator, as nox
  registers sessions; :func:`registry` imports the built-in ones from
  ``scenarios/library/``. Their phases sort by :data:`PHASES`.
* **Artifacts**: schema id and version and the file names a cell leaves.
* **Stages**: a scenario may have a second stage that reads what the first
  stage of other cells saved (DESIGN.md, "Two stages"); the scheduler runs it
  after stage one of every cell it reads.

Standard library only: the runner reads this module before NumPy or any
framework is imported (they read thread and ISA variables once, at import).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

__all__ = [
    "ARTIFACT_FILES",
    "AXES",
    "EXECUTORS",
    "FILES",
    "LOG",
    "MANIFEST",
    "OPTIONS",
    "ORACLE_PREFIX",
    "PHASES",
    "PLAN",
    "RUN_RECORD",
    "SCHEMA_ID",
    "SCHEMA_VERSION",
    "STAGE_TWO",
    "TENSORS",
    "VERSION_AXES",
    "Axis",
    "AxisError",
    "Meta",
    "Option",
    "Scenario",
    "axis",
    "default_scenarios",
    "environment_axes",
    "phase_rank",
    "register_module",
    "registry",
    "scenario",
    "setting_axes",
]

# ---- artifacts ----------------------------------------------------------------

SCHEMA_ID = "keras-repro-matrix/artifact"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.npz"
LOG = "log.txt"
#: Written in this order: the manifest last, so its presence means the rest is there.
ARTIFACT_FILES = (TENSORS, LOG, MANIFEST)
#: Keys of float64 oracle tensors start with this; the rest is the key they are an oracle for.
ORACLE_PREFIX = "reference/"
#: The scheduler's record of one run beside (or instead of) its artifact.
RUN_RECORD = "run.json"
#: What a results directory needs beyond its artifacts: cell order, reference, tolerances.
PLAN = "plan.json"
#: Who ran a cell, as the manifest records it ("manual": ``python -m scenarios`` by hand).
EXECUTORS = ("docker", "venv", "host", "manual")
#: Files a scenario saved (models in each format), under ``files/<scenario>/``
#: of its artifact; moved in before the manifest, listed in it with their sha256.
FILES = "files"
#: A cell's stage-two artifact (manifest, tensors, log), inside its directory.
STAGE_TWO = "stage-2"


@dataclass(frozen=True, kw_only=True)
class Meta:
    """Who a run is, as the host names it (the runner's ``--meta``): the cell
    id, its axes, the executor, the repeat and the environment's id."""

    id: str = "local"
    axes: dict[str, Any] = field(default_factory=dict)
    executor: str = "manual"
    repeat: int = 0
    environment_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "axes": dict(self.axes),
            "executor": self.executor,
            "repeat": self.repeat,
            "environment_id": self.environment_id,
        }


class AxisError(ValueError):
    """A value an axis does not allow; the message names the axis and what it allows."""


AxisValue = str | int


@dataclass(frozen=True, kw_only=True)
class Axis:
    """One dimension of the matrix.

    ``selects`` is ``environment`` (the value picks the image or venv: the
    runner never sees it) or ``setting`` (the runner applies it, through the
    option ``--<name>``). ``runner`` says how the runner holds the value:
    ``choice`` as given, ``switch`` on/off as a bool, ``tristate`` on/off/
    default as True/False/None (None: leave the framework's default),
    ``count`` a whole number >= 0.

    In a cell id an axis at its default is left out, so adding an axis
    renames no existing cell; ``label`` formats any other value.
    """

    name: str
    selects: str
    default: AxisValue
    choices: tuple[str, ...] = ()  # empty: checked elsewhere (the catalog's stacks)
    runner: str = "choice"
    #: how a non-default value shows in a cell id; None: never (it is implied by the stack)
    label: str | None = "{name}-{value}"
    help: str = ""
    #: the scenarios that apply this axis (None: every scenario). At another
    #: value than the default a cell runs only these: the others would run
    #: exactly as at the default, the same work again.
    scenarios: tuple[str, ...] | None = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> AxisValue:
        """The value in its canonical form (TOML booleans read as on/off), or AxisError."""
        if self.runner == "count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AxisError(f"{self.name} must be a whole number >= 0 (got {_show(value)})")
            return value
        if isinstance(value, bool) and "on" in self.choices:
            value = "on" if value else "off"
        if not isinstance(value, str):
            raise AxisError(f"{self.name} must be a string (got {_show(value)})")
        if self.choices and value not in self.choices:
            raise AxisError(
                f"{self.name}: {_show(value)} is not allowed (allowed: {', '.join(self.choices)})"
            )
        return value

    def to_runner(self, value: AxisValue) -> Any:
        """The value as the runner's settings hold it."""
        if self.runner == "switch":
            return value == "on"
        if self.runner == "tristate":
            return {"on": True, "off": False}.get(str(value))
        return value

    def from_text(self, text: str) -> AxisValue:
        """Parse a command-line value (the runner's flags)."""
        if self.runner == "count":
            try:
                return self.check(int(text))
            except ValueError:
                raise AxisError(f"{self.name} must be a whole number >= 0 (got {text!r})") from None
        return self.check(text)

    def id_part(self, value: AxisValue) -> str | None:
        return None if self.label is None else self.label.format(name=self.name, value=value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ON_OFF = ("on", "off")
_TRISTATE = ("on", "off", "default")

#: Every axis, in cell-id order. Append new axes with a default that means
#: "as before", so that no existing cell id changes.
AXES: tuple[Axis, ...] = (
    Axis(
        name="stack",
        selects="environment",
        default="",
        help="a framework stack from matrix/stacks.toml: one image or venv per target",
    ),
    # The versions a stack is composed of (matrix/stacks.toml): a spec names
    # environments either by stack or by these; a cell knows both, and its id
    # names the stack, which implies them.
    Axis(
        name="tensorflow",
        selects="environment",
        default="none",
        label=None,
        help="the TensorFlow release (minor, e.g. 2.16), or none",
    ),
    Axis(
        name="keras",
        selects="environment",
        default="default",
        label=None,
        help="the Keras release (e.g. 3.4), tf-keras, or default: the one TensorFlow brings",
    ),
    Axis(
        name="backend",
        selects="environment",
        default="tensorflow",
        choices=("tensorflow", "jax", "torch"),
        label=None,
        help="Keras' backend",
    ),
    Axis(
        name="jax",
        selects="environment",
        default="none",
        label=None,
        help="the JAX release for Keras 3's jax backend, or none",
    ),
    Axis(
        name="torch",
        selects="environment",
        default="none",
        label=None,
        help="the PyTorch release for Keras 3's torch backend, or none",
    ),
    Axis(
        name="target",
        selects="environment",
        default="cpu",
        choices=("cpu", "cuda"),
        help="the build an environment installs: cpu, or cuda (GPU wheels)",
    ),
    Axis(
        name="device",
        selects="setting",
        default="cpu",
        choices=("cpu", "gpu"),
        help="cpu hides GPUs (CUDA_VISIBLE_DEVICES=''); gpu requires a visible GPU, "
        "else every scenario is recorded as unsupported",
    ),
    Axis(
        name="precision",
        selects="setting",
        default="float32",
        choices=("float32", "mixed_float16", "mixed_bfloat16"),
        label="{value}",
        help="dtype policy of the precision scenario; the other scenarios always run "
        "float32 so they stay comparable across this axis (and run in float32 cells only)",
        scenarios=("precision",),
    ),
    Axis(
        name="determinism",
        selects="setting",
        default="on",
        choices=_ON_OFF,
        runner="switch",
        label="det-{value}",
        help="op determinism: TF enable_op_determinism + TF_DETERMINISTIC_OPS, torch "
        "use_deterministic_algorithms + CUBLAS_WORKSPACE_CONFIG, JAX --xla_gpu_deterministic_ops",
    ),
    Axis(
        name="onednn",
        selects="setting",
        default="default",
        choices=_TRISTATE,
        runner="tristate",
        help="oneDNN kernels: TF_ENABLE_ONEDNN_OPTS before import; torch.backends.mkldnn; "
        "default leaves the framework's own choice",
    ),
    Axis(
        name="threads",
        selects="setting",
        default=0,
        runner="count",
        help="intra/inter-op threads and OMP_NUM_THREADS; 0 = all cores",
    ),
    Axis(
        name="jit",
        selects="setting",
        default="default",
        choices=_TRISTATE,
        help="compile(jit_compile=...) for every model (XLA on TF/JAX, torch.compile on "
        "torch); default leaves Keras' own choice",
    ),
    Axis(
        name="cudnn",
        selects="setting",
        default="default",
        choices=_TRISTATE,
        runner="tristate",
        help="allow the LSTM's cuDNN kernel; only meaningful on GPU",
    ),
    Axis(
        name="isa",
        selects="setting",
        default="native",
        choices=("native", "avx512", "avx2", "avx", "sse41"),
        help="cap the instruction set the numeric libraries dispatch to (oneDNN, XLA CPU, "
        "ATen, MKL, OpenBLAS), set before import: another CPU imitated on this one; a cap "
        "this CPU cannot run makes the cell unsupported",
    ),
    Axis(
        name="tf32",
        selects="setting",
        default="default",
        choices=_TRISTATE,
        runner="tristate",
        help="TensorFloat-32 matmuls on GPU (TF enable_tensor_float_32_execution, torch "
        "allow_tf32, JAX default matmul precision); on or off is unsupported on CPU",
    ),
)

_BY_NAME = {a.name: a for a in AXES}


def axis(name: str) -> Axis:
    """The axis called ``name``; AxisError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AxisError(f"unknown axis {_show(name)} (axes: {', '.join(_BY_NAME)})") from None


#: The axes a stack is composed of: its versions (and its backend).
VERSION_AXES = ("tensorflow", "keras", "backend", "jax", "torch")


def environment_axes() -> tuple[Axis, ...]:
    return tuple(a for a in AXES if a.selects == "environment")


def setting_axes() -> tuple[Axis, ...]:
    return tuple(a for a in AXES if a.selects == "setting")


def settled_axes(axes: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's axes with every setting it does not name at its default.

    A result made before a setting axis existed ran at that axis's default:
    axes are appended with a default that means "as before". So results
    from two releases of this contract stay comparable cell for cell.
    """
    return {**{a.name: a.default for a in setting_axes()}, **axes}


# ---- run options that are not axes ----------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Option:
    """A runner option that is not an axis: it is the same in every cell of a spec.

    ``spec`` is True when a spec's ``[runner]`` table may set it.
    """

    name: str
    default: Any
    # "scenarios" (names), "count", "flag", "scenario" (one name or none),
    # "path" (a file the run reads, never writes), "choice" (one of choices),
    # "sources" (a JSON object: cell id -> directory of its stage-one files)
    kind: str
    spec: bool = True
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        name="scenarios",
        default=None,  # None: every registered scenario
        kind="scenarios",
        help="the scenarios to run, in this order (default: every built-in one)",
    ),
    Option(
        name="unseeded_repeats",
        default=3,
        kind="count",
        help="unseeded MLP trainings summarised by mean and std of the MSE",
    ),
    Option(
        name="quick",
        default=False,
        kind="flag",
        spec=False,
        help="a tenth of the epochs: for smoke tests, not for comparisons",
    ),
    Option(
        name="inject_failure",
        default=None,
        kind="scenario",
        spec=False,
        help="TEST ONLY: raise a deliberate error inside this scenario, to prove a failure "
        "is recorded while the other scenarios still run",
    ),
    Option(
        name="stage",
        default=1,
        kind="count",
        spec=False,
        help="1 runs the scenarios; 2 runs the second stage of two-stage scenarios "
        "(portability), reading the stage-one files given by --sources",
    ),
    Option(
        name="sources",
        default=None,
        kind="sources",
        spec=False,
        help="stage 2: a JSON object, cell id -> that cell's stage-one files directory (read-only)",
    ),
    # The user's own model (scenario user_model). The host checks these files
    # before any image is built and hands the run a read-only copy.
    Option(
        name="user_model",
        default=None,
        kind="path",
        spec=False,
        help="your model: a .keras or .h5 file, a .weights.h5 file (with --user-builder) "
        "or a SavedModel directory",
    ),
    Option(
        name="user_builder",
        default=None,
        kind="path",
        spec=False,
        help="a Python file whose build() (or build(keras)) returns the model "
        "--user-model's .weights.h5 file loads into",
    ),
    Option(
        name="user_inputs",
        default=None,
        kind="path",
        spec=False,
        help="an .npz of the model's inputs: one array, or one per input named after it",
    ),
    Option(
        name="user_targets",
        default=None,
        kind="path",
        spec=False,
        help="an .npz of training targets (with --train-steps)",
    ),
    Option(
        name="user_scenario",
        default=None,
        kind="path",
        spec=False,
        help="a Python file defining a scenario with @scenario(...): model, data and steps",
    ),
    Option(
        name="train_steps",
        default=0,
        kind="count",
        spec=False,
        help="user_model: train this many batches (SGD, learning rate 0.01) from the given "
        "weights and record the losses and weights; 0: inference only",
    ),
    Option(
        name="loss",
        default="mse",
        kind="choice",
        spec=False,
        choices=(
            "mse",
            "mae",
            "huber",
            "binary_crossentropy",
            "categorical_crossentropy",
            "sparse_categorical_crossentropy",
        ),
        help="user_model: the training loss (the host passes the model's own compiled "
        "loss where the file names one)",
    ),
    Option(
        name="batch_size",
        default=32,
        kind="count",
        spec=False,
        help="user_model: the batch size of predict and training, unless the model "
        "fixes one (a stateful model's batch_shape)",
    ),
)


# ---- scenarios and phases -------------------------------------------------------------

#: The standard phases, in the order a reader follows a scenario (DESIGN.md):
#: seeded init (or the weights as loaded from a file), inference from
#: canonical weights, training from them, what a user who only sets a seed
#: sees. Other phases follow them, alphabetically.
PHASES = ("init", "load", "forward", "train", "seeded_train")


def phase_rank(phase: str) -> tuple[int, str]:
    """Sort key of a phase name: the standard phases first, in reading order."""
    return (PHASES.index(phase) if phase in PHASES else len(PHASES), phase)


_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A registered scenario: ``run(ctx)`` writes tensors ``name/phase/tensor``.

    ``stage_two``, when there is one, runs in a second pass after stage one
    of every cell, with the files those cells saved (``--sources``).
    ``default``: part of "every scenario" when a spec names none.
    ``needs``: a run option without which it cannot run (a spec never names
    it; the host adds it when the option is given).
    """

    name: str
    phases: tuple[str, ...]
    summary: str
    run: Callable[[Any], None] = field(compare=False, repr=False)
    module: str = ""
    stage_two: Callable[[Any], None] | None = field(default=None, compare=False, repr=False)
    default: bool = True
    needs: str | None = None

    @property
    def stages(self) -> tuple[int, ...]:
        return (1, 2) if self.stage_two is not None else (1,)


_REGISTRY: dict[str, Scenario] = {}
_LIBRARY = "scenarios.library"


def scenario(
    name: str,
    *,
    phases: Sequence[str],
    summary: str,
    stage: int = 1,
    default: bool = True,
    needs: str | None = None,
) -> Callable[[_F], _F]:
    """Register ``run(ctx)`` as scenario ``name`` with the phases it writes.

    ``stage=2`` registers the second stage of a scenario already registered
    (stage one) by the same module.
    """
    if not _NAME.match(name):
        raise ValueError(f"scenario name {name!r}: lower case letters, digits and _ only")
    bad = [p for p in phases if not _NAME.match(p)]
    if bad or not phases:
        raise ValueError(f"scenario {name}: phases must be names like 'forward' (got {bad})")
    if stage not in (1, 2):
        raise ValueError(f"scenario {name}: stage must be 1 or 2 (got {stage!r})")
    if needs is not None and needs not in {o.name for o in OPTIONS}:
        raise ValueError(f"scenario {name}: needs {needs!r}, which is no run option")

    def register(fn: _F) -> _F:
        held = _REGISTRY.get(name)
        if held is not None and held.module != fn.__module__:
            raise ValueError(
                f"scenario {name} is registered twice ({held.module}, {fn.__module__})"
            )
        ordered = tuple(sorted(dict.fromkeys(phases), key=phase_rank))
        if stage == 2:
            if held is None:
                raise ValueError(f"scenario {name}: stage 2 is registered before stage 1")
            merged = tuple(sorted(dict.fromkeys((*held.phases, *ordered)), key=phase_rank))
            _REGISTRY[name] = replace(held, stage_two=fn, phases=merged)
            return fn
        _REGISTRY[name] = Scenario(
            name=name,
            phases=ordered,
            summary=summary,
            run=fn,
            module=fn.__module__,
            default=default and needs is None,
            needs=needs,
        )
        return fn

    return register


def _library_modules() -> Iterator[str]:
    package = importlib.import_module(_LIBRARY)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            yield info.name


def _broken(name: str, module: str, exc: BaseException, *, imported: bool = False) -> Scenario:
    """A scenario whose module does not import (or defines nothing usable):
    it fails, the others run."""
    what = "defines nothing usable" if imported else "could not be imported"
    message = f"scenario module {module} {what}: {type(exc).__name__}: {exc}"

    def run(ctx: Any) -> None:
        raise ImportError(message)

    return Scenario(name=name, phases=("run",), summary=message, run=run, module=module)


def registry() -> Mapping[str, Scenario]:
    """Every registered scenario, the built-in ones first (sorted by name).

    Each built-in module ``scenarios/library/<name>.py`` registers the
    scenario ``<name>``; one that fails to import becomes a scenario that
    fails, so the others still run. Importing them loads NumPy but no
    framework: the runner calls this only after its settings are in the
    environment.
    """
    for name in _library_modules():
        module = f"{_LIBRARY}.{name}"
        try:
            importlib.import_module(module)
        except Exception as exc:  # broad on purpose: one broken module is one failed scenario
            _REGISTRY.setdefault(name, _broken(name, module, exc))
    return dict(_REGISTRY)


def default_scenarios(known: Mapping[str, Scenario]) -> tuple[str, ...]:
    """What "every scenario" means: the registered ones that run by default."""
    return tuple(name for name, s in known.items() if s.default)


def register_module(path: str, names: Sequence[str]) -> None:
    """Import a scenario module from a file (the user's ``--user-scenario``).

    Its ``@scenario`` decorators register it. A module that raises on import,
    or that does not register every scenario in ``names``, turns each missing
    name into a scenario that fails with the error: the run still writes an
    artifact saying why. Called only once the settings are in the environment,
    since the module may import a framework.
    """
    import importlib.util

    problem: Exception | None = None
    try:
        spec = importlib.util.spec_from_file_location("krm_user_scenario", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # broad on purpose: the user's module failing is a result
        problem = exc
    for name in names:
        if problem is not None:
            # Even what it registered before raising: a half-imported module is no base.
            _REGISTRY[name] = _broken(name, path, problem)
        elif name not in _REGISTRY:
            why = LookupError(f"it registers no scenario named {name!r}")
            _REGISTRY[name] = _broken(name, path, why, imported=True)
