"""`turnphase steer --confirm`: hypotheses fixed before the run, each tested at alpha / k, against
random and size-matched draws; bad hypotheses and too few draws stop the run before anything loads."""

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from steer_args import FAST_STEER

from turnphase.builders.cli import main
from turnphase.builders.errors import ConfigError
from turnphase.builders.provenance import source_state
from turnphase.steering import SteerConfig
from turnphase.steering.confirm import (
    Hypothesis,
    check_power,
    draws_needed,
    evaluate,
    prompts_needed,
    sign_flip_p,
)
from turnphase.steering.summary import beyond_random, sign_line, source_line

START = ["start", "ablate plane/trig", "length", "lower"]
MID = ["mid", "rotate plane/trig +90", "p_end", "higher"]


def test_hypotheses_choose_settings_and_conditions_and_turn_matched_controls_on():
    config = SteerConfig("d", "r", [1], settings=["start", "mid"], confirm=[MID])
    assert config.confirm == [Hypothesis(*MID)] and config.settings == ["mid"] and config.matched_controls
    assert config.chosen_names("mid") == ["rotate plane/trig +90"] and config.chosen_names("start") == []
    again = SteerConfig(
        "d",
        "r",
        [1],
        **{k: v for k, v in config.to_json().items() if k not in ("dataset", "report", "layers")},
    )
    assert again.confirm == config.confirm  # steer.json's config reads back
    assert SteerConfig("d", "r", [1], only=["x"]).chosen_names("mid") == ["x"]
    with pytest.raises(ConfigError, match="setting 'start': choose from mid"):  # not among --settings
        SteerConfig("d", "r", [1], settings=["mid"], confirm=[START])
    # a sign contrast runs both of its conditions, with the draws at both signs
    signed = SteerConfig("d", "r", [1], confirm=[["mid", "add probe/linear ±0.5", "length", "lower"]])
    assert signed.sign_controls and signed.chosen_names("mid") == [
        "add probe/linear +0.5",
        "add probe/linear -0.5",
    ]
    assert not config.sign_controls
    typed = SteerConfig("d", "r", [1], confirm=[["mid", "add probe/linear +-0.5", "length", "lower"]])
    assert typed.confirm == signed.confirm  # "+-" for "±"
    turned = SteerConfig("d", "r", [1], confirm=[["mid", "rotate plane/fourier +-90", "length", "lower"]])
    assert turned.sign_controls and turned.matched_controls
    assert turned.chosen_names("mid") == ["rotate plane/fourier +90", "rotate plane/fourier -90"]


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
        ([MID, MID], None, 0.05, "names a hypothesis twice"),
        ([{"setting": "mid", "condition": "x"}], None, 0.05, "takes SETTING CONDITION MEASURE"),
        (
            [["mid", "ablate plane/trig ±90", "p_end", "higher"]],
            None,
            0.05,
            "a sign contrast .* is of an added direction or a rotated plane",
        ),
        ([["mid", "rotate plane/fourier ±180", "length", "lower"]], None, 0.05, "nothing to contrast"),
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


def _result(diff: np.ndarray, random: np.ndarray, matched: np.ndarray | None, layers=("19",)) -> dict:
    """A steer.json whose mid condition changes length by `diff` per prompt, with these draws' effects."""
    name, shared = "rotate plane/trig +90", "matched rotate plane/trig ±90"
    cond = {
        "name": name,
        "family": "rotate 90",
        "matched": None if matched is None else shared,
        "effect": {"length": {"value": float(diff.mean())}},
        "per_prompt": {"length": (30 + diff).tolist()},
    }
    entry = {
        "unsteered": {"per_prompt": {"length": [30.0] * len(diff)}},
        "conditions": [cond],
        "random": {"rotate 90": {"length": list(random)}}
        | ({} if matched is None else {shared: {"length": list(matched)}}),
    }
    return {"layers": {L: {"mid": entry} for L in layers}}


RNG = np.random.default_rng(0)
FAR, NEAR = RNG.normal(0, 1, 59), RNG.normal(-5, 1, 59)  # draws far from and around an effect of -5
LOWER = [Hypothesis("mid", "rotate plane/trig +90", "length", "lower")]


@pytest.mark.parametrize(
    ("shift", "random", "matched", "failed"),
    [
        (-5.0, FAR, FAR, []),
        (-5.0, FAR, None, []),  # an added direction has no size-matched draws
        (+5.0, FAR, FAR, ["vs_unsteered", "vs_random", "vs_matched"]),  # it went the other way
        (-5.0, NEAR, FAR, ["vs_random"]),  # random planes shortened turns as much
        (-5.0, FAR, NEAR, ["vs_matched"]),  # as far as random edits of its size
        (-0.2, FAR + 3, FAR + 3, ["vs_unsteered"]),  # below every draw, but within noise of unsteered
    ],
)
def test_a_hypothesis_holds_only_when_every_one_sided_test_passes(shift, random, matched, failed):
    diff = shift + np.random.default_rng(1).normal(0, 1.0, 16)
    got = evaluate(_result(diff, random, matched), LOWER, 0.05, 400, 0)
    t = got["tests"][0]
    assert t["failed"] == failed and t["holds"] is (not failed) and got["n_hold"] == (not failed)
    assert list(t["p"]) == ["vs_unsteered", "vs_random", *(["vs_matched"] if matched is not None else [])]
    assert t["draws"]["vs_random"] == 59 and t["value"] == pytest.approx(diff.mean())
    lo, hi = t["interval"]
    assert lo < diff.mean() < hi


def test_a_rotation_beyond_its_other_draws_but_not_its_offset_planes_does_not_hold():
    """vs_offset decides as the other controls do: the same effect, beyond random planes and
    size-matched draws, fails when offset planes shortened turns as much; an exploratory finding
    (summary.beyond_random) needs it too."""
    diff = -5 + np.random.default_rng(1).normal(0, 1.0, 16)
    for offset, failed in ((FAR, []), (NEAR, ["vs_offset"])):
        result = _result(diff, FAR, FAR)
        cond, entry = result["layers"]["19"]["mid"]["conditions"][0], result["layers"]["19"]["mid"]
        cond["offset"] = "offset rotate plane/trig 90"
        entry["random"]["offset rotate plane/trig 90"] = {"length": list(offset)}
        (t,) = evaluate(result, LOWER, 0.05, 400, 0)["tests"]
        assert list(t["p"]) == ["vs_unsteered", "vs_random", "vs_matched", "vs_offset"]
        assert t["failed"] == failed and t["holds"] is (not failed)
    outside = {"z": -5.0, "p": 0.01}
    effect = {"value": -5.0, "ci95": [-6.0, -4.0], **outside, "vs_matched": outside}
    assert beyond_random(effect) and beyond_random(effect | {"vs_offset": outside})
    assert not beyond_random(effect | {"vs_offset": {"z": -0.3, "p": 0.4}})


@pytest.mark.parametrize(
    ("planes", "pairs", "failed"),
    [(FAR, FAR, []), (NEAR, FAR, ["vs_random"]), (FAR, NEAR, ["vs_matched"])],
)
def test_a_rotations_sign_contrast_holds_only_beyond_both_kinds_of_pairs(planes, pairs, failed):
    """A rotation's contrast (+theta minus -theta) against the random planes' and the size-matched
    pairs' contrasts: each fails alone; the paired test is of the two signs against each other."""
    diff = -5 + np.random.default_rng(1).normal(0, 1.0, 16)
    name, matched = "rotate plane/trig ±90", "sign matched rotate plane/trig ±90"
    entry = {
        "conditions": [],
        "contrasts": [
            {
                "name": name,
                "family": "sign rotate 90",
                "matched": matched,
                "effect": {"length": {"value": float(diff.mean())}},
                "per_prompt": {"length": diff.tolist()},
            }
        ],
        "random": {"sign rotate 90": {"length": list(planes)}, matched: {"length": list(pairs)}},
    }
    (t,) = evaluate(
        {"layers": {"19": {"mid": entry}}}, [Hypothesis("mid", name, "length", "lower")], 0.05, 400, 0
    )["tests"]
    assert list(t["p"]) == ["vs_opposite", "vs_random", "vs_matched"]
    assert t["failed"] == failed and t["holds"] is (not failed)
    assert t["draws"] == {"vs_random": 59, "vs_matched": 59}


def test_a_sign_contrast_is_a_finding_only_beyond_its_size_matched_pairs_too():
    outside, inside = {"z": -5.0, "p": 0.01}, {"z": -0.3, "p": 0.4}
    length = {"value": -9.0, "ci95": [-12.0, -6.0], **outside}
    contrast = {"name": "rotate plane/fourier ±90", "effect": {"length": length | {"vs_matched": outside}}}
    said = sign_line([contrast])
    assert "rotate plane/fourier ±90 -9.0 tokens (z -5.0, p 0.01; vs size-matched z -5.0, p 0.01)" in said
    contrast["effect"]["length"]["vs_matched"] = inside
    assert sign_line([contrast]).startswith("  Sign contrasts (1): none on turn length")


def test_the_tests_are_one_sided_at_alpha_over_hypotheses_times_layers():
    diff = -5 + np.random.default_rng(1).normal(0, 1.0, 16)
    one = evaluate(_result(diff, FAR, FAR), LOWER, 0.05, 400, 0)
    assert one["n_tests"] == 1 and one["level"] == 0.05
    assert one["tests"][0]["p"]["vs_random"] == pytest.approx(1 / 60)  # beyond all 59: the floor
    assert one["tests"][0]["p"]["vs_unsteered"] == pytest.approx(1 / 2**16)  # every sign flip, exact
    two_layers = evaluate(_result(diff, FAR, FAR, layers=("13", "19")), LOWER, 0.05, 400, 0)
    assert two_layers["n_tests"] == 2 and [t["layer"] for t in two_layers["tests"]] == [13, 19]
    higher = [Hypothesis("mid", "rotate plane/trig +90", "length", "higher")]
    p = evaluate(_result(diff, FAR, FAR), higher, 0.05, 400, 0)["tests"][0]["p"]
    assert p == {"vs_unsteered": 1.0, "vs_random": 1.0, "vs_matched": 1.0}  # every flip is at least as high
    assert evaluate(_result(-diff, -FAR, -FAR), higher, 0.05, 400, 0)["n_hold"] == 1
    # at k = 3 the floor 1/60 is alpha / k exactly, and passes; one draw beyond the effect fails
    three = evaluate(_result(diff, FAR, FAR, layers=("13", "16", "19")), LOWER, 0.05, 400, 0)
    assert three["level"] == pytest.approx(1 / 60) and three["n_hold"] == 3
    beyond = np.append(FAR[:-1], -50.0)
    assert not evaluate(_result(diff, beyond, FAR, layers=("13", "16", "19")), LOWER, 0.05, 400, 0)["n_hold"]


@pytest.mark.parametrize("diff", [np.zeros(16), np.full(16, np.nan), np.array([-9.0])])
def test_nothing_to_test_never_holds(diff):
    """No differences, a value not finite or a single prompt give p = 1, not a pass."""
    t = evaluate(_result(diff, FAR, FAR), LOWER, 0.05, 400, 0)["tests"][0]
    assert t["p"]["vs_unsteered"] == 1.0 and not t["holds"]
    if np.isnan(diff).any():
        assert t["p"]["vs_random"] == 1.0 and t["failed"] == ["vs_unsteered", "vs_random", "vs_matched"]


def test_the_interval_is_at_one_minus_alpha_over_k():
    diff = np.random.default_rng(1).normal(-1, 2, 16)
    one, five = (
        evaluate(_result(diff, FAR, None, layers=tuple(map(str, range(k)))), LOWER, 0.05, 2000, 0)
        for k in (1, 5)
    )
    ((a, b),), (c, d) = [one["tests"][0]["interval"]], five["tests"][0]["interval"]
    assert c < a and d > b  # 99% is wider than 95%


def test_power_counts_hypotheses_times_layers_and_prompts():
    check_power(LOWER * 3, 1, 0.05, 59, 6)
    with pytest.raises(ConfigError, match="is 59, but 6 confirmatory tests at alpha 0.05 need 119 or more"):
        check_power(LOWER * 3, 2, 0.05, 59, 16)
    with pytest.raises(
        ConfigError, match="is 5, but 3 confirmatory tests .* need 6 or more: a sign-flip p"
    ) as e:
        check_power(LOWER * 3, 1, 0.05, 59, 5)  # 2^-5 = 0.031 > 0.05 / 3
    assert e.value.field == "max_prompts"
    for k, alpha in [(1, 0.05), (3, 0.05), (2, 0.5), (7, 0.01)]:
        n = prompts_needed(k, alpha)
        assert 2.0**-n <= alpha / k < 2.0 ** -(n - 1)


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
    # 8 prompts asked for pass the check before the model loads; fold 0 holds out 2 conversations of
    # 2 rounds, so 4 are made, and 2^-4 cannot reach 0.05
    code = main([*args, "--prompts", "8", "--random", "19", "--confirm", *START])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "fold 0's held-out conversations give 4 start prompts; the confirmatory tests need 5" in err


def test_a_confirmatory_run_tests_its_hypotheses_and_only_runs_what_they_need(tiny_analysed, tmp_path):
    data, report = tiny_analysed
    out = tmp_path / "steer"
    args = ["steer", str(data), "--report", str(report), "--layers", "1", "--out", str(out), *FAST_STEER]
    before = datetime.now(UTC).replace(microsecond=0)
    assert main([*args, "--alpha", "0.5", "--confirm", *START, "--confirm", *MID]) == 0  # 3 draws reach 0.25
    result = json.loads((out / "steer.json").read_text())
    entries = result["layers"]["1"]
    assert set(entries) == {"start", "mid"}
    assert [c["name"] for c in entries["start"]["conditions"]] == ["ablate plane/trig"]
    assert [c["name"] for c in entries["mid"]["conditions"]] == ["rotate plane/trig +90"]
    assert set(entries["mid"]["random"]) == {"rotate 90", "matched rotate plane/trig ±90"}
    c = result["confirmatory"]
    assert c["n_tests"] == 2 and c["level"] == 0.25 and c["alpha"] == 0.5
    for t, (setting, name, measure, _) in zip(c["tests"], [START, MID], strict=True):
        cond = next(x for x in entries[setting]["conditions"] if x["name"] == name)
        shared = f"matched {name.replace('+90', '±90')}"  # a rotation's two signs share their draws
        assert cond["matched"] == shared and t["value"] == cond["effect"][measure]["value"]
        assert t["draws"] == {"vs_random": 3, "vs_matched": 3}
        sign = 1 if t["direction"] == "higher" else -1
        for control, family in (("vs_random", cond["family"]), ("vs_matched", cond["matched"])):
            draws = entries[setting]["random"][family][measure]
            assert t["p"][control] == (1 + sum(sign * d >= sign * t["value"] - 1e-12 for d in draws)) / 4
    findings = result["findings"]
    assert findings[0].startswith(
        "Confirmatory: 2 tests fixed before the run, each one-sided at alpha 0.5 / 2"
    )
    assert findings[1].startswith("  layer 1 start: ablate plane/trig, length lower: ")
    # after the tests: when the run started and from which code, what "fixed before the run" is read against
    run = result["run"]
    assert before <= datetime.fromisoformat(run["started"]) <= datetime.now(UTC)
    assert run["source"] == source_state()  # this checkout's commit (null if not one)
    assert findings[3] == f"  {source_line(run)}" and findings[3].startswith(
        f"  The run started {run['started']}"
    )
    assert findings[4].startswith("Exploratory")  # the usual findings follow, labelled
    assert "Confirmatory: 2 tests" in (out / "summary.txt").read_text()


def test_a_rotation_with_offset_controls_is_tested_against_them_too(tiny_analysed, tmp_path):
    """With --offset-controls a rotation's hypothesis is also ranked among its offset random planes
    (vs_offset), and the summary names them."""
    data, report = tiny_analysed
    out = tmp_path / "steer"
    args = ["steer", str(data), "--report", str(report), "--layers", "1", "--out", str(out), *FAST_STEER]
    assert main([*args, "--alpha", "0.5", "--offset-controls", "--confirm", *MID]) == 0
    result = json.loads((out / "steer.json").read_text())
    entry = result["layers"]["1"]["mid"]
    offset = "offset rotate plane/trig 90"
    assert set(entry["random"]) == {"rotate 90", f"matched {MID[1].replace('+90', '±90')}", offset}
    (cond,) = entry["conditions"]
    assert cond["offset"] == offset and "vs_offset" in cond["effect"]["length"]
    (t,) = result["confirmatory"]["tests"]
    assert t["draws"] == {"vs_random": 3, "vs_matched": 3, "vs_offset": 3}
    draws = entry["random"][offset][t["measure"]]
    sign = 1 if t["direction"] == "higher" else -1
    assert t["p"]["vs_offset"] == (1 + sum(sign * d >= sign * t["value"] - 1e-12 for d in draws)) / 4
    assert "vs offset random: length z" in (out / "summary.txt").read_text()


def test_a_hypothesis_on_a_sign_contrast_is_tested_against_the_random_directions_contrasts(
    tiny_analysed, tmp_path
):
    data, report = tiny_analysed
    out = tmp_path / "steer"
    args = ["steer", str(data), "--report", str(report), "--layers", "1", "--out", str(out), *FAST_STEER]
    hypothesis = ["mid", "add probe/linear ±0.5", "length", "lower"]
    assert main([*args, "--alpha", "0.5", "--confirm", *hypothesis]) == 0
    result = json.loads((out / "steer.json").read_text())
    entry = result["layers"]["1"]["mid"]
    assert [c["name"] for c in entry["conditions"]] == ["add probe/linear +0.5", "add probe/linear -0.5"]
    assert set(entry["random"]) == {"add 0.5", "add -0.5", "sign add 0.5"}
    (contrast,) = entry["contrasts"]
    (t,) = result["confirmatory"]["tests"]
    assert t["condition"] == "add probe/linear ±0.5" and t["value"] == contrast["effect"]["length"]["value"]
    assert t["draws"] == {"vs_random": 3}  # no size-matched draws for an added direction
    draws = entry["random"]["sign add 0.5"]["length"]
    assert t["p"]["vs_random"] == (1 + sum(-d >= -t["value"] - 1e-12 for d in draws)) / 4
    # the paired test is of the turns at +a against those at -a, not against the unsteered ones
    diff = np.asarray(contrast["per_prompt"]["length"])
    assert set(t["p"]) == {"vs_opposite", "vs_random"}
    assert t["p"]["vs_opposite"] == sign_flip_p(diff, -1, 0)
    plus, minus = (np.asarray(c["per_prompt"]["length"]) for c in entry["conditions"])
    np.testing.assert_array_equal(diff, plus - minus)
    assert t["n_differ"] == np.count_nonzero(plus - minus)  # the prompts the sign-flip test can use
    assert f"({t['n_differ']} prompts differ)" in result["findings"][1]


def test_a_hypothesis_on_a_rotations_sign_contrast_is_tested_against_planes_and_size_matched_pairs(
    tiny_analysed, tmp_path
):
    """A rotation's sign contrast (+theta minus -theta, prompt by prompt) is ranked among the random
    planes' own (each plane at +theta minus at -theta) and among the size-matched pairs' (draw i
    along u as far as the +theta rotation moves h, minus along -u as far as the -theta one does);
    the two rotations' own numbers are those of a run without the sign controls."""
    data, report = tiny_analysed
    common = ["steer", str(data), "--report", str(report), "--layers", "1", *FAST_STEER]
    hypothesis = ["mid", "rotate plane/trig ±90", "length", "higher"]
    out = tmp_path / "signed"
    assert main([*common, "--out", str(out), "--alpha", "0.5", "--confirm", *hypothesis]) == 0
    names = ["rotate plane/trig +90", "rotate plane/trig -90"]
    plain = tmp_path / "plain"
    assert (
        main([*common, "--settings", "mid", "--matched-controls", "--only", *names, "--out", str(plain)]) == 0
    )
    result = json.loads((out / "steer.json").read_text())
    entry = result["layers"]["1"]["mid"]
    before = json.loads((plain / "steer.json").read_text())["layers"]["1"]["mid"]
    assert [c["name"] for c in entry["conditions"]] == names
    assert entry["conditions"] == before["conditions"]  # the same turns, effects and controls
    plus, minus = names
    shared = "matched rotate plane/trig ±90"  # both signs' size-matched draws (one turn moves h as far)
    mirrored = f"mirrored {shared}"
    assert all(c["matched"] == shared for c in entry["conditions"])
    assert set(entry["random"]) == {
        "rotate 90",
        "rotate -90",
        shared,
        mirrored,
        "sign rotate 90",
        f"sign {shared}",
    }
    random = entry["random"]
    for k in ("length", "p_end"):
        want = np.subtract(random["rotate 90"][k], random["rotate -90"][k])
        assert random["sign rotate 90"][k] == pytest.approx(want.tolist())
        want = np.subtract(random[shared][k], random[mirrored][k])
        assert random[f"sign {shared}"][k] == pytest.approx(want.tolist())
    # the mirrored draws move h as far as the -theta rotation, and so do the shared ones
    minus_size = entry["conditions"][1]["effect"]["edit_size"]["value"]
    for family in (shared, mirrored):
        assert np.allclose(random[family]["edit_size"], minus_size, rtol=1e-4)
    (contrast,) = entry["contrasts"]
    assert contrast["name"] == "rotate plane/trig ±90" and contrast["matched"] == f"sign {shared}"
    (t,) = result["confirmatory"]["tests"]
    assert set(t["p"]) == {"vs_opposite", "vs_random", "vs_matched"}
    assert t["draws"] == {"vs_random": 3, "vs_matched": 3}
    for test, family in (("vs_random", "sign rotate 90"), ("vs_matched", f"sign {shared}")):
        draws = random[family]["length"]
        assert t["p"][test] == (1 + sum(d >= t["value"] - 1e-12 for d in draws)) / 4
    for k in ("length", "p_end"):  # the exploratory comparison is with the same pairs' contrasts
        got = contrast["effect"][k]["vs_matched"]
        assert got["random_mean"] == pytest.approx(np.mean(random[f"sign {shared}"][k]))
    diff = np.asarray(contrast["per_prompt"]["length"])
    by_name = {c["name"]: np.asarray(c["per_prompt"]["length"]) for c in entry["conditions"]}
    np.testing.assert_array_equal(diff, by_name[plus] - by_name[minus])
    assert t["p"]["vs_opposite"] == sign_flip_p(diff, 1, 0)
    assert "vs size-matched random: length z" in (out / "summary.txt").read_text().split("sign contrasts")[1]
