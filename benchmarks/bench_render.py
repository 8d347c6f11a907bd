"""Report for 1,000 synthetic cells: how long it takes and how big the page is.

Targets (issue 3): rendering under 3 s, index.html under 5 MB.  Prints the
figures; it is a benchmark, not a test.

    python benchmarks/bench_render.py [--cells-per-version 100] [--keep DIR]

The matrix: tensorflow 2.12..2.21 x hardware (5) x threads (5) x device (2)
x onednn (2) = 1,000 cells, three scenarios (7 scenario/phase columns, 23
tensors each, a float64 oracle per forward output), one known cause per axis,
1 % failed cells and repeats for 5 % of them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from artifact_factory import write_cell, write_plan, write_repeat  # noqa: E402

from matrix.report.command import make_findings, write_outputs  # noqa: E402

VERSIONS = [f"2.{v}" for v in range(12, 22)]
HARDWARE = ["epyc-7b13", "xeon-8375c", "xeon-6230", "graviton3", "sapphire-rapids"]
THREADS = [1, 2, 4, 8, 16]
DEVICES = ["cpu", "gpu"]
ONEDNN = [False, True]
AXES = ["tensorflow", "hardware", "threads", "device", "onednn"]


def tensors(tf: str, hw: str, threads: int, device: str, onednn: bool) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    t: dict[str, np.ndarray] = {}
    for sc, layers in (("seeded_mlp", 2), ("stateful_lstm", 2), ("precision", 3)):
        if sc != "precision":
            t[f"{sc}/init/kernel"] = rng.uniform(-1, 1, (8, 8)).astype(np.float32)
        for i in range(layers):
            t[f"{sc}/forward/layer_{i:02d}_dense"] = rng.uniform(0.5, 2, (16, 8)).astype(np.float32)
        t[f"{sc}/forward/output"] = rng.uniform(0.5, 2, (16, 1)).astype(np.float32)
        t[f"reference/{sc}/forward/output"] = t[f"{sc}/forward/output"].astype(np.float64)
        if sc != "precision":
            t[f"{sc}/train/kernel"] = rng.uniform(0.5, 2, (8, 8)).astype(np.float32)
            t[f"{sc}/train/loss"] = rng.uniform(0.5, 2, (100,)).astype(np.float32)
    # one cause per axis
    if VERSIONS.index(tf) >= 4:  # 2.16: Keras 3 reorders the training sums
        for k in [k for k in t if "/train/" in k]:
            t[k] = (t[k] * np.float32(1 + 2e-4)).astype(np.float32)
    if device == "gpu":
        for k in [k for k in t if k.startswith("precision/forward/")]:
            t[k] = np.nextafter(t[k], np.float32(9)).astype(np.float32)
    if onednn and hw != "graviton3":
        for k in [
            k
            for k in t
            if k.startswith("seeded_mlp/forward/layer_01") or k == "seeded_mlp/forward/output"
        ]:
            t[k] = (t[k] * np.float32(1 + 3e-3)).astype(np.float32)
    if threads >= 8:
        k = "stateful_lstm/train/loss"
        t[k] = np.nextafter(t[k], np.float32(0)).astype(np.float32)
    return t


def build(root: Path) -> int:
    ids = []
    n = 0
    for tf in VERSIONS:
        for hw in HARDWARE:
            for threads in THREADS:
                for device in DEVICES:
                    for onednn in ONEDNN:
                        cid = f"tf{tf}-{hw}-t{threads}-{device}-onednn{int(onednn)}"
                        axes = {
                            "tensorflow": tf,
                            "hardware": hw,
                            "threads": threads,
                            "device": device,
                            "onednn": onednn,
                        }
                        t = tensors(tf, hw, threads, device, onednn)
                        failed = None
                        if n % 100 == 37:
                            failed = {
                                "stateful_lstm": (
                                    "ValueError",
                                    "samples must divide by the batch size",
                                    "Traceback (most recent call last):\n  ...\n"
                                    "ValueError: samples must divide by the batch size",
                                )
                            }
                        write_cell(root, cid, axes=axes, tensors=t, failed=failed, log="ok\n" * 50)
                        if n % 20 == 3:
                            write_repeat(root, cid, 1, axes=axes, tensors=t)
                        ids.append(cid)
                        n += 1
    write_plan(root, ids, axes=AXES)
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", type=Path, help="write the results and report here and keep them")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-render-"))
    try:
        t0 = time.perf_counter()
        n = build(root / "results")
        t1, c1 = time.perf_counter(), time.process_time()
        findings = make_findings([root / "results"], generated_at="2026-01-01T00:00:00Z")
        t2, c2 = time.perf_counter(), time.process_time()
        files = write_outputs(findings, root / "report")
        t3, c3 = time.perf_counter(), time.process_time()
        sizes = {p.name: p.stat().st_size for p in files}
        comparisons = len(findings.comparisons)
        rows = len(findings.attribution)
        print(f"cells: {n} ({comparisons} cell comparisons, {rows} attribution rows)")
        print(f"writing synthetic artifacts: {t1 - t0:.2f} s")
        print(f"load + compare + attribute:  {t2 - t1:.2f} s wall, {c2 - c1:.2f} s CPU")
        render = f"{t3 - t2:.2f} s wall, {c3 - c2:.2f} s CPU"
        print(f"render json/md/html/junit:   {render}   (target < 3 s)")
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average: {load} on {os.cpu_count()} cores")
        for name, size in sizes.items():
            print(
                f"  {name:12s} {size / 1e6:7.2f} MB"
                + ("   (target < 5 MB)" if name == "index.html" else "")
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
