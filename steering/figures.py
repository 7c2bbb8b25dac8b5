"""Steering figures: dose-response against the random-control band, and P(end of turn) by step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from turnphase.analysis.figures import save

PANELS = (
    ("length", "turn length (tokens)"),
    ("p_end", "mean P(end of turn)"),
    ("next_user", "next header: log P(user) - log P(assistant)"),
)
LINES = {
    "add": ("probe/linear", "scrambled/probe/linear"),
    "rotate": ("plane/trig", "plane/fourier", "scrambled/plane/trig"),
}


def dose_response(entry: dict, title: str) -> Figure | None:
    """A row of panels per kind of edit run (add, rotate); None when the run has neither."""
    kinds = [k for k in LINES if any(c["kind"] == k for c in entry["conditions"])]
    if not kinds:
        return None
    fig = Figure(figsize=(5 * len(PANELS), 0.5 + 3.25 * len(kinds)), layout="constrained")
    axes = fig.subplots(len(kinds), len(PANELS), squeeze=False)
    for row, kind in enumerate(kinds):
        targets = LINES[kind]
        conds = [c for c in entry["conditions"] if c["kind"] == kind]
        for col, (measure, label) in enumerate(PANELS):
            ax = axes[row, col]
            base = entry["unsteered"][measure]["value"]
            # the random band: unsteered + random mean +- 1.96 sd, at both signs of each magnitude
            band = {}
            for c in conds:
                e = c["effect"][measure]
                band[c["strength"]] = (
                    base + e["random_mean"] - 1.96 * e["random_sd"],
                    base + e["random_mean"] + 1.96 * e["random_sd"],
                )
            xs = sorted(band | {0.0: (base, base)})
            ax.fill_between(
                xs,
                [band.get(x, (base, base))[0] for x in xs],
                [band.get(x, (base, base))[1] for x in xs],
                color="0.85",
                label="random (95% of draws)",
            )
            for target in targets:
                pts = sorted((c["strength"], c) for c in conds if c["target"] == target)
                if not pts:
                    continue
                x = [0.0, *(s for s, _ in pts)]
                y = [base, *(base + c["effect"][measure]["value"] for _, c in pts)]
                lo = [base, *(base + (c["effect"][measure]["ci95"] or [np.nan] * 2)[0] for _, c in pts)]
                hi = [base, *(base + (c["effect"][measure]["ci95"] or [np.nan] * 2)[1] for _, c in pts)]
                order = np.argsort(x)
                x, y, lo, hi = (np.asarray(v)[order] for v in (x, y, lo, hi))
                ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=target)
            ax.axhline(base, color="k", lw=0.6, ls=":")
            ax.set_xlabel(
                "a (|h| units; + toward a later phase)"
                if kind == "add"
                else "angle, degrees (+ toward a later phase)"
            )
            ax.set_ylabel(label)
            ax.set_title(f"{kind}: {label}")
            if col == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def p_end_curves(entry: dict, title: str) -> Figure:
    """P(end of turn) by step: unsteered, and for each phase direction or plane (not the scrambled
    null's) the strongest add or rotation run at each sign."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(_xy(entry["unsteered"]["p_end_curve"]), color="k", label="unsteered")
    strongest = {}
    for c in entry["conditions"]:
        if (
            c["kind"] in LINES
            and c["target"] in LINES[c["kind"]]
            and not c["target"].startswith("scrambled/")
        ):
            key = (c["target"], np.sign(c["strength"]))
            if abs(c["strength"]) >= abs(strongest.get(key, {"strength": 0})["strength"]):
                strongest[key] = c
    for c in strongest.values():
        ax.plot(_xy(c["p_end_curve"]), label=c["name"], lw=1)
    ax.set_xlabel("generated step")
    ax.set_ylabel("mean P(end of turn), turns still running")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def _xy(curve: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in curve])


def write_all(result: dict, out: Path, figure_format: str, dpi: int) -> list[str]:
    written = []
    for L, settings in result["layers"].items():
        for setting, entry in settings.items():
            prompts = entry["n_prompts"]
            title = f"{result['model']['id']}, layer {L}, {setting} of the assistant turn ({prompts} prompts)"
            stem = out / f"layer{L}_{setting}"
            if (fig := dose_response(entry, title)) is not None:
                path = stem.with_name(f"{stem.name}_dose_response.{figure_format}")
                save(fig, path, dpi)
                written.append(path.name)
            path = stem.with_name(f"{stem.name}_p_end.{figure_format}")
            save(p_end_curves(entry, title), path, dpi)
            written.append(path.name)
    return written
