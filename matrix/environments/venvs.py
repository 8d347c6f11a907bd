"""uv-managed virtualenvs, one per (stack, target, lock): the venv executor's
environments and the test suite's way to get real frameworks without Docker."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from matrix import command
from matrix.environments.wheelhouse import timed_out_talking
from matrix.errors import BuildError, DownloadStalled
from matrix.paths import cache_root
from matrix.plan.stacks import Stack

__all__ = ["default_venv_root", "ensure_venv", "venv_dir"]

#: Creating a venv downloads up to a few GB (torch's CUDA wheels).
VENV_TIMEOUT = 2 * 3600


def default_venv_root() -> Path:
    env = os.environ.get("KRM_VENV_ROOT")
    if env:
        return Path(env)
    return cache_root() / "venvs"


def venv_dir(stack: Stack, target: str, root: Path | None = None) -> Path:
    root = root or default_venv_root()
    return root / f"{stack.name}.{target}.{stack.lock_hash(target)[:12]}"


def ensure_venv(stack: Stack, target: str = "cpu", root: Path | None = None) -> Path:
    """Return the interpreter of the stack's venv, creating it if needed.

    Built in a temporary directory and renamed into place, under a lock, so
    a killed build or two concurrent callers never leave a half venv.
    """
    final = venv_dir(stack, target, root)
    python = final / "bin" / "python"
    if python.exists():
        return python
    final.parent.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    if uv is None:
        raise BuildError("uv is not on PATH; install it with `pip install uv`")
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists():
            return python
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        steps = [
            [uv, "venv", "-q", "--python", "3.11", str(tmp)],
            [
                # Bytecode now, or every run recompiles the framework's sources.
                uv,
                "pip",
                "install",
                "-q",
                "--require-hashes",
                "--no-deps",
                "--compile-bytecode",
                "--python",
                str(tmp / "bin" / "python"),
                "-r",
                str(stack.lock_path(target)),
            ],
        ]
        for cmd in steps:
            # uv's own socket timeout turns a stalled download into an error;
            # the overall limit catches anything else.
            env = {**os.environ, "UV_HTTP_TIMEOUT": os.environ.get("UV_HTTP_TIMEOUT", "120")}
            proc = command.run(cmd, timeout=VENV_TIMEOUT, env=env)
            if not proc.ok:
                shutil.rmtree(tmp, ignore_errors=True)
                if not proc.timed_out and timed_out_talking(proc.output):
                    raise DownloadStalled(
                        f"venv for {stack.name}/{target}: a download stalled (the index stopped "
                        f"answering: {proc.last_line()[-160:]}); check the network, then run again"
                    )
                if proc.timed_out:
                    raise DownloadStalled(
                        f"venv for {stack.name}/{target}: not ready after {VENV_TIMEOUT} s "
                        "(a stalled download?); run again"
                    )
                raise BuildError(f"venv for {stack.name}/{target}: {proc.last_line() or 'stopped'}")
        # uv venv records absolute paths; renaming keeps them valid because
        # the interpreter is found through the symlink, not the prefix.
        tmp.rename(final)
    return python
