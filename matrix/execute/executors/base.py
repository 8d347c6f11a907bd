"""What every executor does: make an environment ready, run one cell in it,
end what it runs on a stop, and clean up after a scheduler that was killed.

An executor turns (environment, runner arguments) into an artifact directory
written by ``python -m scenarios``; the scheduler never knows which kind ran.
How a run ended is put into words by :func:`failure_reason`, one vocabulary
for containers and processes alike.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from matrix.paths import ROOT
from matrix.plan.stacks import Stack

__all__ = [
    "SCENARIOS_ROOT",
    "CellRun",
    "Environment",
    "Executor",
    "Prepared",
    "ReadOnlyInput",
    "failure_reason",
]

#: The directory that holds the ``scenarios`` package, on the host.
SCENARIOS_ROOT = ROOT


@dataclass(frozen=True, kw_only=True)
class Environment:
    """One stack on one target: one image or one venv."""

    stack: Stack
    target: str  # "cpu" or "cuda"

    @property
    def name(self) -> str:
        return f"{self.stack.name}.{self.target}"


@dataclass(frozen=True, kw_only=True)
class ReadOnlyInput:
    """A host file or directory a run reads and never writes: the user's
    model, another cell's stage-one files. ``name`` is unique within a run
    and a plain file name (the docker executor mounts it at
    ``/opt/krm/in/<name>``)."""

    name: str
    path: Path


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """An environment ready to run cells: its id (image id, venv lock hash),
    which every cache key includes, and whether it had to be built now."""

    id: str
    built: bool


@dataclass(frozen=True, kw_only=True)
class CellRun:
    """How one runner process ended.

    ``reason`` is None when the process exited 0 and left an artifact;
    otherwise one line: "timeout after 600 s", "out of memory (exit 137)",
    "exit 1: ImportError: ...".
    """

    returncode: int | None
    seconds: float
    reason: str | None = None
    output_tail: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Executor(Protocol):
    name: str

    def prepare(self, env: Environment) -> Prepared:
        """Build or find the environment.

        Raises BuildError (one line) when it cannot be made.
        """
        ...

    def run_cell(
        self,
        env: Environment,
        environment_id: str,
        runner_args: list[str],
        out_dir: Path,
        *,
        timeout: float,
        memory: str,
        gpu: bool,
        extra_env: dict[str, str],
        inputs: Sequence[ReadOnlyInput] = (),
    ) -> CellRun:
        """Run ``python -m scenarios --out <out_dir> *runner_args`` in the
        environment. ``out_dir`` does not exist yet; its parent (the run's
        staging directory) does and is the only place the run may write on
        the host. ``inputs`` are readable by the run, read-only, at
        :meth:`input_path`."""
        ...

    def input_path(self, item: ReadOnlyInput) -> str:
        """Where a run sees an input (the runner arguments name it so)."""
        ...

    def terminate_all(self) -> None:
        """End every run and build still going (a stop: Ctrl-C, SIGTERM)."""
        ...

    def reap(self, staging: Path) -> None:
        """End what a killed scheduler left running for this staging directory."""
        ...


#: What ``docker run`` itself exits with for its own failures, not the
#: command's: 125 the daemon refused, 126 not executable, 127 not found.
_ENGINE_ERRORS = {125: "docker run failed", 126: "not executable", 127: "command not found"}


def failure_reason(
    returncode: int | None,
    *,
    timed_out: bool,
    timeout: float,
    output: str = "",
    container: bool = False,
    stopped: bool = False,
) -> str | None:
    """One line saying why a run failed; None when it did not.

    A process killed by signal N reports -N; a container's process 128+N.
    SIGKILL is only sent by the host on a timeout or a stop (and then said
    so), so any other SIGKILL comes from the kernel's OOM killer.
    """
    if timed_out:
        return f"timeout after {timeout:g} s"
    if stopped:
        return "stopped"
    if returncode == 0:
        return None
    if returncode is None:
        return "no exit status"
    if container and returncode in _ENGINE_ERRORS:
        # The daemon's own message comes first; the last line is only
        # "Run 'docker run --help' for more information".
        daemon = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("docker:")]
        detail = daemon[0].removeprefix("docker:").strip()[:300] if daemon else _last(output)
        if "could not select device driver" in output:
            detail = "the engine has no GPU support: install the NVIDIA Container Toolkit"
        return f"exit {returncode}: {_ENGINE_ERRORS[returncode]}: {detail}"
    signum = -returncode if returncode < 0 else (returncode - 128 if container else 0)
    if signum == signal.SIGKILL:
        return f"out of memory (killed, exit {returncode})"
    if signum > 0 and (returncode < 0 or returncode > 128):
        return f"killed by signal {_signal_name(signum)} (exit {returncode})"
    detail = _last_error_line(output)
    return f"exit {returncode}: {detail}" if detail else f"exit {returncode}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _last(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _last_error_line(output: str) -> str:
    """The last line that looks like a Python exception, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else ""
