"""Regenerate docker/locks/<stack>.<target>.txt from matrix/stacks.toml.

Locks pin every package with its hashes for CPython 3.11 on manylinux
x86_64, so an image and a venv of the same stack install the same wheels.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from matrix import command
from matrix.errors import BuildError
from matrix.paths import LOCK_DIR
from matrix.plan.stacks import TARGETS, load_catalog

__all__ = ["lock_command"]


def lock_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="nox -s lock --")
    parser.add_argument("stacks", nargs="*", help="stacks to lock (default: all)")
    parser.add_argument("--upgrade", action="store_true", help="re-resolve transitive versions")
    opts = parser.parse_args(list(argv))
    uv = shutil.which("uv")
    if uv is None:
        raise BuildError("uv is not on PATH; install it with `pip install uv`")
    catalog = load_catalog()
    for name in opts.stacks or sorted(catalog):
        stack = catalog[name]
        for target in TARGETS:
            if not stack.supports(target):
                continue
            out = LOCK_DIR / f"{name}.{target}.txt"
            with tempfile.NamedTemporaryFile("w", suffix=".in") as req:
                req.write("\n".join(stack.requirements_for(target)) + "\n")
                req.flush()
                cmd = [
                    uv,
                    "pip",
                    "compile",
                    "-q",
                    "--generate-hashes",
                    "--no-header",
                    "--no-annotate",
                    "--python-version",
                    "3.11",
                    "--python-platform",
                    "x86_64-manylinux_2_28",
                    req.name,
                    "-o",
                    str(out),
                ]
                if opts.upgrade:
                    cmd.append("--upgrade")
                proc = command.run(cmd, timeout=1800)
            if not proc.ok:
                raise BuildError(f"{name}/{target}: {proc.last_line() or 'timed out'}")
            print(f"{out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0
