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

from scenarios import hardware
from scenarios.compat import Framework

__all__ = [
    "ENV_PREFIXES",
    "collect",
    "cpu_info",
    "framework_packages",
    "hardware_defaults",
    "isa_block",
    "relevant_env",
]

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
ENV_PREFIXES = (
    "TF_", "KERAS_", "XLA_", "JAX_", "TORCH_", "CUDA_", "CUBLAS_", "NVIDIA_",
    # the instruction-set caps and dispatch reports of the numeric libraries
    "ONEDNN_", "DNNL_", "ATEN_", "MKL_", "OPENBLAS_", "NPY_",
)  # fmt: skip
ENV_NAMES = (
    "PYTHONHASHSEED",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "XLA_FLAGS",
    "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
)

cpu_info = hardware.cpu_info


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


def isa_block(requested: str, observed: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint.isa``: the cap asked for, and per library what was set,
    what it reported back and whether it stayed within the cap."""
    env = os.environ
    applied = {
        name: env[name]
        for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE")
        if name in env
    }
    flag = re.search(r"--xla_cpu_max_isa=(\S+)", env.get("XLA_FLAGS", ""))
    if flag:
        applied["xla_cpu_max_isa"] = flag.group(1)
    return hardware.summarise_isa(requested, applied, observed, flags=hardware.cpu_flags())


def hardware_defaults(
    fw: Framework, *, requested: dict[str, Any], applied: dict[str, Any]
) -> dict[str, Any]:
    """The paths the framework chose from the hardware, each with who chose
    it and why: what makes one machine's defaults differ from another's."""
    flags = hardware.cpu_flags()
    out: dict[str, Any] = {}
    onednn_var = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if fw.backend == "tensorflow":
        rule = hardware.onednn_default(flags, platform.machine())
        cpu_default = "on" if rule["expected"] else "off"
        out["onednn"] = {
            "value": applied.get("onednn"),
            "chosen_by": "TF_ENABLE_ONEDNN_OPTS" if onednn_var is not None else "tensorflow",
            "cpu_default": rule["expected"],
            "reason": rule["reason"]
            if onednn_var is None
            else f"TF_ENABLE_ONEDNN_OPTS={onednn_var}; this CPU's default is {cpu_default}: "
            + rule["reason"],
        }
    elif fw.backend == "torch":
        out["onednn"] = {
            "value": applied.get("onednn"),
            "chosen_by": "settings" if requested.get("onednn") is not None else "torch",
            "cpu_default": True,
            "reason": "torch uses its oneDNN (mkldnn) kernels on any x86 CPU when built with them",
        }
    if not requested.get("threads"):
        out["threads"] = {
            "value": applied.get("threads"),
            "chosen_by": fw.backend,
            "reason": f"one intra-op thread per CPU this process may use ({cpu_info()['count']})",
        }
    if requested.get("precision") == "mixed_bfloat16":
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        out["bfloat16"] = {
            "value": "native" if native else "emulated",
            "chosen_by": "cpu",
            "reason": f"this CPU has {', '.join(native)}: bfloat16 kernels can run natively"
            if native
            else "this CPU has no bfloat16 instructions: bfloat16 math is done in float32 "
            "and rounded",
        }
    if requested.get("tf32") is None:
        out["tf32"] = {
            "value": applied.get("tf32"),
            "chosen_by": fw.backend,
            "reason": "TensorFloat-32 exists only on NVIDIA GPUs (Ampere and later); this "
            "value is the backend's own default switch",
        }
    return out


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
