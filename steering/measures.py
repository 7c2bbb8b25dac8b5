"""Per-prompt measures of a generated turn, and effects with intervals and random-control scores.

    length   tokens of the turn before the end-of-turn token (the budget, for turns that hit it)
    ended    1 if the end-of-turn token came within the budget
    broken   1 if the turn (in `mid`, the kept part of the turn and the continuation) has a role
             label, is empty or repeats the instruction (the build's checks)
    p_end    mean over the turn's steps of P(end-of-turn token) under the model's distribution
    next_user  log P(user) - log P(assistant) (nats) of the role the next header names once the
             turn ends (Steerer.next_user): positive, the user's turn next, as after an assistant's
    kl       mean KL(steered || unsteered) of the next-token distribution along the unsteered text
    edit_size  mean |edit(h) - h| / |h| at layer L along the same positions: how large the edit
             was (0 unsteered), so a phase plane's rotation can be compared in size with a random one's

An effect is the mean over prompts of (condition - unsteered), paired by prompt, with a 95% percentile
bootstrap interval over prompts; against the family's random draws it gets a z-score and an
empirical two-sided p-value, (1 + #{random draws at least as far from the random mean}) / (1 + n).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.stats

from turnphase.builders.conversations import turn_problem

if TYPE_CHECKING:  # for the type hints only
    from turnphase.steering.generate import Generation
    from turnphase.steering.prompts import Prompt

MEASURES = ("length", "ended", "broken", "p_end", "next_user", "kl", "edit_size")
EDIT_MEASURES = ("kl", "edit_size")  # of an edit; 0 for the unsteered run by definition
OUTCOMES = tuple(m for m in MEASURES if m not in EDIT_MEASURES)  # of the turn the model wrote


def turn_texts(tokenizer, gen: Generation) -> list[str]:
    """Each prompt's generated turn as text, without special tokens (`mid`: after the kept part)."""
    return tokenizer.batch_decode(gen.tokens, skip_special_tokens=True)


def per_prompt(
    gen: Generation,
    prompts: list[Prompt],
    texts: list[str],
    next_user: np.ndarray,
    kl: np.ndarray,
    size: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each measure per prompt of one condition's turns (`texts`: turn_texts(tokenizer, gen))."""
    turns = [p.kept_text + t for p, t in zip(prompts, texts, strict=True)]
    return {
        "length": gen.length.astype(float),
        "ended": gen.ended.astype(float),
        "broken": np.array([turn_problem(t, True) is not None for t in turns], dtype=float),
        "p_end": np.nanmean(gen.p_end, axis=1),
        "next_user": next_user,
        "kl": kl,
        "edit_size": size,
    }


def interval(values: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean over prompts (95% unless `level` says); None for
    fewer than 2 prompts or a value not finite."""
    if len(values) < 2 or not np.isfinite(values).all():
        return None
    if np.ptp(values) == 0:
        return [float(values[0])] * 2
    res = scipy.stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_bootstrap,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def against_random(effect: float, random: np.ndarray) -> dict:
    centre, sd = float(np.mean(random)), float(np.std(random, ddof=1))
    far = np.abs(random - centre) >= abs(effect - centre) - 1e-12
    return {
        "random_mean": centre,
        "random_sd": sd,
        "z": (effect - centre) / sd if sd > 0 else None,
        "p": float((1 + far.sum()) / (1 + len(random))),
    }
