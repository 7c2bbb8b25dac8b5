"""The report folder a reader opens: index.html and summary.md, figures with titles, token views
with a true-phase strip, a colour map that never fades to white, timings, quiet reading.

index.html is checked as a structure (html.parser) and rendered in a real headless browser:
Debian's chromium, which `make test` installs (apt) where it is missing.
"""

from __future__ import annotations

import html
import importlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import datasets
import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv, to_rgb
from PIL import Image

from turnphase.analysis import AnalysisConfig, analyze
from turnphase.analysis.figures import PHASE_CMAP
from turnphase.analysis.source import DatasetSource
from turnphase.analysis.split import NULLS
from turnphase.analysis.token_view import NOT_ANALYSED_BACKGROUND
from turnphase.builders.cli import main
from turnphase.builders.errors import ConfigError

CROSS_LAYER = ("probe_r2_by_layer", "wheel_by_layer", "evidence_by_layer")


class Page(HTMLParser):
    """Links, element ids, tables (rows of cell texts) and spans (attributes, text) of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []  # every href and src
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()
        self.tables: dict[str, list[list[str]]] = {}
        self.spans: list[tuple[dict, str]] = []
        self._table = self._row = self._cell = self._span = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "span":
            self._span = (a, [])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None
        elif tag == "span" and self._span is not None:
            self.spans.append((self._span[0], "".join(self._span[1])))
            self._span = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._span is not None:
            self._span[1].append(data)


def page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def files_under(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def resolved(out: Path, page_path: Path, link: str) -> str | None:
    """The report-relative file a link points to (None for a same-page #fragment); fails for
    links that leave the folder, name a scheme or host, or an absolute path."""
    parts = urlsplit(link)
    assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
    if not parts.path:
        return None
    target = (page_path.parent / parts.path).resolve()
    assert target.is_relative_to(out.resolve()), f"{link} leaves the report folder"
    assert target.is_file(), f"{page_path.name}: {link} does not exist"
    return target.relative_to(out.resolve()).as_posix()


def best_wheel_layer(report: dict) -> str:
    return max(
        report["layers"], key=lambda L: report["layers"][L]["planes"]["fourier"]["real"]["circcorr"]["value"]
    )


def test_every_link_of_every_page_resolves_inside_the_folder(helix_report):
    out = helix_report["_out"]
    html_pages = [p for p in out.rglob("*.html")]
    assert len(html_pages) == 1 + len(helix_report["layers"])
    for path in html_pages:
        p = page(path)
        assert "script" not in p.tags and "link" not in p.tags  # no scripts, no external CSS
        for link in p.links:
            target = resolved(out, path, link)
            fragment = urlsplit(link).fragment
            if target is None:
                assert fragment in p.ids, f"{path.name}: #{fragment} names no element"


def test_index_links_every_file_and_shows_the_cross_layer_figures(helix_report):
    out = helix_report["_out"]
    p = page(out / "index.html")
    linked = {t for t in (resolved(out, out / "index.html", link) for link in p.links) if t}
    assert linked == files_under(out) - {"index.html"}
    shown = {Path(src).stem for src in p.images}
    assert set(CROSS_LAYER) <= shown
    assert f"layers/{best_wheel_layer(helix_report)}/color_wheel.png" in p.images
    # every cross-layer figure report.json lists is embedded, not only linked
    assert set(helix_report["figures"]) <= set(p.images)


def test_index_results_table_has_one_row_per_layer(helix_report):
    p = page(helix_report["_out"] / "index.html")
    header, *rows = p.tables["results-table"]
    assert header[0] == "layer" and len(header) == len(rows[0])
    assert [r[0] for r in rows] == list(helix_report["layers"])
    scheme = helix_report["phase_scheme"]
    for row, e in zip(rows, helix_report["layers"].values(), strict=True):
        assert row[1] == e["verdict"]["verdict"]
        wheel = e["planes"]["fourier"]
        null = max(wheel[n]["circcorr"]["value"] for n in NULLS)
        assert f"{wheel['real']['circcorr']['value']:.3f} ({null:.3f})" in row
        assert f"{e['probes'][scheme]['trig']['acts']['real']['r2']:.3f}" in " ".join(row)
    files = p.tables["layer-files"]
    assert [r[0] for r in files[1:]] == list(helix_report["layers"])
    # the findings in words, as report.json has them
    text = html.unescape((helix_report["_out"] / "index.html").read_text())
    assert all(finding in text for finding in helix_report["findings"])


def test_summary_md_has_the_table_and_the_timings(helix_report):
    text = (helix_report["_out"] / "summary.md").read_text()
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]
    header = rows.index(next(r for r in rows if r[0] == "layer"))
    layer_rows = [r for r in rows[header + 2 :] if r[0] in helix_report["layers"]]
    assert [r[0] for r in layer_rows] == list(helix_report["layers"])
    for r, e in zip(layer_rows, helix_report["layers"].values(), strict=True):
        assert r[1] == e["verdict"]["verdict"]
    assert helix_report["findings"][0] in text
    assert f"layer {best_wheel_layer(helix_report)}" in text.lower()
    total = next(r for r in rows if r[0] == "**total**")
    assert float(total[1].strip("*")) == pytest.approx(helix_report["timings"]["total"], abs=0.051)


def test_timings_cover_the_run(helix_report):
    t = helix_report["timings"]
    stages = t["stages"]
    assert {"read_activations", "fits", "intervals", "figures", "token_views"} <= set(stages)
    assert all(s >= 0 for s in stages.values())
    assert sum(stages.values()) <= t["total"] + 1e-6
    assert sum(stages.values()) > 0.5 * t["total"]  # stages are exclusive and cover the work
    assert set(t["per_layer"]) == set(helix_report["layers"])
    assert sum(t["per_layer"].values()) <= t["total"] + 1e-6


def test_every_figure_has_a_title_and_the_configured_dpi(helix_report):
    out = helix_report["_out"]
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == len(helix_report["figures"]) + sum(
        len(e["figures"]) for e in helix_report["layers"].values()
    )
    for path in pngs:
        with Image.open(path) as im:
            title = im.text.get("Title", "")
            dpi = im.info["dpi"]
        assert len(title) > 10, path
        if path.parent.parent.name == "layers":
            assert title.startswith(f"Layer {path.parent.name}:"), title
        assert dpi[0] == pytest.approx(helix_report["config"]["dpi"], abs=0.5)


def test_evidence_figure_shows_transfer_each_way(helix_report):
    """The verdict asks for cross-role transfer each way; the panel shows the real data's two ways
    beside their mean, at the report's values (a positive mean could hide one negative way)."""
    from turnphase.analysis.figures import evidence_by_layer

    layers = sorted(int(L) for L in helix_report["layers"])
    panel = evidence_by_layer(layers, helix_report["layers"]).axes[1]
    bars = {c.get_label(): c for c in panel.containers}  # errorbar containers
    legend = [t.get_text() for t in panel.get_legend().get_texts()]
    assert legend == ["real, user -> assistant", "real, assistant -> user"]
    for way in ("user_to_assistant", "assistant_to_user"):
        line = bars["real, " + way.replace("_to_", " -> ")].lines[0]
        want = [helix_report["layers"][str(L)]["rotation"]["transfer"]["real"][way]["value"] for L in layers]
        np.testing.assert_allclose(line.get_ydata(), want)


def test_layer_figures_show_the_study_control_beside_the_real_data():
    """The study drew its colour wheel and its predicted-vs-true plot again for the scrambled
    control: the colour wheels get a row of the scrambled null's planes, titled with its r, and the
    probe figure a panel per null given."""
    from turnphase.analysis.figures import WHEEL_PLANES, color_wheels, predicted_vs_true

    rng = np.random.default_rng(0)
    phase = rng.random(200)
    scatter = {p: rng.normal(size=(200, 9)) for p in ("real", "scrambled")}
    r = {"real": 0.9, "scrambled": 0.01, "within_role": 0.2, "within_turn": 0.3}
    planes = {name: {p: {"circcorr": {"value": v}} for p, v in r.items()} for name in WHEEL_PLANES}
    titles = [ax.get_title() for ax in color_wheels(3, scatter, phase, planes).axes if ax.get_title()]
    assert len(titles) == 2 * len(WHEEL_PLANES)
    assert sum(t.startswith("scrambled null, ") and t.endswith("held-out r = 0.01") for t in titles) == len(
        WHEEL_PLANES
    )
    assert sum("held-out r = 0.90" in t and "scrambled 0.01" in t for t in titles) == len(WHEEL_PLANES)
    roles = np.where(phase < 0.5, "user", "assistant")
    pred = {p: rng.random(200) for p in ("real", "scrambled", "within_turn")}
    panels = [ax.get_title() for ax in predicted_vs_true(3, phase, roles, pred).axes]
    assert panels == ["layer 3, real", "layer 3, scrambled", "layer 3, within_turn"]


def srgb_lightness(rgb) -> float:
    """CIE L* of an sRGB colour (0..1 channels), through WCAG's relative luminance."""
    c = np.asarray(rgb[:3], dtype=float)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = float(lin @ [0.2126, 0.7152, 0.0722])
    return 116 * y ** (1 / 3) - 16 if y > (6 / 29) ** 3 else y * (29 / 3) ** 3


def test_phase_colour_map_is_cyclic_and_never_near_white():
    grey = srgb_lightness(to_rgb(NOT_ANALYSED_BACKGROUND))
    ends = [srgb_lightness(PHASE_CMAP(x)) for x in (0.0, 1.0)]
    assert np.allclose(PHASE_CMAP(0.0), PHASE_CMAP(1.0))  # cyclic: a round ends where it starts
    assert max(ends) < 80 and grey - max(ends) > 15
    everywhere = [srgb_lightness(PHASE_CMAP(x)) for x in np.linspace(0, 1, 257)]
    assert max(everywhere) < 80 and grey - max(everywhere) > 15  # no phase looks like "not analysed"
    # opposite phases (user vs assistant start, mid-user vs mid-assistant) are far apart
    for x in np.linspace(0, 0.5, 11):
        assert np.linalg.norm(np.subtract(PHASE_CMAP(x)[:3], PHASE_CMAP(x + 0.5)[:3])) > 0.2


def test_token_view_shows_true_phase_as_a_strip(helix_report):
    out = helix_report["_out"]
    spans = [
        (a, text)
        for a, text in page(out / "layers" / "1" / "token_view.html").spans
        if "true phase" in a.get("title", "")
    ]
    strips = []
    for attrs, _ in spans:
        true = re.search(r"true phase (none|[0-9.]+)", attrs["title"]).group(1)
        colour = re.search(r"border-bottom-color:(#[0-9a-f]{6})", attrs["style"])
        if true == "none":
            assert colour is None
            continue
        assert colour is not None, attrs
        np.testing.assert_allclose(to_rgb(colour.group(1)), PHASE_CMAP(float(true))[:3], atol=0.03)
        strips.append(colour.group(1))
    assert len(set(strips)) > 20  # the strip follows the phase through the turns
    assert len(strips) > len(spans) / 2


def test_reading_turns_datasets_bars_off_and_restores_them(helix_dataset, monkeypatch):
    bars = importlib.import_module("datasets.utils.tqdm")  # the module (datasets.utils.tqdm is a class)
    seen = []
    tables = DatasetSource.tables

    def spy(self, *args, **kwargs):
        seen.append(datasets.are_progress_bars_disabled())
        yield from tables(self, *args, **kwargs)

    monkeypatch.setattr(DatasetSource, "tables", spy)
    # as if no HF_DATASETS_DISABLE_PROGRESS_BARS were set: bars on, the library's default
    monkeypatch.setattr(bars, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(bars, "_hf_datasets_progress_bars_disabled", False)
    config = AnalysisConfig(source=str(helix_dataset), layers=[1], n_bootstrap=20)
    report = analyze(config, verbose=False).report
    assert seen and all(seen)
    assert not datasets.are_progress_bars_disabled()  # the caller's setting is back
    assert "figures" not in report["timings"]["stages"]  # nothing drawn without a folder

    datasets.disable_progress_bars()  # a caller who turned them off keeps them off
    analyze(config, verbose=False)
    assert datasets.are_progress_bars_disabled()


def test_figure_format_and_dpi_flags(helix_dataset, tmp_path):
    out = tmp_path / "r"
    args = ["analyze", str(helix_dataset), "--out", str(out), "--layers", "2", "--bootstrap", "20"]
    assert main([*args, "--figure-format", "pdf", "--dpi", "72"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["figure_format"] == "pdf" and report["config"]["dpi"] == 72
    figures = [*report["figures"], *report["layers"]["2"]["figures"]]
    assert all(f.endswith(".pdf") for f in figures) and not list(out.rglob("*.png"))
    for f in figures:
        data = (out / f).read_bytes()
        assert data.startswith(b"%PDF") and b"/Title" in data
    index = page(out / "index.html")
    linked = {resolved(out, out / "index.html", link) for link in index.links}
    assert set(figures) <= linked and not index.images  # a PDF is linked: no <img> shows one


@pytest.mark.parametrize("field, value", [("figure_format", "gif"), ("dpi", 5)])
def test_bad_figure_settings_are_refused(field, value):
    with pytest.raises(ConfigError) as e:
        AnalysisConfig(source="x", **{field: value})
    assert e.value.field == field


def screenshot(page: Path, png: Path) -> np.ndarray:
    """The top 1280 x 2400 pixels of `page` as Chromium renders it from the file, RGB in 0..1."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "no chromium on PATH: `make test` installs Debian's (apt-get install chromium)"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
        ]
        + [f"--user-data-dir={png.parent / 'profile'}", f"--screenshot={png}", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(Image.open(png).convert("RGB"), dtype=float) / 255


def hues(img: np.ndarray, min_pixels: int = 500) -> int:
    """How many of 12 hue sectors hold at least `min_pixels` clearly coloured pixels."""
    hsv = rgb_to_hsv(img)
    coloured = (hsv[..., 1] > 0.25) & (hsv[..., 2] > 0.3)
    counts = np.bincount((hsv[..., 0][coloured] * 12).astype(int) % 12, minlength=12)
    return int((counts >= min_pixels).sum())


def test_index_renders_with_its_figures_in_a_headless_browser(helix_report, tmp_path):
    out = helix_report["_out"]
    shot = screenshot(out / "index.html", tmp_path / "index.png")
    assert shot.shape == (2400, 1280, 3)
    assert (shot.max(axis=2) < 0.3).mean() > 0.005, "no text rendered"
    # The colour wheel's cyclic map spans every hue: drawn, the page shows most hue sectors. The
    # same page with its figure files gone shows only its blue links: the hues came from the
    # figures the browser found and drew.
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    shutil.rmtree(bare / "figures")
    shutil.rmtree(bare / "layers")
    drawn, without = hues(shot), hues(screenshot(bare / "index.html", tmp_path / "bare.png"))
    assert drawn >= 8 and without <= 2, (drawn, without)
