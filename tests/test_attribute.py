from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from artifact_factory import chain_cells, context_matrix, planted_matrix

from matrix.analysis.attribute import attribute, axis_effects, axis_value_key, neighbour_pairs
from matrix.analysis.chains import chain_lines, inferred_chains
from matrix.analysis.comparisons import PhaseResult, compare_cells
from matrix.analysis.drift import DEFAULT_THRESHOLDS, DriftClass
from matrix.execute.planfile import ChainRecord
from matrix.results.artifacts import CellArtifact, load_cell

AXES = ["tensorflow", "device", "precision"]


def test_each_axis_gets_its_planted_cause(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    cells = [load_cell(tmp_path / cid) for cid in ids]
    calls: list[tuple[str, str]] = []

    def compare(a: CellArtifact, b: CellArtifact) -> tuple[PhaseResult, ...]:
        calls.append((a.cell_id, b.cell_id))
        return compare_cells(a, b, thresholds=DEFAULT_THRESHOLDS)

    rows = attribute(cells, AXES, compare)
    by_axis = {r.axis: r for r in rows}
    assert set(by_axis) == set(AXES) and len(rows) == 3
    # every planted effect is the same in every context: each phase is said once
    phases = {axis: {p.phase: p.agreed for p in r.phases} for axis, r in by_axis.items()}
    assert phases["tensorflow"] == {
        "init": DriftClass.IDENTICAL,
        "forward": DriftClass.IDENTICAL,
        "train": DriftClass.DRIFT,
    }
    assert phases["device"] == {
        "init": DriftClass.IDENTICAL,
        "forward": DriftClass.ROUNDING,
        "train": DriftClass.IDENTICAL,
    }
    assert phases["precision"] == {
        "init": DriftClass.IDENTICAL,
        "forward": DriftClass.DRIFT,
        "train": DriftClass.IDENTICAL,
    }
    # each change is seen in 4 contexts (the other two axes' 2 x 2 values), one pair each
    assert all(len(r.contexts) == 4 and all(len(c.pairs) == 1 for c in r.contexts) for r in rows)
    tf = by_axis["tensorflow"]
    assert (tf.before, tf.after) == ("2.15", "2.16")
    assert tf.verdict is DriftClass.DRIFT
    assert tf.summary.startswith(
        "tensorflow 2.15 → 2.16 (4 contexts): init: identical in every context | "
        "forward: identical in every context | train: drift in every context (max rel 1.0e-03)"
    )
    train = next(p for p in tf.phases if p.phase == "train")
    assert train.peak is not None and train.peak.max_rel == pytest.approx(1e-3, rel=1e-3)
    dev = next(p for p in by_axis["device"].phases if p.phase == "forward")
    assert dev.peak is not None and dev.peak.max_ulp == 1
    # localisation travels with the contexts: the planted first layers
    assert all(c.first_layers == () for c in by_axis["device"].contexts)  # rounding: nothing
    assert {c.first_layers for c in by_axis["precision"].contexts} == {
        ("mlp: layer_01_dense_1 (drift)",)
    }
    # work is linear: one comparison per neighbour pair, no all-pairs
    assert len(calls) == 12 <= len(cells) * len(AXES)


def test_pairs_grow_with_cells_times_axes_not_squared() -> None:
    cells = [
        CellArtifact(
            cell_id=f"c{v}-{w}-{x}", directory=Path("."), axes={"v": f"2.{v}", "w": w, "x": x}
        )
        for v in range(10)
        for w in ("a", "b", "c")
        for x in (True, False)
    ]
    pairs = neighbour_pairs(cells, ["v", "w", "x"])
    total = sum(len(p) for p in pairs.values())
    assert total <= len(cells) * 3
    # along v: 6 contexts x 9 neighbour steps, in natural version order
    assert len(pairs["v"]) == 6 * 9
    steps = {(a.axes["v"], b.axes["v"]) for a, b, _ in pairs["v"]}
    # each pair carries its context: the other axes' values
    assert {ctx for _, _, ctx in pairs["v"]} == {
        (("w", w), ("x", x)) for w in ("a", "b", "c") for x in (True, False)
    }
    assert ("2.8", "2.9") in steps and ("2.9", "2.1") not in steps


def test_natural_order_of_axis_values() -> None:
    values = ["2.12", "2.9", "2.10", None, False, True, 3]
    ordered = sorted(values, key=axis_value_key)
    assert ordered == [None, False, True, 3, "2.9", "2.10", "2.12"]


def test_cells_missing_an_axis_are_not_paired_on_it() -> None:
    cells = [
        CellArtifact(cell_id="a", directory=Path("."), axes={"v": "1"}),
        CellArtifact(cell_id="b", directory=Path("."), axes={"v": "2", "extra": "x"}),
    ]
    pairs = neighbour_pairs(cells, ["v", "extra"])
    assert pairs["extra"] == []
    # a and b also differ in 'extra' (unset vs x), so they are not a v-only pair
    assert pairs["v"] == []


def _arrays(root: Path, cid: str) -> dict[str, np.ndarray]:
    with np.load(root / cid / "tensors.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _max_rel(a: dict[str, np.ndarray], b: dict[str, np.ndarray], prefix: str) -> float:
    """max |a - b| / |b| over the tensors under ``prefix``, in float64."""
    return max(
        float(np.max(np.abs(a[k].astype(np.float64) - b[k]) / np.abs(b[k].astype(np.float64))))
        for k in a
        if k.startswith(prefix)
    )


def test_a_change_is_judged_per_context(tmp_path: Path) -> None:
    """tf-2.15 -> tf-2.16 is 2 ULP of rounding under float32 and drift under
    mixed_bfloat16: neither context may be told the other's verdict."""
    context_matrix(tmp_path)
    cells = [load_cell(d) for d in sorted(tmp_path.iterdir()) if d.is_dir()]
    order = [
        "tf-2.15-float32",
        "tf-2.15-mixed_bfloat16",
        "tf-2.16-float32",
        "tf-2.16-mixed_bfloat16",
    ]
    cells.sort(key=lambda c: order.index(c.cell_id))

    def compare(a: CellArtifact, b: CellArtifact) -> tuple[PhaseResult, ...]:
        return compare_cells(a, b, thresholds=DEFAULT_THRESHOLDS)

    rows = attribute(cells, ["stack", "precision"], compare)
    stack = next(r for r in rows if r.axis == "stack")
    assert stack.verdict is None  # the worst depends on the context
    assert [stack.label(c.context) for c in stack.contexts] == [
        "precision=float32",
        "precision=mixed_bfloat16",
    ]
    per = {stack.label(c.context): {p.phase: p for p in c.phases} for c in stack.contexts}
    f32, bf16 = per["precision=float32"], per["precision=mixed_bfloat16"]
    assert f32["train"].verdict is DriftClass.ROUNDING and f32["train"].max_ulp == 2
    assert f32["forward"].verdict is DriftClass.IDENTICAL
    assert bf16["forward"].verdict is DriftClass.ROUNDING and bf16["forward"].max_ulp == 1
    expected = _max_rel(
        _arrays(tmp_path, "tf-2.16-mixed_bfloat16"),
        _arrays(tmp_path, "tf-2.15-mixed_bfloat16"),
        "mlp/train/",
    )
    assert bf16["train"].verdict is DriftClass.DRIFT
    assert bf16["train"].max_rel == pytest.approx(expected, rel=1e-5)
    train = next(p for p in stack.phases if p.phase == "train")
    assert train.agreed is None and train.peak is None  # no merged number where they differ
    assert (
        f"train: precision=float32: rounding (2 ULP); "
        f"precision=mixed_bfloat16: drift (rel {expected:.1e})"
    ) in stack.summary
    assert "train: drift in every context" not in stack.summary
    assert "init: identical in every context" in stack.summary
    # precision's effect is the same under both stacks: said once
    precision = next(r for r in rows if r.axis == "precision")
    assert precision.verdict is DriftClass.DRIFT
    assert "forward: drift in every context" in precision.summary
    effects = {e.axis: e for e in axis_effects(rows)}
    assert effects["stack"].agreed is None
    assert [v for _, v in effects["stack"].per_context] == [DriftClass.ROUNDING, DriftClass.DRIFT]
    assert effects["precision"].agreed is DriftClass.DRIFT


def _compare(a: CellArtifact, b: CellArtifact) -> tuple[PhaseResult, ...]:
    return compare_cells(a, b, thresholds=DEFAULT_THRESHOLDS)


def test_chain_names_the_first_release_that_moves_per_context(tmp_path: Path) -> None:
    cells = [load_cell(tmp_path / cid) for cid in chain_cells(tmp_path)]
    record = ChainRecord(
        axis="tensorflow",
        values=("2.12", "2.13", "2.14", "2.15"),
        contexts={"precision": ("float32", "mixed_bfloat16")},
    )
    chain = chain_lines(cells, record, ["tensorflow", "precision"], _compare, declared=True)
    assert [line.context for line in chain.lines] == [
        (("precision", "float32"),),
        (("precision", "mixed_bfloat16"),),
    ]
    f32, bf16 = ({o.column: o for o in line.onsets} for line in chain.lines)
    assert (f32["mlp/forward"].first_change, f32["mlp/forward"].change_verdict) == (
        "2.14",
        DriftClass.ROUNDING,
    )
    assert (f32["mlp/forward"].first_drift, f32["mlp/forward"].drift_verdict) == (
        "2.15",
        DriftClass.DRIFT,
    )
    assert bf16["mlp/forward"].first_change == bf16["mlp/forward"].first_drift == "2.14"
    for onsets in (f32, bf16):
        assert onsets["mlp/train"].first_change is None and onsets["mlp/init"].first_drift is None
    # the table: consecutive pairs x main phases
    steps = chain.lines[0].steps
    assert [(s.before, s.after) for s in steps] == [
        ("2.12", "2.13"),
        ("2.13", "2.14"),
        ("2.14", "2.15"),
    ]
    assert [[p.phase for p in s.phases] for s in steps] == [["init", "forward", "train"]] * 3
    assert [next(p.verdict for p in s.phases if p.phase == "forward") for s in steps] == [
        DriftClass.IDENTICAL,
        DriftClass.ROUNDING,
        DriftClass.DRIFT,
    ]
    # the chain's contexts restrict it: only float32 asked for
    only = ChainRecord(axis=record.axis, values=record.values, contexts={"precision": ("float32",)})
    assert (
        len(chain_lines(cells, only, ["tensorflow", "precision"], _compare, declared=True).lines)
        == 1
    )


def test_chain_steps_without_evidence_are_named_not_taken_as_onsets(tmp_path: Path) -> None:
    cells = [load_cell(tmp_path / cid) for cid in chain_cells(tmp_path, failed="2.13")]
    record = ChainRecord(axis="tensorflow", values=("2.12", "2.13", "2.14", "2.15"))
    chain = chain_lines(cells, record, ["tensorflow", "precision"], _compare, declared=True)
    f32 = {o.column: o for o in chain.lines[0].onsets}
    # 2.12 -> 2.13 and 2.13 -> 2.14 involve the failed cell: no evidence either way
    assert f32["mlp/forward"].not_compared == ("2.13", "2.14")
    assert f32["mlp/forward"].first_change == "2.15" and f32["mlp/forward"].first_drift == "2.15"


def test_version_like_values_form_inferred_chains_in_plan_order() -> None:
    def cell(cid: str, stack: str, threads: int) -> CellArtifact:
        return CellArtifact(
            cell_id=cid, directory=Path("."), axes={"stack": stack, "threads": threads}
        )

    cells = [
        cell("a", "tf-2.9", 1),
        cell("b", "tf-2.10", 1),
        cell("c", "keras-3.1-jax", 1),
        cell("d", "tf-2.12", 2),
        cell("e", "keras-3.2-jax", 2),
    ]
    found = inferred_chains(cells, ["stack", "threads"], [])
    assert [(c.axis, c.values) for c in found] == [
        ("stack", ("tf-2.9", "tf-2.10", "tf-2.12")),
        ("stack", ("keras-3.1-jax", "keras-3.2-jax")),
    ]  # threads are numbers, not versions
    declared = [ChainRecord(axis="stack", values=("tf-2.9", "tf-2.12"))]
    assert inferred_chains(cells, ["stack", "threads"], declared) == []


def test_a_phase_compared_only_in_some_contexts_is_identical_where_compared(
    tmp_path: Path,
) -> None:
    """Mixed-precision cells run only the precision scenario: a float32-only
    phase identical across the change is said so, with where it was compared,
    not listed as if the contexts disagreed."""
    from artifact_factory import write_cell, write_plan

    from matrix.report.command import build_report

    ids = []
    for stack, nudge in (("tf-2.15", 0.0), ("tf-2.16", 1e-3)):
        for precision in ("float32", "mixed_bfloat16"):
            tensors = {"p/forward/y": np.linspace(0, 1, 8, dtype=np.float32)}
            if precision == "float32":
                tensors["s/init/w"] = np.arange(6, dtype=np.float32)
                tensors["s/train/w"] = np.linspace(1, 2, 6, dtype=np.float32) + nudge
            cid = f"{stack}__{precision}"
            write_cell(tmp_path, cid, axes={"stack": stack, "precision": precision},
                       tensors=tensors)  # fmt: skip
            ids.append(cid)
    write_plan(tmp_path, ids, axes=["stack", "precision"], reference=ids[0])
    build_report([tmp_path], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    section = md.split("### stack tf-2.15 → tf-2.16")[1].split("###")[0]
    assert "- identical where compared (precision=float32): init" in section
    assert "- identical in every context: forward" in section
    assert "train: precision=float32: drift" in section
    assert "init: precision=float32: identical; precision=mixed\\_bfloat16: not compared" not in md
