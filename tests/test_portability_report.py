"""The "saved in -> loaded in" matrix from synthetic stage-one and stage-two
artifacts: what each entry says, and that every output carries it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from artifact_factory import one_ulp_up, write_cell, write_plan

from matrix.paths import REPORT_SCHEMA
from matrix.report.command import build_report
from scenarios.contract import STAGE_TWO

PRED = np.linspace(-1, 1, 16, dtype=np.float32).reshape(16, 1)
ERROR = "TypeError: Unrecognized keyword arguments: ['batch_shape']"
NO_TF = "Keras 3.15.1 on jax exports a SavedModel through TensorFlow, which it lacks"


def saved(status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"status": status, **extra}


def stage_one(root: Path, cell: str, *, savedmodel: dict[str, Any]) -> None:
    data = {
        "formats": ["keras", "savedmodel"],
        "models": ["mlp"],
        "saved": {
            "keras": {"mlp": saved(how="model.save", container="zip")},
            "savedmodel": {"mlp": savedmodel},
        },
    }
    write_cell(
        root,
        cell,
        axes={"stack": cell},
        tensors={"portability/saved/mlp_predictions": PRED},
        scenarios={
            "portability": {
                "status": "ok",
                "seconds": 1.0,
                "tensors": ["portability/saved/mlp_predictions"],
                "notes": [],
                "data": data,
            }
        },
    )


def stage_two(root: Path, cell: str, loads: list[tuple[dict[str, Any], np.ndarray | None]]) -> None:
    tensors, entries = {}, []
    for n, (entry, prediction) in enumerate(loads):
        if prediction is not None:
            key = f"portability/loaded/s{n:03d}"
            tensors[key] = prediction
            entry = {**entry, "tensor": key}
        entries.append(entry)
    write_cell(
        root / cell,
        STAGE_TWO,
        axes={"stack": cell},
        tensors=tensors,
        scenarios={
            "portability": {
                "status": "ok",
                "seconds": 1.0,
                "tensors": sorted(tensors),
                "notes": [],
                "data": {"sources": ["a", "b"], "loads": entries},
            }
        },
    )


def load(source: str, fmt: str, status: str = "ok", error: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": source, "format": fmt, "model": "mlp", "status": status}
    if error:
        kind, _, message = error.partition(": ")
        entry["error"] = {"type": kind, "message": message, "traceback": ""}
    else:
        entry["how"] = "keras.models.load_model"
    return entry


def matrix(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    stage_one(root, "a", savedmodel=saved(how="model.export", container="directory"))
    stage_one(
        root,
        "b",
        savedmodel=saved("unsupported", error={"type": "Unsupported", "message": NO_TF}),
    )
    stage_two(
        root,
        "a",
        [
            (load("a", "keras"), PRED),
            (load("b", "keras", "failed", ERROR), None),
            (load("a", "savedmodel"), PRED),
        ],
    )
    stage_two(
        root,
        "b",
        [
            (load("a", "keras"), one_ulp_up(PRED)),
            (load("b", "keras"), PRED),
            (load("a", "savedmodel", "unsupported", f"Unsupported: {NO_TF}"), None),
        ],
    )
    write_plan(root, ["a", "b"], reference="a", axes=["stack"])
    return root


def test_the_matrix_per_format(tmp_path: Path) -> None:
    report = build_report([matrix(tmp_path)], tmp_path / "out")
    by_format = {m.format: m for m in report.findings.portability}
    assert list(by_format) == ["keras", "savedmodel"]
    keras = by_format["keras"]
    assert keras.cells == ("a", "b")

    def entry(m: Any, saver: str, loader: str) -> tuple[str, str]:
        found = m.load(saver, loader, "mlp")
        return found.status, found.verdict

    assert entry(keras, "a", "a") == ("loaded", "identical")
    assert entry(keras, "a", "b") == ("loaded", "rounding")
    assert entry(keras, "b", "a") == ("failed", "failed")
    assert keras.load("b", "a", "mlp").reason == ERROR  # the exact error
    assert entry(keras, "b", "b") == ("loaded", "identical")
    savedmodel = by_format["savedmodel"]
    assert entry(savedmodel, "a", "a") == ("loaded", "identical")
    assert entry(savedmodel, "a", "b") == ("unsupported", "unsupported")
    assert entry(savedmodel, "b", "a") == ("not_saved", "unsupported")
    assert NO_TF in savedmodel.load("b", "b", "mlp").reason
    # A failed load is a finding, not a failed run.
    assert report.exit_code == 0


def test_every_output_carries_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_report([matrix(tmp_path)], out)
    data = json.loads((out / "report.json").read_text())
    jsonschema.validate(data, json.loads(REPORT_SCHEMA.read_text()))
    assert [m["format"] for m in data["portability"]] == ["keras", "savedmodel"]
    md = (out / "report.md").read_text()
    assert "## Saved in → loaded in" in md and "### savedmodel" in md
    assert "Unrecognized keyword arguments" in md and "not saved in b" in md
    page = (out / "index.html").read_text()
    assert 'id="portability"' in page and 'data-format="savedmodel"' in page
    assert "Unrecognized keyword arguments" in page


def test_no_portability_no_section(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_cell(root, "a", tensors={"mlp/forward/output": PRED})
    report = build_report([root], tmp_path / "out")
    assert report.findings.portability == ()
    assert "Saved in" not in (tmp_path / "out" / "report.md").read_text()
