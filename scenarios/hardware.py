"""What the CPU decides: instruction-set caps, the defaults a framework picks
from the CPU, and what each numeric library actually dispatched to.

An ``isa`` value imitates a smaller CPU on this one by capping every library
that dispatches at run time, through the library's own control, before it is
imported:

=========  ==================  ===============  =====================  ===========
isa        oneDNN (TF, torch)  XLA CPU (JAX,    ATen (torch) / MKL     OpenBLAS
                               TF jit)                                 (NumPy)
=========  ==================  ===============  =====================  ===========
avx512     AVX512_CORE         AVX512           avx512 / AVX512        SkylakeX
avx2       AVX2                AVX2             avx2 / AVX2            Haswell
avx        AVX                 AVX              default / AVX          Sandybridge
sse41      SSE41               SSE4_2           default / SSE4_2       Nehalem
=========  ==================  ===============  =====================  ===========

Code compiled for a fixed instruction set (TensorFlow's Eigen kernels, the
NumPy baseline) cannot be capped: the manifest says so rather than pretend.
A cap the CPU cannot honour (``avx512`` on an AVX2 machine) makes the cell
``unsupported``, never a silent native run.

Standard library only: the runner calls this before NumPy or a framework is
imported. After the run, :func:`observe` reads what the libraries reported.
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import os
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ISA_LEVELS",
    "NUMERIC_FLAGS",
    "IsaCap",
    "binary_mentions",
    "cpu_flags",
    "cpu_info",
    "isa_cap",
    "missing_features",
    "observe_log",
    "onednn_default",
    "openblas_core",
]


@dataclass(frozen=True, kw_only=True)
class IsaCap:
    """One ``isa`` value in each library's own words."""

    name: str
    requires: tuple[str, ...]  # /proc/cpuinfo flags the CPU must have
    onednn: str
    xla: str
    aten: str
    mkl: str
    openblas: str
    rank: int  # for "dispatched at or below the cap"


#: The ``isa`` axis's capped values, widest first (``native``: no cap).
ISA_LEVELS: dict[str, IsaCap] = {
    cap.name: cap
    for cap in (
        IsaCap(
            name="avx512",
            requires=("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"),
            onednn="AVX512_CORE",
            xla="AVX512",
            aten="avx512",
            mkl="AVX512",
            openblas="SkylakeX",
            rank=4,
        ),
        IsaCap(
            name="avx2",
            requires=("avx2", "fma"),
            onednn="AVX2",
            xla="AVX2",
            aten="avx2",
            mkl="AVX2",
            openblas="Haswell",
            rank=3,
        ),
        IsaCap(
            name="avx",
            requires=("avx",),
            onednn="AVX",
            xla="AVX",
            aten="default",
            mkl="AVX",
            openblas="Sandybridge",
            rank=2,
        ),
        IsaCap(
            name="sse41",
            requires=("sse4_1",),
            onednn="SSE41",
            xla="SSE4_2",
            aten="default",
            mkl="SSE4_2",
            openblas="Nehalem",
            rank=1,
        ),
    )
}


def isa_cap(value: str) -> IsaCap | None:
    """The cap for an ``isa`` value; None for ``native``."""
    return ISA_LEVELS.get(value)


def cpu_flags(cpuinfo_text: str | None = None) -> frozenset[str]:
    """Every flag of the first CPU in /proc/cpuinfo (empty where there is none)."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                cpuinfo_text = fh.read()
        except OSError:
            return frozenset()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# /proc/cpuinfo flags that change float results (FMA contraction, AVX-512
# reductions, BF16/VNNI/AMX kernels oneDNN may pick).
NUMERIC_FLAGS = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512.*|amx.*|avx_vnni.*)$")


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The CPU as the fingerprint records it: model, family, the flags that
    change numerics, how many CPUs this process may use, the architecture."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                cpuinfo_text = fh.read()
        except OSError:
            cpuinfo_text = ""
    fields: dict[str, str] = {}
    for line in cpuinfo_text.splitlines():
        if not line.strip():
            if fields:
                break  # the first CPU is enough: they are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    family = None
    if "cpu family" in fields:
        vendor, model = fields.get("vendor_id", "?"), fields.get("model", "?")
        family = f"{vendor} family {fields['cpu family']} model {model}"
    try:
        count: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count()
    return {
        "model": fields.get("model name") or platform.processor() or None,
        "family": family,
        "flags": sorted({f for f in flags if NUMERIC_FLAGS.match(f)}),
        "count": count,
        "machine": platform.machine(),
    }


def missing_features(cap: IsaCap, flags: Iterable[str]) -> list[str]:
    """The features ``cap`` needs that the CPU lacks (empty: it can run it)."""
    have = set(flags)
    return [f for f in cap.requires if f not in have]


# TensorFlow (util.cc, IsMKLEnabled) turns its oneDNN kernels on by default
# on Linux x86 only when the CPU has one of these neural-network features.
_ONEDNN_DEFAULT_FEATURES = (
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def onednn_default(flags: Iterable[str], machine: str) -> dict[str, Any]:
    """What TensorFlow's oneDNN default is on this CPU, and why (``expected``
    None where the x86 rule does not apply)."""
    if machine not in ("x86_64", "AMD64", "i686", "i386"):
        return {
            "expected": None,
            "features": [],
            "reason": f"not an x86 CPU ({machine}): the x86 rule does not apply; "
            "what TensorFlow chose is recorded as it reported it",
        }
    have = sorted(set(flags) & set(_ONEDNN_DEFAULT_FEATURES))
    wanted = "/".join(f.upper() for f in _ONEDNN_DEFAULT_FEATURES)
    if have:
        reason = (
            f"TensorFlow turns oneDNN on by default on x86 CPUs with {wanted}; "
            f"this CPU has {', '.join(have)}"
        )
    else:
        reason = (
            f"TensorFlow turns oneDNN on by default only on x86 CPUs with {wanted}; "
            "this CPU has none of them"
        )
    return {"expected": bool(have), "features": have, "reason": reason}


def binary_mentions(package: str, needles: Iterable[str]) -> dict[str, bool]:
    """Whether the shared libraries of an installed package contain each
    string, found without importing it.

    A library's flag names and option words are in its binary: an XLA that
    does not know ``xla_cpu_max_isa`` aborts the process when it meets the
    flag, and a oneDNN older than 3.0 reads ``ONEDNN_VERBOSE=profile_create``
    as "off", so both are checked before either variable is set.
    """
    wanted = {n: n.encode() for n in needles}
    found = dict.fromkeys(wanted, False)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return found
    if spec is None or not spec.submodule_search_locations:
        return found
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).rglob("*.so*")):
            try:
                if not path.is_file() or path.stat().st_size < 1 << 20:
                    continue
                with (
                    open(path, "rb") as fh,
                    mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m,
                ):
                    for name, raw in wanted.items():
                        if not found[name] and m.find(raw) >= 0:
                            found[name] = True
            except (OSError, ValueError):
                continue
            if all(found.values()):
                return found
    return found


# ---- after the run: what the libraries said ------------------------------------------

_ONEDNN_LINE = re.compile(r"^(?:onednn|dnnl|mkldnn)_verbose,(?:v\d+,)?(.*)$")
# oneDNN's own names of what it dispatched to, widest last.
_ONEDNN_ISA_RANK = (
    ("sse4.1", 1),
    ("sse41", 1),
    ("avx2", 3),
    ("avx-512", 4),
    ("avx512", 4),
    ("avx", 2),
)


def _onednn_rank(text: str) -> int | None:
    lowered = text.lower()
    for word, rank in _ONEDNN_ISA_RANK:
        if word in lowered:
            return rank
    return None


def observe_log(text: str) -> dict[str, Any]:
    """oneDNN's verbose lines in a run's log: its version, the instruction
    set it dispatched to and the kernels it created."""
    version = isa = None
    kernels: list[str] = []
    for line in text.splitlines():
        found = _ONEDNN_LINE.match(line.strip())
        if not found:
            continue
        fields = found.group(1).split(",")
        if fields[:1] == ["info"]:
            rest = ",".join(fields[1:])
            if rest.startswith("oneDNN v") or rest.startswith("DNNL v"):
                version = rest.split()[1] if len(rest.split()) > 1 else rest
            elif rest.startswith("cpu,isa:"):
                isa = rest.removeprefix("cpu,isa:").strip()
        elif len(fields) > 4 and fields[0] == "primitive" and fields[1].startswith("create"):
            # primitive,create:cache_miss,cpu,<kind>,<implementation>,...
            kernel = f"{fields[3]}:{fields[4]}"
            if kernel not in kernels:
                kernels.append(kernel)
        elif len(fields) > 3 and fields[0].startswith("create"):
            kernel = f"{fields[2]}:{fields[3]}"  # oneDNN 2.x: create,cpu,<kind>,<impl>
            if kernel not in kernels:
                kernels.append(kernel)
    return {"version": version, "isa": isa, "kernels": kernels[:40]}


def onednn_honours(cap: IsaCap | None, observed_isa: str | None) -> bool | None:
    """Whether oneDNN stayed at or below the cap (None: it said nothing)."""
    if cap is None or observed_isa is None:
        return None
    rank = _onednn_rank(observed_isa)
    return None if rank is None else rank <= cap.rank


def openblas_core() -> str | None:
    """The kernel set NumPy's bundled OpenBLAS chose at load (call after
    ``import numpy``): read from the loaded library itself."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in (
            "scipy_openblas_get_corename64_",
            "scipy_openblas_get_corename",
            "openblas_get_corename64_",
            "openblas_get_corename",
        ):
            fn = getattr(lib, symbol, None)
            if fn is None:
                continue
            fn.restype = ctypes.c_char_p
            raw = fn()
            return raw.decode("ascii", "replace").strip() if raw else None
    return None


def summarise_isa(
    requested: str,
    applied: Mapping[str, str],
    observed: Mapping[str, Any],
    *,
    flags: Iterable[str],
) -> dict[str, Any]:
    """The manifest's ``fingerprint.isa``: per library the cap set, what it
    reported, and whether it honoured the cap (None where it cannot tell)."""
    cap = isa_cap(requested)
    libraries: dict[str, dict[str, Any]] = {}
    onednn = observed.get("onednn") or {}
    libraries["onednn"] = {
        "cap": applied.get("ONEDNN_MAX_CPU_ISA"),
        "dispatched": onednn.get("isa"),
        "version": onednn.get("version"),
        "kernels": onednn.get("kernels", []),
        "honoured": onednn_honours(cap, onednn.get("isa")),
    }
    if "aten" in observed:
        aten = observed["aten"]
        honoured = None
        if cap is not None and isinstance(aten, str):
            order = {"default": 1, "avx2": 3, "avx512": 4}
            got = order.get(aten.lower().removeprefix("zvector"))
            honoured = None if got is None else got <= order.get(cap.aten, 1)
        libraries["aten"] = {
            "cap": applied.get("ATEN_CPU_CAPABILITY"),
            "dispatched": aten,
            "honoured": honoured,
        }
    libraries["xla"] = {
        "cap": applied.get("xla_cpu_max_isa"),
        "supported": observed.get("xla_cap_supported"),
        # XLA reports nothing back; a cap it accepted is a cap it applies.
        "honoured": None,
    }
    core = observed.get("openblas")
    libraries["openblas"] = {
        "cap": applied.get("OPENBLAS_CORETYPE"),
        "dispatched": core,
        "honoured": (None if cap is None or core is None else _openblas_below(core, cap)),
    }
    return {
        "requested": requested,
        "cpu_supports": cap is None or not missing_features(cap, flags),
        "missing": [] if cap is None else missing_features(cap, flags),
        "libraries": libraries,
        "fixed": observed.get("fixed", []),
    }


# OpenBLAS core names by the widest instruction set their kernels use, on
# the same scale as IsaCap.rank (Zen cores run the Haswell kernels).
_OPENBLAS_RANK = {
    "prescott": 0, "core2": 0, "nehalem": 1, "sandybridge": 2, "haswell": 3, "zen": 3,
    "skylakex": 4, "cooperlake": 4, "sapphirerapids": 4,
}  # fmt: skip


def _openblas_below(core: str, cap: IsaCap) -> bool:
    rank = _OPENBLAS_RANK.get(core.lower())
    return rank is not None and rank <= cap.rank
