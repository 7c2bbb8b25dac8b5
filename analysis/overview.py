"""The report folder's front pages, from report.json's content: `index.html` and `summary.md`.

    write_pages(report, out)   # out/index.html, out/summary.md
    text_table(report)         # the findings and results table `turnphase analyze` logs

Both pages say only what report.json says: its findings (in words), the results table, the
colour wheel of the best layer by a scale-free criterion, the cross-layer figures, links to every
per-layer figure and token view, and the time each stage took. index.html is one self-contained
file (inline CSS, no scripts, relative links), so it opens from disk with no server.
"""

from __future__ import annotations

import html
from pathlib import Path

from turnphase.analysis.rotation import DIRECTIONS
from turnphase.analysis.split import NULLS

INDEX_FILE = "index.html"
SUMMARY_FILE = "summary.md"
# The criterion that picks the colour wheel shown first: held-out, and in -1..1 at every layer.
BEST_WHEEL = "best_layer_by_fourier_circcorr"
STAGES = {  # report.json timings.stages -> what the stage does, in the order they run
    "open": "open the dataset (provenance, shard checks)",
    "labels": "read labels; folds, baselines, samples",
    "read_activations": "read activations (in memory: once per layer; streaming: every pass)",
    "pass_1_sums": "pass 1: sums for the fits",
    "fits": "fit PCA, probes, planes",
    "pass_2_scores": "pass 2: held-out scores, Fourier grids",
    "intervals": "bootstrap intervals, verdicts",
    "figures": "figures",
    "token_views": "token views",
    "write": "write directions",
}
CROSS_LAYER = {  # report.json figures: file stem -> caption
    "probe_r2_by_layer": "Held-out R² per layer and probe: real activations with 95% intervals, the "
    "three nulls, the structure and position baselines (labels only).",
    "wheel_by_layer": "Held-out colour-wheel statistics per layer for the three planes: circular "
    "correlation and locking, real against the three nulls.",
    "evidence_by_layer": "The evidence that separates a clock from a switch, per layer, real against "
    "the nulls: partial R² over the structure baseline, cross-role transfer (mean, and each way for the "
    "real data), Fourier-plane wheel r, "
    "jump at user-to-assistant boundaries.",
    "token_counts": "Analysed tokens per round and role.",
}
LAYER_FILES = {  # file stem in layers/<L>/ -> link text
    "linear_probe": "linear probe",
    "pca_top2": "top-2 PCs",
    "coherence": "coherence",
    "pair_score": "pair score",
    "color_wheel": "colour wheel",
    "token_view": "token view",
}
COLUMNS = (
    "layer",
    "verdict",
    "linear R² (null)",
    "trig R² (null)",
    "structure",
    "trig +acts",
    "transfer r (u->a / a->u)",
    "wheel r (null)",
    "k2/k1",
)
TABLE_NOTE = (
    "R² and r: real activations, held out (in brackets the largest of the three nulls); structure = "
    "labels-only baseline (trig R²); trig +acts = partial R² of activations over it; transfer r = "
    "cross-role transfer of the sin/cos readout, the mean (user->assistant / assistant->user; a "
    "rotation is above 0 both ways); wheel = held-out once-per-round Fourier plane; "
    "k2/k1 = coherence power at 2 vs 1 cycles per round."
)


def results_rows(report: dict) -> list[list[str]]:
    """One row of COLUMNS per analysed layer, as text."""
    scheme = report["phase_scheme"]

    def with_null(results: dict, value) -> str:
        return f"{value(results['real']):.3f} ({max(value(results[n]) for n in NULLS):.3f})"

    rows = []
    for L, e in report["layers"].items():
        p = e["probes"][scheme]
        k2_over_k1 = e["rotation"]["coherence"]["real"]["k2_over_k1"]
        rows.append(
            [
                L,
                e["verdict"]["verdict"],
                with_null(p["linear"]["acts"], lambda r: r["r2"]),
                with_null(p["trig"]["acts"], lambda r: r["r2"]),
                f"{p['trig']['structure']['r2']:.3f}",
                f"{p['trig']['partial_r2_over_structure']['real']['value']:.3f}",
                "{:.3f} ({:+.2f} / {:+.2f})".format(
                    *(e["rotation"]["transfer"]["real"][d]["value"] for d in ("mean", *DIRECTIONS))
                ),
                with_null(e["planes"]["fourier"], lambda r: r["circcorr"]["value"]),
                "n/a" if k2_over_k1 is None else f"{k2_over_k1:.2f}",
            ]
        )
    return rows


def run_line(report: dict) -> str:
    split, tokens = report["split"], report["tokens"]
    return (
        f"{report['model']} from {report['source']}: split={split['kind']}, {split['folds']} folds, "
        f"seed={split['seed']}, phase scheme {report['phase_scheme']}; {tokens['analysed']} of "
        f"{tokens['rows']} tokens analysed; turnphase {report['turnphase_version']}"
    )


def text_table(report: dict) -> str:
    """The findings in words, then the results table, as `turnphase analyze` logs them."""
    rows = [list(COLUMNS), *results_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join([*report["findings"], "", run_line(report), *lines, TABLE_NOTE])


def best_wheel(report: dict) -> tuple[str, str]:
    """(layer, a sentence on its wheel and why it was chosen), from the report's numbers only."""
    L = str(report["summary"][BEST_WHEEL])
    fourier = report["layers"][L]["planes"]["fourier"]
    r = fourier["real"]["circcorr"]
    null = max(fourier[n]["circcorr"]["value"] for n in NULLS)
    ci = r["ci95"]
    beats = ci is not None and ci[0] > null
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    return L, (
        f"Layer {L} has the highest held-out circular correlation between the once-per-round Fourier "
        f"plane's angle and true phase: r = {r['value']:.2f}{interval}, largest null {null:.2f} (its "
        f"interval {'lies above' if beats else 'does not lie above'} every null). The layer is chosen "
        f"by this r (summary.{BEST_WHEEL}) because it is scored on held-out conversations and lies "
        "in -1..1 at every layer; the study's pair score is in-sample and in activation units, which "
        "grow with depth, so it cannot rank layers."
    )


def stage_rows(report: dict) -> list[tuple[str, float]]:
    stages = report["timings"]["stages"]
    ordered = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    return [(STAGES.get(s, s), stages[s]) for s in ordered]


def write_pages(report: dict, out: Path) -> list[str]:
    """Write index.html and summary.md into the report folder `out`; returns their names."""
    (out / INDEX_FILE).write_text(index_html(report), encoding="utf-8")
    (out / SUMMARY_FILE).write_text(summary_md(report), encoding="utf-8")
    return [INDEX_FILE, SUMMARY_FILE]


def summary_md(report: dict) -> str:
    def md_row(cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    _, wheel = best_wheel(report)
    lines = [
        f"# Turn-phase analysis of {report['model']}",
        "",
        run_line(report) + ".",
        f"Figures, per-layer findings and token views: [{INDEX_FILE}]({INDEX_FILE}); every number: "
        "[report.json](report.json) (schema: analysis/REPORT.md in the turnphase source).",
        "",
        "## What was found",
        "",
        report["findings"][0],
        "",
        wheel,
        "",
        "## Results by layer",
        "",
        md_row(COLUMNS),
        md_row(["---:", ":---", *["---:"] * (len(COLUMNS) - 2)]),
        *(md_row(r) for r in results_rows(report)),
        "",
        TABLE_NOTE,
        "",
        "## Time",
        "",
        md_row(["stage", "seconds"]),
        md_row([":---", "---:"]),
        *(md_row([name, f"{s:.1f}"]) for name, s in stage_rows(report)),
        md_row(["**total**", f"**{report['timings']['total']:.1f}**"]),
        "",
    ]
    return "\n".join(lines)


STYLE = """
body { font-family: sans-serif; max-width: 75em; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .note, .meta { color: #444; font-size: 90%; }
nav a { margin-right: 1em; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _figure(src: str, caption: str) -> str:
    """An embedded figure; a PDF (which no <img> shows) as a link."""
    if src.endswith(".pdf"):
        body = f'<a href="{_e(src)}">{_e(src)} (PDF)</a>'
    else:
        body = f'<a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(caption)}"></a>'
    return f"<figure>{body}<figcaption>{_e(caption)}</figcaption></figure>"


def _stem(path: str) -> str:
    return Path(path).stem


def index_html(report: dict) -> str:
    layers = report["layers"]
    best, wheel = best_wheel(report)
    wheel_src = next(f for f in layers[best]["figures"] if _stem(f) == "color_wheel")

    head = "".join(
        f'<th class="text">{_e(c)}</th>' if i == 1 else f"<th>{_e(c)}</th>" for i, c in enumerate(COLUMNS)
    )
    body = []
    for row in results_rows(report):
        cells = [
            f'<td><a href="#layer-{_e(row[0])}">{_e(row[0])}</a></td>',
            f'<td class="text">{_e(row[1])}</td>',
        ]
        body.append("<tr>" + "".join(cells) + "".join(f"<td>{_e(c)}</td>" for c in row[2:]) + "</tr>")
    results = (
        f'<table id="results-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f'<p class="note">{_e(TABLE_NOTE)}</p>'
    )

    order = list(CROSS_LAYER)
    shown = sorted(
        report["figures"], key=lambda f: order.index(_stem(f)) if _stem(f) in order else len(order)
    )
    cross = "".join(_figure(src, CROSS_LAYER.get(_stem(src), _stem(src))) for src in shown)

    link_head = "".join(f"<th>{_e(t)}</th>" for t in LAYER_FILES.values())
    link_rows = []
    for L, e in layers.items():
        files = {_stem(f): f for f in [*e["figures"], e["token_view"]]}
        links = "".join(
            f'<td><a href="{_e(files[stem])}">{_e(text)}</a></td>' if stem in files else "<td></td>"
            for stem, text in LAYER_FILES.items()
        )
        verdict = f'<td class="text">{_e(e["verdict"]["verdict"])}</td>'
        link_rows.append(f'<tr><td><a href="#layer-{_e(L)}">{_e(L)}</a></td>{verdict}{links}</tr>')
    per_layer_table = (
        f'<table id="layer-files"><thead><tr><th>layer</th><th class="text">verdict</th>{link_head}</tr>'
        f"</thead><tbody>{''.join(link_rows)}</tbody></table>"
    )
    # findings: the overall line, then one per layer in the order of report["layers"]
    sections = "<h3>Findings per layer</h3>" + "".join(
        f'<p id="layer-{_e(L)}">{_e(line)}</p>'
        for L, line in zip(layers, report["findings"][1:], strict=True)
    )

    timing_rows = "".join(
        f'<tr><td class="text">{_e(name)}</td><td>{s:.1f}</td></tr>' for name, s in stage_rows(report)
    )
    timing = (
        f'<table id="timings"><thead><tr><th class="text">stage</th><th>seconds</th></tr></thead>'
        f'<tbody>{timing_rows}<tr><th class="text">total</th><th>{report["timings"]["total"]:.1f}</th></tr>'
        "</tbody></table>"
    )
    files = "".join(
        f'<li><a href="{_e(name)}">{_e(name)}</a>: {_e(what)}</li>'
        for name, what in (
            ("report.json", "every number (schema: analysis/REPORT.md in the turnphase source)"),
            ("summary.md", "this page's text and tables, short"),
            (report["directions"], "the fitted probes and planes, for steering and notebooks"),
        )
        if name
    )
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("findings", "What was found"),
            ("results", "Results"),
            ("wheel", "Best colour wheel"),
            ("across", "Across layers"),
            ("layers", "Per layer"),
            ("time", "Time"),
            ("files", "Files"),
        )
    )
    title = f"Turn-phase analysis of {report['model']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{_e(title)}</h1>
<p class="meta">{_e(run_line(report))}.</p>
<nav>{nav}</nav>
<h2 id="findings">What was found</h2>
<p>{_e(report["findings"][0])}</p>
<h2 id="results">Results by layer</h2>
{results}
<h2 id="wheel">Best colour wheel: layer {_e(best)}</h2>
<p>{_e(wheel)}</p>
{_figure(wheel_src, f"Layer {best}: held-out tokens in the three planes, hue = true phase.")}
<h2 id="across">Across layers</h2>
{cross}
<h2 id="layers">Per layer</h2>
{per_layer_table}
{sections}
<h2 id="time">Time</h2>
{timing}
<h2 id="files">Files</h2>
<ul>{files}</ul>
</body></html>
"""
