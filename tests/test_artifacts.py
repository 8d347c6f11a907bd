from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from artifact_factory import write_cell, write_plan, write_repeat

from matrix.errors import ArtifactError, ResultsError
from matrix.results.artifacts import load_cell, load_cell_safely
from matrix.results.discovery import discover_results
from matrix.results.merge import Loaded, merge_cells
from matrix.results.tensors import NpzTensor

TENSORS = {
    "mlp/init/kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
    "mlp/train/loss": np.linspace(1, 0, 7),
    "reference/mlp/train/loss": np.linspace(1, 0, 7),
}


def test_loads_a_sound_cell(tmp_path: Path) -> None:
    d = write_cell(
        tmp_path,
        "c1",
        axes={"tensorflow": "2.15"},
        tensors=TENSORS,
        dtypes={"mlp/init/kernel": "bfloat16"},
    )
    cell = load_cell(d)
    assert cell.ok and cell.cell_id == "c1" and cell.executor == "docker"
    assert cell.axes["tensorflow"] == "2.15"
    info = cell.tensors["mlp/init/kernel"]
    assert (
        info.shape == (3, 4)
        and info.dtype == "bfloat16"
        and np.dtype(info.stored_dtype) == np.float32
    )
    assert cell.scenarios["mlp"].status == "ok"


@pytest.mark.parametrize("compressed", [False, True])
def test_source_streams_chunks_equal_to_the_array(tmp_path: Path, compressed: bool) -> None:
    big = {"s/p/x": np.random.RandomState(0).standard_normal((50, 41)).astype(np.float32)}
    cell = load_cell(write_cell(tmp_path, "c", tensors=big, compressed=compressed))
    info = cell.tensors["s/p/x"]
    stream = NpzTensor(cell.npz_path, "s/p/x.npy", info.shape, np.dtype(info.stored_dtype), False)
    chunks = [c.copy() for c in stream.chunks(100)]
    assert [len(c) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    assert np.array_equal(np.concatenate(chunks), big["s/p/x"].reshape(-1))


def problem_of(d: Path) -> str:
    cell = load_cell_safely(d)
    assert cell.problem is not None
    with pytest.raises(ArtifactError):
        load_cell(d)
    return cell.problem


def test_missing_npz(tmp_path: Path) -> None:
    d = write_cell(tmp_path, "c", tensors=TENSORS)
    (d / "tensors.npz").unlink()
    msg = problem_of(d)
    assert "tensors.npz" in msg and "missing" in msg
    assert load_cell_safely(d).scenarios  # the manifest part is still there


def test_sha_mismatch(tmp_path: Path) -> None:
    d = write_cell(tmp_path, "c", tensors=TENSORS)
    with (d / "tensors.npz").open("ab") as fh:
        fh.write(b"x")
    msg = problem_of(d)
    assert "tensors.npz" in msg and "sha256" in msg


def test_truncated_npz_with_matching_sha(tmp_path: Path) -> None:
    d = write_cell(tmp_path, "c", tensors=TENSORS)
    npz = d / "tensors.npz"
    npz.write_bytes(npz.read_bytes()[:200])
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["tensors"]["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))
    msg = problem_of(d)
    assert "tensors.npz" in msg and "not a readable .npz" in msg


def test_other_schema_version(tmp_path: Path) -> None:
    d = write_cell(tmp_path, "c", tensors=TENSORS, manifest_overrides={"schema_version": 2})
    msg = problem_of(d)
    assert "manifest.json" in msg and "schema_version 2" in msg


def test_no_manifest(tmp_path: Path) -> None:
    d = write_cell(tmp_path, "c", tensors=TENSORS)
    (d / "manifest.json").unlink()
    msg = problem_of(d)
    assert str(d / "manifest.json") in msg


def test_manifest_rejected_by_schema_names_the_field(tmp_path: Path) -> None:
    d = write_cell(
        tmp_path,
        "c",
        tensors=TENSORS,
        manifest_overrides={"cell": {"id": "c", "axes": {}, "executor": "ssh", "repeat": 0}},
    )
    msg = problem_of(d)
    assert "manifest.json" in msg and "cell/executor" in msg


def test_garbage_manifest(tmp_path: Path) -> None:
    d = write_cell(tmp_path, "c", tensors=TENSORS)
    (d / "manifest.json").write_text("{not json")
    assert "not readable JSON" in problem_of(d)


def test_discover_orders_by_plan_and_marks_missing(tmp_path: Path) -> None:
    for cid in ["b", "a", "z"]:
        write_cell(tmp_path, cid, tensors=TENSORS)
    write_repeat(tmp_path, "a", 2, tensors=TENSORS)
    write_repeat(tmp_path, "a", 10, tensors=TENSORS)
    write_plan(tmp_path, ["b", "gone", "a"])
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text("{}")
    inv = discover_results([tmp_path])
    assert [c.cell_id for c in inv.cells] == ["b", "gone", "a", "z"]
    assert inv.cells[1].directory is None
    assert [p.name for p in inv.cells[2].repeats] == ["2", "10"]


def test_discover_merges_shards_and_flags_duplicates(tmp_path: Path) -> None:
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    write_cell(s1, "a", tensors=TENSORS)
    write_cell(s2, "b", tensors=TENSORS)
    write_cell(s2, "a", tensors=TENSORS)
    inv = discover_results([s1, s2])
    assert [c.cell_id for c in inv.cells] == ["a", "b"]
    assert inv.cells[0].directory == s1 / "a"
    # every directory is kept: whether "a" twice is a duplicate or the same
    # cell on two machines is decided once the artifacts are read
    assert [(e.cell_id, e.root) for e in inv.entries] == [("a", 0), ("a", 1), ("b", 1)]
    loaded = [Loaded(root=e.root, cell=load_cell_safely(e.directory)) for e in inv.entries]
    merged = merge_cells(loaded, inv.roots, inv.root_plans, missing_problem="absent")
    assert [c.cell_id for c in merged.cells] == ["a", "b"]
    assert merged.cells[0].directory == s1 / "a" and not merged.multi_machine
    assert any("also in" in msg for msg in merged.problems)


def test_empty_results_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no cell directories"):
        discover_results([tmp_path])


def test_empty_shard_beside_a_full_one_is_a_problem(tmp_path: Path) -> None:
    write_cell(tmp_path / "full", "a", tensors=TENSORS)
    (tmp_path / "empty").mkdir()
    inv = discover_results([tmp_path / "full", tmp_path / "empty"])
    assert [c.cell_id for c in inv.cells] == ["a"]
    assert any(str(tmp_path / "empty") in msg for _, msg in inv.problems)


@pytest.mark.parametrize("compressed", [False, True])
def test_large_tensors_are_streamed_and_compare_like_in_memory(
    tmp_path: Path, compressed: bool
) -> None:
    from matrix.analysis.compare import compare_tensors
    from matrix.analysis.drift import thresholds_for
    from matrix.results.tensors import ArraySource

    rng = np.random.RandomState(0)
    a = rng.standard_normal(3_000_000).astype(np.float32)  # 12 MB: above the small-file cache
    b = a.copy()
    b[2_999_999] = np.nextafter(b[2_999_999], np.float32(9))
    b[123] *= np.float32(1.01)
    ca = load_cell(write_cell(tmp_path, "a", tensors={"s/p/x": a}, compressed=compressed))
    cb = load_cell(write_cell(tmp_path, "b", tensors={"s/p/x": b}, compressed=compressed))
    streamed = cb.source("s/p/x")
    assert isinstance(streamed, NpzTensor)
    th = thresholds_for("float32")
    got = compare_tensors(streamed, ca.source("s/p/x"), dtype="float32", thresholds=th)
    want = compare_tensors(ArraySource(b), ArraySource(a), dtype="float32", thresholds=th)
    assert repr(got) == repr(want)
    assert got.worst[0].index == (123,) and got.outside_rounding == 1


def test_a_result_made_before_a_setting_axis_existed_reads_at_its_default(tmp_path: Path) -> None:
    """Axes are appended with a default meaning "as before": an older manifest
    that does not name ``isa`` ran uncapped, and must pair with a cell that says
    ``isa=native``, or results from two releases of the tool never compare."""
    old = load_cell(write_cell(tmp_path, "old", axes={"stack": "s", "precision": "float32"}))
    new = load_cell(
        write_cell(tmp_path, "new", axes={"stack": "s", "precision": "float32", "isa": "avx2"})
    )
    assert old.axes["isa"] == "native" and old.axes["tf32"] == "default"
    assert new.axes["isa"] == "avx2" and old.axes["stack"] == "s"
    # an environment axis is never guessed: the stack implies it, not a default
    assert "tensorflow" not in old.axes
