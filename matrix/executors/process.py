"""Run the scenarios runner as a local process: shared by venv and host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from matrix.executors.base import SCENARIOS_ROOT, CellRun, Environment

__all__ = ["ProcessExecutor", "run_runner", "runner_env", "terminate_all"]

# Runner processes live in sessions of their own (see run_runner), so Ctrl-C
# does not reach them: the scheduler ends them through this registry.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def terminate_all() -> None:
    """Kill every runner process tree still going (on Ctrl-C or a fatal error)."""
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


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
    cmd = [str(python), "-m", "scenarios", "--out", str(out_dir), *runner_args]
    started = time.monotonic()
    # A session of its own, so a timeout kills the whole tree (XLA and torch
    # start helper processes) and Ctrl-C in the terminal reaches us first.
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(out_dir.parent),
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return CellRun(
            returncode=None,
            seconds=time.monotonic() - started,
            reason=f"timeout after {timeout:g} s",
            output_tail=_tail(output),
        )
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    seconds = time.monotonic() - started
    tail = _tail(output)
    code = proc.returncode
    if code == 0:
        return CellRun(returncode=0, seconds=seconds, output_tail=tail)
    if code == -signal.SIGKILL:
        reason = "killed by SIGKILL (out of memory?)"
    elif code < 0:
        reason = f"killed by signal {signal.Signals(-code).name}"
    else:
        last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "no output")
        reason = f"exit {code}: {last.strip()[:300]}"
    return CellRun(returncode=code, seconds=seconds, reason=reason, output_tail=tail)


def _tail(output: bytes | None, lines: int = 40) -> str:
    text = (output or b"").decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


class ProcessExecutor:
    """An executor whose runs are local processes of some interpreter:
    subclasses say which interpreter serves an environment."""

    name = "process"

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
    ) -> CellRun:
        # No memory limit: without a container there is no cgroup of our own,
        # and RLIMIT_AS breaks frameworks that reserve address space up front.
        env_vars = runner_env(env.stack.env, extra_env)
        return run_runner(self.python_for(env), runner_args, out_dir, env_vars, timeout)
