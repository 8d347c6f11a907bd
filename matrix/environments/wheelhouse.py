"""The wheelhouse: every locked wheel, downloaded once by the host.

Builds need no network inside the container: the host fills one shared
wheelhouse with ``pip download`` of exactly the locked wheels (hash-checked,
for the engine's architecture), and the build mounts it read-only. The same
directory serves every image, so a wheel shared by ten environments is
downloaded once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from matrix import command
from matrix.console import build_log
from matrix.environments.locks import (
    PLATFORM_TAGS,
    TOOLS_LOCK,
    LockedWheel,
    index_options,
    parse_lock,
)
from matrix.errors import BuildError, DiskFullError, DownloadStalled
from matrix.paths import cache_root

__all__ = ["fill_wheelhouse", "timed_out_talking", "uv_binary", "wheelhouse_dir"]

#: A wheel download may take long (TensorFlow, torch's CUDA wheels), but it
#: never goes this long without printing a line.
DOWNLOAD_TIMEOUT = 2 * 3600
DOWNLOAD_IDLE_TIMEOUT = 900

Log = Callable[[str], None]


def wheelhouse_dir() -> Path:
    return cache_root() / "wheelhouse"


def _sha256_index(wheelhouse: Path) -> dict[str, str]:
    """sha256 of every wheel, remembered by (name, size, mtime) so a TF-sized
    wheelhouse is not re-hashed on every build."""
    index_path = wheelhouse / ".sha256.json"
    try:
        cached: dict[str, list[object]] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        cached = {}
    result: dict[str, str] = {}
    fresh: dict[str, list[object]] = {}
    for wheel in sorted(wheelhouse.glob("*.whl")):
        stat = wheel.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        entry = cached.get(wheel.name)
        if entry and entry[:2] == key:
            digest = str(entry[2])
        else:
            with wheel.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        fresh[wheel.name] = [*key, digest]
        result[wheel.name] = digest
    tmp = index_path.with_name(f".sha256.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(fresh))
    tmp.replace(index_path)
    return result


def _match(lock: list[LockedWheel], wheelhouse: Path) -> tuple[list[Path], list[LockedWheel]]:
    by_hash = {digest: name for name, digest in _sha256_index(wheelhouse).items()}
    found: list[Path] = []
    missing: list[LockedWheel] = []
    for entry in lock:
        hit = next((by_hash[h] for h in entry.hashes if h in by_hash), None)
        if hit is None:
            missing.append(entry)
        else:
            found.append(wheelhouse / hit)
    return found, missing


def _pip() -> list[str]:
    """pip for ``pip download``: this interpreter's, else uv's (nox's uv
    venvs have no pip), which fetches pip once into its tool cache."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    uv = shutil.which("uv")
    if uv is not None:
        return [uv, "tool", "run", "--quiet", "pip"]
    raise BuildError("filling the wheelhouse needs pip or uv: `python -m pip install pip`")


# What pip and uv say when an index or a download stops answering: after
# their own retries, a stall ends as one of these rather than as a hang.
_TIMEOUT_WORDS = ("timed out", "timeout", "read timed", "connecttimeout")


def timed_out_talking(output: str) -> bool:
    """Whether a failed pip or uv run failed because the network went silent."""
    lowered = output.lower()
    return any(word in lowered for word in _TIMEOUT_WORDS)


def fill_wheelhouse(
    lock_text: str,
    *,
    arch: str = "x86_64",
    wheelhouse: Path | None = None,
    log: Log = build_log,
) -> list[Path]:
    """Make sure the wheelhouse holds one hash-checked wheel per lock entry
    (Linux ``arch``, CPython 3.11) and return them in lock order. Offline when
    it already does."""
    house = wheelhouse or wheelhouse_dir()
    house.mkdir(parents=True, exist_ok=True)
    lock = parse_lock(lock_text)
    found, missing = _match(lock, house)
    if not missing:
        return found
    log(f"wheelhouse: downloading {len(missing)} of {len(lock)} wheels into {house}")
    lock_file = house / f".lock-{os.getpid()}.txt"
    lock_file.write_text("\n".join([*index_options(lock_text), *(m.line for m in missing)]) + "\n")
    cmd = [
        *_pip(), "download", "--disable-pip-version-check",
        "--require-hashes", "--no-deps", "--only-binary=:all:",
        # A socket with no data for this long is retried, then fails: a stall
        # ends as an error instead of hanging the build.
        "--timeout", "60", "--retries", "3", "--progress-bar", "off",
        "--implementation", "cp", "--python-version", "3.11",
        *(arg for platform in PLATFORM_TAGS[arch] for arg in ("--platform", platform)),
        "-r", str(lock_file), "-d", str(house),
    ]  # fmt: skip
    try:
        proc = command.run(cmd, timeout=DOWNLOAD_TIMEOUT, idle_timeout=DOWNLOAD_IDLE_TIMEOUT)
    finally:
        lock_file.unlink(missing_ok=True)
    if proc.timed_out or proc.stalled:
        why = (
            f"stalled: no progress for {DOWNLOAD_IDLE_TIMEOUT} s"
            if proc.stalled
            else f"took longer than {DOWNLOAD_TIMEOUT} s"
        )
        raise DownloadStalled(
            f"pip download of the locked wheels into {house} {why}; check the network "
            "or the index, then run again (downloaded wheels are kept)"
        )
    if not proc.ok:
        if "no space left" in proc.output.lower():
            raise DiskFullError(f"wheelhouse {house}: no space left on device")
        if timed_out_talking(proc.output):
            raise DownloadStalled(
                f"pip download of the locked wheels into {house} stalled: the index stopped "
                "answering (read or connect timeout); check the network or the index, then run "
                "again (downloaded wheels are kept)"
            )
        errors = [line.strip() for line in proc.lines if "ERROR" in line]
        raise BuildError(
            "pip download of the locked wheels failed: "
            + ("; ".join(errors[:3]) or proc.last_line() or "stopped")
        )
    found, missing = _match(lock, house)
    if missing:
        names = ", ".join(f"{m.name}=={m.version}" for m in missing)
        raise BuildError(f"no Linux {arch} CPython 3.11 wheel matches the lock for {names}")
    return found


def uv_binary(arch: str = "x86_64", *, log: Log = build_log) -> Path:
    """uv's Linux binary for ``arch`` (from the pinned wheel in
    docker/locks/tools.txt), extracted once: what builds install with. The
    host's own uv may be a macOS binary; this one runs in any glibc image."""
    (wheel,) = fill_wheelhouse(TOOLS_LOCK.read_text(), arch=arch, log=log)
    target = cache_root() / "tools" / wheel.stem / "uv"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith(".data/scripts/uv")), None)
        if member is None:
            raise BuildError(f"{wheel.name} holds no uv binary")
        tmp = target.with_name(f".uv.{os.getpid()}.tmp")
        tmp.write_bytes(zf.read(member))
    tmp.chmod(0o755)
    tmp.replace(target)
    return target
