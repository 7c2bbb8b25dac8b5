"""`turnphase steer --confirm`: hypotheses fixed before the run, each tested at alpha / k, against
random and size-matched draws; bad hypotheses and too few draws stop the run before anything loads."""

import json

import numpy as np
import pytest
from steer_args import FAST_STEER

from turnphase.builders.cli import main
from turnphase.builders.errors import ConfigError
from turnphase.steering import SteerConfig
from turnphase.steering.confirm import Hypothesis, draws_needed, evaluate

START = ["start", "ablate plane/trig", "length", "lower"]
MID = ["mid", "rotate plane/trig +90", "p_end", "higher"]


def test_hypotheses_choose_settings_and_conditions_and_turn_matched_controls_on():
    config = SteerConfig("d", "r", [1], settings=["start", "mid"], confirm=[MID])
    assert config.confirm == [Hypothesis(*MID)] and config.settings == ["mid"] and config.matched_controls
    assert config.chosen("mid") == ["rotate plane/trig +90"] and config.chosen("start") == []
    again = SteerConfig(
        "d",
        "r",
        [1],
        **{k: v for k, v in config.to_json().items() if k not in ("dataset", "report", "layers")},
    )
    assert again.confirm == config.confirm  # steer.json's config reads back
    assert SteerConfig("d", "r", [1], only=["x"]).chosen("mid") == ["x"]


@pytest.mark.parametrize(
    ("confirm", "only", "alpha", "said"),
    [
        (
            [["mid", "ablate plane/trig", "tokens", "lower"]],
            None,
            0.05,
            "measure 'tokens': choose from length",
        ),
        ([["mid", "ablate plane/trig", "length", "shorter"]], None, 0.05, "direction 'shorter'"),
        ([["end", "ablate plane/trig", "length", "lower"]], None, 0.05, "setting 'end'"),
        ([["mid", "ablate plane/trig", "length"]], None, 0.05, "SETTING CONDITION MEASURE lower|higher"),
        ([], None, 0.05, "at least one hypothesis"),
        ([MID], ["ablate plane/trig"], 0.05, "--only and --confirm"),
        ([MID], None, 1.5, "between 0 and 1"),
    ],
)
def test_a_bad_hypothesis_is_refused(confirm, only, alpha, said):
    with pytest.raises(ConfigError, match=said):
        SteerConfig("d", "r", [1], confirm=confirm, only=only, alpha=alpha)


def test_draws_needed_lets_the_empirical_p_reach_alpha_over_k():
    for k, alpha in [(1, 0.05), (3, 0.05), (2, 0.5), (7, 0.01)]:
        n = draws_needed(k, alpha)
        assert 1 / (n + 1) <= alpha / k + 1e-12 < 1 / n  # n draws suffice, n - 1 do not
    assert draws_needed(3, 0.05) == 59


def _result(diff: np.ndarray, z: float, p: float, matched: tuple[float, float] | None) -> dict:
    """A steer.json with one mid condition whose per-prompt effect on length is `diff`."""
    effect = {"value": float(diff.mean()), "ci95": None, "z": z, "p": p}
    if matched:
        effect["vs_matched"] = {"z": matched[0], "p": matched[1]}
    cond = {
        "name": "rotate plane/trig +90",
        "effect": {"length": effect},
        "per_prompt": {"length": 30 + diff},
    }
    entry = {"unsteered": {"per_prompt": {"length": np.full(len(diff), 30.0)}}, "conditions": [cond]}
    return {"layers": {"19": {"mid": entry}}}


@pytest.mark.parametrize(
    ("shift", "z", "p", "matched", "holds", "failed"),
    [
        (-5.0, -3.0, 0.01, (-2.5, 0.01), True, []),
        (-5.0, -3.0, 0.01, None, True, []),  # an add has no size-matched draws
        (+5.0, -3.0, 0.01, (-2.5, 0.01), False, ["interval"]),  # the effect went the other way
        (-5.0, +3.0, 0.01, (-2.5, 0.01), False, ["vs_random"]),  # the random draws shortened more
        (-5.0, -3.0, 0.04, (-2.5, 0.01), False, ["vs_random"]),  # p above alpha / k = 0.025
        (-5.0, -3.0, 0.01, (-0.5, 0.6), False, ["vs_matched"]),  # as far as an edit of its size
        (-0.1, -3.0, 0.01, (-2.5, 0.01), False, ["interval"]),  # the interval reaches 0
    ],
)
def test_a_hypothesis_holds_only_when_every_check_passes_at_alpha_over_k(shift, z, p, matched, holds, failed):
    rng = np.random.default_rng(0)
    diff = shift + rng.normal(0, 1.0, 12)
    hypotheses = [Hypothesis("mid", "rotate plane/trig +90", "length", "lower")] * 2  # k = 2
    got = evaluate(_result(diff, z, p, matched), hypotheses, 0.05, 400, 0)
    assert got["n_tests"] == 2 and got["level"] == pytest.approx(0.025)
    t = got["tests"][0]
    assert t["holds"] is holds and [k for k, ok in t["checks"].items() if not ok] == failed
    assert ("vs_matched" in t["checks"]) is (matched is not None)
    lo, hi = t["interval"]
    assert lo < diff.mean() < hi and t["value"] == pytest.approx(diff.mean())
    assert got["n_hold"] == (2 if holds else 0)


def test_the_interval_is_at_one_minus_alpha_over_k():
    diff = np.random.default_rng(1).normal(-1, 2, 16)
    h = Hypothesis("mid", "rotate plane/trig +90", "length", "lower")
    one, five = (evaluate(_result(diff, -3, 0.001, None), [h] * k, 0.05, 2000, 0) for k in (1, 5))
    (a, b), (c, d) = one["tests"][0]["interval"], five["tests"][0]["interval"]
    assert c < a and d > b  # 99% is wider than 95%


def test_too_few_draws_stop_the_run_before_the_model_loads(tiny_analysed, tmp_path, capsys):
    data, report = tiny_analysed
    out = tmp_path / "steer"
    args = ["steer", str(data), "--report", str(report), "--layers", "1", "--out", str(out), *FAST_STEER]
    code = main([*args, "--confirm", *START, "--confirm", *MID])  # k = 2 at 0.05: 39 draws, not 3
    assert code == 2 and not out.exists()
    assert "--random: is 3, but 2 confirmatory tests at alpha 0.05 need 39 or more" in capsys.readouterr().err
    code = main([*args, "--alpha", "0.5", "--confirm", "mid", "rotate plane/nowhere", "length", "lower"])
    assert code == 2 and not out.exists()
    assert "--confirm: no condition named 'rotate plane/nowhere'" in capsys.readouterr().err


def test_a_confirmatory_run_tests_its_hypotheses_and_only_runs_what_they_need(tiny_analysed, tmp_path):
    data, report = tiny_analysed
    out = tmp_path / "steer"
    args = ["steer", str(data), "--report", str(report), "--layers", "1", "--out", str(out), *FAST_STEER]
    assert main([*args, "--alpha", "0.5", "--confirm", *START, "--confirm", *MID]) == 0  # 3 draws reach 0.25
    result = json.loads((out / "steer.json").read_text())
    entries = result["layers"]["1"]
    assert set(entries) == {"start", "mid"}
    assert [c["name"] for c in entries["start"]["conditions"]] == ["ablate plane/trig"]
    assert [c["name"] for c in entries["mid"]["conditions"]] == ["rotate plane/trig +90"]
    assert set(entries["mid"]["random"]) == {"rotate 90", "matched rotate plane/trig +90"}
    c = result["confirmatory"]
    assert c["n_tests"] == 2 and c["level"] == 0.25 and c["alpha"] == 0.5
    for t, (setting, name, measure, _) in zip(c["tests"], [START, MID], strict=True):
        effect = next(x for x in entries[setting]["conditions"] if x["name"] == name)["effect"][measure]
        assert t["value"] == effect["value"] and t["vs_matched"]["p"] == effect["vs_matched"]["p"]
        expected = all(t["checks"].values()) and set(t["checks"]) == {"interval", "vs_random", "vs_matched"}
        assert t["holds"] is expected
    assert result["findings"][0].startswith(
        "Confirmatory: 2 tests fixed before the run, each at alpha 0.5 / 2"
    )
    assert result["findings"][1].startswith("  layer 1 start: ablate plane/trig, length lower: ")
    assert "Confirmatory: 2 tests" in (out / "summary.txt").read_text()
