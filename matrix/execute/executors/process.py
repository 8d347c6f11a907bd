"""Run the scenarios runner as a local process: shared by venv and host."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from matrix import command
from matrix.execute.executors.base import (
    SCENARIOS_ROOT,
    CellRun,
    Environment,
    Prepared,
    ReadOnlyInput,
    failure_reason,
)

__all__ = ["ProcessExecutor", "run_runner", "runner_env"]

# Variables a run inherits from the host; everything else (notably any
# TF_*/KERAS_* the user happens to have exported) is left out so a cell's
# settings come from its axes alone.
_PASS_THROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "CUDA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
)
#: The file in a run's staging directory that names its runner process.
PID_FILE = "runner.pid"


def runner_env(stack_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ}
    env.update(stack_env)
    env.update(extra)
    env["PYTHONPATH"] = str(SCENARIOS_ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_runner(
    python: Path | str,
    runner_args: list[str],
    out_dir: Path,
    env: Mapping[str, str],
    timeout: float,
) -> CellRun:
    """One runner process in a session of its own (a timeout or a stop ends
    the whole tree: XLA and torch start helper processes); its pid is kept in
    the staging directory so that a later scheduler can end an orphan."""
    pid_file = out_dir.parent / PID_FILE

    def remember(pid: int) -> None:
        pid_file.write_text(str(pid))

    result = command.run(
        [str(python), "-m", "scenarios", "--out", str(out_dir), *runner_args],
        timeout=timeout,
        env=env,
        cwd=out_dir.parent,
        on_start=remember,
    )
    return CellRun(
        returncode=result.returncode,
        seconds=result.seconds,
        reason=failure_reason(
            result.returncode,
            timed_out=result.timed_out,
            timeout=timeout,
            output=result.output,
            stopped=result.stopped,
        ),
        output_tail="\n".join(result.lines[-40:]),
    )


class ProcessExecutor:
    """An executor whose runs are local processes of some interpreter:
    subclasses say which interpreter serves an environment."""

    name = "process"

    def prepare(self, env: Environment) -> Prepared:
        raise NotImplementedError

    def python_for(self, env: Environment) -> Path | str:
        raise NotImplementedError

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
        # Inputs are read where they are (the scheduler's read-only copies).
        # No memory limit: without a container there is no cgroup of our own,
        # and RLIMIT_AS breaks frameworks that reserve address space up front.
        env_vars = runner_env(env.stack.env, extra_env)
        return run_runner(self.python_for(env), runner_args, out_dir, env_vars, timeout)

    def input_path(self, item: ReadOnlyInput) -> str:
        return str(item.path.absolute())

    def terminate_all(self) -> None:
        command.terminate_all()

    def reap(self, staging: Path) -> None:
        try:
            pid = int((staging / PID_FILE).read_text())
        except (OSError, ValueError):
            return
        # Only a runner of ours: its command line names the staging directory.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if str(staging).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
