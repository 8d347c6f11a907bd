"""What every executor does: make an environment ready, run one cell in it.

An executor turns (environment, runner arguments) into an artifact directory
written by ``python -m scenarios``; the scheduler never knows which kind ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from matrix.stacks import Stack

__all__ = ["CellRun", "Environment", "Executor"]

#: Where the repository's scenarios/ package is, on the host.
SCENARIOS_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True, kw_only=True)
class Environment:
    """One stack on one target: one image or one venv."""

    stack: Stack
    target: str  # "cpu" or "cuda"

    @property
    def name(self) -> str:
        return f"{self.stack.name}.{self.target}"


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

    def prepare(self, env: Environment) -> str:
        """Build or find the environment; return its id (image id, venv hash).

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
    ) -> CellRun:
        """Run ``python -m scenarios --out <out_dir> *runner_args`` in the
        environment. ``out_dir`` does not exist yet; its parent does and is
        the only place the run may write on the host."""
        ...
