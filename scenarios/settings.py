"""Settings of one run: parsed from --settings JSON and flags, applied to the
process environment BEFORE the framework is imported (most switches are read
once at import or at runtime initialisation), then applied at runtime and
recorded as the framework reports them.

Which settings exist, their values and defaults come from the contract
(``scenarios.contract.AXES``, the axes that select a setting, and
``OPTIONS``); this module holds only the code that applies each one:
``@before_import(axis)`` steps set variables, ``@at_runtime(axis)`` steps
call the framework and return the value in effect.

Stdlib only: this module runs before NumPy or any framework is imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from scenarios import hardware
from scenarios.contract import OPTIONS, AxisError, setting_axes

__all__ = [
    "DEFAULTS",
    "EnvChanges",
    "Settings",
    "SettingsError",
    "apply_environment",
    "apply_runtime",
    "backend_hint",
    "parse_settings",
]

# CUBLAS needs a fixed workspace for deterministic GEMMs (torch documents this
# value); harmless where no GPU is present.
CUBLAS_DETERMINISTIC = ":4096:8"
XLA_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
# XLA's CPU backend only exposes "one thread or Eigen's pool"; no count.
XLA_SINGLE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")

_AXES = {a.name: a for a in setting_axes()}
_OPTIONS = {o.name: o for o in OPTIONS}

#: Every setting in the runner's form, at its contract default.
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        **{a.name: a.to_runner(a.default) for a in _AXES.values()},
        **{o.name: o.default for o in OPTIONS},
    }
)


def backend_hint() -> str:
    """The backend a Keras import will pick, known without importing it."""
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        return "tensorflow"
    return os.environ.get("KERAS_BACKEND", "tensorflow") or "tensorflow"


class SettingsError(ValueError):
    """A settings value a user gave is not valid (bad argument: exit 2)."""


class Settings(Mapping[str, Any]):
    """Every setting axis (in the runner's form: booleans for switches, None
    for "the framework's default") and every run option of one run.

    Read as attributes (``settings.precision``) or as a mapping; immutable.
    """

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise SettingsError(f"unknown setting {', '.join(unknown)!r}")
        object.__setattr__(self, "_values", MappingProxyType({**DEFAULTS, **values}))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Settings are immutable; use replace()")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and dict(self._values) == dict(other._values)

    __hash__ = None  # type: ignore[assignment]

    def replace(self, **changes: Any) -> Settings:
        return Settings(**{**self._values, **changes})

    def to_json(self) -> dict[str, Any]:
        data = dict(self._values)
        if data["scenarios"] is not None:
            data["scenarios"] = list(data["scenarios"])
        return data


def _coerce(key: str, value: Any) -> Any:
    """Turn one JSON/flag value into the setting's runner form, or refuse."""
    found = _AXES.get(key)
    if found is not None:
        if value is None and found.runner == "tristate":
            return None
        try:
            return found.to_runner(found.check(value))
        except AxisError as exc:
            raise SettingsError(str(exc)) from None
    option = _OPTIONS.get(key)
    if option is None:
        raise SettingsError(f"unknown setting {key!r}")
    if option.kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SettingsError(f"{key}: expected an integer >= 0, got {value!r}")
        return value
    if option.kind == "flag":
        if not isinstance(value, bool):
            raise SettingsError(f"{key}: expected true or false, got {value!r}")
        return value
    if option.kind == "scenario":
        if value is not None and not isinstance(value, str):
            raise SettingsError(f"{key}: expected a scenario name, got {value!r}")
        return value
    if option.kind == "path":
        if value is not None and (not isinstance(value, str) or not value):
            raise SettingsError(f"{key}: expected a path, got {value!r}")
        return value
    if option.kind == "choice":
        if value not in option.choices:
            allowed = ", ".join(option.choices)
            raise SettingsError(f"{key}: expected one of {allowed}, got {value!r}")
        return value
    if option.kind == "sources":
        return _sources(key, value)
    # scenarios: names checked against the registry once it is loaded
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple):
        raise SettingsError("scenarios: expected a list of names")
    names = tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))
    if not names:
        raise SettingsError("scenarios: expected at least one scenario name")
    return names


def _sources(key: str, value: Any) -> dict[str, str] | None:
    """Stage-two sources: a JSON object (or its text) of cell id -> directory."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SettingsError(f"{key}: not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise SettingsError(f"{key}: expected an object of cell id -> directory")
    return dict(value)


def parse_settings(json_text: str | None, overrides: Mapping[str, Any]) -> Settings:
    """Settings from a JSON object, then flags (non-None overrides) on top."""
    raw: dict[str, Any] = {}
    if json_text:
        try:
            loaded = json.loads(json_text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SettingsError(f"--settings is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError("--settings must be a JSON object")
        raw.update(loaded)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**{key: _coerce(key, value) for key, value in raw.items()})


def resolve_scenarios(settings: Settings, known: Mapping[str, Any]) -> Settings:
    """The settings with their scenario names checked against the registry
    (None: every scenario that runs by default, in registry order)."""
    if settings.scenarios is not None:
        asked = settings.scenarios
    else:
        asked = tuple(n for n, s in known.items() if getattr(s, "default", True))
    unknown = [n for n in asked if n not in known]
    if unknown:
        raise SettingsError(f"scenarios: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if settings.stage not in (1, 2):
        raise SettingsError(f"stage: expected 1 or 2, got {settings.stage}")
    for name in asked:
        found = known[name]
        if settings.stage == 2 and getattr(found, "stage_two", None) is None:
            raise SettingsError(f"stage 2: scenario {name} has no second stage")
        needs = getattr(found, "needs", None)
        if needs and not settings[needs]:
            raise SettingsError(f"scenario {name} needs --{needs.replace('_', '-')}")
    injected = settings.inject_failure
    if injected is not None and injected not in known:
        raise SettingsError(f"inject_failure: unknown scenario {injected!r}")
    return settings.replace(scenarios=tuple(asked))


# ---- before import: the process environment ---------------------------------------


@dataclass(kw_only=True)
class EnvChanges:
    """What apply_environment did to os.environ, for the manifest."""

    set: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: why this run cannot do what it was asked (the CPU lacks a capped ISA): its
    #: scenarios are recorded as unsupported rather than run natively
    unsupported: str | None = None
    #: what apply_environment learned about the installed libraries (from
    #: their binaries, before import), for the fingerprint
    probes: dict[str, Any] = field(default_factory=dict)


class _Env:
    """os.environ (or a test's dict) with every change recorded."""

    def __init__(self, target: dict[str, str], changes: EnvChanges, backend: str) -> None:
        self.target = target
        self.changes = changes
        self.backend = backend

    def set(self, key: str, value: str) -> None:
        self.target[key] = value
        self.changes.set[key] = value

    def remove(self, key: str) -> None:
        if key in self.target:
            del self.target[key]
            self.changes.removed.append(key)

    def add_xla_flags(self, flags: tuple[str, ...]) -> None:
        current = self.target.get("XLA_FLAGS", "").split()
        merged = current + [f for f in flags if f not in current]
        self.set("XLA_FLAGS", " ".join(merged))

    def note(self, text: str) -> None:
        self.changes.notes.append(text)

    def refuse(self, reason: str) -> None:
        self.changes.unsupported = reason


_BEFORE_IMPORT: dict[str, Callable[[Settings, _Env], None]] = {}
_AT_RUNTIME: dict[str, Callable[[Settings, Any, Any], Any]] = {}


def _step(table: dict[str, Any], axis_name: str) -> Callable[[Any], Any]:
    if axis_name not in _AXES:
        raise ValueError(f"{axis_name} is not a setting axis of the contract")

    def register(fn: Any) -> Any:
        table[axis_name] = fn
        return fn

    return register


def before_import(axis_name: str) -> Callable[[Any], Any]:
    """Register the step that sets what the frameworks read at import for an axis."""
    return _step(_BEFORE_IMPORT, axis_name)


def at_runtime(axis_name: str) -> Callable[[Any], Any]:
    """Register the step that applies an axis after import and returns the
    value in effect, as the framework reports it."""
    return _step(_AT_RUNTIME, axis_name)


def apply_environment(
    settings: Settings, backend_hint: str, env: dict[str, str] | None = None
) -> EnvChanges:
    """Set the variables the frameworks read at import / initialisation.

    backend_hint is the backend the process is about to import (from
    KERAS_BACKEND, before any import): XLA flags are only touched where XLA
    is the backend, because an XLA build that does not know a flag aborts.
    """
    target: dict[str, str] = os.environ if env is None else env  # type: ignore[assignment]
    changes = EnvChanges()
    # Quieter TensorFlow logs keep log.txt readable; errors still show.
    target.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    proxy = _Env(target, changes, backend_hint)
    for name in _AXES:
        step = _BEFORE_IMPORT.get(name)
        if step is not None:
            step(settings, proxy)
    _observe_onednn(proxy)
    return changes


#: The package whose binaries hold each backend's oneDNN and XLA.
_BACKEND_PACKAGE = {"tensorflow": "tensorflow", "jax": "jaxlib", "torch": "torch"}
_XLA_ISA_FLAG = "xla_cpu_max_isa"
_ONEDNN_CREATE_MODE = "profile_create"


def _binary_probe(env: _Env) -> dict[str, bool]:
    """What the backend's binaries know, read once per run before import."""
    if "binary" not in env.changes.probes:
        package = _BACKEND_PACKAGE.get(env.backend)
        env.changes.probes["binary"] = (
            hardware.binary_mentions(package, (_XLA_ISA_FLAG, _ONEDNN_CREATE_MODE))
            if package
            else {}
        )
    found: dict[str, bool] = env.changes.probes["binary"]
    return found


def _observe_onednn(env: _Env) -> None:
    """Have oneDNN say which instruction set it dispatched to and which kernels
    it created (one line each, in log.txt): its ``profile_create`` verbose mode.
    oneDNN before 3.0 has no such mode and would log every execution, so there
    the dispatch goes unreported rather than flooding the log."""
    if "ONEDNN_VERBOSE" in env.target:
        return  # the user's own choice stands
    if _binary_probe(env).get(_ONEDNN_CREATE_MODE):
        env.set("ONEDNN_VERBOSE", _ONEDNN_CREATE_MODE)
    else:
        env.note("this oneDNN (< 3.0) cannot report its dispatch without logging every kernel")


@before_import("onednn")
def _onednn_env(settings: Settings, env: _Env) -> None:
    if settings.onednn is not None:
        env.set("TF_ENABLE_ONEDNN_OPTS", "1" if settings.onednn else "0")


@before_import("threads")
def _threads_env(settings: Settings, env: _Env) -> None:
    if settings.threads <= 0:
        return
    n = str(settings.threads)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.set(key, n)
    if env.backend == "jax":
        if settings.threads == 1:
            env.add_xla_flags(XLA_SINGLE_THREAD_FLAGS)
        else:
            env.note(
                f"threads={settings.threads}: XLA's CPU backend has no thread count; "
                "only OMP/MKL variables were set"
            )


@before_import("determinism")
def _determinism_env(settings: Settings, env: _Env) -> None:
    if settings.determinism:
        env.set("TF_DETERMINISTIC_OPS", "1")
        env.set("TF_CUDNN_DETERMINISTIC", "1")
        env.set("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        if env.backend == "jax":
            env.add_xla_flags((XLA_DETERMINISTIC_FLAG,))
    else:
        # An inherited switch would make "off" a lie.
        for key in ("TF_DETERMINISTIC_OPS", "TF_CUDNN_DETERMINISTIC"):
            env.remove(key)


@before_import("isa")
def _isa_env(settings: Settings, env: _Env) -> None:
    cap = hardware.isa_cap(settings.isa)
    if cap is None:
        return
    missing = hardware.missing_features(cap, hardware.cpu_flags())
    if missing:
        env.refuse(
            f"isa={settings.isa}: this CPU lacks {', '.join(missing)}, so it cannot imitate "
            f"an {settings.isa.upper()} machine"
        )
        return
    # Each library's own dispatcher control, all read once at load.
    env.set("ONEDNN_MAX_CPU_ISA", cap.onednn)
    env.set("DNNL_MAX_CPU_ISA", cap.onednn)  # the name oneDNN 2.x reads first
    env.set("ATEN_CPU_CAPABILITY", cap.aten)
    env.set("MKL_ENABLE_INSTRUCTIONS", cap.mkl)
    env.set("OPENBLAS_CORETYPE", cap.openblas)
    if env.backend in ("tensorflow", "jax"):
        # An XLA that does not know the flag aborts the process on it.
        if _binary_probe(env).get(_XLA_ISA_FLAG):
            env.add_xla_flags((f"--{_XLA_ISA_FLAG}={cap.xla}",))
        else:
            env.note(
                f"isa={settings.isa}: this XLA has no instruction-set cap; "
                "jit-compiled code may use every instruction of this CPU"
            )
    if env.backend == "tensorflow":
        env.note(
            f"isa={settings.isa}: TensorFlow's Eigen kernels are compiled for a fixed "
            "instruction set and cannot be capped; only its oneDNN and XLA kernels are"
        )


@before_import("device")
def _device_env(settings: Settings, env: _Env) -> None:
    if settings.device == "cpu":
        # Hide GPUs from every backend so "cpu" cannot silently use one.
        env.set("CUDA_VISIBLE_DEVICES", "")
        if env.backend == "jax":
            env.set("JAX_PLATFORMS", "cpu")


# ---- at runtime: after import, before the first op -----------------------------------


@dataclass(kw_only=True)
class Runtime:
    """What the runtime steps learn besides each axis's value in effect."""

    notes: list[str] = field(default_factory=list)
    determinism: dict[str, Any] = field(default_factory=dict)  # how it was enabled


def apply_runtime(settings: Settings, fw: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Apply what must be set after import and before the first op; return
    (applied settings, determinism mechanisms, notes). `fw` is a
    compat.Framework (duck-typed here to keep this module stdlib-only)."""
    runtime = Runtime()
    applied: dict[str, Any] = {}
    # determinism first: TF refuses some switches once its runtime is up.
    for name in ("determinism", *(n for n in _AXES if n != "determinism")):
        applied[name] = _AT_RUNTIME[name](settings, fw, runtime)
    for option in OPTIONS:
        value = settings[option.name]
        applied[option.name] = list(value) if isinstance(value, tuple) else value
    return applied, runtime.determinism, runtime.notes


@at_runtime("determinism")
def _determinism_runtime(settings: Settings, fw: Any, runtime: Runtime) -> bool:
    runtime.determinism["requested"] = settings.determinism
    if settings.determinism:
        runtime.determinism["enabled_by"] = fw.enable_determinism()
    state = fw.determinism_state()
    runtime.determinism["state"] = state
    return _determinism_effective(fw.backend, state, settings.determinism)


@at_runtime("threads")
def _threads_runtime(settings: Settings, fw: Any, runtime: Runtime) -> int:
    try:
        threads = fw.set_threads(settings.threads)
    except RuntimeError as exc:
        # TF refuses once its runtime is initialised; say so, never pretend.
        runtime.notes.append(f"threads={settings.threads} not applied: {exc}")
        threads = fw.set_threads(0)
    return int(threads) if threads is not None else int(settings.threads)


@at_runtime("onednn")
def _onednn_runtime(settings: Settings, fw: Any, runtime: Runtime) -> bool | None:
    fw.set_onednn(settings.onednn)
    found = fw.onednn_effective()
    return None if found is None else bool(found)


@at_runtime("device")
def _device_runtime(settings: Settings, fw: Any, runtime: Runtime) -> str:
    return str(fw.device_info()["kind"])


@at_runtime("precision")
def _precision_runtime(settings: Settings, fw: Any, runtime: Runtime) -> str:
    # The precision scenario sets the policy; the runner records what it got.
    return str(settings.precision)


@at_runtime("jit")
def _jit_runtime(settings: Settings, fw: Any, runtime: Runtime) -> str:
    # Models compile with it; the runner replaces it by what they reported.
    return str(settings.jit)


@at_runtime("isa")
def _isa_runtime(settings: Settings, fw: Any, runtime: Runtime) -> str:
    # The caps are environment variables the libraries read at load; what each
    # library then dispatched to is read from it after the run (fingerprint).
    return str(settings.isa)


@at_runtime("tf32")
def _tf32_runtime(settings: Settings, fw: Any, runtime: Runtime) -> bool | None:
    if settings.tf32 is not None and fw.device_info()["kind"] == "gpu":
        fw.set_tf32(settings.tf32)
    found = fw.tf32_state()
    return None if found is None else bool(found)


@at_runtime("cudnn")
def _cudnn_runtime(settings: Settings, fw: Any, runtime: Runtime) -> bool | None:
    # Only a GPU has a cuDNN kernel to allow or refuse.
    return settings.cudnn if fw.device_info()["kind"] == "gpu" else None


def _determinism_effective(backend: str, state: dict[str, Any], requested: bool) -> bool:
    if backend == "tensorflow":
        enabled = state.get("op_determinism_enabled")
        return bool(enabled) if enabled is not None else state.get("TF_DETERMINISTIC_OPS") == "1"
    if backend == "torch":
        return bool(state.get("deterministic_algorithms"))
    if backend == "jax":
        # XLA on CPU has no non-deterministic reductions to switch off; the
        # flag matters on GPU. Effective means: the flag is in place.
        return XLA_DETERMINISTIC_FLAG in str(state.get("XLA_FLAGS", ""))
    return requested
