"""The study's figures, one PNG each, labelled to be read without the code.

Each function takes plain arrays and a path. Figures are built on `matplotlib.figure.Figure`
(Agg canvas, no pyplot state), so drawing works headless and leaves nothing open. Real data and
the scrambled control sit side by side on shared scales wherever the study compared them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PHASE_CMAP = "twilight"  # cyclic: phase 0 and 1 get the same colour, as they should
PHASE_LABEL = "true phase (0 user turn starts, 0.5 assistant starts, 1 round ends)"
ROLE_COLORS = {"user": "tab:orange", "assistant": "tab:blue"}
DPI = 110


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path.name


def token_counts(rounds: np.ndarray, roles: np.ndarray, n_excluded: int, path: Path) -> str:
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
    ax.set_title(f"Analysed tokens per round and role ({n_excluded} system/excluded tokens not shown)")
    ax.legend()
    return _save(fig, path)


def probe_r2_by_layer(layers: list[int], probes: dict[str, dict[str, list[dict]]], path: Path) -> str:
    """probes[probe][pairing] is one result dict ({r2, ci95}) per layer; pairing in real,
    scrambled, position."""
    names = list(probes)
    fig = Figure(figsize=(4.2 * len(names), 4), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    x = np.asarray(layers)
    styles = {
        "real": {"color": "tab:blue", "marker": "o", "label": "real activations"},
        "scrambled": {"color": "tab:gray", "marker": "s", "label": "scrambled control"},
        "position": {"color": "tab:green", "marker": "", "ls": "--", "label": "position-only baseline"},
    }
    for ax, name in zip(axes, names, strict=True):
        for pairing, style in styles.items():
            rows = probes[name][pairing]
            r2 = np.array([r["r2"] for r in rows])
            ci = np.array([r["ci95"] or [r["r2"], r["r2"]] for r in rows])
            ax.errorbar(x, r2, yerr=[r2 - ci[:, 0], ci[:, 1] - r2], capsize=3, **style)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{name} probe")
        ax.set_xlabel("layer (decoder block output, 0-based)")
        ax.set_xticks(x)
    axes[0].set_ylabel("R² on held-out test set (0 = mean baseline)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Probe R² by layer, 95% bootstrap intervals over test conversations")
    return _save(fig, path)


def predicted_vs_true(
    layer: int, phase: np.ndarray, roles: np.ndarray, pred: dict[str, np.ndarray], path: Path
) -> str:
    """Linear-probe predictions of test tokens; pred[pairing]: (n,) for real and scrambled."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, (pairing, values) in zip(axes, pred.items(), strict=True):
        for role, color in ROLE_COLORS.items():
            m = roles == role
            ax.scatter(phase[m], values[m], s=4, alpha=0.5, color=color, label=f"{role} tokens")
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, label="perfect prediction")
        ax.set_title(f"layer {layer}, {pairing}")
        ax.set_xlabel(PHASE_LABEL)
    axes[0].set_ylabel("phase predicted by the linear probe")
    axes[0].legend(fontsize=8, markerscale=3)
    fig.suptitle("Linear probe on held-out tokens: real activations vs scrambled control")
    return _save(fig, path)


def _phase_scatter(ax, x: np.ndarray, y: np.ndarray, phase: np.ndarray):
    return ax.scatter(x, y, c=phase, cmap=PHASE_CMAP, vmin=0, vmax=1, s=4, alpha=0.7)


def pc_scatter(
    layer: int,
    z: dict[str, np.ndarray],
    phase: np.ndarray,
    pcs: dict[str, tuple[int, int]],
    path: Path,
    what: str,
) -> str:
    """Tokens projected on a PC pair, hue = true phase. z[pairing]: (n, n_pcs); pcs[pairing]: (i, j)."""
    fig = Figure(figsize=(10.5, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    points = None
    for ax, (pairing, values) in zip(axes, z.items(), strict=True):
        i, j = pcs[pairing]
        points = _phase_scatter(ax, values[:, i], values[:, j], phase)
        ax.set_xlabel(f"PC{i} projection (activation units)")
        ax.set_ylabel(f"PC{j} projection (activation units)")
        ax.set_title(f"layer {layer}, {pairing}")
    fig.colorbar(points, ax=list(axes), label=PHASE_LABEL)
    fig.suptitle(what)
    return _save(fig, path)


def heatmaps(
    layer: int, maps: dict[str, np.ndarray], path: Path, *, what: str, xlabel: str, x0: int, mark=None
) -> str:
    """PC-by-something heatmaps, real | scrambled, on the real data's colour scale."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
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
    return _save(fig, path)


def color_wheel(
    layer: int,
    z: dict[str, np.ndarray],
    phase: np.ndarray,
    pcs: dict[str, tuple[int, int]],
    scale: np.ndarray,
    corr: dict[str, float],
    path: Path,
) -> str:
    """Tokens in each pairing's best Fourier plane, PCs scaled to unit variance; hue = true phase."""
    fig = Figure(figsize=(10.5, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    points = None
    for ax, (pairing, values) in zip(axes, z.items(), strict=True):
        i, j = pcs[pairing]
        points = _phase_scatter(ax, values[:, i] / scale[i], values[:, j] / scale[j], phase)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(f"PC{i} / its std")
        ax.set_ylabel(f"PC{j} / its std")
        ax.set_title(f"layer {layer}, {pairing}\nbest pair PC{i}, PC{j}: angle-phase r = {corr[pairing]:.2f}")
    fig.colorbar(points, ax=list(axes), label=PHASE_LABEL)
    fig.suptitle("Colour wheel: the PC pair turning once per round a quarter cycle apart")
    return _save(fig, path)
