"""Image benchmarks (``nox -s bench -- bench_images``), figures printed.

1. Rebuilding an unchanged image: ``ensure_image`` on an existing tag, engine
   check included (target <= 5 s).
2. docker vs venv overhead per cell on the same environment (tf-2.15, cpu):
   the wall time of ``python -c 'import numpy'`` in a hardened container,
   launched exactly as a cell is (same flags and mounts), minus the same in
   the stack's uv venv (target <= 1.5 s). ``--cell`` also times one real
   quick seeded_mlp cell through both executors.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from matrix.environments import engine, images
from matrix.environments.venvs import ensure_venv
from matrix.execute.executors.base import SCENARIOS_ROOT, Environment
from matrix.execute.executors.docker import DockerExecutor, cell_spec
from matrix.execute.executors.venv import VenvExecutor
from matrix.plan.stacks import load_catalog

STACK, TARGET = "tf-2.15", "cpu"
PROBE = ("python", "-c", "import numpy")


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def bench_unchanged_rebuild(repeats: int) -> float:
    stack = load_catalog()[STACK]
    images.ensure_image(stack, TARGET)  # build once if needed (not timed)
    samples = []
    for _ in range(repeats):
        engine.check_engine.cache_clear()  # a fresh process pays the engine check too
        start = time.monotonic()
        info = images.ensure_image(stack, TARGET, log=lambda _: None)
        samples.append(time.monotonic() - start)
        assert not info.built
    return _median(samples)


def bench_overhead(repeats: int) -> tuple[float, float]:
    stack = load_catalog()[STACK]
    image = images.ensure_image(stack, TARGET, log=lambda _: None).image_id
    python = ensure_venv(stack, TARGET)
    venv_samples, docker_samples = [], []
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "stage"
        staging.mkdir()
        base = cell_spec(
            image=image, name="", runner_args=[], out_name="artifact", staging=staging,
            scenarios=SCENARIOS_ROOT / "scenarios", env=dict(stack.env), memory="3g",
            gpu=False, user=engine.container_user(engine.check_engine()),
        )  # fmt: skip
        for _ in range(repeats):
            start = time.monotonic()
            subprocess.run([str(python), "-c", "import numpy"], check=True)
            venv_samples.append(time.monotonic() - start)
            spec = dataclasses.replace(
                base, name=f"krm-bench-{uuid.uuid4().hex[:8]}", command=PROBE
            )
            start = time.monotonic()
            result = engine.run_container(spec, timeout=120)
            docker_samples.append(time.monotonic() - start)
            assert result.returncode == 0, result.output
    return _median(venv_samples), _median(docker_samples)


def bench_cell() -> tuple[float, float]:
    stack = load_catalog()[STACK]
    env = Environment(stack=stack, target=TARGET)
    args = ["--scenarios", "seeded_mlp", "--quick", "--unseeded-repeats", "1"]
    seconds = []
    for executor in (VenvExecutor(), DockerExecutor(log=lambda _: None)):
        environment_id = executor.prepare(env).id
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            run = executor.run_cell(
                env, environment_id, args, Path(tmp) / "artifact",
                timeout=900, memory="3g", gpu=False, extra_env={},
            )  # fmt: skip
            seconds.append(time.monotonic() - start)
            if run.reason:
                sys.exit(f"{executor.name} cell failed: {run.reason}")
    return seconds[0], seconds[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cell", action="store_true", help="also time one real quick cell in both")
    opts = parser.parse_args()
    info = engine.check_engine()
    print(f"engine: Docker {info.server_version}; stack {STACK}/{TARGET}; median of {opts.repeats}")

    rebuild = bench_unchanged_rebuild(opts.repeats)
    print(f"unchanged image rebuild check: {rebuild:.2f} s (target <= 5 s)")

    venv_s, docker_s = bench_overhead(opts.repeats)
    print(f"python -c 'import numpy': venv {venv_s:.2f} s, hardened container {docker_s:.2f} s")
    print(f"docker vs venv overhead per cell: {docker_s - venv_s:.2f} s (target <= 1.5 s)")

    if opts.cell:
        venv_cell, docker_cell = bench_cell()
        print(f"quick seeded_mlp cell: venv {venv_cell:.1f} s, docker {docker_cell:.1f} s, "
              f"difference {docker_cell - venv_cell:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
