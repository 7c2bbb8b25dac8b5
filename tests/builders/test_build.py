import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_model import TINY_BUILD_ARGS as TINY_ARGS

from turnphase.builders import activations, schema
from turnphase.builders.cli import main
from turnphase.builders.validate import validate


def read_config(root, config):
    return pq.read_table(sorted((root / config).glob(schema.SHARD_GLOB)))


def test_the_build_says_where_generation_time_went(tiny_build):
    """Provenance times generation's stages (`conversations.GENERATION_STAGES`) and counts its
    decoding steps; the summary gives a step's time."""
    from turnphase.builders.build import summary
    from turnphase.builders.conversations import GENERATION_STAGES

    prov = json.loads((tiny_build / schema.PROVENANCE_FILE).read_text())
    timing = prov["generation"]["timing"]
    assert set(timing["stages"]) == set(GENERATION_STAGES)
    assert all(seconds > 0 for seconds in timing["stages"].values())  # checkpoints too: 3 of 4 steps
    assert sum(timing["stages"].values()) <= timing["seconds"]
    assert timing["decoding_steps"] >= timing["new_tokens"] / 3  # 3 rows a batch at most
    ms = 1000 * timing["stages"]["decoding"] / timing["decoding_steps"]
    assert f"generation: {timing['decoding_steps']} decoding steps, {ms:.1f} ms each" in summary(
        tiny_build, prov
    )


def test_build_is_valid_and_loads_with_datasets(tiny_build):
    assert validate(tiny_build) == []
    prov = json.loads((tiny_build / schema.PROVENANCE_FILE).read_text())
    assert prov["layers"] == [1, 3]
    assert prov["model"]["d_model"] == 32 and prov["model"]["weights_sha256"]
    assert prov["generation"]["strategy"] == "reply"  # auto picks reply for a small model
    assert not (tiny_build / ".turnphase_build").exists()
    for config in ["conversations", "tokens", "layer_1", "layer_3"]:
        ds = datasets.load_dataset(str(tiny_build), config, split="train")
        assert ds.num_rows == prov["counts"]["rows"][config]
        streamed = datasets.load_dataset(str(tiny_build), config, split="train", streaming=True)
        assert sum(1 for _ in streamed) == ds.num_rows
    acts = datasets.load_dataset(str(tiny_build), "layer_3", split="train").with_format("numpy")[:][
        "activation"
    ]
    assert acts.shape == (prov["counts"]["tokens"], 32)


def test_conversations_follow_the_turn_structure(tiny_build):
    prov = json.loads((tiny_build / schema.PROVENANCE_FILE).read_text())
    rows = read_config(tiny_build, "conversations").to_pylist()
    assert len(rows) + len(prov["counts"]["dropped"]) == 4
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * 2
        max_attempts = prov["generation"]["settings"]["max_attempts"]
        assert len(row["attempts"]) == 4 and all(1 <= a <= max_attempts for a in row["attempts"])
        assert "act as the User" not in json.dumps(row["messages"])  # temporary instructions are gone


def test_stored_activations_equal_plain_forward_hidden_states(tiny_build, tiny_model_dir):
    _assert_activations_equal_a_plain_forward(tiny_build, tiny_model_dir)


def _assert_activations_equal_a_plain_forward(tiny_build, tiny_model_dir):
    """The first conversation's stored layers are a float32 forward's hidden states."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokens = read_config(tiny_build, "tokens")
    layers = {L: read_config(tiny_build, f"layer_{L}") for L in (1, 3)}
    conv = tokens.column("conversation_id").to_numpy()
    first = conv[0]
    ids = torch.from_numpy(tokens.column("token_id").to_numpy()[conv == first].astype(np.int64))[None]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    for L, table in layers.items():
        if L == model.config.num_hidden_layers - 1:
            continue  # transformers applies the final norm to hidden_states[-1]; we store the block output
        stored = np.stack(table.column("activation").to_numpy(zero_copy_only=False)[conv == first]).astype(
            np.float32
        )
        np.testing.assert_allclose(stored, hidden[L + 1][0].numpy(), rtol=1e-3, atol=1e-3)


def test_layer_reader_matches_hidden_states(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reader = activations.LayerReader(model, AutoTokenizer.from_pretrained(tiny_model_dir), [0, 2])
    ids = list(range(5, 60))
    got = reader(ids)
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for L in (0, 2):
        np.testing.assert_array_equal(got[L], hidden[L + 1][0].numpy())


def test_batched_reading_gives_each_sequence_its_own_activations(tiny_model_dir):
    """Right padding, masked: each of three sequences of other lengths gets what it gets alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reader = activations.LayerReader(model, AutoTokenizer.from_pretrained(tiny_model_dir), [0, 2])
    sequences = [list(range(5, 60)), list(range(7, 20)), list(range(30, 70))]
    batched = reader.batch(sequences)
    for ids, got in zip(sequences, batched, strict=True):
        alone = reader(ids)
        for L in (0, 2):
            assert got[L].shape == alone[L].shape == (len(ids), model.config.hidden_size)
            np.testing.assert_allclose(got[L], alone[L], rtol=1e-5, atol=1e-6)


def test_layer_reader_casts_to_the_stored_dtype_as_numpy_would(tiny_model_dir):
    """dtype="float16" (what a build asks for) casts on the model's device, alone and batched, to
    exactly numpy's float16 of the float32 reading: a build's rows do not depend on where it casts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    wide = activations.LayerReader(model, tokenizer, [0, 2])
    half = activations.LayerReader(model, tokenizer, [0, 2], "float16")
    sequences = [list(range(5, 60)), list(range(7, 20))]
    for got, want in [
        (half(sequences[0]), wide(sequences[0])),
        *zip(half.batch(sequences), wide.batch(sequences), strict=True),
    ]:
        for L in (0, 2):
            assert got[L].dtype == np.float16
            np.testing.assert_array_equal(got[L].view(np.uint16), want[L].astype(np.float16).view(np.uint16))


def test_a_pending_batch_hands_out_views_of_its_host_copies():
    """On CUDA a batch's layers are copied to pinned memory; `result()` waits for the copies (the
    event) and hands out each row's part of that memory, not a second copy of it (here with
    stand-ins for the pinned tensors and the event)."""

    class Event:
        waited = False

        def synchronize(self):
            self.waited = True

    host = [torch.arange(30, dtype=torch.float16).reshape(2, 5, 3) + k for k in range(2)]
    done = Event()
    rows = activations.Pending([4, 9], host, [5, 2], done).result()
    assert done.waited
    for k, L in enumerate([4, 9]):
        assert np.shares_memory(rows[0][L], host[k].numpy()) and np.shares_memory(rows[1][L], host[k].numpy())
        np.testing.assert_array_equal(rows[1][L], host[k][1, :2].numpy())
        assert rows[0][L].shape == (5, 3)


@pytest.mark.parametrize("model_dtype", ["float32", "bfloat16"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipelined_cuda_reading_gets_what_the_cpu_reads(tiny_model_dir, model_dtype):
    """On CUDA, batches submitted before the last one's result is taken (their copies to pinned
    host memory overlap the next forward) each get what the float32 CPU model reads, to float16
    rounding (float32 weights) or bfloat16's (bfloat16 weights), and keep it while later batches
    reuse the device's memory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cpu_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cpu = activations.LayerReader(cpu_model, tokenizer, [0, 2], "float16")
    cuda_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, model_dtype))
    cuda = activations.LayerReader(cuda_model.eval().to("cuda"), tokenizer, [0, 2], "float16")
    gen = torch.Generator().manual_seed(0)
    batches = [
        [
            torch.randint(5, 60, (int(n),), generator=gen).tolist()
            for n in torch.randint(10, 90, (3,), generator=gen)
        ]
        for _ in range(4)
    ]
    results, pending = [], None
    for batch in batches:
        submitted = cuda.submit(batch)
        if pending is not None:
            results.append(pending.result())
        pending = submitted
    results.append(pending.result())
    tol = 2e-3 if model_dtype == "float32" else 5e-2
    for batch, got in zip(batches, results, strict=True):
        for ids, rows in zip(batch, got, strict=True):
            want = cpu(ids)
            for L in (0, 2):
                assert rows[L].dtype == np.float16 and rows[L].shape == want[L].shape
                np.testing.assert_allclose(
                    rows[L].astype(np.float32), want[L].astype(np.float32), rtol=tol, atol=tol
                )


@pytest.mark.parametrize("extract_batch_size", ["1", "3"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_build_is_valid(tiny_model_dir, tmp_path, extract_batch_size):
    """`--device cuda --model-dtype bfloat16`, one conversation per forward or three: a valid
    dataset whose tokens hold every conversation's rows."""
    out = tmp_path / "cuda"
    args = ["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS, "--device", "cuda"]
    args += ["--model-dtype", "bfloat16", "--extract-batch-size", extract_batch_size]
    assert main(args) == 0
    assert validate(out) == []
    tokens = read_config(out, "tokens")
    assert sorted(set(tokens.column("conversation_id").to_pylist())) == list(range(4))
    assert read_config(out, "layer_3").num_rows == tokens.num_rows


def test_extract_batch_size_and_model_dtype_build(tiny_build, tiny_model_dir, tmp_path):
    """--extract-batch-size 3 stores the same rows as one conversation per forward (activations to
    float16 rounding); --model-dtype bfloat16 builds a valid dataset and is part of the fingerprint."""
    out = tmp_path / "batched"
    assert (
        main(
            [
                "build",
                "--out",
                str(out),
                "--model",
                str(tiny_model_dir),
                *TINY_ARGS,
                "--extract-batch-size",
                "3",
            ]
        )
        == 0
    )
    for config in ("conversations", "tokens"):
        assert read_config(out, config).equals(read_config(tiny_build, config)), config
    for config in ("layer_1", "layer_3"):
        got, want = (
            np.stack(read_config(r, config).column("activation").to_numpy(zero_copy_only=False))
            for r in (out, tiny_build)
        )
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    options = json.loads((out / schema.PROVENANCE_FILE).read_text())["build_options"]
    assert options["extract_batch_size"] == 3
    assert (
        "extract_batch_size"
        not in json.loads((tiny_build / schema.PROVENANCE_FILE).read_text())["build_options"]
    )

    bf16 = tmp_path / "bf16"
    assert (
        main(
            [
                "build",
                "--out",
                str(bf16),
                "--model",
                str(tiny_model_dir),
                *TINY_ARGS,
                "--model-dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    assert validate(bf16) == []
    assert (
        json.loads((bf16 / schema.PROVENANCE_FILE).read_text())["build_options"]["model_dtype"] == "bfloat16"
    )


def test_compile_decoding_builds_the_same_data(tiny_build, tiny_model_dir, tmp_path):
    """--compile-decoding (a static cache, a compiled decoding step) writes the tiny build's
    conversations and tokens, is recorded with the generation settings, and leaves the build's
    identity alone: like the device, it says how the data are computed, not what they are."""
    out = tmp_path / "compiled"
    args = ["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS, "--compile-decoding"]
    assert main(args) == 0
    assert validate(out) == []
    for config in ("conversations", "tokens"):
        assert read_config(out, config).equals(read_config(tiny_build, config)), config
    compiled, eager = (json.loads((r / schema.PROVENANCE_FILE).read_text()) for r in (out, tiny_build))
    assert compiled["generation"]["settings"]["compile_decoding"] is True
    assert eager["generation"]["settings"]["compile_decoding"] is False
    assert compiled["build_options"] == eager["build_options"]


def test_same_seed_same_data_and_rerun_is_a_no_op(tiny_build, tiny_model_dir, tmp_path, capsys):
    again = tmp_path / "again"
    assert main(["build", "--out", str(again), "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    for config in ["conversations", "tokens", "layer_1", "layer_3"]:
        assert read_config(again, config).equals(read_config(tiny_build, config)), config
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    assert main(["build", "--out", str(again), "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    assert "already holds this build, and it validates" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == before


@pytest.mark.parametrize("stage", ["generation", "extraction"])
def test_interrupted_build_resumes_to_the_same_data(stage, tiny_build, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    calls = {"n": 0}
    if stage == "generation":
        from turnphase.builders import conversations

        real = conversations.BatchedChat.__call__

        def flaky(self, *a, **kw):
            checkpoint = out / ".turnphase_build" / "generation.json"
            # interrupted in round 1, after its user step, so the resume starts from a cache
            if checkpoint.exists() and json.loads(checkpoint.read_text())["steps_done"] == 3:
                raise KeyboardInterrupt
            return real(self, *a, **kw)

        monkeypatch.setattr(conversations.BatchedChat, "__call__", flaky)
    else:
        real = activations.LayerReader.__call__

        def flaky(self, ids):
            calls["n"] += 1
            if calls["n"] == 3:  # one shard (2 conversations) is complete, the second is not
                raise KeyboardInterrupt
            return real(self, ids)

        monkeypatch.setattr(activations.LayerReader, "__call__", flaky)
    assert main(["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS]) == 130
    assert (out / ".turnphase_build").exists() and not (out / schema.CARD_FILE).exists()
    if stage == "extraction":
        assert len(list((out / "layer_1").glob(schema.SHARD_GLOB))) == 1
    else:  # the conversations' KV caches were checkpointed with them, and the resume reuses them
        assert len(list((out / ".turnphase_build").glob("kv_cache_*.pt"))) == 1
    monkeypatch.undo()
    assert main(["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    assert validate(out) == []
    for config in ["conversations", "tokens", "layer_1", "layer_3"]:
        assert read_config(out, config).equals(read_config(tiny_build, config)), config
    timing = [
        json.loads((d / schema.PROVENANCE_FILE).read_text())["generation"]["timing"]
        for d in (out, tiny_build)
    ]
    # the steps before the interruption were checkpointed and are added to the resumed run's
    assert timing[0]["decoding_steps"] == timing[1]["decoding_steps"]


def test_a_value_that_is_not_finite_in_the_stored_dtype_stops_the_build(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """One line naming the layer and shard, exit 2, no card: a float32 value beyond float16's range
    (70000) counts, as a NaN would; the shards already written stay for a resume."""
    real = activations.LayerReader.__call__
    calls = {"n": 0}

    def overflowing(self, ids):
        acts = real(self, ids)
        calls["n"] += 1
        if calls["n"] == 3:  # the second shard's first conversation
            acts[3] = acts[3].astype(np.float32)
            acts[3][5, 0] = 70000.0
        return acts

    monkeypatch.setattr(activations.LayerReader, "__call__", overflowing)
    out = tmp_path / "out"
    err = _fails_cleanly(
        ["build", "-q", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS], capsys, out
    )
    assert err.endswith("layer 3, shard 1: 1 activation rows are not finite in float16")
    assert not (out / schema.CARD_FILE).exists() and (out / ".turnphase_build").exists()
    assert len(list((out / "layer_3").glob(schema.SHARD_GLOB))) == 1


def _fails_cleanly(args, capsys, out):
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("turnphase build: error:")
    return err[0]


def test_bad_inputs_fail_with_one_line_and_write_nothing(tiny_model_dir, tiny_build, tmp_path, capsys):
    from tiny_model import save_tiny_chat_model

    out = tmp_path / "out"
    base = ["build", "--out", str(out)]
    assert "nope: no such file or folder" in _fails_cleanly(
        base + ["--model", str(tmp_path / "nope")], capsys, out
    )
    no_template = save_tiny_chat_model(tmp_path / "no-template", chat_template=None)
    assert "no chat template" in _fails_cleanly(base + ["--model", str(no_template)], capsys, out)
    assert "out of range" in _fails_cleanly(
        base + ["--model", str(tiny_model_dir), "--layers", "2-9"], capsys, out
    )
    assert "at least 1" in _fails_cleanly(base + ["--model", str(tiny_model_dir), "-n", "0"], capsys, out)
    assert "needs stop_runaway" in _fails_cleanly(
        base + ["--model", str(tiny_model_dir), "--runaway-rewinds", "2"], capsys, out
    )
    assert "needs --seed-per-conversation" in _fails_cleanly(
        base + ["--model", str(tiny_model_dir), "--continuous"], capsys, out
    )
    assert "needs --continuous" in _fails_cleanly(
        base + ["--model", str(tiny_model_dir), "--parallel-attempts", "2"], capsys, out
    )
    assert "needs --stop-runaway" in _fails_cleanly(
        base + ["--model", str(tiny_model_dir), "--trim-cut-off"], capsys, out
    )
    # every conversation generated and dropped (one attempt each; the tiny model cuts them off)
    assert "every conversation failed generation" in _fails_cleanly(
        base
        + [
            "--model",
            str(tiny_model_dir),
            *TINY_ARGS,
            "--max-attempts",
            "1",
            "--seed-per-conversation",
            "-q",
        ],
        capsys,
        out,
    )
    assert not out.exists()
    other = ["build", "--out", str(tiny_build), "--model", str(tiny_model_dir), *TINY_ARGS, "--rounds", "3"]
    assert "different build" in _fails_cleanly(other, capsys, tiny_build)
    assert validate(tiny_build) == []
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    assert "not empty" in _fails_cleanly(
        ["build", "--out", str(stray), "--model", str(tiny_model_dir)], capsys, stray
    )
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]


def _batch_args(size: int) -> list[str]:
    """TINY_ARGS with another --batch-size."""
    args = list(TINY_ARGS)
    args[args.index("--batch-size") + 1] = str(size)
    return args


def test_seed_per_conversation_makes_the_data_independent_of_the_batch_size(
    tiny_build, tiny_model_dir, tmp_path
):
    """With one generator per conversation, batches of 1 and of 3 give the same conversations; with
    one per batched call (the default; `tiny_build` is its batch of 3) they differ, so the option is
    what makes the difference."""
    built = {(False, 3): tiny_build}
    for per_conversation, size in ((True, 1), (True, 3), (False, 1)):
        out = tmp_path / f"{per_conversation}-{size}"
        flag = ["--seed-per-conversation"] if per_conversation else []
        assert (
            main(["build", "--out", str(out), "--model", str(tiny_model_dir), *_batch_args(size), *flag]) == 0
        )
        built[per_conversation, size] = out
    messages = {
        k: read_config(out, "conversations").column("messages").to_pylist() for k, out in built.items()
    }
    assert messages[True, 1] == messages[True, 3]
    assert messages[False, 1] != messages[False, 3]
    assert messages[True, 3] != messages[False, 3]
    options = {
        k: json.loads((out / schema.PROVENANCE_FILE).read_text())["build_options"] for k, out in built.items()
    }
    assert options[True, 3]["seed_per_conversation"] is True
    assert (
        "seed_per_conversation" not in options[False, 3]
    )  # builds made before the option keep their fingerprint
    assert "each conversation sampled from its own generator" in (built[True, 3] / "README.md").read_text()
    assert "each conversation sampled" not in (tiny_build / "README.md").read_text()


def _kill_at_checkpoint(monkeypatch, out, steps: int, advance) -> None:
    """Make `BatchedChat.advance` (else `advance`) stop the build into `out` as Ctrl-C would, once
    its generation checkpoint has `steps` turns settled."""
    from turnphase.builders import conversations

    def killed(self, rows, size):
        checkpoint = out / ".turnphase_build" / "generation.json"
        if checkpoint.exists() and json.loads(checkpoint.read_text())["steps_done"] >= steps:
            raise KeyboardInterrupt
        return advance(self, rows, size)

    monkeypatch.setattr(conversations.BatchedChat, "advance", killed)


def test_continuous_batching_gives_each_conversation_the_text_of_the_stepwise_build(
    tiny_model_dir, tmp_path, monkeypatch
):
    """With every conversation sampled from its own generators, continuous batching (each one
    moving on as soon as its turn is settled, batches of 3 made of whatever turns and retries are
    in flight) gives the conversations, attempts and rejections of the step-by-step build; a
    build killed halfway resumes, each conversation from its own next turn, to the same data."""
    from turnphase.builders import conversations

    args = [*_batch_args(3), "--seed-per-conversation"]
    built = {}
    for name, extra in (("stepwise", []), ("continuous", ["--continuous"])):
        built[name] = tmp_path / name
        assert main(["build", "--out", str(built[name]), "--model", str(tiny_model_dir), *args, *extra]) == 0
        assert validate(built[name]) == []
    provs = {k: json.loads((out / schema.PROVENANCE_FILE).read_text()) for k, out in built.items()}
    assert provs["continuous"]["build_options"]["continuous"] is True
    assert "continuous" not in provs["stepwise"]["build_options"]
    for config in ["conversations", "tokens", "layer_1"]:
        assert read_config(built["continuous"], config).equals(read_config(built["stepwise"], config)), config
    counts = [provs[k]["counts"] for k in built]
    assert counts[0]["rejected_attempts"] == counts[1]["rejected_attempts"]
    assert counts[0]["dropped"] == counts[1]["dropped"] and counts[0]["retries"] > 0  # retries happened
    # the batches really mixed turns: some chunk held rows of different turns (user and assistant)
    mixed, advance = [], conversations.BatchedChat.advance

    def spy(self, rows, size):
        mixed.append(len({r.max_new_tokens for r in rows}) > 1 or len({len(r.ids) for r in rows}) > 1)
        return advance(self, rows, size)

    out = tmp_path / "resumed"
    _kill_at_checkpoint(monkeypatch, out, 2, spy)
    command = ["build", "--out", str(out), "--model", str(tiny_model_dir), *args, "--continuous"]
    assert main(command) == 130
    saved = json.loads((out / ".turnphase_build" / "generation.json").read_text())
    assert any(len(c["attempts"]) > 2 for c in saved["conversations"])  # some ran ahead of the others
    monkeypatch.setattr(conversations.BatchedChat, "advance", spy)
    assert main(command) == 0
    assert validate(out) == [] and any(mixed)
    for config in ["conversations", "tokens", "layer_1"]:
        assert read_config(out, config).equals(read_config(built["continuous"], config)), config


def test_parallel_attempts_fill_the_tail_and_change_no_data(tiny_model_dir, tmp_path, monkeypatch):
    """--parallel-attempts 3 with a batch wider than the build (rows to spare from the start): the
    turns with a rejected attempt get later attempts written at once, some of those are dropped
    unjudged once an earlier attempt is kept, and the conversations, attempts, rejections, tokens
    and activations are those of the continuous build without them (each attempt has its own seed)."""
    from turnphase.builders import conversations

    seen, advance = [], conversations.BatchedChat.advance

    def spy(self, rows, size):
        seen.append([r.key for r in rows])
        return advance(self, rows, size)

    monkeypatch.setattr(conversations.BatchedChat, "advance", spy)
    built = {}
    for name, extra in (("one", _batch_args(3)), ("parallel", [*_batch_args(8), "--parallel-attempts", "3"])):
        built[name] = tmp_path / name
        command = ["build", "--out", str(built[name]), "--model", str(tiny_model_dir), *extra]
        assert main([*command, "--seed-per-conversation", "--continuous"]) == 0
        assert validate(built[name]) == []
    for config in ["conversations", "tokens", "layer_1"]:
        assert read_config(built["parallel"], config).equals(read_config(built["one"], config)), config
    provs = {k: json.loads((out / schema.PROVENANCE_FILE).read_text()) for k, out in built.items()}
    assert provs["parallel"]["counts"] == provs["one"]["counts"]
    assert provs["one"]["counts"]["retries"] > 0
    assert provs["parallel"]["build_options"]["parallel_attempts"] == 3
    assert "parallel_attempts" not in provs["one"]["build_options"]
    assert "discarded_tokens" not in provs["one"]["generation"]["timing"]
    # some chunk wrote two attempts of one turn at once, and some attempt was never judged
    spare = [k for keys in seen for k in keys if isinstance(k, tuple) and k[0] == "attempt"]
    assert spare and max(len(keys) for keys in seen) > 4
    timing = {k: p["generation"]["timing"] for k, p in provs.items()}
    assert timing["parallel"]["discarded_tokens"] > 0
    # every token sampled beyond the one-at-a-time build's is one of the attempts never judged
    assert (
        timing["parallel"]["new_tokens"] - timing["parallel"]["discarded_tokens"]
        == timing["one"]["new_tokens"]
    )
    assert "--parallel-attempts 3" in (built["parallel"] / "README.md").read_text()
    # killed at a checkpoint (its cache saved with attempts in flight), it resumes to the same data
    out = tmp_path / "resumed"
    command = ["build", "--out", str(out), "--model", str(tiny_model_dir), *_batch_args(8)]
    command += ["--parallel-attempts", "3", "--seed-per-conversation", "--continuous"]
    _kill_at_checkpoint(monkeypatch, out, 1, spy)
    assert main(command) == 130
    monkeypatch.setattr(conversations.BatchedChat, "advance", spy)
    assert main(command) == 0
    for config in ["conversations", "tokens", "layer_1"]:
        assert read_config(out, config).equals(read_config(built["parallel"], config)), config


def test_generation_dtype_samples_with_a_copy_and_reads_float32_activations(
    tiny_build, tiny_model_dir, tmp_path, monkeypatch
):
    """--generation-dtype bfloat16 samples the conversations with a bfloat16 copy of the weights
    (the model the chat gets is bfloat16, its rotary frequencies in float32 as transformers' own
    bfloat16 load has them), while the activations are read from the float32 model: they equal a
    plain float32 forward of the stored tokens. The option is in the fingerprint."""
    from transformers import AutoModelForCausalLM

    from turnphase.builders import conversations

    seen, chat = [], conversations.BatchedChat.__init__

    def spy(self, model, *a, **kw):
        seen.append(model)
        return chat(self, model, *a, **kw)

    monkeypatch.setattr(conversations.BatchedChat, "__init__", spy)
    out = tmp_path / "bf16-generation"
    command = ["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS]
    assert main([*command, "--generation-dtype", "bfloat16"]) == 0
    assert [next(m.parameters()).dtype for m in seen] == [torch.bfloat16] and validate(out) == []
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    copy_state, load_state = seen[0].state_dict(), loaded.state_dict()
    assert copy_state.keys() == load_state.keys()
    assert all(torch.equal(copy_state[k], load_state[k]) for k in load_state)
    frequencies = seen[0].model.rotary_emb.inv_freq
    assert frequencies.dtype == torch.float32
    assert torch.equal(frequencies, loaded.model.rotary_emb.inv_freq)
    _assert_activations_equal_a_plain_forward(out, tiny_model_dir)
    options = json.loads((out / schema.PROVENANCE_FILE).read_text())["build_options"]
    assert options["generation_dtype"] == "bfloat16"
    assert options["sampling_copy_rotary"] == "float32"  # not the fingerprint of the rounded copy's builds
    assert (
        "generation_dtype"
        not in json.loads((tiny_build / schema.PROVENANCE_FILE).read_text())["build_options"]
    )
