"""`analyze(config, out)`: dataset in; report, fitted directions and (with `out`) a report folder out.

    result = analyze(AnalysisConfig(source="data/smollm2", streaming=True), "report")
    result.report["layers"]["13"]["verdict"]["verdict"]            # "helix", "switch + ramps", ...
    result.report["layers"]["13"]["probes"]["phase"]["trig"]["acts"]["real"]["r2"]
    result.directions.layers[13].folds[0].readouts["real"]["probe/linear"]   # directions.py

The schemas of report.json and directions.safetensors, and the folder's layout (index.html and
summary.md on top, figures/ across layers, layers/<L>/ per layer), are documented in
analysis/REPORT.md. The folder is written under a temporary name and renamed when complete, so a
folder named OUT is always a whole report. The findings and the results table are logged at INFO
(logger `turnphase.analysis.report`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from turnphase.analysis import figures, planes, rotation
from turnphase.analysis.cluster import cluster_for
from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.directions import DIRECTIONS_FILE, Directions, conversation_folds, layer_directions
from turnphase.analysis.layer import (
    LayerInputs,
    LayerResult,
    LocalPasses,
    Samples,
    analyze_layer,
)
from turnphase.analysis.overview import INDEX_FILE, STAGES, text_table, write_pages
from turnphase.analysis.probes import PROBES
from turnphase.analysis.scores import ConvSums, mean_of, pearson_stat, r2_stat
from turnphase.analysis.source import DatasetSource, Labels, datasets_progress_off
from turnphase.analysis.split import NULLS, Folds
from turnphase.analysis.token_view import write_token_view
from turnphase.builders import schema
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.layers import select_layers
from turnphase.builders.lock import folder_lock
from turnphase.builders.provenance import fingerprint, turnphase_version
from turnphase.builders.writer import atomic_write_json, staged_folder
from turnphase.timing import Stopwatch, time_line

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
REPORT_VERSION = 3
FIGURES_DIR = "figures"  # the cross-layer figures
LAYERS_DIR = "layers"  # layers/<L>/: one layer's figures and token view
HEATMAP_FREQS = 16  # frequencies shown in the coherence heatmap (cycles per round 1..16)
SIGNAL_FLOOR = 0.05  # R^2 below this is not called a signal, whatever its interval


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TurnphaseError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TurnphaseError(f"{out}: exists and is not empty; pass --overwrite to replace it")


@dataclass
class AnalysisResult:
    """What `analyze` returns: the report (report.json's content, schema in REPORT.md) and the
    fitted readouts of every layer and fold (directions.py), with the folder they were written to."""

    report: dict
    directions: Directions
    out: Path | None = None


def analyze(
    config: AnalysisConfig, out: Path | str | None = None, *, overwrite: bool = False, verbose: bool = True
) -> AnalysisResult:
    """Run the analysis. With `out`, write the report folder there (atomically: the folder appears
    whole or not at all, and is locked meanwhile); without, write nothing. `verbose`: log the
    findings, the results table and the time per stage at INFO."""
    with datasets_progress_off():
        if out is None:
            report, directions = _analyze(config, None)
        else:
            out = Path(out)
            with folder_lock(out, "turnphase analyze"):
                check_out(out, overwrite)
                with staged_folder(out) as tmp:  # made first: an unwritable place fails before the work
                    report, directions = _analyze(config, tmp)
    if verbose:
        log.info("%s", text_table(report))
        log.info("%s", time_line(report["timings"]))
        if out is not None:
            log.info(
                "report: %s (%s, figures, token views and %s in %s/)",
                out / INDEX_FILE,
                REPORT_FILE,
                report["directions"],
                out,
            )
    return AnalysisResult(report, directions, out)


def layer_path(layer: int, name: str) -> str:
    """A layer's file, relative to the report folder (as report.json lists it)."""
    return f"{LAYERS_DIR}/{layer}/{name}"


def _analyze(config: AnalysisConfig, tmp: Path | None) -> tuple[dict, Directions]:
    """The report and the directions; figures, token views and files go to `tmp` if given."""
    clock = Stopwatch()
    ext = config.figure_format
    with clock.stage("open"):
        src = DatasetSource.open(
            config.source, streaming=config.streaming, batch_size=config.batch_size, revision=config.revision
        )
        layers = select_layers(config.layers, src.layers)
    with clock.stage("labels"):
        labels = src.labels(config)
        inputs = LayerInputs.of(labels, config)
        folds, samples, grid = inputs.folds, inputs.samples, inputs.grid
        view_conversation = samples.view_conversation
        circle = rotation.circle_r2(labels, folds.fold)
    with clock.stage("token_views"):
        view_tokens = src.conversation_tokens(view_conversation) if tmp is not None else None

    def save(fig, rel: str) -> str:
        figures.save(fig, tmp / rel, config.dpi)
        return rel

    written = []
    if tmp is not None:
        with clock.stage("figures"):
            roles = np.asarray(schema.ROLES)[labels.role]
            drawn = figures.token_counts(labels.round, roles, labels.n_rows - labels.n)
            written.append(save(drawn, f"{FIGURES_DIR}/token_counts.{ext}"))
    per_layer, baselines, found, layer_seconds = {}, {}, {}, {}
    with cluster_for(config, src, inputs) as cluster:
        for layer in layers:
            started = clock.elapsed()
            if cluster is None:
                with clock.stage("read_activations"):  # the whole layer, unless streaming (then: per pass)
                    passes = LocalPasses(src.layer(layer, labels), clock)
            else:
                passes = cluster.passes(layer)
            res = analyze_layer(layer, passes, inputs, clock)
            with clock.stage("intervals"):
                entry = layer_entry(res, labels, folds, circle, config, baselines)
            found[layer] = layer_directions(res)
            if tmp is not None:
                with clock.stage("figures"):
                    entry["figures"] = [
                        save(fig, layer_path(layer, f"{name}.{ext}"))
                        for name, fig in layer_figures(res, labels, samples, entry)
                    ]
                with clock.stage("token_views"):
                    entry["token_view"] = layer_path(layer, "token_view.html")
                    write_token_view(
                        tmp / entry["token_view"],
                        layer=layer,
                        tokens=view_tokens,
                        analysed_positions=labels.token_position[samples.view],
                        estimate=res.view_estimate,
                        corr=entry["planes"]["fourier"]["real"]["circcorr"]["value"],
                        excluded_template=config.exclude_template,
                        index_href=f"../../{INDEX_FILE}",
                    )
            per_layer[str(layer)] = entry
            layer_seconds[str(layer)] = clock.elapsed() - started
            log.debug("layer %s: %s (%.1f s)", layer, entry["verdict"]["verdict"], layer_seconds[str(layer)])
    if tmp is not None:
        with clock.stage("figures"):
            for name, draw in (
                ("probe_r2_by_layer", figures.probe_r2_by_layer),
                ("wheel_by_layer", figures.wheel_by_layer),
                ("evidence_by_layer", figures.evidence_by_layer),
            ):
                written.append(save(draw(layers, per_layer), f"{FIGURES_DIR}/{name}.{ext}"))
    report = {
        "report_version": REPORT_VERSION,
        "turnphase_version": turnphase_version(),
        "source": config.source,
        "model": src.model_id,
        "dataset": {
            "turnphase_version": src.provenance.get("turnphase_version"),
            "layers": src.layers,
            "n_layers": (src.provenance.get("model") or {}).get("n_layers"),  # the model's depth
            "d_model": src.d_model,
            "dtype": str(src.dtype),
            "seed": src.provenance.get("seed"),
        },
        "config": config.to_json(),
        "split": {"kind": config.split, "seed": config.seed, **folds.summary(labels)},
        "phase_scheme": config.phase_scheme,
        "tokens": {
            "rows": labels.n_rows,
            "analysed": labels.n,
            "template_excluded": labels.template_excluded,
            "rounds_in_fourier": grid.n_rounds,
        },
        "token_view_conversation": view_conversation,
        "layers": per_layer,
        "summary": summary(per_layer),
        "figures": written,
        "directions": DIRECTIONS_FILE if tmp is not None else None,
        "pages": [INDEX_FILE, "summary.md"] if tmp is not None else None,
    }
    report["findings"] = findings(report)
    directions = Directions(
        found,
        *conversation_folds(labels.conversation, folds.fold, config.split),
        metadata={
            "source": config.source,
            "dataset_fingerprint": fingerprint(src.provenance),
            "model": src.provenance.get("model", {"id": src.model_id}),
            "phase_scheme": config.phase_scheme,
            "split": config.split,
            "exclude_template": config.exclude_template,
            "report_version": REPORT_VERSION,
            "turnphase_version": turnphase_version(),
        },
    )
    if tmp is not None:
        with clock.stage("write"):
            directions.save(tmp / DIRECTIONS_FILE)
    report["timings"] = {
        "total": clock.elapsed(),
        "stages": {name: clock.seconds[name] for name in STAGES if name in clock.seconds},
        "per_layer": layer_seconds,
    }
    if tmp is not None:
        atomic_write_json(tmp / REPORT_FILE, report)
        write_pages(report, tmp)
    return report, directions


def _fold_rows(labels: Labels, folds: Folds, config: AnalysisConfig) -> list[np.ndarray] | None:
    """Rows of each fold's conversations in a ConvSums table (sorted conversation ids); conversation
    folds only."""
    if config.split != "conversation":
        return None
    _, first = np.unique(labels.conversation, return_index=True)
    fold_of = folds.fold[first]
    return [np.flatnonzero(fold_of == f) for f in range(folds.k)]


def probe_result(
    scores: ConvSums, prefix: str, probe, scheme: int, config: AnalysisConfig, fold_rows, alphas=None
) -> dict:
    targets = [f"{scheme}:{t}" for t in probe.targets]
    r2 = r2_stat(prefix, targets)
    out = {
        "r2": scores.statistic(r2),
        "ci95": scores.interval(r2, config, f"r2 {prefix} {scheme}"),
        "r2_per_target": {t: scores.statistic(r2_stat(prefix, [f"{scheme}:{t}"])) for t in probe.targets},
    }
    if f"{prefix}:err" in scores.index:  # joint models are scored by R^2 only

        def mae(s):
            return s[f"{prefix}:err"] / s["n"]

        out["phase_mae"] = scores.statistic(mae)
        out["phase_mae_ci95"] = scores.interval(mae, config, f"mae {prefix} {scheme}")
    if fold_rows is not None:
        out["r2_per_fold"] = [scores.statistic(r2, rows) for rows in fold_rows]
    if alphas is not None:
        out["alpha_per_fold"] = alphas
    return out


def layer_entry(
    res: LayerResult, labels: Labels, folds: Folds, circle: float, config: AnalysisConfig, baselines: dict
) -> dict:
    """One layer's report entry. `baselines` caches the label-only results across layers."""
    s = res.scores
    fold_rows = _fold_rows(labels, folds, config)
    probes = {}
    for scheme, scheme_name in enumerate((config.phase_scheme, config.other_scheme)):
        probes[scheme_name] = {}
        for probe in PROBES.values():
            key = f"{probe.name}/{scheme}"
            e = {}
            for model in ("acts", "joint"):
                e[model] = {
                    pairing: probe_result(
                        s,
                        f"{pairing}/{model}/{key}",
                        probe,
                        scheme,
                        config,
                        fold_rows,
                        [fm.alphas[f"{model}/{key}"] for fm in res.pairings[pairing].models],
                    )
                    for pairing in res.pairings
                }
            for model in ("structure", "position"):  # labels only: the same at every layer
                memo_key = (model, key)
                if memo_key not in baselines:
                    baselines[memo_key] = probe_result(
                        s,
                        f"{model}/{key}",
                        probe,
                        scheme,
                        config,
                        fold_rows,
                        [f[f"{model}/{key}"].alpha for f in res.label_fits],
                    )
                e[model] = baselines[memo_key]
            e["partial_r2_over_structure"] = {}
            for pairing in res.pairings:
                stat = _partial(f"{pairing}/joint/{key}", f"structure/{key}", probe, scheme)
                e["partial_r2_over_structure"][pairing] = s.result(stat, config, f"partial {pairing} {key}")
            probes[scheme_name][probe.name] = e

    plane_entry = {}
    for plane in planes.PLANES:
        plane_entry[plane] = {
            pairing: {
                "circcorr": s.result(
                    planes.fisher_lee(f"{pairing}/plane/{plane}"), config, f"r {pairing} {plane}"
                ),
                "locking": s.result(
                    planes.locking(f"{pairing}/plane/{plane}"), config, f"lock {pairing} {plane}"
                ),
                "phase_mae": s.result(
                    planes.angular_error(f"{pairing}/plane/{plane}"), config, f"mae {pairing} {plane}"
                ),
            }
            for pairing in res.pairings
        }
    plane_entry["pair"]["pairs_per_fold"] = [list(fm.pair.pair) for fm in res.pairings["real"].models]

    transfer, continuity, coherence = {}, {}, {}
    for pairing, pr in res.pairings.items():
        t = {
            direction: pearson_stats(f"{pairing}/transfer/{train}")
            for direction, train in (("user_to_assistant", "user"), ("assistant_to_user", "assistant"))
        }
        transfer[pairing] = {
            d: s.result(mean_of(*st.values()), config, f"transfer {pairing} {d}") for d, st in t.items()
        }
        transfer[pairing]["per_target"] = {
            d: {target: s.statistic(st[target]) for target in st} for d, st in t.items()
        }
        both = mean_of(*t["user_to_assistant"].values(), *t["assistant_to_user"].values())
        transfer[pairing]["mean"] = s.result(both, config, f"transfer {pairing} mean")
        continuity[pairing] = {
            kind: s.result(rotation.excess_jump(f"{pairing}/cont", kind), config, f"cont {pairing} {kind}")
            for kind in ("user_to_assistant", "assistant_to_user")
        }
        p = pr.coherence_power
        coherence[pairing] = {"k1": p[1], "k2": p[2], "k2_over_k1": p[2] / p[1] if p[1] > 0 else None}

    linear = probes[config.phase_scheme]["linear"]["acts"]["real"]
    rot = {
        "transfer": transfer,
        "continuity": continuity,
        "coherence": coherence,
        "line_beyond_circle": {"circle_r2": circle, "linear_r2": linear["r2"], "linear_ci95": linear["ci95"]},
    }
    entry = {
        "probes": probes,
        "planes": plane_entry,
        "rotation": rot,
        "pca": {"explained_variance_ratio": res.pca.explained_variance_ratio.tolist()},
        "fourier_in_sample": fourier_in_sample(res),
    }
    entry["verdict"] = rotation.verdict(evidence(entry, config))
    return entry


def pearson_stats(prefix: str) -> dict:
    return {t: pearson_stat(f"{prefix}/{t}") for t in PROBES["trig"].targets}


def _partial(joint: str, base: str, probe, scheme: int):
    targets = [f"{scheme}:{t}" for t in probe.targets]
    return r2_stat(joint, targets, over=base)


def fourier_in_sample(res: LayerResult) -> dict:
    """The study's own numbers: PCA of all tokens, per-round spectrum, best pair (in sample)."""
    out = {}
    for pairing, pr in res.pairings.items():
        spec = pr.spectrum
        if spec is None:
            continue
        i, j = spec.best_pair
        coh = spec.coherence[:, 1:]
        order = np.argsort(coh, axis=None)[::-1][:5]
        out[pairing] = {
            "best_pair": [i, j],
            "pair_score": float(spec.pair_score[i, j]),
            "coherence_k1": spec.coherence[:, 1].tolist(),
            "itpc_k1": spec.itpc[:, 1].tolist(),
            # [pc][k - 1] for k = 1..HEATMAP_FREQS cycles per round: the coherence heatmap's numbers
            "coherence": spec.coherence[:, 1 : 1 + HEATMAP_FREQS].tolist(),
            "itpc": spec.itpc[:, 1 : 1 + HEATMAP_FREQS].tolist(),
            "top_coherence": [
                {"pc": int(pc), "k": int(k) + 1, "coherence": float(coh[pc, k])}
                for pc, k in zip(*np.unravel_index(order, coh.shape), strict=True)
            ],
        }
    out["n_rounds"] = res.n_rounds
    return out


def _beats(result: dict, others: list[float]) -> bool:
    ci = result.get("ci95")
    return ci is not None and ci[0] > max(others)


def evidence(entry: dict, config: AnalysisConfig) -> dict:
    p = entry["probes"][config.phase_scheme]
    acts = {name: p[name]["acts"] for name in ("linear", "trig")}

    def probe_beats(nulls) -> bool:
        return any(
            _beats(a["real"], [a[n]["r2"] for n in nulls]) and a["real"]["r2"] > SIGNAL_FLOOR
            for a in acts.values()
        )

    tr = entry["rotation"]["transfer"]
    wheel = any(
        _beats(
            entry["planes"][plane]["real"]["circcorr"],
            [entry["planes"][plane][n]["circcorr"]["value"] for n in NULLS],
        )
        for plane in ("fourier", "trig")
    )
    line = entry["rotation"]["line_beyond_circle"]
    jump = entry["rotation"]["continuity"]["real"]["user_to_assistant"]
    return {
        "signal": probe_beats(["scrambled"]),
        "within_turn": probe_beats(["within_turn"]),
        # One rotation through the round is one readout for both roles: the readout fitted on
        # either role must turn on through the other's tokens. A positive mean of two directions
        # of opposite sign (one runs on, the other backwards) is not that.
        "transfer_positive": all(
            _beats(tr["real"][d], [0.0, *(tr[n][d]["value"] for n in ("within_role", "within_turn"))])
            for d in (*rotation.DIRECTIONS, "mean")
        ),
        "wheel": wheel,
        "line": _beats({"ci95": line["linear_ci95"]}, [line["circle_r2"]]),
        "jump": _beats(jump, [rotation.JUMP_FLOOR]),
    }


def layer_figures(
    res: LayerResult, labels: Labels, samples: Samples, entry: dict
) -> list[tuple[str, Figure]]:
    """(file stem, figure) for each of one layer's figures."""
    pr = res.pairings
    phase = labels.phase[samples.scatter]
    roles = np.asarray(schema.ROLES)[labels.role[samples.scatter]]
    scatter = {name: p.scatter for name, p in pr.items()}
    spectra = {name: p.spectrum for name, p in pr.items() if p.spectrum is not None}
    best = {name: spec.best_pair for name, spec in spectra.items()}
    freqs = slice(1, 1 + HEATMAP_FREQS)
    # the study's control (scrambled) and the strictest null (within_turn) beside the real data
    shown = {name: scatter[name] for name in ("real", "scrambled", "within_turn")}
    return [
        (
            "linear_probe",
            figures.predicted_vs_true(res.layer, phase, roles, {n: v[:, 0] for n, v in shown.items()}),
        ),
        (
            "pca_top2",
            figures.pc_scatter(
                res.layer,
                {"real": scatter["real"][:, 1:3]},
                phase,
                "tokens on the top two principal components (PCA of all analysed tokens), hue = true phase",
            ),
        ),
        (
            "coherence",
            figures.heatmaps(
                res.layer,
                {n: spec.coherence[:, freqs] for n, spec in spectra.items()},
                title="phase coherence per principal component and frequency, real vs scrambled",
                what="phase coherence |mean over rounds of Fourier coefficient|",
                xlabel="frequency (cycles per round)",
                x0=1,
            ),
        ),
        (
            "pair_score",
            figures.heatmaps(
                res.layer,
                {n: spec.pair_score for n, spec in spectra.items()},
                title="pair score of principal-component pairs at 1 cycle per round (in sample), real vs scrambled",
                what="pair score coh_i * coh_j * sin²(angle difference), 1 cycle per round",
                xlabel="principal component",
                x0=0,
                mark=best,
            ),
        ),
        (
            "color_wheel",
            figures.color_wheels(
                res.layer, {n: scatter[n] for n in ("real", "scrambled")}, phase, entry["planes"]
            ),
        ),
    ]


def summary(per_layer: dict) -> dict:
    def best(key) -> int:
        return int(max(per_layer, key=lambda L: key(per_layer[L])))

    return {
        "verdicts": {L: e["verdict"]["verdict"] for L, e in per_layer.items()},
        "best_layer_by_fourier_circcorr": best(lambda e: e["planes"]["fourier"]["real"]["circcorr"]["value"]),
        "best_layer_by_trig_partial_r2": best(
            lambda e: next(iter(e["probes"].values()))["trig"]["partial_r2_over_structure"]["real"]["value"]
        ),
        "best_layer_by_helix_r2": best(
            lambda e: next(iter(e["probes"].values()))["helix"]["acts"]["real"]["r2"]
        ),
    }


def _ci(r: dict, key: str = "value") -> str:
    ci = r.get("ci95")
    v = r[key]
    return f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.2f}"


def findings(report: dict) -> list[str]:
    """What was found and how sure, in words: the report's first screen."""
    scheme = report["phase_scheme"]
    lines = []
    verdicts = report["summary"]["verdicts"]
    counts = {v: sum(1 for x in verdicts.values() if x == v) for v in dict.fromkeys(verdicts.values())}
    lines.append(
        "Verdict per layer: "
        + ", ".join(f"{v} ({n} of {len(verdicts)} layers)" for v, n in counts.items())
        + ". Held-out conversations, each fold predicted by models fitted without it; intervals are 95% "
        "bootstrap over conversations; 'null' values are the largest of the scrambled, within-role and "
        "within-turn permutations."
    )
    for L, e in report["layers"].items():
        p = e["probes"][scheme]
        trig, lin = p["trig"], p["linear"]
        null = max(trig["acts"][n]["r2"] for n in NULLS)
        tr = e["rotation"]["transfer"]["real"]
        wheel = e["planes"]["fourier"]["real"]
        coh = e["rotation"]["coherence"]["real"]
        lines.append(
            f"Layer {L}: {e['verdict']['verdict']} — {e['verdict']['why']}. "
            f"Trig R² {_ci({'value': trig['acts']['real']['r2'], 'ci95': trig['acts']['real']['ci95']})} "
            f"(nulls up to {null:.2f}; structure baseline {trig['structure']['r2']:.2f}; activations add "
            f"{_ci(trig['partial_r2_over_structure']['real'])} of what it leaves). "
            f"Linear R² {lin['acts']['real']['r2']:.2f} (a perfect circle allows "
            f"{e['rotation']['line_beyond_circle']['circle_r2']:.2f}). "
            f"Cross-role transfer r {_ci(tr['mean'])} (user->assistant {_ci(tr['user_to_assistant'])}, "
            f"assistant->user {_ci(tr['assistant_to_user'])}); "
            f"held-out Fourier-plane wheel r {_ci(wheel['circcorr'])}; "
            f"coherence power at 2 vs 1 cycles per round {coh['k2_over_k1']:.2f}x."
        )
    return lines
