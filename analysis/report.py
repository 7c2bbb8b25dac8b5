"""`analyze(config, out)`: dataset in, report folder out (report.json, PNG figures, HTML views).

    report = analyze(AnalysisConfig(source="data/smollm2", streaming=True), Path("report"))
    report["layers"]["13"]["probes"]["helix"]["real"]["r2"]

The schema of report.json is documented in analysis/REPORT.md. The folder is written under a
temporary name and renamed when complete, so a folder named OUT is always a whole report.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from turnphase.analysis import figures
from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.fourier import RoundGrid, fourier_summary, wheel_phase
from turnphase.analysis.layer import LayerResult, Samples, analyze_layer, choose_samples
from turnphase.analysis.probes import PROBES, TestScores, position_baseline, test_conversations
from turnphase.analysis.source import DatasetSource, Labels
from turnphase.analysis.split import make_split, pairings
from turnphase.analysis.token_view import write_token_view
from turnphase.builders import schema
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.provenance import turnphase_version
from turnphase.builders.writer import atomic_write_json

REPORT_FILE = "report.json"
REPORT_VERSION = 1
HEATMAP_FREQS = 16  # frequencies shown in the coherence heatmap (cycles per round 1..16)


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TurnphaseError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TurnphaseError(f"{out}: exists and is not empty; pass --overwrite to replace it")


def analyze(config: AnalysisConfig, out: Path, *, overwrite: bool = False, verbose: bool = True) -> dict:
    out = Path(out)
    check_out(out, overwrite)
    src = DatasetSource.open(
        config.source, streaming=config.streaming, batch_size=config.batch_size, revision=config.revision
    )
    layers = list(config.layers or src.layers)
    for layer in layers:
        if layer not in src.layers:
            raise TurnphaseError(
                f"layer {layer} is not in this dataset (layers: {', '.join(map(str, src.layers))})"
            )
    labels = src.labels(config)
    split = make_split(labels, config)
    tests = test_conversations(labels, split)
    samples = choose_samples(labels, split, int(tests[0]), config)
    grid = RoundGrid(labels, config.grid)
    pairs = pairings(labels.n, config)
    position_probes, position_scores = position_baseline(labels, split, config)
    position = {name: position_scores.result(name, position_probes.fits[name], config) for name in PROBES}
    view_tokens = src.conversation_tokens(int(tests[0]))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        roles = np.asarray(schema.ROLES)[labels.role]
        written = [
            figures.token_counts(labels.round, roles, labels.n_rows - labels.n, tmp / "token_counts.png")
        ]
        per_layer = {}
        for layer in layers:
            res = analyze_layer(src.layer(layer, labels), labels, split, pairs, grid, samples, config)
            entry = layer_entry(res, position_scores, position, config)
            entry["figures"] = layer_figures(res, labels, samples, tmp)
            entry["token_view"] = write_token_view(
                tmp / f"layer{layer}_token_view.html",
                layer=layer,
                tokens=view_tokens,
                analysed_positions=labels.token_position[samples.view],
                estimate=wheel_phase(res.view_z, res.pairings["real"].spectrum, res.pca.std),
                pair=res.pairings["real"].spectrum.best_pair,
                corr=entry["fourier"]["real"]["angle_phase_circcorr"],
                excluded_template=config.exclude_template,
            )
            per_layer[str(layer)] = entry
        by_probe = {
            name: {
                pairing: [per_layer[str(L)]["probes"][name][pairing] for L in layers]
                for pairing in ("real", "scrambled", "position")
            }
            for name in PROBES
        }
        written.append(figures.probe_r2_by_layer(layers, by_probe, tmp / "probe_r2_by_layer.png"))
        report = {
            "report_version": REPORT_VERSION,
            "turnphase_version": turnphase_version(),
            "source": config.source,
            "model": src.model_id,
            "dataset": {
                "turnphase_version": src.provenance.get("turnphase_version"),
                "layers": src.layers,
                "d_model": src.d_model,
                "dtype": str(src.dtype),
                "seed": src.provenance.get("seed"),
            },
            "config": config.to_json(),
            "split": {"kind": config.split, "seed": config.seed, **split.summary(labels)},
            "phase_scheme": config.phase_scheme,
            "tokens": {"rows": labels.n_rows, "analysed": labels.n, "rounds_in_fourier": grid.n_rounds},
            "token_view_conversation": int(tests[0]),
            "layers": per_layer,
            "summary": summary(per_layer),
            "figures": written,
        }
        atomic_write_json(tmp / REPORT_FILE, report)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(table(report))
        print(f"report: {out / REPORT_FILE}; figures and token views in {out}/")
    return report


def _replace(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def layer_entry(
    res: LayerResult, position_scores: TestScores, position: dict, config: AnalysisConfig
) -> dict:
    probes = {}
    for name in PROBES:
        entry = {
            pairing: pr.scores.result(name, pr.probes.fits[name], config)
            for pairing, pr in res.pairings.items()
        }
        entry["position"] = position[name]
        entry["gain_over_position"] = res.pairings["real"].scores.gain_over(position_scores, name, config)
        probes[name] = entry
    return {
        "probes": probes,
        "fourier": {
            pairing: fourier_summary(pr.spectrum, pr.moments, res.n_rounds)
            for pairing, pr in res.pairings.items()
        },
        "pca": {"explained_variance_ratio": res.pca.explained_variance_ratio.tolist()},
    }


def layer_figures(res: LayerResult, labels: Labels, samples: Samples, out: Path) -> list[str]:
    L, pr = res.layer, res.pairings
    roles = np.asarray(schema.ROLES)[labels.role[samples.test]]
    phase = labels.phase[samples.scatter]
    z = {name: p.scatter_z for name, p in pr.items()}
    best = {name: p.spectrum.best_pair for name, p in pr.items()}
    corr = {name: p.moments.corr(*p.spectrum.best_pair, p.spectrum.orientation) for name, p in pr.items()}
    freqs = slice(1, 1 + HEATMAP_FREQS)
    return [
        figures.predicted_vs_true(
            L,
            labels.phase[samples.test],
            roles,
            {n: p.test_pred[:, 0] for n, p in pr.items()},
            out / f"layer{L}_linear_probe.png",
        ),
        figures.pc_scatter(
            L,
            z,
            phase,
            {n: (0, 1) for n in pr},
            out / f"layer{L}_pca_top2.png",
            "Tokens on the top two principal components (PCA of all analysed tokens)",
        ),
        figures.heatmaps(
            L,
            {n: p.spectrum.coherence[:, freqs] for n, p in pr.items()},
            out / f"layer{L}_coherence.png",
            what="phase coherence |mean over rounds of Fourier coefficient|",
            xlabel="frequency (cycles per round)",
            x0=1,
        ),
        figures.heatmaps(
            L,
            {n: p.spectrum.pair_score for n, p in pr.items()},
            out / f"layer{L}_pair_score.png",
            what="pair score coh_i * coh_j * sin²(angle difference), 1 cycle per round",
            xlabel="principal component",
            x0=0,
            mark=best,
        ),
        figures.color_wheel(L, z, phase, best, res.pca.std, corr, out / f"layer{L}_color_wheel.png"),
    ]


def summary(per_layer: dict) -> dict:
    def best(key) -> int:
        return int(max(per_layer, key=lambda L: key(per_layer[L])))

    return {
        "best_layer_by_pair_score": best(lambda e: e["fourier"]["real"]["pair_score"]),
        "best_layer_by_angle_phase_circcorr": best(lambda e: e["fourier"]["real"]["angle_phase_circcorr"]),
        "best_layer_by_helix_r2": best(lambda e: e["probes"]["helix"]["real"]["r2"]),
    }


def table(report: dict) -> str:
    """The short results table `turnphase analyze` prints: real (scrambled) per layer."""
    head = (
        f"{'layer':>5}  {'linear R2':>15}  {'trig R2':>15}  {'helix R2':>15}  {'position':>8}  "
        f"{'helix gain':>10}  {'best pair':>9}  {'pair score':>17}  {'angle-phase r':>15}"
    )
    lines = [f"{report['model']}  split={report['split']['kind']}  seed={report['split']['seed']}", head]

    def rs(probe: dict) -> str:
        return f"{probe['real']['r2']:6.3f} ({probe['scrambled']['r2']:6.3f})"

    for L, e in report["layers"].items():
        p, f = e["probes"], e["fourier"]
        pair = "PC{},PC{}".format(*f["real"]["best_pair"])
        lines.append(
            f"{L:>5}  {rs(p['linear']):>15}  {rs(p['trig']):>15}  {rs(p['helix']):>15}  "
            f"{p['helix']['position']['r2']:8.3f}  {p['helix']['gain_over_position']['r2']:10.3f}  "
            f"{pair:>9}  "
            f"{f['real']['pair_score']:7.3g} ({f['scrambled']['pair_score']:7.3g})  "
            f"{f['real']['angle_phase_circcorr']:6.3f} ({f['scrambled']['angle_phase_circcorr']:6.3f})"
        )
    lines.append("R2 and scores: real activations (scrambled control); position = position-only baseline")
    return "\n".join(lines)
