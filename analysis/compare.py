"""`turnphase compare REPORT_DIR ... --out DIR`: variants side by side, layers on a relative-depth axis.

    turnphase compare report/smollm2 report/qwen --out report/compare
    turnphase compare report/smollm2 report/qwen --steer steer/smollm2 --out report/compare

Reads only what `turnphase analyze` (and `turnphase steer`) wrote: each report's results table per
layer (probe R² with the largest null, the structure baseline and what activations add over it,
cross-role transfer, the three colour-wheel planes' held-out circular correlation with their
nulls, k2/k1, the verdict), at relative depth L / (n_layers - 1), and the steering findings where a
steer folder of the same model is given. Writes `compare.json`, `compare.md` and one figure; says
nothing the reports do not.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from turnphase.analysis.cli import add_figure_arguments
from turnphase.analysis.config import AnalysisConfig, check_figure_options
from turnphase.analysis.report import check_out
from turnphase.analysis.rotation import DIRECTIONS, VERDICTS
from turnphase.analysis.split import NULLS
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.writer import atomic_write_json, staged_folder

log = logging.getLogger(__name__)

COMPARE_FILE, SUMMARY_FILE = "compare.json", "compare.md"
PLANES = {
    "pair": "study's best PC pair",
    "fourier": "once-per-round Fourier plane",
    "trig": "supervised (trig)",
}


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TurnphaseError(f"{path.parent}: no {path.name}; is it a `turnphase {what}` folder?") from None
    except (OSError, ValueError) as e:
        raise TurnphaseError(f"{path}: cannot be read ({type(e).__name__})") from None


def layer_rows(report: dict) -> list[dict]:
    """One entry per analysed layer of a report, in the units the report uses."""
    scheme, n_layers = report["phase_scheme"], report["dataset"].get("n_layers")
    if not n_layers:
        raise TurnphaseError(
            f"{report['source']}: its report.json does not give the model's depth (made before "
            "turnphase recorded it): rerun `turnphase analyze` on it"
        )
    rows = []
    for L, e in report["layers"].items():
        probes = e["probes"][scheme]
        coherence = e["rotation"]["coherence"]["real"]["k2_over_k1"]
        rows.append(
            {
                "layer": int(L),
                "depth": int(L) / max(n_layers - 1, 1),
                "verdict": e["verdict"]["verdict"],
                **{
                    f"{probe}_r2": probes[probe]["acts"]["real"]["r2"]
                    for probe in ("linear", "trig", "helix")
                },
                **{
                    f"{probe}_r2_null": max(probes[probe]["acts"][n]["r2"] for n in NULLS)
                    for probe in ("linear", "trig", "helix")
                },
                "trig_structure_r2": probes["trig"]["structure"]["r2"],
                "trig_partial_r2": probes["trig"]["partial_r2_over_structure"]["real"]["value"],
                "transfer_r": e["rotation"]["transfer"]["real"]["mean"]["value"],
                **{f"transfer_{d}": e["rotation"]["transfer"]["real"][d]["value"] for d in DIRECTIONS},
                **{f"wheel_{p}": e["planes"][p]["real"]["circcorr"]["value"] for p in PLANES},
                **{
                    f"wheel_{p}_null": max(e["planes"][p][n]["circcorr"]["value"] for n in NULLS)
                    for p in PLANES
                },
                "k2_over_k1": coherence,
            }
        )
    return rows


def compare(
    report_dirs: list[Path],
    out: Path | None = None,
    steer_dirs: list[Path] = (),
    *,
    overwrite: bool = False,
    figure_format: str = AnalysisConfig.figure_format,
    dpi: int = AnalysisConfig.dpi,
) -> dict:
    """The comparison as a dict; with `out`, also compare.json, compare.md and the figure there
    (written whole or not at all)."""
    check_figure_options(figure_format, dpi)
    if not report_dirs:
        raise TurnphaseError("give at least one report folder")
    variants = []
    for d in map(Path, report_dirs):
        report = _read_json(d / "report.json", "analyze")
        variants.append(
            {
                "model": report["model"],
                "report": str(d),
                "phase_scheme": report["phase_scheme"],
                "split": report["split"]["kind"],
                "n_layers": report["dataset"].get("n_layers"),
                "tokens": report["tokens"]["analysed"],
                "layers": layer_rows(report),
                "findings": report["findings"],
                "steering": None,
            }
        )
    if len({(v["phase_scheme"], v["split"]) for v in variants}) > 1:
        raise TurnphaseError(
            "the reports use different phase schemes or fold kinds; compare reports made alike "
            "(the same --phase-scheme and --split)"
        )
    by_model = {v["model"]: v for v in variants}
    for d in map(Path, steer_dirs):
        steered = _read_json(d / "steer.json", "steer")
        model = steered["model"]["id"]
        if model not in by_model:
            raise TurnphaseError(f"{d}: steers {model}, which none of the reports analysed")
        by_model[model]["steering"] = {"folder": str(d), "findings": steered["findings"]}
    result = {"variants": variants, "figures": []}
    if out is not None:
        from turnphase.analysis.figures import save

        out = Path(out)
        check_out(out, overwrite)
        with staged_folder(out) as tmp:
            name = f"compare_by_depth.{figure_format}"
            save(by_depth_figure(variants), tmp / name, dpi)
            result["figures"] = [name]
            atomic_write_json(tmp / COMPARE_FILE, result)
            (tmp / SUMMARY_FILE).write_text(markdown(result))
    return result


def by_depth_figure(variants: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 8), layout="constrained")
    axes = fig.subplots(2, 4)
    panels = [
        ("trig_r2", "trig_r2_null", "trig probe R² (held out)"),
        ("helix_r2", "helix_r2_null", "helix probe R² (held out)"),
        (
            None,
            None,
            "cross-role transfer r of the sin/cos readout\n(solid: user→assistant; dashed: assistant→user)",
        ),
        ("trig_partial_r2", None, "what activations add over the structure baseline\n(partial R², trig)"),
        *((f"wheel_{p}", f"wheel_{p}_null", f"colour wheel r, {label}") for p, label in PLANES.items()),
    ]
    for ax, (key, null, title) in zip(axes.flat, panels, strict=False):
        for i, v in enumerate(variants):
            depth = [r["depth"] for r in v["layers"]]
            if key is None:  # the transfer panel: both directions; a rotation is above 0 in both
                for d, style in zip(DIRECTIONS, ("o-", "s--"), strict=True):
                    ax.plot(depth, [r[f"transfer_{d}"] for r in v["layers"]], style, color=f"C{i}")
                continue
            line = ax.plot(depth, [r[key] for r in v["layers"]], "o-", label=v["model"], color=f"C{i}")[0]
            if null:
                ax.plot(depth, [r[null] for r in v["layers"]], ":", color=line.get_color(), label="_")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("relative depth (layer / last layer)")
        ax.axhline(0, color="0.7", lw=0.8)
    axes[0, 0].legend(fontsize=7, title="solid: real; dotted: largest null", title_fontsize=7)
    ax = axes.flat[-1]
    for i, v in enumerate(variants):
        ys = [
            VERDICTS.index(r["verdict"]) if r["verdict"] in VERDICTS else len(VERDICTS) for r in v["layers"]
        ]
        ax.scatter([r["depth"] for r in v["layers"]], [y + 0.12 * i for y in ys], color=f"C{i}", s=18)
    ax.set_yticks(range(len(VERDICTS)), VERDICTS, fontsize=8)
    ax.set_title("verdict per layer", fontsize=9)
    ax.set_xlabel("relative depth (layer / last layer)")
    fig.suptitle("Variants side by side: held-out probes, planes and verdicts by relative depth")
    return fig


def markdown(result: dict) -> str:
    cols = ["model", "layer", "depth", "verdict", "linear R² (null)", "trig R² (null)", "structure"]
    cols += ["trig +acts", "transfer r (user->assistant / assistant->user)", "wheel r Fourier (null)"]
    cols += ["wheel r trig (null)", "wheel r pair (null)", "k2/k1"]
    lines = ["# Variants side by side", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for v in result["variants"]:
        for r in v["layers"]:
            k = "n/a" if r["k2_over_k1"] is None else f"{r['k2_over_k1']:.2f}"
            lines.append(
                f"| {v['model']} | {r['layer']} | {r['depth']:.2f} | {r['verdict']} | "
                f"{r['linear_r2']:.3f} ({r['linear_r2_null']:.3f}) | {r['trig_r2']:.3f} ({r['trig_r2_null']:.3f}) | "
                f"{r['trig_structure_r2']:.3f} | {r['trig_partial_r2']:.3f} | {r['transfer_r']:.3f} "
                f"({r['transfer_user_to_assistant']:+.3f} / {r['transfer_assistant_to_user']:+.3f}) | "
                f"{r['wheel_fourier']:.3f} ({r['wheel_fourier_null']:.3f}) | "
                f"{r['wheel_trig']:.3f} ({r['wheel_trig_null']:.3f}) | "
                f"{r['wheel_pair']:.3f} ({r['wheel_pair_null']:.3f}) | {k} |"
            )
    lines += [
        "",
        "Nulls: the largest of scrambled, within-role and within-turn. Depth = layer / (layers - 1).",
    ]
    for v in result["variants"]:
        lines += ["", f"## {v['model']}", "", f"Report: `{v['report']}`, {v['tokens']} tokens analysed.", ""]
        lines += [f"- {f}" for f in v["findings"]]
        if v["steering"]:
            lines += ["", f"Steering (`{v['steering']['folder']}`):", ""]
            lines += [f"- {f}" for f in v["steering"]["findings"]]
    for name in result["figures"]:
        lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"


# ---- CLI -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "reports", nargs="+", type=Path, help="`turnphase analyze` output folders, one per variant"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="folder for compare.json, compare.md and the figure"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--steer", nargs="*", type=Path, default=[], help="`turnphase steer` folders of the same models"
    )
    add_figure_arguments(p)


def run(args: argparse.Namespace) -> int:
    result = compare(
        args.reports,
        args.out,
        args.steer,
        overwrite=args.overwrite,
        figure_format=args.figure_format,
        dpi=args.dpi,
    )
    log.info("%s", markdown(result).split("\n\n## ")[0])
    log.info("compare.json, compare.md and the figure: %s/", args.out)
    return 0
