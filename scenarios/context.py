"""What a scenario gets to work with, and what it hands back."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenarios.artifact import TensorStore
from scenarios.compat import Framework, Unsupported
from scenarios.settings import Settings

__all__ = ["FRAMEWORK_PARTS", "InjectedFailure", "ScenarioContext", "Unsupported", "error_record"]

TRACEBACK_LINES = 25

# Timing parts that are the framework's own work; everything else a runner
# spends is its overhead (see benchmarks/bench_runner.py).
FRAMEWORK_PARTS = ("build", "compile", "fit", "predict", "init")


class InjectedFailure(RuntimeError):
    """Raised on purpose by --inject-failure (tests prove isolation with it)."""


def error_record(exc: BaseException) -> dict[str, str]:
    """type, message and the traceback's tail, as the manifest holds them."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    tail = "".join(lines).rstrip().splitlines()[-TRACEBACK_LINES:]
    return {"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": "\n".join(tail)}


@dataclass(kw_only=True)
class ScenarioContext:
    name: str
    fw: Framework
    settings: Settings
    store: TensorStore
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    observed_jit: list[Any] = field(default_factory=list)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where this run's scenarios save files (the artifact's files/); None: nowhere
    files: Path | None = None

    def file_dir(self) -> Path:
        """This scenario's directory for files it saves into the artifact
        (``files/<scenario>/``), created on first use."""
        if self.files is None:
            raise RuntimeError("this run has no directory for saved files")
        path = self.files / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put(self, phase: str, name: str, value: Any) -> None:
        self.keys.append(self.store.put(f"{self.name}/{phase}/{name}", value))

    def put_reference(self, phase: str, name: str, value: Any) -> None:
        """The float64 oracle for the cell tensor of the same phase/name."""
        self.keys.append(self.store.put(f"reference/{self.name}/{phase}/{name}", value))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run one phase; its failure is recorded and the next phase runs,
        so one broken API does not hide what the other phases found."""
        try:
            yield
        except (InjectedFailure, Unsupported):
            raise
        except Exception as exc:  # broad on purpose: a phase's failure is data
            self.phases[name] = {"status": "failed", "error": error_record(exc)}
        else:
            self.phases[name] = {"status": "ok", "error": None}

    def failed_phases(self) -> list[str]:
        return [name for name, p in self.phases.items() if p["status"] != "ok"]

    @contextmanager
    def timed(self, phase: str, part: str) -> Iterator[None]:
        """Accumulate seconds under 'phase.part' (part: build, fit, predict...)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"{phase}.{part}"
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def epochs(self, full: int) -> int:
        """--quick trades faithfulness for speed: a tenth of the epochs."""
        return max(1, full // 10) if self.settings.quick else full

    def maybe_fail(self) -> None:
        if self.settings.inject_failure == self.name:
            raise InjectedFailure(f"failure injected into {self.name} by --inject-failure")
