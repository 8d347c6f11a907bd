"""Corrupt and hostile results directories, reported by the real entry point.

A results directory is untrusted input: manifests, run records, plan files,
tensor files and directory names may be anything. One bad cell must never
cost the report of the others: ``python -m matrix report`` writes all four
files, lists every good cell with its verdicts, names each bad cell with a
one-line problem, prints one error line and exits 7 (a corrupt artifact).

Most cases live side by side in one results directory (the "museum"),
reported once: that every corruption at once still leaves the good cells
whole is the strongest form of the promise, and it keeps the corpus fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from artifact_factory import base_tensors, write_cell, write_plan
from process_support import run_matrix

from matrix.analysis.compare import compare_tensors
from matrix.analysis.drift import DEFAULT_THRESHOLDS, DriftClass
from matrix.report.render_json import REPORT_SCHEMA_PATH
from matrix.report.render_markdown import md

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120
GOOD = ("good-a", "good-b")
OUTPUTS = ("report.json", "report.md", "index.html", "junit.xml")
SCHEMA = json.loads(REPORT_SCHEMA_PATH.read_text())


def matrix(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_matrix(*args, cwd=cwd, timeout=TIMEOUT)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


@dataclass(frozen=True)
class Reported:
    proc: subprocess.CompletedProcess[str]
    out: Path
    report: dict[str, Any]

    def cell(self, cell_id: str) -> dict[str, Any]:
        return next(c for c in self.report["cells"] if c["id"] == cell_id)

    def verdicts(self, cell_id: str) -> dict[str, str]:
        comp = next(
            c
            for c in self.report["comparisons"]
            if c["kind"] == "reference" and c["candidate"] == cell_id
        )
        return {p["column"]: p["verdict"] for p in comp["phases"]}


def report(results: Path, *extra: str) -> Reported:
    proc = matrix("report", str(results), *extra, cwd=results.parent)
    out = results / "report"
    for name in OUTPUTS:
        assert (out / name).is_file(), (name, proc.stderr[-2000:])
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    ET.parse(out / "junit.xml")  # well-formed, whatever the cells held
    return Reported(proc=proc, out=out, report=data)


def assert_good_cells_whole(rep: Reported) -> None:
    for cid in GOOD:
        assert rep.cell(cid)["status"] == "ok", rep.cell(cid)
        assert rep.cell(cid)["problem"] is None
        verdicts = rep.verdicts(cid)
        assert verdicts and set(verdicts.values()) == {"identical"}, verdicts


# --------------------------------------------------------------------------
# Ways to spoil one cell directory


def edit_manifest(d: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((d / "manifest.json").read_text())
    change(data)
    (d / "manifest.json").write_text(json.dumps(data))


def replace_in_manifest(old: str, new: str) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        text = (d / "manifest.json").read_text()
        assert old in text
        (d / "manifest.json").write_text(text.replace(old, new, 1))

    return spoil


def raw_manifest(data: bytes) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        (d / "manifest.json").write_bytes(data)

    return spoil


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_claiming(header: str, data: bytes) -> bytes:
    """An .npy member with a hand-written header (what a hostile writer sends)."""
    text = header.encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def set_npz(
    d: Path,
    members: dict[str, bytes],
    *,
    keep: bool = True,
    compression: int = zipfile.ZIP_STORED,
) -> None:
    """Rewrite tensors.npz (the base tensors, unless not ``keep``, then
    ``members`` over them) and re-sign it, so only the content is wrong."""
    arrays = {f"{k}.npy": npy(v) for k, v in base_tensors().items()} if keep else {}
    arrays.update(members)
    path = d / "tensors.npz"
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in arrays.items():
            zf.writestr(name, data)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    edit_manifest(d, lambda m: m["tensors"].update(sha256=digest))


def npz_members(members: dict[str, bytes], **kwargs: Any) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        set_npz(d, members, **kwargs)

    return spoil


class Touch:
    """Unpickling this creates a file: proof, if it ever exists, that a
    report unpickled something it was handed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def pickle_member(marker: Path) -> Callable[[Path], None]:
    return npz_members({"mlp/init/kernel.npy": pickle.dumps(Touch(marker))})


def object_array(marker: Path) -> Callable[[Path], None]:
    arr = np.empty(1, dtype=object)
    arr[0] = Touch(marker)
    return npz_members({"mlp/init/kernel.npy": npy(arr, allow_pickle=True)})


def fifo(name: str) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        (d / name).unlink()
        os.mkfifo(d / name)

    return spoil


def symlink(name: str, target: Path) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        (d / name).unlink()
        (d / name).symlink_to(target)

    return spoil


def as_directory(name: str) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()

    return spoil


def failed_run(record: str) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        (d / "manifest.json").unlink()
        (d / "run.json").write_text(record)

    return spoil


def truncate_npz(d: Path) -> None:
    data = (d / "tensors.npz").read_bytes()
    (d / "tensors.npz").write_bytes(data[: len(data) // 2])
    digest = hashlib.sha256(data[: len(data) // 2]).hexdigest()
    edit_manifest(d, lambda m: m["tensors"].update(sha256=digest))


def claim_dtype(key: str, dtype: str) -> Callable[[Path], None]:
    def spoil(d: Path) -> None:
        edit_manifest(d, lambda m: m["tensors"]["dtypes"].update({key: dtype}))

    return spoil


def list_absent(d: Path) -> None:
    edit_manifest(d, lambda m: m["scenarios"]["mlp"]["tensors"].append("mlp/train/ghost"))


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


HUGE = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 100000000000), }"
SMALL = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 8), }"
OUTSIDE = "outside"  # a valid artifact outside the results directory

#: cell id -> (how it is spoiled, what its one-line problem must say).
#: Built per museum, since some need the museum's paths.
Case = tuple[Callable[[Path], None], str]


def corrupt_cases(base: Path) -> dict[str, Case]:
    marker = base / "unpickled"
    outside = base / OUTSIDE / "cell"
    return {
        # manifest.json: untrusted JSON
        "manifest-nan": (replace_in_manifest('"seconds": 1.5', '"seconds": NaN'), "NaN"),
        "manifest-infinity": (
            replace_in_manifest('"seconds": 1.5', '"seconds": -Infinity'),
            "Infinity",
        ),
        "manifest-1e400": (replace_in_manifest('"seconds": 1.5', '"seconds": 1e400'), "1e400"),
        "manifest-bigint": (
            replace_in_manifest('"seconds": 1.5', '"seconds": 1' + "0" * 100_000),
            "100001 digits",
        ),
        "manifest-latin1": (
            lambda d: (d / "manifest.json").write_bytes(
                (d / "manifest.json").read_text().replace("AMD EPYC", "caf\xe9").encode("latin1")
            ),
            "not UTF-8",
        ),
        "manifest-binary": (raw_manifest(bytes(range(256))), "not UTF-8"),
        "manifest-empty": (raw_manifest(b""), "not readable JSON"),
        "manifest-array": (raw_manifest(b"[]"), "expected a JSON object"),
        "manifest-deep": (raw_manifest(deep(100_000)), "nested too deeply"),
        "manifest-wrong-types": (
            lambda d: edit_manifest(d, lambda m: m.update(scenarios=[1, 2])),
            "manifest schema at scenarios",
        ),
        "manifest-version-markup": (
            lambda d: edit_manifest(d, lambda m: m.update(schema_version="[bold]2[/]")),
            "schema_version '[bold]2[/]'",
        ),
        "manifest-fifo": (fifo("manifest.json"), "not a regular file"),
        "manifest-directory": (as_directory("manifest.json"), "not a regular file"),
        "manifest-symlink-out": (
            symlink("manifest.json", outside / "manifest.json"),
            "a symlink out of",
        ),
        # run.json without a manifest
        "run-deep": (failed_run(deep(50_000).decode()), "nested too deeply"),
        "run-nan": (failed_run('{"status": "failed", "reason": NaN}'), "NaN"),
        "run-markup": (
            failed_run(
                '{"status": "failed", "reason": "[bold]boom[/] :x: krm:x:10001\\nline two",'
                ' "executor": ["x"], "environment_id": {"a": 1}, "axes": [1]}'
            ),
            "the run failed: [bold]boom[/] :x: krm:x:10001 line two",
        ),
        "run-odd-axes": (
            failed_run(
                '{"status": "failed", "reason": "oom", "axes": '
                '{"tensorflow": [1], "device": {"a": 1}, "precision": 1.5}}'
            ),
            "the run failed: oom",
        ),
        # tensors.npz: checked before any array is read
        "npz-truncated": (truncate_npz, "not a readable .npz"),
        "npz-sha256": (
            lambda d: edit_manifest(d, lambda m: m["tensors"].update(sha256="0" * 64)),
            "does not match the manifest's",
        ),
        "npz-object-array": (object_array(marker), "object arrays are not allowed"),
        "npz-pickle": (pickle_member(marker), "not an .npy header"),
        "npz-huge-shape": (
            npz_members({"mlp/init/kernel.npy": npy_claiming(HUGE, b"\0" * 16)}),
            "claims shape [100000000000, 100000000000]",
        ),
        "npz-bad-header": (
            npz_members({"mlp/init/kernel.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': (("}),
            "not an .npy header",
        ),
        "npz-zip-bomb": (
            npz_members(
                {"mlp/init/kernel.npy": npy_claiming(SMALL, b"\0" * (8 << 20))},
                compression=zipfile.ZIP_DEFLATED,
            ),
            "claims shape [4, 8]",
        ),
        "npz-bzip2": (
            npz_members({}, compression=zipfile.ZIP_BZIP2),
            "compression method",
        ),
        "npz-not-npy": (npz_members({"readme.txt": b"hello"}), "'readme.txt' is not an .npy"),
        "npz-strings": (
            npz_members({"mlp/train/loss.npy": npy(np.array(["a", "b"]))}),
            "not a numeric tensor",
        ),
        "npz-records": (
            npz_members({"mlp/init/kernel.npy": npy(np.zeros(3, dtype=[("a", "<f4")]))}),
            "not a numeric tensor",
        ),
        "npz-datetimes": (
            npz_members({"mlp/init/kernel.npy": npy(np.zeros(3, dtype="M8[s]"))}),
            "not a numeric tensor",
        ),
        "npz-key-dotdot": (
            npz_members({"../../etc/x.npy": npy(np.zeros(3, np.float32))}),
            "'../../etc/x' is not scenario/phase/name",
        ),
        "npz-key-short": (
            npz_members({"mlp/x.npy": npy(np.zeros(3, np.float32))}),
            "'mlp/x' is not scenario/phase/name",
        ),
        "npz-dtype-lie": (
            npz_members({"mlp/init/kernel.npy": npy(np.zeros((4, 8), np.float16))}),
            "stored as float16 but the manifest says 'float32'",
        ),
        "npz-complex-called-float": (
            npz_members({"mlp/init/kernel.npy": npy(np.zeros((4, 8), np.complex64))}),
            "stored as complex64 but the manifest says 'float32'",
        ),
        "npz-dtype-markup": (
            claim_dtype("mlp/init/kernel", "[bold]bfloat16[/]"),
            "the manifest says '[bold]bfloat16[/]'",
        ),
        "npz-listed-absent": (list_absent, "'mlp/train/ghost'"),
        "npz-empty-archive": (npz_members({}, keep=False), "it does not hold"),
        "npz-fifo": (fifo("tensors.npz"), "not a regular file"),
        "npz-symlink-device": (symlink("tensors.npz", Path("/dev/zero")), "a symlink out of"),
        # a directory name with markup and emoji codes, shown as it is
        "[bold]cell[red] :x: krm:x:10001": (raw_manifest(b"{"), "[bold]cell[red] :x: krm:x:10001"),
    }


def ok_cases(base: Path) -> dict[str, Callable[[Path], None]]:
    """Hostile but sound: the cell is reported as ok, its strings as written."""
    return {
        "ok-lone-surrogate": replace_in_manifest('"AMD EPYC"', '"AMD \\ud800 EPYC"'),
        "ok-markup-fields": lambda d: edit_manifest(
            d,
            lambda m: (
                m["fingerprint"].update(python="[bold]3.11[/] :x: krm:x:10001"),
                m["scenarios"]["mlp"]["notes"].append("[/] [link=file:///etc/passwd]x[/link]"),
            ),
        ),
        "ok-log-fifo": fifo("log.txt"),
        "ok-log-binary": lambda d: (d / "log.txt").write_bytes(bytes(range(256)) * 100),
    }


@pytest.fixture(scope="module")
def museum(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reported]:
    base = tmp_path_factory.mktemp("museum")
    root = base / "results"
    write_cell(base / OUTSIDE, "cell", tensors=base_tensors())
    ids = list(GOOD)
    for cid in GOOD:
        write_cell(root, cid, tensors=base_tensors())
    for cid, (spoil, _) in corrupt_cases(base).items():
        spoil(write_cell(root, cid, tensors=base_tensors()))
        ids.append(cid)
    for cid, spoil in ok_cases(base).items():
        spoil(write_cell(root, cid, tensors=base_tensors()))
        ids.append(cid)
    # A cell directory that is a symlink to a sound artifact elsewhere.
    (root / "cell-symlink-out").symlink_to(base / OUTSIDE / "cell")
    ids.append("cell-symlink-out")
    # Names that cannot be shown: left out with a warning, never a crash.
    os.mkdir(os.fsencode(root) + b"/bad\xff name")
    (root / "new\nline").mkdir()
    write_plan(root, ids, axes=["tensorflow", "device", "precision"])
    return base, report(root)


def test_the_museum_is_reported_whole(museum: tuple[Path, Reported]) -> None:
    base, rep = museum
    line = error_line(rep.proc)
    assert rep.proc.returncode == 7, line
    assert "more problem(s), see the report" in line
    assert_good_cells_whole(rep)
    assert rep.report["summary"]["exit_code"] == 7
    assert not (base / "unpickled").exists()  # nothing was ever unpickled


@pytest.mark.parametrize("cell_id", list(corrupt_cases(Path("/museum"))))
def test_corrupt_cell_is_named_with_one_line(museum: tuple[Path, Reported], cell_id: str) -> None:
    base, rep = museum
    needle = corrupt_cases(base)[cell_id][1]
    cell = rep.cell(cell_id)
    assert cell["status"] == "failed", cell
    problem = cell["problem"]
    assert problem and "\n" not in problem and len(problem) <= 600, problem
    assert needle in problem, (needle, problem)
    listed = [p for p in rep.report["problems"] if p["cell"] == cell_id]
    assert listed and needle in listed[0]["message"]
    assert md(cell_id) in (rep.out / "report.md").read_text(encoding="utf-8")


def test_symlinked_cell_directory_is_not_read(museum: tuple[Path, Reported]) -> None:
    _, rep = museum
    cell = rep.cell("cell-symlink-out")
    assert cell["status"] == "failed"
    assert "a symlink out of the results directory" in cell["problem"]
    assert cell["fingerprint"] == {}  # the sound artifact it points to was not loaded


@pytest.mark.parametrize("cell_id", list(ok_cases(Path("/museum"))))
def test_hostile_but_sound_cell_is_reported_ok(museum: tuple[Path, Reported], cell_id: str) -> None:
    _, rep = museum
    assert rep.cell(cell_id)["status"] == "ok", rep.cell(cell_id)
    assert set(rep.verdicts(cell_id).values()) == {"identical"}


def test_hostile_strings_are_kept_as_written(museum: tuple[Path, Reported]) -> None:
    _, rep = museum
    fingerprint = rep.cell("ok-markup-fields")["fingerprint"]
    assert fingerprint["python"] == "[bold]3.11[/] :x: krm:x:10001"
    assert "AMD \ufffd EPYC" in json.dumps(rep.cell("ok-lone-surrogate"), ensure_ascii=False)
    page = (rep.out / "index.html").read_text(encoding="utf-8")
    assert "[bold]3.11[/] :x: krm:x:10001" in page and "❌" not in page


def test_unshowable_directory_names_are_warned_about(museum: tuple[Path, Reported]) -> None:
    _, rep = museum
    warnings = [p["message"] for p in rep.report["problems"] if p["kind"] == "warning"]
    assert any("bad\\udcff name" in w for w in warnings), warnings
    assert any("new\\nline" in w for w in warnings), warnings
    assert all(c["id"].isprintable() for c in rep.report["cells"])


# --------------------------------------------------------------------------
# plan.json: its own directory per case (a results directory has one)

PLAN_CASES = {
    "plan-nan": ('{"cells": ["good-a", "good-b"], "reference": NaN}', "NaN"),
    "plan-dotdot-cell": ('{"cells": ["good-a", "../../etc"]}', "'../../etc' is not a directory"),
    "plan-cells-string": ('{"cells": "good-a"}', "expected a list"),
    "plan-deep": ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    "plan-tolerances-list": ('{"cells": ["good-a"], "tolerances": [1]}', "expected an object"),
    "plan-symlink-out": ("symlink-out", "a symlink out of"),
    "plan-bigint": ('{"cells": [], "repeats": 1' + "0" * 100_000 + "}", "100001 digits"),
}


@pytest.mark.parametrize(("text", "needle"), list(PLAN_CASES.values()), ids=list(PLAN_CASES))
def test_corrupt_plan_is_ignored_and_the_cells_reported(
    tmp_path: Path, text: str, needle: str
) -> None:
    root = tmp_path / "results"
    for cid in GOOD:
        write_cell(root, cid, tensors=base_tensors())
    if text == "symlink-out":
        write_plan(tmp_path, ["good-a", "ghost"])  # a sound plan, outside the results
        (root / "plan.json").symlink_to(tmp_path / "plan.json")
    else:
        (root / "plan.json").write_text(text)
    rep = report(root)
    line = error_line(rep.proc)
    assert rep.proc.returncode == 7 and "plan.json" in line and needle in line, line
    assert_good_cells_whole(rep)
    assert [c["id"] for c in rep.report["cells"]] == list(GOOD)  # nothing planned from it


# --------------------------------------------------------------------------
# Numbers a comparison must not get wrong: complex and zero-size tensors


def test_complex_and_zero_size_tensors_through_the_report(tmp_path: Path) -> None:
    root = tmp_path / "results"
    z = np.array([[1 + 2j, 3 - 4j]], dtype=np.complex64)
    tensors = {"cx/forward/z": z, "cx/init/empty": np.zeros((0, 3), np.float32)}
    for cid in GOOD:
        write_cell(root, cid, tensors=tensors)
    # The real parts agree; the imaginary part moved far beyond rounding.
    write_cell(root, "imag-moved", tensors={**tensors, "cx/forward/z": z + np.complex64(5j)})
    write_cell(root, "real-only", tensors={**tensors, "cx/forward/z": z.real.copy()})
    write_cell(root, "empty-grew", tensors={**tensors, "cx/init/empty": np.zeros((2, 3))})
    write_plan(root, [*GOOD, "imag-moved", "real-only", "empty-grew"])
    rep = report(root)
    assert rep.proc.returncode == 0, rep.proc.stderr
    assert_good_cells_whole(rep)
    assert rep.verdicts("imag-moved") == {"cx/init": "identical", "cx/forward": "divergent"}
    assert rep.verdicts("real-only")["cx/forward"] == "divergent"
    assert rep.verdicts("empty-grew") == {"cx/init": "divergent", "cx/forward": "identical"}


def test_compare_tensors_judges_both_parts_of_a_complex_tensor() -> None:
    a = np.array([1 + 1j, 2 + 2j], dtype=np.complex64)
    th = DEFAULT_THRESHOLDS["float32"]
    moved = compare_tensors(a, a + np.complex64(1j), dtype="complex64", thresholds=th)
    assert moved.verdict is DriftClass.DIVERGENT and "imaginary" in moved.reason
    assert compare_tensors(a, a.copy(), dtype="complex64", thresholds=th).verdict is (
        DriftClass.IDENTICAL
    )
    real = compare_tensors(a, a.real.copy(), dtype="complex64", thresholds=th)
    assert real.verdict is DriftClass.DIVERGENT and "complex vs real" in real.reason
    with pytest.raises(ValueError, match="not numbers"):
        compare_tensors(np.array(["x"]), np.array(["x"]), dtype="float32", thresholds=th)


# --------------------------------------------------------------------------
# run.json read by a dry run: a record is data, never a hang or a traceback


VENV = ("--executor", "venv", "--results")


def test_dry_run_reads_hostile_run_records(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text("[matrix]\nrepeats = 4\n[axes]\nstack = ['tf-2.15']\n")
    results = tmp_path / "results"
    cell = results / "tf-2.15__cpu"
    (cell / "repeats" / "1").mkdir(parents=True)
    (cell / "repeats" / "2").mkdir()
    (cell / "repeats" / "3").mkdir()
    (cell / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(cell / "repeats" / "1" / "run.json")
    (cell / "repeats" / "2" / "run.json").write_text('{"status": "[bold]ok[/] :x:"}')
    (cell / "repeats" / "3" / "run.json").write_text('{"status": "ok"}')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KRM_DOCKER": "/nonexistent/docker"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "matrix",
            "run",
            "--spec",
            str(spec),
            "--dry-run",
            *VENV,
            str(results),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "tf-2.15__cpu  previous: none, none, ?, ok" in proc.stdout
