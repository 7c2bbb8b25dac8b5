"""Steering the real default model (SmolLM2-135M-Instruct) end to end, small: a tiny build, its
analysis, a few prompts and two strengths."""

import json

import numpy as np
import pytest

from turnphase.builders.cli import main

pytestmark = pytest.mark.slow
LAYER = "19"
TEA = [  # the start of each chat below
    {"role": "user", "content": "What makes a good cup of tea?"},
    {"role": "assistant", "content": "Fresh water, the right temperature and a few minutes of steeping."},
]


@pytest.fixture(scope="module")
def smollm2():
    from turnphase.builders.model import load_model

    return load_model(None, layers="all")


def test_steering_smollm2_end_to_end(tmp_path):
    data, report, out = tmp_path / "data", tmp_path / "report", tmp_path / "steer"
    assert main(["build", "--out", str(data), "-n", "4", "--rounds", "1", "--layers", LAYER]) == 0
    assert main(["analyze", str(data), "--out", str(report), "--folds", "3", "--bootstrap", "20"]) == 0
    args = ["steer", str(data), "--report", str(report), "--layers", LAYER, "--out", str(out)]
    args += ["--settings", "mid", "--prompts", "3", "--max-new-tokens", "8", "--add", "0.05,0.2"]
    args += ["--rotate", "90", "--random", "2", "--kl-tokens", "4", "--bootstrap", "50"]
    assert main(args) == 0
    result = json.loads((out / "steer.json").read_text())
    assert result["model"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    entry = result["layers"][LAYER]["mid"]
    kl = {c["name"]: c["mean"]["kl"] for c in entry["conditions"]}
    # a push of 0.2 |h| along the probe moves the next-token distribution more than one of 0.05 |h|
    assert kl["add probe/linear +0.2"] > kl["add probe/linear +0.05"] > 0
    for c in entry["conditions"]:
        assert all(np.isfinite(c["mean"][m]) for m in c["mean"])
    # after an assistant's turn the model names the user next: log P(user) - log P(assistant) > 0
    assert all(v > 0 for v in entry["unsteered"]["per_prompt"]["next_user"])
    assert (out / f"layer{LAYER}_mid_dose_response.png").stat().st_size > 0


def test_the_default_model_names_the_other_role_after_each_turn(smollm2):
    """next_user reads whose turn it was: after a user's message the model names the assistant next
    (negative), after an assistant's the user (positive), unsteered."""
    from turnphase.steering.generate import Generation, Steerer

    loaded, tok = smollm2, smollm2.tokenizer
    chat = [
        *TEA,
        {"role": "user", "content": "How long is a few minutes?"},
        {"role": "assistant", "content": "Three to five for black tea, two to three for green."},
    ]
    prompts, roles = [], []
    for i, m in enumerate(chat):  # each message ends where the header of the next would begin
        text = tok.apply_chat_template(chat[: i + 1], tokenize=False)
        text = text[: text.rindex(m["content"]) + len(m["content"])]
        prompts.append(tok(text, add_special_tokens=False)["input_ids"])
        roles.append(m["role"])
    s = Steerer(loaded.model, tok, prompts, 19, max_new_tokens=1, temperature=1.0, top_p=1.0)
    assert tok.decode(s.header.tail) == "<|im_end|>\n<|im_start|>"
    assert tok.decode([s.header.user]) == "user" and tok.decode([s.header.assistant]) == "ass"  # ass|istant
    nothing = Generation([[] for _ in prompts], np.ones(len(prompts), bool), np.zeros((len(prompts), 1)))
    who = s.next_user(None, nothing)
    assert all((v < 0) == (role == "user") for v, role in zip(who, roles, strict=True)), (who, roles)


def test_next_user_read_off_the_generation_cache_equals_the_second_forward_on_smollm2(smollm2):
    """The reading generate(next_user=True) takes from its own cache equals Steerer.next_user's
    second forward, unsteered and steered (the edit on the turn, or on the header too), for turns
    that ended at once (empty), after a token, or ran to the budget. SmolLM2 reads its context (the
    tiny model barely does), so a column kept or masked wrongly moves the reading by nats: keeping
    the re-fed token's cached column too moved it by 1.5 nats when tried."""
    from turnphase.steering.edits import Add, unit
    from turnphase.steering.generate import Steerer

    loaded, tok = smollm2, smollm2.tokenizer
    chat = [
        *TEA,
        {"role": "user", "content": "Thanks, that is all I wanted to know!"},
        {"role": "assistant", "content": "You're welcome! Enjoy your tea."},
    ]
    text = tok.apply_chat_template(chat, tokenize=False)
    end = text.rindex(chat[-1]["content"]) + len(chat[-1]["content"])
    cuts = (end, end - 1, end - 5, end - 30)  # the last reply: whole, without its ".", cut shorter
    prompts = [tok(text[:cut], add_special_tokens=False)["input_ids"] for cut in cuts]
    s = Steerer(loaded.model, tok, prompts, 19, max_new_tokens=4, temperature=0.7, top_p=0.9, batch_size=3)
    edit = Add(unit(np.random.default_rng(0).standard_normal(loaded.d_model)), 0.5)
    kinds = set()
    for s.next_user_edit, e in (("turn", None), ("turn", edit), ("all", edit)):
        for seed in range(3):
            gen = s.generate(e, seed, next_user=True)
            np.testing.assert_allclose(gen.next_user, s.next_user(e, gen), atol=1e-4)
            kinds |= {
                "empty" if n == 0 else "ended" if done else "budget"
                for n, done in zip(gen.length, gen.ended, strict=True)
            }
    assert kinds == {"empty", "ended", "budget"}, kinds
