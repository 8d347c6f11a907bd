"""Atomic artifact writes, --out refusal and the tensor store (host NumPy only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from scenarios import artifact
from scenarios.artifact import ArtifactError, TensorStore, check_out_dir, write_artifact


def _store() -> TensorStore:
    store = TensorStore()
    store.put("s/forward/output", np.arange(6, dtype=np.float32).reshape(2, 3))
    store.put("reference/s/forward/output", np.arange(6, dtype=np.float64).reshape(2, 3))
    return store


def test_write_creates_the_three_files_with_the_tensor_hash(tmp_path: Path) -> None:
    out = tmp_path / "cell"
    write_artifact(out, store=_store(), manifest={"schema": "x"}, log="hello\n", force=False)
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "manifest.json", "tensors.npz"]
    manifest = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256((out / "tensors.npz").read_bytes()).hexdigest()
    assert manifest["tensors"]["sha256"] == digest
    assert manifest["tensors"]["dtypes"] == {
        "s/forward/output": "float32",
        "reference/s/forward/output": "float64",
    }
    with np.load(out / "tensors.npz") as npz:
        assert npz["s/forward/output"].dtype == np.float32
    assert not list(tmp_path.glob(".cell.*")), "temporary directories left behind"


def test_equal_tensors_give_an_equal_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_artifact(a, store=_store(), manifest={}, log="", force=False)
    write_artifact(b, store=_store(), manifest={}, log="", force=False)
    assert (a / "tensors.npz").read_bytes() == (b / "tensors.npz").read_bytes()


def test_existing_artifact_is_refused_then_replaced_with_force(tmp_path: Path) -> None:
    out = tmp_path / "cell"
    write_artifact(out, store=_store(), manifest={"run": 1}, log="", force=False)
    with pytest.raises(ArtifactError, match="--force"):
        write_artifact(out, store=_store(), manifest={"run": 2}, log="", force=False)
    assert json.loads((out / "manifest.json").read_text())["run"] == 1
    write_artifact(out, store=_store(), manifest={"run": 2}, log="", force=True)
    assert json.loads((out / "manifest.json").read_text())["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell"]


def test_a_non_artifact_directory_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ArtifactError, match="not empty"):
        check_out_dir(out, force=True)


def test_an_empty_directory_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    write_artifact(out, store=_store(), manifest={}, log="", force=False)
    assert (out / "manifest.json").exists()


def test_a_failure_mid_write_leaves_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cell"

    def boom(path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "_fsync_file", boom)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(out, store=_store(), manifest={}, log="", force=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_store_refuses_bad_and_duplicate_keys() -> None:
    store = TensorStore()
    with pytest.raises(ValueError, match="scenario/phase/name"):
        store.put("flat", np.zeros(1))
    store.put("a/b/c", np.zeros(1))
    with pytest.raises(ValueError, match="twice"):
        store.put("a/b/c", np.zeros(1))
