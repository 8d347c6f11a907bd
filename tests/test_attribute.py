from __future__ import annotations

from pathlib import Path

from artifact_factory import planted_matrix

from matrix.analysis.attribute import attribute, axis_value_key, neighbour_pairs
from matrix.analysis.comparisons import PhaseResult, compare_cells
from matrix.analysis.drift import DEFAULT_THRESHOLDS, DriftClass
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
    phases = {axis: {p.phase: p.verdict for p in r.phases} for axis, r in by_axis.items()}
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
    # each change is seen in 4 contexts (the other two axes' 2 x 2 values)
    assert all(len(r.pairs) == 4 for r in rows)
    tf = by_axis["tensorflow"]
    assert (tf.before, tf.after) == ("2.15", "2.16")
    assert tf.summary.startswith(
        "tensorflow 2.15 -> 2.16: init identical, forward identical, train drift"
    )
    assert "max rel 0.001" in tf.summary
    dev = next(p for p in by_axis["device"].phases if p.phase == "forward")
    assert dev.max_ulp == 1
    # localisation travels with the rows: the planted first layers
    assert by_axis["device"].first_layers == ()  # rounding is not drift: nothing to localise
    assert by_axis["precision"].first_layers == ("mlp: layer_01_dense_1 (drift)",)
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
    steps = {(a.axes["v"], b.axes["v"]) for a, b in pairs["v"]}
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
