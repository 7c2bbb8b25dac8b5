"""Benchmark activation extraction on a GPU: tokens/s reading 7 layers vs a plain forward with no copy.

    .venv/bin/python scripts/bench_gpu.py                       # Llama-3.2-1B shape, bfloat16, cuda
    .venv/bin/python scripts/bench_gpu.py --build               # and time the study-scale build (50 x 5)
    .venv/bin/python scripts/bench_gpu.py --no-extract --build --compile-decoding   # that build compiled
    .venv/bin/python scripts/bench_gpu.py --no-extract --generation   # ms per decoding step, default model
    .venv/bin/python scripts/bench_gpu.py --device cpu --shape tiny --batches 2   # a smoke run anywhere
    .venv/bin/python scripts/bench_gpu.py --device cpu --dtype float32 --no-extract --generation \
        --generation-model FOLDER                                # --generation's smoke run, a tiny model

Random weights of the model's shape (the numbers do not depend on the weights), batches of
`--batch` sequences of `--seq-len` tokens, after one warm-up batch; all three ways in this run:

    forward     the model alone, no hidden states kept (the ceiling)
    sync        builders.activations.LayerReader.batch: one forward, then its layers to the host
                as float16 (what a build stores)
    pipelined   LayerReader.submit of the next batch before the last one's result: on CUDA the
                copies to pinned host memory overlap the next forward

Target (issue 14): pipelined within 1.5x of forward. `--build` also times `turnphase build` of
the study's recipe (50 x 5, default model) with `--device`, `--model-dtype` and
`--extract-batch-size 16`; target at most 60 s on one H100/H200. `--generation` times decoding
steps of the default model at 50 rows (transformers' `generate` alone, and `BatchedChat` as a build
calls it, eager and with `--compile-decoding`'s static cache and compiled step; each way's first
call, which compiles, is timed apart), with cProfile's top entries: where a build's generation
time goes; then compiled decoding over ten calls shaped like a build's (rows finishing, two
static lengths), with a new static cache per call as a build makes them and with one reused per
shape: CUDA graphs recorded and ms per decoding step per call (`compiled_calls`). The device name
is printed with the numbers, to record them with it.

Measured on one H200 (2026-11-29; README, "A GPU"): forward 171,804 tokens/s, sync x2.01,
pipelined x1.57 (target missed); decoding 28.5-33.7 ms/step for `generate`, 30.4 for `BatchedChat`
with the question stop (its run without it was timed under cProfile then: 45.8, the profiler's
cost included); the 50 x 5 build did not finish in 330 s. `--compile-decoding` came after that
session and has not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import torch

SHAPES = {
    # meta-llama/Llama-3.2-1B-Instruct's config
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    ),
}
LAYERS = [7, 8, 9, 10, 11, 12, 13]  # the study's 7 of 16


def model_of(shape: str, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from turnphase.builders.model import cast_weights

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192)
    # in dtype as a build loads it (rotary frequencies kept in float32)
    return cast_weights(LlamaForCausalLM(config), dtype).to(device).eval()


def placeholder_tokenizer():
    """nnsight wants a tokenizer object; token ids are given here directly, so any will do."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def timed(run_all, batches, device: str) -> float:
    """Seconds `run_all` takes over batches[1:], after a warm-up on batches[:1]."""
    run_all(batches[:1])
    sync(device)
    start = time.perf_counter()
    run_all(batches[1:])
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=16, help="sequences per forward")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batches", type=int, default=9, help="batches timed after the warm-up one")
    p.add_argument("--build", action="store_true", help="also time the study-scale build")
    p.add_argument("--build-out", help="keep the build's dataset here (default: a temporary folder)")
    p.add_argument("--compile-decoding", action="store_true", help="build with --compile-decoding")
    p.add_argument("--no-extract", action="store_true", help="skip the extraction benchmark")
    p.add_argument(
        "--generation", action="store_true", help="also time decoding steps of the default model, 50 rows"
    )
    p.add_argument("--generation-model", help="another model for --generation (a folder: smoke runs)")
    args = p.parse_args()
    if not args.no_extract:
        bench_extraction(args)
    if args.generation:
        bench_generation(args)
    if args.build:
        bench_build(args)


def bench_extraction(args) -> None:
    from turnphase.builders.activations import LayerReader

    dtype = getattr(torch, args.dtype)
    model = model_of(args.shape, dtype, args.device)
    gen = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"]
    batches = [
        torch.randint(0, vocab, (args.batch, args.seq_len), generator=gen).tolist()
        for _ in range(args.batches + 1)
    ]
    reader = LayerReader(model, placeholder_tokenizer(), LAYERS, "float16")  # as a build stores them

    def forward(batches):
        for batch in batches:
            ids = torch.tensor(batch, device=args.device)
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=torch.ones_like(ids))

    def one_by_one(batches):
        for batch in batches:
            reader.batch(batch)

    def pipelined(batches):  # as builders.build._read_batches; the last result is timed too
        pending = None
        for batch in batches:
            submitted = reader.submit(batch)
            if pending is not None:
                pending.result()
            pending = submitted
        pending.result()

    seconds = {
        way: timed(run, batches, args.device)
        for way, run in [("forward", forward), ("sync", one_by_one), ("pipelined", pipelined)]
    }
    name = device_name(args.device)
    tokens = args.batches * args.batch * args.seq_len
    print(
        f"{name}; {args.shape}, {args.dtype}, {len(LAYERS)} layers read, batch {args.batch} x {args.seq_len} tokens"
    )
    for way, sec in seconds.items():
        print(f"{way:<10} {tokens / sec:12,.0f} tokens/s   x{sec / seconds['forward']:.2f} of forward")


def bench_generation(args, rows: int = 50, steps: int = 64) -> None:
    """Milliseconds per decoding step of the default model at `rows` rows, each way timed after a
    warm-up call: transformers' `generate` alone (greedy, then sampling: the floor of eager
    decoding), then `BatchedChat` as a build calls it (prefix cache, RowSampler with a generator
    per row; then with the user turn's QuestionStop too). A forward hook counts the steps, so rows
    that end early do not skew the figure. cProfile's top entries of the build's way follow."""
    import cProfile
    import pstats

    from turnphase.builders.conversations import BatchedChat, GenerationSettings
    from turnphase.builders.model import load_model

    start = time.perf_counter()
    loaded = load_model(args.generation_model, device=args.device, dtype=args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    print(
        f"model loaded in {time.perf_counter() - start:.1f} s: {model.dtype} on {model.device}, "
        f"attention {model.config._attn_implementation}"
    )
    forwards = [0]
    model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    chats = [
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Tell me something about topic number {i}." + " Why?" * (i % 5)},
        ]
        for i in range(rows)
    ]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(args.device)

    def plain(do_sample: bool):
        def run():
            with torch.inference_mode():
                model.generate(
                    **batch,
                    max_new_tokens=steps,
                    min_new_tokens=steps,
                    do_sample=do_sample,
                    pad_token_id=tokenizer.pad_token_id,
                )

        return run

    def ours(ask: bool, compiled: bool = False):
        def run():
            chat = BatchedChat(model, tokenizer, GenerationSettings(compile_decoding=compiled))
            chat(chats, steps, seed=1, row_seeds=list(range(rows)), stop_at_question=ask)

        return run

    ways = {
        "generate, greedy": plain(False),
        "generate, sampling": plain(True),
        "BatchedChat, row seeds": ours(False),
        "BatchedChat, row seeds + question stop": ours(True),
        "BatchedChat, row seeds, compiled": ours(False, compiled=True),
    }
    print(f"decoding, default model, {rows} rows, up to {steps} tokens each:")
    for way, run in ways.items():
        began = time.perf_counter()
        run()  # a warm-up; the compiled way compiles here
        sync(args.device)
        first = time.perf_counter() - began
        forwards[0] = 0
        began = time.perf_counter()
        run()
        sync(args.device)
        sec = time.perf_counter() - began
        print(
            f"  {way:<40} {1000 * sec / max(forwards[0], 1):7.1f} ms/step   ({forwards[0]} steps, {sec:.2f} s; "
            f"first call {first:.1f} s)"
        )
    profile = cProfile.Profile()  # a call of its own: the profiler's cost is in no timing above
    profile.runcall(ways["BatchedChat, row seeds"])
    sync(args.device)
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    compiled_calls(model, tokenizer, args)


# Rows per call in `compiled_calls`: a build's chunks shrink as rows finish, and its turns start full.
CALL_ROWS = [50, 50, 43, 31, 50, 50, 43, 12, 50, 31]


class PooledCache:
    """A stand-in for `PrefixCache.new_cache` that hands out one StaticCache per (rows, length),
    reset, instead of a new one per call: the same tensors, so the CUDA graphs recorded for a
    shape can be replayed by a later call of that shape (a new cache's tensors make the graphs
    record again). Not in the build until a GPU says it pays."""

    def __init__(self, cache):
        self.made, self.caches = cache.new_cache, {}

    def __call__(self, rows: int, capacity: int):
        from turnphase.builders.prefix_cache import static_length

        key = (rows, static_length(capacity))
        if key not in self.caches:
            self.caches[key] = self.made(rows, capacity)
            return self.caches[key]
        cache = self.caches[key]
        with torch.inference_mode():  # where generate made them
            for layer in cache.layers:
                if layer.is_initialized:
                    layer.keys.zero_()
                    layer.values.zero_()
                    layer.cumulative_length.zero_()
        return cache


def compiled_calls(model, tokenizer, args) -> None:
    """`--compile-decoding` over a sequence of calls shaped as a build's are (CALL_ROWS rows, two
    prompt lengths, so two static lengths), a new static cache per call as a build makes them,
    then one per shape reused (`PooledCache`): per call, ms per decoding step and the prefill's
    seconds (`BatchedChat.clock`), CUDA graphs recorded and dynamo graphs compiled, and whether
    both ways wrote the same replies. Whether graphs recorded per call eat the compiled step's
    gain is what this measures; each way's first call compiles (or reuses what the last way
    compiled)."""
    from torch._dynamo.utils import counters

    from turnphase.builders.conversations import BatchedChat, GenerationSettings

    recorded = [0]
    if args.device.startswith("cuda"):
        from torch._inductor import cudagraph_trees

        record = cudagraph_trees.CUDAGraphTreeManager.record_function

        def counted(self, *a, **kw):
            recorded[0] += 1
            return record(self, *a, **kw)

        cudagraph_trees.CUDAGraphTreeManager.record_function = counted

    def chats(rows: int, long: bool) -> list[list[dict]]:
        question = "Tell me about the history of topic {i}, step by step. " * (30 if long else 1)
        return [[{"role": "user", "content": question.format(i=i)}] for i in range(rows)]

    print(f"compiled decoding over {len(CALL_ROWS)} calls shaped like a build's, 32 tokens each:")
    replies = []
    for way, pooled in [("a new static cache per call (as a build)", False), ("one per shape, reused", True)]:
        chat = BatchedChat(model, tokenizer, GenerationSettings(compile_decoding=True))
        if pooled:
            chat.cache.new_cache = PooledCache(chat.cache)
        print(f"  {way}:")
        total = 0.0
        for i, rows in enumerate(CALL_ROWS):
            before, graphs = recorded[0], counters["stats"]["unique_graphs"]
            steps, seconds = chat.decoding_steps, dict(chat.clock.seconds)
            began = time.perf_counter()
            replies.append(chat(chats(rows, long=i % 3 == 2), 32, seed=i, row_seeds=list(range(rows))))
            sync(args.device)
            sec = time.perf_counter() - began
            total += sec
            spent = {k: v - seconds.get(k, 0.0) for k, v in chat.clock.seconds.items()}
            print(
                f"    call {i}: {rows:2d} rows, {sec:6.2f} s: decoding "
                f"{1000 * spent['decoding'] / max(chat.decoding_steps - steps, 1):6.1f} ms/step, "
                f"prefill {spent['prefill']:5.2f} s; CUDA graphs recorded {recorded[0] - before}, "
                f"dynamo graphs compiled {counters['stats']['unique_graphs'] - graphs}"
            )
        print(f"    all calls {total:.1f} s")
    print(f"  the same replies both ways: {replies[: len(CALL_ROWS)] == replies[len(CALL_ROWS) :]}")


def bench_build(args) -> None:
    name = device_name(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.build_out or f"{tmp}/ds"
        # -P: run from the repository's root, its turnphase/ would shadow an installed turnphase
        cmd = [sys.executable, "-P", "-m", "turnphase", "build", "--out", out, "--device", args.device]
        cmd += ["--model-dtype", args.dtype, "--extract-batch-size", "16", "--seed-per-conversation"]
        cmd += ["--compile-decoding"] if args.compile_decoding else []
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        how = ", --compile-decoding" if args.compile_decoding else ""
        print(
            f"study-scale build (50 x 5, default model{how}): {time.perf_counter() - start:.1f} s on {name}"
        )


if __name__ == "__main__":
    main()
