"""Benchmark the build on this machine; every ratio is measured within this one run.

    .venv/bin/python scripts/bench_build.py                 # everything, ~20 min on 2 cores
    .venv/bin/python scripts/bench_build.py --skip-full-build
    .venv/bin/python scripts/bench_build.py --only decode_step,extraction
    .venv/bin/python scripts/bench_build.py --only runaway_stop   # two more default builds (each 13-55 min here)
    .venv/bin/python scripts/bench_build.py --only variant_build  # after `make qwen`; ~36 min here
    .venv/bin/python scripts/bench_build.py --only model_dtype    # a few min; the variant too after `make qwen`

1. batched generation (50 conversations) vs one conversation at a time: same prompts, same token
   budget (every sequence generates exactly --new-tokens tokens). Target: >= 8x tokens/s.
2. the build's turn-taking (50 conversations x --kv-rounds rounds) with each conversation's KV
   cache reused across turns vs every call re-reading its whole prompt: wall-time ratio, prompt
   tokens fed, and how many conversations come out identical (float noise can flip a sample).
3. One decoding step (45 rows, 1000 cached tokens) with transformers' DynamicLayer, which grows
   by torch.cat, vs the build's preallocated BufferLayer.
4. nnsight extraction of the default layers vs a plain transformers forward with
   output_hidden_states=True, on the same conversation-length token sequences. Target: >= 0.95.
5. Parquet write throughput of layer shards, and bytes per token per layer on disk vs the raw
   d_model x dtype bytes.
6. Wall time of the default full build (`turnphase build`, 50 topics x 5 rounds). Target: <= 15 min.
7. (only when asked: two more default builds) the default build with CLEANER options
   (`--stop-runaway --runaway-rewinds 3 --stop-at-question --check-repeats`: a
   reply that repeats itself is cut back to where its loop began and sampled on, up to 3 times,
   then retried; user replies end at their question; repeated and too-short turns are retried)
   vs the default build:
   wall-time ratio (target >= 1.25x), tokens generated, conversations dropped (target < 15%) and
   verbatim repeated turns kept (target 0).
8. (only when asked; needs `make qwen`) the same small build (--variant-recipe, default 10
   conversations x 2 rounds, each model's own default strategy and layers) on SmolLM2-135M and on
   the 1.5B variant, one after the other: wall time, model load, generation tokens/s, extraction
   tokens/s, and the variant's cost relative to SmolLM2.
9. (only when asked) batched decoding (50 rows, --new-tokens each) with the weights in float32 vs
   bfloat16 (`--model-dtype`), on the default model and, when its parts are installed, on the 1.5B
   variant; and whether the CPU has bfloat16 matrix units (AMX, AVX512-BF16), which decide it.
"""

from __future__ import annotations

import argparse
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
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.model import load_model
from turnphase.builders.variants import VARIANTS, part_files


def topic_chats(n: int) -> list[list[dict]]:
    """n first-turn chats, one per default topic."""
    prompts = conv.load_prompts("reply")
    return [
        c.messages + [{"role": "user", "content": f"Tell me about {c.topic}"}]
        for c in conv.new_conversations(n, prompts)
    ]


def sample(loaded, chats: list[list[dict]], new_tokens: int) -> tuple[int, float]:
    """One batched `generate` of exactly `new_tokens` per chat: (tokens generated, seconds)."""
    tok, model = loaded.tokenizer, loaded.model
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
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
    dt = time.perf_counter() - t0
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
    return {"dynamic_s": dyn, "buffer_s": buf, "speedup": dyn / buf, "rows": rows, "cached_tokens": cached}


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
        "extraction_minutes": timing["extraction"]["seconds"] / 60,
        "extraction_tokens_per_s": timing["extraction"]["tokens_forwarded"] / timing["extraction"]["seconds"],
        "layers": len(prov["layers"]),
        "conversations": prov["counts"]["conversations"],
        "dropped": len(prov["counts"]["dropped"]),
        "rejected_attempts": prov["counts"]["rejected_attempts"],
        "verbatim_repeated_turns": repeats,
        "tokens": prov["counts"]["tokens"],
        "dataset_MB": size / 1e6,
        "prompt_tokens_fed": timing["prompt_tokens_fed"],
        "prompt_tokens_reused": timing["prompt_tokens_reused"],
    }


CLEANER = (
    "--stop-runaway",
    "--runaway-rewinds",
    "3",
    "--stop-at-question",
    "--check-repeats",
)


def runaway_stop(keep: Path | None = None, cleaner: tuple[str, ...] = CLEANER) -> dict:
    """The default build, and the same with CLEANER options (a reply that repeats itself cut back
    to where its loop began and sampled on, up to 3 times, then retried; user replies stopped at
    their question; repeated and too-short turns retried; the default 4 attempts: more would also
    retry non-question user turns longer), one after the other."""
    without = full_build()
    with_stop = full_build(*cleaner, keep=keep)
    return {
        "with": with_stop,
        "without": without,
        "speedup": without["wall_minutes"] / with_stop["wall_minutes"],
    }


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
    """Batched decoding with the weights in float32, then the same model cast to bfloat16 (what
    `--model-dtype bfloat16` loads), same chats and seed, one model after the other."""
    out = {"cpu_bf16_units": cpu_bf16_units(), "batch": batch, "new_tokens_per_sequence": new_tokens}
    chats = topic_chats(batch)
    for model_id in models:
        loaded = load_model(model_id)
        rates = {}
        for dtype in ("float32", "bfloat16"):
            loaded.model.to(getattr(torch, dtype))
            sample(loaded, chats[:2], 2)  # warm-up
            n, dt = sample(loaded, chats, new_tokens)
            rates[dtype] = n / dt
        out[loaded.id] = {
            **{f"{k}_tokens_per_s": v for k, v in rates.items()},
            "speedup": rates["bfloat16"] / rates["float32"],
        }
        del loaded
    return out


def in_process(only: set[str], args) -> dict:
    loaded = load_model(None)
    measures = {
        "generation": lambda: generation(loaded, 50, args.sequential, args.new_tokens),
        "kv_reuse": lambda: kv_reuse(loaded, 50, args.kv_rounds),
        "decode_step": lambda: decode_step(loaded, rows=45, cached=1000),
        "extraction": lambda: extraction(loaded, loaded.layers, args.extract_tokens, repeats=5),
        "parquet": lambda: parquet(loaded.d_model, 20_000, "float16"),
    }
    return {name: measure() for name, measure in measures.items() if name in only}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = ["generation", "kv_reuse", "decode_step", "extraction", "parquet", "full_build"]
    parts = [*default, "runaway_stop", "variant_build", "model_dtype"]  # the last three only when asked
    p.add_argument("--only", default=",".join(default), help=f"comma-separated parts: {','.join(parts)}")
    p.add_argument("--skip-full-build", action="store_true")
    p.add_argument("--new-tokens", type=int, default=128, help="per sequence; about a mean assistant turn")
    p.add_argument("--sequential", type=int, default=5, help="conversations generated one at a time")
    p.add_argument("--kv-rounds", type=int, default=2, help="rounds of the KV-reuse comparison")
    p.add_argument(
        "--extract-tokens", type=int, default=1200, help="tokens per forward (a conversation's length)"
    )
    p.add_argument("--keep", type=Path, help="runaway_stop: keep the cleaner build in this new folder")
    p.add_argument(
        "--cleaner", default="", help=f"runaway_stop: other build options (default: {' '.join(CLEANER)})"
    )
    p.add_argument(
        "--variant-recipe", default="-n 10 --rounds 2", help="build options of the variant_build part"
    )
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    only = set(args.only.split(",")) - ({"full_build"} if args.skip_full_build else set())
    if unknown := only - set(parts):
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")
    results = in_process(only, args)  # the model is let go before the full build's subprocess
    if "full_build" in only:
        results["full_build"] = full_build()
    if "runaway_stop" in only:
        results["runaway_stop"] = runaway_stop(args.keep, tuple(args.cleaner.split()) or CLEANER)
    if "variant_build" in only:
        results["variant_build"] = variant_build(args.variant_recipe.split())
    if "model_dtype" in only:
        variant = "qwen2.5-coder-1.5b-instruct"
        models = [None, *([variant] if variant_installed(variant) else [])]
        results["model_dtype"] = model_dtype(models, args.new_tokens // 2)
    print(json.dumps(results, indent=2))
    for name, result in results.items():
        print(SUMMARY[name](result))


SUMMARY = {  # one line per part
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
        f"vs DynamicLayer {d['dynamic_s']:.3f} s ({d['speedup']:.1f}x)"
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
    "runaway_stop": lambda r: (
        f"default build with {' '.join(r['with']['options'])} vs without: {r['speedup']:.2f}x "
        f"({r['with']['wall_minutes']:.1f} vs {r['without']['wall_minutes']:.1f} min; target >= 1.25x), "
        f"{r['with']['new_tokens']} vs {r['without']['new_tokens']} tokens generated, dropped "
        f"{r['with']['dropped']} vs {r['without']['dropped']} of 50 (target < 15%), verbatim repeated turns "
        f"kept {r['with']['verbatim_repeated_turns']} vs {r['without']['verbatim_repeated_turns']} (target 0)"
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
    "model_dtype": lambda m: (
        "; ".join(
            f"{name}: bfloat16 vs float32 weights {r['speedup']:.2f}x "
            f"({r['bfloat16_tokens_per_s']:.1f} vs {r['float32_tokens_per_s']:.1f} tokens/s)"
            for name, r in m.items()
            if isinstance(r, dict)
        )
        + f" (batch {m['batch']} x {m['new_tokens_per_sequence']} tokens; CPU bf16 units: "
        + f"{', '.join(m['cpu_bf16_units']) or 'none'})"
    ),
}


if __name__ == "__main__":
    main()
