"""Where the project's files are, and where it keeps what it builds.

One place for every path the host side derives from the checkout, so that
moving a module never moves a file it reads.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CATALOG",
    "DEFAULT_SPEC",
    "DOCKERFILE",
    "LOCK_DIR",
    "MANIFEST_SCHEMA",
    "REPORT_SCHEMA",
    "ROOT",
    "SCENARIOS",
    "SPECS",
    "cache_root",
]

#: The checkout: matrix/, scenarios/, docker/ side by side.
ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "matrix"
DEFAULT_SPEC = SPECS / "default.toml"
CATALOG = SPECS / "stacks.toml"
LOCK_DIR = ROOT / "docker" / "locks"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
#: The runner's package, mounted read-only into every cell.
SCENARIOS = ROOT / "scenarios"
MANIFEST_SCHEMA = SCENARIOS / "manifest.schema.json"
REPORT_SCHEMA = ROOT / "matrix" / "report" / "report.schema.json"


def cache_root() -> Path:
    """``$KRM_CACHE`` or ``.cache/`` in the checkout: wheelhouse, venvs, base rootfs."""
    return Path(os.environ.get("KRM_CACHE", ROOT / ".cache"))
