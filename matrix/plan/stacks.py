"""The catalog of framework stacks (matrix/stacks.toml) and their lock files.

A stack is one composition of independent pins (TensorFlow, Keras, the
backend, JAX, PyTorch): one environment per target. Its ``versions`` are
the values of the contract's version axes, so a spec can ask for stacks by
name (``stack = ["tf-2.16"]``) or by versions (``tensorflow = ["2.16"]``,
``keras = ["3.4"]``); either way the cell knows both.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.errors import SpecError
from matrix.paths import CATALOG, LOCK_DIR
from scenarios.contract import VERSION_AXES, axis

__all__ = ["ARCHES", "CATALOG_PATH", "LOCK_DIR", "TARGETS", "Stack", "load_catalog"]

CATALOG_PATH = CATALOG
TARGETS = ("cpu", "cuda")
#: Architectures a lock can be for; x86_64 locks carry no suffix.
ARCHES = ("x86_64", "aarch64")

_KEYS = {
    "requirements",
    "cuda_requirements",
    "aarch64_requirements",
    "keras",
    "backend",
    "env",
    "index",
    "versions",
    "why",
}


@dataclass(frozen=True, kw_only=True)
class Stack:
    name: str
    requirements: tuple[str, ...]
    cuda_requirements: tuple[str, ...] = ()
    #: the cpu target on 64-bit Arm, where a package has another name there
    #: (tensorflow-cpu has no Arm wheels; tensorflow has)
    aarch64_requirements: tuple[str, ...] = ()
    keras: str = ""  # the Keras major the stack is meant to give: "2" or "3"
    backend: str = ""
    env: dict[str, str] = field(default_factory=dict)
    #: a package index beside PyPI (PyTorch's CPU-only wheels)
    index: str | None = None
    #: the version axes' values: tensorflow, keras, jax, torch ("none" when absent)
    versions: Mapping[str, str] = field(default_factory=dict)

    def supports(self, target: str) -> bool:
        return target == "cpu" or (target == "cuda" and bool(self.cuda_requirements))

    def requirements_for(self, target: str, arch: str = "x86_64") -> tuple[str, ...]:
        if target == "cpu" and arch == "aarch64" and self.aarch64_requirements:
            return self.aarch64_requirements
        return self.requirements if target == "cpu" else self.cuda_requirements

    def lock_path(self, target: str, arch: str = "x86_64") -> Path:
        suffix = "" if arch == "x86_64" else f".{arch}"
        return LOCK_DIR / f"{self.name}.{target}{suffix}.txt"

    def has_lock(self, target: str, arch: str = "x86_64") -> bool:
        return self.lock_path(target, arch).is_file()

    def lock_hash(self, target: str, arch: str = "x86_64") -> str:
        """sha256 of the lock file: what defines the environment's packages."""
        path = self.lock_path(target, arch)
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            if arch != "x86_64":
                raise SpecError(
                    f"stack {self.name!r} has no {arch} lock ({path.name}): its wheels are "
                    f"not locked for {arch}; run on an x86-64 host, drop it with --only, or "
                    f"try `nox -s lock -- --arch {arch} {self.name}`"
                ) from None
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
        unknown = set(entry) - _KEYS
        if unknown:
            raise SpecError(f"{path}: stacks.{name}: unknown key {sorted(unknown)[0]!r}")
        stacks[name] = Stack(
            name=name,
            requirements=tuple(entry["requirements"]),
            cuda_requirements=tuple(entry.get("cuda_requirements", ())),
            aarch64_requirements=tuple(entry.get("aarch64_requirements", ())),
            keras=str(entry.get("keras", "")),
            backend=str(entry.get("backend", "")),
            env={str(k): str(v) for k, v in entry.get("env", {}).items()},
            index=entry.get("index"),
            versions=_versions(path, name, entry),
        )
    return stacks


def _versions(path: Path, name: str, entry: Mapping[str, Any]) -> dict[str, str]:
    given = entry.get("versions", {})
    out: dict[str, str] = {}
    for axis_name in VERSION_AXES:
        value = given.get(axis_name, axis(axis_name).default)
        if not isinstance(value, str) or not value:
            raise SpecError(f"{path}: stacks.{name}.versions.{axis_name} must be a version string")
        out[axis_name] = value
    unknown = set(given) - set(VERSION_AXES)
    if unknown:
        raise SpecError(f"{path}: stacks.{name}.versions: unknown axis {sorted(unknown)[0]!r}")
    return out
