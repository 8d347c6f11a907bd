"""One container image per environment (stack x target), tagged by content.

The tag is ``krm-env:<stack>.<target>-<hash>`` where the hash covers the
base image's content (its layer digests and environment, which unlike its
id survive a re-import of the same root filesystem), the install recipe
(``docker/install.sh``), the lock, the installer's lock and the build mode:
everything that decides what is installed. An image whose tag exists is
never rebuilt, so the check costs a few ``image inspect`` calls.

How an image is made, without BuildKit, without a registry and without
copying a venv between build stages: a throw-away container from the base
runs ``docker/install.sh`` with the wheelhouse, the lock and uv mounted
read-only and no network (wheelhouse mode), and its file system is
committed as the image. The large, rarely changing wheels of a lock
(TensorFlow, jaxlib, torch and its CUDA libraries: every wheel over
:data:`LAYER_MIN_BYTES`) are installed first and committed as a shared
layer (``krm-layer:<hash>``), which every image whose lock has the same
large wheels starts from: a Keras upgrade on the same TensorFlow, a changed
recipe or a cleared cache reuses it instead of unpacking gigabytes again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from matrix import command
from matrix.console import build_log
from matrix.environments import base_image, engine
from matrix.environments.locks import TOOLS_LOCK, cuda_versions, parse_lock
from matrix.environments.wheelhouse import fill_wheelhouse, uv_binary, wheelhouse_dir
from matrix.errors import BuildError, SpecError
from matrix.paths import ROOT, cache_root
from matrix.plan.stacks import Stack

__all__ = [
    "INSTALL_SCRIPT",
    "LAYER_MIN_BYTES",
    "MODES",
    "ImageInfo",
    "ImagePlan",
    "LayerPlan",
    "content_hash",
    "cuda_versions",
    "ensure_image",
    "image_tag",
    "plan_image",
    "planned_image",
]

INSTALL_SCRIPT = ROOT / "docker" / "install.sh"
MODES = ("wheelhouse", "index")
IMAGE_REPO = "krm-env"
LAYER_REPO = "krm-layer"
#: Wheels at least this large go into the shared layer.
LAYER_MIN_BYTES = 50 * 10**6
#: Bump when the build procedure changes in a way the hashed inputs miss.
_RECIPE_VERSION = "2"
#: What a build container may use: installing torch's CUDA wheels needs room.
BUILD_MEMORY = "8g"
BUILD_TIMEOUT = 3 * 3600

Log = Callable[[str], None]

#: The image's configuration, applied when the container is committed.
_IMAGE_CONFIG = (
    "ENV VIRTUAL_ENV=/opt/venv",
    "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "ENV PYTHONUNBUFFERED=1",
    "ENV PYTHONPATH=/opt/krm",
    "ENV HOME=/tmp",
    "ENV USER=krm",
    "ENV KERAS_HOME=/tmp/.keras",
    "ENV MPLCONFIGDIR=/tmp/.matplotlib",
    "ENV LANG=C.UTF-8",
    "USER 10001:10001",
    "WORKDIR /tmp",
    'CMD ["python", "-m", "scenarios", "--help"]',
)


def content_hash(*parts: bytes | str) -> str:
    """sha256 over everything that decides what an image (or layer) contains."""
    digest = hashlib.sha256()
    for part in (_RECIPE_VERSION, *parts):
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def image_tag(stack: str, target: str, digest: str) -> str:
    return f"{IMAGE_REPO}:{stack}.{target}-{digest[:12]}"


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    tag: str
    lock_text: str  # the large wheels' entries of the lock


@dataclass(frozen=True, kw_only=True)
class ImagePlan:
    stack: str
    target: str
    arch: str
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
    arch: str = "x86_64"
    layer: str | None = None  # the shared layer it was built on
    cuda: dict[str, str] = field(default_factory=dict)  # cuda, cudnn, nccl versions
    built: bool = False  # False when an existing image was reused
    seconds: float = 0.0
    size_bytes: int | None = None


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


def _identity(stack: Stack, target: str, arch: str, base_digest: str, mode: str) -> tuple[str, str]:
    """(content hash, tag): everything that defines the image, hashed."""
    digest = content_hash(
        base_digest,
        INSTALL_SCRIPT.read_bytes(),
        stack.lock_path(target, arch).read_bytes(),
        TOOLS_LOCK.read_bytes(),
        mode,
        arch,
    )
    return digest, image_tag(stack.name, target, digest)


def plan_image(
    stack: Stack,
    target: str,
    *,
    base: str | None = None,
    mode: str = "wheelhouse",
    log: Log = build_log,
) -> ImagePlan:
    """Tag and presence of the stack's image; builds nothing but the base."""
    if mode not in MODES:
        raise BuildError(f"unknown image build mode {mode!r}: use one of {', '.join(MODES)}")
    arch = engine.check_engine().arch
    stack.lock_hash(target, arch)  # a missing lock (or architecture) is a one-line refusal
    base = base or base_image.choose_base(log=log) or base_image.BASE_TAG
    base_digest = _base_digest(base, log)
    digest, tag = _identity(stack, target, arch, base_digest, mode)
    return ImagePlan(
        stack=stack.name, target=target, arch=arch, base=base, base_digest=base_digest,
        mode=mode, content_hash=digest, tag=tag, image_id=engine.image_id(tag),
    )  # fmt: skip


def planned_image(stack: Stack, target: str, *, mode: str = "wheelhouse") -> str:
    """One line for ``--dry-run``: the tag and whether it must be built.

    Builds nothing and pulls nothing, not even the base."""
    base = base_image.choose_base(pull=False)
    if base is None:
        return "to build (after the base, which is missing)"
    base_digest = engine.image_content_digest(base)
    if base_digest is None:
        return f"to build (after the base {base}, which is missing)"
    arch = engine.check_engine().arch
    stack.lock_hash(target, arch)
    _, tag = _identity(stack, target, arch, base_digest, mode)
    return f"image {tag} ready" if engine.image_id(tag) else f"image {tag} to build"


def _info(
    plan: ImagePlan,
    image: str,
    lock_text: str,
    *,
    built: bool,
    seconds: float,
    layer: str | None = None,
) -> ImageInfo:
    return ImageInfo(
        tag=plan.tag, image_id=image, stack=plan.stack, target=plan.target, base=plan.base,
        base_digest=plan.base_digest, mode=plan.mode, content_hash=plan.content_hash,
        lock_sha256=hashlib.sha256(lock_text.encode()).hexdigest(), arch=plan.arch,
        layer=layer, cuda=cuda_versions(lock_text), built=built, seconds=seconds,
        size_bytes=engine.image_size(image),
    )  # fmt: skip


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One image build at a time per cache: two matrix runs never build the
    same tag twice. Polled, so that a stop is seen while another run builds."""
    path = cache_root() / "build" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if command.stopping():
                    raise BuildError("stopped while waiting for another build") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_image(
    stack: Stack,
    target: str = "cpu",
    *,
    base: str | None = None,
    mode: str = "wheelhouse",
    log: Log = build_log,
) -> ImageInfo:
    """Return the stack's image, building it only when its tag is absent."""
    start = time.monotonic()
    plan = plan_image(stack, target, base=base, mode=mode, log=log)
    lock_text = stack.lock_path(target, plan.arch).read_text()
    remote = registry_settings()
    found = _existing(plan, log)
    if found:
        if remote is not None and remote.push:
            _push(remote, plan, log)
        return _info(plan, found, lock_text, built=False, seconds=time.monotonic() - start)
    with _build_lock():
        found = _existing(plan, log)  # another process may have built it meanwhile
        if not found and remote is not None:
            found = _pull(remote, plan, log)
        if found:
            return _info(plan, found, lock_text, built=False, seconds=time.monotonic() - start)
        log(f"image: building {plan.tag} from {plan.base} ({mode} mode)")
        uv = uv_binary(plan.arch, log=log)
        wheels: dict[str, int] = {}
        if mode == "wheelhouse":
            paths = fill_wheelhouse(lock_text, arch=plan.arch, log=log)
            entries = parse_lock(lock_text)
            wheels = {e.line: p.stat().st_size for e, p in zip(entries, paths, strict=True)}
        layer = _layer_plan(plan, wheels)
        source = plan.base
        if layer is not None:
            source = _ensure_layer(plan, layer, uv, log, start)
        image = _install(
            plan, source, lock_text, uv, stage="final", tag=plan.tag, log=log, start=start,
            changes=[*_IMAGE_CONFIG, _labels(plan, lock_text, layer)],
        )  # fmt: skip
    if remote is not None and remote.push:
        _push(remote, plan, log)
    seconds = time.monotonic() - start
    layer_tag = layer.tag if layer is not None else None
    info = _info(plan, image, lock_text, built=True, seconds=seconds, layer=layer_tag)
    size = f", {info.size_bytes / 1e9:.2f} GB" if info.size_bytes else ""
    log(f"image: {plan.tag} built in {seconds:.0f} s{size}")
    return info


def _layer_plan(plan: ImagePlan, wheels: dict[str, int]) -> LayerPlan | None:
    """The lock entries of the large wheels, and the tag of their layer."""
    large = sorted(line for line, size in wheels.items() if size >= LAYER_MIN_BYTES)
    if not large:
        return None
    text = "\n".join(large) + "\n"
    digest = content_hash(
        "layer", plan.base_digest, INSTALL_SCRIPT.read_bytes(), text, TOOLS_LOCK.read_bytes(),
        plan.mode, plan.arch,
    )  # fmt: skip
    return LayerPlan(tag=f"{LAYER_REPO}:{digest[:16]}", lock_text=text)


def _ensure_layer(plan: ImagePlan, layer: LayerPlan, uv: Path, log: Log, start: float) -> str:
    if engine.image_id(layer.tag):
        log(f"image: reusing the shared layer {layer.tag}")
        return layer.tag
    n = layer.lock_text.count("\n")
    log(f"image: installing {n} large wheel(s) as the shared layer {layer.tag}")
    changes = [f"LABEL org.krm.layer={layer.tag} org.krm.base-digest={plan.base_digest}"]
    _install(plan, plan.base, layer.lock_text, uv, stage="layer", tag=layer.tag, log=log,
             start=start, changes=changes)  # fmt: skip
    return layer.tag


def _labels(plan: ImagePlan, lock_text: str, layer: LayerPlan | None) -> str:
    cuda = cuda_versions(lock_text)
    labels = {
        "org.krm.stack": plan.stack,
        "org.krm.target": plan.target,
        "org.krm.arch": plan.arch,
        "org.krm.content-hash": plan.content_hash,
        "org.krm.lock-sha256": hashlib.sha256(lock_text.encode()).hexdigest(),
        "org.krm.base": plan.base,
        "org.krm.base-digest": plan.base_digest,
        "org.krm.mode": plan.mode,
        "org.krm.python": "3.11",
        "org.krm.layer": layer.tag if layer else "",
        "org.krm.cuda": cuda.get("cuda", ""),
        "org.krm.cudnn": cuda.get("cudnn", ""),
        "org.krm.nccl": cuda.get("nccl", ""),
    }
    return "LABEL " + " ".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())


def _label_value(value: str) -> str:
    return re.sub(r'["\\\s]', "_", value)


def _install(
    plan: ImagePlan,
    source: str,
    lock_text: str,
    uv: Path,
    *,
    stage: str,
    tag: str,
    log: Log,
    start: float,
    changes: list[str],
) -> str:
    """Run docker/install.sh in a container from ``source``, commit it as ``tag``."""
    work = cache_root() / "build" / f"{plan.stack}.{plan.target}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    name = f"krm-build-{uuid.uuid4().hex[:12]}"
    try:
        lock = work / "lock.txt"
        lock.write_text(lock_text)
        mounts = [
            engine.Mount(source=INSTALL_SCRIPT, target="/krm/install.sh"),
            engine.Mount(source=lock, target="/krm/lock.txt"),
            engine.Mount(source=uv, target="/krm/uv"),
        ]
        env: dict[str, str] = {}
        if plan.mode == "wheelhouse":
            mounts.append(engine.Mount(source=wheelhouse_dir(), target="/krm/wheels"))
        else:
            mounts_, env = index_access()
            mounts += mounts_
        spec = engine.RunSpec(
            image=source,
            name=name,
            command=("sh", "/krm/install.sh", plan.mode, stage),
            mounts=tuple(mounts),
            env=env,
            labels={"org.krm.build": tag},
            memory=BUILD_MEMORY,
            user="0:0",
            # root in the container owns what it installs; it still has no
            # capabilities and no network in wheelhouse mode
            network="none" if plan.mode == "wheelhouse" else "bridge",
            read_only=False,
            remove=False,
        )
        result = engine.run_container(spec, timeout=BUILD_TIMEOUT)
        tail = "; ".join(line for line in result.output.splitlines()[-5:] if line.strip())
        if result.stopped:
            raise BuildError(f"building {tag}: stopped")
        if result.returncode != 0:
            raise BuildError(f"building {tag} failed ({stage}): {tail[-400:] or 'no output'}")
        log(f"  {time.monotonic() - start:5.0f}s installed; committing {tag}")
        return engine.commit_container(name, tag=tag, changes=changes)
    finally:
        engine.remove_container(name)
        shutil.rmtree(work, ignore_errors=True)


# ---- a registry that keeps images between machines and nights ----------------------

#: An image repository path: lower-case name parts, an optional host[:port] first.
_REGISTRY = re.compile(r"^[a-z0-9.-]+(?::[0-9]{1,5})?(?:/[a-z0-9._-]+)*$")


@dataclass(frozen=True, kw_only=True)
class Registry:
    """``--registry`` (``$KRM_REGISTRY``): where content-tagged images are
    looked for before a build, and pushed to with ``--push`` (``$KRM_PUSH``)."""

    prefix: str
    push: bool = False

    def remote(self, tag: str) -> str:
        return f"{self.prefix}/{tag}"


def registry_settings(environ: dict[str, str] | None = None) -> Registry | None:
    env = os.environ if environ is None else environ
    prefix = env.get("KRM_REGISTRY", "").strip().rstrip("/")
    if not prefix:
        return None
    if not _REGISTRY.match(prefix):
        raise SpecError(
            f"--registry {prefix!a}: not an image repository (e.g. ghcr.io/OWNER/krm or "
            "localhost:5000/krm: lower case, no tag)"
        )
    return Registry(prefix=prefix, push=env.get("KRM_PUSH", "") not in ("", "0"))


def _pull(remote: Registry, plan: ImagePlan, log: Log) -> str | None:
    """The image from the registry, tagged locally; None when it is not there.

    The tag names the content, and the label is checked as well: an image
    that is not what its tag says is never used."""
    ref = remote.remote(plan.tag)
    if engine.pull_image(ref, log=lambda m: log(f"image: {m}")) is not None:
        log(f"image: {ref} is not in the registry; building it")
        return None
    if engine.image_labels(ref).get("org.krm.content-hash") != plan.content_hash:
        log(f"image: {ref} does not hold the content its tag names; building instead")
        engine.remove_image(ref)
        return None
    engine.tag_image(ref, plan.tag)
    log(f"image: {plan.tag} pulled from {remote.prefix}, not built")
    return engine.image_id(plan.tag)


def _push(remote: Registry, plan: ImagePlan, log: Log) -> None:
    ref = remote.remote(plan.tag)
    engine.tag_image(plan.tag, ref)
    reason = engine.push_image(ref, log=lambda m: log(f"image: {m}"))
    if reason is not None:
        raise BuildError(f"pushing {ref} failed: {reason} (log in to the registry first?)")


#: Where the host's trust store and proxy settings reach a build container.
_CA_IN_CONTAINER = "/krm/ca-certificates.crt"
_PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


def index_access(
    environ: dict[str, str] | None = None,
) -> tuple[list[engine.Mount], dict[str, str]]:
    """What a build that fetches from the package index needs of the host:
    its CA bundle (a network that inspects TLS has its own authority, which a
    bare base image does not trust) and its proxy variables."""
    env = dict(os.environ if environ is None else environ)
    mounts: list[engine.Mount] = []
    out = {k: env[k] for k in _PROXY_VARIABLES if env.get(k)}
    for candidate in (
        env.get("SSL_CERT_FILE"),
        env.get("REQUESTS_CA_BUNDLE"),
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ):
        if candidate and Path(candidate).is_file():
            mounts.append(engine.Mount(source=Path(candidate).resolve(), target=_CA_IN_CONTAINER))
            out["SSL_CERT_FILE"] = _CA_IN_CONTAINER
            break
    return mounts, out


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
