"""The host executor: one prepared interpreter (a GPU box without Docker)
serves every stack; each stack contributes only its variables, such as
KERAS_BACKEND. The fingerprint records what that interpreter really has."""

from __future__ import annotations

import hashlib
import subprocess

from matrix.errors import BuildError
from matrix.executors.base import Environment
from matrix.executors.process import ProcessExecutor

__all__ = ["HostExecutor"]

_LIST_PACKAGES = (
    "import importlib.metadata as m;"
    "print('\\n'.join(sorted(f'{d.metadata[\"Name\"]}=={d.version}' for d in m.distributions())))"
)


class HostExecutor(ProcessExecutor):
    name = "host"

    def __init__(self, python: str) -> None:
        self.python = python
        self._id: str | None = None

    def prepare(self, env: Environment) -> str:
        if self._id is None:
            try:
                proc = subprocess.run(
                    [self.python, "-c", _LIST_PACKAGES], capture_output=True, text=True, timeout=120
                )
            except OSError as exc:
                raise BuildError(f"host interpreter {self.python}: {exc.strerror or exc}") from None
            if proc.returncode != 0:
                tail = proc.stderr.strip()[-200:] or f"exit {proc.returncode}"
                raise BuildError(f"host interpreter {self.python} does not run: {tail}")
            # What defines this environment is the set of installed packages.
            self._id = "host:" + hashlib.sha256(proc.stdout.encode()).hexdigest()[:12]
        return self._id

    def python_for(self, env: Environment) -> str:
        return self.python
