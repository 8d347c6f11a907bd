"""What this environment is, as seen from inside the process (DESIGN.md)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from typing import Any

import numpy as np

from scenarios.compat import Framework

__all__ = ["ENV_PREFIXES", "collect", "cpu_info", "framework_packages", "relevant_env"]

# Distributions whose presence or version can change the numbers.
FRAMEWORK_PACKAGES = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-intel",
    "tf-keras",
    "tf-nightly",
    "keras",
    "keras-nightly",
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "torch",
    "numpy",
    "ml-dtypes",
    "h5py",
    "tensorflow-io-gcs-filesystem",
    "intel-extension-for-tensorflow",
    "nvidia-cudnn-cu12",
    "nvidia-cudnn-cu13",
    "nvidia-cublas-cu12",
    "nvidia-cublas",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-runtime",
    "nvidia-cudnn",
)
ENV_PREFIXES = ("TF_", "KERAS_", "XLA_", "JAX_", "TORCH_", "CUDA_", "CUBLAS_", "NVIDIA_")
ENV_NAMES = (
    "PYTHONHASHSEED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "XLA_FLAGS",
    "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
)
# /proc/cpuinfo flags that change float results (FMA contraction, AVX-512
# reductions, BF16/VNNI/AMX kernels oneDNN may pick).
NUMERIC_FLAGS = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512.*|amx.*|avx_vnni.*)$")


def framework_packages() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in FRAMEWORK_PACKAGES or name.startswith(("nvidia-", "jax-cuda")):
            found[name] = dist.version
    return dict(sorted(found.items()))


def relevant_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: v for k, v in sorted(env.items()) if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                cpuinfo_text = fh.read()
        except OSError:
            cpuinfo_text = ""
    model = None
    flags: list[str] = []
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = sorted({f for f in value.split() if NUMERIC_FLAGS.match(f)})
    if model is None:
        model = platform.processor() or None
    try:
        count: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count()
    return {"model": model, "flags": flags, "count": count, "machine": platform.machine()}


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as fh:
            match = re.search(r"Kernel Module\s+([\d.]+)", fh.read())
            if match:
                return match.group(1)
    except OSError:
        pass
    try:
        proc = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (
            proc.stdout.strip().splitlines()[0]
            if proc.returncode == 0 and proc.stdout.strip()
            else None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def collect(
    fw: Framework,
    *,
    applied: dict[str, Any],
    determinism: dict[str, Any],
    environment_id: str | None,
) -> dict[str, Any]:
    device = fw.device_info()
    if device["kind"] == "gpu":
        device["driver"] = _nvidia_driver()
        device["cuda_libraries"] = {
            k: v for k, v in framework_packages().items() if k.startswith("nvidia-")
        }
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "packages": framework_packages(),
        "keras_version": fw.version,
        "keras_major": fw.major,
        "keras_module": fw.module_name,
        "backend": fw.backend,
        "device": device,
        "cpu": cpu_info(),
        "onednn": fw.onednn_effective(),
        "threads": applied.get("threads"),
        "determinism": determinism,
        "jit": applied.get("jit"),
        "env": relevant_env(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "environment_id": environment_id,
    }
