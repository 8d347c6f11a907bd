from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_support import require_engine

from matrix import command
from matrix.environments import base_image, engine, images, locks, wheelhouse
from matrix.errors import BuildError, SpecError
from matrix.plan.stacks import Stack, load_catalog

CATALOG = load_catalog()

# --- pure parts --------------------------------------------------------------


def test_parse_lock_reads_every_pinned_entry_with_hashes() -> None:
    lock = CATALOG["tf-2.15"].lock_path("cpu").read_text()
    entries = locks.parse_lock(lock)
    names = {e.name for e in entries}
    assert len(entries) == lock.count("==")
    assert {"tensorflow-cpu", "numpy", "keras", "typing-extensions"} <= names
    assert all(e.hashes and all(len(h) == 64 for h in e.hashes) for e in entries)
    assert next(e for e in entries if e.name == "tensorflow-cpu").version == "2.15.1"


def test_parse_lock_rejects_unpinned_entries() -> None:
    with pytest.raises(BuildError, match="not pinned"):
        locks.parse_lock("numpy>=1.0 --hash=sha256:" + "0" * 64)


def test_cuda_versions_come_from_the_lock() -> None:
    tf = images.cuda_versions(CATALOG["tf-2.15"].lock_path("cuda").read_text())
    assert tf == {"cuda": "12.2.140", "cudnn": "8.9.4.25", "nccl": "2.16.5"}
    torch = images.cuda_versions(CATALOG["keras-3.15-torch"].lock_path("cuda").read_text())
    assert torch["cuda"] == "13.2.86" and torch["cudnn"] == "9.26.0.51"
    assert images.cuda_versions(CATALOG["tf-2.15"].lock_path("cpu").read_text()) == {}


def test_content_hash_covers_every_input_and_their_boundaries() -> None:
    parts = ("sha256:1", b"recipe", b"a==1", b"uv==1", "wheelhouse", "x86_64")
    reference = images.content_hash(*parts)
    assert reference == images.content_hash(*parts)
    for n in range(len(parts)):
        changed = list(parts)
        changed[n] = changed[n] + (b"!" if isinstance(changed[n], bytes) else "!")  # type: ignore[operator]
        assert images.content_hash(*changed) != reference
    # parts are length-prefixed: moving bytes between two parts changes the hash
    assert images.content_hash("ab", "c") != images.content_hash("a", "bc")


def test_arm64_without_a_lock_is_a_one_line_refusal_naming_the_stack() -> None:
    stack = CATALOG["tf-2.12"]  # tensorflow 2.12 has no Linux Arm wheels for CPython 3.11
    assert not stack.has_lock("cpu", "aarch64")
    with pytest.raises(SpecError) as info:
        stack.lock_hash("cpu", "aarch64")
    assert "tf-2.12" in info.value.message and "aarch64" in info.value.message
    assert "\n" not in info.value.message


def test_every_stack_of_the_default_matrix_runs_on_arm64() -> None:
    """`nox -s matrix` on Apple Silicon (Docker Desktop runs linux/arm64): each
    default stack has an Arm lock of its own, from the Arm wheels' names."""
    from matrix.paths import DEFAULT_SPEC
    from matrix.plan.spec import load_spec
    from matrix.plan.tasks import make_plan

    plan = make_plan(load_spec(DEFAULT_SPEC, CATALOG), CATALOG)
    for name, target in plan.environments:
        stack = CATALOG[name]
        lock = stack.lock_path(target, "aarch64")
        assert lock.is_file(), name
        entries = {e.name for e in locks.parse_lock(lock.read_text())}
        assert stack.lock_hash(target, "aarch64") != stack.lock_hash(target)
        assert "tensorflow-cpu" not in entries  # it has no Arm wheels
    assert CATALOG["tf-2.21"].requirements_for("cpu", "aarch64") == ("tensorflow==2.21.0",)
    assert CATALOG["tf-2.21"].requirements_for("cpu") == ("tensorflow-cpu==2.21.0",)


def test_lock_command_line_names_the_platform_and_an_extra_index() -> None:
    cmd = locks.compile_command("uv", Path("r.in"), Path("o.txt"), arch="aarch64", index=None,
                                upgrade=False)  # fmt: skip
    assert "aarch64-manylinux_2_28" in cmd and "--index-url" not in cmd
    cpu_torch = locks.compile_command(
        "uv", Path("r.in"), Path("o.txt"), arch="x86_64",
        index="https://download.pytorch.org/whl/cpu", upgrade=True,
    )  # fmt: skip
    assert cpu_torch[cpu_torch.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "--emit-index-url" in cpu_torch and "--upgrade" in cpu_torch


def test_the_base_is_chosen_by_what_works(monkeypatch: pytest.MonkeyPatch) -> None:
    present: set[str] = set()
    pulls: list[str] = []
    monkeypatch.setattr(engine, "image_id", lambda ref: "sha256:x" if ref in present else None)

    def pull(ref: str, log: object = None) -> str | None:
        pulls.append(ref)
        if ref in pullable:
            present.add(ref)
            return None
        return "no registry"

    monkeypatch.setattr(engine, "pull_image", pull)
    monkeypatch.delenv("KRM_BASE_IMAGE", raising=False)
    notes: list[str] = []
    pullable: set[str] = set()
    # nothing present, nothing pullable: the local bootstrap, with a notice
    assert base_image.choose_base(log=notes.append) == base_image.BASE_TAG
    assert pulls == ["python:3.11-slim"] and any("bootstrapping" in n for n in notes)
    # a dry run asks no registry
    assert base_image.choose_base(pull=False) is None and len(pulls) == 1
    # pullable: the ordinary engine's base
    pullable.add("python:3.11-slim")
    assert base_image.choose_base(log=notes.append) == "python:3.11-slim"
    # present: used without asking again
    assert base_image.choose_base(log=notes.append) == "python:3.11-slim" and len(pulls) == 2
    # an explicit base always wins
    monkeypatch.setenv("KRM_BASE_IMAGE", "my/base:1")
    assert base_image.choose_base() == "my/base:1"


def test_debian_mirror_only_from_a_debian_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KRM_DEBIAN_MIRROR", raising=False)
    ubuntu = tmp_path / "ubuntu.sources"
    ubuntu.write_text("Types: deb\nURIs: http://archive.ubuntu.com/ubuntu/\nSuites: noble\n")
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\n')
    assert base_image.default_mirror((ubuntu,), release) == base_image.DEBIAN_MIRROR
    release.write_text('PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n')
    local = tmp_path / "debian.sources"
    local.write_text("Types: deb\nURIs: http://mirror.local/debian/\nSuites: bookworm\n")
    assert base_image.default_mirror((local,), release) == "http://mirror.local/debian"
    assert base_image.default_mirror((tmp_path / "absent",), release) == base_image.DEBIAN_MIRROR


def test_image_tag_is_a_valid_docker_tag() -> None:
    tag = images.image_tag("keras-3.15-jax", "cuda", "ab" * 32)
    assert tag == "krm-env:keras-3.15-jax.cuda-abababababab"
    name, _, version = tag.partition(":")
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", version)


def test_wheelhouse_is_offline_when_it_already_has_the_locked_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    house = tmp_path / "house"
    house.mkdir()
    lines = []
    for name in ("alpha", "beta"):
        wheel = house / f"{name}-1.0-py3-none-any.whl"
        wheel.write_bytes(name.encode() * 100)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name}==1.0 \\\n    --hash=sha256:{'f' * 64} \\\n    --hash=sha256:{digest}")
    (house / "stray-9.9-py3-none-any.whl").write_bytes(b"not in the lock")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip download ran although every wheel was there")

    monkeypatch.setattr(command, "run", no_network)
    found = wheelhouse.fill_wheelhouse(
        "\n".join(lines) + "\n", wheelhouse=house, log=lambda _: None
    )
    assert sorted(p.name for p in found) == [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.0-py3-none-any.whl",
    ]


def test_wheelhouse_ignores_a_wheel_whose_hash_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    house = tmp_path / "house"
    house.mkdir()
    wheel = house / "alpha-1.0-py3-none-any.whl"
    wheel.write_bytes(b"genuine")
    lock = f"alpha==1.0 --hash=sha256:{hashlib.sha256(b'genuine').hexdigest()}\n"
    assert wheelhouse.fill_wheelhouse(lock, wheelhouse=house, log=lambda _: None) == [wheel]
    wheel.write_bytes(b"tampered, and longer")  # size changes: the cached hash is not trusted
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs: object) -> command.Result:
        calls.append([str(c) for c in cmd])
        return command.Result(
            cmd=tuple(cmd), returncode=1, seconds=0.1,
            output="ERROR: THESE PACKAGES DO NOT MATCH THE HASHES",
        )  # fmt: skip

    monkeypatch.setattr(command, "run", fake_pip)
    with pytest.raises(BuildError, match="DO NOT MATCH"):
        wheelhouse.fill_wheelhouse(lock, wheelhouse=house, log=lambda _: None)
    assert calls and "--require-hashes" in calls[0] and "--only-binary=:all:" in calls[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LockAt(Stack):
    """A stack whose lock is a given file."""

    lock: Path

    def lock_path(self, target: str, arch: str = "x86_64") -> Path:
        return self.lock


# --- the real engine ---------------------------------------------------------

NUMPY_LOCK = re.search(
    r"^numpy==1\.26\.4 .*?(?=^\S)", CATALOG["tf-2.15"].lock_path("cpu").read_text(), re.M | re.S
)


def _remove(*refs: str) -> None:
    for ref in refs:
        subprocess.run(["docker", "rmi", "--force", ref], capture_output=True)


@pytest.mark.docker
def test_an_image_is_really_built_on_a_shared_layer_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small real build every run (its images are removed first, so the
    test never passes on images left from before): the large-wheel layer,
    the final image on top, its labels and contents; then a second stack
    with the same large wheel reuses the layer, and the unchanged image is
    reused outright."""
    require_engine()
    assert NUMPY_LOCK is not None
    monkeypatch.setattr(images, "LAYER_MIN_BYTES", 10 * 10**6)  # numpy is large enough here
    six = (
        "six==1.16.0 --hash=sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926"
        " --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254\n"
    )
    lock_a = tmp_path / "a.txt"
    lock_a.write_text(NUMPY_LOCK.group(0))
    lock_b = tmp_path / "b.txt"
    lock_b.write_text(NUMPY_LOCK.group(0) + six)
    stack_a = _LockAt(name="krm-test-numpy", requirements=(), lock=lock_a)
    stack_b = _LockAt(name="krm-test-numpy-six", requirements=(), lock=lock_b)
    plan_a = images.plan_image(stack_a, "cpu", log=lambda _: None)
    plan_b = images.plan_image(stack_b, "cpu", log=lambda _: None)
    (numpy,) = locks.parse_lock(lock_a.read_text())
    layer = images._layer_plan(plan_a, {numpy.line: 20 * 10**6})
    assert layer is not None
    _remove(plan_a.tag, plan_b.tag, layer.tag)

    logs: list[str] = []
    first = images.ensure_image(stack_a, "cpu", log=logs.append)
    assert first.built and first.layer == layer.tag
    assert any("shared layer" in line and "installing" in line for line in logs)
    labels = engine.image_labels(first.tag)
    assert labels["org.krm.content-hash"] == first.content_hash
    assert labels["org.krm.lock-sha256"] == first.lock_sha256
    assert labels["org.krm.layer"] == layer.tag and labels["org.krm.arch"] == "x86_64"

    logs.clear()
    second = images.ensure_image(stack_b, "cpu", log=logs.append)
    assert second.built and second.layer == layer.tag
    assert any("reusing the shared layer" in line for line in logs)

    again = images.ensure_image(stack_a, "cpu", log=lambda _: None)
    assert again.built is False and again.image_id == first.image_id
    assert images.planned_image(stack_a, "cpu") == f"image {first.tag} ready"

    # what is installed is the lock, as the unprivileged user, read-only,
    # with its bytecode already there (nothing to write at import)
    probe = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--read-only", second.tag, "python", "-c",
         "import os, sys, numpy, six; print(os.getuid(), sys.prefix, numpy.__version__, "
         "six.__version__, bool(numpy.__cached__))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["10001", "/opt/venv", "1.26.4", "1.16.0", "True"]
    # the layer is shared, not copied: the final image only adds six on top of it
    history = subprocess.run(
        ["docker", "history", "--format", "{{.ID}}", second.tag], capture_output=True, text=True
    ).stdout.split()
    assert engine.image_id(layer.tag)[7:19] in history  # type: ignore[index]
    _remove(plan_a.tag, plan_b.tag, layer.tag)


@pytest.mark.docker
def test_tensorflow_image_is_built_or_found_and_holds_its_lock() -> None:
    require_engine()
    stack = CATALOG["tf-2.15"]
    first = images.ensure_image(stack, "cpu")
    assert first.tag.startswith("krm-env:tf-2.15.cpu-")
    again = images.ensure_image(stack, "cpu")
    assert again.built is False and again.image_id == first.image_id
    probe = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", first.tag, "python", "-c",
         "import importlib.metadata as m; print(m.version('tensorflow-cpu'))"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0 and probe.stdout.split() == ["2.15.1"], probe.stderr


@pytest.mark.docker
def test_missing_unpullable_base_is_one_clear_error() -> None:
    require_engine()
    with pytest.raises(BuildError, match=r"base image krm-test:absent .*nox -s base-image") as info:
        images.ensure_image(CATALOG["tf-2.15"], "cpu", base="krm-test:absent", log=lambda _: None)
    assert "\n" not in info.value.message and info.value.exit_code == 5


def test_an_index_build_gets_the_hosts_trust_store_and_proxies(tmp_path: Path) -> None:
    """A network that inspects TLS has its own authority: a build that fetches
    from the index must trust what the host trusts, and use its proxy."""
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    mounts, env = images.index_access(
        {"SSL_CERT_FILE": str(bundle), "HTTPS_PROXY": "http://proxy:3128", "HOME": "/root"}
    )
    assert [(m.source, m.read_only) for m in mounts] == [(bundle.resolve(), True)]
    assert env == {"HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": mounts[0].target}
    mounts, env = images.index_access({"SSL_CERT_FILE": str(tmp_path / "missing.crt")})
    assert all(m.source.is_file() for m in mounts)  # only a bundle that exists is mounted


@pytest.fixture
def local_registry(tmp_path: Path) -> Iterator[str]:
    """A real registry (Debian's docker-registry) on a free loopback port; the
    engine treats 127.0.0.0/8 registries as plain HTTP without configuration."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs docker-registry (Debian package docker-registry)")
        pytest.skip("docker-registry is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}/krm-test"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.docker
def test_images_go_to_a_registry_and_come_back_from_it_instead_of_a_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_registry: str
) -> None:
    """--push sends a built image to the registry under its content tag; on a
    machine without it (here: the local tag removed), the next run pulls it
    instead of building, and checks it holds the content its tag names."""
    require_engine()
    assert NUMPY_LOCK is not None
    lock = tmp_path / "lock.txt"
    lock.write_text(NUMPY_LOCK.group(0))
    stack = _LockAt(name="krm-test-registry", requirements=(), lock=lock)
    plan = images.plan_image(stack, "cpu", log=lambda _: None)
    remote = f"{local_registry}/{plan.tag}"
    _remove(plan.tag, remote)
    monkeypatch.setenv("KRM_REGISTRY", local_registry)
    monkeypatch.setenv("KRM_PUSH", "1")
    logs: list[str] = []
    built = images.ensure_image(stack, "cpu", log=logs.append)
    assert built.built and any(f"pushing {remote}" in line for line in logs)

    _remove(plan.tag, remote)  # a fresh machine: nothing local
    assert engine.image_id(plan.tag) is None
    monkeypatch.delenv("KRM_PUSH")
    logs.clear()
    pulled = images.ensure_image(stack, "cpu", log=logs.append)
    assert pulled.built is False and pulled.tag == plan.tag
    assert any("pulled from" in line for line in logs)
    assert engine.image_labels(plan.tag)["org.krm.content-hash"] == plan.content_hash
    _remove(plan.tag, remote)


def test_a_registry_must_be_a_repository_path() -> None:
    assert images.registry_settings({}) is None
    found = images.registry_settings({"KRM_REGISTRY": "ghcr.io/me/krm/", "KRM_PUSH": "1"})
    assert found == images.Registry(prefix="ghcr.io/me/krm", push=True)
    for bad in ("ghcr.io/Me/krm", "ghcr.io/me/krm:latest", "a b", "[red]x[/]"):
        with pytest.raises(SpecError):
            images.registry_settings({"KRM_REGISTRY": bad})
