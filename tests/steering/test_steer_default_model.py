"""Steering the real default model (SmolLM2-135M-Instruct) end to end, small: a tiny build, its
analysis, a few prompts and two strengths."""

import json

import numpy as np
import pytest

from turnphase.builders.cli import main

pytestmark = pytest.mark.slow
LAYER = "19"


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


def test_the_default_models_next_header_names_user_or_assistant():
    from turnphase.builders.model import load_model
    from turnphase.steering.prompts import next_header

    tok = load_model(None, layers="all").tokenizer
    header = next_header(tok)
    assert tok.decode(header.tail) == "<|im_end|>\n<|im_start|>"
    assert tok.decode([header.user]) == "user" and tok.decode([header.assistant]) == "ass"  # ass|istant
