"""`turnphase steer` on the tiny model: the edits act where and how they should, a zero edit is
plain generation, a run writes a valid steer.json, and bad input is one line with nothing written."""

import json
import shutil

import numpy as np
import pytest
import torch
from steer_args import FAST_STEER
from tiny_model import save_tiny_chat_model

from turnphase.analysis.directions import Directions
from turnphase.builders.activations import decoder_blocks
from turnphase.builders.cli import main
from turnphase.builders.errors import ConfigError, TurnphaseError
from turnphase.builders.model import load_model
from turnphase.steering import SteerConfig, generate, steer
from turnphase.steering.conditions import conditions
from turnphase.steering.edits import Ablate, Add, Rotate, plane_basis, unit
from turnphase.steering.figures import dose_response, p_end_curves
from turnphase.steering.generate import Steerer
from turnphase.steering.measures import MEASURES
from turnphase.steering.prompts import make_prompts, next_header

LAYER = 1


@pytest.fixture(scope="module")
def steerer(tiny_analysed, tiny_model_dir):
    data, _ = tiny_analysed
    loaded = load_model(str(tiny_model_dir), layers="all")
    chats = {
        0: [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
        1: [{"role": "user", "content": "What is a coral reef? Tell me."}],
        2: [{"role": "user", "content": "Is that really true?"}],
    }
    for c in chats.values():  # one assistant turn each, to prompt for
        c.append({"role": "assistant", "content": "Because air scatters short wavelengths of light."})
    prompts = make_prompts(loaded.tokenizer, chats, "mid", 0.5, 10, 0)
    s = Steerer(
        loaded.model,
        loaded.tokenizer,
        [p.ids for p in prompts],
        LAYER,
        max_new_tokens=12,
        temperature=0.7,
        top_p=0.9,
    )
    return s, loaded


def edits(d_model: int):
    rng = np.random.default_rng(0)
    q, c = plane_basis(rng.standard_normal((d_model, 2))), torch.from_numpy(rng.standard_normal(2)).float()
    mean = torch.from_numpy(rng.standard_normal(d_model)).float()
    return {
        "add": Add(unit(rng.standard_normal(d_model)), 0.7),
        "rotate": Rotate(q, c, 120.0),
        "ablate": Ablate(q, mean),
    }


@pytest.mark.parametrize("kind", ["add", "rotate", "ablate"])
def test_each_edit_changes_the_layer_output_as_specified(steerer, kind):
    """nnsight's edit at layer L gives the logits of a plain PyTorch hook applying the same function."""
    s, loaded = steerer
    edit = edits(loaded.d_model)[kind]
    reference = s.generate(None, seed=0)
    steered, done = s.log_probs(edit, reference, 5)
    plain, none = s.log_probs(None, reference, 5)
    block = decoder_blocks(loaded.model)[LAYER]
    seen = []

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        seen.append(h.shape)
        new = edit(h)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(hook)
    try:
        hooked, _ = s.log_probs(None, reference, 5)
    finally:
        handle.remove()
    assert seen, "the hook ran"
    for a, b, p in zip(steered, hooked, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert not torch.allclose(a, p, atol=1e-4)  # the edit did something
    assert (none["edit_size"] == 0).all() and (done["edit_size"] > 0).all()
    assert "phase_shift" not in done  # only a rotation of a plane with a readout has one
    if kind == "add":  # |a |h| u| / |h| = a at every position
        np.testing.assert_allclose(done["edit_size"], 0.7, rtol=1e-5)


def test_a_zero_edit_is_plain_generation_token_for_token(steerer):
    s, loaded = steerer
    plain = s.generate(None, seed=3, plain=True)
    zero = edits(loaded.d_model)
    zero["add"].a, zero["rotate"].degrees = 0.0, 0.0
    for edit in (None, zero["add"], zero["rotate"]):
        got = s.generate(edit, seed=3)
        assert got.tokens == plain.tokens
        np.testing.assert_allclose(got.p_end, plain.p_end, rtol=1e-5)
    assert any(len(t) for t in plain.tokens)
    strong = s.generate(edits(loaded.d_model)["add"], seed=3)
    assert strong.tokens != plain.tokens


def test_conditions_include_twenty_random_controls_per_strength_by_default(tiny_analysed):
    data, report = tiny_analysed
    d = Directions.load(report)
    config = SteerConfig(str(data), str(report), [LAYER])
    conds = conditions(d.layers[LAYER].folds[0], len(d.layers[LAYER].folds[0].mean), config, LAYER)
    families = {}
    for c in conds:
        families.setdefault(c.family, []).append(c)
    for family, members in families.items():
        assert sum(c.is_random for c in members) == 20, family
        assert any(not c.is_random for c in members), family
    assert {f"add {a:g}" for a in config.add} <= families.keys()
    assert any(c.target == "scrambled/probe/linear" for c in conds)


def test_a_phase_plane_turns_about_its_readouts_zero_unless_told_the_training_mean(tiny_analysed):
    """rotate_about "readout": the phase plane's readout reads its rotation centre as zero; "mean":
    the centre is the training mean's projection, which the readout reads as the mean target. Random
    planes (no readout) and the scrambled null's plane (a readout of shuffled labels) turn about the
    training mean either way."""
    data, report = tiny_analysed
    found = Directions.load(report).layers[LAYER].folds[0]
    d_model = len(found.mean)

    def by_name(**kw):
        config = SteerConfig(str(data), str(report), [LAYER], **kw)
        return {c.name: c.edit for c in conditions(found, d_model, config, LAYER) if c.kind == "rotate"}

    about_zero, about_mean = by_name(), by_name(rotate_about="mean")
    for target in ("plane/trig", "plane/fourier"):
        fitted = found.readouts["real"][target]
        zero, mean = about_zero[f"rotate {target} +90"], about_mean[f"rotate {target} +90"]
        np.testing.assert_allclose(fitted((zero.q @ zero.centre).numpy()), 0.0, atol=1e-4)
        torch.testing.assert_close(mean.centre, mean.q.T @ torch.from_numpy(found.mean).float())
        assert np.abs(fitted((mean.q @ mean.centre).numpy())).max() > 1e-3  # not the readout's zero
        assert zero.readout is not None and mean.readout is not None
    for name, edit in about_zero.items():
        if name.startswith("random"):
            assert edit.readout is None and torch.equal(edit.centre, about_mean[name].centre)
        if "scrambled" in name:
            assert edit.readout is not None and torch.equal(edit.centre, about_mean[name].centre)
    with pytest.raises(ConfigError) as e:
        SteerConfig(str(data), str(report), [LAYER], rotate_about="origin")
    assert e.value.field == "rotate_about"
    with pytest.raises(ConfigError) as e:
        SteerConfig(str(data), str(report), [LAYER], next_user_edit="header")
    assert e.value.field == "next_user_edit"


def test_matched_controls_and_only(tiny_analysed):
    """--matched-controls gives every rotation and ablation a family of n_random random directions,
    each a Matched control of that condition's own edit; --only keeps the named conditions and the
    draws they are compared with, at their places in the whole run; an unknown name is refused."""
    data, report = tiny_analysed
    found = Directions.load(report).layers[LAYER].folds[0]
    d_model = len(found.mean)
    config = SteerConfig(str(data), str(report), [LAYER], matched_controls=True)
    conds = conditions(found, d_model, config, LAYER)
    plane_edits = [c for c in conds if not c.is_random and c.kind in ("rotate", "ablate")]
    ablations = [c for c in plane_edits if c.kind == "ablate"]
    assert ablations and all(c.matched == f"matched {c.name}" for c in ablations)
    rotations = [c for c in plane_edits if c.kind == "rotate"]  # +theta and -theta share one family
    assert rotations and all(c.matched == f"matched rotate {c.target} ±90" for c in rotations)
    adds = [c for c in conds if not c.is_random and c.kind == "add"]
    assert adds and all(c.matched is None for c in adds)  # an added direction is as large as its draws
    h = torch.randn(5, d_model) * 10 + torch.from_numpy(found.mean).float()
    for c in plane_edits:
        draws = [m for m in conds if m.family == c.matched]
        assert len(draws) == 20 and all(m.is_random for m in draws)
        # drawn with the +theta edit (or the ablation's own), and as large as this one's at every position
        assert all(m.edit.edit is c.edit for m in draws) == (c.strength >= 0)
        own = (c.edit(h) - h).norm(dim=-1)
        assert all(torch.allclose((m.edit(h) - h).norm(dim=-1), own, rtol=1e-4) for m in draws)
    names = ["rotate plane/trig +90", "ablate plane/fourier"]
    config.only = names
    kept = conditions(found, d_model, config, LAYER)
    assert [c.name for c in kept if not c.is_random] == names
    families = {"rotate 90", "ablate plane", "matched rotate plane/trig ±90", "matched ablate plane/fourier"}
    assert {c.family for c in kept if c.is_random} == families
    whole = {c.name: c.index for c in conds}
    assert all(c.index == whole[c.name] for c in kept)  # the same bootstrap seeds as the whole run
    # -theta alone keeps the draws it shares with +theta (made with the +theta edit, not run here)
    config.only = ["rotate plane/trig -90"]
    kept = conditions(found, d_model, config, LAYER)
    assert {c.family for c in kept if c.is_random} == {"rotate 90", "matched rotate plane/trig ±90"}
    assert all(c.index == whole[c.name] for c in kept)
    # a half turn's two signs share theirs too
    config.only, config.rotate = None, [180]
    half = [
        c for c in conditions(found, d_model, config, LAYER) if c.family == "matched rotate plane/trig ±180"
    ]
    assert len(half) == 20
    config.rotate = [90]
    config.only = ["rotate plane/nowhere +90"]
    with pytest.raises(ConfigError, match="no condition named 'rotate plane/nowhere \\+90'") as e:
        conditions(found, d_model, config, LAYER)
    assert e.value.field == "only"


def test_offset_controls_turn_random_planes_about_a_point_as_far_off(tiny_analysed):
    """--offset-controls gives each phase plane, per angle, a family of the n_random random planes
    (both signs' control), each turned by that angle about a point as far from the training mean as
    that plane's readout zero, at its own angle, so that h at the mean moves exactly as far as the
    phase plane's rotation moves it; after every other condition, with the size-matched and sign
    controls too (the others keep their places); refused when planes turn about the mean."""
    data, report = tiny_analysed
    found = Directions.load(report).layers[LAYER].folds[0]
    d_model, wide = len(found.mean), torch.from_numpy(found.mean).double()  # checks in float64
    config = SteerConfig(str(data), str(report), [LAYER], rotate=[90, 180], matched_controls=True)
    config.sign_controls = True
    plain = conditions(found, d_model, config, LAYER)
    config.offset_controls = True
    conds = conditions(found, d_model, config, LAYER)
    assert [(c.name, c.index) for c in conds[: len(plain)]] == [(c.name, c.index) for c in plain]
    turned = [c for c in conds if not c.is_random and c.kind == "rotate" and c.target.startswith("plane/")]
    assert len(turned) == 8
    assert all(c.offset == f"offset rotate {c.target} {abs(c.strength):g}" for c in turned)
    assert len({c.family for c in conds if c.target == "random/offset-plane"}) == 4  # 2 planes x 2 angles
    assert all(c.offset is None for c in conds if not any(c is t for t in turned))  # scrambled/random: none
    planes = [c.edit.q for c in conds if c.family == "rotate 90" and c.is_random]
    at_mean = wide[None]
    for c in turned:
        far = float(torch.linalg.norm(c.edit.centre.double() - c.edit.q.double().T @ wide))
        assert far > 0
        moved = 2 * np.sin(np.radians(abs(c.strength)) / 2) * far  # |(R - I) offset|
        assert float((c.edit(at_mean) - at_mean).norm()) == pytest.approx(moved, rel=1e-6)
        draws = [m for m in conds if m.family == c.offset]
        assert len(draws) == 20 and all(m.is_random and m.target == "random/offset-plane" for m in draws)
        angles = []
        for m, q in zip(draws, planes, strict=True):
            assert torch.equal(m.edit.q, q) and m.edit.degrees == abs(c.strength) and m.edit.readout is None
            off = m.edit.centre.double() - q.double().T @ wide
            assert float(torch.linalg.norm(off)) == pytest.approx(far, rel=2e-3)  # float32 centres
            angles.append(round(float(torch.atan2(off[1], off[0])), 6))
            assert float((m.edit(at_mean) - at_mean).norm()) == pytest.approx(moved, rel=2e-3)
        assert len(set(angles)) == 20  # each draw about a point at its own angle
    with pytest.raises(ConfigError) as e:
        SteerConfig(str(data), str(report), [LAYER], offset_controls=True, rotate_about="mean")
    assert e.value.field == "offset_controls"


def test_a_run_with_matched_controls_scores_each_condition_against_its_own(tiny_analysed, tmp_path):
    data, report = tiny_analysed
    common = ["--report", str(report), "--layers", "1", "--settings", "mid", *FAST_STEER]
    assert main(["steer", str(data), *common, "--out", str(tmp_path / "all")]) == 0
    only = ["--matched-controls", "--only", "rotate plane/trig +90", "ablate probe/linear"]
    assert main(["steer", str(data), *common, *only, "--out", str(tmp_path / "some")]) == 0
    whole, some = (
        json.loads((tmp_path / d / "steer.json").read_text())["layers"]["1"]["mid"] for d in ("all", "some")
    )
    assert [c["name"] for c in some["conditions"]] == ["rotate plane/trig +90", "ablate probe/linear"]
    assert len(some["random"]["matched rotate plane/trig ±90"]["length"]) == 3  # --random 3
    same = {c["name"]: c for c in whole["conditions"]}
    for c in some["conditions"]:
        for k in MEASURES:
            effect, before = dict(c["effect"][k]), same[c["name"]]["effect"][k]
            matched = effect.pop("vs_matched")
            assert effect == before  # the same value, interval and random comparison as in the whole run
            draws = some["random"][c["matched"]][k]
            assert matched["random_mean"] == pytest.approx(np.mean(draws))
        # the controls moved h as far as the edit did (edit_size is measured the same way)
        sizes = some["random"][c["matched"]]["edit_size"]
        assert np.allclose(sizes, c["effect"]["edit_size"]["value"], rtol=1e-4)
    assert "vs size-matched random: length z" in (tmp_path / "some" / "summary.txt").read_text()
    findings = {
        d: json.loads((tmp_path / d / "steer.json").read_text())["findings"][-1] for d in ("all", "some")
    }
    assert (
        findings["some"].startswith("2 conditions (on turn length and on the role named next) were tested")
        and "chosen with --only" in findings["some"]
    )
    assert findings["all"].endswith("would pass by chance alone.")  # counted over the whole run


def test_sign_controls_pair_each_random_direction_with_its_negation(tiny_analysed):
    """--sign-controls runs every `add a` family's random directions again at -a, in the same order,
    after every other condition (which keep their places, so their seeds); --only keeps the draws
    at -a only when it names both signs of a direction (a sign contrast needs them)."""
    data, report = tiny_analysed
    found = Directions.load(report).layers[LAYER].folds[0]
    d_model = len(found.mean)
    plain = conditions(found, d_model, SteerConfig(str(data), str(report), [LAYER]), LAYER)
    config = SteerConfig(str(data), str(report), [LAYER], sign_controls=True)
    signed = conditions(found, d_model, config, LAYER)
    assert [(c.name, c.index) for c in signed[: len(plain)]] == [(c.name, c.index) for c in plain]
    for a in config.add:
        plus = [c for c in signed if c.family == f"add {a:g}" and c.is_random]
        minus = [c for c in signed if c.family == f"add {-a:g}"]
        assert len(minus) == len(plus) == 20 and all(c.is_random and c.strength == -a for c in minus)
        for p, m in zip(plus, minus, strict=True):
            assert torch.equal(p.edit.u, m.edit.u) and m.edit.a == -p.edit.a
            assert m.name == p.name.replace(f"add {a:g}", f"add {-a:g}")
        adds = [c for c in signed if c.family == f"add {a:g}" and not c.is_random]
        assert adds and all(c.opposite == f"add {-a:g}" for c in adds)
    assert all(c.opposite is None for c in plain)
    config.only = ["add probe/linear +0.2"]
    kept = conditions(found, d_model, config, LAYER)
    assert {c.family for c in kept if c.is_random} == {"add 0.2"}
    config.only = ["add probe/linear +0.2", "add probe/linear -0.2"]
    kept = conditions(found, d_model, config, LAYER)
    assert {c.family for c in kept if c.is_random} == {"add 0.2", "add -0.2"}


def test_sign_controls_turn_each_random_plane_both_ways_and_mirror_the_size_matched_draws(tiny_analysed):
    """--sign-controls runs every `rotate theta` family's random planes again at -theta, and (with
    --matched-controls) each -theta rotation's size-matched draws again along -u, after every
    other condition (which keep their places); --only keeps them only when both signs of a plane
    are named."""
    data, report = tiny_analysed
    found = Directions.load(report).layers[LAYER].folds[0]
    d_model, h = len(found.mean), torch.randn(5, len(found.mean))
    config = SteerConfig(str(data), str(report), [LAYER], rotate=[90, 45], matched_controls=True)
    plain = conditions(found, d_model, config, LAYER)
    config.sign_controls = True
    signed = conditions(found, d_model, config, LAYER)
    assert [(c.name, c.index) for c in signed[: len(plain)]] == [(c.name, c.index) for c in plain]
    for theta in (90, 45):
        plus = [c for c in signed if c.family == f"rotate {theta}" and c.is_random]
        minus = [c for c in signed if c.family == f"rotate {-theta}"]
        assert len(minus) == len(plus) == 20
        for p, m in zip(plus, minus, strict=True):
            assert torch.equal(p.edit.q, m.edit.q) and torch.equal(p.edit.centre, m.edit.centre)
            assert m.edit.degrees == -theta and m.strength == -theta and m.target == "random/plane"
        turned = [c for c in signed if c.kind == "rotate" and not c.is_random and abs(c.strength) == theta]
        assert len(turned) == 6 and all(c.opposite == f"rotate {-theta}" for c in turned)
        for c in turned:
            if c.strength > 0:
                assert c.mirrored is None
                continue
            assert c.mirrored == f"mirrored {c.matched}"
            matched = [m for m in signed if m.family == c.matched]
            mirrored = [m for m in signed if m.family == c.mirrored]
            assert len(mirrored) == 20 and all(m.is_random and m.target == "random/matched" for m in mirrored)
            for a, b in zip(matched, mirrored, strict=True):  # the same size, the other way
                assert torch.allclose(b.edit(h) - h, -(a.edit(h) - h), atol=1e-5)
    assert all(c.opposite is None and c.mirrored is None for c in plain if c.kind == "rotate")
    # without size-matched draws nothing to mirror; a half turn is the same edit both ways: no pairs
    config.matched_controls, config.rotate = False, [90, 180]
    unmatched = conditions(found, d_model, config, LAYER)
    assert not any(c.mirrored for c in unmatched) and not any(
        c.family.startswith("mirrored") for c in unmatched
    )
    assert {c.family for c in unmatched if c.target == "random/plane" and c.strength < 0} == {"rotate -90"}
    assert all(c.opposite is None for c in unmatched if c.kind == "rotate" and c.strength in (180, -180))
    config.matched_controls, config.rotate = True, [90, 45]
    config.only = ["rotate plane/fourier +90"]
    kept = conditions(found, d_model, config, LAYER)
    assert {c.family for c in kept if c.is_random} == {"rotate 90", "matched rotate plane/fourier ±90"}
    config.only = ["rotate plane/fourier +90", "rotate plane/fourier -90"]
    kept = conditions(found, d_model, config, LAYER)
    assert {c.family for c in kept if c.is_random} == {
        "rotate 90",
        "rotate -90",
        "matched rotate plane/fourier ±90",
        "mirrored matched rotate plane/fourier ±90",
    }


def test_a_sign_contrast_is_the_difference_of_the_two_signs_against_the_random_pairs(tiny_analysed, tmp_path):
    data, report = tiny_analysed
    common = ["--report", str(report), "--layers", "1", "--settings", "mid", *FAST_STEER]
    names = ["add probe/linear +0.5", "add probe/linear -0.5", "add scrambled/probe/linear +0.5"]
    assert main(["steer", str(data), *common, "--only", *names, "--out", str(tmp_path / "plain")]) == 0
    signed = ["--sign-controls", "--only", *names]
    assert main(["steer", str(data), *common, *signed, "--out", str(tmp_path / "signed")]) == 0
    plain, got = (
        json.loads((tmp_path / d / "steer.json").read_text())["layers"]["1"]["mid"]
        for d in ("plain", "signed")
    )
    assert "contrasts" not in plain
    assert got["conditions"] == plain["conditions"]  # the conditions' own numbers do not change
    # one contrast: the scrambled direction was run at +0.5 only
    (contrast,) = got["contrasts"]
    assert contrast["name"] == "add probe/linear ±0.5" and contrast["family"] == "sign add 0.5"
    by_name = {c["name"]: c for c in got["conditions"]}
    plus, minus = (by_name[f"add probe/linear {s}0.5"]["per_prompt"] for s in "+-")
    draws = got["random"]
    for k in ("length", "ended", "p_end"):
        e = contrast["effect"][k]
        assert e["value"] == pytest.approx(np.mean(np.subtract(plus[k], minus[k])))
        # each draw's contrast: its effect at +u minus at -u (both paired with the same unsteered turns)
        want = np.subtract(draws["add 0.5"][k], draws["add -0.5"][k])
        assert draws["sign add 0.5"][k] == pytest.approx(want.tolist())
        assert e["random_mean"] == pytest.approx(np.mean(want))
    assert len(draws["sign add 0.5"]["length"]) == 3  # --random 3
    summary = (tmp_path / "signed" / "summary.txt").read_text()
    assert "sign contrasts: the effect at +a minus at -a" in summary and "add probe/linear ±0.5" in summary
    # the dose-response figure has a row for the adds only (no rotation was run)
    fig = dose_response(got, "t")
    assert [ax.get_title() for ax in fig.axes] == [
        "add: turn length (tokens)",
        "add: mean P(end of turn)",
        "add: next header: log P(user) - log P(assistant)",
    ]
    assert dose_response({**got, "conditions": []}, "t") is None
    # P(end) by step: each phase direction's or plane's strongest edit at each sign, not the scrambled one
    back = {**got["conditions"][0], "name": "rotate plane/fourier -90", "kind": "rotate"}
    back |= {"target": "plane/fourier", "strength": -90.0}
    fig = p_end_curves({**got, "conditions": [*got["conditions"], back]}, "t")
    labels = sorted(line.get_label() for line in fig.axes[0].get_lines())
    assert labels == [
        "add probe/linear +0.5",
        "add probe/linear -0.5",
        "rotate plane/fourier -90",
        "unsteered",
    ]
    lines = json.loads((tmp_path / "signed" / "steer.json").read_text())["findings"]
    assert lines[1].startswith(
        ("No condition moves the role the model names", "The role named after the turn")
    )
    assert lines[2].lstrip().startswith("Sign contrasts")
    assert lines[-1].startswith(
        "3 conditions (on turn length and on the role named next) and 1 sign contrast (on length) were "
        "tested against random controls, chosen with --only"
    )


def test_a_run_writes_a_valid_steer_json(tiny_analysed, tmp_path):
    data, report = tiny_analysed
    out = tmp_path / "steer"
    assert (
        main(["steer", str(data), "--report", str(report), "--layers", "1,3", "--out", str(out), *FAST_STEER])
        == 0
    )
    result = json.loads((out / "steer.json").read_text())
    assert result["steer_version"] == 3 and result["findings"]
    n = sum(len(e["conditions"]) for settings in result["layers"].values() for e in settings.values())
    assert f"about {0.1 * n:.0f} of these {2 * n} tests would pass" in result["findings"][-1]  # 2 measures
    assert set(result["layers"]) == {"1", "3"}
    held = set(Directions.load(report).held_out(0).tolist())
    for entry in result["layers"]["1"].values():
        assert 1 <= entry["n_prompts"] <= 4
        names = [c["name"] for c in entry["conditions"]]
        assert (
            "add probe/linear +0.1" in names
            and "rotate plane/fourier -90" in names
            and "ablate plane/trig" in names
        )
        assert all(len(v["length"]) == 3 for v in entry["random"].values())  # --random 3
        for c in entry["conditions"]:
            assert set(c["effect"]) == set(MEASURES)
            assert 0 < c["effect"]["length"]["p"] <= 1
            assert c["mean"]["kl"] >= -1e-6
            # a phase plane's rotation about its readout's zero moves its phase estimate its way, by
            # less than 180 degrees (exactly theta only for a readout that is a scaled rotation); the
            # scrambled null's plane turns about the training mean, so its moves are only bounded
            assert ("phase_shift" in c) == (c["kind"] == "rotate")
            if c["kind"] == "rotate":
                shifts = np.asarray(c["phase_shift"]["per_prompt"])
                assert len(shifts) == entry["n_prompts"] and (np.abs(shifts - c["strength"]) <= 180).all()
                if c["target"].startswith("plane/"):
                    assert (np.sign(shifts) == np.sign(c["strength"])).all() and (np.abs(shifts) < 180).all()
                errors = np.asarray(c["phase_shift"]["error_per_prompt"])
                assert (errors >= np.abs(shifts - c["strength"]) - 1e-9).all() and (errors < 180).all()
                assert c["phase_shift"]["error"] == pytest.approx(errors.mean())
        assert len(entry["unsteered"]["p_end_curve"]) == 6
        assert len(entry["unsteered"]["per_prompt"]["next_user"]) == entry["n_prompts"]
        assert np.isfinite(entry["unsteered"]["per_prompt"]["next_user"]).all()
    assert {p["conversation_id"] for p in result["prompts"]["start"]} <= held
    for name in result["figures"]:
        assert (out / name).stat().st_size > 0
    svg = tmp_path / "svg"
    args = ["--layers", "all", "--settings", "start", "--figure-format", "svg", "--out", str(svg)]
    assert main(["steer", str(data), "--report", str(report), *args, *FAST_STEER]) == 0
    again = json.loads((svg / "steer.json").read_text())
    assert again["config"]["layers"] == [1, 3] and again["figures"]
    for name in again["figures"]:  # every figure titled, in the format asked for
        title = (svg / name).read_text().split("<dc:title>")[1].split("</dc:title>")[0]
        assert name.endswith(".svg") and "start of the assistant turn" in title
    summary = (out / "summary.txt").read_text()
    assert summary.startswith(result["findings"][0])
    stages = result["timings"]["stages"]
    assert {"model", "layer 1 start", "layer 3 mid", "figures"} <= set(stages)
    assert sum(stages.values()) <= result["timings"]["total"] + 1e-6 and "took " in summary.splitlines()[-1]


def test_a_run_writes_every_turn_to_turns_parquet(tiny_analysed, tmp_path):
    """turns.parquet holds every turn of the run (unsteered, each condition, each random draw) with
    the measures steer.json has for it, readable with load_dataset."""
    from datasets import load_dataset

    from turnphase.steering.turns import TURNS_FILE, UNSTEERED

    data, report = tiny_analysed
    out = tmp_path / "steer"
    args = ["steer", str(data), "--report", str(report), "--layers", "1,3", "--out", str(out), *FAST_STEER]
    assert main(args) == 0
    result = json.loads((out / "steer.json").read_text())
    turns = load_dataset("parquet", data_files=str(out / TURNS_FILE), split="train").to_pandas()
    expected = 0
    for layer, settings in result["layers"].items():
        for setting, entry in settings.items():
            n, ids = entry["n_prompts"], [p["conversation_id"] for p in result["prompts"][setting]]
            mine = turns[(turns.layer == int(layer)) & (turns.setting == setting)]
            expected += len(mine)
            named = [(UNSTEERED, entry["unsteered"]), *[(c["name"], c) for c in entry["conditions"]]]
            for name, block in named:
                rows = mine[mine.condition == name].sort_values("prompt")
                assert rows.prompt.tolist() == list(range(n)) and rows.family.isna().all()
                assert rows.conversation_id.tolist() == ids and (rows.length == rows.ids.map(len)).all()
                for k, values in block["per_prompt"].items():
                    np.testing.assert_allclose(rows[k], values)
                shown = rows.set_index("prompt").loc[entry["example_prompts"]]
                assert shown.text.tolist() == block["examples"]
            base = mine[mine.condition == UNSTEERED].sort_values("prompt")
            draws = mine[mine.family.notna()]
            assert set(draws.family) == set(entry["random"])  # no sign controls: one family per draw set
            assert len(mine) == n * (len(named) + sum(len(v["length"]) for v in entry["random"].values()))
            for family, fam in draws.groupby("family"):  # each draw's effect, from its turns
                for k in ("length", "next_user"):
                    effects = [
                        g.sort_values("prompt")[k].to_numpy() - base[k].to_numpy()
                        for _, g in fam.groupby("condition")
                    ]
                    np.testing.assert_allclose(
                        sorted(e.mean() for e in effects), sorted(entry["random"][family][k])
                    )
    assert len(turns) == expected


def test_a_cross_fitted_run_is_every_folds_run_side_by_side(tiny_analysed, tmp_path, monkeypatch):
    """--fold all steers every fold's held-out prompts, each with its own fold's directions: each
    fold's prompts get the turns, KL and edit sizes a run on that fold alone gives them (all of its
    prompts taken, several batches per fold), and a random draw's effect is the mean over all."""
    data, report = tiny_analysed
    folds = Directions.load(report).layers[1].folds
    planes = [f.readouts["real"]["plane/trig"].weight for f in folds]
    assert not np.allclose(planes[0], planes[1])  # so each fold's prompts must get their own fold's
    monkeypatch.setattr(generate, "PREFILL_BATCH", 3)  # 4 prompts per fold: 2 prefill, 2 generate batches
    only = ["--only", "rotate plane/trig +90", "rotate plane/trig -90", "add probe/linear +0.5"]
    only += ["ablate plane/fourier", "--matched-controls", "--offset-controls", "--sign-controls"]
    common = ["steer", str(data), "--report", str(report), "--layers", "1", "--settings", "mid", *FAST_STEER]
    common += ["--batch-size", "3"]
    runs = {}
    for fold in ("all", "0", "1", "2"):
        out = tmp_path / fold
        assert main([*common, *only, "--prompts", "12", "--fold", fold, "--out", str(out)]) == 0
        runs[fold] = json.loads((out / "steer.json").read_text())
    whole, parts = runs["all"], [runs[f] for f in ("0", "1", "2")]
    assert whole["prompts"]["fold"] == "all" and whole["prompts"]["conversations"] == sorted(
        c for r in parts for c in r["prompts"]["conversations"]
    )
    assert whole["prompts"]["mid"] == [p for r in parts for p in r["prompts"]["mid"]]  # fold by fold
    assert [p["fold"] for p in whole["prompts"]["mid"]] == [0] * 4 + [1] * 4 + [2] * 4
    assert "(12 prompts from every fold, each steered with its own fold's directions)" in whole["findings"][0]
    assert "every fold" not in parts[0]["findings"][0]
    entry, pieces = whole["layers"]["1"]["mid"], [r["layers"]["1"]["mid"] for r in parts]
    assert entry["n_prompts"] == 12 and all(p["n_prompts"] == 4 for p in pieces)
    for k, values in entry["unsteered"]["per_prompt"].items():
        assert values == [v for p in pieces for v in p["unsteered"]["per_prompt"][k]]
    for i, cond in enumerate(entry["conditions"]):
        for k, values in cond["per_prompt"].items():  # length, ended, broken, p_end, kl, edit_size
            assert values == pytest.approx(
                [v for p in pieces for v in p["conditions"][i]["per_prompt"][k]], rel=1e-6
            )
        if cond["name"].startswith("rotate"):  # each fold's phase estimate, read by its own readout
            assert cond["phase_shift"]["per_prompt"] == pytest.approx(
                [v for p in pieces for v in p["conditions"][i]["phase_shift"]["per_prompt"]], rel=1e-5
            )
    # the examples: each fold's first prompt (a fold's run alone keeps its first 3), generated alike
    assert entry["example_prompts"] == [0, 4, 8] and all(p["example_prompts"] == [0, 1, 2] for p in pieces)
    assert entry["unsteered"]["examples"] == [p["unsteered"]["examples"][0] for p in pieces]
    for i, cond in enumerate(entry["conditions"]):
        assert cond["examples"] == [p["conditions"][i]["examples"][0] for p in pieces]
    assert "rotate plane/trig ±90" in [c["name"] for c in entry["contrasts"]]
    for i, contrast in enumerate(entry["contrasts"]):
        for k, values in contrast["per_prompt"].items():
            assert values == pytest.approx([v for p in pieces for v in p["contrasts"][i]["per_prompt"][k]])
    # a random draw: the same direction or plane in every fold (about that fold's training mean; a
    # size-matched draw sized by, an offset plane turned about a point as far as, that fold's edit)
    assert {"offset rotate plane/trig 90", "sign matched rotate plane/trig ±90"} <= set(entry["random"])
    for family, draws in entry["random"].items():
        for k in draws:  # length, P(end), KL, ... (a sign family: its outcomes' contrasts)
            want = np.mean([p["random"][family][k] for p in pieces], axis=0)  # 4 prompts each
            assert draws[k] == pytest.approx(want.tolist(), rel=1e-6, abs=1e-9)


def test_the_next_header_is_read_from_the_chat_template(steerer):
    s, loaded = steerer
    tok, header = loaded.tokenizer, s.header
    assert tok.decode(header.tail) == "<|im_end|>\n<|im_start|>"
    assert header.user != header.assistant
    assert "<|im_end|>\n<|im_start|>user".startswith(tok.decode([*header.tail, header.user]))
    assert "<|im_end|>\n<|im_start|>assistant".startswith(tok.decode([*header.tail, header.assistant]))
    tok = loaded.tokenizer.__class__.from_pretrained(loaded.tokenizer.name_or_path)
    tok.chat_template = "{% for m in messages %}{{ m['content'] + '<|im_end|>' }}{% endfor %}"
    with pytest.raises(TurnphaseError, match="next_user measure cannot be read"):
        next_header(tok)  # no role named after a turn


def test_next_user_reads_the_role_after_the_turn_with_the_edit_on_the_turn_only(steerer):
    """Against a plain forward of each whole prompt, turn and header, one at a time (no cache, no
    padding), with a PyTorch hook applying the edit to the positions it names."""
    s, loaded = steerer
    gen = s.generate(None, seed=1)
    gen.tokens[0] = gen.tokens[0] + [gen.tokens[0][-1]] * 3  # longer than the others: padding differs
    edit = Add(unit(np.random.default_rng(1).standard_normal(loaded.d_model)), 4.0)  # the tiny model
    block = decoder_blocks(loaded.model)[LAYER]  # barely tells user from assistant: a strong edit
    header = s.header

    def by_hand(edited) -> np.ndarray:
        """log P(user) - log P(assistant) with the edit on positions edited(prompt, turn)."""
        out = []
        for prompt, turn in zip(s.prompts, gen.tokens, strict=True):
            where = edited(prompt, turn)

            def hook(module, args, output, where=where):
                h = (output[0] if isinstance(output, tuple) else output).clone()
                h[:, where] = edit(h[:, where])
                return (h, *output[1:]) if isinstance(output, tuple) else h

            handle = block.register_forward_hook(hook) if where is not None else None
            try:
                with torch.inference_mode():
                    logits = loaded.model(torch.tensor([prompt + turn + header.tail])).logits
            finally:
                if handle is not None:
                    handle.remove()
            logp = torch.log_softmax(logits[0, -1].float(), -1)
            out.append(float(logp[header.user] - logp[header.assistant]))
        return np.array(out)

    plain = by_hand(lambda prompt, turn: None)
    np.testing.assert_allclose(s.next_user(None, gen), plain, atol=1e-5)
    on_turn = by_hand(lambda prompt, turn: slice(len(prompt) - 1, len(prompt) + len(turn)))
    everywhere = by_hand(lambda prompt, turn: slice(len(prompt) - 1, None))
    steered = s.next_user(edit, gen)
    np.testing.assert_allclose(steered, on_turn, atol=1e-5)
    assert np.abs(steered - plain).min() > 1e-4  # the edit moved it (10x the tolerance above)
    assert np.abs(steered - everywhere).min() > 1e-4  # and the header was left alone
    s.next_user_edit = "all"  # --next-user-edit all: on the end of turn and header too
    try:
        np.testing.assert_allclose(s.next_user(edit, gen), everywhere, atol=1e-5)
        np.testing.assert_allclose(s.next_user(None, gen), plain, atol=1e-5)
    finally:
        s.next_user_edit = "turn"


def test_next_user_read_off_the_generation_cache_equals_the_second_forward(steerer):
    """generate(next_user=True) reads next_user from the keys and values its generation left: the
    same turns, and readings equal to Steerer.next_user's on them, for turns that ended (pads fed
    after them in the cache), hit the budget (their last token never fed) or are empty, in batches
    of different widths. The tiny model barely reads its context, so a column kept or masked wrongly
    moves its reading by less than the tolerance: the SmolLM2 test is the sharp one for that."""
    s, loaded = steerer
    small = Steerer(
        loaded.model, loaded.tokenizer, s.prompts, LAYER, max_new_tokens=4, temperature=1.0, top_p=1.0
    )
    small.batch_size = 2  # two batches: the last a single row
    edit = Add(unit(np.random.default_rng(1).standard_normal(loaded.d_model)), 4.0)
    lengths, ended, readings = set(), set(), {}
    for small.next_user_edit in ("turn", "all"):
        for e in (None, edit):
            for seed in range(4):
                gen = small.generate(e, seed, next_user=True)
                alone = small.generate(e, seed)
                assert gen.tokens == alone.tokens and alone.next_user is None
                np.testing.assert_array_equal(gen.p_end, alone.p_end)
                np.testing.assert_allclose(gen.next_user, small.next_user(e, gen), atol=1e-5)
                lengths |= set(gen.length.tolist())
                ended |= set(gen.ended.tolist())
                readings[small.next_user_edit, e is None, seed] = gen.next_user
    assert ended == {True, False} and {0, 4} < lengths  # every kind of row was read
    for seed in range(4):  # the edit moved the reading; on the header too, it moved it differently
        assert np.abs(readings["turn", False, seed] - readings["turn", True, seed]).min() > 1e-4
        assert np.abs(readings["all", False, seed] - readings["turn", False, seed]).min() > 1e-4
        np.testing.assert_array_equal(readings["all", True, seed], readings["turn", True, seed])


def test_a_steerer_refuses_groups_that_do_not_split_its_prompts_in_order(steerer):
    s, loaded = steerer
    for groups in ([[1, 0, 2]], [[0], [2], [1]], [[0, 1]], [[0, 1, 2], []]):
        with pytest.raises(ValueError, match="consecutive, non-empty runs"):
            Steerer(
                loaded.model,
                loaded.tokenizer,
                s.prompts,
                LAYER,
                max_new_tokens=2,
                temperature=1.0,
                top_p=1.0,
                groups=groups,
            )
    with pytest.raises(ValueError, match="2 edits for 1 groups"):
        s.generate([None, None], seed=0)


def test_the_python_api_returns_the_result_without_a_folder(tiny_analysed):
    data, report = tiny_analysed
    config = SteerConfig(str(data), str(report), [3], settings=["start"], max_prompts=2, max_new_tokens=4)
    config.add, config.rotate, config.n_random, config.kl_tokens = [0.2], [45.0], 2, 2
    result = steer(config, verbose=False)
    assert list(result["layers"]["3"]) == ["start"] and "figures" not in result


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "2"], "--layers: layer(s) [2] not in the report, which holds [1, 3]"),
        (["--layers", "1", "--fold", "9"], "fold 9 holds out no conversations"),
        (
            ["--layers", "1", "--fold", "first"],
            "--fold: takes a fold number (0 or more) or 'all', not 'first'",
        ),
        (["--layers", "1", "--fold", "-1"], "--fold: takes a fold number (0 or more) or 'all', not '-1'"),
        (["--layers", "1", "--add", "0.1,big"], "--add: takes numbers"),
        (["--layers", "1", "--rotate", "-90"], "--rotate: give positive numbers"),
        (["--layers", "x"], "--layers: 'x': use auto, all"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_analysed, tmp_path, capsys, args, message):
    data, report = tiny_analysed
    out = tmp_path / "steer"
    assert main(["steer", str(data), "--report", str(report), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".steer*"))


def test_a_report_from_another_dataset_or_model_is_refused(tiny_analysed, tmp_path, capsys):
    data, report = tiny_analysed
    other = tmp_path / "other"
    shutil.copytree(data, other)
    prov = json.loads((other / "turnphase.json").read_text())
    prov["seed"] = 12345
    (other / "turnphase.json").write_text(json.dumps(prov))
    out = tmp_path / "steer"
    assert main(["steer", str(other), "--report", str(report), "--layers", "1", "--out", str(out)]) == 2
    assert "made from another dataset" in capsys.readouterr().err
    different = save_tiny_chat_model(tmp_path / "different", seed=1)
    args = [
        "steer",
        str(data),
        "--report",
        str(report),
        "--layers",
        "1",
        "--out",
        str(out),
        "--model",
        str(different),
    ]
    assert main(args) == 2
    assert "pass --force" in capsys.readouterr().err
    assert not out.exists()


def test_the_next_user_finding_names_the_conditions_beyond_random_and_their_own_controls():
    from turnphase.steering.summary import next_user_line

    far, near = {"z": -3.0, "p": 0.048}, {"z": -1.0, "p": 0.4}
    moved = {
        "name": "rotate plane/fourier -135",
        "effect": {"next_user": {"value": -1.5, "ci95": [-2.0, -1.0], **far}},
    }
    still = {
        "name": "rotate plane/trig +90",
        "effect": {"next_user": {"value": -0.1, "ci95": [-0.5, 0.3], **near}},
    }
    line = next_user_line([moved, still])
    assert "rotate plane/fourier -135 -1.50 nats (z -3.0, p 0.05)" in line and "trig" not in line
    moved["effect"]["next_user"]["vs_matched"] = far
    assert "vs size-matched z -3.0" in next_user_line([moved])
    moved["effect"]["next_user"]["vs_matched"] = near  # no further than an edit of its size
    assert next_user_line([moved, still]).startswith("No condition moves the role")


def test_a_finding_with_size_matched_controls_must_pass_them_too():
    from turnphase.steering.summary import beyond_random

    far, near = {"z": -3.0, "p": 0.048}, {"z": -1.0, "p": 0.4}
    effect = {"value": -4.0, "ci95": [-6.0, -1.0], **far}
    assert beyond_random(effect)
    assert beyond_random({**effect, "vs_matched": far})
    assert not beyond_random({**effect, "vs_matched": near})  # as far as any edit of its size
    assert not beyond_random({**effect, "ci95": [-6.0, 1.0]})  # the interval reaches 0
    assert not beyond_random({**effect, **near, "vs_matched": far})
