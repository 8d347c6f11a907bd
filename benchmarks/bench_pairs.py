"""Any two cells: what comparing every pair costs, and how big the report gets.

Prints figures, asserts nothing.  Two matrices of synthetic artifacts (the
shape of the default matrix's: 4 scenarios, 12 scenario/phase columns, 48
small tensors per cell) and two kinds of content:

* ``typical``: each axis moves a few phases, as real axes do (a release
  moves training, mixed precision moves the precision scenario, oneDNN the
  forward pass), so most cells share most phases bit for bit;
* ``worst``: on top of that every cell's training phases differ from every
  other cell's (as if each ran with its own thread schedule), so those phases
  have as many distinct contents as cells.

For each: the naive all-pairs time (``compare_cells`` on every pair; timed
for ~60 cells, extrapolated from a sample for 1,000), the digest table's
time (``matrix.analysis.pairs.all_pairs``: one comparison per distinct pair
of phase contents, within the budget), the phases left over the budget, and
the size of the table in report.json and in the page.

    python benchmarks/bench_pairs.py [--sizes 60,1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from artifact_factory import write_cell  # noqa: E402

from matrix.analysis.comparisons import compare_cells  # noqa: E402
from matrix.analysis.drift import DEFAULT_THRESHOLDS  # noqa: E402
from matrix.analysis.findings import pairs_finding  # noqa: E402
from matrix.analysis.pairs import PAIR_BUDGET, all_pairs  # noqa: E402
from matrix.report.render_html import embed_json, pairs_page_data  # noqa: E402
from matrix.report.serialize import to_data  # noqa: E402
from matrix.results.artifacts import load_cell  # noqa: E402

SCENARIOS = {
    "seeded_mlp": ("init", "forward", "train", "seeded_train"),
    "stateful_lstm": ("forward", "train", "stateless"),
    "precision": ("forward", "train", "lstm_forward"),
    "initializers": ("init", "recipe_full"),
}
TENSORS_PER_PHASE = 4


def axes_for(n_cells: int) -> list[dict[str, object]]:
    """~60: 5 stacks x 3 precisions x 4 threads; 1,000: 10 releases x 5 x 5 x 2 x 2."""
    if n_cells <= 100:
        stacks = ["tf-2.15", "tf-2.16", "tf-2.21", "keras-3.15-jax", "keras-3.15-torch"]
        return [
            {"stack": s, "precision": p, "threads": t, "onednn": "default"}
            for s in stacks
            for p in ("float32", "mixed_float16", "mixed_bfloat16")
            for t in (1, 2, 4, 8)
        ]
    return [
        {"stack": f"tf-2.{v}", "precision": p, "threads": t, "device": d, "onednn": o}
        for v in range(12, 22)
        for p in ("float32", "mixed_float16", "mixed_bfloat16", "float32-x", "float32-y")
        for t in (1, 2, 4, 8, 16)
        for d in ("cpu", "gpu")
        for o in ("default", "off")
    ]


def tensors(axes: dict[str, object], n: int, worst: bool) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    release = str(axes["stack"])
    t: dict[str, np.ndarray] = {}
    for scenario, phases in SCENARIOS.items():
        for phase in phases:
            for i in range(TENSORS_PER_PHASE):
                t[f"{scenario}/{phase}/t{i}"] = rng.uniform(0.5, 2, (16, 8)).astype(np.float32)
    for key in t:
        scenario, phase, _ = key.split("/")
        if phase == "train" and release >= "tf-2.16":
            t[key] = (t[key] * np.float32(1 + 2e-4)).astype(np.float32)
        if scenario == "precision" and axes["precision"] != "float32":
            t[key] = (t[key] * np.float32(1 + 1e-3)).astype(np.float32)
        if phase == "forward" and axes["onednn"] == "off":
            t[key] = np.nextafter(t[key], np.float32(9)).astype(np.float32)
        if worst and phase == "train":
            noise = np.random.RandomState(n).uniform(-1e-6, 1e-6, t[key].shape)
            t[key] = (t[key] * (1 + noise)).astype(np.float32)
    return t


def build(root: Path, n_cells: int, worst: bool) -> list[Path]:
    dirs = []
    for n, axes in enumerate(axes_for(n_cells)):
        cid = "__".join(str(v) for v in axes.values())
        dirs.append(write_cell(root, cid, axes=axes, tensors=tensors(axes, n, worst)))
    return dirs


def measure(root: Path, n_cells: int, worst: bool) -> None:
    t0 = time.perf_counter()
    dirs = build(root, n_cells, worst)
    t1 = time.perf_counter()
    cells = [load_cell(d) for d in dirs]
    t2 = time.perf_counter()
    n = len(cells)
    pairs = list(itertools.combinations(range(n), 2))
    sample = pairs if len(pairs) <= 2_000 else random.Random(0).sample(pairs, 300)
    t3 = time.perf_counter()
    for i, j in sample:
        compare_cells(cells[j], cells[i], thresholds=DEFAULT_THRESHOLDS)
    naive = (time.perf_counter() - t3) * len(pairs) / len(sample)
    t4 = time.perf_counter()
    table = all_pairs(cells, thresholds=DEFAULT_THRESHOLDS, budget=PAIR_BUDGET)
    t5 = time.perf_counter()
    finding = pairs_finding(table)
    in_json = len(json.dumps(to_data(finding), separators=(",", ":")).encode())
    in_page = len(embed_json(pairs_page_data(finding)).encode())
    tensor_rows = sum(len(p.tensors) for p in finding.phases)
    how = "timed" if sample is pairs else f"extrapolated from {len(sample)} pairs"
    kind = "worst" if worst else "typical"
    print(f"--- {n} cells, {kind} content ({len(table.columns)} columns, {len(pairs)} pairs)")
    print(f"writing / loading artifacts:   {t1 - t0:.1f} s / {t2 - t1:.1f} s")
    print(f"naive all pairs (compare_cells): {naive:.1f} s ({how})")
    print(
        f"digest table (all_pairs):       {t5 - t4:.2f} s, {len(table.phases)} digest-pair "
        f"comparisons, {table.tensor_comparisons} tensor comparisons (budget {table.budget})"
    )
    print(f"phases over the budget:         {len(table.skipped)} of {len(table.columns)}")
    print(
        f"size: report.json pairs {in_json / 1e6:.2f} MB, page data {in_page / 1e6:.2f} MB, "
        f"{tensor_rows} per-tensor rows"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="60,1000")
    parser.add_argument("--keep", type=Path, help="write the artifacts here and keep them")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench-pairs-"))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            for worst in (False, True):
                measure(base / f"{size}-{'worst' if worst else 'typical'}", size, worst)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
