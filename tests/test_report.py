from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from artifact_factory import (
    base_tensors,
    one_ulp_up,
    planted_matrix,
    write_cell,
    write_plan,
    write_repeat,
)

from matrix.errors import (
    ArtifactError,
    CellsFailed,
    DriftGateFailed,
    MatrixError,
    ReferenceError_,
    ResultsError,
)
from matrix.report.command import build_report, report_command
from matrix.report.command import make_findings as _make_findings
from matrix.report.render_json import REPORT_SCHEMA_PATH
from matrix.report.serialize import to_json

SCHEMA = json.loads(REPORT_SCHEMA_PATH.read_text())
PINNED = "2026-01-01T00:00:00Z"


def make_findings(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """The findings as report.json holds them."""
    return to_json(_make_findings(*args, **kwargs))


def load_report(out: Path) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(report)
    return report


def phase(report: dict[str, Any], kind: str, candidate: str, column: str) -> dict[str, Any]:
    comp = next(
        c for c in report["comparisons"] if c["kind"] == kind and c["candidate"] == candidate
    )
    return next(p for p in comp["phases"] if p["column"] == column)


def test_planted_matrix_report(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    summary = build_report([tmp_path], generated_at=PINNED)
    out = tmp_path / "report"
    assert summary.exit_code == 0 and summary.error is None
    assert {p.name for p in summary.files} == {
        "report.json",
        "report.md",
        "index.html",
        "junit.xml",
    }
    report = load_report(out)
    assert report["reference"] == {"cell": ids[0], "chosen_by": "default"}
    assert report["columns"] == ["mlp/init", "mlp/forward", "mlp/train"]
    assert phase(report, "reference", "tf2.16-cpu-float32", "mlp/train")["verdict"] == "drift"
    assert phase(report, "reference", "tf2.15-gpu-float32", "mlp/forward")["verdict"] == "rounding"
    loc = phase(report, "reference", "tf2.15-cpu-mixed_bfloat16", "mlp/forward")["localisation"]
    assert loc["first_drift"]["key"] == "mlp/forward/layer_01_dense_1"
    gpu = phase(report, "reference", "tf2.15-gpu-float32", "mlp/forward")["localisation"]
    assert gpu["first_change"]["index"] == 2 and gpu["first_drift"] is None
    # the oracle is the float64 copy of the reference cell's output: identical there
    assert phase(report, "oracle", ids[0], "mlp/forward")["verdict"] == "identical"
    assert phase(report, "oracle", "tf2.15-cpu-mixed_bfloat16", "mlp/forward")["verdict"] == "drift"
    assert {r["axis"]: r["verdict"] for r in report["attribution"]} == {
        "tensorflow": "drift",
        "device": "rounding",
        "precision": "drift",
    }
    md = (out / "report.md").read_text()
    assert "### tensorflow 2.15 → 2.16 (4 contexts)\n\nWorst: **drift** in every context." in md
    junit = ET.parse(out / "junit.xml").getroot()
    n_comparisons = len(report["comparisons"])
    assert int(junit.get("tests")) == n_comparisons == len(junit.findall(".//testcase"))
    assert junit.get("failures") == "0"


def test_fail_on_gates_the_exit_code(tmp_path: Path) -> None:
    planted_matrix(tmp_path)
    assert report_command([str(tmp_path), "--fail-on", "divergent"]) == 0
    with pytest.raises(DriftGateFailed) as info:
        report_command([str(tmp_path), "--fail-on", "drift"])
    assert info.value.exit_code == 1 and "drift" in info.value.message
    junit = ET.parse(tmp_path / "report" / "junit.xml").getroot()
    assert int(junit.get("failures")) > 0


def test_tolerance_override_from_the_command_line(tmp_path: Path) -> None:
    planted_matrix(tmp_path)
    # the planted 1e-3 and 4e-3 drifts become rounding with a 1e-2 rounding rtol
    assert (
        report_command(
            [str(tmp_path), "--fail-on", "drift", "--tolerance", "float32.rounding_rtol=1e-2"]
        )
        == 0
    )
    report = load_report(tmp_path / "report")
    assert report["thresholds"]["float32"]["rounding_rtol"] == 1e-2


def test_plan_tolerances_and_reference_are_used(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    write_plan(
        tmp_path,
        ids,
        reference=ids[3],
        axes=["tensorflow", "device", "precision"],
        tolerances={"float32": {"rounding_rtol": 2e-5}},
    )
    report = make_findings([tmp_path], generated_at=PINNED)
    assert report["reference"] == {"cell": ids[3], "chosen_by": "plan"}
    assert report["thresholds"]["float32"]["rounding_rtol"] == 2e-5


@pytest.mark.parametrize(
    ("perturb", "column", "verdict"),
    [
        (
            lambda t: t.update({"mlp/train/loss": one_ulp_up(t["mlp/train/loss"])}),
            "mlp/train",
            "rounding",
        ),
        (
            lambda t: t.update(
                {"mlp/train/loss": (t["mlp/train/loss"] * np.float32(1.001)).astype(np.float32)}
            ),
            "mlp/train",
            "drift",
        ),
        (lambda t: t["mlp/train/loss"].__setitem__(5, np.nan), "mlp/train", "divergent"),
        (lambda t: t.update({"mlp/train/loss": -t["mlp/train/loss"]}), "mlp/train", "divergent"),
        (
            lambda t: t.update({"mlp/init/kernel": t["mlp/init/kernel"].T.copy()}),
            "mlp/init",
            "divergent",
        ),
        (lambda t: t.pop("mlp/init/kernel"), "mlp/init", "missing"),
    ],
    ids=["one-ulp", "rel-1e-3", "nan", "sign-flip", "shape", "missing-tensor"],
)
def test_planted_perturbations_land_in_their_class(
    tmp_path: Path, perturb: Any, column: str, verdict: str
) -> None:
    write_cell(tmp_path, "a-ref", axes={"v": "1"}, tensors=base_tensors())
    t = base_tensors()
    perturb(t)
    write_cell(tmp_path, "b", axes={"v": "2"}, tensors=t)
    report = make_findings([tmp_path], generated_at=PINNED)
    assert phase(report, "reference", "b", column)["verdict"] == verdict
    others = [
        p
        for p in next(
            c for c in report["comparisons"] if c["candidate"] == "b" and c["kind"] == "reference"
        )["phases"]
        if p["column"] != column
    ]
    assert all(p["verdict"] == "identical" for p in others)


def test_failed_scenario_is_failed_and_gated_only_when_asked(tmp_path: Path) -> None:
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=base_tensors())
    write_cell(
        tmp_path,
        "b",
        axes={"v": "2"},
        tensors=base_tensors(),
        failed={
            "mlp": (
                "ValueError",
                "batch_input_shape is not supported",
                "Traceback (most recent call last):\nValueError",
            )
        },
    )
    assert build_report([tmp_path]).exit_code == 0
    report = load_report(tmp_path / "report")
    cell = next(c for c in report["cells"] if c["id"] == "b")
    assert cell["status"] == "failed" and cell["log_tail"] == "ran\n"
    assert phase(report, "reference", "b", "mlp/train")["verdict"] == "failed"
    assert "batch_input_shape" in phase(report, "reference", "b", "mlp/train")["reason"]
    with pytest.raises(CellsFailed):
        report_command([str(tmp_path), "--fail-on", "failed"])


def test_corrupt_cell_is_failed_and_the_rest_is_reported(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    bad = tmp_path / ids[5] / "tensors.npz"
    bad.write_bytes(bad.read_bytes()[:-10])
    summary = build_report([tmp_path], generated_at=PINNED)
    assert summary.exit_code == ArtifactError.exit_code
    assert isinstance(summary.error, ArtifactError)
    assert any(str(bad) in p for p in summary.problems)
    report = load_report(tmp_path / "report")
    cell = next(c for c in report["cells"] if c["id"] == ids[5])
    assert cell["status"] == "failed" and str(bad) in cell["problem"]
    assert cell["axes"]["tensorflow"] == "2.16"  # the manifest part still shows
    assert phase(report, "reference", ids[5], "mlp/train")["verdict"] == "failed"
    assert (
        phase(report, "reference", ids[4], "mlp/train")["verdict"] == "drift"
    )  # others still compared
    with pytest.raises(ArtifactError):
        report_command([str(tmp_path)])


def test_unknown_reference_falls_back_and_says_so(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    with pytest.raises(ReferenceError_) as info:
        report_command([str(tmp_path), "--reference", "no-such-cell"])
    assert "no-such-cell" in info.value.message
    report = load_report(tmp_path / "report")
    assert report["reference"]["cell"] == ids[0]
    assert report["summary"]["exit_code"] == ReferenceError_.exit_code


def test_explicit_reference(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    report_command([str(tmp_path), "--reference", ids[4], "--out", str(tmp_path / "out")])
    report = load_report(tmp_path / "out")
    assert report["reference"] == {"cell": ids[4], "chosen_by": "option"}
    assert phase(report, "reference", ids[0], "mlp/train")["verdict"] == "drift"


def test_empty_results_dir(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=str(tmp_path)):
        report_command([str(tmp_path)])
    with pytest.raises(ResultsError):
        report_command([str(tmp_path / "does-not-exist")])


def test_missing_planned_cell(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    shutil.rmtree(tmp_path / ids[2])
    summary = build_report([tmp_path])
    assert summary.exit_code == CellsFailed.exit_code and summary.missing_cells == (ids[2],)
    report = load_report(tmp_path / "report")
    assert next(c for c in report["cells"] if c["id"] == ids[2])["status"] == "missing"
    assert phase(report, "reference", ids[2], "mlp/init")["verdict"] == "missing"


def test_bad_arguments_are_matrix_errors(tmp_path: Path) -> None:
    with pytest.raises(MatrixError):
        report_command([])
    with pytest.raises(MatrixError):
        report_command([str(tmp_path), "--fail-on", "catastrophic"])
    with pytest.raises(MatrixError):
        report_command([str(tmp_path), "--tolerance", "float32.nope=1"])


def test_shards_merge_to_the_unsharded_report(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    ids = planted_matrix(whole)
    shards = [tmp_path / "s0", tmp_path / "s1", tmp_path / "s2"]
    for n, cid in enumerate(ids):
        shutil.copytree(whole / cid, shards[n % 3] / cid)
    for shard in shards:
        shutil.copy(whole / "plan.json", shard / "plan.json")
    write_repeat(whole, ids[1], 1, axes={}, tensors=base_tensors())
    shutil.copytree(whole / ids[1] / "repeats", shards[1] / ids[1] / "repeats")
    build_report([whole], tmp_path / "r-whole", generated_at=PINNED)
    build_report(list(reversed(shards)), tmp_path / "r-shards", generated_at=PINNED)
    a = (tmp_path / "r-whole" / "report.json").read_text()
    b = (tmp_path / "r-shards" / "report.json").read_text()
    assert a == b
    assert (tmp_path / "r-whole" / "junit.xml").read_text() == (
        tmp_path / "r-shards" / "junit.xml"
    ).read_text()


def test_repeats_measure_self_consistency(tmp_path: Path) -> None:
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=base_tensors())
    write_repeat(tmp_path, "a", 1, axes={"v": "1"}, tensors=base_tensors())
    write_cell(tmp_path, "b", axes={"v": "2"}, tensors=base_tensors())
    t = base_tensors()
    t["mlp/train/loss"] = one_ulp_up(t["mlp/train/loss"])
    write_repeat(tmp_path, "b", 1, axes={"v": "2"}, tensors=base_tensors())
    write_repeat(tmp_path, "b", 2, axes={"v": "2"}, tensors=t)
    report = make_findings([tmp_path], generated_at=PINNED)
    cells = {c["id"]: c for c in report["cells"]}
    assert cells["a"]["deterministic"] is True and cells["b"]["deterministic"] is False
    assert cells["b"]["repeats"] == 2
    assert report["summary"]["nondeterministic_cells"] == ["b"]
    assert phase(report, "repeat", "b", "mlp/train")["verdict"] == "rounding"
    with pytest.raises(DriftGateFailed):
        report_command([str(tmp_path), "--fail-on", "rounding"])


def test_unsupported_scenario_never_gates(tmp_path: Path) -> None:
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=base_tensors())
    write_cell(tmp_path, "b", axes={"v": "2"}, tensors=base_tensors(), unsupported=["mlp"])
    report = make_findings([tmp_path], generated_at=PINNED, fail_on="rounding")
    assert phase(report, "reference", "b", "mlp/train")["verdict"] == "unsupported"
    assert report["summary"]["exit_code"] == 0


def test_failed_phase_keeps_the_other_phases_compared(tmp_path: Path) -> None:
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=base_tensors())
    t = {k: v for k, v in base_tensors().items() if "/train/" not in k}
    record = {
        "status": "failed",
        "seconds": 2.0,
        "tensors": sorted(k for k in t if k.startswith("mlp/")),
        "notes": [],
        "error": {"type": "RuntimeError", "message": "fit blew up", "traceback": "..."},
        "phases": {
            "init": {"status": "ok"},
            "forward": {"status": "ok"},
            "train": {
                "status": "failed",
                "error": {"type": "RuntimeError", "message": "fit blew up"},
            },
        },
    }
    write_cell(tmp_path, "b", axes={"v": "2"}, tensors=t, scenarios={"mlp": record})
    report = make_findings([tmp_path], generated_at=PINNED)
    assert phase(report, "reference", "b", "mlp/init")["verdict"] == "identical"
    assert phase(report, "reference", "b", "mlp/forward")["verdict"] == "identical"
    train = phase(report, "reference", "b", "mlp/train")
    assert train["verdict"] == "failed" and "fit blew up" in train["reason"]


def test_failed_run_recorded_by_the_scheduler(tmp_path: Path) -> None:
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=base_tensors())
    d = tmp_path / "b"
    d.mkdir()
    (d / "run.json").write_text(
        json.dumps(
            {
                "cell": "b",
                "axes": {"v": "2"},
                "repeat": 0,
                "status": "failed",
                "reason": "timeout after 600 s",
                "executor": "venv",
                "environment_id": None,
            }
        )
    )
    (d / "log.txt").write_text("Epoch 1/100\n")
    summary = build_report([tmp_path])
    assert summary.exit_code == CellsFailed.exit_code
    report = load_report(tmp_path / "report")
    cell = next(c for c in report["cells"] if c["id"] == "b")
    assert cell["status"] == "failed" and "timeout after 600 s" in cell["problem"]
    assert cell["axes"] == {"v": "2"} and cell["executor"] == "venv"
    assert phase(report, "reference", "b", "mlp/train")["verdict"] == "failed"
    assert [p["kind"] for p in report["problems"]] == ["run"]


def test_tensor_truncated_after_loading_fails_only_that_tensor(tmp_path: Path) -> None:
    from matrix.analysis.comparisons import compare_cells
    from matrix.analysis.drift import DEFAULT_THRESHOLDS
    from matrix.results.artifacts import load_cell

    big = {"s/p/big": np.arange(2_000_000, dtype=np.float32), "s/p/small": np.ones(3, np.float32)}
    a = load_cell(write_cell(tmp_path, "a", tensors=big))
    b = load_cell(write_cell(tmp_path, "b", tensors=big))
    npz = b.npz_path
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # after validation
    (result,) = compare_cells(b, a, thresholds=DEFAULT_THRESHOLDS)
    verdicts = {k: c.verdict.value for k, c in result.tensors}
    assert verdicts["s/p/big"] == "failed"
    assert result.verdict.value == "failed"


def unseeded_cell(root: Path, cid: str, v: str, seed: int, *, marker: str) -> None:
    """A cell whose 'init/recipe_none' phase is an unseeded draw (differs every run)."""
    t = base_tensors()
    t["init/recipe_none/kernel"] = np.random.RandomState(seed).standard_normal(8).astype(np.float32)
    t["init/recipe_full/kernel"] = np.ones(8, np.float32)
    record: dict[str, Any] = {
        "status": "ok",
        "seconds": 1.0,
        "tensors": ["init/recipe_full/kernel", "init/recipe_none/kernel"],
        "notes": [],
        "phases": {"recipe_none": {"status": "ok"}, "recipe_full": {"status": "ok"}},
    }
    if marker == "phase":
        record["phases"]["recipe_none"]["reproducible"] = False
    else:  # how the initializers scenario reports it today
        record["data"] = {
            "recipes": {
                "none": {"reproducible_in_process": False},
                "full": {"reproducible_in_process": True},
            }
        }
    write_cell(root, cid, axes={"v": v}, tensors=t, scenarios={"init": record})


@pytest.mark.parametrize("marker", ["phase", "data"])
def test_unseeded_phases_are_shown_but_never_counted(tmp_path: Path, marker: str) -> None:
    unseeded_cell(tmp_path, "a", "1", 1, marker=marker)
    unseeded_cell(tmp_path / "a" / "repeats", "1", "1", 2, marker=marker)
    unseeded_cell(tmp_path, "b", "2", 3, marker=marker)
    report = make_findings([tmp_path], generated_at=PINNED, fail_on="drift")
    p = phase(report, "reference", "b", "init/recipe_none")
    assert p["verdict"] == "divergent" and p["expected_to_vary"] is True
    assert phase(report, "reference", "b", "init/recipe_full")["expected_to_vary"] is False
    comp = next(
        c for c in report["comparisons"] if c["kind"] == "reference" and c["candidate"] == "b"
    )
    assert comp["verdict"] == "identical"
    assert next(c for c in report["cells"] if c["id"] == "a")["deterministic"] is True
    assert (
        report["summary"]["exit_code"] == 0
        and report["summary"]["by_class"]["reference"]["divergent"] == 0
    )
    assert report["summary"]["expected_to_vary"]["reference"] == 2  # a vs a, b vs a
    (row,) = report["attribution"]
    (context,) = row["contexts"]
    assert row["verdict"] == "identical" and context["expected_to_vary"] == ["init/recipe_none"]


def test_ok_phase_without_tensors_is_not_a_column(tmp_path: Path) -> None:
    record = {
        "status": "ok",
        "seconds": 1.0,
        "tensors": ["mlp/train/loss"],
        "notes": [],
        "phases": {"train": {"status": "ok"}, "unseeded": {"status": "ok"}},
    }
    t = {"mlp/train/loss": np.ones(3, np.float32)}
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=t, scenarios={"mlp": record})
    write_cell(tmp_path, "b", axes={"v": "2"}, tensors=t, scenarios={"mlp": record})
    assert make_findings([tmp_path], generated_at=PINNED)["columns"] == ["mlp/train"]


def test_float64_tensors_of_a_float32_cell_are_judged_as_float32(tmp_path: Path) -> None:
    loss32 = np.random.RandomState(0).uniform(0.1, 1, 50).astype(np.float32)
    a = {"mlp/train/loss": loss32.astype(np.float64)}  # Keras history: Python floats
    b = {"mlp/train/loss": one_ulp_up(loss32).astype(np.float64)}
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=a)
    write_cell(tmp_path, "b", axes={"v": "2"}, tensors=b)
    report = make_findings([tmp_path], generated_at=PINNED)
    (t,) = phase(report, "reference", "b", "mlp/train")["tensors"]
    # 1 float32 ULP is 2**29 float64 ULP: judged in float64 it would be drift
    assert t["verdict"] == "rounding" and t["max_ulp"] == 1
    assert t["dtype"] == "float32 (stored float64)"
    # a metric computed in float64 from float32 results: float32-level noise
    mse = {"mlp/train/mse": np.array([0.1629496226365386])}
    write_cell(tmp_path, "a", axes={"v": "1"}, tensors=mse)
    write_cell(
        tmp_path, "b", axes={"v": "2"}, tensors={"mlp/train/mse": mse["mlp/train/mse"] * (1 + 5e-8)}
    )
    report = make_findings([tmp_path], generated_at=PINNED)
    assert phase(report, "reference", "b", "mlp/train")["verdict"] == "rounding"
