from __future__ import annotations

import itertools
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_support import PROBE, assert_no_network, require_engine

from matrix.environments import engine
from matrix.environments.base_image import BASE_TAG, ensure_base_image
from matrix.errors import DiskFullError, EngineError
from matrix.execute.executors.base import failure_reason

# --- pure parts --------------------------------------------------------------


def test_version_tuple_parses_distribution_versions() -> None:
    assert engine._version_tuple("20.10.24+dfsg1") == (20, 10, 24)
    assert engine._version_tuple("28.2.2") == (28, 2, 2)
    assert engine._version_tuple("19.03.0-ce") < engine.MIN_SERVER_VERSION


def _spec(**overrides: object) -> engine.RunSpec:
    fields: dict[str, object] = {
        "image": "sha256:abc",
        "command": ("python", "-m", "scenarios", "--out", "/out/x"),
        "name": "krm-test-1",
        "mounts": (
            engine.Mount(source=Path("/repo/scenarios"), target="/opt/krm/scenarios"),
            engine.Mount(source=Path("/results/.s"), target="/out", read_only=False),
        ),
        "env": {"KERAS_BACKEND": "jax", "A": "1"},
        "memory": "3g",
    }
    fields.update(overrides)
    return engine.RunSpec(**fields)  # type: ignore[arg-type]


def _pairs(cmd: list[str]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(cmd))


def test_run_command_is_hardened() -> None:
    cmd = engine.run_command(_spec())
    pairs = _pairs(cmd)
    assert cmd[:2] == ["docker", "run"]
    for flag in ("--rm", "--read-only", "--init"):
        assert flag in cmd
    assert ("--network", "none") in pairs
    assert ("--cap-drop", "ALL") in pairs
    assert ("--security-opt", "no-new-privileges") in pairs
    assert ("--user", f"{engine.CONTAINER_UID}:{engine.CONTAINER_UID}") in pairs
    assert ("--memory", "3g") in pairs and ("--memory-swap", "3g") in pairs
    assert ("--pids-limit", "4096") in pairs
    assert ("--name", "krm-test-1") in pairs
    assert any(a == "--tmpfs" and b.startswith("/tmp:") for a, b in pairs)
    assert ("--volume", "/repo/scenarios:/opt/krm/scenarios:ro") in pairs
    assert ("--volume", "/results/.s:/out:rw") in pairs
    assert ("--env", "KERAS_BACKEND=jax") in pairs
    assert "--gpus" not in cmd
    # the image comes last before the command, so no flag is taken for an argument
    assert cmd[-6:] == ["sha256:abc", "python", "-m", "scenarios", "--out", "/out/x"]


def test_run_command_gpu_adds_all_gpus() -> None:
    assert ("--gpus", "all") in _pairs(engine.run_command(_spec(gpu=True)))


@pytest.mark.parametrize(
    ("code", "timed_out", "output", "expected"),
    [
        (0, False, "", None),
        (None, True, "", "timeout after 30 s"),
        (137, False, "", "out of memory (killed, exit 137)"),
        (1, False, "Traceback...\nValueError: bad shape\nother", "exit 1: ValueError: bad shape"),
        (2, False, "usage: ...", "exit 2: usage: ..."),
        (139, False, "", "killed by signal SIGSEGV (exit 139)"),
        (
            125,
            False,
            "docker: Error response: no such image",
            "exit 125: docker run failed: Error response: no such image",
        ),
        (125, False, 'could not select device driver "" with capabilities: [[gpu]]', None),
    ],
)
def test_failure_reason(
    code: int | None, timed_out: bool, output: str, expected: str | None
) -> None:
    reason = failure_reason(code, timed_out=timed_out, timeout=30, output=output, container=True)
    if code == 125 and expected is None:
        assert reason is not None and "NVIDIA Container Toolkit" in reason
    else:
        assert reason == expected


# --- check_engine against fake CLIs -----------------------------------------


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    script = tmp_path / "docker"
    monkeypatch.setenv("KRM_DOCKER", str(script))
    engine.check_engine.cache_clear()
    yield script
    engine.check_engine.cache_clear()


def _write(script: Path, body: str) -> None:
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_missing_binary_says_what_to_do(fake_docker: Path) -> None:
    with pytest.raises(EngineError, match=r"not on PATH.*--executor venv"):
        engine.check_engine()
    assert EngineError.exit_code == 4


def test_daemon_not_running(fake_docker: Path) -> None:
    _write(fake_docker, 'echo "28.2.2|"; echo "Cannot connect to the Docker daemon" >&2; exit 1\n')
    with pytest.raises(EngineError, match=r"not running.*Cannot connect"):
        engine.check_engine()


def test_daemon_too_old(fake_docker: Path) -> None:
    _write(fake_docker, 'echo "28.2.2|19.03.15"\n')
    with pytest.raises(EngineError, match=r"19\.03\.15 is too old"):
        engine.check_engine()


def test_new_enough_daemon_passes(fake_docker: Path) -> None:
    _write(fake_docker, 'case "$1" in version) echo "28.2.2|20.10.24+dfsg1";; *) exit 1;; esac\n')
    info = engine.check_engine()
    assert info.server_version == "20.10.24+dfsg1" and info.buildx is False


def test_build_reports_full_disk(fake_docker: Path, tmp_path: Path) -> None:
    _write(
        fake_docker,
        'case "$1" in version) echo "28.2.2|20.10.24";; '
        'build) echo "Step 1/2 : FROM x"; '
        'echo "write /var/lib/docker/x: no space left on device"; exit 1;; '
        "*) exit 1;; esac\n",
    )
    with pytest.raises(DiskFullError, match="no space left"):
        engine.build_image(tmp_path, tag="krm-env:x")


def test_missing_engine_fails_under_ci_and_skips_elsewhere(
    fake_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs a Docker engine"):
        require_engine()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no Docker engine"):
        require_engine()


# --- the real engine ---------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> str:
    require_engine()
    ensure_base_image()
    return BASE_TAG


@pytest.mark.docker
def test_hardened_container_has_no_network_caps_or_writable_root(base: str) -> None:
    import json

    spec = engine.RunSpec(
        image=base, command=("python3", "-c", PROBE), name="krm-test-probe", memory="256m"
    )
    result = engine.run_container(spec, timeout=60)
    assert result.returncode == 0, result.output
    seen = json.loads(result.output.strip().splitlines()[-1])
    assert_no_network(seen)
    assert seen["root_writable"] is False
    assert seen["uid"] == engine.CONTAINER_UID
    assert int(seen["cap_eff"], 16) == 0
    assert seen["no_new_privs"] == "1"


@pytest.mark.docker
def test_timeout_kills_the_container(base: str) -> None:
    spec = engine.RunSpec(
        image=base, command=("sleep", "60"), name="krm-test-timeout", memory="64m"
    )
    result = engine.run_container(spec, timeout=2)
    assert result.timed_out and result.returncode is None
    ps = subprocess.run(
        ["docker", "ps", "-a", "--filter", "name=krm-test-timeout", "-q"],
        capture_output=True,
        text=True,
    )
    assert ps.stdout.strip() == ""


@pytest.mark.docker
def test_memory_limit_is_reported_as_out_of_memory(base: str) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(16 * 2**20))"
    spec = engine.RunSpec(
        image=base, command=("python3", "-c", hog), name="krm-test-oom", memory="96m"
    )
    result = engine.run_container(spec, timeout=120)
    reason = failure_reason(
        result.returncode, timed_out=result.timed_out, timeout=120, output=result.output,
        container=True,
    )  # fmt: skip
    assert reason == "out of memory (killed, exit 137)", result.output


@pytest.mark.docker
def test_image_id_of_missing_image_is_none() -> None:
    require_engine()
    assert engine.image_id("krm-env:does-not-exist") is None


def test_relative_mount_sources_become_absolute_paths() -> None:
    # A relative source would be read by Docker as a named volume.
    from matrix.environments.engine import Mount, RunSpec, run_command

    spec = RunSpec(
        image="img",
        name="n",
        command=("true",),
        mounts=(Mount(source=Path("results/x"), target="/out", read_only=False),),
    )
    volume = run_command(spec)[run_command(spec).index("--volume") + 1]
    assert volume == f"{Path('results/x').absolute()}:/out:rw"


def test_daemon_message_is_the_reason_for_exit_125() -> None:
    output = (
        "docker: Error response from daemon: bad mount.\n\n"
        "Run 'docker run --help' for more information\n"
    )
    reason = failure_reason(125, timed_out=False, timeout=1, output=output, container=True)
    assert reason == "exit 125: docker run failed: Error response from daemon: bad mount."
