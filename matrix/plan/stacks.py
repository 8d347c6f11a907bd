"""The catalog of framework stacks (matrix/stacks.toml) and their lock files."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from matrix.errors import SpecError
from matrix.paths import CATALOG, LOCK_DIR

__all__ = ["CATALOG_PATH", "LOCK_DIR", "TARGETS", "Stack", "load_catalog"]

CATALOG_PATH = CATALOG
TARGETS = ("cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class Stack:
    name: str
    requirements: tuple[str, ...]
    cuda_requirements: tuple[str, ...] = ()
    keras: str = ""
    backend: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def supports(self, target: str) -> bool:
        return target == "cpu" or (target == "cuda" and bool(self.cuda_requirements))

    def requirements_for(self, target: str) -> tuple[str, ...]:
        return self.requirements if target == "cpu" else self.cuda_requirements

    def lock_path(self, target: str) -> Path:
        return LOCK_DIR / f"{self.name}.{target}.txt"

    def lock_hash(self, target: str) -> str:
        """sha256 of the lock file: what defines the environment's packages."""
        path = self.lock_path(target)
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise SpecError(
                f"{path}: no lock for stack {self.name!r} on {target}; run `nox -s lock`"
            ) from None


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, Stack]:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the stack catalog: {exc}") from None
    stacks: dict[str, Stack] = {}
    for name, entry in raw.get("stacks", {}).items():
        stacks[name] = Stack(
            name=name,
            requirements=tuple(entry["requirements"]),
            cuda_requirements=tuple(entry.get("cuda_requirements", ())),
            keras=str(entry.get("keras", "")),
            backend=str(entry.get("backend", "")),
            env={str(k): str(v) for k, v in entry.get("env", {}).items()},
        )
    return stacks
