"""``python -m matrix`` as a real process, as a user runs it: the suite's
many end-to-end tests share this one way of starting it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_matrix(
    *args: str,
    timeout: float,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m matrix ARGS`` with this checkout first on the path;
    ``env`` is added to the caller's environment. Output is decoded as
    UTF-8, anything undecodable replaced (hostile input may print it)."""
    return subprocess.run(
        [sys.executable, "-m", "matrix", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8", **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )
