"""The machine a cell ran on, derived from its fingerprint.

A machine is what can change numbers without any software change: the CPU
model and family and the instruction-set flags that change numerics (FMA,
AVX-512, VNNI, BF16, AMX), and for GPU cells the GPU model, its compute
capability and the driver (the CUDA and cuDNN libraries are the
environment's, recorded in each fingerprint). Its label is readable
("amd-epyc-avx2", "amd-epyc-avx512-bf16", "intel-xeon-amx+nvidia-h200") and
stable: the same kind of host gives the same label wherever it runs.

When results from several machines are merged, the machine becomes an axis
and a cell is named ``<cell-id>@<machine>``, so the same cell from two hosts
is kept twice and compared, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["MACHINE_AXIS", "UNKNOWN", "Machine", "distinct_labels", "isa_level", "machine_of"]

MACHINE_AXIS = "machine"
UNKNOWN = "unknown"

# The widest instruction-set feature decides the kernels a library picks:
# (level, the flag prefix that marks it), widest first.
_LEVELS = (
    ("amx", "amx"),
    ("avx512-bf16", "avx512_bf16"),
    ("avx512-vnni", "avx512_vnni"),
    ("avx512", "avx512f"),
    ("avx2", "avx2"),
    ("avx", "avx"),
)


@dataclass(frozen=True, kw_only=True)
class Machine:
    cpu_label: str  # "amd-epyc-avx2": the CPU's model and widest numeric ISA
    cpu_model: str | None
    cpu_family: str | None
    flags: tuple[str, ...]
    arch: str | None
    gpu: Mapping[str, Any] | None = None

    @property
    def gpu_label(self) -> str | None:
        """The GPU this cell saw ("nvidia-h200"), if it saw one."""
        return _slug(self.gpu.get("name")) if self.gpu else None

    @property
    def label(self) -> str:
        return self.cpu_label + (f"+{self.gpu_label}" if self.gpu else "")

    def host(self) -> Machine:
        """The machine as its CPU alone: what a cell that hid the GPU sees of it."""
        return replace(self, gpu=None)

    @property
    def key(self) -> str:
        """Everything that defines the machine, as one string (for the cache)."""
        # The family is shown, not keyed: older manifests do not record it.
        return json.dumps(
            {
                "model": self.cpu_model,
                "flags": list(self.flags),
                "arch": self.arch,
                "gpu": dict(self.gpu) if self.gpu else None,
            },
            sort_keys=True,
        )


def isa_level(flags: Iterable[str]) -> str:
    found = set(flags)
    for name, marker in _LEVELS:
        if any(f == marker or (marker == "amx" and f.startswith("amx")) for f in found):
            return name
    return "sse"


def _slug(text: str | None) -> str:
    words = re.sub(r"\((?:r|tm|R|TM)\)", "", text or "")
    words = re.sub(r"\b(processor|cpu|\d+-core)\b", "", words, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")
    return slug[:40].strip("-") or "cpu"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.isprintable() else None


def machine_of(fingerprint: Mapping[str, Any]) -> Machine | None:
    """The machine of one fingerprint; None when it says nothing about the CPU."""
    cpu = fingerprint.get("cpu") if isinstance(fingerprint, Mapping) else None
    if not isinstance(cpu, Mapping):
        return None
    raw_flags = cpu.get("flags")
    flags = tuple(
        sorted({f for f in raw_flags if isinstance(f, str) and f.isprintable()})
        if isinstance(raw_flags, list)
        else ()
    )
    model, family, arch = (
        _text(cpu.get("model")),
        _text(cpu.get("family")),
        _text(cpu.get("machine")),
    )
    if model is None and not flags:
        return None
    x86 = arch in (None, "x86_64", "AMD64", "i686", "i386")
    # Off x86 the fingerprint keeps no instruction-set flags: the architecture says it.
    cpu_label = f"{_slug(model)}-{isa_level(flags) if x86 else _slug(arch)}"
    gpu = None
    device = fingerprint.get("device")
    if isinstance(device, Mapping) and device.get("kind") == "gpu":
        # What each backend reports beside these differs (torch names its
        # CUDA and cuDNN, JAX does not): the GPU is the same one either way.
        gpu = {k: _text(device.get(k)) for k in ("name", "driver", "compute_capability")}
    return Machine(
        cpu_label=cpu_label, cpu_model=model, cpu_family=family, flags=flags, arch=arch, gpu=gpu
    )


def distinct_labels(machines: Mapping[str, Machine]) -> dict[str, str]:
    """A label per machine key, made unique where two different machines
    would share one (same model and level, other flags): a short hash is added."""
    by_label: dict[str, set[str]] = {}
    for key, machine in machines.items():
        by_label.setdefault(machine.label, set()).add(key)
    out: dict[str, str] = {}
    for key, machine in machines.items():
        clash = len(by_label[machine.label]) > 1
        suffix = "-" + hashlib.sha256(key.encode()).hexdigest()[:6] if clash else ""
        out[key] = machine.label + suffix
    return out
