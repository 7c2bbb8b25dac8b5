"""Benchmark the build on this machine; every ratio is measured within this one run.

    .venv/bin/python scripts/bench_build.py                 # everything, ~20 min on 2 cores
    .venv/bin/python scripts/bench_build.py --skip-full-build
    .venv/bin/python scripts/bench_build.py --only decode_step,extraction
    .venv/bin/python scripts/bench_build.py --only cleaner_build  # the default build and 2 more (~25 min)
    .venv/bin/python scripts/bench_build.py --only variant_build  # after `make qwen`; ~36 min here
    .venv/bin/python scripts/bench_build.py --only model_dtype    # a few min; the variant too after `make qwen`
    .venv/bin/python scripts/bench_build.py --only retry_temperature --hard-from data/smollm2  # ~5 min
    .venv/bin/python scripts/bench_build.py --only sampling_penalties --hard-from data/smollm2 \
        --hard-samples 6 --replies-out replies.jsonl
    .venv/bin/python scripts/bench_build.py --only parallel_attempts
    .venv/bin/python scripts/bench_build.py --only kv_copy  # two full builds, ~20 min

1. batched generation (50 conversations) vs one conversation at a time: same prompts, same token
   budget (every sequence generates exactly --new-tokens tokens). Target: >= 8x tokens/s.
2. the build's turn-taking (50 conversations x --kv-rounds rounds) with each conversation's KV
   cache reused across turns vs every call re-reading its whole prompt: wall-time ratio, prompt
   tokens fed, and how many conversations come out identical (float noise can flip a sample).
3. One decoding step (45 rows, 1000 cached tokens) with transformers' DynamicLayer, which grows
   by torch.cat, vs the build's preallocated BufferLayer; and where one step of each spends its
   time (torch.profiler, self CPU time: cat and copy_, linear layers, attention, other).
4. nnsight extraction of the default layers vs a plain transformers forward with
   output_hidden_states=True, on the same conversation-length token sequences. Target: >= 0.95.
5. Parquet write throughput of layer shards, and bytes per token per layer on disk vs the raw
   d_model x dtype bytes.
6. Wall time of the default full build (`turnphase build`, 50 topics x 5 rounds). Target: <= 15 min.
7. (only when asked) the default build, then, one after the other, the builds --cleaner-builds
   names (by default cleaner_trim, the README's clean recipe, and cleaner_fast, the same without
   --trim-cut-off). continuous: continuous batching only (CONTINUOUS: it changes the schedule,
   not the checks); cleaner: the CLEANER options (continuous batching, a reply that repeats itself
   stopped and retried, retries at temperature 1.0, repeated and too-short turns retried, a
   384-token assistant budget, 6 attempts); cleaner_bf16: those sampling with a bfloat16 copy of
   the weights (the activations still read in float32); cleaner_parallel: those and
   --parallel-attempts 3; cleaner_parallel_bf16: both; cleaner_fast: both and --stop-at-question;
   cleaner_fast_wide: that with --parallel-attempts 6 --batch-size 64; cleaner_trim: cleaner_fast
   with --trim-cut-off at the default's 256-token assistant budget; cleaner_penalty: cleaner_trim
   with --repetition-penalty 1.15. For each: wall-time ratio to
   the default (target >= 1.25x), tokens generated and kept, conversations dropped (target < 15%)
   and verbatim repeated turns kept (target 0).
8. (only when asked; needs `make qwen`) the same small build (--variant-recipe, default 10
   conversations x 2 rounds, each model's own default strategy and layers) on SmolLM2-135M and on
   the 1.5B variant, one after the other: wall time, model load, generation tokens/s, extraction
   tokens/s, and the variant's cost relative to SmolLM2.
9. (only when asked) batched decoding (50 rows, --new-tokens each) with the weights in float32 vs
   bfloat16 (`--model-dtype`), on the default model and, when its parts are installed, on the 1.5B
   variant; and whether the CPU has bfloat16 matrix units (AMX, AVX512-BF16), which decide it; and
   how far bfloat16 moves the next-token distributions the build samples from (KL, total
   variation, top-token agreement with float32 on 8 sampled continuations).
10. (only when asked; needs a default build) the hardest assistant contexts of a build (the turns
   that took 2 or more attempts), each sampled --hard-samples times at the default temperature and
   at 1.0 (`--stop-runaway`, the default 256-token budget): replies that are sound (ended, no role
   label, not looping) and that loop, at each temperature, per context.
11. One sampling step of --seed-per-conversation builds (50 rows, each from its own generator, on
   SmolLM2's next-token scores after the 50 topics' first prompts, at 0.7 and at the retries' 1.0):
   RowSampler vs the former sampler (transformers' temperature and top-p warpers, one
   torch.multinomial per row, then generate's own warpers and draw again on the chosen token).
12. (only when asked; needs a default build) the hardest assistant contexts of a build, each sampled
   --hard-samples times (the same seeds) plainly and with each of transformers' anti-repetition
   options (PENALTIES), without the runaway stop: replies that end and that are cut off at the
   limit, and how many of each the runaway stop would have stopped. --replies-out keeps every
   reply to read.
13. (only when asked) the clean recipe's build (--parallel-recipe, default 8 conversations x 2
   rounds) with its --parallel-attempts and one attempt at a time, sampling in bfloat16 (as the
   recipe does) and in float32: the same conversations?
14. (only when asked) the default build and the clean recipe's (50 x 5 each, in this process): the
   share of generation spent laying each decoding chunk's cached keys/values into one batch cache
   and copying them back (PrefixCache.batch and .store).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from turnphase.builders import conversations as conv
from turnphase.builders import schema, writer
from turnphase.builders.activations import LayerReader
from turnphase.builders.config import CLEAN_RECIPE
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.model import cast_weights, load_model
from turnphase.builders.variants import VARIANTS, part_files


def topic_chats(n: int) -> list[list[dict]]:
    """n first-turn chats, one per default topic."""
    prompts = conv.load_prompts("reply")
    return [
        c.messages + [{"role": "user", "content": f"Tell me about {c.topic}"}]
        for c in conv.new_conversations(n, prompts)
    ]


def encode_chats(tok, chats: list[list[dict]]):
    """The chats' prompts (chat template and generation prompt), left-padded into one batch."""
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def continue_chats(model, tok, chats: list[list[dict]], new_tokens: int):
    """One batched `generate` of exactly `new_tokens` per chat (left-padded, seed 0, the build's
    sampling settings): (the prompts' encoding, the sequences, seconds)."""
    enc = encode_chats(tok, chats)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            pad_token_id=tok.pad_token_id,
        )
    return enc, out, time.perf_counter() - t0


def sample(loaded, chats: list[list[dict]], new_tokens: int) -> tuple[int, float]:
    """One batched `generate` of exactly `new_tokens` per chat: (tokens generated, seconds)."""
    enc, out, dt = continue_chats(loaded.model, loaded.tokenizer, chats, new_tokens)
    return (out.shape[1] - enc["input_ids"].shape[1]) * len(chats), dt


def generation(loaded, n_batched: int, n_sequential: int, new_tokens: int) -> dict:
    chats = topic_chats(n_batched)
    n_seq, t_seq = 0, 0.0
    for chat in chats[:n_sequential]:
        n, dt = sample(loaded, [chat], new_tokens)
        n_seq, t_seq = n_seq + n, t_seq + dt
    n_bat, t_bat = sample(loaded, chats, new_tokens)
    return {
        "sequential_tokens_per_s": n_seq / t_seq,
        "batched_tokens_per_s": n_bat / t_bat,
        "batched_vs_sequential": (n_bat / t_bat) / (n_seq / t_seq),
        "batch": n_batched,
        "new_tokens_per_sequence": new_tokens,
    }


def kv_reuse(loaded, n: int, rounds: int) -> dict:
    """The build's own turn-taking (`generate_conversations`, same seeds) with each conversation's
    KV cache reused across turns, and with every call re-reading its whole prompt."""
    prompts = conv.load_prompts("reply")
    out = {}
    for name, reuse in (("reuse", True), ("re-read", False)):
        settings = conv.GenerationSettings(rounds=rounds, batch_size=n)
        chat = conv.BatchedChat(loaded.model, loaded.tokenizer, settings, reuse_cache=reuse)
        convs = conv.new_conversations(n, prompts)
        t0 = time.perf_counter()
        conv.generate_conversations(convs, chat, prompts, settings)
        out[name] = {
            "seconds": time.perf_counter() - t0,
            "prompt_tokens_fed": chat.cache.fed_tokens,
            "new_tokens": chat.new_tokens,
            "messages": [c.messages for c in convs],
        }
    same = sum(
        a == b for a, b in zip(out["reuse"].pop("messages"), out["re-read"].pop("messages"), strict=True)
    )
    return {
        **out,
        "speedup": out["re-read"]["seconds"] / out["reuse"]["seconds"],
        "identical_conversations": same,
        "conversations": n,
        "rounds": rounds,
    }


def decode_step(loaded, rows: int, cached: int, steps: int = 8) -> dict:
    """One decoding step over `rows` rows of `cached` cached tokens: transformers' DynamicLayer
    (grows by torch.cat, copying the cache every step) vs the build's preallocated BufferLayer."""
    from transformers import DynamicCache

    from turnphase.builders.prefix_cache import BufferLayer

    model, cfg = loaded.model, loaded.model.config
    shape = (rows, cfg.num_key_value_heads, cached, cfg.hidden_size // cfg.num_attention_heads)

    def cache(kind):
        c = DynamicCache(config=cfg)
        if kind == "buffer":
            c.layers = [BufferLayer(cached + steps) for _ in c.layers]
        for layer in c.layers:
            layer.update(torch.randn(shape), torch.randn(shape))
        return c

    medians = {}
    for kind in ("dynamic", "buffer", "dynamic", "buffer"):  # interleaved against a noisy neighbour
        c, mask = cache(kind), torch.ones(rows, cached, dtype=torch.long)
        tok, times = torch.randint(100, 4000, (rows, 1)), []
        with torch.inference_mode():
            for step in range(steps):
                mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], 1)
                t0 = time.perf_counter()
                model(
                    input_ids=tok,
                    attention_mask=mask,
                    cache=c,
                    position_ids=torch.full((rows, 1), cached + step),
                )
                times.append(time.perf_counter() - t0)
        medians.setdefault(kind, []).append(statistics.median(times))
    dyn, buf = min(medians["dynamic"]), min(medians["buffer"])
    profiles = {}
    for kind in ("dynamic", "buffer"):  # where one step's time goes, by operator
        c, mask = cache(kind), torch.ones(rows, cached + 1, dtype=torch.long)
        tok = torch.randint(100, 4000, (rows, 1))
        with torch.inference_mode():
            profiles[kind] = step_profile(
                lambda c=c, mask=mask, tok=tok: model(
                    input_ids=tok, attention_mask=mask, cache=c, position_ids=torch.full((rows, 1), cached)
                )
            )
    return {
        "dynamic_s": dyn,
        "buffer_s": buf,
        "speedup": dyn / buf,
        "rows": rows,
        "cached_tokens": cached,
        "profile_shares": profiles,
    }


# The operators a decoding step's time is put under (self CPU time, torch.profiler); the rest is "other".
STEP_PARTS = {
    "cat and copy_": ("aten::cat", "aten::copy_"),  # the cache growing (DynamicLayer), or written
    "linear layers": ("aten::mm", "aten::addmm"),
    "attention": ("scaled_dot_product", "flash_attention", "aten::bmm", "aten::baddbmm", "aten::_softmax"),
}


def step_profile(step) -> dict:
    """The share of `step`'s self CPU time in each of STEP_PARTS (one torch.profiler run)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    shares, total = dict.fromkeys([*STEP_PARTS, "other"], 0.0), 0.0
    for event in prof.key_averages():
        total += event.self_cpu_time_total
        part = next((p for p, names in STEP_PARTS.items() if any(n in event.key for n in names)), "other")
        shares[part] += event.self_cpu_time_total
    return {part: t / total for part, t in shares.items()}


def row_sampler(loaded, rows: int = 50, repeats: int = 15) -> dict:
    """One sampling step over `rows` rows with their own generators: RowSampler vs the former
    sampler, at the build's temperature and at the retries' 1.0 (wider nuclei)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    enc = encode_chats(loaded.tokenizer, topic_chats(rows))
    with torch.inference_mode():
        scores = loaded.model(**enc).logits[:, -1].float()
    top_p = conv.GenerationSettings().top_p

    def former(temperature, generators):
        warp = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
        warped = warp[1](None, warp[0](None, scores.clone()))
        probs = warped.softmax(-1)
        chosen = torch.cat(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)]
        )
        only = torch.full_like(scores, -float("inf")).scatter_(1, chosen[:, None], 0.0)
        return torch.multinomial(warp[1](None, warp[0](None, only)).softmax(-1), 1)  # generate's turn

    def current(temperature, generators):
        return conv.RowSampler(generators, temperature, top_p)(None, scores.clone()).argmax(-1)

    result = {}
    for temperature in (conv.GenerationSettings().temperature, 1.0):
        times = {"former": [], "row_sampler": []}
        for _ in range(repeats):  # interleaved against a noisy neighbour
            for name, draw in (("former", former), ("row_sampler", current)):
                generators = [torch.Generator().manual_seed(i) for i in range(rows)]
                t0 = time.perf_counter()
                draw(temperature, generators)
                times[name].append(time.perf_counter() - t0)
        probs = (scores / temperature).softmax(-1).sort(dim=-1, descending=True).values.cumsum(-1)
        nucleus = ((probs < top_p).sum(-1) + 1).tolist()
        result[f"temperature_{temperature}"] = {
            "former_ms": 1000 * statistics.median(times["former"]),
            "row_sampler_ms": 1000 * statistics.median(times["row_sampler"]),
            "speedup": statistics.median(times["former"]) / statistics.median(times["row_sampler"]),
            "nucleus_median": statistics.median(nucleus),
            "rows_ranked_whole": sum(n > conv.NUCLEUS_CANDIDATES for n in nucleus),
        }
    return {"rows": rows, "vocabulary": scores.shape[-1], **result}


def extraction(loaded, layers: list[int], n_tokens: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(100, loaded.tokenizer.vocab_size - 100, n_tokens).tolist()
    reader = LayerReader(loaded.model, loaded.tokenizer, layers)
    reader(ids[:64])  # nnsight compiles the trace body on first use
    plain, traced = [], []
    for _ in range(repeats):  # interleaved, so a noisy neighbour slows both alike
        t0 = time.perf_counter()
        with torch.inference_mode():
            hs = loaded.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            _ = [hs[L + 1][0].float().numpy() for L in layers]
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reader(ids)
        traced.append(time.perf_counter() - t0)
    p, t = statistics.median(plain), statistics.median(traced)
    return {
        "plain_tokens_per_s": n_tokens / p,
        "nnsight_tokens_per_s": n_tokens / t,
        "nnsight_vs_plain": p / t,
        "tokens": n_tokens,
        "layers": len(layers),
    }


def parquet(d_model: int, n_tokens: int, dtype: str) -> dict:
    rng = np.random.default_rng(0)
    k = np.arange(n_tokens) % 1000  # conversations of 1000 tokens, rounds of 200
    phase = (k % 200) / 199
    labels = pa.table(
        {
            "conversation_id": pa.array(np.arange(n_tokens) // 1000, pa.int32()),
            "position": pa.array(k, pa.int32()),
            "role": np.where(k % 200 < 40, "user", "assistant"),
            "round": pa.array(k // 200, pa.int16()),
            "phase": pa.array(phase, pa.float32()),
            "phase_round": pa.array(phase, pa.float32()),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        # activations with the scale and correlation of real ones matter for compression: use a
        # low-rank-plus-noise matrix rather than white noise
        acts = rng.normal(size=(n_tokens, 32)) @ rng.normal(size=(32, d_model)) + rng.normal(
            size=(n_tokens, d_model)
        )
        table = writer.layer_table(labels, acts, dtype)
        t0 = time.perf_counter()
        path = writer.write_shard(Path(tmp), "layer_0", 0, 1, table)
        dt = time.perf_counter() - t0
        size = path.stat().st_size
    raw = d_model * np.dtype(dtype).itemsize
    return {
        "write_MB_per_s": size / dt / 1e6,
        "write_tokens_per_s": n_tokens / dt,
        "bytes_per_token_per_layer": size / n_tokens,
        "raw_bytes_per_token_per_layer": raw,
        "on_disk_vs_raw": size / n_tokens / raw,
    }


def verbatim_repeats(conversations: list[dict]) -> int:
    """Turns whose text (whitespace aside) equals an earlier turn's of the same conversation."""
    n = 0
    for row in conversations:
        seen = set()
        for m in row["messages"]:
            if m["role"] == "system":
                continue
            text = " ".join(m["content"].split())
            n += text in seen
            seen.add(text)
    return n


def full_build(*extra: str, keep: Path | None = None) -> dict:
    """The default build (`turnphase build` in a subprocess), with `extra` options; into `keep`
    (left there) if given, else a temporary folder."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp) / "build"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "turnphase.builders.cli", "build", "--out", str(out), *extra], check=True
        )
        wall = time.perf_counter() - t0
        prov = json.loads((out / schema.PROVENANCE_FILE).read_text())
        size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
        repeats = verbatim_repeats(pq.read_table(out / schema.CONVERSATIONS).to_pylist())
    timing = prov["generation"]["timing"]
    return {
        "options": list(extra),
        "model": prov["model"]["id"],
        "strategy": prov["generation"]["strategy"],
        "wall_minutes": wall / 60,
        "load_model_minutes": timing["load_model_seconds"] / 60,
        "generation_minutes": timing["seconds"] / 60,
        "generation_tokens_per_s": timing["new_tokens"] / timing["seconds"],
        "new_tokens": timing["new_tokens"],
        "discarded_tokens": timing.get("discarded_tokens", 0),  # attempts never judged (--parallel-attempts)
        "extraction_minutes": timing["extraction"]["seconds"] / 60,
        "extraction_tokens_per_s": timing["extraction"]["tokens_forwarded"] / timing["extraction"]["seconds"],
        "layers": len(prov["layers"]),
        "conversations": prov["counts"]["conversations"],
        "dropped": len(prov["counts"]["dropped"]),
        "rejected_attempts": prov["counts"]["rejected_attempts"],
        "verbatim_repeated_turns": repeats,
        "trimmed_turns": prov["counts"].get("trimmed_turns", 0),  # cut off, kept to their last sentence
        "tokens": prov["counts"]["tokens"],
        "dataset_MB": size / 1e6,
        "prompt_tokens_fed": timing["prompt_tokens_fed"],
        "prompt_tokens_reused": timing["prompt_tokens_reused"],
    }


CONTINUOUS = ("--continuous", "--seed-per-conversation")
CLEANER = (
    *CONTINUOUS,
    "--stop-runaway",
    "--check-repeats",
    "--retry-temperature",
    "1.0",
    "--assistant-max-new-tokens",
    "384",
    "--max-attempts",
    "6",
)


BF16_GENERATION = ("--generation-dtype", "bfloat16")
PARALLEL_ATTEMPTS = ("--parallel-attempts", "3")
# the fast recipe: also user replies stopped at their question, and (wide) 14 rows beyond the 50
# conversations, so that failing turns get parallel attempts from the start
FAST = (*PARALLEL_ATTEMPTS, *BF16_GENERATION, "--stop-at-question")
WIDE = ("--parallel-attempts", "6", "--batch-size", "64")
PENALTY = ("--repetition-penalty", "1.15")  # the one of PENALTIES that ended most hard replies
CLEANER_BUILDS = ("continuous", "cleaner", "cleaner_bf16", "cleaner_parallel", "cleaner_parallel_bf16")
CLEANER_BUILDS += ("cleaner_fast", "cleaner_fast_wide", "cleaner_trim", "cleaner_penalty")
MEASURED_CLEANER_BUILDS = ("cleaner_trim", "cleaner_fast")  # the README's clean recipe, and without the trim


def cleaner_build(
    keep: Path | None = None,
    cleaner: tuple[str, ...] = CLEANER,
    which: tuple[str, ...] = MEASURED_CLEANER_BUILDS,
) -> dict:
    """The default build, then those of `which`, one after the other: continuous batching only
    (CONTINUOUS), the `cleaner` options, those sampling with bfloat16 weights (cleaner_bf16), with
    a turn's later attempts written in parallel in the tail's spare rows (cleaner_parallel), both
    (cleaner_parallel_bf16), both and user replies stopped at their question (cleaner_fast),
    that with 14 rows to spare from the start (cleaner_fast_wide), cleaner_fast keeping a
    reply cut off at the limit to its last sentence, at the default's budget (cleaner_trim), and
    that with transformers' repetition penalty 1.15 (cleaner_penalty)."""
    options = {"continuous": CONTINUOUS, "cleaner": cleaner, "cleaner_bf16": (*cleaner, *BF16_GENERATION)}
    options["cleaner_parallel"] = (*cleaner, *PARALLEL_ATTEMPTS)
    options["cleaner_parallel_bf16"] = (*cleaner, *PARALLEL_ATTEMPTS, *BF16_GENERATION)
    options["cleaner_fast"] = (*cleaner, *FAST)
    options["cleaner_fast_wide"] = (*cleaner, *FAST, *WIDE)  # the later --parallel-attempts wins
    options["cleaner_trim"] = CLEAN_RECIPE  # cleaner_fast, trimmed, at the default's 256-token budget
    options["cleaner_penalty"] = (*CLEAN_RECIPE, *PENALTY)
    builds = {"default": full_build()}
    for name in which:
        builds[name] = full_build(*options[name], keep=keep / name if keep else None)
    base = builds["default"]
    for b in builds.values():
        b["speedup"] = base["wall_minutes"] / b["wall_minutes"]
        b["generated_per_kept_token"] = b["new_tokens"] / b["tokens"]
    return builds


def kv_copy(builds: dict[str, tuple[str, ...]]) -> dict:
    """Each build of `builds` (name: options) in this process, with the time spent laying the
    cached keys and values of the rows of each prefill and decoding chunk into one batch cache
    (`PrefixCache.batch`) and copying them back out (`PrefixCache.store`) measured, beside the
    generation time it is part of. CPU timing (no CUDA synchronisation)."""
    from turnphase.builders import cli
    from turnphase.builders.prefix_cache import PrefixCache

    spent = {"batch": 0.0, "store": 0.0}

    def timed(name, method):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return run

    originals = {name: getattr(PrefixCache, name) for name in spent}
    out = {}
    try:
        for name, method in originals.items():
            setattr(PrefixCache, name, timed(name, method))
        for build, options in builds.items():
            spent.update(batch=0.0, store=0.0)
            with tempfile.TemporaryDirectory() as tmp:
                assert cli.main(["build", "--out", f"{tmp}/build", *options]) == 0
                timing = json.loads((Path(tmp) / "build" / schema.PROVENANCE_FILE).read_text())["generation"][
                    "timing"
                ]
            out[build] = {
                "options": list(options),
                "generation_seconds": timing["seconds"],
                "batch_seconds": spent["batch"],
                "store_seconds": spent["store"],
                "share": (spent["batch"] + spent["store"]) / timing["seconds"],
            }
    finally:
        for name, method in originals.items():
            setattr(PrefixCache, name, method)
    return out


def variant_build(recipe: list[str], variant: str = "qwen2.5-coder-1.5b-instruct") -> dict:
    """The same small build on the default model and on a named variant, one after the other."""
    small, large = full_build(*recipe), full_build(*recipe, "--model", variant)
    return {
        "recipe": recipe,
        "default": small,
        "variant": large,
        "wall_ratio": large["wall_minutes"] / small["wall_minutes"],
        "generation_tokens_per_s_ratio": small["generation_tokens_per_s"] / large["generation_tokens_per_s"],
        "extraction_tokens_per_s_ratio": small["extraction_tokens_per_s"] / large["extraction_tokens_per_s"],
    }


def variant_installed(name: str) -> bool:
    """Whether a named variant's part wheels are all installed (`make qwen`)."""
    try:
        part_files(VARIANTS[name])
    except TurnphaseError:
        return False
    return True


def cpu_bf16_units() -> list[str]:
    """The CPU's bfloat16 matrix features torch's oneDNN kernels use, from /proc/cpuinfo."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"})


def model_dtype(models: list[str | None], new_tokens: int, batch: int = 50) -> dict:
    """Batched decoding with the weights in float32, then the same model cast to bfloat16 as
    `--model-dtype bfloat16` loads it and `--generation-dtype bfloat16` copies it
    (`model.cast_weights`), same chats and seed, one model after the other."""
    out = {"cpu_bf16_units": cpu_bf16_units(), "batch": batch, "new_tokens_per_sequence": new_tokens}
    chats = topic_chats(batch)
    for model_id in models:
        loaded = load_model(model_id)
        reference = copy.deepcopy(loaded.model)  # float32, for the distributions below
        rates = {}
        for dtype in ("float32", "bfloat16"):
            cast_weights(loaded.model, getattr(torch, dtype))  # rotary frequencies kept in float32
            sample(loaded, chats[:2], 2)  # warm-up
            n, dt = sample(loaded, chats, new_tokens)
            rates[dtype] = n / dt
        out[loaded.id] = {
            **{f"{k}_tokens_per_s": v for k, v in rates.items()},
            "speedup": rates["bfloat16"] / rates["float32"],
            "next_token_gap": next_token_gap(reference, loaded, chats[:8], new_tokens),
        }
        del loaded, reference
    return out


def next_token_gap(reference, loaded, chats: list[list[dict]], new_tokens: int) -> dict:
    """How far bfloat16 weights move what is sampled: on `chats` continued by the float32 model
    (`reference`), the next-token distributions of both (temperature 0.7, as the build samples)
    at every generated position: mean KL(float32 || bfloat16), mean total variation, and how often
    the most likely token is the same."""
    enc, ids, _ = continue_chats(reference, loaded.tokenizer, chats, new_tokens)
    with torch.inference_mode():
        mask = torch.cat([enc["attention_mask"], torch.ones_like(ids[:, enc["input_ids"].shape[1] :])], 1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
        where = slice(enc["input_ids"].shape[1] - 1, ids.shape[1] - 1)  # the logits of generated tokens
        logp = [
            torch.log_softmax(
                m(ids, attention_mask=mask, position_ids=positions).logits[:, where].float() / 0.7, -1
            )
            for m in (reference, loaded.model)
        ]
    p = logp[0].exp()
    return {
        "positions": int(p.shape[0] * p.shape[1]),
        "kl_float32_bfloat16": float((p * (logp[0] - logp[1])).sum(-1).mean()),
        "total_variation": float(0.5 * (p - logp[1].exp()).abs().sum(-1).mean()),
        "top1_agreement": float((logp[0].argmax(-1) == logp[1].argmax(-1)).float().mean()),
    }


def hard_contexts(root: Path) -> list[list[dict]]:
    """The contexts (system prompt and turns before it) of the assistant turns of a build that took
    2 or more attempts."""
    import pyarrow.parquet as pq

    contexts = []
    for row in pq.read_table(root / schema.CONVERSATIONS).to_pylist():
        turns = [m for m in row["messages"] if m["role"] != "system"]
        for k, (m, attempts) in enumerate(zip(turns, row["attempts"], strict=True)):
            if m["role"] == "assistant" and attempts >= 2:
                contexts.append(row["messages"][: len(row["messages"]) - len(turns) + k])
    return contexts


class KeptIds(conv.BatchedChat):
    """A BatchedChat that also keeps the token ids of each reply it returns (`written`)."""

    def __call__(self, *args, **kwargs) -> list[conv.Reply]:
        self.written: list[list[int]] = []
        return super().__call__(*args, **kwargs)

    def reply(self, row) -> conv.Reply:
        self.written.append(list(row.written))
        return super().reply(row)


def sample_hard(loaded, contexts: list[list[dict]], samples: int, settings) -> tuple[list, list, dict]:
    """Each context sampled `samples` times under `settings`, each reply from its own seed (the
    same seeds under every setting), at the assistant budget: (replies, their token ids, cost)."""
    chats = [c for c in contexts for _ in range(samples)]
    chat = KeptIds(loaded.model, loaded.tokenizer, settings)
    t0 = time.perf_counter()
    replies = chat(chats, settings.assistant_max_new_tokens, 1, row_seeds=list(range(len(chats))))
    return replies, chat.written, {"tokens": chat.new_tokens, "seconds": time.perf_counter() - t0}


def write_replies(path: Path | None, part: str, contexts: list, samples: int, name: str, rows: list[dict]):
    """Append one JSON line per reply to `path` (for reading by hand): its context's last turn."""
    if path is None:
        return
    with path.open("a") as f:
        for i, row in enumerate(rows):
            asked = contexts[i // samples][-1]["content"]
            f.write(
                json.dumps({"part": part, "setting": name, "context": i // samples, "asked": asked, **row})
                + "\n"
            )


def retry_temperature(
    loaded, root: Path, samples: int, temperatures=(0.7, 1.0), replies_out: Path | None = None
) -> dict:
    """Each hard context of `root` sampled `samples` times per temperature, each reply from its
    own seed, with the runaway stop: how many replies are sound and how many loop."""
    contexts = hard_contexts(root)
    out = {"build": str(root), "contexts": len(contexts), "samples_per_context": samples}
    for t in temperatures:
        settings = conv.GenerationSettings(temperature=t, stop_runaway=True)
        replies, _, cost = sample_hard(loaded, contexts, samples, settings)
        sound = [conv.turn_problem(r.text, r.finished) is None and not r.runaway for r in replies]
        out[str(t)] = {
            "sound": sum(sound),
            "looping": sum(r.runaway for r in replies),
            "cut_off": sum(not r.finished and not r.runaway for r in replies),
            "sound_per_context": [sum(sound[i * samples : (i + 1) * samples]) for i in range(len(contexts))],
            **cost,
        }
        rows = [
            {"text": r.text, "finished": r.finished, "looping": r.runaway, "sound": ok}
            for r, ok in zip(replies, sound, strict=True)
        ]
        write_replies(replies_out, "retry_temperature", contexts, samples, str(t), rows)
    return out


# What transformers' anti-repetition options do to the hard contexts, beside plain sampling.
PENALTIES = {
    "plain": {},
    "no_repeat_ngram_size 6": {"no_repeat_ngram_size": 6},
    "no_repeat_ngram_size 4": {"no_repeat_ngram_size": 4},
    "repetition_penalty 1.15": {"repetition_penalty": 1.15},
}


def stopped_as_runaway(ids: list[int], every: int) -> bool:
    """Whether the runaway stop would have stopped this reply (written without it), looking at the
    end of each `every`-token chunk and at the reply's end."""
    return any(conv.runaway(ids[:k]) for k in range(every, len(ids), every)) or conv.runaway(ids)


def sampling_penalties(loaded, root: Path, samples: int, replies_out: Path | None = None) -> dict:
    """Each hard context of `root` sampled `samples` times with plain sampling and with each of
    PENALTIES (the default temperature and 256-token budget, no runaway stop, the same seeds): how
    many replies end, and how many of those ended and of those cut off at the limit the runaway
    stop would have stopped (`conversations.runaway` at the end of every chunk of a continuous
    build and at the reply's end, on the sampled ids). Under a no-repeat n-gram ban of at most
    RUNAWAY_NGRAM tokens the test can call nothing (the ban forbids the phrases it counts): None."""
    contexts = hard_contexts(root)
    out = {"build": str(root), "contexts": len(contexts), "samples_per_context": samples}
    for name, options in PENALTIES.items():
        settings = conv.GenerationSettings(**options)
        replies, ids, cost = sample_hard(loaded, contexts, samples, settings)
        called = [stopped_as_runaway(written, settings.continuous_chunk) for written in ids]
        ended = [r.finished for r in replies]
        blind = 0 < settings.no_repeat_ngram_size <= conv.RUNAWAY_NGRAM
        out[name] = {
            "ended": sum(ended),
            "ended_called": None if blind else sum(c for c, e in zip(called, ended, strict=True) if e),
            "cut_off": len(replies) - sum(ended),
            "cut_off_called": None if blind else sum(c for c, e in zip(called, ended, strict=True) if not e),
            "ended_per_context": [sum(ended[i * samples : (i + 1) * samples]) for i in range(len(contexts))],
            **cost,
        }
        rows = [
            {"text": r.text, "finished": r.finished, "runaway_called": None if blind else c}
            for r, c in zip(replies, called, strict=True)
        ]
        write_replies(replies_out, "sampling_penalties", contexts, samples, name, rows)
    return out


def without(options: tuple[str, ...], option: str) -> tuple[str, ...]:
    """`options` less `option` and its value."""
    i = options.index(option)
    return (*options[:i], *options[i + 2 :])


def parallel_attempts(recipe: list[str]) -> dict:
    """The clean recipe's build of `recipe` (a few conversations) with its --parallel-attempts and
    with one attempt at a time, one after the other; then both sampling in float32 (without its
    --generation-dtype bfloat16): how many conversations are the same each way."""
    import pyarrow.parquet as pq

    out = {"recipe": recipe, "options": list(CLEAN_RECIPE)}
    for dtype, options in {
        "bfloat16": CLEAN_RECIPE,
        "float32": without(CLEAN_RECIPE, "--generation-dtype"),
    }.items():
        builds, messages = {}, {}
        for name, build in {
            "parallel": options,
            "one_at_a_time": without(options, "--parallel-attempts"),
        }.items():
            with tempfile.TemporaryDirectory() as tmp:
                builds[name] = full_build(*build, *recipe, keep=Path(tmp) / "build")
                rows = pq.read_table(Path(tmp) / "build" / schema.CONVERSATIONS).to_pylist()
            messages[name] = {row["conversation_id"]: row["messages"] for row in rows}
        ids = sorted(set(messages["parallel"]) | set(messages["one_at_a_time"]))
        out[dtype] = {
            **builds,
            "conversations": len(ids),
            "same_conversations": sum(
                c in messages["parallel"] and messages["parallel"][c] == messages["one_at_a_time"].get(c)
                for c in ids
            ),
            "wall_speedup": builds["one_at_a_time"]["wall_minutes"] / builds["parallel"]["wall_minutes"],
        }
    return out


def in_process(only: set[str], args) -> dict:
    """The asked parts that run on a model loaded here (once, and only if one is asked)."""
    measures = {
        "generation": lambda loaded: generation(loaded, 50, args.sequential, args.new_tokens),
        "kv_reuse": lambda loaded: kv_reuse(loaded, 50, args.kv_rounds),
        "decode_step": lambda loaded: decode_step(loaded, rows=45, cached=1000),
        "extraction": lambda loaded: extraction(loaded, loaded.layers, args.extract_tokens, repeats=5),
        "parquet": lambda loaded: parquet(loaded.d_model, 20_000, "float16"),
        "retry_temperature": lambda loaded: retry_temperature(
            loaded, args.hard_from, args.hard_samples, replies_out=args.replies_out
        ),
        "sampling_penalties": lambda loaded: sampling_penalties(
            loaded, args.hard_from, args.hard_samples, replies_out=args.replies_out
        ),
        "row_sampler": lambda loaded: row_sampler(loaded),
    }
    asked = [name for name in measures if name in only]
    loaded = load_model(None) if asked else None
    return {name: measures[name](loaded) for name in asked}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = ["generation", "kv_reuse", "decode_step", "row_sampler", "extraction", "parquet", "full_build"]
    parts = [
        *default,
        "cleaner_build",
        "variant_build",
        "model_dtype",
        "retry_temperature",
        "sampling_penalties",
        "parallel_attempts",
        "kv_copy",
    ]  # the last 7: asked
    p.add_argument("--only", default=",".join(default), help=f"comma-separated parts: {','.join(parts)}")
    p.add_argument("--skip-full-build", action="store_true")
    p.add_argument("--new-tokens", type=int, default=128, help="per sequence; about a mean assistant turn")
    p.add_argument("--sequential", type=int, default=5, help="conversations generated one at a time")
    p.add_argument("--kv-rounds", type=int, default=2, help="rounds of the KV-reuse comparison")
    p.add_argument(
        "--extract-tokens", type=int, default=1200, help="tokens per forward (a conversation's length)"
    )
    p.add_argument(
        "--keep",
        type=Path,
        help="cleaner_build: keep each build after the default in KEEP/NAME (a new folder)",
    )
    p.add_argument(
        "--cleaner", default="", help=f"cleaner_build: other build options (default: {' '.join(CLEANER)})"
    )
    p.add_argument(
        "--variant-recipe", default="-n 10 --rounds 2", help="build options of the variant_build part"
    )
    p.add_argument(
        "--cleaner-builds",
        default=",".join(MEASURED_CLEANER_BUILDS),
        help=f"cleaner_build: the builds after the default one, of {','.join(CLEANER_BUILDS)}",
    )
    p.add_argument(
        "--hard-from", type=Path, help="retry_temperature, sampling_penalties: a default build's folder"
    )
    p.add_argument(
        "--hard-samples",
        type=int,
        default=4,
        help="retry_temperature, sampling_penalties: replies per context",
    )
    p.add_argument(
        "--replies-out",
        type=Path,
        help="retry_temperature, sampling_penalties: append every reply to this JSONL file (to read them)",
    )
    p.add_argument(
        "--parallel-recipe", default="-n 8 --rounds 2", help="parallel_attempts: the builds' other options"
    )
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    only = set(args.only.split(",")) - ({"full_build"} if args.skip_full_build else set())
    if unknown := only - set(parts):
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if only & {"retry_temperature", "sampling_penalties"} and args.hard_from is None:
        p.error("retry_temperature and sampling_penalties need --hard-from, a default build's folder")
    if args.replies_out is not None:
        args.replies_out.write_text("")  # this run's replies only
    results = in_process(only, args)  # the model is let go before the full build's subprocess
    if "full_build" in only:
        results["full_build"] = full_build()
    if "cleaner_build" in only:
        which = tuple(args.cleaner_builds.split(","))
        if unknown := set(which) - set(CLEANER_BUILDS):
            p.error(f"unknown --cleaner-builds: {', '.join(sorted(unknown))}")
        results["cleaner_build"] = cleaner_build(args.keep, tuple(args.cleaner.split()) or CLEANER, which)
    if "kv_copy" in only:
        results["kv_copy"] = kv_copy({"default": (), "clean_recipe": CLEAN_RECIPE})
    if "parallel_attempts" in only:
        results["parallel_attempts"] = parallel_attempts(args.parallel_recipe.split())
    if "variant_build" in only:
        results["variant_build"] = variant_build(args.variant_recipe.split())
    if "model_dtype" in only:
        variant = "qwen2.5-coder-1.5b-instruct"
        models = [None, *([variant] if variant_installed(variant) else [])]
        results["model_dtype"] = model_dtype(models, args.new_tokens // 2)
    print(json.dumps(results, indent=2))
    for name, result in results.items():
        print(SUMMARY[name](result))


def _called(n: int | None) -> str:
    return "the runaway test cannot call them" if n is None else f"{n} stopped as runaways"


SUMMARY = {  # one line per part
    "row_sampler": lambda r: (
        f"one sampling step, {r['rows']} rows of {r['vocabulary']} tokens, RowSampler vs the former: "
        + "; ".join(
            f"{k.removeprefix('temperature_')}: {v['speedup']:.1f}x ({v['row_sampler_ms']:.1f} vs "
            f"{v['former_ms']:.1f} ms; nucleus median {v['nucleus_median']} tokens, "
            f"{v['rows_ranked_whole']} rows ranked whole)"
            for k, v in r.items()
            if k.startswith("temperature_")
        )
    ),
    "generation": lambda g: (
        f"batched generation vs sequential: {g['batched_vs_sequential']:.1f}x "
        f"({g['batched_tokens_per_s']:.0f} vs {g['sequential_tokens_per_s']:.1f} tokens/s; target >= 8x)"
    ),
    "kv_reuse": lambda k: (
        f"KV cache reuse vs re-reading every prompt ({k['conversations']} conversations x {k['rounds']} "
        f"rounds): {k['speedup']:.1f}x ({k['reuse']['seconds']:.0f} vs {k['re-read']['seconds']:.0f} s; "
        f"prompt tokens fed {k['reuse']['prompt_tokens_fed']} vs {k['re-read']['prompt_tokens_fed']}); "
        f"{k['identical_conversations']}/{k['conversations']} conversations identical"
    ),
    "decode_step": lambda d: (
        f"decoding step, {d['rows']} rows x {d['cached_tokens']} cached tokens: BufferLayer {d['buffer_s']:.3f} s "
        f"vs DynamicLayer {d['dynamic_s']:.3f} s ({d['speedup']:.1f}x); share of a step's time, "
        + "; ".join(
            f"{kind}: " + ", ".join(f"{part} {share:.0%}" for part, share in shares.items())
            for kind, shares in d["profile_shares"].items()
        )
    ),
    "extraction": lambda e: (
        f"nnsight extraction vs plain forward: {e['nnsight_vs_plain']:.3f} "
        f"({e['nnsight_tokens_per_s']:.0f} vs {e['plain_tokens_per_s']:.0f} tokens/s, {e['layers']} layers; "
        "target >= 0.95)"
    ),
    "parquet": lambda q: (
        f"parquet: {q['write_MB_per_s']:.0f} MB/s, {q['bytes_per_token_per_layer']:.0f} B/token/layer on disk "
        f"= {q['on_disk_vs_raw']:.2f} x raw {q['raw_bytes_per_token_per_layer']} B"
    ),
    "full_build": lambda f: (
        f"default full build (50 x 5): {f['wall_minutes']:.1f} min wall (target <= 15), "
        f"{f['conversations']} conversations, {f['dropped']} dropped, {f['tokens']} tokens, "
        f"{f['dataset_MB']:.0f} MB; prompt tokens fed {f['prompt_tokens_fed']}, reused {f['prompt_tokens_reused']}"
    ),
    "cleaner_build": lambda r: "; ".join(
        f"{name} build ({' '.join(b['options']) or 'no options'}): {b['speedup']:.2f}x the default's speed "
        f"({b['wall_minutes']:.1f} min wall; target >= 1.25x), {b['new_tokens']} tokens generated for "
        f"{b['tokens']} kept ({b['generated_per_kept_token']:.2f} per kept; {b['discarded_tokens']} written by "
        f"attempts never judged), dropped {b['dropped']} of 50 "
        f"(target < 15%), verbatim repeated turns kept {b['verbatim_repeated_turns']} (target 0)"
        for name, b in r.items()
    ),
    "variant_build": lambda v: (
        f"build {' '.join(v['recipe'])}: {v['variant']['model']} ({v['variant']['strategy']}) "
        f"{v['variant']['wall_minutes']:.1f} min vs {v['default']['model']} ({v['default']['strategy']}) "
        f"{v['default']['wall_minutes']:.1f} min ({v['wall_ratio']:.1f}x the time; model load "
        f"{v['variant']['load_model_minutes']:.1f} vs {v['default']['load_model_minutes']:.1f} min); generation "
        f"{v['variant']['generation_tokens_per_s']:.1f} vs {v['default']['generation_tokens_per_s']:.1f} tokens/s "
        f"({v['generation_tokens_per_s_ratio']:.1f}x slower), extraction "
        f"{v['variant']['extraction_tokens_per_s']:.0f} vs {v['default']['extraction_tokens_per_s']:.0f} tokens/s "
        f"({v['extraction_tokens_per_s_ratio']:.1f}x slower; {v['variant']['layers']} vs "
        f"{v['default']['layers']} layers stored)"
    ),
    "retry_temperature": lambda r: (
        f"{r['contexts']} hardest assistant contexts of {r['build']} x {r['samples_per_context']} samples: "
        + "; ".join(
            f"temperature {t}: {r[t]['sound']} sound, {r[t]['looping']} looping, {r[t]['cut_off']} cut off"
            f" (sound per context {r[t]['sound_per_context']})"
            for t in r
            if isinstance(r[t], dict)
        )
    ),
    "sampling_penalties": lambda r: (
        f"{r['contexts']} hardest assistant contexts of {r['build']} x {r['samples_per_context']} samples, "
        "no runaway stop: "
        + "; ".join(
            f"{name}: {v['ended']} ended ({_called(v['ended_called'])}), {v['cut_off']} cut off "
            f"({_called(v['cut_off_called'])})"
            for name, v in r.items()
            if isinstance(v, dict)
        )
    ),
    "kv_copy": lambda r: "; ".join(
        f"{name} build: laying cached keys/values into each chunk's batch cache {b['batch_seconds']:.0f} s and "
        f"back {b['store_seconds']:.0f} s, {b['share']:.1%} of its {b['generation_seconds'] / 60:.1f} min of generation"
        for name, b in r.items()
    ),
    "parallel_attempts": lambda r: (
        f"clean recipe, {' '.join(r['recipe'])}, with --parallel-attempts vs one attempt at a time: "
        + "; ".join(
            f"sampling in {dtype}: {d['same_conversations']} of {d['conversations']} conversations the same, "
            f"{d['parallel']['wall_minutes']:.1f} vs {d['one_at_a_time']['wall_minutes']:.1f} min "
            f"wall ({d['wall_speedup']:.2f}x), {d['parallel']['discarded_tokens']} tokens never judged"
            for dtype, d in r.items()
            if isinstance(d, dict)
        )
    ),
    "model_dtype": lambda m: (
        "; ".join(
            f"{name}: bfloat16 vs float32 weights {r['speedup']:.2f}x "
            f"({r['bfloat16_tokens_per_s']:.1f} vs {r['float32_tokens_per_s']:.1f} tokens/s; next-token "
            f"distributions over {r['next_token_gap']['positions']} positions: KL "
            f"{r['next_token_gap']['kl_float32_bfloat16']:.4f}, total variation "
            f"{r['next_token_gap']['total_variation']:.3f}, same top token "
            f"{r['next_token_gap']['top1_agreement']:.1%})"
            for name, r in m.items()
            if isinstance(r, dict)
        )
        + f" (batch {m['batch']} x {m['new_tokens_per_sequence']} tokens; CPU bf16 units: "
        + f"{', '.join(m['cpu_bf16_units']) or 'none'})"
    ),
}


if __name__ == "__main__":
    main()
