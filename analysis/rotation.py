"""What tells a clock from a switch, and the verdict per layer.

With the study's labels (user 0-0.5, assistant 0.5-1) a switch (whose turn it is) plus a ramp
inside each turn also gives a high trig R^2 and even a supervised colour wheel, so probe R^2 alone
cannot separate the hypotheses. These can:

    cross-role transfer  the trig readout fitted on one role's tokens, scored (Pearson r of sin and
                         cos) on the other role's held-out tokens. A rotation is one readout for the
                         whole round: positive both ways. Ramps that restart every turn: zero or
                         negative
    continuity           at each user->assistant and assistant->user boundary, how far the trig
                         readout (cos, sin) moves across it (mean of the `continuity_window` tokens
                         each side), minus the same at mid-turn cuts. A clock or a progress bar moves
                         on smoothly (about 0 or below); a switch jumps. (The readout's angle would
                         not do: a readout that collapses to a line flips its angle where sin = 0.)
    coherence k1 vs k2   power of the mean per-round coefficient at one and at two cycles per round
                         over whitened PCs: a clock is all k1; ramps restarting each turn give k2
    linear beyond circle the linear probe's R^2 above what a perfect circle could give it (the R^2 of
                         phase from the true sin and cos, fitted on training folds): a line as well
                         as a circle, i.e. a helix

Each number is also computed under the three nulls (split.py); the verdict (`verdict`) spells out
which evidence decides it.
"""

from __future__ import annotations

import numpy as np

from turnphase.analysis.scores import Statistic, Sums
from turnphase.analysis.source import Labels
from turnphase.analysis.split import turn_ids

CUTS = ("user_to_assistant", "assistant_to_user", "mid_turn")
DIRECTIONS = ("user_to_assistant", "assistant_to_user")  # the two ways a readout can transfer
JUMP_FLOOR = 0.05  # excess jump (readout units) below this is not called a jump, whatever its interval
VERDICTS = ("helix", "clock", "switch + ramps", "switch", "progress bar", "none")


def cut_points(labels: Labels, keep: np.ndarray, w: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cuts among analysed tokens of the conversations `keep` marks: kind -> (before, after), each
    (cuts, w) token indices."""
    turn = turn_ids(labels)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(turn)) + 1])
    ends = np.concatenate([starts[1:], [labels.n]])
    length = ends - starts
    conv, role = labels.conversation[starts], labels.role[starts]
    ok = keep[starts] & (length >= w)
    offsets = np.arange(w)
    out = {}
    nxt = np.arange(1, len(starts))
    bound = ok[:-1] & ok[1:] & (conv[:-1] == conv[1:])
    first_role = role[:-1]
    for kind, role_before in (("user_to_assistant", 1), ("assistant_to_user", 2)):
        m = bound & (first_role == role_before)
        t0, t1 = np.flatnonzero(m), nxt[m]
        out[kind] = (ends[t0, None] - w + offsets, starts[t1, None] + offsets)
    mid = np.flatnonzero(ok & (length >= 2 * w))
    centre = starts[mid] + length[mid] // 2
    out["mid_turn"] = (centre[:, None] - w + offsets, centre[:, None] + offsets)
    return out


def continuity_columns(
    prefix: str, cuts: dict, sample: np.ndarray, readout: np.ndarray, conversation: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-cut jumps, as (conversation of each cut, columns) for scores.ConvSums.
    readout: (len(sample), 2) trig readout (cos, sin) of the sorted analysed tokens `sample`."""
    convs, cols = [], {}
    for kind, (before, after) in cuts.items():
        mean_b, mean_a = (readout[np.searchsorted(sample, idx)].mean(axis=1) for idx in (before, after))
        jump = np.linalg.norm(mean_a - mean_b, axis=1)  # (cuts,)
        convs.append(conversation[before[:, 0]])
        for k in CUTS:
            cols.setdefault(f"{prefix}:{k}:n", []).append(np.full(len(jump), float(k == kind)))
            cols.setdefault(f"{prefix}:{k}:jump", []).append(jump if k == kind else np.zeros(len(jump)))
    return np.concatenate(convs), {k: np.concatenate(v) for k, v in cols.items()}


def excess_jump(prefix: str, kind: str) -> Statistic:
    """Mean jump at `kind` cuts minus at mid-turn cuts (readout units, the unit circle's radius
    being 1): > 0 means the readout jumps where the turn changes."""

    def stat(s: Sums) -> np.ndarray:
        at = s[f"{prefix}:{kind}:jump"] / s[f"{prefix}:{kind}:n"]
        return at - s[f"{prefix}:mid_turn:jump"] / s[f"{prefix}:mid_turn:n"]

    return stat


def verdict(evidence: dict) -> dict:
    """The study's hypotheses, decided from held-out evidence against the nulls.

    evidence holds, for the configured scheme (each `beats` means the real value's 95% interval lies
    wholly above the largest value among the named nulls):
        signal            linear or trig R^2 beats every null, and exceeds 0.05
        within_turn       linear or trig R^2 beats the within-turn null (progress inside turns)
        transfer_positive cross-role transfer's interval is above 0 and beats the role-keeping nulls,
                          in each direction (user->assistant, assistant->user) and on their mean
        wheel             the held-out Fourier or supervised plane's circular r beats every null
        line              linear R^2's interval is above what a perfect circle gives
        jump              the trig readout jumps at user->assistant boundaries: the excess jump's
                          interval lies above JUMP_FLOOR
    """
    e = evidence
    rotation = e["transfer_positive"] and e["wheel"]
    no_rotation = (
        "no held-out wheel beyond the nulls"
        if e["transfer_positive"]
        else "cross-role transfer is not positive both ways"
    )
    if not e["signal"]:
        name, why = "none", "no probe beats the scrambled null"
    elif rotation:
        name = "helix" if e["line"] else "clock"
        why = "one readout turns through both roles (positive cross-role transfer); a held-out wheel beats every null"
        why += (
            "; phase is also linear beyond what a circle allows"
            if e["line"]
            else "; no line beyond the circle"
        )
    elif e["jump"]:
        name = "switch + ramps" if e["within_turn"] else "switch"
        why = f"no rotation ({no_rotation}); the readout jumps where the turn changes"
        why += " and progress inside turns beats the within-turn null" if e["within_turn"] else ""
    elif e["line"] or e["within_turn"]:
        name = "progress bar"
        why = f"no rotation ({no_rotation}); phase is read with no jump at user->assistant boundaries"
    else:
        name, why = "none", "signal without a rotation, a line or a switch that these tests resolve"
    return {"verdict": name, "why": why, "rotation": bool(rotation), "evidence": e}


def circle_r2(labels: Labels, fold: np.ndarray) -> float:
    """R^2 of phase from the true sin and cos of 2*pi*phase, each fold predicted by least squares on
    the others: the most a linear probe of a perfect circle can reach."""
    y = labels.phase.astype(np.float64)
    a = np.stack([np.ones_like(y), np.sin(2 * np.pi * y), np.cos(2 * np.pi * y)], axis=1)
    pred = np.empty_like(y)
    for f in np.unique(fold):
        test = fold == f
        coef = np.linalg.lstsq(a[~test], y[~test], rcond=None)[0]
        pred[test] = a[test] @ coef
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
