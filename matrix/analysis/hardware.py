"""What the hardware decided in one cell, as typed data for the report: the
machine, the instruction-set cap and what each numeric library dispatched
to, and the defaults the framework chose from the CPU (oneDNN on or off,
threads, bfloat16 kernels, TensorFloat-32), each with who chose it and why.

Read from the cell's fingerprint, which is untrusted: anything malformed
is left out, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from matrix.results.machine import machine_of
from scenarios.hardware import onednn_default

__all__ = ["DefaultChoice", "HardwareFinding", "LibraryDispatch", "hardware_of"]


@dataclass(frozen=True, kw_only=True)
class LibraryDispatch:
    library: str  # onednn | aten | xla | openblas
    cap: str | None  # what the cap asked of it (None: no cap)
    dispatched: str | None  # what it reported it dispatched to (None: it said nothing)
    honoured: bool | None  # stayed within the cap (None: cannot tell, or no cap)


@dataclass(frozen=True, kw_only=True)
class DefaultChoice:
    name: str  # onednn | threads | bfloat16 | tf32
    value: str
    chosen_by: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class HardwareFinding:
    machine: str | None
    cpu_model: str | None
    isa: str  # the cap asked for: native, avx512, avx2, avx, sse41
    isa_supported: bool | None  # None: the manifest does not say
    missing_features: tuple[str, ...]
    libraries: tuple[LibraryDispatch, ...]
    uncapped: tuple[str, ...]  # code compiled for one instruction set (TF's Eigen)
    defaults: tuple[DefaultChoice, ...]

    @property
    def isa_summary(self) -> str:
        """'avx2: onednn Intel AVX2 (within the cap), openblas Haswell (within the cap)'."""
        if self.isa_supported is False:
            return (
                f"{self.isa}: unsupported here (the CPU lacks {', '.join(self.missing_features)})"
            )
        parts = []
        for lib in self.libraries:
            if lib.dispatched is None and lib.cap is None:
                continue
            verdict = {True: "within the cap", False: "ignored the cap", None: ""}[lib.honoured]
            shown = lib.dispatched or (f"capped at {lib.cap}" if lib.cap else "")
            parts.append(f"{lib.library} {shown}" + (f" ({verdict})" if verdict else ""))
        if self.uncapped and self.isa != "native":
            parts.append(f"{', '.join(self.uncapped)} not cappable")
        return f"{self.isa}: {', '.join(parts)}" if parts else self.isa

    @property
    def defaults_summary(self) -> str:
        """'onednn on (tensorflow: ...); threads 2'."""
        return "; ".join(
            f"{d.name} {d.value} ({d.chosen_by}{': ' + d.reason if d.reason else ''})"
            for d in self.defaults
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "unknown"
    return str(value)


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    found = data.get(key)
    return found if isinstance(found, Mapping) else {}


def hardware_of(fingerprint: Mapping[str, Any]) -> HardwareFinding:
    fp = fingerprint if isinstance(fingerprint, Mapping) else {}
    machine = machine_of(fp)
    isa = _table(fp, "isa")
    libraries = []
    raw_libs = _table(isa, "libraries")
    for name, lib in raw_libs.items():
        if not isinstance(lib, Mapping):
            continue
        honoured = lib.get("honoured")
        libraries.append(
            LibraryDispatch(
                library=str(name),
                cap=_text(lib.get("cap")),
                dispatched=_text(lib.get("dispatched")),
                honoured=honoured if isinstance(honoured, bool) else None,
            )
        )
    defaults = []
    raw_defaults = _table(fp, "defaults")
    for name, choice in raw_defaults.items():
        if isinstance(choice, Mapping):
            defaults.append(
                DefaultChoice(
                    name=str(name),
                    value=_shown(choice.get("value")),
                    chosen_by=_text(choice.get("chosen_by")) or "unknown",
                    reason=_text(choice.get("reason")) or "",
                )
            )
    if "defaults" not in fp:
        defaults = list(_derived_defaults(fp))
    missing = isa.get("missing")
    uncapped = isa.get("fixed")
    supported = isa.get("cpu_supports")
    return HardwareFinding(
        machine=machine.label if machine else None,
        cpu_model=machine.cpu_model if machine else None,
        isa=_text(isa.get("requested")) or "native",
        isa_supported=supported if isinstance(supported, bool) else None,
        missing_features=tuple(m for m in missing if isinstance(m, str))
        if isinstance(missing, list)
        else (),
        libraries=tuple(libraries),
        uncapped=tuple(u for u in uncapped if isinstance(u, str))
        if isinstance(uncapped, list)
        else (),
        defaults=tuple(defaults),
    )


def _derived_defaults(fp: Mapping[str, Any]) -> Iterator[DefaultChoice]:
    """For a fingerprint that predates its ``defaults`` table: TensorFlow's
    oneDNN choice as it reported it, with the reason the recorded CPU flags
    give, and the thread count; nothing where the fingerprint lacks either."""
    cpu = _table(fp, "cpu")
    flags = cpu.get("flags")
    onednn = fp.get("onednn")
    if fp.get("backend") == "tensorflow" and isinstance(onednn, bool) and isinstance(flags, list):
        rule = onednn_default(
            (f for f in flags if isinstance(f, str)), _text(cpu.get("machine")) or "x86_64"
        )
        yield DefaultChoice(
            name="onednn",
            value=_shown(onednn),
            chosen_by="tensorflow",
            reason=f"{rule['reason']} (derived from the recorded CPU flags)",
        )
    threads = fp.get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool):
        yield DefaultChoice(
            name="threads",
            value=str(threads),
            chosen_by=_text(fp.get("backend")) or "unknown",
            reason="as the framework reported it",
        )
