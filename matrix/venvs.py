"""uv-managed virtualenvs, one per (stack, target, lock): the venv executor's
environments and the test suite's way to get real frameworks without Docker."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from matrix.errors import BuildError
from matrix.stacks import Stack

__all__ = ["default_venv_root", "ensure_venv", "venv_dir"]


def default_venv_root() -> Path:
    env = os.environ.get("KRM_VENV_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".cache" / "venvs"


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
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise BuildError(f"venv for {stack.name}/{target}: {tail}")
        # uv venv records absolute paths; renaming keeps them valid because
        # the interpreter is found through the symlink, not the prefix.
        tmp.rename(final)
    return python
