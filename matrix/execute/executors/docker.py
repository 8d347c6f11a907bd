"""The docker executor: each environment is an image, each run a hardened,
throw-away container.

Inside the container (see :func:`cell_spec`):
  /opt/krm/scenarios  the repository's scenarios/ package, read-only
                      (PYTHONPATH=/opt/krm): editing a scenario never
                      rebuilds an image
  /out                a fresh staging directory next to ``out_dir``, the only
                      writable host path; the runner writes ``/out/<name>``
                      and the result is renamed to ``out_dir`` afterwards
  /opt/krm/in/<name>  each input of the run (the user's model, other cells'
                      stage-one files), read-only

Who owns /out (see :func:`matrix.environments.engine.container_user`). Run
as a non-root host user, the container runs as that same uid:gid: still
unprivileged inside, and the artifact belongs to the user with no chown
needed. Run as root on the host (CI, this machine), the container runs as
the image's user 10001, the staging directory is handed to 10001 for the run
and the artifact handed back to root after it. On a rootless engine the
container user is the one that maps onto the host user. No way needs a
world-writable directory.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from matrix import command
from matrix.console import build_log
from matrix.environments import engine
from matrix.environments.images import ImageInfo, ensure_image
from matrix.execute.executors.base import (
    CellRun,
    Environment,
    Prepared,
    ReadOnlyInput,
    failure_reason,
)
from matrix.paths import SCENARIOS

__all__ = [
    "CONTAINER_INPUTS",
    "CONTAINER_OUT",
    "CONTAINER_SCENARIOS",
    "DockerExecutor",
    "cell_spec",
    "input_path",
    "make_staging",
]

CONTAINER_SCENARIOS = "/opt/krm/scenarios"
CONTAINER_OUT = "/out"
CONTAINER_INPUTS = "/opt/krm/in"
#: The file in a run's staging directory that names its container.
CONTAINER_FILE = "container.name"
_TAIL_LINES = 40


def cell_spec(
    *,
    image: str,
    name: str,
    runner_args: list[str],
    out_name: str,
    staging: Path,
    scenarios: Path,
    env: Mapping[str, str],
    memory: str,
    gpu: bool,
    user: str,
    inputs: Sequence[ReadOnlyInput] = (),
) -> engine.RunSpec:
    """The hardened container for one runner invocation (pure)."""
    return engine.RunSpec(
        image=image,
        name=name,
        command=("python", "-m", "scenarios", "--out", f"{CONTAINER_OUT}/{out_name}", *runner_args),
        mounts=(
            engine.Mount(source=scenarios, target=CONTAINER_SCENARIOS, read_only=True),
            engine.Mount(source=staging, target=CONTAINER_OUT, read_only=False),
            *(
                engine.Mount(source=item.path, target=input_path(item), read_only=True)
                for item in inputs
            ),
        ),
        env=dict(env),
        memory=memory,
        gpu=gpu,
        user=user,
    )


def input_path(item: ReadOnlyInput) -> str:
    """Where a container sees an input."""
    return f"{CONTAINER_INPUTS}/{item.name}"


def _ids(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def make_staging(out_dir: Path, user: str, *, rootless: bool = False) -> Path:
    """A fresh directory beside ``out_dir``, writable by the cell's user only.

    On a rootless engine the container user already is the host user."""
    staging = out_dir.parent / f".docker-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o700)
    if not rootless and (os.getuid(), os.getgid()) != _ids(user):
        os.chown(staging, *_ids(user))
    return staging


def _container_name(env: Environment) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", env.name)
    return f"krm-{safe}-{uuid.uuid4().hex[:10]}"


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, entry), uid, gid, follow_symlinks=False)


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_TAIL_LINES:])


class DockerExecutor:
    """Executor protocol (matrix/executors/base.py) over Docker images."""

    name = "docker"

    def __init__(
        self,
        *,
        base: str | None = None,
        mode: str = "wheelhouse",
        scenarios: Path | None = None,
        log: Callable[[str], None] = build_log,
    ) -> None:
        self._base = base
        self._mode = mode
        self._scenarios = scenarios or SCENARIOS
        self._log = log
        self._images: dict[str, ImageInfo] = {}

    def prepare(self, env: Environment) -> Prepared:
        """Build or find the environment's image; its id is the environment id."""
        info = ensure_image(env.stack, env.target, base=self._base, mode=self._mode, log=self._log)
        self._images[info.image_id] = info
        return Prepared(id=info.image_id, built=info.built)

    def image_info(self, environment_id: str) -> ImageInfo | None:
        """What :meth:`prepare` learned about an image (tag, CUDA versions...)."""
        return self._images.get(environment_id)

    def input_path(self, item: ReadOnlyInput) -> str:
        return input_path(item)

    def terminate_all(self) -> None:
        """Remove every container still running and stop any build (a stop)."""
        command.terminate_all()

    def reap(self, staging: Path) -> None:
        """Remove the container a killed scheduler left for this staging directory."""
        try:
            name = (staging / CONTAINER_FILE).read_text().strip()
        except OSError:
            return
        if re.fullmatch(r"krm-[A-Za-z0-9_.-]+", name):
            engine.remove_container(name)

    def run_cell(
        self,
        env: Environment,
        environment_id: str,
        runner_args: list[str],
        out_dir: Path,
        *,
        timeout: float,
        memory: str,
        gpu: bool,
        extra_env: dict[str, str],
        inputs: Sequence[ReadOnlyInput] = (),
    ) -> CellRun:
        info = engine.check_engine()
        host_uid, host_gid = os.getuid(), os.getgid()
        user = engine.container_user(info, host_uid, host_gid)
        staging = make_staging(out_dir, user, rootless=info.rootless)
        name = _container_name(env)
        # Named in the run's staging directory: a later scheduler removes it
        # if this one is killed before the container ends.
        (out_dir.parent / CONTAINER_FILE).write_text(name)
        spec = cell_spec(
            image=environment_id,
            name=name,
            runner_args=runner_args,
            out_name=out_dir.name,
            staging=staging,
            scenarios=self._scenarios,
            env={**env.stack.env, **extra_env},
            memory=memory,
            gpu=gpu,
            user=user,
            inputs=inputs,
        )  # fmt: skip
        try:
            result = engine.run_container(spec, timeout=timeout)
        finally:
            reason_move = self._collect(staging, out_dir, host_uid, host_gid, user, info.rootless)
        reason = failure_reason(
            result.returncode,
            timed_out=result.timed_out,
            timeout=timeout,
            output=result.output,
            container=True,
            stopped=result.stopped,
        )
        if reason is None and reason_move:
            reason = reason_move
        if reason is None and not (out_dir / "manifest.json").is_file():
            reason = "the runner exited 0 but left no manifest.json"
        return CellRun(
            returncode=result.returncode,
            seconds=result.seconds,
            reason=reason,
            output_tail=_tail(result.output),
            extra={"executor": "docker", "image": environment_id, "container": name},
        )

    @staticmethod
    def _collect(
        staging: Path, out_dir: Path, uid: int, gid: int, user: str, rootless: bool
    ) -> str | None:
        """Hand what the runner wrote back to the host user at ``out_dir``,
        even after a failure (its log.txt says why); None when all went well."""
        produced = staging / out_dir.name
        try:
            if produced.exists():
                if not rootless and (uid, gid) != _ids(user):
                    _chown_tree(produced, uid, gid)
                produced.rename(out_dir)
            return None
        except OSError as exc:
            return f"could not move the artifact to {out_dir}: {exc.strerror or exc}"
        finally:
            shutil.rmtree(staging, ignore_errors=True)
