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
