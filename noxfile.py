"""Sessions: matrix (the main job), report, images, base-image, lock, tests, bench, lint.

The host side needs only numpy, jinja2, jsonschema and rich; frameworks live
in the images and venvs the matrix builds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).resolve().parent
PYTHON = "3.11"


def _install(session: nox.Session, extras: str = "") -> None:
    """Install the project editable, once per venv and pyproject.toml: code
    changes are live anyway, and skipping a no-op install keeps a warm
    `nox -s matrix` within a few seconds."""
    stamp = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    marker = Path(session.virtualenv.location) / ".krm-installed"
    if marker.is_file() and marker.read_text() == stamp:
        return
    session.install("-e", f".{extras}")
    marker.write_text(stamp)


@nox.session(python=PYTHON)
def matrix(session: nox.Session) -> None:
    """Build images, run every cell of a spec, compare and report.

    nox -s matrix -- [--spec FILE] [--only EXPR] [--executor auto|docker|venv|host]
                     [--jobs N] [--shard I/N] [--repeats N] [--dry-run] [--no-cache]
                     [--fail-on CLASS] [--list-json]
                     [--model PATH --inputs X.npz [--builder PY] [--targets Y.npz --train-steps N]]
                     [--scenario PATH.py]
    """
    _install(session)
    session.run("python", "-m", "matrix", "run", *session.posargs)


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """nox -s report -- RESULTS_DIR [RESULTS_DIR ...] [--out DIR] [--reference CELL]
    [--fail-on CLASS] [--tolerance DTYPE.KEY=VALUE]"""
    _install(session)
    session.run("python", "-m", "matrix", "report", *session.posargs)


@nox.session(python=PYTHON)
def images(session: nox.Session) -> None:
    """Build (or find, by content hash) the Docker images a spec needs."""
    _install(session)
    session.run("python", "-m", "matrix", "images", *session.posargs)


@nox.session(name="base-image", python=PYTHON)
def base_image(session: nox.Session) -> None:
    """Bootstrap the Debian bookworm + Python 3.11 base image locally (no registry needed)."""
    _install(session)
    session.run("python", "-m", "matrix", "base-image", *session.posargs)


@nox.session(python=PYTHON)
def lock(session: nox.Session) -> None:
    """Regenerate docker/locks/*.txt (hashed pins) from matrix/stacks.toml."""
    _install(session)
    session.run("python", "-m", "matrix", "lock", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite, Docker and real frameworks included.

    Under CI (CI set) a missing Docker engine, Chromium or framework is a
    failure, never a skip.
    """
    _install(session, "[test]")
    session.run("pytest", *(session.posargs or ["-q"]), env={"PYTHONPATH": str(ROOT)})


#: Benchmarks that take a whole matrix run: only when named.
SLOW_BENCHMARKS = {"bench_cold"}


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures (no timing asserts): compare, render, pairs,
    runner, images; `nox -s bench -- bench_cold [--empty]` times a cold matrix run.

    nox -s bench -- NAME [ARGS...]   one benchmark, with its own arguments
    """
    _install(session)
    if session.posargs:
        runs = [(session.posargs[0], list(session.posargs[1:]))]
    else:
        every = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
        runs = [(name, []) for name in every if name not in SLOW_BENCHMARKS]
    for name, args in runs:
        session.log(f"--- {name}")
        session.run(
            "python", str(ROOT / "benchmarks" / f"{name}.py"), *args,
            env={"PYTHONPATH": str(ROOT)},
        )  # fmt: skip


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    _install(session)
    session.install("ruff", "mypy")
    session.run("ruff", "check", "matrix", "scenarios", "tests", "noxfile.py")
    session.run("mypy", "matrix")
