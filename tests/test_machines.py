"""The machine as an axis: results of the same cells from two hosts merge
into one report where each cell appears once per machine, and changing the
machine alone is attributed like any other axis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from artifact_factory import fingerprint, write_cell, write_plan

from matrix.report.command import build_report, make_findings
from matrix.results.machine import distinct_labels, isa_level, machine_of

AVX2 = {"model": "AMD EPYC", "flags": ["avx", "avx2", "f16c", "fma", "sse4_2"], "count": 2}
AVX512 = {
    "model": "AMD EPYC",
    "flags": ["avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma", "sse4_2"],
    "count": 2,
}


def test_labels_are_readable_and_name_the_widest_isa() -> None:
    assert machine_of(fingerprint(cpu=AVX2)).label == "amd-epyc-avx2"  # type: ignore[union-attr]
    assert machine_of(fingerprint(cpu=AVX512)).label == "amd-epyc-avx512-bf16"  # type: ignore[union-attr]
    intel = {"model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz", "flags": ["amx_tile"]}
    assert machine_of(fingerprint(cpu=intel)).label.endswith("-amx")  # type: ignore[union-attr]
    assert isa_level(["sse4_2"]) == "sse"
    arm = fingerprint(cpu={"model": "Neoverse-N1", "flags": [], "machine": "aarch64"})
    assert machine_of(arm).label == "neoverse-n1-aarch64"  # type: ignore[union-attr]
    gpu = fingerprint(cpu=AVX2, device={"kind": "gpu", "name": "NVIDIA H200", "driver": "570"})
    assert machine_of(gpu).label == "amd-epyc-avx2+nvidia-h200"  # type: ignore[union-attr]
    assert machine_of({"cpu": "not a table"}) is None
    assert machine_of(fingerprint(cpu={"model": None, "flags": []})) is None


def test_two_machines_with_one_label_are_kept_apart() -> None:
    a = machine_of(fingerprint(cpu=AVX2))
    c = machine_of(fingerprint(cpu={**AVX2, "flags": ["avx2", "fma"]}))
    assert a is not None and c is not None
    assert a.label == c.label and a.key != c.key  # same model and level, other flags
    labels = distinct_labels({a.key: a, c.key: c})
    assert len(set(labels.values())) == 2
    assert all(v.startswith("amd-epyc-avx2-") for v in labels.values())
    assert distinct_labels({a.key: a}) == {a.key: "amd-epyc-avx2"}


def _host(
    root: Path,
    cpu: dict,
    outputs: dict[str, float],
    failed: str | None = None,
    settings: dict[str, str] | None = None,
) -> Path:
    for cell, value in outputs.items():
        stack = cell.split("__")[0]
        write_cell(
            root,
            cell,
            axes={"stack": stack, "precision": "float32", **(settings or {})},
            tensors={"seeded_mlp/forward/output": np.full(4, value, dtype=np.float32)},
            fingerprint_overrides={"cpu": cpu},
        )
    cells = list(outputs) + ([failed] if failed else [])
    if failed:
        # a run that failed before its manifest: it has no fingerprint
        d = root / failed
        d.mkdir(parents=True)
        (d / "run.json").write_text(
            json.dumps(
                {
                    "status": "failed",
                    "reason": "timeout after 10 s",
                    "cell": failed,
                    "axes": {"stack": failed.split("__")[0]},
                    "repeat": 0,
                }
            )
        )
    write_plan(root, cells, axes=["stack", "precision"], reference=cells[0])
    return root


def test_the_same_cells_from_two_machines_merge_with_the_machine_as_an_axis(
    tmp_path: Path,
) -> None:
    one = _host(tmp_path / "avx2", AVX2, {"tf-2.15__cpu": 1.0, "tf-2.16__cpu": 1.0})
    two = _host(
        tmp_path / "avx512",
        AVX512,
        {"tf-2.15__cpu": 1.0, "tf-2.16__cpu": 1.5},
        failed="tf-2.21__cpu",
    )
    findings = make_findings([one, two])
    ids = [c.id for c in findings.cells]
    assert ids == [
        "tf-2.15__cpu@amd-epyc-avx2",
        "tf-2.16__cpu@amd-epyc-avx2",
        "tf-2.15__cpu@amd-epyc-avx512-bf16",
        "tf-2.16__cpu@amd-epyc-avx512-bf16",
        "tf-2.21__cpu@amd-epyc-avx512-bf16",  # no fingerprint: its directory's machine
    ]
    assert "machine" in findings.axes
    assert findings.reference.cell == "tf-2.15__cpu@amd-epyc-avx2"
    assert any(r.axis == "machine" for r in findings.attribution)
    # per pair: bitwise on tf-2.15, a 0.5 gap on tf-2.16
    verdicts = {(c.baseline, c.candidate): c.verdict for c in findings.comparisons_of("axis")}
    avx2, avx512 = "@amd-epyc-avx2", "@amd-epyc-avx512-bf16"
    assert verdicts[("tf-2.15__cpu" + avx2, "tf-2.15__cpu" + avx512)] == "identical"
    assert verdicts[("tf-2.16__cpu" + avx2, "tf-2.16__cpu" + avx512)] == "divergent"


def test_results_from_before_an_axis_existed_still_pair_across_machines(tmp_path: Path) -> None:
    """A host whose manifests predate the isa and tf32 axes ran at their
    defaults; its cells pair with the same cells of a newer host that names
    them, so the machine is attributed, not an (unset) context."""
    old = _host(tmp_path / "avx2", AVX2, {"tf-2.15__cpu": 1.0})
    new = _host(
        tmp_path / "avx512",
        AVX512,
        {"tf-2.15__cpu": 2.0},
        settings={"isa": "native", "tf32": "default"},
    )
    findings = make_findings([old, new])
    rows = [r for r in findings.attribution if r.axis == "machine"]
    assert len(rows) == 1 and rows[0].verdict == "divergent"
    assert "(unset)" not in json.dumps([r.head for r in findings.attribution])


def test_one_machine_keeps_plain_cell_ids(tmp_path: Path) -> None:
    one = _host(tmp_path / "s1", AVX2, {"tf-2.15__cpu": 1.0})
    two = _host(tmp_path / "s2", AVX2, {"tf-2.16__cpu": 1.0})
    findings = make_findings([one, two])
    assert [c.id for c in findings.cells] == ["tf-2.15__cpu", "tf-2.16__cpu"]
    assert "machine" not in findings.axes


def test_the_merged_report_is_written_and_valid(tmp_path: Path) -> None:
    import jsonschema

    from matrix.paths import REPORT_SCHEMA

    one = _host(tmp_path / "a", AVX2, {"tf-2.15__cpu": 1.0})
    two = _host(tmp_path / "b", AVX512, {"tf-2.15__cpu": 1.0})
    summary = build_report([one, two], tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.validate(report, json.loads(REPORT_SCHEMA.read_text()))
    assert {c["id"] for c in report["cells"]} == {
        "tf-2.15__cpu@amd-epyc-avx2",
        "tf-2.15__cpu@amd-epyc-avx512-bf16",
    }
    assert summary.exit_code == 0


@pytest.mark.parametrize("cpu", [{"model": "[bold]x[/]", "flags": ["avx2"]}, {"flags": 3}])
def test_hostile_cpu_fields_never_break_the_label(cpu: dict) -> None:
    found = machine_of(fingerprint(cpu=cpu))
    if found is not None:
        assert all(ch.isalnum() or ch in "-+" for ch in found.label)


def test_the_report_shows_beside_each_cell_what_the_hardware_decided(tmp_path: Path) -> None:
    reason = "TensorFlow turns oneDNN on by default on x86 CPUs with AVX512_VNNI; this CPU has it"
    isa = {
        "requested": "avx2",
        "cpu_supports": True,
        "missing": [],
        "libraries": {
            "onednn": {"cap": "AVX2", "dispatched": "Intel AVX-512", "honoured": False},
            "openblas": {"cap": "Haswell", "dispatched": "Haswell", "honoured": True},
        },
        "fixed": ["eigen"],
    }
    defaults = {"onednn": {"value": True, "chosen_by": "tensorflow", "reason": reason}}
    write_cell(
        tmp_path / "r",
        "tf-2.21__cpu__isa-avx2",
        axes={"stack": "tf-2.21", "isa": "avx2"},
        tensors={"s/forward/output": np.ones(4, dtype=np.float32)},
        fingerprint_overrides={"cpu": AVX512, "isa": isa, "defaults": defaults},
    )
    write_cell(
        tmp_path / "r",
        "tf-2.21__cpu__isa-sse41",
        axes={"stack": "tf-2.21", "isa": "sse41"},
        unsupported=["s"],
        fingerprint_overrides={
            "cpu": AVX512,
            "isa": {"requested": "sse41", "cpu_supports": False, "missing": ["sse4_1"],
                    "libraries": {}},
            "defaults": {},  # as the runner writes it: nothing chosen, none derived
        },
    )  # fmt: skip
    build_report([tmp_path / "r"], tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    hw = {c["id"]: c["hardware"] for c in report["cells"]}
    capped = hw["tf-2.21__cpu__isa-avx2"]
    assert capped["isa"] == "avx2" and capped["uncapped"] == ["eigen"]
    assert {lib["library"]: lib["honoured"] for lib in capped["libraries"]} == {
        "onednn": False,
        "openblas": True,
    }
    assert capped["defaults"] == [
        {"name": "onednn", "value": "on", "chosen_by": "tensorflow", "reason": reason}
    ]
    assert hw["tf-2.21__cpu__isa-sse41"]["isa_supported"] is False
    assert hw["tf-2.21__cpu__isa-sse41"]["defaults"] == []
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Hardware" in md
    assert "onednn Intel AVX-512 (ignored the cap)" in md
    assert "unsupported here (the CPU lacks sse4\\_1)" in md
    assert md.count("AVX512\\_VNNI; this CPU has it") == 1  # each reason said once
    page = (tmp_path / "out" / "index.html").read_text()
    assert "what the hardware decided" in page and "ignored the cap" in page


def test_hardware_of_a_hostile_fingerprint_is_partial_never_an_error() -> None:
    from matrix.analysis.hardware import hardware_of

    for fp in (
        {},
        {"isa": "x", "defaults": [1, 2]},
        {"isa": {"libraries": {"onednn": "x", "aten": {"honoured": "yes", "cap": 3}}}},
        {"defaults": {"onednn": {"value": {"a": 1}, "chosen_by": 5}}, "cpu": {"flags": "x"}},
    ):
        found = hardware_of(fp)  # type: ignore[arg-type]
        assert found.isa == "native" or isinstance(found.isa, str)
        assert all(lib.honoured in (True, False, None) for lib in found.libraries)
        assert isinstance(found.isa_summary, str) and isinstance(found.defaults_summary, str)


def test_a_fingerprint_from_before_the_defaults_record_gets_them_from_its_cpu_flags() -> None:
    """Older manifests hold what TensorFlow reported (oneDNN on or off, the
    threads) and the CPU flags, not the reason: the report derives it."""
    from matrix.analysis.hardware import hardware_of

    old = {"backend": "tensorflow", "onednn": False, "threads": 2, "cpu": AVX2}
    choices = {d.name: d for d in hardware_of(old).defaults}
    assert choices["onednn"].value == "off" and "none of them" in choices["onednn"].reason
    assert choices["threads"].value == "2"
    vnni = hardware_of({**old, "onednn": True, "cpu": AVX512}).defaults[0]
    assert vnni.value == "on" and "avx512_vnni" in vnni.reason
    # a torch fingerprint: oneDNN's default is not TensorFlow's rule
    assert [d.name for d in hardware_of({**old, "backend": "torch"}).defaults] == ["threads"]


def test_a_gpu_host_is_one_machine_whether_a_cell_hid_the_gpu_or_not(tmp_path: Path) -> None:
    """On a GPU box, device=cpu cells hide the GPU (CUDA_VISIBLE_DEVICES='')
    and JAX reports less of the GPU than torch: still one host, one label."""
    xeon = {"model": "Intel(R) Xeon(R) Processor", "flags": ["avx2", "amx_tile"], "count": 16}
    h200 = {"kind": "gpu", "name": "NVIDIA H200", "driver": "580", "compute_capability": "9.0"}
    box = tmp_path / "box"
    for cid, device in (
        ("jax__cpu", {"kind": "cpu", "name": xeon["model"]}),
        ("jax__gpu", h200),
        ("torch__gpu", {**h200, "cuda": "13.0", "cudnn": "91900"}),
    ):
        write_cell(
            box, cid, axes={"stack": cid.split("__")[0], "device": cid.split("__")[1]},
            tensors={"s/forward/y": np.ones(4, dtype=np.float32)},
            fingerprint_overrides={"cpu": xeon, "device": device},
        )  # fmt: skip
    write_plan(box, ["jax__cpu", "jax__gpu", "torch__gpu"], axes=["stack", "device"],
               reference="jax__cpu")  # fmt: skip
    other = _host(tmp_path / "avx2", AVX2, {"jax__cpu": 1.0})
    findings = make_findings([box, other])
    ids = {c.id for c in findings.cells}
    assert {"jax__cpu@intel-xeon-amx+nvidia-h200", "jax__gpu@intel-xeon-amx+nvidia-h200",
            "torch__gpu@intel-xeon-amx+nvidia-h200", "jax__cpu@amd-epyc-avx2"} <= ids  # fmt: skip
    assert not [p for p in findings.problems if "names machine" in str(p)]
