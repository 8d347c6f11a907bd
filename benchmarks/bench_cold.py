"""A cold run, stage by stage (``nox -s bench -- bench_cold``): figures printed.

Runs ``python -m matrix run`` on a spec as a new user would, optionally with
the engine emptied first (``--empty``: every krm-* image and container, and
the wheelhouse, are removed: destructive, so never the default), then
prints the table of stages and each environment's build time from the
run's ``timings.json``, and the wall time of a warm re-run (nothing
changed: every run reused, the report rebuilt).

    nox -s bench -- bench_cold --spec matrix/default.toml --empty
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _docker(*args: str) -> list[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=600)
    return proc.stdout.split()


def empty_engine() -> None:
    """Remove what a previous run left: containers, images, the wheelhouse."""
    containers = [n for n in _docker("ps", "-a", "--format", "{{.Names}}") if n.startswith("krm-")]
    if containers:
        _docker("rm", "-f", *containers)
    refs = [
        r
        for r in _docker("images", "--format", "{{.Repository}}:{{.Tag}}")
        if r.split(":")[0] in ("krm-env", "krm-layer", "krm-base")
    ]
    if refs:
        _docker("rmi", "-f", *refs)
    _docker("image", "prune", "-f")
    cache = Path(os.environ.get("KRM_CACHE", ROOT / ".cache"))
    shutil.rmtree(cache / "wheelhouse", ignore_errors=True)


def run(spec: str, results: Path, jobs: int | None) -> float:
    args = [sys.executable, "-m", "matrix", "run", "--spec", spec, "--results", str(results)]
    if jobs:
        args += ["--jobs", str(jobs)]
    start = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=4 * 3600)  # fmt: skip
    seconds = time.monotonic() - start
    if proc.returncode not in (0, 1, 10):
        sys.exit(f"the run exited {proc.returncode}")
    return seconds


def table(results: Path, wall: float) -> None:
    data = json.loads((results / "timings.json").read_text())
    print(f"\n{'stage':<28} {'seconds':>9}")
    for stage, seconds in data["stages"].items():
        print(f"{stage:<28} {seconds:9.1f}")
    print(f"{'wall (process)':<28} {wall:9.1f}")
    runs = data["runs"]
    print(f"runs: {runs['ok']} ran ({data['run_seconds']:.0f} s of runner time), "
          f"{runs['cached']} reused, {runs['failed']} failed")  # fmt: skip
    print(f"\n{'environment':<34} {'seconds':>9}  built")
    for name, env in data["environments"].items():
        print(f"{name:<34} {env['seconds']:9.1f}  {'yes' if env['built'] else 'no'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="matrix/default.toml")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument(
        "--empty", action="store_true", help="remove every krm image and the wheelhouse first"
    )
    opts = parser.parse_args()
    results = opts.results or Path(tempfile.mkdtemp(prefix="krm-cold-")) / "results"
    if opts.empty:
        empty_engine()
        print("engine emptied: no krm image, no wheelhouse")
    cold = run(opts.spec, results, opts.jobs)
    print(f"\n{'cold' if opts.empty else 'first'} run of {opts.spec}: {cold:.0f} s")
    table(results, cold)
    warm = run(opts.spec, results, opts.jobs)
    print(f"\nwarm re-run (nothing changed): {warm:.1f} s (target <= 5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
