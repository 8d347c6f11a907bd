"""Compare two artifacts holding 1 GiB of float32 each; print throughput and memory.

Side by side with what a user would otherwise write:
``numpy.testing.assert_allclose`` + ``numpy.testing.assert_array_max_ulp`` on
the same two arrays.  Targets (issue 3): at least 1 GB/s, at least 3x that
pair, extra memory bounded and independent of the tensor size.

    python benchmarks/bench_compare.py [--mib 1024] [--dir DIR]

The candidate differs from the baseline by -3..+3 ULP in every element, so
no block is bitwise equal and every statistic is computed everywhere (the
worst case for the comparison; identical blocks are about 3x faster).  Runs
once: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from artifact_factory import write_cell  # noqa: E402

from matrix.analysis.compare import compare_tensors  # noqa: E402
from matrix.analysis.drift import thresholds_for  # noqa: E402
from matrix.results.artifacts import _sha256, load_cell  # noqa: E402

KEY = "bench/forward/output"
BLOCK = 1 << 24  # elements generated per step (64 MiB)


def write_big_cell(root: Path, cell_id: str, n: int, perturb: bool) -> Path:
    """An artifact whose tensors.npz holds one float32 tensor of n elements, written in blocks."""
    directory = write_cell(
        root, cell_id, axes={"side": cell_id}, tensors={KEY: np.zeros(1, np.float32)}
    )
    npz = directory / "tensors.npz"
    with (
        zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED, allowZip64=True) as zf,
        zf.open(KEY + ".npy", "w", force_zip64=True) as fh,
    ):
        header = {"descr": "<f4", "fortran_order": False, "shape": (n,)}
        np.lib.format.write_array_header_1_0(fh, header)
        for start in range(0, n, BLOCK):
            count = min(BLOCK, n - start)
            rng = np.random.RandomState(start // BLOCK)
            block = rng.standard_normal(count).astype(np.float32)
            if perturb:
                steps = np.random.RandomState(10_000 + start // BLOCK).randint(-3, 4, count)
                block = (block.view(np.int32) + steps.astype(np.int32)).view(np.float32)
            fh.write(block.tobytes())
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tensors"]["sha256"] = _sha256(npz)
    manifest["tensors"]["dtypes"] = {KEY: "float32"}
    manifest_path.write_text(json.dumps(manifest))
    return directory


def rss_mib(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process, MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_rss_peak() -> None:
    """Reset VmHWM so that the next peak is this phase's own (Linux >= 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def rss_peak_growth(before: float) -> float:
    return rss_mib("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024, help="tensor size per artifact, MiB")
    parser.add_argument("--dir", type=Path, help="where to write the two artifacts (kept, reused)")
    parser.add_argument("--skip-numpy", action="store_true", help="only the matrix's comparison")
    args = parser.parse_args()
    n = args.mib * (1 << 20) // 4
    nbytes = n * 4
    gb = nbytes / 1e9
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        t = time.perf_counter()
        base_dir, cand_dir = root / "baseline", root / "candidate"
        reuse = all(
            (d / "tensors.npz").is_file()
            and abs((d / "tensors.npz").stat().st_size - nbytes) < 4096
            for d in (base_dir, cand_dir)
        )
        if not reuse:
            write_big_cell(root, "baseline", n, perturb=False)
            write_big_cell(root, "candidate", n, perturb=True)
        what = "reused" if reuse else "wrote"
        took = time.perf_counter() - t
        print(f"{what} 2 x {nbytes / 2**30:.2f} GiB float32 artifacts ({took:.1f} s) in {root}")

        # --- the matrix's comparison: load (sha256 check) + streamed compare
        gc.collect()
        t = time.perf_counter()
        base, cand = load_cell(base_dir), load_cell(cand_dir)
        t_load = time.perf_counter() - t
        reset_rss_peak()
        rss0 = rss_mib()
        tracemalloc.start()
        t, c = time.perf_counter(), time.process_time()
        result = compare_tensors(
            cand.source(KEY),
            base.source(KEY),
            dtype="float32",
            thresholds=thresholds_for("float32"),
        )
        t_cmp, c_cmp = time.perf_counter() - t, time.process_time() - c
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        grew = rss_peak_growth(rss0)
        print(
            f"\nmatrix.compare: {result.verdict.value}, max {result.max_ulp:g} ULP, "
            f"max rel {result.max_rel:.3g}"
        )
        print(f"  validate both artifacts (sha256 of 2 files): {t_load:6.2f} s")
        print(f"  compare: {t_cmp:6.2f} s wall, {c_cmp:6.2f} s CPU")
        print(
            f"  throughput: {gb / t_cmp:5.2f} GB/s wall, {gb / c_cmp:5.2f} GB/s CPU "
            f"(per tensor; x2 for bytes read from both artifacts)"
        )
        print(f"  extra memory: traced peak {traced / 2**20:.1f} MiB, RSS peak grew {grew:.1f} MiB")
        if args.skip_numpy:
            return

        # --- numpy.testing on the same data, arrays already in memory
        t = time.perf_counter()
        with np.load(base_dir / "tensors.npz") as z:
            a = z[KEY]
        with np.load(cand_dir / "tensors.npz") as z:
            b = z[KEY]
        t_np_load = time.perf_counter() - t
        loaded = rss_mib()
        reset_rss_peak()
        tracemalloc.start()
        t, c = time.perf_counter(), time.process_time()
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_max_ulp(b, a, maxulp=4)
        t_np, c_np = time.perf_counter() - t, time.process_time() - c
        _, traced_np = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        grew_np = rss_peak_growth(loaded)
        print("\nnumpy.testing.assert_allclose + assert_array_max_ulp (arrays preloaded)")
        print(f"  load both arrays: {t_np_load:6.2f} s (RSS {loaded:.0f} MiB after)")
        print(f"  compare: {t_np:6.2f} s wall, {c_np:6.2f} s CPU")
        print(f"  throughput: {gb / t_np:5.2f} GB/s wall, {gb / c_np:5.2f} GB/s CPU")
        print(
            f"  extra memory: traced peak {traced_np / 2**20:.0f} MiB, "
            f"RSS peak grew {grew_np:.0f} MiB"
        )
        print(
            f"\nspeed-up: {t_np / t_cmp:.1f}x wall, {c_np / c_cmp:.1f}x CPU "
            "(the numpy pair is not charged for loading its arrays)"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
