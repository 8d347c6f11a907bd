"""Every documented exit code, produced by the real entry point in a real
process, each with its one line saying what went wrong (README "Exit
codes"). 130 is proven in test_reliability.py with a real SIGINT.

What needs no Docker uses the report command on synthetic artifacts, the
host executor with a stand-in interpreter, or a real full filesystem (a
tmpfs of 64 KiB); what is about the engine or images uses Docker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from artifact_factory import write_cell, write_plan
from docker_support import require_engine
from process_support import run_matrix

ROOT = Path(__file__).resolve().parent.parent

ONE_CELL = """
[matrix]
name = "one"
repeats = 1
timeout = 60
[axes]
stack = ["tf-2.15"]
[runner]
scenarios = ["initializers"]
unseeded_repeats = 0
"""


def matrix(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> tuple[int, str]:
    proc = run_matrix(*args, env=env, timeout=timeout)
    return proc.returncode, proc.stderr


def error_line(stderr: str) -> str:
    """The one line that says what went wrong (progress lines may precede it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def _results(root: Path, second: float) -> Path:
    """Two cells; the second's output differs from the first's by ``second``."""
    for cell, value in (("a", 1.0), ("b", 1.0 + second)):
        write_cell(
            root,
            cell,
            axes={"stack": cell},
            tensors={"s/forward/output": np.full(8, value, dtype=np.float32)},
        )
    write_plan(root, ["a", "b"], reference="a", axes=["stack"])
    return root


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "one.toml"
    path.write_text(ONE_CELL)
    return path


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with no room: a 16 KiB tmpfs (root can mount one),
    enough for a plan, not for an artifact or a report."""
    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if made.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to mount a tmpfs: {made.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_0_a_clean_report(tmp_path: Path) -> None:
    code, err = matrix("report", str(_results(tmp_path / "r", 0.0)))
    assert code == 0, err
    assert "error:" not in err


def test_1_the_drift_gate(tmp_path: Path) -> None:
    code, err = matrix("report", str(_results(tmp_path / "r", 1e-3)), "--fail-on", "drift")
    assert code == 1
    assert "drift" in error_line(err)
    assert (tmp_path / "r" / "report" / "report.json").is_file()  # written first


def test_2_a_bad_tolerance(tmp_path: Path) -> None:
    code, err = matrix("report", str(_results(tmp_path / "r", 0.0)), "--tolerance", "float32.x=1")
    assert code == 2
    assert "float32.x" in error_line(err)


def test_3_a_bad_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[axes]\nstack = ['tf-0.1']\n")
    code, err = matrix("run", "--spec", str(bad), "--dry-run")
    assert code == 3
    assert "unknown stack 'tf-0.1'" in error_line(err)


def test_4_no_usable_engine(spec: Path, tmp_path: Path) -> None:
    code, err = matrix(
        "run", "--spec", str(spec), "--executor", "docker", "--results", str(tmp_path / "r"),
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )  # fmt: skip
    assert code == 4
    assert "docker" in error_line(err).lower()
    assert not (tmp_path / "r").exists()  # refused before any work


@pytest.mark.docker
def test_5_an_image_that_cannot_be_built(spec: Path, tmp_path: Path) -> None:
    require_engine()
    results = tmp_path / "r"
    code, err = matrix(
        "run", "--spec", str(spec), "--executor", "docker", "--results", str(results),
        "--base", "krm-no-such-base:1",
    )  # fmt: skip
    assert code == 5
    assert "krm-no-such-base:1" in error_line(err)
    assert (results / "report" / "report.json").is_file()  # the report says so too


def test_6_no_results(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, err = matrix("report", str(tmp_path / "empty"))
    assert code == 6
    assert "no cell directories" in error_line(err)


def test_7_a_corrupt_artifact(tmp_path: Path) -> None:
    root = _results(tmp_path / "r", 0.0)
    (root / "b" / "manifest.json").write_text('{"schema": "keras-repro-matrix/artifact", "sch')
    code, err = matrix("report", str(root))
    assert code == 7
    assert "manifest.json" in error_line(err)
    report = (root / "report" / "report.json").read_text()
    assert '"a"' in report  # the good cell is still reported


def test_8_an_unknown_reference(tmp_path: Path) -> None:
    code, err = matrix("report", str(_results(tmp_path / "r", 0.0)), "--reference", "nope")
    assert code == 8
    assert "'nope'" in error_line(err)


def test_9_a_full_disk_while_writing_the_report(tmp_path: Path, full_disk: Path) -> None:
    code, err = matrix("report", str(_results(tmp_path / "r", 0.0)), "--out", str(full_disk / "o"))
    assert code == 9
    assert "no space left" in error_line(err)


@pytest.mark.docker
def test_9_a_full_disk_while_a_cell_writes(spec: Path, full_disk: Path) -> None:
    require_engine()
    code, err = matrix("run", "--spec", str(spec), "--executor", "docker",
                       "--results", str(full_disk / "r"))  # fmt: skip
    assert code == 9
    assert "no space left" in error_line(err)


def test_10_cells_that_failed(spec: Path, tmp_path: Path) -> None:
    """An interpreter that starts but whose runner fails: every run fails,
    the report is still written, and says why."""
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "scenarios" ]; then\n'
        "  echo 'RuntimeError: this interpreter cannot run cells' >&2; exit 3\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    results = tmp_path / "r"
    code, err = matrix(
        "run", "--spec", str(spec), "--executor", "host", "--python", str(python),
        "--results", str(results),
    )  # fmt: skip
    assert code == 10, err[-2000:]
    assert "cannot run cells" in error_line(err)
    assert (results / "report" / "report.json").is_file()


@pytest.fixture
def silent_index() -> Iterator[str]:
    """A package index that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_11_a_stalled_download(spec: Path, tmp_path: Path, silent_index: str) -> None:
    """A venv whose wheels come from an index that never answers: one line,
    exit 11, well before any limit a CI run has."""
    code, err = matrix(
        "run", "--spec", str(spec), "--executor", "venv", "--results", str(tmp_path / "r"),
        env={
            "KRM_CACHE": str(tmp_path / "cache"),  # no venv, no wheels yet
            "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
            "UV_INDEX_URL": silent_index,
            "UV_DEFAULT_INDEX": silent_index,
            "UV_HTTP_TIMEOUT": "2",
            "UV_HTTP_RETRIES": "0",
        },
        timeout=300,
    )  # fmt: skip
    assert code == 11, err[-2000:]
    assert "stalled" in error_line(err)
