"""The venv executor: one uv-managed virtualenv per environment, for hosts
without a Docker engine. No network or memory isolation: the report says so
by naming the executor on every cell."""

from __future__ import annotations

from pathlib import Path

from matrix.environments.venvs import ensure_venv, venv_dir
from matrix.execute.executors.base import Environment, Prepared
from matrix.execute.executors.process import ProcessExecutor

__all__ = ["VenvExecutor"]


class VenvExecutor(ProcessExecutor):
    name = "venv"

    def __init__(self, root: Path | None = None) -> None:
        self._root = root

    def prepare(self, env: Environment) -> Prepared:
        existed = (venv_dir(env.stack, env.target, self._root) / "bin" / "python").exists()
        ensure_venv(env.stack, env.target, self._root)
        return Prepared(id=f"venv:{env.stack.lock_hash(env.target)[:12]}", built=not existed)

    def python_for(self, env: Environment) -> Path:
        return ensure_venv(env.stack, env.target, self._root)
