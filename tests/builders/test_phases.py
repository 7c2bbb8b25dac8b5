import numpy as np
import pytest
from transformers import AutoTokenizer

from turnphase.builders.phases import label_tokens, ramp

MESSAGES = [
    {"role": "system", "content": "You are concise."},
    {"role": "user", "content": "Why is the sky blue?"},
    {"role": "assistant", "content": "Air scatters short wavelengths of light more."},
    {"role": "user", "content": "Is that really true?"},
    {"role": "assistant", "content": "Yes."},
]


@pytest.fixture(scope="module")
def table(tiny_model_dir):
    return label_tokens(5, AutoTokenizer.from_pretrained(tiny_model_dir), MESSAGES).to_pydict()


def test_every_token_is_labelled_once_in_order(table, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(tok.apply_chat_template(MESSAGES, tokenize=False), add_special_tokens=False)["input_ids"]
    assert table["token_id"] == ids
    assert table["position"] == list(range(len(ids)))
    assert set(table["conversation_id"]) == {5}
    assert "".join(table["token"]) == tok.apply_chat_template(MESSAGES, tokenize=False)


def test_phases_follow_the_study(table):
    role, rnd, phase = np.array(table["role"]), table["round"], table["phase"]
    assert all(r is None for r, ro in zip(rnd, role, strict=True) if ro == "system")
    assert all(p is None for p, ro in zip(phase, role, strict=True) if ro == "system")
    for r in (0, 1):
        for name, start in (("user", 0.0), ("assistant", 0.5)):
            idx = [i for i in range(len(role)) if rnd[i] == r and role[i] == name]
            assert idx == list(range(idx[0], idx[-1] + 1))  # a turn is contiguous
            n = len(idx)
            np.testing.assert_allclose(
                [phase[i] for i in idx], start + 0.5 * np.arange(n) / (n - 1), rtol=1e-6
            )
            assert [table["index_in_turn"][i] for i in idx] == list(range(n))
            assert {table["turn_length"][i] for i in idx} == {n}
        in_round = [i for i in range(len(role)) if rnd[i] == r]
        np.testing.assert_allclose(
            [table["phase_round"][i] for i in in_round], ramp(len(in_round)), rtol=1e-6
        )


def test_template_markup_is_flagged(table):
    marked = {t for t, flag in zip(table["token"], table["is_template"], strict=True) if flag}
    content = "".join(t for t, flag in zip(table["token"], table["is_template"], strict=True) if not flag)
    assert "<|im_start|>" in marked and "<|im_end|>" in marked
    for msg in MESSAGES:
        assert msg["content"] in content
    assert "<|im_" not in content


def test_ramp_handles_one_token_turns():
    assert ramp(1).tolist() == [0.0]
    assert ramp(3).tolist() == [0.0, 0.5, 1.0]
