"""The read-only copy of the user's files every cell of a run reads.

Copied once per run into ``RESULTS/.inputs/<digest>/`` under the names the
check gave them (``model.keras``, ``inputs.npz``...), hashed from the copy,
and never written again: the digests in the cache keys are then exactly what
the cells read, even if the originals change during the run, and a container
user that could not read the user's own files (a 0600 file of another uid)
can read the copy. The originals are only ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from matrix.errors import UserInputError
from matrix.execute.cache import content_digest
from matrix.execute.executors.base import ReadOnlyInput
from matrix.user.check import UserRun, shown

__all__ = ["INPUTS_DIR", "Snapshot", "snapshot"]

#: Under the results directory; the leading dot keeps it out of the cells.
INPUTS_DIR = ".inputs"


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The copy: one input per file, and each file's content digest."""

    inputs: dict[str, ReadOnlyInput]  # runner option -> input
    digests: dict[str, str]  # input name -> sha256 of its content


def snapshot(user: UserRun, results: Path) -> Snapshot:
    root = results / INPUTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".copy-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        for item in user.files:
            target = staging / item.name
            try:
                if item.given.is_dir():
                    shutil.copytree(item.given, target)
                else:
                    shutil.copyfile(item.given, target)
            except OSError as exc:
                raise UserInputError(
                    f"--{item.option.removeprefix('user_')} {shown(item.given)}: cannot be read: "
                    f"{exc.strerror or exc}"
                ) from None
        digests = {item.name: content_digest(staging / item.name) for item in user.files}
        name = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
        final = root / name
        _read_only(staging)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():  # not another run's identical copy: a real failure
                raise
    finally:
        if staging.exists():
            _writable(staging)
            shutil.rmtree(staging, ignore_errors=True)
    return Snapshot(
        inputs={
            item.option: ReadOnlyInput(name=item.name, path=final / item.name)
            for item in user.files
        },
        digests=digests,
    )


def _read_only(root: Path) -> None:
    """Files 0444, directories 0755: readable by any container user; the
    directories stay writable by their owner, so the results can be deleted."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), 0o444)


def _writable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            os.chmod(os.path.join(dirpath, filename), 0o644)
