"""Hostile and malformed specs and command-line options, as a user meets them.

Every case runs the real entry point (``python -m matrix``) in a fresh
process and asserts what the README promises: the documented exit code, one
line on stderr starting ``error:``, no traceback, and the user's own string
shown as written (never read as console markup or emoji codes). Spec cases
use ``--dry-run`` or ``--list-json``: nothing here needs Docker or a framework.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from artifact_factory import base_tensors, write_cell, write_plan
from process_support import run_matrix

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60

#: A minimal valid spec body: one environment.
BODY = "[axes]\nstack = ['tf-2.15']\n"


def matrix(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # No case may reach a container engine, whatever the machine has.
    return run_matrix(
        *args, cwd=cwd, env={"KRM_DOCKER": "/nonexistent/docker", **(env or {})}, timeout=TIMEOUT
    )


def refused(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The one error line of a refused command, after checking its shape."""
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    line = lines[0]
    assert line.startswith("error: "), line
    assert proc.returncode == code, (proc.returncode, line)
    assert len(line) < 2200, len(line)
    assert "\x1b" not in line  # no raw escape sequence reaches the terminal
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def dry_run(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return matrix(
        "run",
        "--spec",
        str(spec),
        "--dry-run",
        "--executor",
        "venv",
        "--results",
        str(spec.parent / "results"),
        *extra,
        cwd=spec.parent,
    )


# --------------------------------------------------------------------------
# Spec files: (id, content, needles). Every one is refused with exit 3.


def _nested(depth: int) -> str:
    return BODY + "threads = " + "[" * depth + "]" * depth + "\n"


def _many_cells() -> str:
    # 1000 x 3 x 2 x 3 x 3 = 54 000 combinations: refused before any is built.
    return (
        BODY
        + f"threads = {list(range(1000))}\n"
        + "precision = ['float32', 'mixed_float16', 'mixed_bfloat16']\n"
        + "determinism = ['on', 'off']\n"
        + "onednn = ['on', 'off', 'default']\n"
        + "jit = ['on', 'off', 'default']\n"
    )


def _many_rules() -> str:
    # 2 000 combinations x 1 000 rules: the expansion itself would be the hang.
    rules = "".join(f"[[exclude]]\nthreads = {1000 + i}\n" for i in range(1000))
    return BODY + f"threads = {list(range(1000))}\ndeterminism = ['on', 'off']\n" + rules


SPEC_CASES: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    # markup and emoji codes in values are shown as written
    ("name-markup", "[matrix]\nname = '[bold]x[/]'\n" + BODY, ("'[bold]x[/]'", "matrix.name")),
    ("name-emoji", "[matrix]\nname = 'krm:x:10001 :x:'\n" + BODY, ("'krm:x:10001 :x:'",)),
    ("stack-markup", "[axes]\nstack = ['[red]tf[/red]']\n", ("'[red]tf[/red]'", "unknown stack")),
    ("axis-markup", BODY + "'[b]x[/b]' = ['a']\n", ("unknown axis '[b]x[/b]'",)),
    ("precision-markup", BODY + "precision = ['[i]f32']\n", ("'[i]f32'", "precision")),
    ("reference-markup", "[matrix]\nreference = '[/]'\n" + BODY, ("'[/]'", "not a cell")),
    ("exclude-key-markup", BODY + "[[exclude]]\n'[bold]' = 'x'\n", ("unknown axis '[bold]'",)),
    ("chain-axis-markup", "[[chain]]\naxis = '[b]'\nvalues = ['a', 'b']\n", ("'[b]'",)),
    ("top-key-markup", "'[evil]' = 1\n" + BODY, ("unknown key '[evil]'",)),
    ("tolerance-dtype-markup", BODY + "[tolerances.'[red]']\nrounding_rtol = 1\n", ("'[red]'",)),
    ("executor-markup", "[matrix]\nexecutor = '[b]'\n" + BODY, ("matrix.executor",)),
    ("name-control-chars", '[matrix]\nname = "a\\u001b[31mb"\n' + BODY, ("'a\\x1b[31mb'",)),
    # the wrong type where a string, a list or a table belongs
    ("name-inline-table", "[matrix]\nname = {a = 1}\n" + BODY, ("matrix.name must be a string",)),
    ("name-list", "[matrix]\nname = ['a']\n" + BODY, ("matrix.name must be a string",)),
    ("memory-list", "[matrix]\nmemory = ['4g']\n" + BODY, ("matrix.memory must be a string",)),
    ("memory-int", "[matrix]\nmemory = 4\n" + BODY, ("matrix.memory must be a string",)),
    ("stack-inline-table", "[axes]\nstack = [{a = 1}]\n", ("stack must be a string",)),
    ("stack-nested-list", "[axes]\nstack = [['tf-2.15']]\n", ("stack must be a string",)),
    ("axes-not-a-table", "axes = 3\n", ("[axes] must be a table",)),
    ("axis-not-a-list", "[axes]\nstack = 'tf-2.15'\n", ("axes.stack must be a non-empty list",)),
    ("include-not-tables", "include = [1, 2]\n" + BODY, ("include must be an array of tables",)),
    ("chain-axis-table", "[[chain]]\naxis = {a = 1}\nvalues = ['a', 'b']\n", ("chain[0].axis",)),
    ("reference-number", "[matrix]\nreference = 3\n" + BODY, ("matrix.reference must be",)),
    ("repeats-string", "[matrix]\nrepeats = 'two'\n" + BODY, ("matrix.repeats",)),
    ("unseeded-string", BODY + "[runner]\nunseeded_repeats = '3'\n", ("runner.unseeded_repeats",)),
    # encodings and shapes no spec has
    ("latin-1", b"[matrix]\nname = 'caf\xe9'\n" + BODY.encode(), ("not UTF-8 text",)),
    ("binary", bytes(range(256)) * 4, ("not UTF-8 text",)),
    ("nul-bytes", b"\x00\x00\x00", ("not valid TOML",)),
    ("lone-surrogate-escape", '[matrix]\nname = "\\ud800"\n' + BODY, ("not valid TOML",)),
    ("nested-arrays", _nested(5000), ("nested too deeply",)),
    ("nested-arrays-shallow", _nested(40), ("threads must be a whole number",)),
    ("huge-integer", "[matrix]\nrepeats = " + "9" * 5000 + "\n" + BODY, ("not a usable TOML",)),
    ("oversized", BODY + "# " + "x" * (1 << 20) + "\n", ("larger than 1048576 bytes",)),
    ("empty", "", ("names no environment",)),
    # sizes and work bounded before any is done
    ("million-cells", _many_cells(), ("at most 10000 cells",)),
    ("rule-work", _many_rules(), ("more work than a spec may ask",)),
    ("repeats-float-1e9", "[matrix]\nrepeats = 1e9\n" + BODY, ("matrix.repeats",)),
    ("repeats-1e9", "[matrix]\nrepeats = 1000000000\n" + BODY, ("from 1 to 100",)),
    ("threads-huge", BODY + "threads = [1000000000]\n", ("at most 4096",)),
    ("threads-negative", BODY + "threads = [-1]\n", ("threads must be a whole number >= 0",)),
    ("timeout-negative", "[matrix]\ntimeout = -1\n" + BODY, ("matrix.timeout",)),
    ("description-long", f"[matrix]\ndescription = '{'d' * 3000}'\n" + BODY, ("longer than",)),
    (
        "axis-values-many",
        f"[axes]\nstack = ['tf-2.15']\nthreads = {list(range(1001))}\n",
        ("more than 1000",),
    ),
    # names that would plan results outside the results root
    ("name-dotdot", "[matrix]\nname = '../../etc'\n" + BODY, ("'../../etc'", "results directory")),
    ("name-slash", "[matrix]\nname = 'a/b'\n" + BODY, ("'a/b'",)),
    ("name-dots", "[matrix]\nname = 'a..b'\n" + BODY, ("'a..b'",)),
    ("name-absolute", "[matrix]\nname = '/tmp/x'\n" + BODY, ("'/tmp/x'",)),
    # a reference must name a cell: never a silent fall-back to the first
    ("reference-no-cell", "[matrix]\nreference = 'tf-2.16__cpu'\n" + BODY, ("'tf-2.16__cpu'",)),
    (
        "reference-table-no-cell",
        "[matrix]\nreference = {stack = 'tf-2.16'}\n" + BODY,
        ("no cell matches",),
    ),
    # refused at load, not inside every cell
    (
        "scenarios-empty",
        BODY + "[runner]\nscenarios = []\n",
        ("runner.scenarios must be a non-empty",),
    ),
    ("scenarios-unknown", BODY + "[runner]\nscenarios = ['[bold]nope']\n", ("runner.scenarios",)),
    ("scenarios-twice", BODY + "[runner]\nscenarios = ['precision', 'precision']\n", ("twice",)),
    ("memory-not-size", "[matrix]\nmemory = 'lots'\n" + BODY, ("'lots' is not a memory size",)),
    ("memory-too-small", "[matrix]\nmemory = '1k'\n" + BODY, ("'1k' is not a memory size",)),
    ("memory-huge-number", "[matrix]\nmemory = '99999999999g'\n" + BODY, ("not a memory size",)),
    ("tolerance-nan", BODY + "[tolerances.float32]\nrounding_rtol = nan\n", ("finite number",)),
    ("tolerance-inf", BODY + "[tolerances.float32]\nrounding_rtol = inf\n", ("finite number",)),
    ("axis-value-twice", "[axes]\nstack = ['tf-2.15', 'tf-2.15']\n", ("twice",)),
    ("matrix-empty", BODY + "[[exclude]]\nstack = 'tf-2.15'\n", ("matrix is empty",)),
]


@pytest.mark.parametrize(
    ("content", "needles"),
    [pytest.param(c, n, id=i) for i, c, n in SPEC_CASES],
)
def test_hostile_spec_is_refused_with_one_line(
    tmp_path: Path, content: str | bytes, needles: tuple[str, ...]
) -> None:
    spec = tmp_path / "hostile.toml"
    if isinstance(content, bytes):
        spec.write_bytes(content)
    else:
        spec.write_text(content, encoding="utf-8")
    line = refused(dry_run(spec), 3, *needles)
    assert str(spec) in line  # the file is named, as it is on disk
    assert not (tmp_path / "results").exists()


def test_the_list_json_path_refuses_too(tmp_path: Path) -> None:
    spec = tmp_path / "hostile.toml"
    spec.write_text("[matrix]\nname = '[bold]../x'\n" + BODY)
    proc = matrix("run", "--spec", str(spec), "--list-json", cwd=tmp_path)
    refused(proc, 3, "'[bold]../x'")
    assert proc.stdout == ""


def test_a_spec_path_with_markup_is_named_as_it_is(tmp_path: Path) -> None:
    # (no "[/]": a slash would make a directory of it)
    missing = tmp_path / "[bold]sp[red]ec :x:.toml"
    line = refused(dry_run(missing), 3, "cannot read the spec")
    assert str(missing) in line  # not "…/spec .toml" with the tags eaten


def test_a_spec_path_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d.toml").mkdir()
    refused(dry_run(tmp_path / "d.toml"), 3, "cannot read the spec")


def test_a_spec_path_that_is_no_utf8_is_shown_escaped(tmp_path: Path) -> None:
    name = os.fsdecode(b"spec\xff.toml")
    line = refused(dry_run(tmp_path / name), 3, "cannot read the spec")
    assert "spec\\udcff.toml" in line


# --------------------------------------------------------------------------
# Command-line options of `run`: (id, args, exit code, needles)

RUN_OPTION_CASES: list[tuple[str, tuple[str, ...], int, tuple[str, ...]]] = [
    ("only-markup-term", ("--only", "[bold]x[/]=1"), 3, ("'[bold]x[/]=1'",)),
    ("only-markup-glob", ("--only", "[bold]"), 3, ("'[bold]'", "no cell")),
    ("only-unknown-axis", ("--only", "nope=1"), 3, ("'nope=1'",)),
    (
        "reference-markup-emoji",
        ("--reference", "[b]x[/b] krm:x:10001 :x:"),
        3,
        ("'[b]x[/b] krm:x:10001 :x:'",),
    ),
    ("reference-unknown", ("--reference", "tf-9.99__cpu"), 3, ("'tf-9.99__cpu'", "not a cell")),
    ("shard-markup", ("--shard", "[/]"), 3, ("--shard '[/]'",)),
    ("shard-zero", ("--shard", "0/4"), 3, ("--shard '0/4'",)),
    ("shard-inverted", ("--shard", "5/4"), 3, ("--shard '5/4'",)),
    ("shard-huge-digits", ("--shard", "1/" + "9" * 5000), 3, ("--shard '1/999",)),
    ("jobs-not-int", ("--jobs", "[x]"), 3, ("'[x]'",)),
    ("jobs-zero", ("--jobs", "0"), 3, ("--jobs",)),
    ("jobs-huge", ("--jobs", "100000"), 3, ("--jobs",)),
    ("repeats-1e9", ("--repeats", "1000000000"), 3, ("--repeats",)),
    ("repeats-negative", ("--repeats", "-1"), 3, ("--repeats",)),
    ("repeats-not-int", ("--repeats", "1e9"), 3, ("'1e9'",)),
    ("fail-on-bogus", ("--fail-on", "bogus"), 3, ("'bogus'",)),
    ("fail-on-markup", ("--fail-on", "[red]drift"), 3, ("'[red]drift'",)),
    ("executor-markup", ("--executor", "[b]"), 3, ("'[b]'",)),
    ("engine-bogus", ("--engine", "lxc"), 3, ("'lxc'",)),
    ("unknown-flag", ("--[bold]",), 3, ("--[bold]",)),
]


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [pytest.param(a, c, n, id=i) for i, a, c, n in RUN_OPTION_CASES],
)
def test_hostile_run_option_is_refused_with_one_line(
    tmp_path: Path, args: tuple[str, ...], code: int, needles: tuple[str, ...]
) -> None:
    spec = tmp_path / "ok.toml"
    spec.write_text(BODY)
    line = refused(dry_run(spec, *args), code, *needles)
    assert len(line) < 600  # a long value (5000 digits) is not echoed back whole


def test_results_that_is_a_file(tmp_path: Path) -> None:
    spec = tmp_path / "ok.toml"
    spec.write_text(BODY)
    target = tmp_path / "[b]file[red]"
    target.write_text("x")
    proc = matrix("run", "--spec", str(spec), "--dry-run", "--results", str(target), cwd=tmp_path)
    refused(proc, 3, str(target), "not a directory")


def test_unknown_command_with_markup(tmp_path: Path) -> None:
    refused(matrix("[bold]run[/]", cwd=tmp_path), 3, "'[bold]run[/]'")


# --------------------------------------------------------------------------
# Command-line options of `report`


def _results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    write_cell(root, "c1", tensors=base_tensors())
    write_plan(root, ["c1"])
    return root


REPORT_OPTION_CASES: list[tuple[str, Callable[[Path], tuple[str, ...]], int, tuple[str, ...]]] = [
    ("fail-on-bogus", lambda r: (str(r), "--fail-on", "bogus"), 3, ("'bogus'",)),
    (
        "out-is-a-file",
        lambda r: (str(r), "--out", str(r / "c1" / "log.txt")),
        3,
        ("not a directory",),
    ),
    ("out-in-a-cell", lambda r: (str(r), "--out", str(r / "c1")), 3, ("inside the cell",)),
    ("out-under-a-cell", lambda r: (str(r), "--out", str(r / "c1" / "x")), 3, ("inside the cell",)),
    (
        "out-under-a-file",
        lambda r: (str(r), "--out", str(r / "c1" / "log.txt" / "x")),
        3,
        ("--out",),
    ),
    ("tolerance-markup", lambda r: (str(r), "--tolerance", "[bold]"), 2, ("'[bold]'",)),
    (
        "tolerance-nan",
        lambda r: (str(r), "--tolerance", "float32.rounding_rtol=nan"),
        2,
        ("finite",),
    ),
    (
        "tolerance-huge",
        lambda r: (str(r), "--tolerance", "float32.rounding_rtol=1" + "0" * 5000),
        2,
        ("finite",),
    ),
    ("tolerance-unknown-key", lambda r: (str(r), "--tolerance", "float32.[x]=1"), 2, ("[x]",)),
    ("no-results-dir", lambda r: (), 3, ("RESULTS_DIR",)),
    ("results-missing-markup", lambda r: (str(r.parent / "[bold]gone[/]"),), 6, ("[bold]gone[/]",)),
    ("results-is-a-file", lambda r: (str(r / "plan.json"),), 6, ("plan.json",)),
    ("results-empty", lambda r: (str((r.parent / "empty").resolve()),), 6, ("nothing to report",)),
]


@pytest.mark.parametrize(
    ("make_args", "code", "needles"),
    [pytest.param(a, c, n, id=i) for i, a, c, n in REPORT_OPTION_CASES],
)
def test_hostile_report_option_is_refused_with_one_line(
    tmp_path: Path,
    make_args: Callable[[Path], tuple[str, ...]],
    code: int,
    needles: tuple[str, ...],
) -> None:
    root = _results(tmp_path)
    (tmp_path / "empty").mkdir()
    proc = matrix("report", *make_args(root), cwd=tmp_path)
    refused(proc, code, *needles)
    assert not (root / "report").exists()  # refused before any work
    cell_files = sorted(p.name for p in (root / "c1").iterdir())
    assert cell_files == ["log.txt", "manifest.json", "tensors.npz"]  # the cell is untouched


# --------------------------------------------------------------------------
# Strings that are not the program's own are printed as written


def test_dry_run_prints_markup_paths_literally(tmp_path: Path) -> None:
    spec = tmp_path / "ok.toml"
    spec.write_text("[matrix]\ndescription = '[bold]x[/] :x: krm:x:10001'\n" + BODY)
    results = tmp_path / "[bold]r[/] :x: krm:x:10001"
    proc = matrix("run", "--spec", str(spec), "--dry-run", "--results", str(results), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cells ({results}):" in proc.stdout
    assert "❌" not in proc.stdout


def test_list_json_is_valid_json_whatever_the_spec_holds(tmp_path: Path) -> None:
    spec = tmp_path / "ok.toml"
    spec.write_text("[matrix]\ndescription = '[/] \\u202e \\u0000 :x:'\n" + BODY)
    proc = matrix("run", "--spec", str(spec), "--list-json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["include"][0]["environment"] == "tf-2.15.cpu"
    assert proc.stdout.isascii()


def test_build_log_lines_are_printed_as_written(tmp_path: Path) -> None:
    line = "Step 3/9 : RUN echo [bold]x[/] :x: krm:x:10001 \x1b[31mred"
    code = f"from matrix.console import build_log; build_log({line!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"},
        cwd=tmp_path,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RUN echo [bold]x[/] :x: krm:x:10001 \\x1b[31mred" in proc.stderr
    assert "\x1b" not in proc.stderr and "❌" not in proc.stderr


def test_an_ascii_terminal_gets_escapes_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "é [b]"
    proc = matrix("report", str(missing), cwd=tmp_path, env={"PYTHONIOENCODING": "ascii"})
    line = refused(proc, 6, "\\xe9 [b]")
    assert line.isascii()
