from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from docker_support import PROBE, assert_no_network, require_engine

from matrix.environments import engine
from matrix.execute.executors.base import SCENARIOS_ROOT, Environment
from matrix.execute.executors.docker import (
    CONTAINER_FILE,
    CONTAINER_SCENARIOS,
    DockerExecutor,
    cell_spec,
    make_staging,
)
from matrix.plan.stacks import load_catalog

SCHEMA = SCENARIOS_ROOT / "scenarios" / "manifest.schema.json"

# --- pure parts --------------------------------------------------------------


def _info(kind: str = "docker", rootless: bool = False) -> engine.EngineInfo:
    return engine.EngineInfo(
        binary=kind, kind=kind, client_version="1", server_version="1", rootless=rootless
    )


def test_root_host_runs_cells_as_the_image_user() -> None:
    uid = engine.CONTAINER_UID
    assert engine.container_user(_info(), 0, 0) == f"{uid}:{uid}"
    assert engine.container_user(_info(), 1000, 1000) == "1000:1000"


def test_rootless_engines_run_cells_as_the_user_that_maps_to_the_host_user() -> None:
    # rootless Docker: container root is the host user (no capabilities);
    # rootless Podman keeps the host user's id with --userns=keep-id
    assert engine.container_user(_info(rootless=True), 1000, 1000) == "0:0"
    assert engine.container_user(_info("podman", rootless=True), 1000, 1000) == "1000:1000"
    spec = engine.RunSpec(image="i", command=("true",), name="krm-x", user="1000:1000")
    cmd = engine.run_command(spec, "podman", kind="podman", rootless=True)
    assert ("--userns", "keep-id") in set(itertools.pairwise(cmd))


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
        user="1000:1000",
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
    environment_id = executor.prepare(env).id
    start = time.monotonic()
    again = executor.prepare(env)
    assert again.id == environment_id and again.built is False
    return executor, env, environment_id, time.monotonic() - start


@pytest.mark.docker
def test_prepare_reuses_the_unchanged_image(
    tf_env: tuple[DockerExecutor, Environment, str, float],
) -> None:
    executor, _, environment_id, _ = tf_env
    assert environment_id.startswith("sha256:")
    info = executor.image_info(environment_id)
    assert info is not None and info.built is False  # the second prepare found it


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
    # beside it only the container's name, which a later scheduler would reap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", CONTAINER_FILE]


@pytest.mark.docker
def test_cell_container_is_isolated(
    tf_env: tuple[DockerExecutor, Environment, str, float], tmp_path: Path
) -> None:
    """The exact flags and mounts of a cell, with a probe instead of the runner."""
    _, env, environment_id, _ = tf_env
    user = engine.container_user(engine.check_engine())
    staging = make_staging(tmp_path / "artifact", user)
    spec = cell_spec(
        image=environment_id, name="krm-test-cell-probe", runner_args=[], out_name="artifact",
        staging=staging, scenarios=SCENARIOS_ROOT / "scenarios", env=dict(env.stack.env),
        memory="1g", gpu=False, user=user,
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
    assert result.returncode == 0, result.output
    lines = result.output.strip().splitlines()
    seen = json.loads(next(line for line in lines if line.startswith("{")))
    assert_no_network(seen)
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
