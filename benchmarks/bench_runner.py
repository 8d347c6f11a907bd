"""The scenarios runner's own overhead, as a share of one cell's time.

    python benchmarks/bench_runner.py [--stack tf-2.15] [--repeats 1] [-- runner options]

Runs `python -m scenarios` in the stack's uv venv and splits the wall time
of the whole process (interpreter start to exit) into
  import     the framework import, as the runner measured it
  framework  model building, compile, fit, predict, initializer calls
             (the scenarios' build/compile/init/fit/predict timings)
  overhead   everything else: interpreter start, NumPy, settings, the
             float64 oracle, tensor conversion, fingerprint, npz + manifest
             writing, process exit.
Target: overhead < 10% of the cell's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matrix.environments.venvs import ensure_venv  # noqa: E402
from matrix.plan.stacks import load_catalog  # noqa: E402

TARGET = 0.10


def run_once(python: Path, env: dict[str, str], runner_args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        out = Path(tmp) / "cell"
        start = time.perf_counter()
        proc = subprocess.run(
            [str(python), "-m", "scenarios", "--out", str(out), *runner_args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"runner failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["timings"]
    failed = [k for k, v in manifest["scenarios"].items() if v["status"] != "ok"]
    return {
        "wall": wall,
        "import": t["import"],
        "framework": t["framework"],
        "total": t["total"],
        "failed": float(len(failed)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", default="tf-2.15")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("runner_args", nargs="*", help="options passed to the runner (after --)")
    args = parser.parse_args()
    stack = load_catalog()[args.stack]
    python = ensure_venv(stack, "cpu")
    env = {**os.environ, **stack.env, "PYTHONPATH": str(ROOT)}
    runner_args = args.runner_args or ["--determinism", "on"]

    print(f"stack {stack.name}  runner args {' '.join(runner_args)}")
    header = ("run", "wall s", "import s", "framework s", "overhead s", "overhead %")
    widths = (3, 8, 9, 12, 11, 11)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    shares = []
    for i in range(args.repeats):
        r = run_once(python, env, runner_args)
        overhead = r["wall"] - r["import"] - r["framework"]
        # Sanity: the parts must fit in the wall time and overhead be real.
        assert 0 < r["import"] + r["framework"] <= r["wall"], r
        share = overhead / r["wall"]
        shares.append(share)
        print(
            f"{i:>3} {r['wall']:>8.2f} {r['import']:>9.2f} {r['framework']:>12.2f} "
            f"{overhead:>11.2f} {100 * share:>10.1f}%"
            + (f"   ({int(r['failed'])} scenario(s) failed)" if r["failed"] else "")
        )
    worst = max(shares)
    verdict = "meets" if worst < TARGET else "MISSES"
    print(
        f"runner overhead: worst {100 * worst:.1f}% of the cell's wall time "
        f"({verdict} the {100 * TARGET:.0f}% target)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
