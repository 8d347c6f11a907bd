"""The findings as JSON-ready data: the content of report.json.

One generic walk over the typed findings: dataclasses become objects with
their fields in order, tuples lists, enums their values; NaN becomes null
and infinities "inf"/"-inf" (JSON has neither); every string is made
encodable (a lone surrogate from an artifact becomes U+FFFD).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

from matrix.analysis.findings import Findings
from matrix.untrusted import clean_text

__all__ = ["number", "to_data", "to_json"]


def number(value: float) -> float | str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def to_json(findings: Findings) -> dict[str, Any]:
    data = _walk(findings)
    assert isinstance(data, dict)
    return data


def to_data(value: Any) -> Any:
    """Any part of the findings as JSON-ready data (what report.json holds for it)."""
    return _walk(value)


def _walk(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _walk(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _walk(value.value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return number(value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(k)): _walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v) for v in value]
    raise TypeError(f"cannot serialise {type(value).__name__}")
