"""One Docker image per environment (stack x target), tagged by content.

The tag is ``krm-env:<stack>.<target>-<hash>`` where the hash covers the
base image's content (its layer digests and environment, which unlike its
id survive a re-import of the same root filesystem), docker/Dockerfile, the
lock file and the build mode: the inputs that decide what is installed. An
image whose tag exists is never rebuilt, so the check costs a few
``docker image inspect`` calls (~0.1 s).

Air-gapped mode (the default, and the only one that works on a machine
without a registry or container network): the host fills one shared
wheelhouse with ``pip download`` of exactly the locked wheels, and each
build context gets hardlinks to the wheels its lock names, so contexts cost
no disk. Index mode lets pip inside the build fetch from PyPI instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from matrix import command
from matrix.environments import base_image, engine
from matrix.errors import BuildError, DiskFullError, DownloadStalled
from matrix.paths import DOCKERFILE, cache_root
from matrix.plan.stacks import Stack

__all__ = [
    "DOCKERFILE",
    "MODES",
    "ImageInfo",
    "ImagePlan",
    "LockedWheel",
    "content_hash",
    "cuda_versions",
    "default_base",
    "ensure_image",
    "fill_wheelhouse",
    "image_tag",
    "parse_lock",
    "plan_image",
    "planned_image",
]

MODES = ("wheelhouse", "index")
IMAGE_REPO = "krm-env"
#: Bump when the build procedure changes in a way the hashed inputs miss.
_RECIPE_VERSION = "1"
#: The wheels the images can load: CPython 3.11 on glibc x86_64. Debian
#: bookworm has glibc 2.36; pip only takes the tags it is given, so list them.
_PLATFORMS = (
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 37)),
)

#: A wheel download may take long (TensorFlow, torch's CUDA wheels), but it
#: never goes this long without printing a line.
DOWNLOAD_TIMEOUT = 2 * 3600
DOWNLOAD_IDLE_TIMEOUT = 900

Log = Callable[[str], None]


# --- pure parts ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LockedWheel:
    name: str  # normalized: lower case, "-" for "_" and "."
    version: str
    hashes: frozenset[str]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> list[LockedWheel]:
    """The ``name==version --hash=sha256:...`` entries of a hashed lock."""
    joined = re.sub(r"\\\s*\n", " ", text)
    entries: list[LockedWheel] = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        spec = line.split()[0].split(";")[0]
        name, sep, version = spec.partition("==")
        if not sep:
            raise BuildError(f"lock entry {spec!r} is not pinned with ==")
        name = name.split("[")[0]
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        entries.append(LockedWheel(name=_normalize(name), version=version, hashes=hashes))
    return entries


def cuda_versions(lock_text: str) -> dict[str, str]:
    """The CUDA pieces a lock installs as wheels, keyed by a short name.

    ``nvidia-cudnn-cu12==8.9.4.25`` -> ``{"cudnn": "8.9.4.25"}``; CUDA 13
    wheels drop the ``-cu12`` suffix on some names, hence the optional group.
    """
    found: dict[str, str] = {}
    for wheel in parse_lock(lock_text):
        match = re.fullmatch(r"nvidia-(.+?)(?:-cu\d+)?", wheel.name)
        if not match:
            continue
        short = {"cuda-runtime": "cuda", "cudnn": "cudnn", "nccl": "nccl"}.get(match.group(1))
        if short:
            found[short] = wheel.version
    return found


def content_hash(*, base_digest: str, dockerfile: bytes, lock: bytes, mode: str) -> str:
    """sha256 over everything that decides what an image contains."""
    if mode not in MODES:
        raise BuildError(f"unknown image build mode {mode!r}: use one of {', '.join(MODES)}")
    digest = hashlib.sha256()
    for part in (
        _RECIPE_VERSION.encode(),
        base_digest.encode(),
        hashlib.sha256(dockerfile).digest(),
        hashlib.sha256(lock).digest(),
        mode.encode(),
    ):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def image_tag(stack: str, target: str, digest: str) -> str:
    return f"{IMAGE_REPO}:{stack}.{target}-{digest[:12]}"


# --- plan and build --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ImagePlan:
    stack: str
    target: str
    base: str
    base_digest: str
    mode: str
    content_hash: str
    tag: str
    image_id: str | None  # None: it has to be built


@dataclass(frozen=True, kw_only=True)
class ImageInfo:
    tag: str
    image_id: str
    stack: str
    target: str
    base: str
    base_digest: str
    mode: str
    content_hash: str
    lock_sha256: str
    cuda: dict[str, str] = field(default_factory=dict)  # cuda, cudnn, nccl versions
    built: bool = False  # False when an existing image was reused
    seconds: float = 0.0
    size_bytes: int | None = None


def default_base() -> str:
    """``$KRM_BASE_IMAGE`` or the locally bootstrapped Debian base."""
    return os.environ.get("KRM_BASE_IMAGE", base_image.BASE_TAG)


def _base_digest(base: str, log: Log) -> str:
    found = engine.image_content_digest(base)
    if found:
        return found
    if base == base_image.BASE_TAG:
        base_image.ensure_base_image(log=log)
        found = engine.image_content_digest(base)
        if found:
            return found
        raise BuildError(f"the base image {base} vanished right after it was built")
    reason = engine.pull_image(base, log=lambda m: log(f"image: {m}"))
    found = engine.image_content_digest(base)
    if reason is not None or not found:
        raise BuildError(
            f"base image {base} is not present and cannot be pulled "
            f"({reason or 'no registry'}): run `nox -s base-image` "
            f"for the local {base_image.BASE_TAG}, or load {base} with `docker load`"
        )
    return found


def plan_image(
    stack: Stack,
    target: str,
    *,
    base: str | None = None,
    mode: str = "wheelhouse",
    log: Log = print,
) -> ImagePlan:
    """Tag and presence of the stack's image; builds nothing but the base."""
    base = base or default_base()
    stack.lock_hash(target)  # a missing lock is a SpecError with the fix
    base_digest = _base_digest(base, log)
    digest, tag = _identity(stack, target, base_digest, mode)
    return ImagePlan(
        stack=stack.name, target=target, base=base, base_digest=base_digest, mode=mode,
        content_hash=digest, tag=tag, image_id=engine.image_id(tag),
    )  # fmt: skip


def _identity(stack: Stack, target: str, base_digest: str, mode: str) -> tuple[str, str]:
    """(content hash, tag): everything that defines the image, hashed."""
    digest = content_hash(
        base_digest=base_digest,
        dockerfile=DOCKERFILE.read_bytes(),
        lock=stack.lock_path(target).read_bytes(),
        mode=mode,
    )
    return digest, image_tag(stack.name, target, digest)


def planned_image(
    stack: Stack, target: str, *, base: str | None = None, mode: str = "wheelhouse"
) -> str:
    """One line for ``--dry-run``: the tag and whether it must be built.

    Builds nothing, not even the base (plan_image would bootstrap it).
    """
    base = base or default_base()
    base_digest = engine.image_content_digest(base)
    if base_digest is None:
        return f"to build (after the base {base}, which is missing)"
    stack.lock_hash(target)
    _, tag = _identity(stack, target, base_digest, mode)
    return f"image {tag} ready" if engine.image_id(tag) else f"image {tag} to build"


def _info(plan: ImagePlan, image: str, lock_text: str, *, built: bool, seconds: float) -> ImageInfo:
    return ImageInfo(
        tag=plan.tag, image_id=image, stack=plan.stack, target=plan.target, base=plan.base,
        base_digest=plan.base_digest, mode=plan.mode, content_hash=plan.content_hash,
        lock_sha256=hashlib.sha256(lock_text.encode()).hexdigest(),
        cuda=cuda_versions(lock_text), built=built, seconds=seconds,
        size_bytes=engine.image_size(image),
    )  # fmt: skip


@contextmanager
def _build_lock() -> Iterator[None]:
    """One image build at a time per cache: two matrix runs never build the
    same tag twice, and the stage pruning below cannot hit a live build."""
    path = cache_root() / "build" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_image(
    stack: Stack,
    target: str = "cpu",
    *,
    base: str | None = None,
    mode: str = "wheelhouse",
    log: Log = print,
) -> ImageInfo:
    """Return the stack's image, building it only when its tag is absent."""
    start = time.monotonic()
    plan = plan_image(stack, target, base=base, mode=mode, log=log)
    lock_text = stack.lock_path(target).read_bytes().decode()
    found = _existing(plan, log)
    if found:
        return _info(plan, found, lock_text, built=False, seconds=time.monotonic() - start)
    with _build_lock():
        found = _existing(plan, log)  # another process may have built it meanwhile
        if found:
            return _info(plan, found, lock_text, built=False, seconds=time.monotonic() - start)
        log(f"image: building {plan.tag} from {plan.base} ({mode} mode)")
        context = cache_root() / "build" / plan.tag.replace(":", "_")
        shutil.rmtree(context, ignore_errors=True)
        try:
            (context / "wheels").mkdir(parents=True)
            shutil.copyfile(DOCKERFILE, context / "Dockerfile")
            shutil.copyfile(stack.lock_path(target), context / "lock.txt")
            if mode == "wheelhouse":
                for wheel in fill_wheelhouse(lock_text, log=log):
                    _link(wheel, context / "wheels" / wheel.name)
            else:
                (context / "wheels" / ".keep").touch()
            cuda = cuda_versions(lock_text)
            # Labels travel as build args into the Dockerfile's one LABEL step.
            build_args = {
                "BASE": plan.base,
                "MODE": mode,
                "KRM_STACK": stack.name,
                "KRM_TARGET": target,
                "KRM_CONTENT_HASH": plan.content_hash,
                "KRM_LOCK_SHA256": hashlib.sha256(lock_text.encode()).hexdigest(),
                "KRM_BASE": plan.base,
                "KRM_BASE_DIGEST": plan.base_digest,
                "KRM_CUDA": cuda.get("cuda", ""),
                "KRM_CUDNN": cuda.get("cudnn", ""),
                "KRM_NCCL": cuda.get("nccl", ""),
            }
            image = engine.build_image(
                context,
                tag=plan.tag,
                build_args=build_args,
                log=lambda line: log(f"  {time.monotonic() - start:5.0f}s {line[:160]}"),
            )
        finally:
            shutil.rmtree(context, ignore_errors=True)
            _prune_install_stage(plan.content_hash)
    seconds = time.monotonic() - start
    info = _info(plan, image, lock_text, built=True, seconds=seconds)
    size = f", {info.size_bytes / 1e9:.2f} GB" if info.size_bytes else ""
    log(f"image: {plan.tag} built in {seconds:.0f} s{size}")
    return info


def _existing(plan: ImagePlan, log: Log) -> str | None:
    """The image for ``plan`` if one is there: under its tag, or under another
    tag with the same content (torch's cpu and cuda locks are one lock), which
    is then tagged too instead of built a second time."""
    found = engine.image_id(plan.tag)
    if found:
        return found
    twins = engine.images_with_label("org.krm.content-hash", plan.content_hash)
    if not twins:
        return None
    engine.tag_image(twins[0], plan.tag)
    log(f"image: {plan.tag} has the content of {twins[0][:19]}: tagged, not built")
    return twins[0]


def _prune_install_stage(content_hash: str) -> None:
    """Drop this build's dangling install stage (it holds a copy of every
    wheel); other builds' stages are theirs to remove."""
    engine.prune_images(f"org.krm.install-of={content_hash}")


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: copy instead
        shutil.copy2(src, dst)


# --- the wheelhouse --------------------------------------------------------


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
            digest = hashlib.file_digest(wheel.open("rb"), "sha256").hexdigest()
        fresh[wheel.name] = [*key, digest]
        result[wheel.name] = digest
    tmp = index_path.with_suffix(".tmp")
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


def fill_wheelhouse(
    lock_text: str, *, wheelhouse: Path | None = None, log: Log = print
) -> list[Path]:
    """Make sure the wheelhouse holds one hash-checked wheel per lock entry
    (Linux x86_64, CPython 3.11) and return them. Offline when it already does."""
    house = wheelhouse or wheelhouse_dir()
    house.mkdir(parents=True, exist_ok=True)
    lock = parse_lock(lock_text)
    found, missing = _match(lock, house)
    if not missing:
        return found
    log(f"wheelhouse: downloading {len(missing)} of {len(lock)} wheels into {house}")
    lock_file = house / f".lock-{os.getpid()}.txt"
    lock_file.write_text(lock_text)
    cmd = [
        *_pip(), "download", "--disable-pip-version-check",
        "--require-hashes", "--no-deps", "--only-binary=:all:",
        # A socket with no data for this long is retried, then fails: a stall
        # ends as an error instead of hanging the build.
        "--timeout", "60", "--retries", "3", "--progress-bar", "off",
        "--implementation", "cp", "--python-version", "3.11",
        *(arg for platform in _PLATFORMS for arg in ("--platform", platform)),
        "-r", str(lock_file), "-d", str(house),
    ]  # fmt: skip
    try:
        proc = command.run(cmd, timeout=DOWNLOAD_TIMEOUT, idle_timeout=DOWNLOAD_IDLE_TIMEOUT)
    finally:
        lock_file.unlink(missing_ok=True)
    if proc.timed_out or proc.stalled:
        raise DownloadStalled(
            f"pip download of the locked wheels into {house} "
            + (f"stalled: no progress for {DOWNLOAD_IDLE_TIMEOUT} s" if proc.stalled
               else f"took longer than {DOWNLOAD_TIMEOUT} s")
            + "; check the network or the index, then run again (downloaded wheels are kept)"
        )  # fmt: skip
    if not proc.ok:
        text = proc.output
        if "no space left" in text.lower():
            raise DiskFullError(f"wheelhouse {house}: no space left on device")
        errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
        raise BuildError(
            "pip download of the locked wheels failed: "
            + ("; ".join(errors[:3]) or proc.last_line() or "stopped")
        )
    found, missing = _match(lock, house)
    if missing:
        names = ", ".join(f"{m.name}=={m.version}" for m in missing)
        raise BuildError(f"no Linux x86_64 CPython 3.11 wheel matches the lock for {names}")
    return found
