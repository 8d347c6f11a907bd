"""Hashed locks: what an environment installs, exactly.

``docker/locks/<stack>.<target>.txt`` pins every package with its hashes for
CPython 3.11 on manylinux x86-64 (``<stack>.<target>.aarch64.txt`` for 64-bit
Arm where a stack has wheels for it), so an image and a venv of the same
stack install the same wheels. ``nox -s lock`` regenerates them from
``matrix/stacks.toml`` with uv; ``docker/locks/tools.txt`` pins uv itself,
which every image build runs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from matrix import command
from matrix.console import output
from matrix.errors import BuildError, SpecError
from matrix.paths import LOCK_DIR
from matrix.plan.stacks import ARCHES, TARGETS, load_catalog

__all__ = [
    "PLATFORM_TAGS",
    "TOOLS_LOCK",
    "LockedWheel",
    "cuda_versions",
    "lock_command",
    "parse_lock",
]

#: uv, pinned: the installer every image build runs.
TOOLS_LOCK = LOCK_DIR / "tools.txt"
#: The wheel tags an image can load, per architecture: CPython 3.11 on glibc
#: (Debian bookworm has glibc 2.36; pip takes only the tags it is given).
PLATFORM_TAGS: dict[str, tuple[str, ...]] = {
    "x86_64": (
        "manylinux1_x86_64",
        "manylinux2010_x86_64",
        "manylinux2014_x86_64",
        *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 37)),
    ),
    "aarch64": (
        "manylinux2014_aarch64",
        *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)),
    ),
}


@dataclass(frozen=True, kw_only=True)
class LockedWheel:
    name: str  # normalized: lower case, "-" for "_" and "."
    version: str
    hashes: frozenset[str]
    line: str  # the entry as the lock writes it (continuations joined)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> list[LockedWheel]:
    """The ``name==version --hash=sha256:...`` entries of a hashed lock."""
    joined = re.sub(r"\\\s*\n", " ", text)
    entries: list[LockedWheel] = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        spec = line.split()[0].split(";")[0]
        name, sep, version = spec.partition("==")
        if not sep:
            raise BuildError(f"lock entry {spec!r} is not pinned with ==")
        name = name.split("[")[0]
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        entries.append(LockedWheel(name=normalize(name), version=version, hashes=hashes, line=line))
    return entries


def index_options(text: str) -> list[str]:
    """The index lines (``--index-url``, ``--extra-index-url``) a lock carries."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith(("--index-url", "--extra-index-url"))
    ]


def cuda_versions(lock_text: str) -> dict[str, str]:
    """The CUDA pieces a lock installs as wheels, keyed by a short name.

    ``nvidia-cudnn-cu12==8.9.4.25`` -> ``{"cudnn": "8.9.4.25"}``; CUDA 13
    wheels drop the ``-cu12`` suffix on some names, hence the optional group.
    """
    found: dict[str, str] = {}
    for wheel in parse_lock(lock_text):
        match = re.fullmatch(r"nvidia-(.+?)(?:-cu\d+)?", wheel.name)
        if not match:
            continue
        short = {"cuda-runtime": "cuda", "cudnn": "cudnn", "nccl": "nccl"}.get(match.group(1))
        if short:
            found[short] = wheel.version
    return found


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SpecError(f"{self.prog}: {message}")


def compile_command(
    uv: str, requirements: Path, out: Path, *, arch: str, index: str | None, upgrade: bool
) -> list[str]:
    """The ``uv pip compile`` line of one lock (pure)."""
    cmd = [
        uv, "pip", "compile", "-q", "--generate-hashes", "--no-header", "--no-annotate",
        "--python-version", "3.11", "--python-platform", f"{arch}-manylinux_2_28",
        str(requirements), "-o", str(out),
    ]  # fmt: skip
    if index is not None:
        # PyTorch's CPU-only wheels live on its own index; the lock names it,
        # so pip and uv read it back when they install.
        cmd += ["--index-url", index, "--extra-index-url", "https://pypi.org/simple",
                "--emit-index-url", "--index-strategy", "unsafe-best-match"]  # fmt: skip
    if upgrade:
        cmd.append("--upgrade")
    return cmd


def lock_command(argv: Sequence[str]) -> int:
    parser = _Parser(prog="nox -s lock --", description="Regenerate docker/locks with uv.")
    parser.add_argument("stacks", nargs="*", help="stacks to lock (default: all)")
    parser.add_argument("--upgrade", action="store_true", help="re-resolve transitive versions")
    parser.add_argument("--arch", choices=ARCHES, default="x86_64", help="wheel architecture")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        action="append",
        default=None,
        help="targets to lock (default: every target on x86_64; cpu on aarch64, where the "
        "CUDA wheels of most stacks do not exist)",
    )
    opts = parser.parse_args(list(argv))
    targets = opts.target or (TARGETS if opts.arch == "x86_64" else ("cpu",))
    uv = shutil.which("uv")
    if uv is None:
        raise BuildError("uv is not on PATH; install it with `pip install uv`")
    catalog = load_catalog()
    unknown = [name for name in opts.stacks if name not in catalog]
    if unknown:
        raise SpecError(f"unknown stack {unknown[0]!r} (known: {', '.join(sorted(catalog))})")
    for name in opts.stacks or sorted(catalog):
        stack = catalog[name]
        for target in targets:
            if not stack.supports(target):
                continue
            out = stack.lock_path(target, opts.arch)
            with tempfile.NamedTemporaryFile("w", suffix=".in") as req:
                req.write("\n".join(stack.requirements_for(target, opts.arch)) + "\n")
                req.flush()
                cmd = compile_command(
                    uv, Path(req.name), out, arch=opts.arch, index=stack.index, upgrade=opts.upgrade
                )
                proc = command.run(cmd, timeout=1800)
            if not proc.ok:
                raise BuildError(f"{name}/{target}: {proc.last_line() or 'timed out'}")
            output.line(str(out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out))
    return 0
