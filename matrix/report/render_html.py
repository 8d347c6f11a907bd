"""index.html: one self-contained page for someone who has never seen the tool.

It leads with attribution per context (a table of phases x contexts per
change, a phase said once where every context agrees), then the upgrade
chains, the portable tolerances, the heatmap, fingerprints and errors, all
rendered on the server side by Jinja with autoescape on, so the page reads
without JavaScript; a small inline script adds axis filters, the switch
between comparison kinds, per-tensor numbers on demand and the comparison of
any two cells the reader picks (from the digest table of report.json's
``pairs``: each cell's digest per phase, and per digest pair its numbers).  The numbers travel as
JSON inside ``<script type="application/json">`` with ``<``, ``>`` and ``&``
written as ``\\u003c``/``\\u003e``/``\\u0026``, so no artifact string can
close the script element; the script only ever writes ``textContent``.
A Content-Security-Policy forbids every network fetch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from markupsafe import Markup, escape

from matrix.analysis.findings import (
    AttributionRow,
    CellFinding,
    ChainFinding,
    ComparisonFinding,
    Findings,
    LayerPoint,
    LoadFinding,
    PairsFinding,
    PhaseEffect,
    PhaseFinding,
    PortabilityFinding,
    TensorFinding,
    ToleranceFinding,
)
from matrix.report.serialize import number

__all__ = ["CLASS_COLOURS", "embed_json", "pairs_page_data", "render_html"]

#: Colour per drift class: a green-to-red ramp for numeric classes, purple
#: and greys for the classes that carry no number.  Each cell also shows a
#: text label, so colour is never the only cue.
CLASS_COLOURS = {
    "identical": "#1b7837",
    "rounding": "#a6dba0",
    "drift": "#fdb863",
    "divergent": "#d7191c",
    "failed": "#762a83",
    "missing": "#8c8c8c",
    "unsupported": "#e0e0e0",
}

_KIND_TITLES = {
    "reference": "vs reference cell",
    "oracle": "vs float64 oracle",
    "repeat": "across repeats (self-consistency)",
}

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("matrix.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def embed_json(data: Any) -> str:
    """JSON safe to place inside a <script> element."""
    text = json.dumps(
        data, ensure_ascii=True, separators=(",", ":"), sort_keys=True, allow_nan=False
    )
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _short(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    return f"{value:.1e}" if (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3g}"


def _label(phase: PhaseFinding) -> str:
    """The few characters a heatmap cell shows next to its colour."""
    verdict = phase.verdict
    if verdict == "identical":
        return "="
    if verdict == "rounding":
        ulp = phase.max_ulp
        return f"{_short(ulp)}u" if math.isfinite(ulp) else "≈"
    if verdict in ("drift", "divergent"):
        rel = phase.max_rel
        if math.isfinite(rel) and phase.reason.find("shape") < 0:
            return _short(rel)
        return "✕" if verdict == "divergent" else "~"
    return {"failed": "fail", "missing": "—", "unsupported": "n/a"}.get(verdict, str(verdict))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        out: list[tuple[str, str]] = []
        for key in sorted(value):
            out += _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return out or [(prefix, "{}")]
    if isinstance(value, list):
        return [(prefix, ", ".join(str(v) for v in value) or "[]")]
    return [(prefix, "null" if value is None else str(value))]


def _round(value: float) -> float | str | None:
    """4 significant digits: what the page shows; full precision is in report.json."""
    shown = number(value)
    if isinstance(shown, float):
        return float(f"{shown:.4g}")
    return shown


def _tensor_row(t: TensorFinding) -> list[Any]:
    if t.verdict == "identical":
        return [t.key, "identical", t.dtype, list(t.shape)]  # the rest is all zeros
    return [
        t.key,
        t.verdict,
        t.dtype,
        list(t.shape) if t.shape == t.baseline_shape else [list(t.shape), list(t.baseline_shape)],
        _round(t.max_abs),
        _round(t.max_rel),
        _round(t.max_ulp),
        _round(t.fraction_outside),
        t.reason,
        [
            [list(w.index), _round(w.candidate), _round(w.baseline), _round(w.ulp)]
            for w in t.worst[:3]
        ],
    ]


def _layer(found: LayerPoint | None) -> list[Any] | None:
    if found is None:
        return None
    return [found.key, found.verdict, _round(found.max_rel)]


def _td(verdict: str, label: str, detail_id: str, tensors: int, varies: bool) -> str:
    # Built here rather than in the template: 20,000 cells are the bulk of a
    # 1,000-cell page, and every part is escaped all the same.
    if varies:
        return (
            f'<td class="v varies" tabindex="0" data-d="{escape(detail_id)}" '
            f'data-n="{tensors}" data-verdict="{escape(verdict)}" '
            f'title="unseeded on purpose: expected to vary, not counted">~</td>'
        )
    return (
        f'<td class="v v-{escape(verdict)}" tabindex="0" data-d="{escape(detail_id)}" '
        f'data-n="{tensors}">{escape(label)}</td>'
    )


def _context(findings: Findings) -> dict[str, Any]:
    # Axes with one value across the matrix get a line, not a column and a filter.
    all_axes = list(findings.axes)
    values = findings.axis_values
    axes = [a for a in all_axes if len(values.get(a, ())) > 1] or all_axes
    constant = [(a, values[a][0]) for a in all_axes if a not in axes and values.get(a)]
    columns = list(findings.columns)
    cells = findings.cells
    ref_id = findings.reference.cell
    # Per-tensor numbers travel only for phases that are not identical; an
    # identical phase is fully described by its tensor count.
    details: dict[str, Any] = {}
    by_kind: dict[str, dict[str, tuple[int, ComparisonFinding]]] = {}
    for n, comp in enumerate(findings.comparisons):
        if comp.kind in _KIND_TITLES:
            by_kind.setdefault(comp.kind, {})[comp.candidate] = (n, comp)

    heatmaps = []
    empty = '<td class="none"></td>'
    for kind, title in _KIND_TITLES.items():
        comps = by_kind.get(kind, {})
        rows = []
        for cell in cells:
            entry = comps.get(cell.id)
            if entry is None and kind != "reference":
                continue
            phases: dict[str, tuple[int, PhaseFinding]] = {}
            if entry is not None:
                phases = {p.column: (i, p) for i, p in enumerate(entry[1].phases)}
            tds = []
            for col in columns:
                found = phases.get(col)
                if found is None or entry is None:
                    tds.append(empty)
                    continue
                i, phase = found
                detail_id = f"{entry[0]}.{i}"
                if phase.verdict != "identical" or phase.expected_to_vary:
                    loc = phase.localisation
                    details[detail_id] = [
                        phase.reason
                        + (
                            " (unseeded on purpose: expected to vary, left out of every count)"
                            if phase.expected_to_vary
                            else ""
                        ),
                        [loc.layers, _layer(loc.first_change), _layer(loc.first_drift)]
                        if loc
                        else None,
                        [_tensor_row(t) for t in phase.tensors],
                    ]
                tds.append(
                    _td(
                        phase.verdict,
                        _label(phase),
                        detail_id,
                        len(phase.tensors),
                        phase.expected_to_vary,
                    )
                )
            rows.append(
                {
                    "cell": cell,
                    "tds": Markup("".join(tds)),
                    "axes": [_axis_text(cell.axes.get(a)) for a in axes],
                }
            )
        if rows or kind == "reference":
            heatmaps.append({"kind": kind, "title": title, "rows": rows})

    ref_cell = next((c for c in cells if c.id == ref_id), None)
    ref_fp = dict(_flatten(ref_cell.fingerprint)) if ref_cell and ref_cell.fingerprint else {}
    cards = [_card(cell, ref_id, ref_fp) for cell in cells]
    baselines = {
        "reference": f"reference cell {ref_id}",
        "oracle": "the float64 reference (oracle)",
        "repeat": "the cell's own repeated runs",
    }
    portability, errors = _portability(findings.portability)
    return {
        "f": findings,
        "attribution": [_attribution_view(r) for r in findings.attribution],
        "chains": [_chain_view(c) for c in findings.chains],
        "tolerances": _tolerance_groups(findings.tolerances),
        "portability": portability,
        "portability_errors": errors,
        "axes": axes,
        "constant_axes": constant,
        "axis_values": findings.axis_values,
        "columns": columns,
        "heatmaps": heatmaps,
        "cards": cards,
        "colours": CLASS_COLOURS,
        "data_json": embed_json(
            {"details": details, "baselines": baselines, "pairs": pairs_page_data(findings.pairs)}
        ),
    }


def _effect(verdict: str, max_ulp: float, max_rel: float, peak: str = "") -> str:
    """'rounding 9 ULP', 'drift rel 1.6e-03' (``peak``: 'max ' over contexts), or the verdict."""
    if verdict == "rounding" and math.isfinite(max_ulp):
        return f"rounding, {peak}{max_ulp:g} ULP"
    if verdict in ("drift", "divergent") and math.isfinite(max_rel):
        return f"{verdict}, {peak}rel {max_rel:.1e}"
    return verdict


def _shown(p: PhaseEffect | None, peak: str = "") -> dict[str, str] | None:
    if p is None:
        return None
    return {"verdict": p.verdict, "text": _effect(p.verdict, p.max_ulp, p.max_rel, peak)}


def _attribution_view(row: AttributionRow) -> dict[str, Any]:
    """A change as a table: its phases x its context groups, one cell where all agree."""
    by_group = [{p.phase: p for p in g.phases} for g in row.groups]
    phases = []
    for p in row.phases:
        agreed = None
        if p.agreed is not None:
            text = _effect(p.agreed, p.max_ulp, p.max_rel, "max " if len(row.contexts) > 1 else "")
            agreed = {"verdict": p.agreed, "text": text}
        merged = [len(g.contexts) > 1 for g in row.groups]
        phases.append(
            {
                "phase": p.phase,
                "text": p.text,
                "agreed": agreed,
                "cells": [
                    _shown(found.get(p.phase), "max " if many else "")
                    for found, many in zip(by_group, merged, strict=True)
                ],
            }
        )
    layers: dict[str, int] = {}
    for c in row.contexts:
        for note in c.first_layers:
            layers[note] = layers.get(note, 0) + 1
    pairs = sum(len(c.pairs) for c in row.contexts)
    return {"row": row, "phases": phases, "pairs": pairs, "layers": list(layers.items())}


def _chain_view(chain: ChainFinding) -> dict[str, Any]:
    groups = []
    for group in chain.groups:
        many = "max " if len(group.contexts) > 1 else ""
        steps = []
        for step in group.steps:
            found = {p.phase: p for p in step.phases}
            steps.append(
                {"step": step, "cells": [_shown(found.get(p), many) for p in chain.main_phases]}
            )
        groups.append({"group": group, "steps": steps})
    return {"chain": chain, "groups": groups}


def _tolerance_groups(items: tuple[ToleranceFinding, ...]) -> list[dict[str, Any]]:
    groups: dict[str, list[ToleranceFinding]] = {}
    for t in items:
        groups.setdefault(t.label, []).append(t)
    return [
        {"label": label, "rows": group, "cells": len({c for t in group for c in t.cells})}
        for label, group in groups.items()
    ]


def pairs_page_data(pairs: PairsFinding) -> dict[str, Any]:
    """The digest table for the two-cell picker: numbers rounded for display only."""
    index = {c: n for n, c in enumerate(pairs.columns)}
    table: dict[str, list[Any]] = {}
    for p in pairs.phases:
        table[f"{index[p.column]}:{p.baseline}:{p.candidate}"] = [
            p.verdict,
            p.reason,
            _round(p.max_abs),
            _round(p.max_rel),
            _round(p.max_ulp),
            p.expected_to_vary,
            p.identical_tensors,
            [
                [t.key, t.verdict, t.dtype, _round(t.max_abs), _round(t.max_rel), _round(t.max_ulp)]
                for t in p.tensors
            ],
        ]
    return {
        "cells": list(pairs.cells),
        "columns": list(pairs.columns),
        "digests": [list(row) for row in pairs.digests],
        "table": table,
        "skipped": list(pairs.skipped),
    }


def _load_part(load: LoadFinding | None, model: str, errors: dict[str, int]) -> dict[str, str]:
    if load is None:
        return {"model": model, "verdict": "missing", "label": "—", "title": "no record"}
    if load.status == "loaded":
        label = {"identical": "=", "rounding": f"{_short(load.max_ulp)}u"}.get(
            load.verdict, _short(load.max_rel)
        )
        title = f"{load.how or 'loaded'}: {load.reason}"
    elif load.status == "not_saved":
        label, title = "not saved", load.reason
    else:
        number = errors.setdefault(load.reason, len(errors) + 1)
        label, title = f"{load.verdict} [{number}]", f"{load.how or ''} {load.reason}".strip()
    return {"model": model, "verdict": load.verdict, "label": label, "title": title}


def _portability(
    matrices: Sequence[PortabilityFinding],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of each format's saved-in x loaded-in table; the errors numbered once."""
    errors: dict[str, int] = {}
    out = []
    for m in matrices:
        rows = [
            {
                "saver": saver,
                "entries": [
                    [_load_part(m.load(saver, loader, model), model, errors) for model in m.models]
                    for loader in m.cells
                ],
            }
            for saver in m.cells
        ]
        remarks = [
            f"not saved in {s.cell} ({s.model}): {s.reason}" for s in m.saved if s.status != "ok"
        ]
        remarks += [
            f"{s.cell} wrote its {s.model} .keras file as HDF5, not a zip"
            for s in m.saved
            if m.format == "keras" and s.container == "hdf5"
        ]
        out.append({"format": m.format, "cells": m.cells, "rows": rows, "remarks": remarks})
    return out, list(errors)


def _card(cell: CellFinding, ref_id: str | None, ref_fp: Mapping[str, str]) -> dict[str, Any]:
    fp = dict(_flatten(cell.fingerprint)) if cell.fingerprint else {}
    full = not ref_fp or cell.id == ref_id
    diff = [
        (k, fp.get(k, "(absent)"), ref_fp.get(k, "(absent)"))
        for k in sorted(set(fp) | set(ref_fp))
        if fp.get(k) != ref_fp.get(k)
    ]
    return {
        "cell": cell,
        "fingerprint": list(fp.items()) if full else [],
        "fingerprint_diff": [] if full else diff,
        "settings": ", ".join(f"{k}={v}" for k, v in _flatten(cell.applied) if k),
        "tracebacks": [s for s in cell.scenarios if s.error],
    }


def _axis_text(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def render_html(findings: Findings) -> str:
    page: str = _ENV.get_template("report.html.j2").render(**_context(findings))
    return page
