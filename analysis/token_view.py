"""An HTML page colouring each token of one test conversation by its estimated phase.

The estimate is the token's angle in the layer's held-out Fourier plane (planes.py), so the
page shows where in the turn-taking cycle the model's activations place each token, next to the
true phase (on hover). System tokens, which have no phase, are grey. Token text is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.colors import to_hex

from turnphase.analysis.figures import PHASE_CMAP

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 1.9; }}
.text {{ font-family: monospace; white-space: pre-wrap; }}
.text span {{ border-radius: 3px; padding: 1px 0; }}
.legend span {{ display: inline-block; width: 2.2em; text-align: center; font-size: 80%; }}
</style></head><body>
<h2>{title}</h2>
<p>Each token of conversation {conversation} is coloured by the phase its layer-{layer} activation
gives: its angle in the once-per-round Fourier plane, fitted on the folds that do not hold this
conversation. Hover a token for its true phase and the estimate. Grey tokens (the system
prompt{excluded}) are not analysed. Held-out angle-phase circular correlation over all tokens:
{corr:.3f}.</p>
<p class="legend">estimated phase: {legend}</p>
<div class="text">{tokens}</div>
</body></html>
"""


def write_token_view(
    path: Path,
    *,
    layer: int,
    tokens: pa.Table,
    analysed_positions: np.ndarray,
    estimate: np.ndarray,
    corr: float,
    excluded_template: bool,
) -> str:
    """tokens: the conversation's rows (position, role, phase, token); estimate: (m,) phases of
    the analysed tokens at `analysed_positions`."""
    cmap = colormaps[PHASE_CMAP]
    est_at = dict(zip(analysed_positions.tolist(), estimate.tolist(), strict=True))
    spans = []
    for pos, role, phase, text in zip(
        *(tokens.column(c).to_pylist() for c in ("position", "role", "phase", "token")), strict=True
    ):
        est = est_at.get(pos)
        true = "none" if phase is None else f"{phase:.3f}"
        if est is None:
            style, tip = "color:#777;background:#eee", f"{role}, not analysed, true phase {true}"
        else:
            background = to_hex(cmap(est))
            fg = "#000" if _luminance(cmap(est)) > 0.5 else "#fff"
            style, tip = (
                f"background:{background};color:{fg}",
                f"{role}, true phase {true}, estimate {est:.3f}",
            )
        spans.append(f'<span style="{style}" title="{html.escape(tip)}">{html.escape(text)}</span>')
    legend = "".join(
        f'<span style="background:{to_hex(cmap(p))};color:{"#000" if _luminance(cmap(p)) > 0.5 else "#fff"}">'
        f"{p:.2g}</span>"
        for p in np.linspace(0, 1, 11)
    )
    conversation = tokens.column("conversation_id")[0].as_py() if tokens.num_rows else "?"
    page = PAGE.format(
        title=html.escape(f"Estimated phase per token, layer {layer}"),
        conversation=conversation,
        layer=layer,
        excluded=" and chat-template markup" if excluded_template else "",
        corr=corr,
        legend=legend,
        tokens="".join(spans),
    )
    path.write_text(page, encoding="utf-8")
    return path.name


def _luminance(rgba: tuple[float, ...]) -> float:
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b
