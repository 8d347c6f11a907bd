"""The one place that drives the Docker CLI.

Everything Docker-shaped goes through here as ``subprocess`` calls, so the
rest of the code deals in plain data (:class:`RunSpec`, :class:`RunResult`)
and the pure parts (command lines, exit-code mapping) are testable without an
engine. User-caused problems (no engine, daemon down, too old, disk full)
become one-line :class:`~matrix.errors.MatrixError` subclasses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matrix.errors import BuildError, DiskFullError, EngineError

__all__ = [
    "CONTAINER_UID",
    "MIN_SERVER_VERSION",
    "EngineInfo",
    "Mount",
    "RunResult",
    "RunSpec",
    "build_image",
    "check_engine",
    "docker_binary",
    "failure_reason",
    "image_content_digest",
    "image_id",
    "image_labels",
    "images_with_label",
    "import_image",
    "last_line",
    "remove_container",
    "run_command",
    "run_container",
    "tag_image",
]

#: The oldest server we test against; older ones lack ``--pids-limit`` and
#: ``--security-opt no-new-privileges`` semantics we rely on.
MIN_SERVER_VERSION = (20, 10)

#: The unprivileged user the image creates (docker/Dockerfile).
CONTAINER_UID = 10001

#: Exit codes ``docker run`` itself uses for its own failures, not the
#: command's: 125 the daemon refused, 126 not executable, 127 not found.
_DOCKER_RUN_ERRORS = {125: "docker run failed", 126: "not executable", 127: "command not found"}

_DISK_FULL = re.compile(r"no space left on device", re.IGNORECASE)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    binary: str
    client_version: str
    server_version: str
    buildx: bool


def docker_binary() -> str:
    """The docker CLI to use: ``$KRM_DOCKER`` (e.g. a podman shim) or docker."""
    return os.environ.get("KRM_DOCKER", "docker")


def _version_tuple(text: str) -> tuple[int, ...]:
    """ "20.10.24+dfsg1" -> (20, 10, 24); unparsable parts stop the tuple."""
    parts: list[int] = []
    for piece in re.split(r"[.+~-]", text.strip()):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


@functools.cache
def check_engine() -> EngineInfo:
    """Check up front that an engine answers and is new enough.

    Cached per process: the scheduler calls it once per image and per cell.
    """
    binary = docker_binary()
    path = shutil.which(binary)
    if path is None:
        raise EngineError(
            f"`{binary}` is not on PATH: install Docker Engine "
            "(https://docs.docker.com/engine/install/) or use --executor venv"
        )
    try:
        proc = subprocess.run(
            [path, "version", "--format", "{{.Client.Version}}|{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(
            "the Docker daemon did not answer within 30 s: check `docker info`, "
            "or use --executor venv"
        ) from None
    client, _, server = proc.stdout.strip().partition("|")
    if proc.returncode != 0 or not server:
        detail = last_line(proc.stderr) or "no answer"
        hint = (
            "add your user to the `docker` group or run with sudo"
            if "permission denied" in proc.stderr.lower()
            else "start it (`sudo systemctl start docker`) or use --executor venv"
        )
        raise EngineError(f"the Docker daemon is not running or unreachable ({detail}): {hint}")
    if _version_tuple(server) < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise EngineError(
            f"Docker Engine {server} is too old: {need} or newer is needed; "
            "upgrade it or use --executor venv"
        )
    buildx = (
        subprocess.run([path, "buildx", "version"], capture_output=True, text=True).returncode == 0
    )
    return EngineInfo(binary=path, client_version=client, server_version=server, buildx=buildx)


def _docker(*args: str, timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [check_engine().binary, *args], capture_output=True, text=True, timeout=timeout
    )


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def image_id(ref: str) -> str | None:
    """The image's id (``sha256:...``), or None when it is not present locally."""
    proc = _docker("image", "inspect", "--format", "{{.Id}}", ref)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def image_content_digest(ref: str) -> str | None:
    """sha256 of an image's layer digests and environment: what a FROM of it
    contributes to a build. Unlike the id it survives a re-import of the same
    root filesystem (``docker import`` stamps a new creation time, so a new
    id). None when the image is not present."""
    proc = _docker(
        "image", "inspect", "--format", "{{json .RootFS.Layers}}|{{json .Config.Env}}", ref
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return "sha256:" + hashlib.sha256(proc.stdout.strip().encode()).hexdigest()


def images_with_label(key: str, value: str) -> list[str]:
    """Ids of the local images carrying label ``key=value``."""
    proc = _docker("images", "--quiet", "--no-trunc", "--filter", f"label={key}={value}")
    return sorted(set(proc.stdout.split())) if proc.returncode == 0 else []


def tag_image(source: str, tag: str) -> None:
    proc = _docker("tag", source, tag)
    if proc.returncode != 0:
        raise BuildError(f"docker tag {source} {tag} failed: {last_line(proc.stderr)}")


def image_labels(ref: str) -> dict[str, str]:
    proc = _docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref)
    if proc.returncode != 0:
        return {}
    labels = json.loads(proc.stdout or "null")
    return {str(k): str(v) for k, v in (labels or {}).items()}


def _stream(
    cmd: Sequence[str],
    *,
    log: Log,
    show: Callable[[str], bool],
    env: Mapping[str, str] | None = None,
    stdin: int | None = None,
    feed: Callable[[subprocess.Popen[str]], None] | None = None,
) -> tuple[int, list[str]]:
    """Run ``cmd``, passing the lines ``show`` picks to ``log``; keep the rest."""
    proc = subprocess.Popen(
        list(cmd),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env) if env is not None else None,
    )
    feeder = threading.Thread(target=feed, args=(proc,), daemon=True) if feed else None
    if feeder:
        feeder.start()
    lines: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        lines.append(line)
        if show(line):
            log(line)
    proc.wait()
    if feeder:
        feeder.join()
    return proc.returncode, lines


def _raise_if_disk_full(lines: Iterable[str], what: str) -> None:
    for line in lines:
        if _DISK_FULL.search(line):
            raise DiskFullError(
                f"{what}: no space left on device; free space "
                "(`docker system prune`, remove old results) and run again"
            )


def _build_progress(line: str) -> bool:
    """Which build lines a user wants to see: steps, what pip did, errors."""
    return line.startswith(("Step ", "Successfully", "ERROR", "error:")) or (
        "Successfully installed" in line
    )


def build_image(
    context: Path,
    *,
    tag: str,
    dockerfile: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    log: Log = _quiet,
) -> str:
    """Build ``context`` with the classic builder and return the image id.

    The classic builder works on every engine we support; BuildKit may be
    absent (and would try to pull its frontend image: there is no registry).
    """
    cmd = [check_engine().binary, "build", "--rm", "--force-rm", "-t", tag]
    if dockerfile is not None:
        cmd += ["-f", str(dockerfile)]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        cmd += ["--label", f"{key}={value}"]
    cmd.append(str(context))
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    code, lines = _stream(cmd, log=log, show=_build_progress, env=env)
    if code != 0:
        _raise_if_disk_full(lines, f"building {tag}")
        errors = [line.strip() for line in lines[-60:] if "error" in line.lower()][-3:]
        detail = "; ".join(errors) or last_line("\n".join(lines))
        raise BuildError(f"building {tag} failed: {detail}")
    found = image_id(tag)
    if found is None:
        raise BuildError(f"building {tag} reported success but the image is missing")
    return found


def import_image(
    tarball_writer: Callable[[subprocess.Popen[str]], None] | Path,
    *,
    tag: str,
    changes: Sequence[str] = (),
    log: Log = _quiet,
) -> str:
    """``docker import`` a root filesystem tarball (a path, or a function that
    writes the tar stream to the process's stdin) as ``tag``."""
    cmd = [check_engine().binary, "import"]
    for change in changes:
        cmd += ["--change", change]
    if isinstance(tarball_writer, Path):
        cmd += [str(tarball_writer), tag]
        code, lines = _stream(cmd, log=log, show=lambda _: False)
    else:
        cmd += ["-", tag]
        code, lines = _stream(
            cmd, log=log, show=lambda _: False, stdin=subprocess.PIPE, feed=tarball_writer
        )
    if code != 0:
        _raise_if_disk_full(lines, f"importing {tag}")
        raise BuildError(f"docker import of {tag} failed: {last_line(chr(10).join(lines))}")
    found = image_id(tag)
    if found is None:
        raise BuildError(f"docker import of {tag} reported success but the image is missing")
    return found


# --- running hardened containers -------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Mount:
    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything that defines one hardened ``docker run``."""

    image: str
    command: tuple[str, ...]
    name: str
    mounts: tuple[Mount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    memory: str = "4g"
    # a fork-bomb guard with room for framework thread pools on big machines
    pids_limit: int = 4096
    gpu: bool = False
    user: str = f"{CONTAINER_UID}:{CONTAINER_UID}"
    # exec: some frameworks compile and load code from /tmp (torch inductor,
    # Triton); the root stays read-only and the network is off regardless.
    tmpfs: str = "/tmp:rw,exec,nosuid,nodev,size=2g"
    workdir: str = "/tmp"
    network: str = "none"
    shm_size: str = "256m"


@dataclass(frozen=True, kw_only=True)
class RunResult:
    returncode: int | None
    seconds: float
    output: str
    timed_out: bool
    reason: str | None


def run_command(spec: RunSpec, binary: str = "docker") -> list[str]:
    """The ``docker run`` command line for ``spec`` (pure: no engine needed)."""
    cmd = [
        binary, "run", "--rm", "--name", spec.name,
        "--network", spec.network,
        "--read-only",
        "--tmpfs", spec.tmpfs,
        "--user", spec.user,
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        # swap equal to memory: no swap, so an over-budget cell is killed
        # (exit 137) instead of crawling.
        "--memory", spec.memory, "--memory-swap", spec.memory,
        "--pids-limit", str(spec.pids_limit),
        "--shm-size", spec.shm_size,
        # a tiny init as PID 1 reaps zombies and forwards signals.
        "--init",
        "--workdir", spec.workdir,
    ]  # fmt: skip
    if spec.gpu:
        cmd += ["--gpus", "all"]
    for mount in spec.mounts:
        mode = "ro" if mount.read_only else "rw"
        # Docker reads a relative source as a named volume, never a path.
        cmd += ["--volume", f"{Path(mount.source).absolute()}:{mount.target}:{mode}"]
    for key, value in sorted(spec.env.items()):
        cmd += ["--env", f"{key}={value}"]
    cmd.append(spec.image)
    cmd.extend(spec.command)
    return cmd


def failure_reason(
    returncode: int | None, *, timed_out: bool, timeout: float, output: str = ""
) -> str | None:
    """One line saying why a container run failed; None when it did not.

    137 is SIGKILL: we only send it on timeout (and then say so), so any
    other 137 comes from the kernel's OOM killer at the memory limit.
    """
    if timed_out:
        return f"timeout after {timeout:g} s"
    if returncode == 0:
        return None
    if returncode is None:
        return "no exit status"
    if returncode == 137:
        return "out of memory (exit 137)"
    if returncode in _DOCKER_RUN_ERRORS:
        # The daemon's own message comes first; the last line is only
        # "Run 'docker run --help' for more information".
        daemon = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("docker:")]
        detail = daemon[0].removeprefix("docker:").strip()[:300] if daemon else last_line(output)
        if "could not select device driver" in output:
            detail = "the engine has no GPU support: install the NVIDIA Container Toolkit"
        return f"exit {returncode}: {_DOCKER_RUN_ERRORS[returncode]}: {detail}"
    if returncode > 128:
        return f"killed by signal {returncode - 128} (exit {returncode})"
    detail = _last_error_line(output)
    return f"exit {returncode}: {detail}" if detail else f"exit {returncode}"


def _last_error_line(output: str) -> str:
    """The last line that looks like a Python exception, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else ""


def remove_container(name: str) -> None:
    """Kill and remove a container by name; silent when it is already gone."""
    _docker("rm", "--force", name, timeout=60)


def run_container(spec: RunSpec, *, timeout: float) -> RunResult:
    """Run ``spec`` and wait, enforcing ``timeout`` from the host.

    The host kills the container by name on expiry (``docker run``'s client
    going away would leave it running). Ctrl-C kills it too, then re-raises.
    Raises DiskFullError when the engine or the run says the disk is full.
    """
    cmd = run_command(spec, check_engine().binary)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        remove_container(spec.name)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    except BaseException:
        remove_container(spec.name)
        proc.kill()
        proc.wait()
        raise
    seconds = time.monotonic() - start
    output = out.decode("utf-8", errors="replace")
    if proc.returncode != 0 and not timed_out:
        _raise_if_disk_full(output.splitlines()[-50:], f"cell container {spec.name}")
    return RunResult(
        returncode=None if timed_out else proc.returncode,
        seconds=seconds,
        output=output,
        timed_out=timed_out,
        reason=failure_reason(proc.returncode, timed_out=timed_out, timeout=timeout, output=output),
    )
