from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from docker_support import PROBE, require_engine

from matrix import engine
from matrix.executors.base import SCENARIOS_ROOT, Environment
from matrix.executors.docker import (
    CONTAINER_SCENARIOS,
    DockerExecutor,
    cell_spec,
    container_user,
    make_staging,
)
from matrix.stacks import load_catalog

SCHEMA = SCENARIOS_ROOT / "scenarios" / "manifest.schema.json"

# --- pure parts --------------------------------------------------------------


def test_root_host_runs_cells_as_the_image_user() -> None:
    assert container_user(0, 0) == (engine.CONTAINER_UID, engine.CONTAINER_UID)
    assert container_user(1000, 1000) == (1000, 1000)


def test_cell_spec_mounts_scenarios_read_only_and_one_writable_out(tmp_path: Path) -> None:
    spec = cell_spec(
        image="sha256:x",
        name="krm-a",
        runner_args=["--scenarios", "seeded_mlp"],
        out_name="artifact",
        staging=tmp_path / "stage",
        scenarios=Path("/repo/scenarios"),
        env={"KERAS_BACKEND": "torch"},
        memory="2g",
        gpu=True,
        user=(1000, 1000),
    )
    assert spec.command == (
        "python",
        "-m",
        "scenarios",
        "--out",
        "/out/artifact",
        "--scenarios",
        "seeded_mlp",
    )
    writable = [m for m in spec.mounts if not m.read_only]
    assert [(m.source, m.target) for m in writable] == [(tmp_path / "stage", "/out")]
    assert any(m.target == CONTAINER_SCENARIOS and m.read_only for m in spec.mounts)
    cmd = engine.run_command(spec)
    assert "--gpus" in cmd and "KERAS_BACKEND=torch" in cmd and "1000:1000" in cmd


# --- the real engine, the real runner ----------------------------------------


@pytest.fixture(scope="module")
def tf_env() -> tuple[DockerExecutor, Environment, str, float]:
    require_engine()
    executor = DockerExecutor()
    env = Environment(stack=load_catalog()["tf-2.15"], target="cpu")
    environment_id = executor.prepare(env)
    start = time.monotonic()
    again = executor.prepare(env)
    assert again == environment_id
    return executor, env, environment_id, time.monotonic() - start


@pytest.mark.docker
def test_prepare_reuses_the_unchanged_image(
    tf_env: tuple[DockerExecutor, Environment, str, float],
) -> None:
    executor, _, environment_id, reuse_seconds = tf_env
    assert environment_id.startswith("sha256:")
    info = executor.image_info(environment_id)
    assert info is not None and info.built is False  # the second prepare found it
    assert reuse_seconds < 5


@pytest.mark.docker
def test_real_runner_cell_in_a_hardened_container(
    tf_env: tuple[DockerExecutor, Environment, str, float], tmp_path: Path
) -> None:
    assert (SCENARIOS_ROOT / "scenarios" / "__main__.py").is_file()
    executor, env, environment_id, _ = tf_env
    out = tmp_path / "artifact"
    meta = {"id": "tf-2.15-docker-test", "axes": {"stack": "tf-2.15"}, "executor": "docker",
            "repeat": 0, "environment_id": environment_id}  # fmt: skip
    run = executor.run_cell(
        env,
        environment_id,
        [
            "--scenarios",
            "seeded_mlp",
            "--quick",
            "--unseeded-repeats",
            "1",
            "--meta",
            json.dumps(meta),
        ],
        out,
        timeout=600,
        memory="3g",
        gpu=False,
        extra_env={"PYTHONHASHSEED": "0"},
    )
    assert run.reason is None, run.output_tail
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    assert (out / "tensors.npz").is_file() and (out / "log.txt").is_file()
    assert manifest["fingerprint"]["packages"]["tensorflow-cpu"] == "2.15.1"
    assert manifest["fingerprint"]["keras_major"] == 2
    assert manifest["scenarios"]["seeded_mlp"]["status"] == "ok", manifest["scenarios"][
        "seeded_mlp"
    ]
    text = json.dumps(manifest)
    assert environment_id in text and '"docker"' in text
    # handed back to the host user, and nothing else left beside it
    assert out.stat().st_uid == os.getuid()
    assert all(p.stat().st_uid == os.getuid() for p in out.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


@pytest.mark.docker
def test_cell_container_is_isolated(
    tf_env: tuple[DockerExecutor, Environment, str, float], tmp_path: Path
) -> None:
    """The exact flags and mounts of a cell, with a probe instead of the runner."""
    _, env, environment_id, _ = tf_env
    staging = make_staging(tmp_path / "artifact", container_user())
    spec = cell_spec(
        image=environment_id, name="krm-test-cell-probe", runner_args=[], out_name="artifact",
        staging=staging, scenarios=SCENARIOS_ROOT / "scenarios", env=dict(env.stack.env),
        memory="1g", gpu=False, user=container_user(),
    )  # fmt: skip
    probe = PROBE + (
        "import pathlib\n"
        "pathlib.Path('/out/written').write_text('x')\n"
        "try:\n    pathlib.Path('/opt/krm/scenarios/x').write_text('x')\n"
        "except OSError as e:\n    print('scenarios read-only', e.errno)\n"
    )
    result = engine.run_container(
        dataclasses.replace(spec, command=("python", "-c", probe)), timeout=120
    )
    assert result.reason is None, result.output
    lines = result.output.strip().splitlines()
    seen = json.loads(next(line for line in lines if line.startswith("{")))
    assert seen["interfaces"] == ["lo"] and seen["connected"] is False
    assert seen["root_writable"] is False
    assert seen["uid"] != 0 and int(seen["cap_eff"], 16) == 0 and seen["no_new_privs"] == "1"
    assert "scenarios read-only 30" in lines  # EROFS
    assert (staging / "written").read_text() == "x"


@pytest.mark.docker
def test_cell_timeout_is_reported_and_the_container_removed(
    tf_env: tuple[DockerExecutor, Environment, str, float], tmp_path: Path
) -> None:
    executor, env, environment_id, _ = tf_env
    run = executor.run_cell(
        env, environment_id, ["--scenarios", "seeded_mlp"], tmp_path / "artifact",
        timeout=3, memory="3g", gpu=False, extra_env={},
    )  # fmt: skip
    assert run.reason == "timeout after 3 s"
    assert run.returncode is None
    assert not (tmp_path / "artifact" / "manifest.json").exists()
    name = run.extra["container"]
    assert name.startswith("krm-tf-2.15.cpu-")
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={name}"], capture_output=True, text=True
    )
    assert left.stdout.strip() == ""
