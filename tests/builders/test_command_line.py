"""One CLI grammar and one Python API: help for every flag with its default, --version, the same
--layers grammar in build, analyze and steer, errors that name flags on the command line and fields
from Python, -q/-v, and the model checks that fail before anything is generated."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
from tiny_model import TINY_BUILD_ARGS as TINY_ARGS

from turnphase.builders import layers
from turnphase.builders.cli import COMMANDS, main, parser_for
from turnphase.builders.config import BuildConfig
from turnphase.builders.errors import ConfigError


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_has_help_and_shows_its_default(command):
    _, subparsers = parser_for([command])
    p = subparsers[command]
    text = p.format_help()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        off = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        off = off or action.default == []
        if action.option_strings and not off:
            shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            assert f"(default: {shown})" in " ".join(text.split()), (command, action.dest)
    assert "-q, --quiet" in text and "-v, --verbose" in text


def test_version_and_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"turnphase {version('turnphase')}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "turnphase analyze data/smollm2" in out
    assert all(cmd in out for cmd in COMMANDS)


def test_build_defaults_have_one_home():
    """The CLI's defaults and generation's are BuildConfig's."""
    from turnphase.builders.conversations import GenerationSettings

    _, subparsers = parser_for(["build"])
    for action in subparsers["build"]._actions:
        if action.dest in BuildConfig.__dataclass_fields__ and action.dest != "out":
            assert action.default == getattr(BuildConfig, action.dest), action.dest
    settings = GenerationSettings.of(BuildConfig("x", rounds=3, top_p=0.5), "study")
    assert (settings.rounds, settings.top_p, settings.strategy) == (3, 0.5, "study")
    for name, f in GenerationSettings.__dataclass_fields__.items():
        if name != "strategy":
            assert f.default == getattr(BuildConfig, name), name


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("auto", 30, list(range(13, 25))),
        ("all", 4, [0, 1, 2, 3]),
        ("13-15", 30, [13, 14, 15]),
        ("13,17,24", 30, [13, 17, 24]),
        ("2,5-7", 30, [2, 5, 6, 7]),
        ([3, 1, 3], 30, [1, 3]),
    ],
)
def test_one_layer_grammar(spec, n, expected):
    assert layers.resolve_layers(spec, n) == expected


@pytest.mark.parametrize(
    "spec, words",
    [
        ("5-3", "5-3 is an empty range; write 3-5"),
        ("x", "use auto, all"),
        ("-1", "numbered from 0"),
        ("40", "out of range"),
    ],
)
def test_bad_layers_name_the_field(spec, words):
    with pytest.raises(ConfigError) as e:
        layers.resolve_layers(spec, 30)
    assert e.value.field == "layers" and words in e.value.message


def test_dataset_layer_selection():
    assert layers.select_layers(None, [3, 1]) == [1, 3]
    assert layers.select_layers("all", [3, 1]) == layers.select_layers("auto", [1, 3]) == [1, 3]
    assert layers.select_layers("1-2", [1, 2, 3]) == [1, 2]
    with pytest.raises(ConfigError, match=r"\[4\] not in the dataset"):
        layers.select_layers("3-4", [1, 3])


def test_errors_name_fields_in_python_and_flags_on_the_command_line(tmp_path, capsys):
    with pytest.raises(ConfigError) as e:
        BuildConfig(tmp_path, n_conversations=0)
    assert e.value.field == "n_conversations" and "--" not in str(e.value)
    assert main(["build", "--out", str(tmp_path / "o"), "-n", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "turnphase build: error: --n-conversations: must be at least 1, got 0"
    assert main(["build", "--out", str(tmp_path / "o"), "--top-p", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith("--top-p: must be in (0, 1]")
    assert not (tmp_path / "o").exists()


def test_the_same_layer_grammar_in_analyze_and_steer(tmp_path, capsys):
    from synthetic import write_synthetic_dataset

    from turnphase.steering.config import SteerConfig

    data = write_synthetic_dataset(tmp_path / "d", layers=(1, 2))
    assert (
        main(["analyze", str(data), "--out", str(tmp_path / "r"), "--layers", "2-2", "--bootstrap", "20"])
        == 0
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(report["layers"]) == ["2"]
    assert main(["analyze", str(data), "--out", str(tmp_path / "r2"), "--layers", "5-3"]) == 2
    assert "--layers: 5-3 is an empty range" in capsys.readouterr().err
    assert SteerConfig("d", "r", layers="17-19").layers == [17, 18, 19]
    with pytest.raises(ConfigError) as e:
        SteerConfig("d", "r", layers="19", cut=2)
    assert e.value.field == "cut"


def test_quiet_and_default_output(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["build", "-q", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    quiet = capsys.readouterr()
    assert quiet.out == "" and "generation" not in quiet.err and "activations" not in quiet.err
    assert main(["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    assert "already holds this build" in capsys.readouterr().out
    # the analysis's bars follow -q too (its passes over each layer; with --workers, over shards)
    few = ["--layers", "1", "--split", "token"]  # the tiny build keeps too few conversations for folds
    assert main(["analyze", "-q", str(out), "--out", str(tmp_path / "r"), *few]) == 0
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    assert main(["analyze", str(out), "--out", str(tmp_path / "r"), *few, "--overwrite"]) == 0
    assert "layer 1 pass 1/2" in capsys.readouterr().err  # shown without it
    from turnphase.builders.build import summary
    from turnphase.builders.provenance import read_provenance

    text = summary(out, read_provenance(out))
    time_line = next(line for line in text.splitlines() if line.startswith("time: "))
    assert all(stage in time_line for stage in ("model", "generation", "activations"))


def test_importing_turnphase_is_cheap_and_exports_the_api():
    code = (
        "import sys, turnphase; assert 'torch' not in sys.modules, 'torch'; "
        "assert 'datasets' not in sys.modules, 'datasets'; "
        "from turnphase import build, analyze, steer, validate, BuildConfig, AnalysisConfig, SteerConfig; "
        "print(turnphase.__version__, sorted(n for n in dir(turnphase) if not n.startswith('_')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.startswith(version("turnphase"))
    assert "'analyze', 'build'" in done.stdout


def test_generation_progress_counts_every_generated_token(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turnphase.builders import conversations as conv

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    settings = conv.GenerationSettings(rounds=2, user_max_new_tokens=24, assistant_max_new_tokens=24)
    chat = conv.BatchedChat(model, tokenizer, settings)
    counted = []
    real = conv.progress

    shown = []  # every postfix the generation bar showed

    def spy(**kwargs):
        bar = real(**kwargs)
        counted.append(bar)
        show = bar.set_postfix_str
        bar.set_postfix_str = lambda text, **kw: (shown.append(text), show(text, **kw))
        return bar

    conv.progress = spy
    try:
        convs = conv.new_conversations(3, conv.load_prompts("reply"))
        conv.generate_conversations(convs, chat, conv.load_prompts("reply"), settings)
    finally:
        conv.progress = real
    assert chat.new_tokens > 0 and counted[0].n == chat.new_tokens
    assert counted[0].unit == "tok" and counted[0].total is None  # no made-up ETA
    # where the build is: round, turn, attempt, live conversations, rejections and drops so far
    pattern = (
        r"round (\d)/2 (user|assistant) attempt (\d+), (\d+) live, (\d+) attempts rejected, (\d+) dropped"
    )
    seen = [re.fullmatch(pattern, text) for text in shown]
    assert all(seen), shown
    assert shown[0] == "round 1/2 user attempt 1, 3 live, 0 attempts rejected, 0 dropped"
    turns = [(int(m[1]), m[2]) for m in seen]
    assert sorted(set(turns)) == [(1, "assistant"), (1, "user"), (2, "assistant"), (2, "user")]
    rejected = [int(m[5]) for m in seen]
    dropped = [int(m[6]) for m in seen]
    assert rejected == sorted(rejected) and dropped == sorted(dropped)  # counts so far
    assert rejected[-1] <= sum(sum(c.rejected.values()) for c in convs)
    assert all(int(m[4]) == 3 - int(m[6]) for m in seen)  # live = the three less the drops


def test_a_chat_template_that_cannot_label_phases_fails_before_the_weights_load(tmp_path, capsys):
    from tiny_model import CHATML, save_tiny_chat_model

    # renders the messages last first, so a conversation's start is not the start of its text
    reverse = CHATML.replace("in messages %}", "in messages|reverse %}")
    assert reverse != CHATML
    model = save_tiny_chat_model(tmp_path / "model", chat_template=reverse)
    for weights in model.glob("*.safetensors"):
        weights.unlink()  # the check must come before the weights are needed
    assert main(["build", "--out", str(tmp_path / "o"), "--model", str(model), *TINY_ARGS]) == 2
    assert "its chat template cannot be used to label phases" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_model_without_findable_decoder_blocks_fails_before_generation(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from turnphase.builders import activations, conversations

    def nothing_found(model):
        raise ValueError("cannot find the decoder blocks of this model (tried model.layers, transformer.h)")

    generated = []
    monkeypatch.setattr(activations, "decoder_blocks", nothing_found)
    monkeypatch.setattr(conversations, "generate_conversations", lambda *a, **k: generated.append(1))
    assert main(["build", "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir), *TINY_ARGS]) == 2
    assert "cannot find the decoder blocks" in capsys.readouterr().err and not generated
    assert not (tmp_path / "o").exists()
