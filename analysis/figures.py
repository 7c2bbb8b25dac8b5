"""The study's figures and the cross-layer ones, labelled to be read without the code.

Each function takes plain arrays (or report entries) and returns a `matplotlib.figure.Figure`
(Agg canvas, no pyplot state), so drawing works headless and leaves nothing open; `save` writes
it as PNG, PDF or SVG with its title in the file's metadata. Real data and the nulls sit side by
side on shared scales wherever the study compared them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in 0..1, (n, 3) -> (n, 3). By hand: matplotlib has no colour-space maths."""
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], axis=1)
    d = 6 / 29
    xyz = np.where(f > d, f**3, 3 * d * d * (f - 4 / 29)) * [0.95047, 1.0, 1.08883]
    to_linear = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    lin = np.clip(xyz @ to_linear.T, 0, 1)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def cyclic_phase_cmap(n: int = 256, lightness: float = 60, swing: float = 12, chroma: float = 36) -> Colormap:
    """A circle in CIELAB: hue turns once while lightness rises and falls by `swing`, so every phase
    differs in lightness or in yellow-blue (what colour-blind readers see) and no phase is near white.
    Phase 0 (user turn starts) khaki, 0.25 light teal, 0.5 (assistant starts) blue, 0.75 dark rose.
    The defaults are the largest circle about L* 60 inside the sRGB gamut. (matplotlib's `twilight`
    is white at 0 and 1: those tokens vanish on a white page.)"""
    t = np.linspace(0, 2 * np.pi, n)  # both ends the same colour: cmap(0) == cmap(1)
    lab = np.stack([lightness + swing * np.sin(t), -chroma * np.sin(t), chroma * np.cos(t)], axis=1)
    return ListedColormap(_lab_to_srgb(lab), name="turnphase_cyclic")


PHASE_CMAP = cyclic_phase_cmap()  # cyclic: phase 0 and 1 get the same colour, as they should
PHASE_LABEL = "true phase (0 user turn starts, 0.5 assistant starts, 1 round ends)"
ROLE_COLORS = {"user": "tab:orange", "assistant": "tab:blue"}
_METADATA = {  # the title, and no timestamp: the same run gives the same files
    "png": lambda title: {"Title": title},
    "pdf": lambda title: {"Title": title, "CreationDate": None},
    "svg": lambda title: {"Title": title, "Date": None},
}


def save(fig: Figure, path: Path, dpi: int) -> None:
    """Write `fig` in the format its suffix names (png, pdf, svg), its title in the metadata."""
    title = fig.get_suptitle()
    if not title:
        raise ValueError(f"{path.name}: every figure gets a title (suptitle)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # constrained layout already fits the margins; bbox "tight" would draw twice
    fig.savefig(path, dpi=dpi, metadata=_METADATA[path.suffix[1:]](title))


def token_counts(rounds: np.ndarray, roles: np.ndarray, n_excluded: int) -> Figure:
    """Analysed tokens per round, split by role. rounds: (n,), roles: (n,) role names."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ids = np.unique(rounds)
    width = 0.4
    for offset, role in ((-width / 2, "user"), (width / 2, "assistant")):
        counts = [int(((rounds == r) & (roles == role)).sum()) for r in ids]
        ax.bar(ids + offset, counts, width, label=f"{role} ({sum(counts)} tokens)", color=ROLE_COLORS[role])
    ax.set_xticks(ids)
    ax.set_xlabel("round (0-based)")
    ax.set_ylabel("tokens, all conversations")
    fig.suptitle(f"Analysed tokens per round and role ({n_excluded} system/excluded tokens not shown)")
    ax.legend()
    return fig


NULL_STYLES = {
    "scrambled": {"color": "tab:gray", "marker": "s"},
    "within_role": {"color": "tab:purple", "marker": "^"},
    "within_turn": {"color": "tab:red", "marker": "v"},
}


def _errorbar(ax, x: np.ndarray, results: list[dict], key: str = "r2", **style) -> None:
    v = np.array([r[key] for r in results])
    ci = np.array([r.get("ci95") or [r[key], r[key]] for r in results])
    # a percentile interval of a biased statistic (locking, |.| of a mean) can miss its value:
    # errorbar takes only non-negative lengths, so such a bar starts at the value
    ax.errorbar(x, v, yerr=np.maximum([v - ci[:, 0], ci[:, 1] - v], 0), capsize=3, **style)


def probe_r2_by_layer(layers: list[int], per_layer: dict) -> Figure:
    """Held-out R^2 per layer and probe (configured scheme): real, the three nulls, the baselines."""
    scheme = next(iter(per_layer[str(layers[0])]["probes"]))
    names = list(per_layer[str(layers[0])]["probes"][scheme])
    fig = Figure(figsize=(4.4 * len(names), 4.2), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    x = np.asarray(layers)
    for ax, name in zip(axes, names, strict=True):
        entries = [per_layer[str(L)]["probes"][scheme][name] for L in layers]
        _errorbar(
            ax,
            x,
            [e["acts"]["real"] for e in entries],
            color="tab:blue",
            marker="o",
            label="real activations",
        )
        for null, style in NULL_STYLES.items():
            _errorbar(ax, x, [e["acts"][null] for e in entries], label=f"null: {null}", **style)
        for model, ls in (("structure", "--"), ("position", ":")):
            ax.plot(
                x,
                [e[model]["r2"] for e in entries],
                color="tab:green",
                ls=ls,
                label=f"{model} baseline (labels only)",
            )
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{name} probe")
        ax.set_xlabel("layer (decoder block output, 0-based)")
        ax.set_xticks(x)
    axes[0].set_ylabel("R² on held-out conversations (0 = mean baseline)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Probe R² by layer ({scheme}), cross-fitted, 95% bootstrap intervals over conversations")
    return fig


def evidence_by_layer(layers: list[int], per_layer: dict) -> Figure:
    """The evidence that separates the hypotheses, per layer, real against the three nulls."""
    x = np.asarray(layers)
    entries = [per_layer[str(L)] for L in layers]
    scheme = next(iter(entries[0]["probes"]))
    fig = Figure(figsize=(16, 4.2), layout="constrained")
    axes = fig.subplots(1, 4)
    panels = [
        (
            "what activations add over the structure baseline\n(partial R², trig probe)",
            lambda e, n: e["probes"][scheme]["trig"]["partial_r2_over_structure"][n],
            "value",
        ),
        (
            "cross-role transfer of the sin/cos readout (Pearson r;\nmean of both ways; a rotation gives > 0 each way)",
            lambda e, n: e["rotation"]["transfer"][n]["mean"],
            "value",
        ),
        (
            "held-out colour wheel, Fourier plane\n(Fisher-Lee r)",
            lambda e, n: e["planes"]["fourier"][n]["circcorr"],
            "value",
        ),
        (
            "jump of the trig readout at user->assistant boundaries\n(beyond mid-turn cuts; a switch gives > 0)",
            lambda e, n: e["rotation"]["continuity"][n]["user_to_assistant"],
            "value",
        ),
    ]
    for ax, (title, get, key) in zip(axes, panels, strict=True):
        _errorbar(ax, x, [get(e, "real") for e in entries], key, color="tab:blue", marker="o", label="real")
        for null, style in NULL_STYLES.items():
            _errorbar(ax, x, [get(e, null) for e in entries], key, label=f"null: {null}", **style)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x)
        ax.set_xlabel("layer")
    # the verdict asks for transfer each way, which a mean can hide: the real data's two ways too
    for way, marker, dx in (("user_to_assistant", ">", -0.15), ("assistant_to_user", "<", 0.15)):
        ways = [e["rotation"]["transfer"]["real"][way] for e in entries]
        label = "real, " + way.replace("_to_", " -> ")
        _errorbar(
            axes[1], x + dx, ways, "value", color="tab:blue", marker=marker, ls="none", alpha=0.6, label=label
        )
    ways = [(h, lab) for h, lab in zip(*axes[1].get_legend_handles_labels(), strict=True) if " -> " in lab]
    axes[1].legend(*zip(*ways, strict=True), fontsize=7, loc="best")  # the rest is in the first panel's
    on_top = blended_transform_factory(axes[0].transData, axes[0].transAxes)
    for e, L in zip(entries, x, strict=True):
        verdict = e["verdict"]["verdict"]
        axes[0].text(
            L, 0.98, verdict, transform=on_top, rotation=90, fontsize=7, ha="center", va="top", color="0.35"
        )
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "What tells a clock from a switch, by layer (each layer's verdict at the top of the first panel)"
    )
    return fig


WHEEL_PLANES = {
    "pair": "study's best PC pair",
    "fourier": "once-per-round Fourier plane",
    "trig": "supervised (trig probe)",
}


def wheel_by_layer(layers: list[int], per_layer: dict) -> Figure:
    """Held-out colour-wheel statistics per layer and plane: circular correlation and locking of
    the real data against the three nulls, 95% intervals."""
    x = np.asarray(layers)
    entries = [per_layer[str(L)] for L in layers]
    stats = {
        "circcorr": "circular correlation with true phase\n(Fisher-Lee r; 0 none, 1 same, -1 reversed)",
        "locking": "phase locking |mean exp(i(angle - 2π phase))|\n(0 none, 1 perfect)",
    }
    fig = Figure(figsize=(4.6 * len(WHEEL_PLANES), 7.2), layout="constrained")
    axes = fig.subplots(len(stats), len(WHEEL_PLANES), sharex=True, sharey="row")
    for col, (plane, title) in enumerate(WHEEL_PLANES.items()):
        for row, (stat, ylabel) in enumerate(stats.items()):
            ax = axes[row, col]
            real = [e["planes"][plane]["real"][stat] for e in entries]
            _errorbar(ax, x, real, "value", color="tab:blue", marker="o", label="real")
            for null, style in NULL_STYLES.items():
                _errorbar(
                    ax,
                    x,
                    [e["planes"][plane][null][stat] for e in entries],
                    "value",
                    **style,
                    label=f"null: {null}",
                )
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(x)
            if row == 0:
                ax.set_title(title)
            if row == len(stats) - 1:
                ax.set_xlabel("layer")
            if col == 0:
                ax.set_ylabel(ylabel, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        "Held-out colour wheels by layer: planes fitted on training folds, scored on the held-out fold, "
        "real vs nulls (95% intervals)"
    )
    return fig


def predicted_vs_true(
    layer: int, phase: np.ndarray, roles: np.ndarray, pred: dict[str, np.ndarray]
) -> Figure:
    """Linear-probe predictions of held-out tokens; pred[pairing]: (n,) for real and the nulls."""
    fig = Figure(figsize=(5 * len(pred), 4.5), layout="constrained")
    axes = fig.subplots(1, len(pred), sharex=True, sharey=True, squeeze=False)[0]
    for ax, (pairing, values) in zip(axes, pred.items(), strict=True):
        for role, color in ROLE_COLORS.items():
            m = roles == role
            ax.scatter(
                phase[m], values[m], s=4, alpha=0.5, color=color, label=f"{role} tokens", rasterized=True
            )
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, label="perfect prediction")
        ax.set_title(f"layer {layer}, {pairing}")
        ax.set_xlabel(PHASE_LABEL)
    axes[0].set_ylabel("phase predicted by the linear probe")
    axes[0].legend(fontsize=8, markerscale=3)
    nulls = ", ".join(f"{name} null" for name in pred if name != "real")
    fig.suptitle(f"Layer {layer}: linear probe on held-out tokens, real activations vs the {nulls}")
    return fig


def _phase_scatter(ax, x: np.ndarray, y: np.ndarray, phase: np.ndarray):
    return ax.scatter(x, y, c=phase, cmap=PHASE_CMAP, vmin=0, vmax=1, s=4, alpha=0.7, rasterized=True)


def pc_scatter(layer: int, z: dict[str, np.ndarray], phase: np.ndarray, what: str) -> Figure:
    """Tokens projected on two PCs, hue = true phase. z[name]: (n, 2)."""
    fig = Figure(figsize=(5.6 * len(z), 4.8), layout="constrained")
    axes = fig.subplots(1, len(z), squeeze=False)[0]
    points = None
    for ax, (name, values) in zip(axes, z.items(), strict=True):
        points = _phase_scatter(ax, values[:, 0], values[:, 1], phase)
        ax.set_xlabel("PC0 projection (activation units)")
        ax.set_ylabel("PC1 projection (activation units)")
        ax.set_title(f"layer {layer}, {name}")
    fig.colorbar(points, ax=list(axes), label=PHASE_LABEL)
    fig.suptitle(f"Layer {layer}: {what}")
    return fig


def heatmaps(
    layer: int, maps: dict[str, np.ndarray], *, title: str, what: str, xlabel: str, x0: int, mark=None
) -> Figure:
    """PC-by-something heatmaps, real and each null, on one colour scale (PCA of all tokens)."""
    fig = Figure(figsize=(4.6 * len(maps), 4.4), layout="constrained")
    axes = fig.subplots(1, len(maps))
    vmax = max(float(np.max(m)) for m in maps.values()) or 1.0
    image = None
    for ax, (pairing, values) in zip(axes, maps.items(), strict=True):
        image = ax.imshow(
            values,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=0,
            vmax=vmax,
            extent=(x0 - 0.5, x0 + values.shape[1] - 0.5, -0.5, values.shape[0] - 0.5),
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("principal component")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"layer {layer}, {pairing} (max {float(np.max(values)):.3g})")
        if mark is not None:
            i, j = mark[pairing]
            ax.scatter([j], [i], marker="x", color="red", s=60, label=f"best pair PC{i}, PC{j}")
            ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(image, ax=list(axes), label=what)
    fig.suptitle(f"Layer {layer}: {title}")
    return fig


def color_wheels(layer: int, scatter: dict[str, np.ndarray], phase: np.ndarray, planes: dict) -> Figure:
    """Held-out tokens in each colour-wheel plane, hue = true phase: one row for the real data and
    one per null given (the study's control is the scrambled one: its planes, fitted on shuffled
    phases, should show no wheel). scatter[pairing]: (n, 9) layer.SCATTER_COLUMNS; planes: the
    report's planes entry (titles give each row's held-out r; the real row's also the nulls')."""
    names, titles = tuple(WHEEL_PLANES), WHEEL_PLANES
    fig = Figure(figsize=(14, 4.6 * len(scatter)), layout="constrained")
    axes = fig.subplots(len(scatter), len(names), squeeze=False)
    points = None
    for row, (pairing, values) in zip(axes, scatter.items(), strict=True):
        for ax, (k, name) in zip(row, enumerate(names), strict=True):
            u = values[:, 3 + 2 * k : 5 + 2 * k]
            scale = np.nanstd(u, axis=0)
            scale[~(scale > 0)] = 1.0
            points = _phase_scatter(ax, u[:, 0] / scale[0], u[:, 1] / scale[1], phase)
            ax.set_aspect("equal", adjustable="datalim")
            r = {
                p: v["circcorr"]["value"] for p, v in planes[name].items() if p in NULL_STYLES or p == "real"
            }
            if pairing == "real":
                nulls = ", ".join(f"{p} {v:.2f}" for p, v in r.items() if p != "real")
                title = f"{titles[name]}: held-out r = {r['real']:.2f}\nnulls: {nulls}"
            else:
                title = f"{pairing} null, {titles[name]}: held-out r = {r[pairing]:.2f}"
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("cos-like coordinate / its std")
            ax.set_ylabel("sin-like coordinate / its std")
    fig.colorbar(points, ax=axes.ravel().tolist(), label=PHASE_LABEL)
    rows = " | ".join(["real", *(f"{p} null" for p in scatter if p != "real")])
    fig.suptitle(
        f"Layer {layer}: colour wheels, planes fitted on training folds, tokens from the held-out fold ({rows})"
    )
    return fig
