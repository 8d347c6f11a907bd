from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest
from docker_support import require_engine

from matrix import command
from matrix.environments import engine, images
from matrix.errors import BuildError
from matrix.plan.stacks import Stack, load_catalog

CATALOG = load_catalog()

# --- pure parts --------------------------------------------------------------


def test_parse_lock_reads_every_pinned_entry_with_hashes() -> None:
    lock = CATALOG["tf-2.15"].lock_path("cpu").read_text()
    entries = images.parse_lock(lock)
    names = {e.name for e in entries}
    assert len(entries) == lock.count("==")
    assert {"tensorflow-cpu", "numpy", "keras", "typing-extensions"} <= names
    assert all(e.hashes and all(len(h) == 64 for h in e.hashes) for e in entries)
    assert next(e for e in entries if e.name == "tensorflow-cpu").version == "2.15.1"


def test_parse_lock_rejects_unpinned_entries() -> None:
    with pytest.raises(BuildError, match="not pinned"):
        images.parse_lock("numpy>=1.0 --hash=sha256:" + "0" * 64)


def test_cuda_versions_come_from_the_lock() -> None:
    tf = images.cuda_versions(CATALOG["tf-2.15"].lock_path("cuda").read_text())
    assert tf == {"cuda": "12.2.140", "cudnn": "8.9.4.25", "nccl": "2.16.5"}
    torch = images.cuda_versions(CATALOG["keras-3.15-torch"].lock_path("cuda").read_text())
    assert torch["cuda"] == "13.2.86" and torch["cudnn"] == "9.26.0.51"
    assert images.cuda_versions(CATALOG["tf-2.15"].lock_path("cpu").read_text()) == {}


def test_content_hash_covers_every_input() -> None:
    base = {
        "base_digest": "sha256:1",
        "dockerfile": b"FROM x",
        "lock": b"a==1",
        "mode": "wheelhouse",
    }
    reference = images.content_hash(**base)  # type: ignore[arg-type]
    assert reference == images.content_hash(**base)  # type: ignore[arg-type]
    variants = [
        {"base_digest": "sha256:2"},
        {"dockerfile": b"FROM y"},
        {"lock": b"a==2"},
        {"mode": "index"},
    ]
    digests = {images.content_hash(**{**base, **v}) for v in variants}  # type: ignore[arg-type]
    assert reference not in digests and len(digests) == len(variants)


def test_content_hash_rejects_unknown_mode() -> None:
    with pytest.raises(BuildError, match="unknown image build mode"):
        images.content_hash(base_digest="x", dockerfile=b"", lock=b"", mode="magic")


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

    monkeypatch.setattr(subprocess, "run", no_network)
    found = images.fill_wheelhouse("\n".join(lines) + "\n", wheelhouse=house, log=lambda _: None)
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
    assert images.fill_wheelhouse(lock, wheelhouse=house, log=lambda _: None) == [wheel]
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
        images.fill_wheelhouse(lock, wheelhouse=house, log=lambda _: None)
    assert calls and "--require-hashes" in calls[0] and "--only-binary=:all:" in calls[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SameLock(Stack):
    """A stack under another name that shares an existing stack's lock."""

    source: str

    def lock_path(self, target: str) -> Path:
        return CATALOG[self.source].lock_path(target)


# --- the real engine ---------------------------------------------------------


@pytest.mark.docker
def test_tensorflow_image_builds_once_and_is_reused() -> None:
    require_engine()
    stack = CATALOG["tf-2.15"]
    first = images.ensure_image(stack, "cpu")
    assert first.tag.startswith("krm-env:tf-2.15.cpu-")
    labels = engine.image_labels(first.tag)
    assert labels["org.krm.content-hash"] == first.content_hash
    assert labels["org.krm.lock-sha256"] == stack.lock_hash("cpu")
    assert labels["org.krm.base-digest"] == first.base_digest
    # the install stage (with its copy of every wheel) did not survive the build
    leftover = subprocess.run(
        ["docker", "images", "-q", "--filter", f"label=org.krm.install-of={first.content_hash}"],
        capture_output=True,
        text=True,
    )
    assert leftover.returncode == 0 and leftover.stdout.strip() == ""

    start = time.monotonic()
    again = images.ensure_image(stack, "cpu")
    elapsed = time.monotonic() - start
    assert again.built is False and again.image_id == first.image_id
    assert elapsed < 5, f"unchanged-image check took {elapsed:.1f} s"
    assert images.planned_image(stack, "cpu") == f"image {first.tag} ready"

    # the same lock under another stack name: tagged, not built a second time
    twin = images.ensure_image(
        _SameLock(name="tf-2.15-twin", source="tf-2.15", requirements=()), "cpu"
    )
    try:
        assert twin.image_id == first.image_id and twin.built is False
        assert twin.tag == first.tag.replace("tf-2.15.", "tf-2.15-twin.")
    finally:
        subprocess.run(["docker", "rmi", twin.tag], capture_output=True)

    # what is installed is the lock, nothing more, as the unprivileged user
    probe = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", first.tag, "sh", "-c",
         "id -u; python -c 'import sys; print(sys.prefix)';"
         " python -m pip freeze --all 2>/dev/null | grep -i '^tensorflow-cpu=='"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["10001", "/opt/venv", "tensorflow-cpu==2.15.1"]


@pytest.mark.docker
def test_missing_unpullable_base_is_one_clear_error() -> None:
    require_engine()
    with pytest.raises(BuildError, match=r"base image krm-test:absent .*nox -s base-image") as info:
        images.ensure_image(CATALOG["tf-2.15"], "cpu", base="krm-test:absent", log=lambda _: None)
    assert "\n" not in info.value.message and info.value.exit_code == 5


def test_default_mirror_comes_from_the_hosts_apt_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matrix.environments.base_image import default_mirror

    monkeypatch.delenv("KRM_DEBIAN_MIRROR", raising=False)
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    one_line = tmp_path / "sources.list"
    one_line.write_text("# old style\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert default_mirror((deb822, one_line)) == "http://mirror.example/debian"
    assert default_mirror((tmp_path / "absent", one_line)) == "http://other.example/debian"
    assert default_mirror((tmp_path / "absent",)) is None
    monkeypatch.setenv("KRM_DEBIAN_MIRROR", "http://proxy.example/debian")
    assert default_mirror((deb822,)) == "http://proxy.example/debian"
