"""The dataset card works for a reader who has only `datasets`: its loading code runs and keeps the
stored dtype, its sizes are what `datasets` computes, and it carries the model's licence."""

from __future__ import annotations

import json
import re
import shutil

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from turnphase.builders import card, model, schema
from turnphase.builders.provenance import read_provenance
from turnphase.builders.validate import validate


def _loading_section(text: str) -> str:
    return text.split("## Loading", 1)[1].split("\n## ", 1)[0]


def _loading_code(text: str) -> str:
    return re.search(r"```python\n(.*?)```", _loading_section(text), re.S).group(1)


def _stored(root, config: str) -> pa.Table:
    return pq.read_table(sorted((root / config).glob(schema.SHARD_GLOB)))


def test_loading_code_runs_and_keeps_the_stored_dtype(tiny_build):
    prov = read_provenance(tiny_build)
    assert prov["dtype"] == "float16"
    d_model, n_tokens, first = prov["model"]["d_model"], prov["counts"]["tokens"], prov["layers"][0]
    text = card.render_card(prov, repo_id=str(tiny_build))
    namespace: dict = {}
    exec(_loading_code(text), namespace)  # the card's code, as a reader would paste it

    acts = namespace["acts"]
    assert acts.dtype == np.float16 and acts.shape == (n_tokens, d_model)
    stored = _stored(tiny_build, schema.layer_config(first))
    flat = stored.column(schema.ACTIVATION).combine_chunks().flatten().to_numpy()
    np.testing.assert_array_equal(acts, flat.reshape(n_tokens, d_model))
    labels = namespace["labels"]
    assert labels.schema.field("round").type == pa.int16()
    assert labels.column("round").null_count == prov["counts"]["tokens_by_role"]["system"] > 0
    block = namespace["block"]  # the last streamed batch
    assert block.dtype == np.float16 and block.shape[1] == d_model


def test_the_dtype_notes_say_what_datasets_returns(tiny_build):
    """Every `layer.with_format(...)` call the card names gives the dtype the card says it gives."""
    prov = read_provenance(tiny_build)
    text = card.render_card(prov, repo_id=str(tiny_build))
    layer = datasets.load_dataset(str(tiny_build), schema.layer_config(prov["layers"][0]), split="train")
    calls = set(re.findall(r"`(layer\.with_format\([^`]*\))`", _loading_section(text)))
    assert len(calls) == 4
    for call in calls:
        batch = eval(call, {"layer": layer, "np": np, "torch": torch})[:8]
        got = str(batch["activation"].dtype).removeprefix("torch.")
        assert got == (prov["dtype"] if "dtype=" in call else "float32"), call
        if "columns=" in call:
            assert list(batch) == ["activation"]
        else:  # the nullable round becomes float with NaN for the system tokens
            rnd = np.asarray(batch["round"])
            assert rnd.dtype == np.float32 and np.isnan(rnd).any()
    assert "float32 with NaN" in text
    stream = datasets.load_dataset(str(tiny_build), "tokens", split="train", streaming=True)
    with pytest.raises(TypeError):  # the card says a streamed dataset's with_format has no dtype
        stream.with_format("numpy", dtype=np.float16)


def test_card_sizes_are_what_datasets_computes(tiny_build):
    assert validate(tiny_build) == []  # the validator checks the card's sizes against the provenance
    prov = read_provenance(tiny_build)
    data = DatasetCard.load(tiny_build / schema.CARD_FILE).data
    infos = DatasetInfosDict.from_dataset_card_data(data)
    assert set(infos) == set(schema.config_names(prov["layers"]))
    for name, info in infos.items():
        ds = datasets.load_dataset(str(tiny_build), name, split="train")
        split = info.splits[schema.SPLIT]
        assert split.num_examples == ds.num_rows == prov["counts"]["rows"][name]
        assert (
            split.num_bytes == ds.info.splits[schema.SPLIT].num_bytes == prov["counts"]["arrow_bytes"][name]
        )
        assert info.dataset_size == split.num_bytes
        parquet = sum(f.stat().st_size for f in (tiny_build / name).glob(schema.SHARD_GLOB))
        assert info.download_size == parquet != split.num_bytes
        # datasets reads the same sizes back from the card before it loads anything
        builder = datasets.load_dataset_builder(str(tiny_build), name)
        assert builder.info.splits[schema.SPLIT].num_bytes == split.num_bytes


def test_card_says_how_to_get_turnphase_and_cites_the_study(tiny_build):
    prov = read_provenance(tiny_build)
    text = card.render_card(prov, "alice/turnphase-tiny", revision="v2")
    assert "pip install turnphase" not in text and "pypi.org/project/turnphase" not in text
    assert "Loading needs only `datasets`" in text and "pip install -e ." in text
    assert "@misc{helical_turn_structure_2026" in text
    assert "Helical Representations of Turn Structure in an {LLM}" in text
    assert "howpublished = {\\url{https://huggingface.co/datasets/alice/turnphase-tiny}, branch v2}" in text
    assert "huggingface.co/datasets/YOUR_NAME" not in card.render_card(prov)  # unpublished: no address
    for hook in ("blocks.{L}.hook_resid_post", "model.model.layers[L].output", "hidden_states[L+1]"):
        assert hook in text, hook


def test_limitations_give_this_builds_numbers(tiny_build):
    prov = read_provenance(tiny_build)
    prov["counts"]["dropped"] = [{"conversation_id": 9, "topic": "t", "reason": "round 0 user turn: r"}]
    prov["counts"]["rejected_attempts"] = {"no question": 5}
    limits = " ".join(_section(card.render_card(prov), "Limitations").split())
    kept = prov["counts"]["conversations"]
    assert f"1 of {kept + 1} conversations ({1 / (kept + 1):.0%}) were dropped" in limits
    assert f"{card.limitations(prov)['parameters']} parameters" in limits
    assert f"d_model {prov['model']['d_model']}" in limits and "a model of this size" in limits
    assert f"{prov['counts']['turns']} turns took {prov['counts']['retries']} retries" in limits
    assert "| no question | 5 |" in card.render_card(prov)


def test_the_card_names_the_generation_options_set_and_its_flawed_turns(tiny_build):
    """A build's generation options away from their defaults are a row of the card, as flags (the
    tiny build's smaller budgets and batch); a build at the defaults has no such row. Turns kept
    opening like an earlier one, and cut-off turns kept to their last sentence, are counted. The
    weights' dtype is a row, with the copy that sampled the conversations when there was one."""
    prov = read_provenance(tiny_build)

    def row(text):
        return next((line for line in text.splitlines() if line.startswith("| generation options")), None)

    tiny = row(card.render_card(prov))
    assert (
        "--assistant-max-new-tokens 24" in tiny and "--batch-size 3" in tiny and "--stop-runaway" not in tiny
    )
    prov["build_options"] |= {"stop_runaway": True, "retry_temperature": 1.0, "continuous": True}
    prov["counts"] |= {"same_opening_turns": 2, "trimmed_turns": 3}
    text = card.render_card(prov)
    assert all(flag in row(text) for flag in ("--retry-temperature 1.0", "--stop-runaway", "--continuous"))
    limits = " ".join(_section(text, "Limitations").split())
    assert "2 kept turn(s) open with the same ten words" in limits
    assert "3 kept turn(s) were cut off at the token limit and end at their last full sentence" in limits
    assert "| weights in memory | float32 (the forward the activations were read from) |" in text
    prov["build_options"] |= {"generation_dtype": "bfloat16"}
    assert (
        "float32 (the forward the activations were read from); the conversations were sampled with a "
        "bfloat16 copy |" in card.render_card(prov)
    )
    prov["build_options"] = {"seed": 3, "strategy": "reply", "seed_per_conversation": True}
    assert row(card.render_card(prov)) is None


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_model_licence_beside_the_data_licence(tiny_build):
    prov = read_provenance(tiny_build)
    assert prov["model"]["license"] == "unknown"  # the tiny model's folder has no README.md
    assert "could not find" in _section(card.render_card(prov), "Licence")
    prov["model"]["license"] = "llama3.2"
    text = card.render_card(prov)
    assert "| model licence | llama3.2 |" in text and f"| data licence | {prov['license']} |" in text
    assert "The model's licence is **llama3.2**" in text
    assert DatasetCard(text).data.license == prov["license"]


def test_the_data_licence_follows_the_models_unless_given(tiny_build, tiny_model_dir, tmp_path):
    from tiny_model import TINY_BUILD_ARGS

    from turnphase.builders.cli import main

    assert read_provenance(tiny_build)["license"] == "other"  # the tiny model states none
    licensed = tmp_path / "model"
    shutil.copytree(tiny_model_dir, licensed)
    (licensed / "README.md").write_text("---\nlicense: mit\n---\n")
    args = ["--model", str(licensed), *TINY_BUILD_ARGS, "-n", "2", "--rounds", "1"]
    assert main(["build", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["build", "--out", str(tmp_path / "b"), *args, "--license", "cc-by-4.0"]) == 0
    assert read_provenance(tmp_path / "a")["license"] == "mit"
    assert read_provenance(tmp_path / "b")["license"] == "cc-by-4.0"


def _gguf(path, **strings):
    import gguf

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])  # arrays and numbers to skip first
    w.add_array("tokenizer.ggml.scores", [0.5, 1.5, 2.5])
    w.add_uint32("llama.block_count", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    for key, value in strings.items():
        w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def test_model_licence_from_gguf_readme_or_hub(tmp_path, monkeypatch):
    assert model.model_license(str(_gguf(tmp_path / "a.gguf", **{"general.license": "mit"}))) == "mit"
    assert model.model_license(str(_gguf(tmp_path / "b.gguf", **{"general.name": "x"}))) is None
    (tmp_path / "c.gguf").write_bytes(b"not a gguf file")
    assert model.model_license(str(tmp_path / "c.gguf")) is None
    try:
        default = model.default_gguf()
    except Exception:
        default = None
    if default is not None:
        assert model.model_license(str(default)) == "apache-2.0"

    folder = tmp_path / "m"
    folder.mkdir()
    assert model.model_license(str(folder)) is None
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: tiny-licence\n---\n# m\n")
    assert model.model_license(str(folder)) == "tiny-licence"
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")
    assert model.model_license(str(folder)) == "mit"

    import huggingface_hub
    from huggingface_hub import constants

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    assert model.model_license("nobody/not-cached-model") is None
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert model.model_license("nobody/not-cached-model") is None


def test_an_older_build_still_renders_and_validates(tiny_build, tmp_path):
    """A folder built before the Arrow sizes and the model's licence were recorded."""
    old = tmp_path / "old"
    shutil.copytree(tiny_build, old)
    prov = read_provenance(old)
    del prov["counts"]["arrow_bytes"], prov["counts"]["rejected_attempts"], prov["model"]["license"]
    (old / schema.PROVENANCE_FILE).write_text(json.dumps(prov))
    text = card.render_card(prov)
    (old / schema.CARD_FILE).write_text(text)
    assert validate(old) == []
    meta = DatasetCard(text).data.to_dict()
    assert all("splits" not in info and "download_size" in info for info in meta["dataset_info"])
    assert "| model licence | not recorded |" in text and "did not record" in text
    assert "were not recorded" in text
    assert datasets.load_dataset(str(old), "tokens", split="train").num_rows == prov["counts"]["tokens"]


def test_validate_checks_the_cards_sizes(tiny_build, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_build, ds)
    prov = read_provenance(ds)
    tokens = prov["counts"]["arrow_bytes"]["tokens"]
    text = (ds / schema.CARD_FILE).read_text()
    assert text.count(f"num_bytes: {tokens}\n") == 1
    (ds / schema.CARD_FILE).write_text(text.replace(f"num_bytes: {tokens}\n", f"num_bytes: {tokens + 1}\n"))
    assert validate(ds, deep=False) == [
        f"README.md: config tokens says num_bytes {tokens + 1}, Arrow size {tokens}"
    ]


def test_the_hook_names_the_card_gives(tiny_model_dir):
    """`layer_L` is `model.model.layers[L].output` under nnsight and `hidden_states[L+1]` except at
    the last block, where transformers applies the final norm (what the card's table says)."""
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turnphase.builders.activations import LayerReader

    hf_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    last = hf_model.config.num_hidden_layers - 1
    ids = list(range(5, 40))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stored = LayerReader(hf_model, tokenizer, [last - 1, last])(ids)  # what a build stores
    nn_model = TransformersModel(hf_model, tokenizer=tokenizer)
    with torch.inference_mode(), nn_model.trace(torch.tensor([ids])):
        out = nn_model.model.layers[last].output.save()
    np.testing.assert_array_equal(stored[last], out[0].numpy())
    with torch.no_grad():
        hidden = hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    np.testing.assert_array_equal(stored[last - 1], hidden[last][0].numpy())
    assert not np.allclose(stored[last], hidden[last + 1][0].numpy(), atol=1e-3)
    np.testing.assert_allclose(
        hf_model.model.norm(torch.tensor(stored[last])).detach(), hidden[-1][0], atol=1e-5
    )
