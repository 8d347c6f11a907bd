"""The venv executor: one uv-managed virtualenv per environment, for hosts
without a Docker engine. No network or memory isolation: the report says so
by naming the executor on every cell."""

from __future__ import annotations

from pathlib import Path

from matrix.executors.base import Environment
from matrix.executors.process import ProcessExecutor
from matrix.venvs import ensure_venv

__all__ = ["VenvExecutor"]


class VenvExecutor(ProcessExecutor):
    name = "venv"

    def __init__(self, root: Path | None = None) -> None:
        self._root = root

    def prepare(self, env: Environment) -> str:
        ensure_venv(env.stack, env.target, self._root)
        return f"venv:{env.stack.lock_hash(env.target)[:12]}"

    def python_for(self, env: Environment) -> Path:
        return ensure_venv(env.stack, env.target, self._root)
