"""Run every selected scenario in one process and assemble the manifest.

The framework is imported once per cell. Each scenario's failure becomes a
status and an error in its own entry; the others still run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenarios import compat, fingerprint, hardware
from scenarios.artifact import TensorStore
from scenarios.context import FRAMEWORK_PARTS, ScenarioContext, Unsupported, error_record
from scenarios.contract import SCHEMA_ID, SCHEMA_VERSION, Meta, registry
from scenarios.settings import EnvChanges, Settings, apply_runtime

__all__ = ["CellResult", "Meta", "finish", "run_cell"]


@dataclass(kw_only=True)
class CellResult:
    manifest: dict[str, Any]
    store: TensorStore
    #: what the libraries reported about their dispatch during the run
    observed: dict[str, Any] = field(default_factory=dict)


def finish(result: CellResult, log_text: str) -> None:
    """Complete the fingerprint with what only the run's log says (oneDNN's
    dispatch report), once the log is whole."""
    fp = result.manifest.get("fingerprint", {})
    if "isa" not in fp:
        return
    observed = {**result.observed, "onednn": hardware.observe_log(log_text)}
    fp["isa"] = fingerprint.isa_block(fp["isa"]["requested"], observed)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _entry(
    status: str,
    seconds: float,
    *,
    error: dict[str, str] | None = None,
    ctx: ScenarioContext | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "error": error,
        "seconds": round(seconds, 6),
        "timings": {k: round(v, 6) for k, v in (ctx.timings if ctx else {}).items()},
        "tensors": list(ctx.keys) if ctx else [],
        "notes": list(ctx.notes) if ctx else [],
        "phases": dict(ctx.phases) if ctx else {},
        "data": dict(ctx.data) if ctx else {},
    }


def _run_scenario(
    name: str,
    fn: Callable[[ScenarioContext], None] | None,
    fw: compat.Framework,
    settings: Settings,
    store: TensorStore,
    files: Path | None = None,
) -> tuple[dict[str, Any], ScenarioContext]:
    ctx = ScenarioContext(name=name, fw=fw, settings=settings, store=store, files=files)
    notes_before = len(fw.notes)
    start = time.perf_counter()
    try:
        if fn is None:
            raise ImportError(f"scenario module {name} could not be imported")
        fn(ctx)
        status, error = "ok", None
        failed = ctx.failed_phases()
        if failed:
            # The scenario ran to its end, but not every phase gave tensors.
            first = ctx.phases[failed[0]]["error"]
            status = "failed"
            error = {
                "type": first["type"],
                "message": f"phase {', '.join(failed)} failed: {first['message']}",
                "traceback": first["traceback"],
            }
    except Unsupported as exc:
        status, error = "unsupported", error_record(exc)
    except Exception as exc:  # broad on purpose: one scenario's failure is data
        status, error = "failed", error_record(exc)
    finally:
        # Cleanup must never hide the scenario's own result.
        with contextlib.suppress(Exception):
            fw.clear()
    # Workarounds compat had to apply during this scenario are its notes.
    for note in fw.notes[notes_before:]:
        ctx.note(note)
    return _entry(status, time.perf_counter() - start, error=error, ctx=ctx), ctx


def _observed_jit(contexts: list[ScenarioContext]) -> str | None:
    seen = {bool(v) for c in contexts for v in c.observed_jit if v is not None and v != "auto"}
    if seen == {True}:
        return "on"
    if seen == {False}:
        return "off"
    return "mixed" if seen else None


def run_cell(
    *,
    settings: Settings,
    meta: Meta,
    env_changes: EnvChanges,
    started_at: str,
    t_start: float,
    files: Path | None = None,
) -> CellResult:
    store = TensorStore()
    timings: dict[str, float] = {}
    notes = list(env_changes.notes)
    requested = settings.to_json()

    t = time.perf_counter()
    try:
        fw = compat.load()
    except Exception as exc:  # broad on purpose: an environment that cannot import is a result
        timings["import"] = time.perf_counter() - t
        return _import_failure(
            exc,
            settings=settings,
            meta=meta,
            env_changes=env_changes,
            started_at=started_at,
            t_start=t_start,
            timings=timings,
            store=store,
        )
    timings["import"] = time.perf_counter() - t

    t = time.perf_counter()
    applied, determinism, runtime_notes = apply_runtime(settings, fw)
    notes += runtime_notes
    determinism["environment"] = {"set": env_changes.set, "removed": env_changes.removed}
    timings["settings"] = time.perf_counter() - t

    scenarios: dict[str, Any] = {}
    contexts: list[ScenarioContext] = []
    # Stage 2 runs the second stage of the scenarios asked (the settings checked they have one).
    functions = {
        name: s.run if settings.stage == 1 else s.stage_two for name, s in registry().items()
    }
    t = time.perf_counter()
    refusal = _unavailable(settings, applied, env_changes, fw.backend)
    if refusal is not None:
        # A cell silently run on other hardware than it asked for would
        # poison every comparison it is part of.
        for name in settings.scenarios:
            scenarios[name] = _entry("unsupported", 0.0, error=refusal)
    else:
        for name in settings.scenarios:
            scenarios[name], ctx = _run_scenario(
                name, functions.get(name), fw, settings, store, files
            )
            contexts.append(ctx)
    timings["scenarios"] = time.perf_counter() - t

    jit = _observed_jit(contexts)
    if jit in ("on", "off"):
        applied["jit"] = jit
    elif jit == "mixed":
        notes.append("models compiled with different effective jit_compile values")
    policy = scenarios.get("precision", {}).get("data", {}).get("policy")
    if policy:
        applied["precision"] = policy

    t = time.perf_counter()
    fp = fingerprint.collect(
        fw, applied=applied, determinism=determinism, environment_id=meta.environment_id
    )
    fp["jit"] = jit if jit is not None else settings.jit
    observed = _observe(fw, env_changes)
    fp["isa"] = fingerprint.isa_block(settings.isa, observed)
    fp["defaults"] = fingerprint.hardware_defaults(fw, requested=requested, applied=applied)
    timings["fingerprint"] = time.perf_counter() - t

    framework = sum(
        v for c in contexts for k, v in c.timings.items() if k.rsplit(".", 1)[-1] in FRAMEWORK_PARTS
    )
    timings["framework"] = framework
    timings["total"] = time.perf_counter() - t_start
    manifest = _manifest(meta, fp, requested, applied, scenarios, timings, notes, started_at)
    return CellResult(manifest=manifest, store=store, observed=observed)


def _unavailable(
    settings: Settings, applied: dict[str, Any], env_changes: EnvChanges, backend: str
) -> dict[str, str] | None:
    """Why this cell cannot run as asked on this machine, or None."""
    if env_changes.unsupported is not None:
        return {"type": "IsaUnavailable", "message": env_changes.unsupported}
    if settings.device == "gpu" and applied["device"] != "gpu":
        return {"type": "DeviceUnavailable", "message": f"--device gpu but {backend} sees no GPU"}
    if settings.tf32 is not None and applied["device"] != "gpu":
        return {
            "type": "DeviceUnavailable",
            "message": "tf32 is a mode of NVIDIA GPU matmuls (Ampere and later); "
            "this cell computes on the CPU",
        }
    return None


def _observe(fw: compat.Framework, env_changes: EnvChanges) -> dict[str, Any]:
    """What the libraries say they dispatched to, asked after the run."""
    observed: dict[str, Any] = {"openblas": hardware.openblas_core()}
    if fw.backend == "torch":
        observed["aten"] = fw.cpu_capability()
    if fw.backend in ("tensorflow", "jax"):
        observed["xla_cap_supported"] = env_changes.probes.get("binary", {}).get("xla_cpu_max_isa")
    if fw.backend == "tensorflow":
        observed["fixed"] = ["eigen"]  # compiled for one instruction set: no cap reaches it
    return observed


def _manifest(
    meta: Meta,
    fp: dict[str, Any],
    requested: dict[str, Any],
    applied: dict[str, Any],
    scenarios: dict[str, Any],
    timings: dict[str, float],
    notes: list[str],
    started_at: str,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "cell": meta.to_json(),
        "fingerprint": fp,
        "settings": {"requested": requested, "applied": applied},
        "scenarios": scenarios,
        "tensors": {},  # filled by artifact.write_artifact
        "timings": {k: round(v, 6) for k, v in timings.items()},
        "notes": notes,
        "started_at": started_at,
        "finished_at": _now(),
    }


def _import_failure(
    exc: BaseException,
    *,
    settings: Settings,
    meta: Meta,
    env_changes: EnvChanges,
    started_at: str,
    t_start: float,
    timings: dict[str, float],
    store: TensorStore,
) -> CellResult:
    error = error_record(exc)
    error["type"] = (
        f"ImportError:{error['type']}" if error["type"] != "ImportError" else error["type"]
    )
    scenarios = {name: _entry("failed", 0.0, error=error) for name in settings.scenarios}
    fp = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "packages": fingerprint.framework_packages(),
        "keras_version": None,
        "keras_major": None,
        "backend": compat.backend_hint(),
        "device": {"kind": "cpu", "name": None},
        "cpu": fingerprint.cpu_info(),
        "onednn": None,
        "threads": None,
        "determinism": {},
        "jit": None,
        "env": fingerprint.relevant_env(),
        "environment_id": meta.environment_id,
    }
    timings["total"] = time.perf_counter() - t_start
    notes = [*env_changes.notes, "the framework failed to import; nothing ran"]
    # Nothing was applied: the framework never loaded.
    manifest = _manifest(meta, fp, settings.to_json(), {}, scenarios, timings, notes, started_at)
    return CellResult(manifest=manifest, store=store)
