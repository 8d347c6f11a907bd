"""report.json: the findings, deterministic byte for byte.

Keys are sorted and the only time-dependent field is ``generated_at``, so the
merge of shards and an unsharded run give the same file when it is pinned.
"""

from __future__ import annotations

import json

from matrix.analysis.findings import Findings
from matrix.paths import REPORT_SCHEMA
from matrix.report.serialize import to_json

__all__ = ["REPORT_SCHEMA_PATH", "render_json"]

REPORT_SCHEMA_PATH = REPORT_SCHEMA


def render_json(findings: Findings) -> str:
    # allow_nan=False: the serialiser writes NaN as null and infinities as strings.
    # Compact (no indent) so that json uses its C encoder: a 1,000-cell report
    # is tens of MB and indenting costs seconds; `python -m json.tool` reads it.
    text = json.dumps(
        to_json(findings), sort_keys=True, ensure_ascii=False, allow_nan=False,
        separators=(",", ":"),
    )  # fmt: skip
    return text + "\n"
