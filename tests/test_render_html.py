from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from artifact_factory import base_tensors, planted_matrix, write_cell

from matrix.report.command import build_report
from matrix.report.render_html import embed_json

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
PWN = "document.body.dataset.pwned='1'"
HOSTILE_AXIS = f"2.99<script>{PWN}</script>"
HOSTILE_ERROR = (
    f'<img id=pwned src=x onerror="{PWN}"> \'quotes\' "double" ünïcødé ✓ </pre></script>'
)
HOSTILE_CELL = "zz-\"quoted\"-'single'-ünï<b>"


class Dom(HTMLParser):
    """Element list of a serialized page: (tag, attrs) in document order, plus text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        out = []
        for t, a in self.elements:
            if t != tag:
                continue
            if all(
                (a.get(k.rstrip("_")) or "").split().count(v) if k == "class_" else a.get(k) == v
                for k, v in attrs.items()
            ):
                out.append(a)
        return out


def hostile_results(root: Path) -> Path:
    planted_matrix(root, hostile=HOSTILE_ERROR)
    write_cell(
        root,
        HOSTILE_CELL,
        axes={"tensorflow": HOSTILE_AXIS, "device": "cpu", "precision": "float32"},
        tensors=base_tensors(),
        failed={"mlp": ("ValueError", HOSTILE_ERROR, f"Traceback:\n  {HOSTILE_ERROR}\nValueError")},
        log=HOSTILE_ERROR,
    )
    return root


def test_embed_json_cannot_close_the_script() -> None:
    text = embed_json({"s": "</script><script>alert(1)</script>&"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"s": "</script><script>alert(1)</script>&"}


def test_static_page_is_self_contained_and_inert(tmp_path: Path) -> None:
    hostile_results(tmp_path)
    build_report([tmp_path], generated_at="2026-01-01T00:00:00Z")
    html = (tmp_path / "report" / "index.html").read_text()
    dom = Dom(html)
    # exactly our two script elements; no injected element of any kind
    assert len(dom.find("script")) == 2
    assert dom.find("img") == [] and not any(a.get("id") == "pwned" for _, a in dom.elements)
    assert not any(k.startswith("on") for _, a in dom.elements for k in a)
    # no external asset, no network
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html
    assert "default-src 'none'" in html
    # the hostile strings are there, as text
    text = "".join(dom.text)
    assert HOSTILE_ERROR.split(">")[0] in text  # '<img id=pwned src=x onerror="...' shown literally
    assert any(a.get("data-cell") == HOSTILE_CELL for _, a in dom.elements)
    assert any(a.get("data-a0") == HOSTILE_AXIS for _, a in dom.elements)
    assert "ünïcødé ✓" in text
    # markdown: escaped too
    md = (tmp_path / "report" / "report.md").read_text()
    assert "<img" not in md and "<script" not in md and "&lt;img" in md


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if IN_CI:
        pytest.fail("headless Chromium is required under CI (apt-get install -y chromium)")
    pytest.skip("chromium not installed (apt-get install -y chromium)")


def run_chromium(*args: str, tmp: Path) -> str:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",  # containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1400,1800",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = hostile_results(tmp_path_factory.mktemp("results"))
    build_report([root], generated_at="2026-01-01T00:00:00Z")
    report = json.loads((root / "report" / "report.json").read_text())
    return {"root": root, "page": root / "report" / "index.html", "report": report}


@pytest.mark.browser
def test_dom_after_scripts_ran(rendered: dict[str, Any], tmp_path: Path) -> None:
    dom = Dom(run_chromium("--dump-dom", rendered["page"].as_uri(), tmp=tmp_path))
    report = rendered["report"]
    assert dom.find("body", **{"data-ready": "1"}), "the page script did not finish"
    assert dom.find("body", **{"data-pwned": "1"}) == []
    assert dom.find("img") == [] and len(dom.find("script")) == 2
    rows = [
        a for t, a in dom.elements if t == "tr" and "cell-row" in (a.get("class") or "").split()
    ]
    ref_rows = rows[: len(report["cells"])]  # the reference heatmap comes first
    assert [a["data-cell"] for a in ref_rows] == [c["id"] for c in report["cells"]]
    assert all(a.get("hidden") is None for a in ref_rows)
    heat = [a for t, a in dom.elements if t == "td" and "v" in (a.get("class") or "").split()]
    ref_comp = [c for c in report["comparisons"] if c["kind"] == "reference"]
    n_ref = sum(len(c["phases"]) for c in ref_comp)
    assert (
        len(
            [
                a
                for a in heat
                if a.get("data-d", "").split(".")[0]
                in {str(report["comparisons"].index(c)) for c in ref_comp}
            ]
        )
        == n_ref
    )
    classes = {c for a in heat for c in (a.get("class") or "").split() if c.startswith("v-")}
    assert {"v-identical", "v-rounding", "v-drift", "v-failed"} <= classes
    text = "".join(dom.text)
    assert f"showing {len(report['cells'])} of {len(report['cells'])} cells" in text


@pytest.mark.browser
def test_filter_and_detail_from_the_url(rendered: dict[str, Any], tmp_path: Path) -> None:
    report = rendered["report"]
    # open the details of tf2.16-cpu-float32's train phase vs the reference
    n = next(
        i
        for i, c in enumerate(report["comparisons"])
        if c["kind"] == "reference" and c["candidate"] == "tf2.16-cpu-float32"
    )
    p = next(
        i for i, ph in enumerate(report["comparisons"][n]["phases"]) if ph["column"] == "mlp/train"
    )
    url = rendered["page"].as_uri() + f"#axis.device=gpu&detail={n}.{p}"
    dom = Dom(run_chromium("--dump-dom", url, tmp=tmp_path))
    rows = [
        a for t, a in dom.elements if t == "tr" and "cell-row" in (a.get("class") or "").split()
    ]
    heat_rows = rows[: len(report["cells"])]  # the reference heatmap comes first
    visible = [a["data-cell"] for a in heat_rows if a.get("hidden") is None]
    expected = [c["id"] for c in report["cells"] if c["axes"].get("device") == "gpu"]
    assert visible == expected and 0 < len(visible) < len(report["cells"])
    text = "".join(dom.text)
    assert f"showing {len(expected)} of {len(report['cells'])} cells" in text
    assert dom.find("table", class_="tensors"), "per-tensor numbers were not rendered"
    assert "mlp/train/loss" in text and "tf2.16-cpu-float32 · mlp/train" in text


@pytest.mark.browser
def test_screenshot(rendered: dict[str, Any], tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    run_chromium(f"--screenshot={shot}", rendered["page"].as_uri() + "#detail=4.2", tmp=tmp_path)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    keep = ROOT / "build" / "report-screenshot.png"
    keep.parent.mkdir(exist_ok=True)
    keep.write_bytes(data)


def test_unseeded_phases_render_as_expected_to_vary(tmp_path: Path) -> None:
    import numpy as np

    for cid, seed in (("a", 1), ("b", 2)):
        t = {"init/recipe_none/kernel": np.random.RandomState(seed).standard_normal(4)}
        record = {
            "status": "ok",
            "seconds": 1.0,
            "tensors": sorted(t),
            "notes": [],
            "phases": {"recipe_none": {"status": "ok", "reproducible": False}},
        }
        write_cell(tmp_path, cid, axes={"v": cid}, tensors=t, scenarios={"init": record})
    build_report([tmp_path])
    dom = Dom((tmp_path / "report" / "index.html").read_text())
    tds = [a for t, a in dom.elements if t == "td" and "v" in (a.get("class") or "").split()]
    b_td = tds[1]  # row b, the only column
    assert "varies" in (b_td.get("class") or "").split()
    assert b_td.get("data-verdict") == "divergent"
    assert "v-divergent" not in (b_td.get("class") or "")  # not coloured as a finding


def _fragment(html: str, start: str) -> str:
    """From ``start`` to the next attribution row or the end of its section."""
    i = html.index(start)
    ends = [
        j for j in (html.find('<div class="attr-row"', i + 1), html.find("</section>", i)) if j > 0
    ]
    return html[i : min(ends)]


def test_attribution_leads_and_shows_each_context(tmp_path: Path) -> None:
    import numpy as np
    from artifact_factory import context_matrix

    context_matrix(tmp_path)
    build_report([tmp_path], generated_at="2026-01-01T00:00:00Z")
    html = (tmp_path / "report" / "index.html").read_text()
    sections = re.findall(r'<section id="([^"]+)"', html)
    assert sections.index("attribution") == 0 and sections.index("heatmap") > sections.index("pair")
    row = Dom(_fragment(html, '<div class="attr-row" data-axis="stack"'))
    assert [a.get("data-context") for a in row.find("th", class_="ctx")] == [
        "precision=float32",
        "precision=mixed_bfloat16",
    ]
    text = "".join(row.text)
    with (
        np.load(tmp_path / "tf-2.15-mixed_bfloat16" / "tensors.npz") as a,
        np.load(tmp_path / "tf-2.16-mixed_bfloat16" / "tensors.npz") as b,
    ):
        rel = max(
            float(np.max(np.abs(b[k].astype(np.float64) - a[k]) / np.abs(a[k].astype(np.float64))))
            for k in a.files
            if k.startswith("mlp/train/")
        )
    # train: one cell per context, each with its own verdict and number
    train = _fragment(html, '<tr class="phase-row" data-phase="train"').split("</tr>")[0]
    assert "rounding, 2 ULP" in train and f"drift, rel {rel:.1e}" in train
    assert "in every context" not in train
    # init agrees: said once, across the columns
    init = Dom(_fragment(html, '<tr class="phase-row" data-phase="init"').split("</tr>")[0])
    assert [a.get("colspan") for a in init.find("td", class_="agreed")] == ["2"]
    assert "identical in every context" in text
    # the glance names the contexts of an axis whose effect depends on them
    glance = Dom(html[html.index('<span id="axis-effects"') : html.index("</header>")])
    words = " ".join("".join(glance.text).split())
    assert "stack precision=float32: rounding precision=mixed_bfloat16: drift" in words
    assert "precision drift in every context" in words


@pytest.mark.browser
def test_picking_two_cells_shows_their_comparison(rendered: dict[str, Any], tmp_path: Path) -> None:
    import numpy as np

    later, earlier = "tf2.16-gpu-mixed_bfloat16", "tf2.15-cpu-float32"
    url = rendered["page"].as_uri() + f"#a={later}&b={earlier}"
    dom = Dom(run_chromium("--dump-dom", url, tmp=tmp_path))
    (result,) = [a for t, a in dom.elements if t == "div" and a.get("id") == "pair-result"]
    assert result.get("data-pair") == f"{earlier} -> {later}"  # the earlier cell is the baseline
    phases = {a["data-column"]: a["data-verdict"] for a in dom.find("tr", class_="pair-phase")}
    # planted: 2.16 drifts training, bfloat16 drifts the forward pass, nothing moves init
    assert phases == {"mlp/init": "identical", "mlp/forward": "drift", "mlp/train": "drift"}
    root = rendered["root"]
    with np.load(root / earlier / "tensors.npz") as a, np.load(root / later / "tensors.npz") as b:
        differ = {
            k for k in a.files if not k.startswith("reference/") and not np.array_equal(a[k], b[k])
        }
    assert {a["data-key"] for a in dom.find("tr", class_="pair-tensor")} == differ
    assert dom.find("body", **{"data-pwned": "1"}) == []
