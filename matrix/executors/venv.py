"""The venv executor: one uv-managed virtualenv per environment, for hosts
without a Docker engine. No network or memory isolation: the report says so
by naming the executor on every cell."""

from __future__ import annotations

from pathlib import Path

from matrix.executors.base import CellRun, Environment
from matrix.executors.process import run_runner, runner_env
from matrix.venvs import ensure_venv

__all__ = ["VenvExecutor"]


class VenvExecutor:
    name = "venv"

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._python: dict[str, Path] = {}

    def prepare(self, env: Environment) -> str:
        self._python[env.name] = ensure_venv(env.stack, env.target, self._root)
        return f"venv:{env.stack.lock_hash(env.target)[:12]}"

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
        python = self._python.get(env.name) or ensure_venv(env.stack, env.target, self._root)
        return run_runner(python, runner_args, out_dir, runner_env(env.stack.env, extra_env), timeout)
