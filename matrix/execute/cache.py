"""Content-addressed cell cache.

A run is skipped when its directory already holds an artifact made from the
same environment (image id or lock hash), the same scenario code and the same
runner arguments. The key is stored in the run's ``run.json``; the manifest is
moved in last, so a half-written directory never counts as cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matrix.errors import ArtifactError
from matrix.untrusted import read_json
from scenarios.contract import MANIFEST, RUN_RECORD, TENSORS

__all__ = ["cache_key", "cached", "read_record", "scenarios_hash"]


def scenarios_hash(root: Path) -> str:
    """sha256 over the scenarios package: every file that can change a result."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".json"}:
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def cache_key(
    *,
    environment_id: str,
    scenarios: str,
    runner_args: Sequence[str],
    repeat: int,
    executor: str,
    machine: str = "",
) -> str:
    """``machine``: what defines the host's CPU (results directories travel;
    a result made on another CPU is no cached result for this one)."""
    payload = json.dumps(
        {
            "environment_id": environment_id,
            "scenarios": scenarios,
            "runner_args": list(runner_args),
            "repeat": repeat,
            "executor": executor,
            "machine": machine,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


#: A run record is a few hundred bytes.
_MAX_RECORD_BYTES = 1 << 20


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when there is none or it is not one: a
    record left by anyone but the scheduler (a FIFO, a huge or deeply nested
    file) only makes the run count as not cached."""
    path = run_dir / RUN_RECORD
    if not path.exists():
        return None
    try:
        data = read_json(path, limit=_MAX_RECORD_BYTES, within=run_dir)
    except ArtifactError:
        return None
    return data if isinstance(data, dict) else None


def cached(run_dir: Path, key: str) -> bool:
    record = read_record(run_dir)
    return (
        record is not None
        and record.get("status") == "ok"
        and record.get("cache_key") == key
        and (run_dir / MANIFEST).is_file()
        and (run_dir / TENSORS).is_file()
    )
