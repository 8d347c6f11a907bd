"""Settings of one run: parsed from --settings JSON and flags, applied to the
process environment BEFORE the framework is imported (most switches are read
once at import or at runtime initialisation), and recorded as applied.

Stdlib only: this module runs before NumPy or any framework is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "ALL_SCENARIOS",
    "PRECISIONS",
    "EnvChanges",
    "Settings",
    "SettingsError",
    "apply_environment",
    "apply_runtime",
    "backend_hint",
    "parse_settings",
]

ALL_SCENARIOS: tuple[str, ...] = ("seeded_mlp", "stateful_lstm", "precision", "initializers")
PRECISIONS: tuple[str, ...] = ("float32", "mixed_float16", "mixed_bfloat16")
TRISTATE = ("on", "off", "default")

# CUBLAS needs a fixed workspace for deterministic GEMMs (torch documents this
# value); harmless where no GPU is present.
CUBLAS_DETERMINISTIC = ":4096:8"
XLA_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
# XLA's CPU backend only exposes "one thread or Eigen's pool"; no count.
XLA_SINGLE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


def backend_hint() -> str:
    """The backend a Keras import will pick, known without importing it."""
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        return "tensorflow"
    return os.environ.get("KERAS_BACKEND", "tensorflow") or "tensorflow"


class SettingsError(ValueError):
    """A settings value a user gave is not valid (bad argument: exit 2)."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    precision: str = "float32"
    determinism: bool = False
    onednn: bool | None = None  # None: leave the framework's default
    threads: int = 0  # 0: all cores, the framework's default
    device: str = "cpu"
    jit: str = "default"
    cudnn: bool | None = None  # None: the framework decides (GPU only)
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    unseeded_repeats: int = 3
    quick: bool = False
    # Test-only: raise a deliberate error inside this scenario, to prove a
    # failure is recorded while the others still run.
    inject_failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scenarios"] = list(self.scenarios)
        return data


def _tristate(key: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if value in TRISTATE:
        return {"on": True, "off": False, "default": None}[value]
    raise SettingsError(f"{key}: expected on, off or default, got {value!r}")


def _coerce(key: str, value: Any) -> Any:
    """Turn one JSON/flag value into the Settings field's type, or refuse."""
    if key == "precision":
        if value not in PRECISIONS:
            raise SettingsError(
                f"precision: expected one of {', '.join(PRECISIONS)}, got {value!r}"
            )
        return value
    if key == "determinism":
        result = _tristate(key, value)
        if result is None:
            raise SettingsError("determinism: expected on or off")
        return result
    if key in ("onednn", "cudnn"):
        return _tristate(key, value)
    if key in ("threads", "unseeded_repeats"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SettingsError(f"{key}: expected an integer >= 0, got {value!r}")
        return value
    if key == "device":
        if value not in ("cpu", "gpu"):
            raise SettingsError(f"device: expected cpu or gpu, got {value!r}")
        return value
    if key == "jit":
        if isinstance(value, bool):
            return "on" if value else "off"
        if value not in TRISTATE:
            raise SettingsError(f"jit: expected on, off or default, got {value!r}")
        return value
    if key == "scenarios":
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not names:
            raise SettingsError("scenarios: expected a non-empty list of names")
        names = tuple(str(n).strip() for n in names if str(n).strip())
        unknown = [n for n in names if n not in ALL_SCENARIOS]
        if unknown or not names:
            raise SettingsError(
                f"scenarios: unknown {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(ALL_SCENARIOS)}"
            )
        # Run order is fixed (the catalogue's), whatever order was asked.
        return tuple(n for n in ALL_SCENARIOS if n in names)
    if key == "quick":
        if not isinstance(value, bool):
            raise SettingsError(f"quick: expected true or false, got {value!r}")
        return value
    if key == "inject_failure":
        if value is not None and value not in ALL_SCENARIOS:
            raise SettingsError(f"inject_failure: unknown scenario {value!r}")
        return value
    raise SettingsError(f"unknown setting {key!r}")


def parse_settings(json_text: str | None, overrides: dict[str, Any]) -> Settings:
    """Settings from a JSON object, then flags (non-None overrides) on top."""
    raw: dict[str, Any] = {}
    if json_text:
        try:
            loaded = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"--settings is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError("--settings must be a JSON object")
        raw.update(loaded)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    values = {key: _coerce(key, value) for key, value in raw.items()}
    return replace(Settings(), **values)


@dataclass(kw_only=True)
class EnvChanges:
    """What apply_environment did to os.environ, for the manifest."""

    set: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _set(env: dict[str, str], changes: EnvChanges, key: str, value: str) -> None:
    env[key] = value
    changes.set[key] = value


def _remove(env: dict[str, str], changes: EnvChanges, key: str) -> None:
    if key in env:
        del env[key]
        changes.removed.append(key)


def _add_xla_flags(env: dict[str, str], changes: EnvChanges, flags: tuple[str, ...]) -> None:
    current = env.get("XLA_FLAGS", "").split()
    merged = current + [f for f in flags if f not in current]
    _set(env, changes, "XLA_FLAGS", " ".join(merged))


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

    if settings.onednn is not None:
        _set(target, changes, "TF_ENABLE_ONEDNN_OPTS", "1" if settings.onednn else "0")

    if settings.threads > 0:
        n = str(settings.threads)
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            _set(target, changes, key, n)
        if backend_hint == "jax":
            if settings.threads == 1:
                _add_xla_flags(target, changes, XLA_SINGLE_THREAD_FLAGS)
            else:
                changes.notes.append(
                    f"threads={settings.threads}: XLA's CPU backend has no thread count; "
                    "only OMP/MKL variables were set"
                )

    if settings.determinism:
        _set(target, changes, "TF_DETERMINISTIC_OPS", "1")
        _set(target, changes, "TF_CUDNN_DETERMINISTIC", "1")
        _set(target, changes, "CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        if backend_hint == "jax":
            _add_xla_flags(target, changes, (XLA_DETERMINISTIC_FLAG,))
    else:
        # An inherited switch would make "off" a lie.
        for key in ("TF_DETERMINISTIC_OPS", "TF_CUDNN_DETERMINISTIC"):
            _remove(target, changes, key)

    if settings.device == "cpu":
        # Hide GPUs from every backend so "cpu" cannot silently use one.
        _set(target, changes, "CUDA_VISIBLE_DEVICES", "")
        if backend_hint == "jax":
            _set(target, changes, "JAX_PLATFORMS", "cpu")

    return changes


def apply_runtime(settings: Settings, fw: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Apply what must be set after import and before the first op; return
    (applied settings, determinism mechanisms, notes). `fw` is a
    compat.Framework (duck-typed here to keep this module stdlib-only)."""
    notes: list[str] = []
    determinism: dict[str, Any] = {"requested": settings.determinism}
    if settings.determinism:
        determinism["enabled_by"] = fw.enable_determinism()
    try:
        threads = fw.set_threads(settings.threads)
    except RuntimeError as exc:
        # TF refuses once its runtime is initialised; say so, never pretend.
        notes.append(f"threads={settings.threads} not applied: {exc}")
        threads = fw.set_threads(0)
    fw.set_onednn(settings.onednn)
    state = fw.determinism_state()
    determinism["state"] = state
    device = fw.device_info()
    applied: dict[str, Any] = {
        "precision": settings.precision,
        "determinism": _determinism_effective(fw.backend, state, settings.determinism),
        "onednn": fw.onednn_effective(),
        "threads": threads if threads is not None else settings.threads,
        "device": device["kind"],
        "jit": settings.jit,
        # Only a GPU has a cuDNN kernel to allow or refuse.
        "cudnn": settings.cudnn if device["kind"] == "gpu" else None,
        "scenarios": list(settings.scenarios),
        "unseeded_repeats": settings.unseeded_repeats,
        "quick": settings.quick,
        "inject_failure": settings.inject_failure,
    }
    return applied, determinism, notes


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
