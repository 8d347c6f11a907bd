"""The host executor: one prepared interpreter (a GPU box without Docker)
serves every stack; each stack contributes only its variables, such as
KERAS_BACKEND. The fingerprint records what that interpreter really has."""

from __future__ import annotations

import hashlib

from matrix import command
from matrix.errors import BuildError
from matrix.execute.executors.base import Environment, Prepared
from matrix.execute.executors.process import ProcessExecutor

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

    def prepare(self, env: Environment) -> Prepared:
        if self._id is None:
            try:
                proc = command.run([self.python, "-c", _LIST_PACKAGES], timeout=120)
            except OSError as exc:
                raise BuildError(f"host interpreter {self.python}: {exc.strerror or exc}") from None
            if not proc.ok:
                tail = proc.last_line()[-200:] or f"exit {proc.returncode}"
                raise BuildError(f"host interpreter {self.python} does not run: {tail}")
            # What defines this environment is the set of installed packages.
            self._id = "host:" + hashlib.sha256(proc.output.encode()).hexdigest()[:12]
        return Prepared(id=self._id, built=False)

    def python_for(self, env: Environment) -> str:
        return self.python
