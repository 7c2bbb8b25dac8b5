"""An HTML page colouring each token of one held-out conversation by its estimated phase.

The estimate is the token's angle in the layer's held-out Fourier plane (planes.py): the token's
background. Under every token with a phase, a strip in the same colour map shows its true phase,
so where the two disagree is visible without hovering (hover still gives both numbers). Tokens
that are not analysed (the system prompt, excluded template markup) have a grey background. Token
text is escaped; the page is self-contained (inline CSS, no scripts).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.colors import to_hex

from turnphase.analysis.figures import PHASE_CMAP

NOT_ANALYSED_BACKGROUND = "#eeeeee"  # far lighter than any colour of PHASE_CMAP (tests check)
NOT_ANALYSED_TEXT = "#777777"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 2.2; }}
.text {{ font-family: monospace; white-space: pre-wrap; }}
.text span {{ border-radius: 3px 3px 0 0; padding: 1px 0 0 0; border-bottom: 0.4em solid transparent; }}
.legend span {{ display: inline-block; width: 2.2em; text-align: center; font-size: 80%; }}
.legend .strip {{ height: 0.5em; vertical-align: middle; }}
</style></head><body>
<p>{back}</p>
<h2>{title}</h2>
<p>Each token of conversation {conversation} is coloured by the phase its layer-{layer} activation
gives: its angle in the once-per-round Fourier plane, fitted on the folds that do not hold this
conversation. The strip under each token is its true phase, in the same colours: where background
and strip differ, the estimate is off. Hover a token for both numbers. Grey tokens (the system
prompt{excluded}) are not analysed. Held-out angle-phase circular correlation over all tokens:
{corr:.3f}.</p>
<p class="legend">background, estimated phase: {legend}<br>
strip, true phase: {strip_legend}</p>
<div class="text">{tokens}</div>
</body></html>
"""


def _text_on(rgba: tuple[float, ...]) -> str:
    r, g, b = rgba[:3]
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#fff"


def write_token_view(
    path: Path,
    *,
    layer: int,
    tokens: pa.Table,
    analysed_positions: np.ndarray,
    estimate: np.ndarray,
    corr: float,
    excluded_template: bool,
    index_href: str | None = None,
) -> None:
    """tokens: the conversation's rows (position, role, phase, token); estimate: (m,) phases of
    the analysed tokens at `analysed_positions`; index_href: the report's front page, relative."""
    est_at = dict(zip(analysed_positions.tolist(), estimate.tolist(), strict=True))
    spans = []
    for pos, role, phase, text in zip(
        *(tokens.column(c).to_pylist() for c in ("position", "role", "phase", "token")), strict=True
    ):
        est = est_at.get(pos)
        true = "none" if phase is None else f"{phase:.3f}"
        strip = "" if phase is None else f";border-bottom-color:{to_hex(PHASE_CMAP(phase))}"
        if est is None:
            style = f"color:{NOT_ANALYSED_TEXT};background:{NOT_ANALYSED_BACKGROUND}"
            tip = f"{role}, not analysed, true phase {true}"
        else:
            rgba = PHASE_CMAP(est)
            style = f"background:{to_hex(rgba)};color:{_text_on(rgba)}"
            tip = f"{role}, true phase {true}, estimate {est:.3f}"
        spans.append(f'<span style="{style}{strip}" title="{html.escape(tip)}">{html.escape(text)}</span>')
    ticks = np.linspace(0, 1, 11)
    legend = "".join(
        f'<span style="background:{to_hex(PHASE_CMAP(p))};color:{_text_on(PHASE_CMAP(p))}">{p:.2g}</span>'
        for p in ticks
    )
    strip_legend = "".join(
        f'<span class="strip" style="background:{to_hex(PHASE_CMAP(p))}" title="{p:.2g}"></span>'
        for p in ticks
    )
    conversation = tokens.column("conversation_id")[0].as_py() if tokens.num_rows else "?"
    page = PAGE.format(
        title=html.escape(f"Estimated and true phase per token, layer {layer}"),
        back=f'<a href="{html.escape(index_href)}">back to the report</a>' if index_href else "",
        conversation=conversation,
        layer=layer,
        excluded=" and chat-template markup" if excluded_template else "",
        corr=corr,
        legend=legend,
        strip_legend=strip_legend,
        tokens="".join(spans),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
