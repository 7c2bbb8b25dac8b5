"""Confirmatory tests: hypotheses fixed before a run, tested together as one family.

    turnphase steer data/smollm2 --report report/smollm2 --layers 19 --fold 1 --random 60 \\
        --confirm start "ablate plane/trig" length lower \\
        --confirm mid "rotate plane/fourier -90" p_end higher

A steering run's findings scan every condition, so about one in twenty passes by chance, and a
condition picked because it passed says nothing about chance on the prompts it was picked on. A
confirmatory run names its hypotheses first, each a setting, a condition, a measure and the way the
effect should go, and runs only those conditions (in those settings) with their random and
size-matched (and, with --offset-controls, offset) draws. With k tests (hypotheses x layers) at
family-wise level alpha, each is tested at alpha / k (Bonferroni) and holds only when every one of
these one-sided tests, at alpha / k, does:

    vs_unsteered  paired sign-flip test over prompts (exact up to 16 prompts): the steered turns
                  moved the predicted way from the unsteered ones, prompt by prompt
    vs_random     rank of the effect among its random draws, p = (1 + #{draws at least as far the
                  predicted way}) / (1 + n): beyond random directions or planes of its strength
    vs_matched    the same among its size-matched draws (rotations and ablations; an added
                  direction is as large as its random draws by construction and has none)
    vs_offset     (--offset-controls, a phase plane's rotation) the same among random planes
                  turned by its angle about a point as far from the training mean as its centre

A hypothesis may name a sign contrast instead of a condition ("add probe/linear ±0.5", or +-0.5: the turns
at +a minus those at -a; "rotate plane/fourier ±90": at +90 degrees minus at -90), run with
--sign-controls' draws at both signs. Its tests are `vs_opposite`, the paired sign-flip test of
those per-prompt differences, and `vs_random`, its rank among the random draws' contrasts (a
direction's +u minus -u, a plane's +theta minus -theta); a rotation's also `vs_matched`, its rank
among its size-matched draws' contrasts (a random direction's +u minus -u, each moving h as far
as that sign's rotation does). Offset planes have no sign contrast.

The reported interval is the (1 - alpha/k) percentile bootstrap over prompts, for reading; the sign-
flip test decides. A rank p cannot fall below 1 / (n_random + 1), nor a sign-flip p below 2^-prompts,
so a run needs n_random >= k / alpha - 1 draws and log2(k / alpha) prompts per setting for a
hypothesis to be able to hold at all (checked before the model loads, and when the prompts are made).
That check is necessary, not sufficient: a prompt whose measure is the same in both turns (both at
the budget, a 0/1 measure unchanged) adds nothing to the sign-flip test, whose p cannot fall below
2^-(prompts that differ); each test records that count (`n_differ`).
Test a hypothesis found on some prompts on new ones: another `--fold` (its held-out conversations
and its directions) or another dataset (there `--fold all`: every conversation the analysis held
out, each with its own fold's directions). k counts the tests of one run, not across runs: put the
whole family of hypotheses in one run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.stats

from turnphase.builders.errors import ConfigError
from turnphase.steering.measures import OUTCOMES, interval

# A condition's own controls beside its family's random draws (conditions.py): the Condition field
# naming their family -> (a word for them, what they are); an effect's comparison with them is
# "vs_<field>" in steer.json, and a confirmatory test's rank p of that name
OWN_CONTROLS = {
    "matched": ("size-matched", "random directions moved as far as this edit"),
    "offset": ("offset", "random planes turned by the same angle about a point as far from the mean"),
}

DIRECTIONS = {"lower": -1, "higher": +1}
SIGN_FLIPS = 100_000  # resamples of the sign-flip test: every one of the 2^n flips up to n = 16


@dataclass(frozen=True)
class Hypothesis:
    setting: str  # start or mid
    # a condition's name ("ablate plane/trig", "rotate plane/fourier -90") or a sign contrast's
    condition: str
    measure: str  # one of measures.OUTCOMES
    direction: str  # lower or higher than unsteered and than the random draws

    @classmethod
    def of(cls, value, settings: list[str]) -> Hypothesis:
        """From a Hypothesis, its dict (steer.json's config) or the CLI's four words; checked."""
        try:
            if isinstance(value, dict):
                value = cls(**value)
            elif isinstance(value, list | tuple):
                value = cls(*value)
        except TypeError:
            pass
        if not isinstance(value, cls):
            raise ConfigError("confirm", f"takes SETTING CONDITION MEASURE lower|higher, not {value!r}")
        for name, allowed in (("setting", settings), ("measure", OUTCOMES), ("direction", tuple(DIRECTIONS))):
            if getattr(value, name) not in allowed:
                raise ConfigError(
                    "confirm", f"{name} {getattr(value, name)!r}: choose from {', '.join(allowed)}"
                )
        # a sign contrast typed without "±": "add probe/linear +-0.5"
        return replace(value, condition=value.condition.replace(" +-", " ±"))


def count_tests(hypotheses: list[Hypothesis], n_layers: int) -> int:
    """k: every hypothesis is tested at every layer of the run."""
    return len(hypotheses) * n_layers


def draws_needed(n_tests: int, alpha: float) -> int:
    """The fewest random draws per family whose rank p can reach alpha / n_tests."""
    return max(math.ceil(n_tests / alpha - 1 - 1e-9), 1)


def prompts_needed(n_tests: int, alpha: float) -> int:
    """The fewest prompts whose sign-flip p (at least 2^-n) can reach alpha / n_tests."""
    return math.ceil(math.log2(n_tests / alpha) - 1e-9)


def check_power(
    hypotheses: list[Hypothesis], n_layers: int, alpha: float, n_random: int, n_prompts: int
) -> None:
    """Refuse a run none of whose tests could hold: too few draws or prompts for p to reach alpha / k."""
    k = count_tests(hypotheses, n_layers)
    tests = f"{k} confirmatory test{'s' if k > 1 else ''} at alpha {alpha:g}"
    if n_random < (need := draws_needed(k, alpha)):
        raise ConfigError(
            "n_random",
            f"is {n_random}, but {tests} need {need} or more: a rank p cannot fall below "
            f"1 / (draws + 1) and each test is at alpha / {k}",
        )
    if n_prompts < (need := prompts_needed(k, alpha)):
        raise ConfigError(
            "max_prompts",
            f"is {n_prompts}, but {tests} need {need} or more: a sign-flip p cannot fall below "
            f"2^-prompts and each test is at alpha / {k}",
        )


def rank_p(effect: float, draws, sign: int) -> float:
    """One-sided: (1 + #{draws at least as far the predicted way as the effect}) / (1 + n); 1 if not finite."""
    d = sign * np.asarray(draws, dtype=float)
    if not (np.isfinite(effect) and np.isfinite(d).all()):
        return 1.0
    return float((1 + np.sum(d >= sign * effect - 1e-12)) / (1 + len(d)))


def sign_flip_p(diff: np.ndarray, sign: int, seed: int) -> float:
    """One-sided paired sign-flip test of mean(diff) going the predicted way (exact up to 16 prompts);
    1 when there is nothing to test (fewer than 2 prompts, no differences, a value not finite)."""
    if len(diff) < 2 or not diff.any() or not np.isfinite(diff).all():
        return 1.0
    res = scipy.stats.permutation_test(
        (diff,),
        np.mean,
        permutation_type="samples",  # one sample: flips the signs
        alternative="greater" if sign > 0 else "less",
        n_resamples=SIGN_FLIPS,
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def evaluate(result: dict, hypotheses: list[Hypothesis], alpha: float, n_bootstrap: int, seed: int) -> dict:
    """Each hypothesis at each layer of `result` (steer.json's layers), tested at alpha / k."""
    layers = result["layers"]
    k = count_tests(hypotheses, len(layers))
    level = alpha / k
    tests = []
    for L, settings in layers.items():
        for h in hypotheses:
            entry = settings[h.setting]
            sign = DIRECTIONS[h.direction]
            contrasts = {c["name"]: c for c in entry.get("contrasts", [])}
            if c := contrasts.get(h.condition):  # turns at +a against those at -a
                diff, paired = np.asarray(c["per_prompt"][h.measure]), "vs_opposite"
            else:
                c = next(c for c in entry["conditions"] if c["name"] == h.condition)
                diff = np.asarray(c["per_prompt"][h.measure]) - np.asarray(
                    entry["unsteered"]["per_prompt"][h.measure]
                )
                paired = "vs_unsteered"
            e = c["effect"][h.measure]
            controls = {"vs_random": c["family"]} | {f"vs_{o}": c[o] for o in OWN_CONTROLS if c.get(o)}
            p = {paired: sign_flip_p(diff, sign, seed)}
            p |= {
                name: rank_p(e["value"], entry["random"][fam][h.measure], sign)
                for name, fam in controls.items()
            }
            failed = [name for name, v in p.items() if not v <= level + 1e-12]  # 1/60 passes at 0.05/3
            tests.append(
                {
                    "layer": int(L),
                    **vars(h),
                    "value": e["value"],
                    "interval": interval(diff, n_bootstrap, seed, level=1 - level),
                    "p": p,
                    "draws": {name: len(entry["random"][fam][h.measure]) for name, fam in controls.items()},
                    "n_differ": int(np.count_nonzero(diff)),  # prompts the sign-flip test can use
                    "failed": failed,
                    "holds": not failed,
                }
            )
    return {
        "alpha": alpha,
        "n_tests": k,
        "level": level,
        "tests": tests,
        "n_hold": sum(t["holds"] for t in tests),
    }
