"""Confirmatory tests: hypotheses fixed before a run, tested together as one family.

    turnphase steer data/smollm2 --report report/smollm2 --layers 19 --fold 1 --random 60 \\
        --confirm start "ablate plane/trig" length lower \\
        --confirm mid "rotate plane/fourier -90" p_end higher

A steering run's findings scan every condition, so about one in twenty passes by chance, and a
condition picked because it passed says nothing about chance on the prompts it was picked on. A
confirmatory run names its hypotheses first, each a setting, a condition, a measure and the way the
effect should go, and runs only those conditions (in those settings) with their random and
size-matched draws. With k tests (hypotheses x layers) at family-wise level alpha, each is tested at
alpha / k (Bonferroni) and holds only when all of these do:

    interval    the (1 - alpha/k) bootstrap interval over prompts lies on the predicted side of 0
    vs_random   the effect lies on the predicted side of the random draws' mean, empirical p <= alpha/k
    vs_matched  the same against its size-matched draws (rotations and ablations)

An empirical p cannot fall below 1 / (n_random + 1), so a run needs n_random >= k / alpha - 1 draws
for a hypothesis to be able to hold at all (checked before the model loads). Test a hypothesis
found on some prompts on new ones: another `--fold` (its held-out conversations) or another dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from turnphase.builders.errors import ConfigError

OUTCOMES = ("length", "ended", "broken", "p_end")  # measures of the turn (kl, edit_size: of the edit)
DIRECTIONS = {"lower": -1, "higher": +1}


@dataclass(frozen=True)
class Hypothesis:
    setting: str  # start or mid
    condition: str  # a condition's name: "ablate plane/trig", "rotate plane/fourier -90", ...
    measure: str  # one of OUTCOMES
    direction: str  # lower or higher than unsteered and than the random draws

    @classmethod
    def of(cls, value, settings: tuple[str, ...]) -> Hypothesis:
        """From a Hypothesis, its dict (steer.json's config) or the CLI's four words; checked."""
        if isinstance(value, dict):
            value = cls(**value)
        elif not isinstance(value, cls):
            if isinstance(value, str) or len(value) != 4:
                raise ConfigError("confirm", f"takes SETTING CONDITION MEASURE lower|higher, not {value!r}")
            value = cls(*value)
        for name, allowed in (("setting", settings), ("measure", OUTCOMES), ("direction", tuple(DIRECTIONS))):
            if getattr(value, name) not in allowed:
                raise ConfigError(
                    "confirm", f"{name} {getattr(value, name)!r}: choose from {', '.join(allowed)}"
                )
        return value

    def __str__(self) -> str:
        return f"{self.setting}: {self.condition}, {self.measure} {self.direction}"


def draws_needed(n_tests: int, alpha: float) -> int:
    """The fewest random draws per family whose empirical p can reach alpha / n_tests."""
    return max(math.ceil(n_tests / alpha - 1 - 1e-9), 1)


def check_power(hypotheses: list[Hypothesis], n_layers: int, alpha: float, n_random: int) -> None:
    k = len(hypotheses) * n_layers
    if n_random < (need := draws_needed(k, alpha)):
        raise ConfigError(
            "n_random",
            f"is {n_random}, but {k} confirmatory test{'s' if k > 1 else ''} at alpha {alpha:g} need "
            f"{need} or more: an empirical p cannot fall below 1 / (draws + 1) and each test is at "
            f"alpha / {k}",
        )


def evaluate(result: dict, hypotheses: list[Hypothesis], alpha: float, n_bootstrap: int, seed: int) -> dict:
    """Each hypothesis at each layer of `result` (steer.json's layers), tested at alpha / k."""
    from turnphase.steering.measures import (
        interval,
    )  # not at the top: config imports this module, measures torch

    layers = result["layers"]
    k = len(hypotheses) * len(layers)
    level = alpha / k
    tests = []
    for L, settings in layers.items():
        for i, h in enumerate(hypotheses):
            entry = settings[h.setting]
            c = next(c for c in entry["conditions"] if c["name"] == h.condition)
            e, sign = c["effect"][h.measure], DIRECTIONS[h.direction]
            diff = np.asarray(c["per_prompt"][h.measure]) - np.asarray(
                entry["unsteered"]["per_prompt"][h.measure]
            )
            ci = interval(diff, n_bootstrap, seed + i, level=1 - level)
            checks = {
                "interval": ci is not None and (ci[0] > 0 if sign > 0 else ci[1] < 0),
                "vs_random": _beyond(e, sign, level),
            }
            if "vs_matched" in e:
                checks["vs_matched"] = _beyond(e["vs_matched"], sign, level)
            tests.append(
                {
                    "layer": int(L),
                    **vars(h),
                    "value": e["value"],
                    "interval": ci,
                    "vs_random": {"z": e["z"], "p": e["p"]},
                    "vs_matched": {"z": e["vs_matched"]["z"], "p": e["vs_matched"]["p"]}
                    if "vs_matched" in e
                    else None,
                    "checks": checks,
                    "holds": all(checks.values()),
                }
            )
    return {
        "alpha": alpha,
        "n_tests": k,
        "level": level,
        "tests": tests,
        "n_hold": sum(t["holds"] for t in tests),
    }


def _beyond(draws: dict, sign: int, level: float) -> bool:
    return (
        draws["z"] is not None and sign * draws["z"] > 0 and draws["p"] <= level + 1e-12
    )  # p = 1/60 at 0.05/3


def lines(confirmatory: dict) -> list[str]:
    """The confirmatory tests in words, for the findings."""
    c = confirmatory
    out = [
        f"Confirmatory: {c['n_tests']} test{'s' if c['n_tests'] > 1 else ''} fixed before the run, each at "
        f"alpha {c['alpha']:g} / {c['n_tests']} = {c['level']:.3g}; {c['n_hold']} of them hold."
    ]
    for t in c["tests"]:
        ci = t["interval"]
        span = f"[{ci[0]:+.4g}, {ci[1]:+.4g}]" if ci else "[n/a]"
        vs = f"vs random z {_z(t['vs_random'])}, p {t['vs_random']['p']:.3f}"
        if t["vs_matched"]:
            vs += f"; vs size-matched z {_z(t['vs_matched'])}, p {t['vs_matched']['p']:.3f}"
        failed = [k for k, ok in t["checks"].items() if not ok]
        verdict = "holds" if t["holds"] else "does not hold (" + ", ".join(failed) + ")"
        out.append(
            f"  layer {t['layer']} {t['setting']}: {t['condition']}, {t['measure']} {t['direction']}: "
            f"{t['value']:+.4g} {span} ({vs}): {verdict}."
        )
    return out


def _z(draws: dict) -> str:
    return "n/a" if draws["z"] is None else f"{draws['z']:+.1f}"
