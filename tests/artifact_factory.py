"""Build synthetic cell artifact directories that follow scenarios/manifest.schema.json.

Shared by the report tests and the benchmarks (and free for anyone else):
``write_cell`` writes manifest.json + tensors.npz (+ sha256) + log.txt, with
scenario records derived from the tensor keys unless given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bf16", "fingerprint", "write_cell", "write_plan", "write_repeat"]

SCHEMA = "keras-repro-matrix/artifact"


def bf16(values: Any) -> np.ndarray:
    """Round to bfloat16 (nearest even) and widen to float32, as scenarios store it."""
    f32 = np.asarray(values, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).reshape(f32.shape)


def fingerprint(**overrides: Any) -> dict[str, Any]:
    fp: dict[str, Any] = {
        "python": "3.11.9",
        "numpy": "1.26.4",
        "packages": {"tensorflow-cpu": "2.15.1", "keras": "2.15.0"},
        "keras_version": "2.15.0",
        "keras_major": 2,
        "backend": "tensorflow",
        "device": {"kind": "cpu", "name": "x86_64"},
        "cpu": {"model": "AMD EPYC", "flags": ["avx2", "fma"], "count": 2},
        "onednn": False,
        "threads": 1,
        "determinism": {"tf_op_determinism": True},
        "jit": "off",
        "env": {"PYTHONHASHSEED": "0", "TF_ENABLE_ONEDNN_OPTS": "0"},
        "platform": "Linux-x86_64",
    }
    fp.update(overrides)
    return fp


def write_cell(
    root: Path,
    cell_id: str,
    *,
    axes: Mapping[str, Any] | None = None,
    tensors: Mapping[str, np.ndarray] | None = None,
    dtypes: Mapping[str, str] | None = None,
    scenarios: Mapping[str, Mapping[str, Any]] | None = None,
    failed: Mapping[str, tuple[str, str, str]] | None = None,
    unsupported: Sequence[str] = (),
    executor: str = "docker",
    repeat: int = 0,
    fingerprint_overrides: Mapping[str, Any] | None = None,
    log: str = "ran\n",
    compressed: bool = False,
    manifest_overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write one artifact directory ``root/cell_id`` and return it.

    ``failed`` maps scenario -> (error type, message, traceback tail);
    ``unsupported`` lists scenarios that do not apply.  Their tensors, if
    given, are not written.
    """
    directory = root / cell_id
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(tensors or {})
    failed = dict(failed or {})
    skipped = set(failed) | set(unsupported)
    kept = {k: v for k, v in tensors.items() if _scenario_of(k) not in skipped}
    npz = directory / "tensors.npz"
    with npz.open("wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **kept)
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    true_dtypes = {k: (dtypes or {}).get(k, str(np.asarray(v).dtype)) for k, v in kept.items()}
    records: dict[str, Any] = {}
    names = sorted({_scenario_of(k) for k in tensors} | set(failed) | set(unsupported))
    for name in names:
        status = "failed" if name in failed else "unsupported" if name in unsupported else "ok"
        record: dict[str, Any] = {
            "status": status,
            "seconds": 1.5,
            "tensors": sorted(k for k in kept if _scenario_of(k) == name),
            "notes": [],
        }
        if name in failed:
            etype, message, tb = failed[name]
            record["error"] = {"type": etype, "message": message, "traceback": tb}
        if name in unsupported:
            record["error"] = {"type": "Unsupported", "message": f"{name} does not apply here"}
        records[name] = record
    records.update(scenarios or {})
    settings = {
        "precision": "float32",
        "determinism": True,
        "threads": 1,
        "device": "cpu",
        "jit": "off",
    }
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": 1,
        "cell": {
            "id": cell_id,
            "axes": dict(axes or {}),
            "executor": executor,
            "repeat": repeat,
            "environment_id": f"sha256:{hashlib.sha256(cell_id.encode()).hexdigest()[:12]}",
        },
        "fingerprint": fingerprint(**(fingerprint_overrides or {})),
        "settings": {"requested": settings, "applied": settings},
        "scenarios": records,
        "tensors": {"file": "tensors.npz", "sha256": digest, "dtypes": true_dtypes},
        "timings": {"import": 8.0, "total": 20.0},
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:20Z",
    }
    manifest.update(manifest_overrides or {})
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    (directory / "log.txt").write_text(log, encoding="utf-8")
    return directory


def write_repeat(root: Path, cell_id: str, n: int, **kwargs: Any) -> Path:
    """Write repeat ``n`` of a cell under ``root/cell_id/repeats/n``."""
    return write_cell(root / cell_id / "repeats", str(n), repeat=n, **kwargs)


def write_plan(
    root: Path,
    cells: Sequence[str],
    *,
    reference: str | None = None,
    axes: Sequence[str] = (),
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    path = root / "plan.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "cells": list(cells),
                "reference": reference,
                "axes": list(axes),
                "tolerances": dict(tolerances or {}),
                "spec": "matrix.toml",
            }
        ),
        encoding="utf-8",
    )
    return path


def _scenario_of(key: str) -> str:
    parts = key.split("/")
    return parts[1] if parts[0] == "reference" else parts[0]


# --------------------------------------------------------------------------
# A small matrix with one known cause per axis


def base_tensors(seed: int = 0, layers: int = 4) -> dict[str, np.ndarray]:
    """Tensors of one 'mlp' scenario: init, a forward pass with per-layer outputs, train."""
    rng = np.random.RandomState(seed)
    t: dict[str, np.ndarray] = {"mlp/init/kernel": rng.uniform(-1, 1, (4, 8)).astype(np.float32)}
    for i in range(layers):
        t[f"mlp/forward/layer_{i:02d}_dense_{i}"] = rng.uniform(0.5, 2, (6, 8)).astype(np.float32)
    t["mlp/forward/output"] = rng.uniform(0.5, 2, (6, 1)).astype(np.float32)
    t["mlp/train/kernel"] = rng.uniform(0.5, 2, (4, 8)).astype(np.float32)
    t["mlp/train/loss"] = rng.uniform(0.5, 2, (100,)).astype(np.float32)
    t["reference/mlp/forward/output"] = t["mlp/forward/output"].astype(np.float64)
    return t


def one_ulp_up(a: np.ndarray) -> np.ndarray:
    return np.nextafter(a, np.float32(np.inf)).astype(np.float32)


def planted_matrix(root: Path, *, hostile: str | None = None) -> list[str]:
    """2 x 2 x 2 cells; each axis has one planted effect.

    * tensorflow 2.15 -> 2.16: train x (1 + 1e-3)          -> train drift
    * device cpu -> gpu: forward from layer 2 on, +1 ULP   -> forward rounding
    * precision float32 -> mixed_bfloat16: forward from layer 1 on x (1 + 4e-3) -> forward drift

    Returns the cell ids in plan order (the first is the default reference).
    """
    ids = []
    for tf in ("2.15", "2.16"):
        for device in ("cpu", "gpu"):
            for precision in ("float32", "mixed_bfloat16"):
                t = base_tensors()
                layer_keys = sorted(k for k in t if "/forward/layer_" in k)
                fwd = [*layer_keys, "mlp/forward/output"]
                if tf == "2.16":
                    for k in ("mlp/train/kernel", "mlp/train/loss"):
                        t[k] = (t[k] * np.float32(1 + 1e-3)).astype(np.float32)
                if precision == "mixed_bfloat16":
                    for k in fwd[1:]:
                        t[k] = (t[k] * np.float32(1 + 4e-3)).astype(np.float32)
                if device == "gpu":
                    for k in fwd[2:]:
                        t[k] = one_ulp_up(t[k])
                cid = f"tf{tf}-{device}-{precision}"
                axes: dict[str, Any] = {"tensorflow": tf, "device": device, "precision": precision}
                fp = {}
                if hostile is not None and cid == "tf2.16-gpu-mixed_bfloat16":
                    axes["tensorflow"] = tf  # keep the axis value clean for attribution
                    fp = {"packages": {"tensorflow-cpu": hostile}}
                write_cell(root, cid, axes=axes, tensors=t, fingerprint_overrides=fp)
                ids.append(cid)
    write_plan(root, ids, axes=["tensorflow", "device", "precision"])
    return ids


def ulps_up(a: np.ndarray, n: int) -> np.ndarray:
    for _ in range(n):
        a = one_ulp_up(a)
    return a


def context_matrix(root: Path, *, derived_in_plan: bool = True) -> list[str]:
    """2 x 2 cells where one change means different things in different contexts.

    Axes: stack tf-2.15 / tf-2.16 (with tensorflow 2.15 / 2.16 following it:
    a derived axis), precision float32 / mixed_bfloat16, threads 1 everywhere
    (constant).  ``derived_in_plan=False`` writes a plan.json from before
    derived axes were recorded.

    * stack tf-2.15 -> tf-2.16, float32:        train +2 ULP (rounding), forward unchanged
    * stack tf-2.15 -> tf-2.16, mixed_bfloat16: train x (1 + 8e-3) (drift), forward +1 ULP
    * precision float32 -> mixed_bfloat16:      forward from layer 1 on x (1 + 4e-3) (drift)

    Returns the cell ids in plan order.
    """
    ids = []
    for tf in ("2.15", "2.16"):
        for precision in ("float32", "mixed_bfloat16"):
            t = base_tensors()
            fwd = [*sorted(k for k in t if "/forward/layer_" in k), "mlp/forward/output"]
            if precision == "mixed_bfloat16":
                for k in fwd[1:]:
                    t[k] = (t[k] * np.float32(1 + 4e-3)).astype(np.float32)
            if tf == "2.16":
                for k in ("mlp/train/kernel", "mlp/train/loss"):
                    if precision == "float32":
                        t[k] = ulps_up(t[k], 2)
                    else:
                        t[k] = (t[k] * np.float32(1 + 8e-3)).astype(np.float32)
                if precision == "mixed_bfloat16":
                    for k in fwd:
                        t[k] = one_ulp_up(t[k])
            cid = f"tf-{tf}-{precision}"
            axes = {"stack": f"tf-{tf}", "tensorflow": tf, "precision": precision, "threads": 1}
            write_cell(root, cid, axes=axes, tensors=t)
            ids.append(cid)
    plan = write_plan(root, ids, axes=["stack", "tensorflow", "precision", "threads"])
    if derived_in_plan:
        data = json.loads(plan.read_text())
        data["derived_axes"] = ["tensorflow"]
        plan.write_text(json.dumps(data))
    return ids


def chain_cells(root: Path, *, failed: str | None = None) -> list[str]:
    """tensorflow 2.12 .. 2.15 under float32 and mixed_bfloat16.

    forward/output, relative to the previous release: float32: 2.13 same,
    2.14 +1 ULP, 2.15 x (1 + 1e-3); mixed_bfloat16: 2.13 same, 2.14 x (1 + 1e-3),
    2.15 same.  The other phases never change.  ``failed``: the release whose
    float32 cell fails its scenario.
    """
    ids = []
    for precision in ("float32", "mixed_bfloat16"):
        out = base_tensors()["mlp/forward/output"]
        for version in ("2.12", "2.13", "2.14", "2.15"):
            if precision == "float32" and version == "2.14":
                out = one_ulp_up(out)
            if (precision, version) in (("float32", "2.15"), ("mixed_bfloat16", "2.14")):
                out = (out * np.float32(1 + 1e-3)).astype(np.float32)
            t = base_tensors()
            t["mlp/forward/output"] = out
            cid = f"tf{version}-{precision}"
            broken = None
            if failed == version and precision == "float32":
                broken = {"mlp": ("RuntimeError", "boom", "Traceback")}
            write_cell(
                root,
                cid,
                axes={"tensorflow": version, "precision": precision},
                tensors=t,
                failed=broken,
            )
            ids.append(cid)
    return ids
