"""`turnphase build`: topics -> conversations -> tokens with phases -> activations -> dataset.

    turnphase build --out data/smollm2                       # the study's 50 topics x 5 rounds
    turnphase build --out data/small -n 4 --rounds 2 --layers 13,24
    turnphase build --out data/llama --model meta-llama/Llama-3.2-1B-Instruct

Safe and resumable: every shard is written under a temporary name and renamed; generation is
checkpointed after each batched step in `OUT/.turnphase_build/`, with the conversations' KV
caches; rerunning the same command continues from what was complete and gives the same data
(same model, seed and options).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from turnphase.builders import conversations as conv
from turnphase.builders import parallel, provenance, schema, writer
from turnphase.builders.config import WEIGHT_DTYPES, BuildConfig
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.lock import folder_lock
from turnphase.builders.log import progress

log = logging.getLogger(__name__)

NOTHING_KEPT = "every conversation failed generation; nothing to write (see --max-attempts)"
STATE_DIR = ".turnphase_build"


def _read_json(path: Path, what_to_do: str) -> dict:
    """A state or provenance file as a dict, or one line naming it and what to do."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "corrupt"
        raise TurnphaseError(f"{path} is {reason}: {what_to_do}") from None


def _prepare_out(out: Path, fingerprint: str) -> str:
    """'new', 'resume' or 'complete'; raises if `out` holds anything else."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise TurnphaseError(f"--out {out} exists and is not a folder")
    state_dir = out / STATE_DIR
    start_over = f"delete {state_dir} to start over"
    if (state_dir / "options.json").exists():
        saved = _read_json(state_dir / "options.json", start_over).get("fingerprint")
        if saved == fingerprint:
            return "resume"
        if (state_dir / "generation.json").exists() or any(out.glob(f"*/{schema.SHARD_GLOB}")):
            raise TurnphaseError(
                f"--out {out} holds an unfinished build with other options; rerun it with its "
                f"options (in {state_dir / 'options.json'}), {start_over}, or use another folder"
            )
        # A build that stopped before its first checkpoint left nothing worth resuming.
        shutil.rmtree(state_dir)
        return "new"
    if (out / schema.PROVENANCE_FILE).exists():
        prov = _read_json(
            out / schema.PROVENANCE_FILE, "the folder is not a usable dataset; use another --out"
        )
        done = (prov.get("build_options") or {}).get("fingerprint")
        if done != fingerprint:
            raise TurnphaseError(f"--out {out} holds a different build; use another folder")
        return "complete"
    if any(p.name != STATE_DIR for p in out.iterdir()):
        raise TurnphaseError(f"--out {out} is not empty and holds no turnphase build; use another folder")
    return "new"


def _check_writable(out: Path) -> None:
    """Fail before the model loads if `out` cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise writer.write_error(out, e) from None


def _source_generation(cfg: BuildConfig, info: dict) -> dict:
    """What the provenance and card say about conversations read from a source."""
    regenerated = cfg.regenerate == "assistant"
    where = info["source"] + (f" at {info['revision'][:12]}" if info.get("revision") else "")
    return {
        "strategy": "source, assistant regenerated" if regenerated else "source",
        "rounds": cfg.rounds,
        "description": (
            f"Conversations read from {where} ({info['read']} read, {info['eligible']} with at least "
            f"{cfg.rounds} rounds, {cfg.n_conversations if info['sampled'] else info['eligible']} used"
            f"{', a seeded sample' if info['sampled'] else ''}), cut at {cfg.rounds} rounds. "
            + (
                "The user turns are the source's, verbatim; every assistant turn was written by the "
                "model under study, so assistant tokens are its own."
                if regenerated
                else "Every turn is the source's, as it is: assistant turns written by another model "
                "are off-distribution for the model under study."
            )
            + f" System messages: {cfg.system}."
        ),
        "prompts": {"system_prompt": cfg.system_prompt} if cfg.system == "replace" else {},
        "source": info,
        "regenerate": cfg.regenerate,
    }


def generation_model(cfg: BuildConfig, model):
    """The model that samples the conversations: `model`, or a copy of it in generation_dtype as
    transformers would load it in that dtype (`model.cast_weights`: the rotary frequencies stay in
    float32). The activations are read with `model`, so their numerics do not change."""
    if cfg.generation_copy is None:
        return model
    import copy

    import torch

    from turnphase.builders.model import cast_weights

    return cast_weights(copy.deepcopy(model), getattr(torch, cfg.generation_copy))


def _generate(
    cfg: BuildConfig, loaded, strategy: str, state_dir: Path, source: tuple | None = None
) -> tuple[list[conv.Conversation], dict]:
    """Generate (or regenerate the assistant turns of) the conversations, checkpointed; `source`
    is (conversations, info) when they are read instead of generated."""
    if source is not None and cfg.regenerate == "none":
        convs, info = source
        return convs, _source_generation(cfg, info) | {"timing": {"seconds": 0.0, "new_tokens": 0}}
    prompts = conv.load_prompts(strategy) if source is None else {}
    settings = conv.GenerationSettings.of(cfg, strategy)
    checkpoint = state_dir / "generation.json"
    start_over = f"delete {state_dir} to start over"
    kv_sha256 = None
    if checkpoint.exists():
        saved = _read_json(checkpoint, start_over)
        try:
            convs, start, timing = (
                conv.from_json(saved["conversations"]),
                saved["steps_done"],
                saved["timing"],
            )
            kv_sha256 = saved.get("kv_cache_sha256")
        except (KeyError, TypeError, ValueError):
            raise TurnphaseError(f"{checkpoint} is corrupt: {start_over}") from None
    else:
        convs, start, timing = (
            conv.new_conversations(cfg.n_conversations, prompts, cfg.first_conversation)
            if source is None
            else _regenerating(source[0]),
            0,
            {"seconds": 0.0, "new_tokens": 0, "prompt_tokens_fed": 0, "prompt_tokens_reused": 0},
        )
    chat = conv.BatchedChat(generation_model(cfg, loaded.model), loaded.tokenizer, settings)
    # The conversations' KV caches are checkpointed with them: a resumed build then computes
    # exactly what the uninterrupted one did (a fresh prefill would differ in the last bits).
    kv_file = state_dir / f"kv_cache_{start}.pt"
    # Checked against the hash recorded with the checkpoint: a replaced or truncated file would
    # silently change every token generated from here.
    if kv_sha256 is not None and (not kv_file.exists() or provenance.sha256_file(kv_file) != kv_sha256):
        raise TurnphaseError(f"{kv_file} is missing or does not match its checkpoint: {start_over}")
    if start and kv_file.exists():
        try:
            chat.cache.load(kv_file)
        except Exception as e:  # torch refuses anything but tensors (weights_only)
            raise TurnphaseError(f"{kv_file} cannot be loaded ({type(e).__name__}): {start_over}") from None
    base, t0 = dict(timing), time.perf_counter()

    def save(steps_done: int, convs: list[conv.Conversation]) -> None:
        with chat.stage("checkpoint"):  # timed up to the cache's file: the JSON is small
            kv_sha256 = None
            if steps_done < 2 * cfg.rounds:
                kv = state_dir / f"kv_cache_{steps_done}.pt"
                with writer.atomic_path(kv) as tmp:
                    kv_sha256 = chat.cache.save(tmp)
        timing["seconds"] = base["seconds"] + time.perf_counter() - t0
        timing["new_tokens"] = base["new_tokens"] + chat.new_tokens
        timing["prompt_tokens_fed"] = base.get("prompt_tokens_fed", 0) + chat.cache.fed_tokens
        timing["prompt_tokens_reused"] = base.get("prompt_tokens_reused", 0) + chat.cache.reused_tokens
        if cfg.parallel_attempts > 1:  # of new_tokens, written by attempts that were never judged
            timing["discarded_tokens"] = base.get("discarded_tokens", 0) + chat.discarded_tokens
        timing["decoding_steps"] = base.get("decoding_steps", 0) + chat.decoding_steps
        stages = base.get("stages", {})
        timing["stages"] = {
            k: stages.get(k, 0.0) + chat.clock.seconds.get(k, 0.0) for k in conv.GENERATION_STAGES
        }
        snapshot = {"steps_done": steps_done, "conversations": conv.to_json(convs), "timing": timing}
        if kv_sha256 is not None:
            snapshot["kv_cache_sha256"] = kv_sha256
        writer.atomic_write_json(checkpoint, snapshot)
        for old in state_dir.glob("kv_cache_*.pt"):
            if old.name != f"kv_cache_{steps_done}.pt":
                old.unlink()

    conv.generate_conversations(convs, chat, prompts, settings, start_step=start, on_step=save)
    chat.cache.keep(())
    if source is None:
        generation = {
            "strategy": strategy,
            "rounds": cfg.rounds,
            "description": prompts["description"],
            "prompts": {k: v for k, v in prompts.items() if k != "description"},
        }
    else:
        generation = _source_generation(cfg, source[1])
    generation["settings"] = {f.name: getattr(settings, f.name) for f in fields(settings)}
    generation["timing"] = timing
    return convs, generation


def _regenerating(convs: list[conv.Conversation]) -> list[conv.Conversation]:
    """Source conversations reduced to their system messages, with their user turns given."""
    for c in convs:
        c.user_turns = [m["content"] for m in c.messages if m["role"] == "user"]
        c.messages = [m for m in c.messages if m["role"] == "system"]
        c.attempts = []
    return convs


def _read_source(cfg: BuildConfig) -> tuple[list[conv.Conversation], dict]:
    """Read `--conversations` (before the model loads: a bad source fails in seconds)."""
    from turnphase.builders.sources import SourceOptions, read_source

    return read_source(
        SourceOptions(
            source=cfg.conversations,
            rounds=cfg.rounds,
            n=cfg.n_conversations,
            seed=cfg.seed,
            column=cfg.messages_column,
            system=cfg.system,
            system_prompt=cfg.system_prompt,
            config=cfg.conversations_config,
            split=cfg.conversations_split,
            revision=cfg.conversations_revision,
        )
    )


def _fit_context(cfg: BuildConfig, loaded, source: tuple) -> tuple[list[conv.Conversation], dict]:
    """Skip (and count) the read conversations the model's context cannot hold."""
    from turnphase.builders.limits import chat_tokens, context_length

    convs, info = source
    budget = cfg.rounds * cfg.assistant_max_new_tokens if cfg.regenerate == "assistant" else 0
    window = context_length(loaded.model)
    lengths = []
    for c in convs:
        kept = [m for m in c.messages if cfg.regenerate == "none" or m["role"] != "assistant"]
        lengths.append(chat_tokens(loaded.tokenizer, kept) + budget)
    fits = [n <= window for n in lengths] if window else [True] * len(convs)
    if not all(fits):
        info["skipped"]["longer than the model's context"] = fits.count(False)
        convs = [c for c, ok in zip(convs, fits, strict=True) if ok]
        info["rows"] = [r for r, ok in zip(info["rows"], fits, strict=True) if ok]
        for i, c in enumerate(convs):
            c.conversation_id = i
    if not convs:
        raise TurnphaseError(
            f"{cfg.conversations}: no conversation fits the model's context of {window} tokens"
        )
    info["longest"] = max(n for n, ok in zip(lengths, fits, strict=True) if ok)
    return convs, info


def _conversations_table(kept: list[conv.Conversation], model_id: str) -> pa.Table:
    rows = [
        {
            "conversation_id": c.conversation_id,
            "topic": c.topic,
            "messages": c.messages,
            "attempts": c.attempts,
            "model": model_id,
        }
        for c in kept
    ]
    return pa.Table.from_pylist(rows, schema=schema.CONVERSATIONS_SCHEMA)


def _extract(cfg: BuildConfig, loaded, layers: list[int], kept: list[conv.Conversation], out: Path) -> dict:
    """Write tokens and layer shards, `conversations_per_shard` conversations per shard."""
    from turnphase.builders.activations import LayerReader
    from turnphase.builders.phases import label_tokens

    chunks = [
        kept[i : i + cfg.conversations_per_shard] for i in range(0, len(kept), cfg.conversations_per_shard)
    ]
    n_shards = len(chunks)
    configs = schema.config_names(layers, conversations=False)
    done = set.intersection(*(writer.complete_shards(out, c, n_shards) for c in configs))
    reader = LayerReader(loaded.model, loaded.tokenizer, layers, cfg.dtype)  # the stored dtype
    t0, n_forward = time.perf_counter(), 0
    with progress(total=len(kept), desc="activations", unit="conv") as bar:  # closed on errors too
        for index, chunk in enumerate(chunks):
            if index in done:
                bar.update(len(chunk))
                continue
            tables = [label_tokens(c.conversation_id, loaded.tokenizer, c.messages) for c in chunk]
            acts = {L: [] for L in layers}
            for per_layer in _read_batches(reader, tables, cfg.extract_batch_size, bar):
                for L in layers:
                    acts[L].append(per_layer[L])
            n_forward += sum(t.num_rows for t in tables)
            tokens = pa.concat_tables(tables)
            for L in layers:
                try:
                    table = writer.layer_table(tokens, np.concatenate(acts[L]), cfg.dtype)
                except ValueError as e:
                    raise TurnphaseError(f"layer {L}, shard {index}: {e}") from None
                writer.write_shard(out, schema.layer_config(L), index, n_shards, table)
            writer.write_shard(out, schema.TOKENS, index, n_shards, tokens)
    return {"seconds": time.perf_counter() - t0, "tokens_forwarded": n_forward, "shards": n_shards}


def _read_batches(reader, tables: list[pa.Table], size: int, bar) -> Iterator[dict[int, np.ndarray]]:
    """Each table's activations, in order, `size` conversations per forward; with more than one, the
    next batch is submitted before the last one's result is taken (on CUDA its copies to the host
    then overlap the next forward)."""
    if size == 1:
        for t in tables:
            yield reader(t.column("token_id").to_pylist())
            bar.update(1)
        return
    pending = None
    for b in range(0, len(tables), size):
        batch = [t.column("token_id").to_pylist() for t in tables[b : b + size]]
        submitted = reader.submit(batch)
        if pending is not None:
            yield from pending.result()
            bar.update(len(pending.lengths))
        pending = submitted
    yield from pending.result()
    bar.update(len(pending.lengths))


def conversation_counts(convs: list[conv.Conversation]) -> dict:
    """Kept, dropped (and why), turns, retries and rejected attempts of the conversations."""
    kept = [c for c in convs if c.dropped is None]
    attempts = [a for c in kept for a in c.attempts]
    return {
        "conversations": len(kept),
        "dropped": [
            {"conversation_id": c.conversation_id, "topic": c.topic, "reason": c.dropped}
            for c in convs
            if c.dropped
        ],
        "turns": len(attempts),
        "retries": int(sum(max(a - 1, 0) for a in attempts)),  # 0 attempts: a turn read from a source
        **{name: int(sum(getattr(c, name) for c in kept)) for name in conv.FLAWED_TURN_COUNTS},
        # every attempt that was not kept, by reason, dropped conversations included
        "rejected_attempts": dict(sorted(sum((Counter(c.rejected) for c in convs), Counter()).items())),
    }


def _counts(out: Path, convs: list[conv.Conversation], layers: list[int]) -> dict:
    return counts_with_tokens(out, layers, conversation_counts(convs))


def counts_with_tokens(out: Path, layers: list[int], conversations: dict) -> dict:
    """The counts of `conversations` (kept, dropped, turns, ...) and of the token shards in `out`."""
    import pyarrow.parquet as pq

    files = sorted((out / schema.TOKENS).glob(schema.SHARD_GLOB))
    tokens = pa.concat_tables(
        [pq.read_table(f, columns=["role", "turn_length", "index_in_turn"]) for f in files]
    )
    role = np.asarray(tokens.column("role").to_pylist())
    first = tokens.column("index_in_turn").to_numpy() == 0
    lengths = tokens.column("turn_length").to_numpy()
    per_turn = {}
    for r in ("user", "assistant"):
        n = lengths[first & (role == r)]
        per_turn[r] = {
            "turns": int(len(n)),
            "mean": float(n.mean()),
            "median": float(np.median(n)),
            "min": int(n.min()),
            "max": int(n.max()),
        }
    n_tokens = tokens.num_rows
    c = conversations
    return {
        "conversations": c["conversations"],
        "dropped": c["dropped"],
        "tokens": n_tokens,
        "tokens_by_role": {r: int((role == r).sum()) for r in schema.ROLES},
        "tokens_per_turn": per_turn,
        **{k: c[k] for k in ("turns", "retries", *conv.FLAWED_TURN_COUNTS, "rejected_attempts")},
        "rows": {schema.CONVERSATIONS: c["conversations"], schema.TOKENS: n_tokens}
        | {schema.layer_config(L): n_tokens for L in layers},
        "shards": {schema.TOKENS: len(files)},
    }


def _elapsed(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec} s" if minutes else f"{seconds:.1f} s"


def summary(out: Path, prov: dict) -> str:
    c = prov["counts"]
    lines = [
        f"conversations: {c['conversations']} kept, {len(c['dropped'])} dropped; {c['turns']} turns, "
        f"{c['retries']} retries, {c['non_question_user_turns']} user turns kept without a question"
        + (f", {n} turns kept opening like an earlier one" if (n := c.get("same_opening_turns")) else "")
        + (f", {n} cut-off turns kept to their last sentence" if (n := c.get("trimmed_turns")) else ""),
    ]
    if source := prov["generation"].get("source"):
        skipped = ", ".join(f"{why} {n}" for why, n in source["skipped"].items()) or "none"
        lines.append(
            f"read from {source['source']}: {source['read']} conversations, skipped: {skipped}; "
            f"assistant turns {'regenerated' if prov['generation']['regenerate'] == 'assistant' else 'as read'}"
        )
    rejected = c.get("rejected_attempts") or {}
    if rejected:
        lines.append("attempts retried: " + ", ".join(f"{reason} {n}" for reason, n in rejected.items()))
    lines += [f"  dropped #{d['conversation_id']} ({d['topic']}): {d['reason']}" for d in c["dropped"]]
    for role, s in c["tokens_per_turn"].items():
        lines.append(
            f"tokens per {role} turn: mean {s['mean']:.1f}, median {s['median']:.0f}, range {s['min']}..{s['max']}"
        )
    lines.append(f"tokens: {c['tokens']} ({', '.join(f'{r} {n}' for r, n in c['tokens_by_role'].items())})")
    lines.append(
        f"layers: {', '.join(map(str, prov['layers']))} ({prov['dtype']}, d_model {prov['model']['d_model']})"
    )
    t = prov["generation"].get("timing") or {}
    stages = {"model": t.get("load_model_seconds"), "generation": t.get("seconds")}
    stages["activations"] = (t.get("extraction") or {}).get("seconds")
    shown = [f"{name} {_elapsed(sec)}" for name, sec in stages.items() if sec is not None]
    if shown:
        lines.append(f"time: {', '.join(shown)} (generation summed over resumed runs)")
    if (spent := t.get("stages")) and (steps := t.get("decoding_steps")):  # generation's stages
        other = t["seconds"] - sum(spent.values())  # judging replies, templates, tokenizing
        lines.append(
            f"generation: {steps} decoding steps, {1000 * spent['decoding'] / steps:.1f} ms each "
            f"({_elapsed(spent['decoding'])}); "
            + ", ".join(f"{name} {_elapsed(spent[name])}" for name in ("prefill", "cache", "checkpoint"))
            + f", other {_elapsed(max(other, 0.0))}"
        )
    lines.append(f"dataset: {out}  (check with: turnphase validate {out})")
    return "\n".join(lines)


def complete_provenance(out: Path, fingerprint: str) -> dict | None:
    """The provenance of `out` if it holds this build, complete and valid; None if there is still
    work to do (raises if `out` holds something else, or this build damaged)."""
    if _prepare_out(out, fingerprint) != "complete":
        return None
    prov = provenance.read_provenance(out)
    rank_part = (prov.get("build_options") or {}).get("rank_part")
    if rank_part is not None and (prov.get("counts") or {}).get("conversations") == 0:
        return prov  # a rank's part that kept nothing: its provenance is all there is
    from turnphase.builders.validate import validate

    problems = validate(out)
    if problems:
        raise TurnphaseError(
            f"{out} holds this build but it is damaged ({len(problems)} problem(s), the first: "
            f"{problems[0]}); see `turnphase validate {out}`, then delete the folder to rebuild"
        )
    log.info("%s already holds this build, and it validates (nothing to do)", out)
    return prov


def build(cfg: BuildConfig) -> dict:
    """Run (or resume) a build; returns the provenance dict. The output folder is locked for the
    build's whole life: a second build into it fails at once."""
    with folder_lock(cfg.out, "turnphase build"):
        return _build(cfg)


def data_identity(cfg: BuildConfig) -> tuple[dict, tuple[list[conv.Conversation], dict] | None]:
    """The options that make the build what it is, and the conversations read from its source.

    A source is read first (a bad one fails before anything else), and what it is (file hashes,
    Hub commit) is part of the build's identity."""
    options = cfg.data_options()
    source = _read_source(cfg) if cfg.conversations else None
    if source is not None:
        options["source_identity"] = {k: source[1].get(k) for k in ("files", "revision")}
    return options, source


def _source_part(source: tuple, rank: int, world: int) -> tuple[list[conv.Conversation], dict]:
    """Block `rank` of `world` of the conversations read; they keep the ids of the whole source."""
    from turnphase.builders.parallel import block

    convs, info = source
    lo, hi = block(len(convs), rank, world)
    if lo == hi:
        raise TurnphaseError(
            f"{world} ranks for {len(convs)} conversations read: use at most one per conversation"
        )
    return convs[lo:hi], info | {"rows": info["rows"][lo:hi], "part": [lo, hi]}


def _build(cfg: BuildConfig) -> dict:
    options, source = data_identity(cfg)
    fingerprint = provenance.fingerprint(options)
    out = cfg.out
    done = complete_provenance(out, fingerprint)
    if done is not None:
        return done

    created = not out.exists()
    _check_writable(out)
    state_dir = out / STATE_DIR
    try:
        from turnphase.builders.limits import check_build_limits
        from turnphase.builders.model import load_model

        t_model = time.perf_counter()
        loaded = load_model(
            cfg.model,
            layers=cfg.layers,
            revision=cfg.model_revision,
            trust_remote_code=cfg.trust_remote_code,
            device=cfg.device,
            dtype=cfg.model_dtype,
        )
        t_model = time.perf_counter() - t_model
        log.info(
            "model %s: %d layers, d_model %d, %.0fM parameters (%.1f s); storing layers %s",
            loaded.id,
            loaded.n_layers,
            loaded.d_model,
            loaded.n_params / 1e6,
            t_model,
            ",".join(map(str, loaded.layers)),
        )
        strategy = cfg.resolve_strategy(loaded.n_params)
        source = source and _fit_context(cfg, loaded, source)
        if source is not None and cfg.rank_part is not None:
            source = _source_part(source, *cfg.rank_part)
        if source is None or cfg.regenerate == "assistant":  # nothing is generated otherwise
            check_build_limits(cfg, loaded, conv.load_prompts(strategy), source and source[1]["longest"])
        writer.atomic_write_json(state_dir / "options.json", {"fingerprint": fingerprint, "options": options})
        writer.remove_temp_files(out)
        convs, generation = _generate(cfg, loaded, strategy, state_dir, source)
        kept = [c for c in convs if c.dropped is None]
        if not kept and cfg.rank_part is None:
            shutil.rmtree(state_dir)  # a rerun would fail the same way: leave nothing behind
            raise TurnphaseError(NOTHING_KEPT)
        if kept:
            writer.write_shard(out, schema.CONVERSATIONS, 0, 1, _conversations_table(kept, loaded.id))
        extraction = _extract(cfg, loaded, loaded.layers, kept, out)
    except BaseException:
        # Before the first checkpoint there is nothing to resume: leave nothing that would block
        # the folder (a later checkpoint is kept, and rerunning resumes from it).
        if not (state_dir / "generation.json").exists():
            shutil.rmtree(state_dir, ignore_errors=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
        raise
    generation["timing"]["extraction"] = extraction
    generation["timing"]["load_model_seconds"] = t_model
    prov = provenance.make_provenance(
        model=loaded.describe(),
        layers=loaded.layers,
        dtype=cfg.dtype,
        seed=cfg.seed,
        generation=generation,
        counts=_counts(out, convs, loaded.layers) if kept else conversation_counts(convs),
        license=cfg.license or (loaded.license if loaded.license not in (None, "unknown") else "other"),
        build_options={"fingerprint": fingerprint, **options},
    )
    if kept:
        writer.finalize(out, prov, repo_id=cfg.push_to_hub)
    else:  # a rank's part whose every conversation was dropped: its provenance is all there is
        writer.atomic_write_json(out / schema.PROVENANCE_FILE, prov)
    shutil.rmtree(state_dir)
    return prov


# ---- CLI -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BuildConfig  # every default has its one home there; help shows it
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create (or resume)")
    g = p.add_argument_group("the model")
    g.add_argument(
        "--model",
        default=d.model,
        help="Hugging Face id, local folder or .gguf file (default: embedded SmolLM2-135M-Instruct)",
    )
    g.add_argument("--model-revision", default=d.model_revision, help="the Hub model's branch, tag or commit")
    g.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's own code (off unless asked)"
    )
    g.add_argument("--device", default=d.device, help="torch device, e.g. cpu or cuda")
    g.add_argument(
        "--model-dtype",
        choices=WEIGHT_DTYPES,
        default=d.model_dtype,
        help="the weights' dtype in memory (bfloat16 on a GPU); the stored dtype is --dtype",
    )
    g.add_argument(
        "--compile-decoding",
        action="store_true",
        help="decode with a static KV cache and a compiled step (CUDA graphs on a GPU), for GPUs, "
        "whose decoding of a small model is bound by launching kernels; slower on a CPU",
    )
    g.add_argument(
        "--generation-dtype",
        choices=WEIGHT_DTYPES,
        default=d.generation_dtype,
        help="sample the conversations with a copy of the weights in this dtype, and read the "
        "activations with --model-dtype's (bfloat16: 1.5x faster decoding of SmolLM2 on CPUs "
        "with AMX or AVX512-BF16)",
    )

    g = p.add_argument_group("generated conversations")
    g.add_argument(
        "-n",
        "--n-conversations",
        type=int,
        default=d.n_conversations,
        help="conversations (topics cycle past 50)",
    )
    g.add_argument("--rounds", type=int, default=d.rounds, help="user+assistant rounds per conversation")
    g.add_argument(
        "--strategy",
        choices=["auto", "study", "reply"],
        default=d.strategy,
        help="prompting: the study's dual-role prompts, or ask for the user's question as a reply "
        "(auto: reply below 1B parameters)",
    )
    g.add_argument(
        "--max-attempts",
        type=int,
        default=d.max_attempts,
        help="attempts per turn before a conversation is dropped",
    )
    g.add_argument(
        "--user-max-new-tokens", type=int, default=d.user_max_new_tokens, help="token budget of a user turn"
    )
    g.add_argument(
        "--assistant-max-new-tokens",
        type=int,
        default=d.assistant_max_new_tokens,
        help="token budget of an assistant turn",
    )
    g.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature")
    g.add_argument(
        "--retry-temperature",
        type=float,
        default=d.retry_temperature,
        help="sampling temperature of a turn's retries, its attempts after the first (default: "
        "--temperature); a higher one breaks the loops that make a turn fail again and again",
    )
    g.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling: the probability mass kept")
    g.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="conversations per batched generate call"
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help="sampling seed (the same seed gives the same data)"
    )
    g.add_argument(
        "--seed-per-conversation",
        action="store_true",
        help="sample each conversation with its own seeded generator, so its text does not depend on "
        "--batch-size or on the rest of its batch (where the numerics allow); off: one per batch",
    )
    g.add_argument(
        "--stop-runaway",
        action="store_true",
        help="retry a reply that has started repeating itself (half the 6-token phrases of its last 64 "
        "tokens said before in it), stopped at the end of its 64-token chunk or when it ends",
    )
    g.add_argument(
        "--runaway-rewinds",
        type=int,
        default=d.runaway_rewinds,
        metavar="N",
        help="with --stop-runaway: cut a looping reply back to where its loop began and sample on from "
        "there, up to N times, before retrying it from the start (0: off)",
    )
    g.add_argument(
        "--stop-at-question",
        action="store_true",
        help="reply strategy: stop a user-turn reply as soon as it holds a question (the rest is not kept)",
    )
    g.add_argument(
        "--trim-cut-off",
        action="store_true",
        help="with --stop-runaway: keep a reply cut off at the token limit up to its last full sentence "
        "(if that keeps half of it) instead of retrying it; counted",
    )
    g.add_argument(
        "--continuous",
        action="store_true",
        help="continuous batching: each conversation moves on as soon as its turn is kept, and every "
        "chunk of 32 tokens batches what each live conversation is writing, a turn or a retry (needs "
        "--seed-per-conversation)",
    )
    g.add_argument(
        "--parallel-attempts",
        type=int,
        default=d.parallel_attempts,
        metavar="N",
        help="with --continuous: once a turn has had an attempt rejected, sample up to N of its next "
        "attempts at once in batch rows no conversation needs (judged in order: the data do not change)",
    )
    g.add_argument(
        "--check-repeats",
        action="store_true",
        help="retry a turn that repeats an earlier one of its conversation, and a user turn under 3 words",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=d.repetition_penalty,
        help="transformers' repetition penalty on the tokens the reply has used (off unless given)",
    )
    g.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=d.no_repeat_ngram_size,
        help="ban an n-token phrase a reply has already said (0: off)",
    )

    g = p.add_argument_group("conversations read from a source (instead of generated)")
    g.add_argument(
        "--conversations",
        metavar="SOURCE",
        default=d.conversations,
        help="a .jsonl/.json/.parquet file, a folder of them, or a Hub dataset id "
        "(layouts: messages, conversation, conversations)",
    )
    g.add_argument("--conversations-config", default=d.conversations_config, help="its Hub dataset config")
    g.add_argument("--conversations-split", default=d.conversations_split, help="its Hub dataset split")
    g.add_argument(
        "--conversations-revision", default=d.conversations_revision, help="its Hub dataset revision"
    )
    g.add_argument(
        "--messages-column", default=d.messages_column, help="the column holding each conversation's messages"
    )
    g.add_argument(
        "--system",
        choices=["keep", "drop", "replace"],
        default=d.system,
        help="the source's system messages (replace: by --system-prompt)",
    )
    g.add_argument(
        "--system-prompt", default=d.system_prompt, help="the system message with --system replace"
    )
    g.add_argument(
        "--regenerate",
        choices=["none", "assistant"],
        default=d.regenerate,
        help="none: store the source's turns as they are; assistant: keep its user turns and let the "
        "model write every assistant turn (its own tokens)",
    )

    g = p.add_argument_group("what is stored")
    g.add_argument(
        "--layers", default=d.layers, help="auto (relative depth 0.44-0.81), all, 13-24 or 13,17,24"
    )
    g.add_argument("--dtype", choices=["float16", "float32"], default=d.dtype, help="activation storage type")
    g.add_argument(
        "--conversations-per-shard", type=int, default=d.conversations_per_shard, help="Parquet shard size"
    )
    g.add_argument(
        "--extract-batch-size",
        type=int,
        default=d.extract_batch_size,
        help="conversations per extraction forward, right-padded and masked (a GPU's batch)",
    )
    g.add_argument(
        "--license",
        default=d.license,
        help="the dataset's licence, for its card (default: the model's, where it states one, else other)",
    )

    g = p.add_argument_group("publishing")
    g.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        default=d.push_to_hub,
        help="push the finished folder to this dataset repo",
    )
    g.add_argument("--private", action="store_true", help="create the Hub repo as private")
    g.add_argument("--hub-revision", default=d.hub_revision, help="branch to push to (created if missing)")


def run(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(BuildConfig)}
    cfg = BuildConfig(**{k: v for k, v in vars(args).items() if k in names})
    ranks = parallel.launched()  # under torchrun / accelerate launch: this rank's part, then one merge
    prov = build(cfg) if ranks is None else parallel.build_parallel(cfg, *ranks)
    if ranks is not None and ranks[0] != 0:
        return 0  # rank 0 reports and pushes
    log.info("%s", summary(cfg.out, prov))
    if cfg.push_to_hub:
        from turnphase.builders.push import push_folder

        push_folder(cfg.out, cfg.push_to_hub, private=cfg.private, revision=cfg.hub_revision)
    return 0
