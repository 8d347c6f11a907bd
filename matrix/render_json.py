"""report.json: the findings dict, deterministic byte for byte.

Keys are sorted and the only time-dependent field is ``generated_at``, so the
merge of shards and an unsharded run give the same file when it is pinned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["REPORT_SCHEMA_PATH", "render_json"]

REPORT_SCHEMA_PATH = Path(__file__).resolve().parent / "report.schema.json"


def render_json(findings: Mapping[str, Any]) -> str:
    # allow_nan=False: findings carry NaN as null and infinities as strings.
    # Compact (no indent) so that json uses its C encoder: a 1,000-cell report
    # is tens of MB and indenting costs seconds; `python -m json.tool` reads it.
    text = json.dumps(
        findings, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    return text + "\n"
