"""The one place that drives the container engine's CLI (Docker or Podman).

Everything container-shaped goes through here as :func:`matrix.command.run`
calls, so the rest of the code deals in plain data (:class:`RunSpec`,
:class:`RunResult`) and the pure parts (command lines) are testable without
an engine. User-caused problems (no engine, daemon down, too old, disk full)
become one-line :class:`~matrix.errors.MatrixError` subclasses.

The engine is ``docker`` unless ``--engine``/``$KRM_ENGINE`` says ``podman``
(``$KRM_DOCKER`` names another docker-compatible binary, as cibuildwheel's
``CIBW_CONTAINER_ENGINE`` does). Rootless engines map container users onto
the host user's subordinate ids; :func:`container_user` picks the user a
cell runs as so that it can write its results mount either way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from matrix import command
from matrix.errors import BuildError, DiskFullError, EngineError, SpecError

__all__ = [
    "CONTAINER_UID",
    "ENGINES",
    "MIN_SERVER_VERSION",
    "EngineInfo",
    "Mount",
    "RunResult",
    "RunSpec",
    "build_image",
    "check_engine",
    "commit_container",
    "container_user",
    "containers_with_label",
    "engine_binary",
    "image_content_digest",
    "image_id",
    "image_labels",
    "image_size",
    "images_with_label",
    "import_image",
    "prune_images",
    "pull_image",
    "remove_container",
    "run_command",
    "run_container",
    "select_engine",
    "tag_image",
]

ENGINES = ("docker", "podman")
#: The oldest servers we test against; older ones lack ``--pids-limit`` and
#: ``--security-opt no-new-privileges`` semantics we rely on.
MIN_SERVER_VERSION = (20, 10)
MIN_PODMAN_VERSION = (4, 0)

#: The unprivileged user the image creates (docker/Dockerfile).
CONTAINER_UID = 10001

#: How long the CLI may take for a query (inspect, tag, rm) and for a pull.
QUERY_TIMEOUT = 120
PULL_TIMEOUT = 1800
#: A build or import may take long, but never stall this long without a line.
BUILD_TIMEOUT = 3 * 3600
BUILD_IDLE_TIMEOUT = 1800

_DISK_FULL = re.compile(r"no space left on device", re.IGNORECASE)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    binary: str
    kind: str  # docker | podman
    client_version: str
    server_version: str
    rootless: bool = False
    buildx: bool = False
    #: the architecture containers run as: x86_64 or aarch64
    arch: str = "x86_64"


_SELECTED: list[str] = []


def select_engine(name: str | None) -> None:
    """Use ``name`` (docker or podman) for the rest of this process (--engine)."""
    if name is not None and name not in ENGINES:
        raise SpecError(f"--engine {name!r}: expected one of {', '.join(ENGINES)}")
    _SELECTED[:] = [name] if name else []
    check_engine.cache_clear()


def engine_binary() -> tuple[str, str]:
    """(binary, kind): --engine, else ``$KRM_ENGINE``, else ``$KRM_DOCKER`` or docker."""
    kind = (_SELECTED[0] if _SELECTED else None) or os.environ.get("KRM_ENGINE") or "docker"
    if kind not in ENGINES:
        raise SpecError(f"KRM_ENGINE={kind!r}: expected one of {', '.join(ENGINES)}")
    if kind == "docker":
        return os.environ.get("KRM_DOCKER", "docker"), kind
    return os.environ.get("KRM_PODMAN", "podman"), kind


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
    binary, kind = engine_binary()
    path = shutil.which(binary)
    if path is None:
        install = (
            "install Docker Engine (https://docs.docker.com/engine/install/)"
            if kind == "docker"
            else "install Podman (apt-get install podman)"
        )
        raise EngineError(f"`{binary}` is not on PATH: {install} or use --executor venv")
    fmt = (
        "{{.Client.Version}}|{{.Server.Version}}"
        if kind == "docker"
        else "{{.Client.Version}}|{{.Client.Version}}"
    )
    try:
        proc = command.run([path, "version", "--format", fmt], timeout=30)
    except OSError as exc:
        raise EngineError(f"`{binary}` cannot be started: {exc.strerror or exc}") from None
    if proc.timed_out:
        raise EngineError(
            f"the {kind} engine did not answer within 30 s: check `{binary} info`, "
            "or use --executor venv"
        )
    client, _, server = proc.last_line().partition("|")
    if proc.returncode != 0 or not server:
        detail = proc.last_line() or "no answer"
        hint = (
            "add your user to the `docker` group or run with sudo"
            if "permission denied" in proc.output.lower()
            else "start it (`sudo systemctl start docker`) or use --executor venv"
        )
        raise EngineError(f"the {kind} daemon is not running or unreachable ({detail}): {hint}")
    minimum = MIN_SERVER_VERSION if kind == "docker" else MIN_PODMAN_VERSION
    if _version_tuple(server) < minimum:
        need = ".".join(map(str, minimum))
        raise EngineError(
            f"{kind} {server} is too old: {need} or newer is needed; "
            "upgrade it or use --executor venv"
        )
    return EngineInfo(
        binary=path,
        kind=kind,
        client_version=client,
        server_version=server,
        rootless=_rootless(path, kind),
        arch=_arch(path, kind),
    )


_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def _arch(path: str, kind: str) -> str:
    """The engine's architecture (Docker Desktop on Apple Silicon: aarch64)."""
    fmt = "{{.Architecture}}" if kind == "docker" else "{{.Host.Arch}}"
    proc = command.run([path, "info", "--format", fmt], timeout=QUERY_TIMEOUT)
    found = proc.last_line().lower() if proc.ok else ""
    return _ARCH.get(found, found or "x86_64")


def _rootless(path: str, kind: str) -> bool:
    if kind == "podman":
        proc = command.run(
            [path, "info", "--format", "{{.Host.Security.Rootless}}"], timeout=QUERY_TIMEOUT
        )
        return proc.ok and proc.last_line().lower() == "true"
    proc = command.run(
        [path, "info", "--format", "{{json .SecurityOptions}}"], timeout=QUERY_TIMEOUT
    )
    return proc.ok and "rootless" in proc.output


def container_user(info: EngineInfo, uid: int | None = None, gid: int | None = None) -> str:
    """The ``--user`` of a cell: never root on a rootful engine, and able to
    write the results mount on a rootless one.

    * rootful, host user root: the image's user 10001 (the staging directory
      is handed to it for the run);
    * rootful, another host user: that user's uid:gid (no chown needed);
    * rootless Docker: container root, which *is* the host user outside
      (no capabilities, no new privileges); any other uid would be a
      subordinate id that cannot write the host user's directory;
    * rootless Podman: the host user's uid:gid, kept by ``--userns=keep-id``.
    """
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    if info.rootless:
        return "0:0" if info.kind == "docker" else f"{uid}:{gid}"
    if uid == 0:
        return f"{CONTAINER_UID}:{CONTAINER_UID}"
    return f"{uid}:{gid}"


def _cli(*args: str, timeout: float = QUERY_TIMEOUT, cleanup: bool = False) -> command.Result:
    try:
        return command.run([check_engine().binary, *args], timeout=timeout, cleanup=cleanup)
    except OSError as exc:
        raise EngineError(f"the container engine cannot be started: {exc}") from None


def image_id(ref: str) -> str | None:
    """The image's id (``sha256:...``), or None when it is not present locally."""
    proc = _cli("image", "inspect", "--format", "{{.Id}}", ref)
    if not proc.ok:
        return None
    found = proc.last_line()
    if found and not found.startswith("sha256:"):
        found = "sha256:" + found  # podman prints the bare digest
    return found or None


def image_content_digest(ref: str) -> str | None:
    """sha256 of an image's layer digests and environment: what a FROM of it
    contributes to a build. Unlike the id it survives a re-import of the same
    root filesystem (``docker import`` stamps a new creation time, so a new
    id). None when the image is not present."""
    proc = _cli("image", "inspect", "--format", "{{json .RootFS.Layers}}|{{json .Config.Env}}", ref)
    text = proc.last_line()
    if not proc.ok or not text:
        return None
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def images_with_label(key: str, value: str) -> list[str]:
    """Ids of the local images carrying label ``key=value``."""
    proc = _cli("images", "--quiet", "--no-trunc", "--filter", f"label={key}={value}")
    return sorted(set(proc.output.split())) if proc.ok else []


def tag_image(source: str, tag: str) -> None:
    proc = _cli("tag", source, tag)
    if not proc.ok:
        raise BuildError(f"tagging {source[:19]} as {tag} failed: {proc.last_line()}")


def image_labels(ref: str) -> dict[str, str]:
    proc = _cli("image", "inspect", "--format", "{{json .Config.Labels}}", ref)
    if not proc.ok:
        return {}
    try:
        labels = json.loads(proc.last_line() or "null")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in (labels or {}).items()}


def image_size(ref: str) -> int | None:
    proc = _cli("image", "inspect", "--format", "{{.Size}}", ref)
    text = proc.last_line()
    return int(text) if proc.ok and text.isdigit() else None


def pull_image(ref: str, *, log: Log = _quiet) -> str | None:
    """Pull ``ref``; None when it came, else the engine's one-line reason."""
    return _transfer("pull", ref, log)


def push_image(ref: str, *, log: Log = _quiet) -> str | None:
    """Push ``ref``; None when it went, else the engine's one-line reason."""
    return _transfer("push", ref, log)


def _transfer(verb: str, ref: str, log: Log) -> str | None:
    doing = "pushing" if verb == "push" else "pulling"
    log(f"{doing} {ref}")
    proc = command.run([check_engine().binary, verb, ref], timeout=PULL_TIMEOUT, idle_timeout=600)
    if proc.ok:
        return None
    if proc.timed_out or proc.stalled:
        return f"the {verb} stalled or took longer than {PULL_TIMEOUT} s"
    _raise_if_disk_full(proc.lines, f"{doing} {ref}")
    return proc.last_line() or f"exit {proc.returncode}"


def remove_image(ref: str) -> None:
    """Untag (and, when nothing else holds it, remove) an image; silent when absent."""
    _cli("image", "rm", ref)


def prune_images(label: str) -> None:
    """Remove dangling images carrying ``label`` (a build's leftovers)."""
    _cli("image", "prune", "--force", "--filter", f"label={label}")


def _raise_if_disk_full(lines: Iterable[str], what: str) -> None:
    for line in lines:
        if _DISK_FULL.search(line):
            raise DiskFullError(
                f"{what}: no space left on device; free space "
                "(`docker system prune`, remove old results) and run again"
            )


def _build_progress(line: str) -> bool:
    """Which build lines a user wants to see: steps, what was installed, errors."""
    return line.startswith(("Step ", "STEP ", "Successfully", "ERROR", "error:")) or (
        "Successfully installed" in line or line.startswith("Installed ")
    )


def build_image(
    context: Path,
    *,
    tag: str,
    dockerfile: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    network: str | None = None,
    log: Log = _quiet,
) -> str:
    """Build ``context`` with the classic builder and return the image id.

    The classic builder works on every engine we support; BuildKit may be
    absent (and would try to pull its frontend image: there is no registry).
    """
    cmd = [check_engine().binary, "build", "--rm", "--force-rm", "-t", tag]
    if dockerfile is not None:
        cmd += ["-f", str(dockerfile)]
    if network is not None:
        cmd += ["--network", network]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        cmd += ["--label", f"{key}={value}"]
    cmd.append(str(context))
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    proc = command.run(
        cmd,
        timeout=BUILD_TIMEOUT,
        idle_timeout=BUILD_IDLE_TIMEOUT,
        env=env,
        on_line=lambda line: log(line) if _build_progress(line) else None,
    )
    if proc.stopped:
        raise BuildError(f"building {tag}: stopped")
    if proc.timed_out or proc.stalled:
        raise BuildError(f"building {tag} stalled (no output for {BUILD_IDLE_TIMEOUT} s) or "
                         f"took longer than {BUILD_TIMEOUT} s")  # fmt: skip
    if not proc.ok:
        _raise_if_disk_full(proc.lines, f"building {tag}")
        errors = [line.strip() for line in proc.lines[-60:] if "error" in line.lower()][-3:]
        detail = "; ".join(errors) or proc.last_line()
        raise BuildError(f"building {tag} failed: {detail}")
    found = image_id(tag)
    if found is None:
        raise BuildError(f"building {tag} reported success but the image is missing")
    return found


def import_image(
    source: Callable[[IO[bytes]], None] | Path,
    *,
    tag: str,
    changes: Sequence[str] = (),
) -> str:
    """``docker import`` a root filesystem tarball (a path, or a function that
    writes the tar stream to the command's stdin) as ``tag``."""
    cmd = [check_engine().binary, "import"]
    for change in changes:
        cmd += ["--change", change]
    feed = None
    if isinstance(source, Path):
        cmd += [str(source), tag]
    else:
        cmd += ["-", tag]
        feed = source
    proc = command.run(cmd, timeout=BUILD_TIMEOUT, idle_timeout=BUILD_IDLE_TIMEOUT, feed=feed)
    if not proc.ok:
        _raise_if_disk_full(proc.lines, f"importing {tag}")
        raise BuildError(f"importing {tag} failed: {proc.last_line() or 'stopped'}")
    found = image_id(tag)
    if found is None:
        raise BuildError(f"importing {tag} reported success but the image is missing")
    return found


def commit_container(name: str, *, tag: str, changes: Sequence[str] = ()) -> str:
    """``docker commit`` a stopped container as ``tag``; return the image id."""
    cmd = [check_engine().binary, "commit"]
    for change in changes:
        cmd += ["--change", change]
    cmd += [name, tag]
    proc = command.run(cmd, timeout=BUILD_TIMEOUT, idle_timeout=BUILD_IDLE_TIMEOUT)
    if not proc.ok:
        _raise_if_disk_full(proc.lines, f"committing {tag}")
        raise BuildError(f"committing {tag} failed: {proc.last_line() or 'stopped'}")
    found = image_id(tag)
    if found is None:
        raise BuildError(f"committing {tag} reported success but the image is missing")
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
    labels: Mapping[str, str] = field(default_factory=dict)
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
    read_only: bool = True
    remove: bool = True


def run_command(spec: RunSpec, binary: str = "docker", *, kind: str = "docker",
                rootless: bool = False) -> list[str]:  # fmt: skip
    """The ``run`` command line for ``spec`` (pure: no engine needed)."""
    cmd = [binary, "run"]
    if spec.remove:
        cmd.append("--rm")
    cmd += ["--name", spec.name, "--network", spec.network]
    if spec.read_only:
        cmd.append("--read-only")
    cmd += [
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
    if kind == "podman" and rootless:
        cmd += ["--userns", "keep-id"]
    if spec.gpu:
        cmd += ["--device", "nvidia.com/gpu=all"] if kind == "podman" else ["--gpus", "all"]
    for mount in spec.mounts:
        mode = "ro" if mount.read_only else "rw"
        # Docker reads a relative source as a named volume, never a path.
        cmd += ["--volume", f"{Path(mount.source).absolute()}:{mount.target}:{mode}"]
    for key, value in sorted(spec.labels.items()):
        cmd += ["--label", f"{key}={value}"]
    for key, value in sorted(spec.env.items()):
        cmd += ["--env", f"{key}={value}"]
    cmd.append(spec.image)
    cmd.extend(spec.command)
    return cmd


@dataclass(frozen=True, kw_only=True)
class RunResult:
    returncode: int | None  # None: killed by the host (timeout or stop)
    seconds: float
    output: str
    timed_out: bool
    stopped: bool = False


def remove_container(name: str) -> None:
    """Kill and remove a container by name; silent when it is already gone.
    Runs during a stop too: that is when it matters most."""
    _cli("rm", "--force", name, cleanup=True)


def containers_with_label(key: str, value: str) -> list[str]:
    """Names of the containers (running or not) carrying label ``key=value``."""
    proc = _cli("ps", "--all", "--filter", f"label={key}={value}", "--format", "{{.Names}}")
    return [n for n in proc.output.split() if n] if proc.ok else []


def run_container(spec: RunSpec, *, timeout: float) -> RunResult:
    """Run ``spec`` and wait, enforcing ``timeout`` from the host.

    The host removes the container by name on expiry or on a stop
    (``docker run``'s client going away would leave it running). Raises
    DiskFullError when the engine or the run says the disk is full.
    """
    info = check_engine()
    cmd = run_command(spec, info.binary, kind=info.kind, rootless=info.rootless)
    proc = command.run(cmd, timeout=timeout, on_kill=lambda: remove_container(spec.name))
    if proc.timed_out or proc.stopped:
        remove_container(spec.name)  # the client may have gone before the container
    elif proc.returncode != 0:
        _raise_if_disk_full(proc.lines[-50:], f"cell container {spec.name}")
    return RunResult(
        returncode=proc.returncode,
        seconds=proc.seconds,
        output=proc.output,
        timed_out=proc.timed_out,
        stopped=proc.stopped,
    )
