"""Bootstrap the local base image (``nox -s base-image``): Debian bookworm's
CPython 3.11 without a registry.

Elsewhere the base is ``python:3.11-slim`` pulled from Docker Hub; machines
with no registry (DESIGN.md, "Facts about the machines here") build an
equivalent from Debian packages: ``debootstrap --variant=minbase`` into a
rootfs, trimmed, then ``docker import``. The downloaded packages are kept as
a debootstrap tarball, so re-creating the image after ``docker rmi`` needs no
network and takes well under a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matrix import command
from matrix.console import build_log, output
from matrix.environments import engine
from matrix.errors import BuildError, DiskFullError, DownloadStalled, SpecError
from matrix.paths import ROOT, cache_root

__all__ = [
    "BASE_PACKAGES",
    "BASE_TAG",
    "BaseImage",
    "base_image_command",
    "default_cache_dir",
    "ensure_base_image",
]

BASE_TAG = "krm-base:bookworm-py311"
#: What users with an ordinary engine get: the official image, pulled.
PULLED_BASE = "python:3.11-slim"
SUITE = "bookworm"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
OS_RELEASE = Path("/etc/os-release")
#: Where the bootstrap fetches Debian when this host is not Debian (Ubuntu, WSL).
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: Pulling the slim base is the first thing a new user's run does: a
#: registry that does not answer is given this long before the bootstrap.
PULL_TIMEOUT = 600


def choose_base(*, log: Callable[[str], None] = build_log, pull: bool = True) -> str | None:
    """The base every environment image starts from, by what works here.

    ``$KRM_BASE_IMAGE`` (``--base``) always wins. Else python:3.11-slim when
    it is present or can be pulled, else the local Debian bootstrap (with a
    one-line notice), which is what a machine without a registry gets. Once
    either is present it is used without asking the registry again.
    ``pull=False`` (dry runs) asks nothing: None when neither is present.
    """
    explicit = os.environ.get("KRM_BASE_IMAGE")
    if explicit:
        return explicit
    for present in (PULLED_BASE, BASE_TAG):
        if engine.image_id(present):
            return present
    if not pull:
        return None
    reason = engine.pull_image(PULLED_BASE, log=lambda m: log(f"base: {m}"))
    if reason is None and engine.image_id(PULLED_BASE):
        return PULLED_BASE
    log(f"notice: {PULLED_BASE} cannot be pulled ({reason}); bootstrapping {BASE_TAG} locally")
    return BASE_TAG


def _is_debian(os_release: Path = OS_RELEASE) -> bool:
    try:
        text = os_release.read_text()
    except OSError:
        return False
    return re.search(r"^ID=\"?debian\"?$", text, re.MULTILINE) is not None


def default_mirror(sources: tuple[Path, ...] = APT_SOURCES, os_release: Path = OS_RELEASE) -> str:
    """The Debian mirror for the bootstrap: ``$KRM_DEBIAN_MIRROR``, else the
    one this host's apt uses when the host is Debian (the same mirror, proxy
    or local cache apt is set up for), else Debian's own."""
    env = os.environ.get("KRM_DEBIAN_MIRROR")
    if env:
        return env
    if not _is_debian(os_release):
        return DEBIAN_MIRROR
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        # deb822 ("URIs: URL") or one-line ("deb [opts] URL suite ...") format
        found = re.search(r"^URIs:\s*(\S+)", text, re.MULTILINE) or re.search(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE
        )
        if found:
            return found.group(1).rstrip("/")
    return DEBIAN_MIRROR


PACKAGES_FILE = ROOT / "docker" / "base" / "packages.txt"


def _read_packages(path: Path = PACKAGES_FILE) -> tuple[str, ...]:
    """docker/base/packages.txt: one package a line, ``#`` comments."""
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(name for name in names if name)


#: What the frameworks need at run time beyond minbase (why: packages.txt).
BASE_PACKAGES = _read_packages()

#: Trimmed from the rootfs: nothing in a cell reads them, and apt is never
#: run in our images (packages come from the lock).
_TRIM = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/common-licenses",
)

#: Bump when _TRIM or the packing changes: names the cached rootfs tar.
_ROOTFS_RECIPE = "r1"

_DPKG_NODOC = """\
# Keep images built FROM this base as lean as the base itself.
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""

Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class BaseImage:
    tag: str
    image_id: str
    built: bool  # False when the tag was already there
    seconds: float


def default_cache_dir() -> Path:
    return cache_root() / "base"


def _package_key(mirror: str) -> str:
    spec = {"suite": SUITE, "variant": "minbase", "include": BASE_PACKAGES, "mirror": mirror}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _debootstrap() -> str:
    found = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if found is None:
        raise BuildError(
            "debootstrap is not installed: `sudo apt-get install -y debootstrap`, "
            "or pass a base that can be pulled (e.g. --base python:3.11-slim)"
        )
    if os.geteuid() != 0:
        raise BuildError(
            "debootstrap needs root to create device nodes and chroot: "
            "run `sudo nox -s base-image` once (the image is then shared), "
            f"or make {PULLED_BASE} pullable"
        )
    return found


#: Debian's archive keyring: Debian hosts have it; Ubuntu's package of the
#: same name installs it for debootstrap.
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def _keyring_args() -> list[str]:
    if DEBIAN_KEYRING.is_file():
        return [f"--keyring={DEBIAN_KEYRING}"]
    raise BuildError(
        f"{DEBIAN_KEYRING} is missing: `sudo apt-get install -y debian-archive-keyring` "
        "so that debootstrap can verify Debian's packages"
    )


def _noisy(line: str) -> bool:
    """debootstrap prints one line per package per stage: hide those."""
    words = line.split()
    return len(words) >= 2 and words[0] == "I:" and words[1] in {
        "Retrieving", "Validating", "Extracting", "Unpacking", "Configuring",
    }  # fmt: skip


#: debootstrap downloads ~40 MB; a mirror that sends nothing for this long has stalled.
BOOTSTRAP_TIMEOUT = 3600
BOOTSTRAP_IDLE_TIMEOUT = 600


def _run(cmd: list[str], log: Log, what: str) -> None:
    proc = command.run(
        cmd,
        timeout=BOOTSTRAP_TIMEOUT,
        idle_timeout=BOOTSTRAP_IDLE_TIMEOUT,
        on_line=lambda line: log(f"  {line}") if line.strip() and not _noisy(line) else None,
    )
    tail = proc.lines[-30:]
    if proc.stalled or proc.timed_out:
        raise DownloadStalled(
            f"{what} stalled (no output for {BOOTSTRAP_IDLE_TIMEOUT} s) or took longer than "
            f"{BOOTSTRAP_TIMEOUT} s: check the Debian mirror (--mirror URL), then run again"
        )
    if not proc.ok:
        if any("no space left" in line.lower() for line in tail):
            raise DiskFullError(f"{what}: no space left on device")
        errors = [line for line in tail if line.startswith(("E:", "W:"))] or tail[-1:]
        raise BuildError(f"{what} failed: {'; '.join(errors) or 'stopped'}")


def _package_tarball(cache: Path, mirror: str, log: Log) -> Path:
    """The downloaded .debs as a debootstrap tarball, fetched once."""
    tarball = cache / f"debootstrap-{SUITE}-minbase-{_package_key(mirror)}.tgz"
    if tarball.exists():
        log(f"base: using cached packages {tarball.name}")
        return tarball
    log(f"base: downloading {SUITE} packages from {mirror}")
    with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as work:
        partial = Path(work) / tarball.name
        _run(
            [
                _debootstrap(), *_keyring_args(), "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--make-tarball={partial}", SUITE, str(Path(work) / "target"), mirror,
            ],
            log,
            "debootstrap --make-tarball",
        )  # fmt: skip
        partial.rename(tarball)  # atomic: a killed download leaves no tarball
    return tarball


def _trim(rootfs: Path) -> None:
    for rel in _TRIM:
        path = rootfs / rel
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    dpkg_cfg = rootfs / "etc" / "dpkg" / "dpkg.cfg.d"
    dpkg_cfg.mkdir(parents=True, exist_ok=True)
    (dpkg_cfg / "01-krm-nodoc").write_text(_DPKG_NODOC)


def _make_rootfs_tar(cache: Path, mirror: str, log: Log) -> Path:
    """Bootstrap, trim and pack a root filesystem; keep the tar in the cache.

    Keeping the packed tar (not only the packages) makes a re-import after
    ``docker rmi`` byte-identical: same tar, same layer digest, so every
    environment image keyed on the base's layers keeps its tag (images.py).
    """
    debootstrap = _debootstrap()
    tarball = _package_tarball(cache, mirror, log)
    final = cache / f"rootfs-{SUITE}-{_package_key(mirror)}-{_ROOTFS_RECIPE}.tar"
    with tempfile.TemporaryDirectory(dir=cache, prefix="rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        log(f"base: installing {len(BASE_PACKAGES)} packages and their dependencies")
        _run(
            [
                debootstrap, *_keyring_args(), "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--unpack-tarball={tarball}", SUITE, str(rootfs), mirror,
            ],
            log,
            "debootstrap",
        )  # fmt: skip
        _trim(rootfs)
        log("base: packing the root filesystem")
        partial = Path(work) / final.name
        proc = command.run(
            ["tar", "--numeric-owner", "--sort=name", "-C", str(rootfs), "-cf", str(partial), "."],
            timeout=BOOTSTRAP_TIMEOUT,
        )
        if not proc.ok:
            if "no space left" in proc.output.lower():
                raise DiskFullError(f"packing the base rootfs in {cache}: no space left on device")
            raise BuildError(f"packing the base rootfs failed: {proc.output.strip()[-300:]}")
        partial.replace(final)
    return final


def ensure_base_image(
    *,
    tag: str = BASE_TAG,
    cache_dir: Path | None = None,
    mirror: str | None = None,
    force: bool = False,
    log: Log = build_log,
) -> BaseImage:
    """Return the local base image, bootstrapping it when the tag is absent.

    Idempotent: an existing tag is returned as is. A cached root filesystem
    is re-imported (seconds, same layer); ``force`` bootstraps a fresh one
    from the cached packages.
    """
    start = time.monotonic()
    engine.check_engine()
    existing = engine.image_id(tag)
    if existing and not force:
        return BaseImage(tag=tag, image_id=existing, built=False, seconds=0.0)
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    mirror = mirror or default_mirror()
    rootfs_tar = cache / f"rootfs-{SUITE}-{_package_key(mirror)}-{_ROOTFS_RECIPE}.tar"
    if rootfs_tar.exists() and not force:
        log(f"base: re-importing the cached root filesystem {rootfs_tar.name}")
    else:
        rootfs_tar = _make_rootfs_tar(cache, mirror, log)
    log(f"base: importing as {tag}")
    image = engine.import_image(
        rootfs_tar,
        tag=tag,
        changes=[
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL org.krm.base.suite={SUITE} org.krm.base.packages={','.join(BASE_PACKAGES)}",
            'CMD ["python3"]',
        ],
    )
    seconds = time.monotonic() - start
    log(f"base: {tag} ready ({image[:19]}, {seconds:.0f} s)")
    return BaseImage(tag=tag, image_id=image, built=True, seconds=seconds)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SpecError(f"{self.prog}: {message}")


def base_image_command(argv: list[str]) -> int:
    """``nox -s base-image -- [--force] [--mirror URL] [--tag TAG]``."""
    parser = _Parser(prog="nox -s base-image --", description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=BASE_TAG, help=f"image tag (default {BASE_TAG})")
    parser.add_argument(
        "--mirror",
        default=None,
        help="Debian mirror URL (default: $KRM_DEBIAN_MIRROR, else the host's apt sources)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    opts = parser.parse_args(argv)
    image = ensure_base_image(tag=opts.tag, mirror=opts.mirror, force=opts.force)
    if not image.built:
        output.line(
            f"base: {image.tag} already present ({image.image_id[:19]}); --force rebuilds it"
        )
    return 0
