"""Content-addressed cell cache.

A run is skipped when its directory already holds an artifact made from the
same environment (image id or lock hash), the same scenario code, the same
runner arguments and the same content of every file it reads (the user's
model, the stage-one files of other cells). The key is stored in the run's
``run.json``; the manifest is moved in last, so a half-written directory never
counts as cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matrix.errors import ArtifactError
from matrix.untrusted import read_json
from scenarios.contract import MANIFEST, RUN_RECORD, TENSORS

__all__ = ["cache_key", "cached", "content_digest", "read_record", "scenarios_hash"]


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


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a directory's relative paths and file
    contents: what a run that reads ``path`` depends on."""
    digest = hashlib.sha256()
    if path.is_file():
        _feed(digest, path)
        return digest.hexdigest()
    for item in sorted(path.rglob("*")):
        if item.is_file():
            digest.update(item.relative_to(path).as_posix().encode())
            digest.update(b"\0")
            _feed(digest, item)
            digest.update(b"\0")
    return digest.hexdigest()


def _feed(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def cache_key(
    *,
    environment_id: str,
    scenarios: str,
    runner_args: Sequence[str],
    repeat: int,
    executor: str,
    inputs: Mapping[str, str] | None = None,
    machine: str = "",
) -> str:
    """``inputs``: name -> content digest of every file the run reads besides
    the scenarios (the user's model, other cells' stage-one files), so that
    changing one re-runs the cells and an unchanged one is reused.
    ``machine``: what defines the host's CPU (results directories travel; a
    result made on another CPU is no cached result for this one)."""
    fields: dict[str, Any] = {
        "environment_id": environment_id,
        "scenarios": scenarios,
        "runner_args": list(runner_args),
        "repeat": repeat,
        "executor": executor,
        "machine": machine,
    }
    if inputs:  # absent otherwise: keys of runs without inputs stay as they were
        fields["inputs"] = dict(sorted(inputs.items()))
    payload = json.dumps(fields, sort_keys=True)
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
