"""Your model on the real Docker path: the files reach the container
read-only, at /opt/krm/in, and the cells compare like any others."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from docker_support import require_engine
from process_support import run_matrix

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "timeseries"

pytestmark = pytest.mark.docker

SPEC = """
[matrix]
name = "user-docker"
repeats = 1
timeout = 600
[axes]
stack = ["tf-2.15"]
"""

# Tries to write where it was mounted, and reads how it was mounted.
PROBE = """
import numpy as np

from scenarios.contract import scenario


@scenario("mount_probe", phases=("forward",), summary="what a cell may do with your files")
def run(ctx):
    try:
        with open(__file__, "a") as fh:
            fh.write("# changed")
        ctx.data["write"] = "allowed"
    except OSError as exc:
        ctx.data["write"] = exc.strerror
    ctx.data["path"] = __file__
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if fields[4] == __file__:
                ctx.data["mount_options"] = fields[5].split(",")
    ctx.put("forward", "output", np.ones(3, np.float32))
"""


def matrix(*args: str) -> subprocess.CompletedProcess[str]:
    return run_matrix("run", "--executor", "docker", *args, timeout=1800)


def test_user_files_are_mounted_read_only(tmp_path: Path) -> None:
    require_engine()
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    module = tmp_path / "probe.py"
    module.write_text(PROBE)
    before = module.read_text()
    results = tmp_path / "results"
    proc = matrix("--spec", str(spec), "--results", str(results), "--scenario", str(module))
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads((results / "tf-2.15__cpu" / "manifest.json").read_text())
    data = entry["scenarios"]["mount_probe"]["data"]
    assert data["path"].startswith("/opt/krm/in/")
    assert "ro" in data["mount_options"]
    assert data["write"] != "allowed"
    assert module.read_text() == before


def test_a_model_file_in_docker(tmp_path: Path) -> None:
    require_engine()
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    results = tmp_path / "results"
    proc = matrix(
        "--spec", str(spec), "--results", str(results),
        "--model", str(EXAMPLE / "model.h5"), "--inputs", str(EXAMPLE / "inputs.npz"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((results / "tf-2.15__cpu" / "manifest.json").read_text())
    assert manifest["cell"]["executor"] == "docker"
    assert manifest["scenarios"]["user_model"]["status"] == "ok"
    assert manifest["settings"]["applied"]["user_model"] == "/opt/krm/in/model.h5"
    again = matrix(
        "--spec", str(spec), "--results", str(results),
        "--model", str(EXAMPLE / "model.h5"), "--inputs", str(EXAMPLE / "inputs.npz"),
    )  # fmt: skip
    assert "0 ran, 1 reused from the cache" in again.stderr, again.stderr[-2000:]
