"""The artifact a cell leaves: tensors.npz, manifest.json, log.txt.

Written into a temporary sibling directory and renamed into place, so a
killed run never leaves a manifest that claims success, and a reader sees
either the old artifact or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.contract import (
    ARTIFACT_FILES,
    FILES,
    LOG,
    MANIFEST,
    SCHEMA_ID,
    SCHEMA_VERSION,
    TENSORS,
)

__all__ = [
    "MANIFEST",
    "SCHEMA_ID",
    "SCHEMA_VERSION",
    "TENSORS",
    "ArtifactError",
    "TensorStore",
    "check_out_dir",
    "write_artifact",
]


class ArtifactError(Exception):
    """The output directory cannot be used (refused: exit 3)."""


class TensorStore:
    """Tensors by key `scenario/phase/name`, as NumPy arrays npz can hold.

    Dtypes npz cannot hold (bfloat16 and other ml_dtypes) are widened to
    float32, exactly, and their true dtype kept for the manifest.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, str] = {}

    def put(self, key: str, value: Any) -> str:
        if key.count("/") < 2:
            raise ValueError(f"tensor key {key!r} is not scenario/phase/name")
        if key in self.arrays:
            raise ValueError(f"tensor key {key!r} written twice")
        arr = np.asarray(value)
        dtype_name = str(arr.dtype)
        if arr.dtype.kind == "V" or dtype_name not in np.sctypeDict:
            # ml_dtypes types (bfloat16, float8_*) register under their own
            # names but are not NumPy dtypes np.load can restore.
            arr = arr.astype(np.float32)
        self.arrays[key] = np.ascontiguousarray(arr)
        self.dtypes[key] = dtype_name
        return key

    def keys_for(self, scenario: str) -> list[str]:
        prefixes = (f"{scenario}/", f"reference/{scenario}/")
        return [k for k in self.arrays if k.startswith(prefixes)]


def _holds_artifact(path: Path) -> bool:
    return any((path / name).exists() for name in ARTIFACT_FILES)


def check_out_dir(out: Path, *, force: bool) -> None:
    """Refuse an --out we must not overwrite, before any work is done."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        if _holds_artifact(out):
            if not force:
                raise ArtifactError(
                    f"--out {out} already holds an artifact; pass --force to replace it"
                )
        elif any(out.iterdir()):
            raise ArtifactError(
                f"--out {out} is not empty and holds no artifact; refusing to replace it"
            )
    parent = out.parent
    if not parent.is_dir():
        raise ArtifactError(f"--out {out}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ArtifactError(f"--out {out}: parent directory {parent} is not writable")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_index(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (sorted)."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def write_artifact(
    out: Path,
    *,
    store: TensorStore,
    manifest: dict[str, Any],
    log: str,
    force: bool,
    files: Path | None = None,
) -> Path:
    """Write the three files into a sibling temp dir, then rename into place.

    The manifest's `tensors` entry (file, sha256, dtypes) is filled here;
    ``files`` (what the scenarios saved) moves in as ``files/``, listed in
    the manifest's `files` with their sha256.
    """
    check_out_dir(out, force=force)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors_path = tmp / TENSORS
        # np.savez stamps every member with a fixed date: equal tensors give
        # an equal file and an equal sha256.
        with open(tensors_path, "wb") as fh:
            np.savez(fh, **store.arrays)  # type: ignore[arg-type]  # stubs misread **kwds
        manifest = dict(manifest)
        manifest["tensors"] = {
            "file": TENSORS,
            "sha256": sha256_file(tensors_path),
            "dtypes": dict(store.dtypes),
        }
        if files is not None:
            os.rename(files, tmp / FILES)
            manifest["files"] = _file_index(tmp / FILES)
        (tmp / LOG).write_text(log, encoding="utf-8")
        # The manifest goes last: its presence means the rest is complete.
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8"
        )
        for name in ARTIFACT_FILES:
            _fsync_file(tmp / name)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        # rename() cannot replace a non-empty directory: move the old one
        # aside first (only artifact dirs get here: check_out_dir refused
        # anything else), then drop it.
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)  # an empty directory is replaced atomically
