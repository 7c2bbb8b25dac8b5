"""Data-parallel builds under `torchrun` or `accelerate launch`:

    torchrun --nproc-per-node 4 -m turnphase build --out data/big -n 400 --seed-per-conversation
    accelerate launch --num_processes 4 -m turnphase build --out data/big -n 400 --seed-per-conversation

Each rank builds a contiguous block of the conversations (ids lo .. hi - 1, topics cycling from lo)
as an ordinary build in `OUT/.turnphase_build/ranks/rank-R-of-W/`, with its own checkpoints, lock and
resume. When every rank is done (a barrier on the launcher's process group: gloo on CPU, NCCL on
CUDA), rank 0 links their shards into OUT under the dataset's shard naming, in rank order (rows in
conversation order, as a one-process build has them), and writes the conversations config, the
provenance and the card once. A killed rank (the launcher stops the others) is resumed by running
the same command again: finished ranks find their build complete, the others continue from their
last checkpoint, and a merge cut short is redone (links are replaced, the rank folders go last).
Conversations read with `--conversations` are split the same way, but only once each rank has read
the source (the same seeded sample everywhere) and the model's context has sifted it: rank R keeps
block R of what is left (`BuildConfig.rank_part`), under the conversations' ids in the whole.

`--seed-per-conversation` is required wherever text is generated: each conversation is sampled
from its own generator, so its text does not depend on which rank made it, nor on the rest of its
batch, wherever the numerics allow. They allow it up to the last bits of the logits: a batch of
other size or padding can change a logit by ~1e-6, which changes a sampled token only when the draw
falls that close to a boundary of the nucleus or the cumulative distribution
(tests/builders/test_parallel.py compares with a one-process build on the tiny model; on CUDA,
kernels also vary with the batch shape). Sampling in bfloat16 (`--generation-dtype`), conversations
did differ with the rest of the batch (README, "Seeds per conversation").
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from turnphase.builders import provenance, schema, writer
from turnphase.builders.config import BuildConfig
from turnphase.builders.conversations import FLAWED_TURN_COUNTS, GENERATION_STAGES
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.lock import folder_lock

log = logging.getLogger(__name__)

RANKS_DIR = "ranks"
# A rank waits at the barrier for the slowest: hours on CPU. gloo's default (30 min) would end it.
BARRIER_TIMEOUT = timedelta(days=3)


def launched() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun / accelerate launch with more than
    one process; None otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def block(n: int, rank: int, world: int) -> tuple[int, int]:
    """The conversation ids [lo, hi) of `rank`: contiguous blocks whose sizes differ by at most one."""
    return n * rank // world, n * (rank + 1) // world


def rank_dir(out: Path, rank: int, world: int) -> Path:
    from turnphase.builders.build import STATE_DIR

    return Path(out) / STATE_DIR / RANKS_DIR / f"rank-{rank:05d}-of-{world:05d}"


def check(cfg: BuildConfig, world: int) -> None:
    """What a data-parallel build needs, before any process group or model."""
    generates = not cfg.conversations or cfg.regenerate == "assistant"
    if generates and not cfg.seed_per_conversation:
        raise TurnphaseError(
            "a data-parallel build needs --seed-per-conversation, so that a conversation's text does "
            "not depend on the rank that generates it"
        )
    if not cfg.conversations and cfg.n_conversations < world:
        raise TurnphaseError(
            f"{world} ranks for {cfg.n_conversations} conversations: use at most one per conversation"
        )


def build_parallel(cfg: BuildConfig, rank: int, world: int, local_rank: int) -> dict:
    """This rank's part of the build; returns the merged provenance (on every rank)."""
    import torch.distributed as dist

    from turnphase.builders.build import STATE_DIR, build, complete_provenance, data_identity

    check(cfg, world)
    options, _ = data_identity(cfg)  # a source is read by every rank
    fingerprint = provenance.fingerprint(options)
    device = cfg.device
    if device == "cuda":
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=BARRIER_TIMEOUT)
    try:
        # Rank 0 alone looks at OUT (validating a finished build, clearing a stale state) while the
        # others wait: none may start writing its rank folder meanwhile. A failure there ends the
        # launch (the launcher stops the waiting ranks).
        if rank == 0 and complete_provenance(cfg.out, fingerprint) is not None:
            shutil.rmtree(Path(cfg.out) / STATE_DIR, ignore_errors=True)  # a merge cut short after the card
        dist.barrier()
        if not _finished(cfg.out, fingerprint):
            part = replace(
                cfg,
                out=rank_dir(cfg.out, rank, world),
                push_to_hub=None,
                device=device,
                rank_part=(rank, world),
            )
            if cfg.conversations:  # how many the model's context keeps is known after the load
                log.info(
                    "rank %d of %d: block %d of the conversations read, in %s", rank, world, rank, part.out
                )
            else:
                lo, hi = block(cfg.n_conversations, rank, world)
                part = replace(part, n_conversations=hi - lo, first_conversation=cfg.first_conversation + lo)
                log.info("rank %d of %d: conversations %d..%d in %s", rank, world, lo, hi - 1, part.out)
            build(part)
            dist.barrier()
            if rank == 0:
                merge(cfg, world, options)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return provenance.read_provenance(cfg.out)


def _finished(out: Path, fingerprint: str) -> bool:
    """Whether `out` holds this build's provenance (rank 0 has validated it by then)."""
    path = Path(out) / schema.PROVENANCE_FILE
    return (
        path.exists()
        and provenance.read_provenance(out).get("build_options", {}).get("fingerprint") == fingerprint
    )


def merge(cfg: BuildConfig, world: int, options: dict) -> dict:
    """Rank 0, once every rank's build is complete: one dataset in cfg.out from the rank folders;
    `options` are the build's (`build.data_identity`)."""
    from turnphase.builders.build import NOTHING_KEPT, STATE_DIR, counts_with_tokens

    out = Path(cfg.out)
    parts = [rank_dir(out, r, world) for r in range(world)]
    provs = [provenance.read_provenance(p) for p in parts]
    layers = provs[0]["layers"]
    if not any(p["counts"]["conversations"] for p in provs):  # as a one-process build would fail
        shutil.rmtree(out / STATE_DIR)
        if not any(out.iterdir()):
            out.rmdir()
        raise TurnphaseError(NOTHING_KEPT)
    with folder_lock(out, "turnphase build (merging ranks)"):
        for config in schema.config_names(layers, conversations=False):
            files = [f for p in parts for f in sorted((p / config).glob(schema.SHARD_GLOB))]
            folder = out / config
            if folder.exists():  # a merge cut short: its links are made again
                shutil.rmtree(folder)
            folder.mkdir()
            for index, f in enumerate(files):
                dest = writer.shard_path(out, config, index, len(files))
                with writer.atomic_path(dest) as tmp:
                    os.link(f, tmp)  # same file system, no copy; the rank folder goes last
        conversations = pa.concat_tables(
            pq.read_table(f)
            for p in parts
            for f in sorted((p / schema.CONVERSATIONS).glob(schema.SHARD_GLOB))
        )
        writer.write_shard(out, schema.CONVERSATIONS, 0, 1, conversations)
        counts = [p["counts"] for p in provs]
        merged = {
            "conversations": sum(c["conversations"] for c in counts),
            "dropped": [d for c in counts for d in c["dropped"]],
            "turns": sum(c["turns"] for c in counts),
            "retries": sum(c["retries"] for c in counts),
            **{name: sum(c.get(name, 0) for c in counts) for name in FLAWED_TURN_COUNTS},
            "rejected_attempts": dict(
                sorted(sum((Counter(c.get("rejected_attempts") or {}) for c in counts), Counter()).items())
            ),
        }
        generation = dict(provs[0]["generation"])
        timing = [p["generation"]["timing"] for p in provs]
        generation["timing"] = {
            # wall time is the slowest rank's; work (tokens) adds up
            "seconds": max(t["seconds"] for t in timing),
            **{
                k: sum(t.get(k, 0) for t in timing)
                for k in (
                    "new_tokens",
                    "prompt_tokens_fed",
                    "prompt_tokens_reused",
                    "decoding_steps",
                    "discarded_tokens",
                )
                if k != "discarded_tokens" or any(k in t for t in timing)
            },
            # seconds of work per stage, summed over the ranks like the steps they time
            "stages": {k: sum(t.get("stages", {}).get(k, 0.0) for t in timing) for k in GENERATION_STAGES},
            "load_model_seconds": max(t["load_model_seconds"] for t in timing),
            "extraction": {
                "seconds": max(t["extraction"]["seconds"] for t in timing),
                "tokens_forwarded": sum(t["extraction"]["tokens_forwarded"] for t in timing),
                "shards": sum(t["extraction"]["shards"] for t in timing),
            },
            "ranks": timing,
        }
        if cfg.conversations:  # each rank's source rows, in rank order, and its block of them
            sources = [p["generation"]["source"] for p in provs]
            generation["source"] = {k: v for k, v in sources[0].items() if k != "part"}
            generation["source"]["rows"] = [row for s in sources for row in s["rows"]]
            blocks = [s["part"] for s in sources]
        else:
            blocks = [list(block(cfg.n_conversations, r, world)) for r in range(world)]
        generation["data_parallel"] = {"ranks": world, "conversations": blocks}
        prov = provenance.make_provenance(
            model=provs[0]["model"],
            layers=layers,
            dtype=provs[0]["dtype"],
            seed=cfg.seed,
            generation=generation,
            counts=counts_with_tokens(out, layers, merged),
            license=provs[0]["license"],
            build_options={"fingerprint": provenance.fingerprint(options), **options},
        )
        writer.finalize(out, prov, repo_id=cfg.push_to_hub)
        shutil.rmtree(out / STATE_DIR)
    return prov
