from __future__ import annotations

import itertools
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from artifact_factory import (
    base_tensors,
    bf16,
    chain_cells,
    context_matrix,
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
    assert cell["axes"]["v"] == "2" and cell["executor"] == "venv"
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


# --------------------------------------------------------------------------
# Contexts, chains, any two cells, portable tolerances


def arrays(root: Path, cid: str) -> dict[str, np.ndarray]:
    with np.load(root / cid / "tensors.npz") as npz:
        return {k: npz[k] for k in npz.files}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b) / np.abs(b.astype(np.float64))))


@pytest.mark.parametrize("derived_in_plan", [True, False], ids=["plan-names-derived", "old-plan"])
def test_attribution_is_stated_per_context_everywhere(
    tmp_path: Path, derived_in_plan: bool
) -> None:
    context_matrix(tmp_path, derived_in_plan=derived_in_plan)
    build_report([tmp_path], generated_at=PINNED)
    out = tmp_path / "report"
    report = load_report(out)
    # threads is the same everywhere and tensorflow follows the stack: neither is context
    assert report["context_axes"] == ["stack", "precision"]
    assert report["derived_axes"] == ["tensorflow"]
    assert {r["axis"] for r in report["attribution"]} == {"stack", "precision"}
    stack = next(r for r in report["attribution"] if r["axis"] == "stack")
    assert stack["verdict"] is None  # it depends on the context
    assert stack["head"] == "stack tf-2.15 → tf-2.16 (2 contexts)"
    by = {c["label"]: {p["phase"]: p for p in c["phases"]} for c in stack["contexts"]}
    assert list(by) == ["precision=float32", "precision=mixed_bfloat16"]
    assert {k: p["verdict"] for k, p in by["precision=float32"].items()} == {
        "init": "identical",
        "forward": "identical",
        "train": "rounding",
    }
    assert {k: p["verdict"] for k, p in by["precision=mixed_bfloat16"].items()} == {
        "init": "identical",
        "forward": "rounding",
        "train": "drift",
    }
    # the numbers, recomputed from the artifacts
    old, new = arrays(tmp_path, "tf-2.15-float32"), arrays(tmp_path, "tf-2.16-float32")
    ulps = max(
        int(np.max(np.abs(new[k].view(np.int32).astype(np.int64) - old[k].view(np.int32))))
        for k in old
        if k.startswith("mlp/train/")
    )
    assert by["precision=float32"]["train"]["max_ulp"] == ulps == 2
    old, new = (
        arrays(tmp_path, "tf-2.15-mixed_bfloat16"),
        arrays(tmp_path, "tf-2.16-mixed_bfloat16"),
    )
    expected = max(rel(new[k], old[k]) for k in old if k.startswith("mlp/train/"))
    assert by["precision=mixed_bfloat16"]["train"]["max_rel"] == pytest.approx(expected, rel=1e-5)
    train = next(p for p in stack["phases"] if p["phase"] == "train")
    assert train["agreed"] is None and train["max_rel"] is None  # no merged number
    init = next(p for p in stack["phases"] if p["phase"] == "init")
    assert init["agreed"] == "identical" and init["text"] == "init: identical in every context"
    effects = {e["axis"]: e for e in report["axis_effects"]}
    assert effects["stack"]["verdict"] is None
    assert [(g["label"], g["verdict"]) for g in effects["stack"]["groups"]] == [
        ("precision=float32", "rounding"),
        ("precision=mixed_bfloat16", "drift"),
    ]
    assert effects["precision"]["verdict"] == "drift"

    md = (out / "report.md").read_text()
    assert md.index("## What changing one axis alone does, per context") < md.index(
        "## Verdicts"
    )  # it leads
    section = md.split("### stack tf-2.15 → tf-2.16")[1].split("###")[0]
    assert (
        "Worst, per context: precision=float32: **rounding**; "
        "precision=mixed\\_bfloat16: **drift**" in section
    )
    assert (
        f"- train: precision=float32: rounding (2 ULP); "
        f"precision=mixed\\_bfloat16: drift (rel {expected:.1e})" in section
    )
    assert "drift in every context" not in section and "**drift** in every" not in section

    junit = ET.parse(out / "junit.xml").getroot()
    names = [
        tc.get("name", "")
        for suite in junit
        if suite.get("name") == "attribution (one axis changed)"
        for tc in suite
    ]
    assert sorted(n.split(":")[0] for n in names) == [
        "precision float32 → mixed_bfloat16 [stack=tf-2.15]",
        "precision float32 → mixed_bfloat16 [stack=tf-2.16]",
        "stack tf-2.15 → tf-2.16 [precision=float32]",
        "stack tf-2.15 → tf-2.16 [precision=mixed_bfloat16]",
    ]


def test_inferred_chain_names_its_onsets_per_context(tmp_path: Path) -> None:
    context_matrix(tmp_path)
    report = make_findings([tmp_path], generated_at=PINNED)
    (chain,) = report["chains"]
    assert (chain["axis"], chain["values"], chain["declared"]) == (
        "stack",
        ["tf-2.15", "tf-2.16"],
        False,
    )
    onsets = {line["label"]: {o["column"]: o for o in line["onsets"]} for line in chain["lines"]}
    f32, bf16 = onsets["precision=float32"], onsets["precision=mixed_bfloat16"]
    assert (f32["mlp/train"]["first_change"], f32["mlp/train"]["first_drift"]) == ("tf-2.16", None)
    assert (bf16["mlp/train"]["first_change"], bf16["mlp/train"]["first_drift"]) == (
        "tf-2.16",
        "tf-2.16",
    )
    assert f32["mlp/forward"]["first_change"] is None
    assert bf16["mlp/forward"]["change_verdict"] == "rounding"
    text = {o["column"]: o for o in chain["onsets"]}
    assert text["mlp/init"]["agreed"] and not text["mlp/train"]["agreed"]
    assert text["mlp/train"]["text"] == (
        "mlp/train: precision=float32: first not identical: tf-2.16 (rounding); never drifts; "
        "precision=mixed_bfloat16: first not identical and first drift: tf-2.16 (drift)"
    )


def test_declared_chain_from_plan_json(tmp_path: Path) -> None:
    ids = chain_cells(tmp_path)
    plan = write_plan(tmp_path, ids, axes=["tensorflow", "precision"])
    data = json.loads(plan.read_text())
    data["chains"] = [
        {
            "axis": "tensorflow",
            "values": ["2.12", "2.13", "2.14", "2.15"],
            "at": {},
            "contexts": {"precision": ["float32"]},
        }
    ]
    plan.write_text(json.dumps(data))
    build_report([tmp_path], generated_at=PINNED)
    report = load_report(tmp_path / "report")
    (chain,) = report["chains"]  # declared: no inferred twin for the same axis
    assert chain["declared"] is True and [line["label"] for line in chain["lines"]] == [
        "precision=float32"
    ]
    (line,) = chain["lines"]
    forward = next(o for o in line["onsets"] if o["column"] == "mlp/forward")
    assert (forward["first_change"], forward["first_drift"]) == ("2.14", "2.15")
    steps = [(s["before"], s["after"]) for s in line["steps"]]
    assert steps == [("2.12", "2.13"), ("2.13", "2.14"), ("2.14", "2.15")]
    table = [{p["phase"]: p["verdict"] for p in s["phases"]} for s in line["steps"]]
    assert [t["forward"] for t in table] == ["identical", "rounding", "drift"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "### tensorflow: 2.12 → 2.13 → 2.14 → 2.15" in md and "Declared in the spec" in md
    # the columns are the standard phases the steps have (no seeded_train here)
    assert "| step | init | forward | train |" in md
    assert "| 2.14 → 2.15 | identical | drift (rel 1.0e-03) | identical |" in md


def test_plan_json_records_chains_and_derived_axes(tmp_path: Path) -> None:
    from matrix.execute.planfile import plan_file, read_plan
    from matrix.plan.spec import load_spec
    from matrix.plan.stacks import load_catalog
    from matrix.plan.tasks import make_plan

    spec_path = tmp_path / "chain.toml"
    spec_path.write_text(
        "[matrix]\n"
        'reference = { stack = "tf-2.15", precision = "float32" }\n'
        '[axes]\nstack = ["tf-2.15"]\n'
        '[[chain]]\naxis = "stack"\nvalues = ["tf-2.15", "tf-2.16", "tf-2.21"]\n'
        'contexts = { precision = ["float32", "mixed_bfloat16"] }\n'
    )
    catalog = load_catalog()
    written = plan_file(make_plan(load_spec(spec_path, catalog), catalog))
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(written.to_json()))
    read = read_plan(path)
    assert read.chains == written.chains and len(read.chains) == 1
    assert read.chains[0].values == ("tf-2.15", "tf-2.16", "tf-2.21")
    assert dict(read.chains[0].contexts) == {"precision": ("float32", "mixed_bfloat16")}
    assert "tensorflow" in (read.derived or ()) and "stack" not in (read.derived or ())
    # a plan.json from before: nothing recorded, still readable
    path.write_text(json.dumps({"cells": ["a"], "axes": ["v"], "reference": None}))
    old = read_plan(path)
    assert old.derived is None and old.chains == ()


def test_any_two_cells_every_pair_and_phase(tmp_path: Path) -> None:
    ids = planted_matrix(tmp_path)
    report = make_findings([tmp_path], generated_at=PINNED)
    pairs = report["pairs"]
    assert pairs["cells"] == ids and pairs["skipped"] == []
    table = {(p["column"], p["baseline"], p["candidate"]): p for p in pairs["phases"]}
    data = {cid: arrays(tmp_path, cid) for cid in ids}
    for i, j in itertools.combinations(range(len(ids)), 2):
        a, b = data[ids[i]], data[ids[j]]  # the earlier cell is the baseline
        for c, column in enumerate(pairs["columns"]):
            entry = table[(column, pairs["digests"][i][c], pairs["digests"][j][c])]
            keys = [k for k in a if k.startswith(column + "/")]
            same = all(np.array_equal(a[k].view(np.int32), b[k].view(np.int32)) for k in keys)
            assert (entry["verdict"] == "identical") == same
            peak = max(float(np.max(np.abs(b[k].astype(np.float64) - a[k]))) for k in keys)
            assert entry["max_abs"] == pytest.approx(peak, rel=1e-6, abs=1e-12)
            assert entry["max_rel"] == pytest.approx(max(rel(b[k], a[k]) for k in keys), rel=1e-5)
            shown = {t["key"] for t in entry["tensors"]}
            assert shown == {
                k for k in keys if not np.array_equal(a[k].view(np.int32), b[k].view(np.int32))
            }
            assert entry["identical_tensors"] == len(keys) - len(shown)
    # one comparison per distinct content: init is the same everywhere
    init = pairs["columns"].index("mlp/init")
    assert {row[init] for row in pairs["digests"]} == {0}
    assert len(pairs["phases"]) < len(ids) * (len(ids) - 1) // 2 * len(pairs["columns"])


def test_any_two_cells_over_the_budget(tmp_path: Path) -> None:
    from matrix.analysis.drift import DEFAULT_THRESHOLDS
    from matrix.analysis.pairs import all_pairs
    from matrix.results.artifacts import load_cell

    ids = planted_matrix(tmp_path)
    cells = [load_cell(tmp_path / cid) for cid in ids]
    table = all_pairs(cells, thresholds=DEFAULT_THRESHOLDS, budget=0)
    # init is bitwise equal in every cell: free; the others are left at "same or not"
    assert table.skipped == ("mlp/forward", "mlp/train")
    assert table.tensor_comparisons == 0
    assert all(p.baseline == p.candidate for p in table.phases if p.column != "mlp/init")
    # the digests still say exactly which cells hold the same tensors
    train = table.columns.index("mlp/train")
    same = {cid: row[train] for cid, row in zip(ids, table.digests, strict=True)}
    assert same["tf2.15-cpu-float32"] == same["tf2.15-gpu-mixed_bfloat16"]
    assert same["tf2.15-cpu-float32"] != same["tf2.16-cpu-float32"]


def tolerance_cells(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Four cells with values near and at zero, so that atol and rtol both matter."""
    x = np.array([0.0, 0.05, -0.02, 0.5, 1.5, 3.0], np.float32)
    y = np.linspace(0.2, 2.0, 8, dtype=np.float32)
    cells = {
        "s1-f32": {"s/forward/x": x, "s/forward/y": y},
        "s2-f32": {
            "s/forward/x": (x + np.array([1e-7, 2e-8, -3e-8, 1e-6, -2e-6, 4e-6])).astype(
                np.float32
            ),
            "s/forward/y": (y * np.float32(1 + 3e-6)).astype(np.float32),
        },
        "s3-f32": {"s/forward/x": (x * np.float32(1 - 5e-6)).astype(np.float32), "s/forward/y": y},
        "s1-bf16": {"s/forward/x": x, "s/forward/y": bf16(y * np.float32(1 + 1e-3))},
    }
    for cid, t in cells.items():
        stack, precision = cid.split("-")
        t["reference/s/forward/y"] = np.linspace(0.2, 2.0, 8)  # the float64 oracle
        write_cell(
            root,
            cid,
            axes={
                "stack": stack,
                "precision": {"f32": "float32", "bf16": "mixed_bfloat16"}[precision],
            },
            tensors=t,
            dtypes={"s/forward/y": "bfloat16"} if precision == "bf16" else None,
        )
    write_plan(root, list(cells), axes=["stack", "precision"], reference="s1-f32")
    return cells


def needed(actual: np.ndarray, desired: np.ndarray, small: float) -> tuple[float, float]:
    """The documented split: atol over |desired| <= small, rtol over the rest."""
    d = np.abs(actual.astype(np.float64) - desired.astype(np.float64))
    mag = np.abs(desired.astype(np.float64))
    near = mag <= small
    atol = float(d[near].max()) if near.any() else 0.0
    rtol = float((d[~near] / mag[~near]).max()) if (~near).any() else 0.0
    return rtol, atol


def test_portable_tolerances_pass_as_printed_and_recompute(tmp_path: Path) -> None:
    cells = tolerance_cells(tmp_path)
    build_report([tmp_path], generated_at=PINNED)
    report = load_report(tmp_path / "report")
    assert report["tolerance_axes"] == ["precision"]  # stack is an environment: spanned
    found = {(t["label"], t["column"], t["dtype"], t["against"]): t for t in report["tolerances"]}
    f32 = ["s1-f32", "s2-f32", "s3-f32"]
    small = 1e-6 / 1e-5  # float32: rounding atol / rounding rtol

    def check(
        key: tuple[str, str, str, str], pairs: list[tuple[np.ndarray, np.ndarray]], small: float
    ) -> None:
        t = found[key]
        rtol = max(needed(a, d, small)[0] for a, d in pairs)
        atol = max(needed(a, d, small)[1] for a, d in pairs)
        assert t["rtol"] == pytest.approx(rtol, rel=1e-5) and t["atol"] == pytest.approx(
            atol, rel=1e-5
        )
        printed = re.search(r"rtol=([^,]+), atol=([^)]+)\)", t["line"])
        assert printed is not None and t["line"].startswith("numpy.testing.assert_allclose(")
        r, a = float(printed.group(1)), float(printed.group(2))
        for actual, desired in pairs:
            np.testing.assert_allclose(actual, desired, rtol=r, atol=a)
        if rtol > 0:  # tight: half the rtol fails somewhere
            with pytest.raises(AssertionError):
                for actual, desired in pairs:
                    np.testing.assert_allclose(actual, desired, rtol=rtol / 2, atol=atol)
        if atol > 0:  # and atol is needed: without it, something fails
            with pytest.raises(AssertionError):
                for actual, desired in pairs:
                    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=0)

    ref = cells["s1-f32"]
    x_pairs = [(cells[c]["s/forward/x"], ref["s/forward/x"]) for c in f32]
    y_pairs = [(cells[c]["s/forward/y"], ref["s/forward/y"]) for c in f32]
    check(("precision=float32", "s/forward", "float32", "reference"), x_pairs + y_pairs, small)
    oracle = [(cells[c]["s/forward/y"], cells[c]["reference/s/forward/y"]) for c in f32]
    check(("precision=float32", "s/forward", "float32", "oracle"), oracle, small)
    assert found[("precision=float32", "s/forward", "float32", "reference")]["cells"] == f32
    # bfloat16 under mixed precision: its own context and its own split
    bf = cells["s1-bf16"]
    check(
        ("precision=mixed_bfloat16", "s/forward", "bfloat16", "reference"),
        [(bf["s/forward/y"], ref["s/forward/y"])],
        1e-3 / 3e-2,
    )
    assert found[("precision=mixed_bfloat16", "s/forward", "float32", "reference")]["rtol"] == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Portable tolerances, per context" in md
    assert (
        "### precision=float32 (3 cells)" in md and "### precision=mixed\\_bfloat16 (1 cell)" in md
    )


def test_a_cell_compares_on_the_scenarios_both_cells_were_asked_to_run(tmp_path: Path) -> None:
    """A mixed-precision cell runs only the precision scenario: against the
    float32 reference it compares on that one, and is missing nothing."""
    full = {
        "mlp/forward/out": np.ones(4, dtype=np.float32),
        "precision/forward/out": np.ones(4, dtype=np.float32),
    }
    write_cell(tmp_path, "f32", axes={"stack": "s", "precision": "float32"}, tensors=full)
    write_cell(
        tmp_path,
        "mixed",
        axes={"stack": "s", "precision": "mixed_float16"},
        tensors={"precision/forward/out": np.full(4, 1.0 + 2e-3, dtype=np.float32)},
    )
    write_plan(tmp_path, ["f32", "mixed"], reference="f32", axes=["stack", "precision"])
    summary = build_report([tmp_path], generated_at=PINNED)
    report = load_report(tmp_path / "report")
    comp = next(
        c for c in report["comparisons"] if c["kind"] == "reference" and c["candidate"] == "mixed"
    )
    assert [p["column"] for p in comp["phases"]] == ["precision/forward"]
    assert comp["verdict"] == "drift"
    assert summary.exit_code == 0 and not report["summary"]["missing_cells"]
    assert all(p["verdict"] != "missing" for c in report["comparisons"] for p in c["phases"])
