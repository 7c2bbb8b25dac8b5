"""Conversations: the model plays both roles, batched across conversations.

For every round, all live conversations get their user turn in one batched `generate` call, then
their assistant turn in another. A broken turn (a "User:"/"Assistant:" role label, an empty turn,
a turn cut off at the token limit) is retried, only for the conversations that need it, up to
`max_attempts` times; a conversation whose turn still fails is dropped and reported. A user turn
that is not a question is retried too, but kept after the last attempt, and counted.

With `continuous` (continuous batching, `generate_continuously`), there are no such steps: each
conversation moves on as soon as its turn is settled, and every chunk of decoding batches what each
live conversation is writing (a user turn, an assistant turn or a retry), so the batch stays full.

Two prompting strategies (prompts live in `prompts/*.json`):
- `study`: the study's exact procedure (dual-role system prompt, a temporary "act as the User"
  system message before each user turn, removed afterwards).
- `reply`: for small models that cannot play the user from those instructions, the user's
  question is asked for as an ordinary reply in a separate short chat and extracted from it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any, Literal, NamedTuple

from turnphase.builders.config import BuildConfig
from turnphase.builders.log import progress
from turnphase.timing import Stopwatch

log = logging.getLogger(__name__)
Strategy = Literal["study", "reply"]
# Where generation's time goes (`BatchedChat.clock`; a build adds its checkpoints), recorded in
# provenance's generation.timing.stages with the count of decoding steps.
GENERATION_STAGES = ("prefill", "decoding", "cache", "checkpoint")
ROLE_LABEL = re.compile(r"(?im)^\W*(user|assistant)\W*:")
# Wrappers a small model puts around the question it was asked for:
#   One skeptical follow-up question is: "Why ...?"   /   **Question:** Why ...?
QUOTED_QUESTION = re.compile(r"[\"“]([^\"”]{3,}?\?)\s*[\"”]")
ECHO = re.compile(r"(?i)follow-up question|act as the user|reply with the question|question that a curious")
LEADING_LABEL = re.compile(r"(?i)^.{0,60}?\bquestion\b[^:?]{0,40}:\s*")


def load_topics() -> list[str]:
    text = (resources.files("turnphase.builders") / "prompts" / "topics.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_prompts(strategy: Strategy) -> dict:
    return json.loads((resources.files("turnphase.builders") / "prompts" / f"{strategy}.json").read_text())


def extract_question(text: str) -> str | None:
    """The question inside a reply, without quotes or labels; None if there is none."""
    text = text.strip()
    if m := QUOTED_QUESTION.search(text):
        return m.group(1).strip()
    for line in text.splitlines():
        line = LEADING_LABEL.sub("", line.strip().strip("*#>- ")).strip().strip("\"'*“”")
        if not line:
            continue
        sentences = re.split(r"(?<=[.!?])\s+", line)
        for s in sentences:
            # "One question a student would ask: Why ...?" -> "Why ...?"
            s = s.rsplit(": ", 1)[-1].strip().strip("\"'*“”")
            if s.endswith("?") and len(s) > 3:
                return s
    return None


def turn_problem(text: str, finished: bool) -> str | None:
    """Why a generated turn cannot be kept, or None."""
    if ECHO.search(text):
        return "repeats the instruction"
    if not finished:
        return "cut off at the token limit"
    if not text.strip():
        return "empty"
    if ROLE_LABEL.search(text):
        return "role label (User:/Assistant:)"
    return None


RUNAWAY_NGRAM = 6  # tokens: a phrase
RUNAWAY_WINDOW = 64  # the tail of a reply looked at (one assistant chunk)
RUNAWAY_SHARE = 0.5  # a tail whose phrases were mostly said before in the reply is looping
RUNAWAY_MIN = 24  # phrases: a tail shorter than this is too short to call
MIN_USER_WORDS = 3  # a user turn shorter than this is no question ("mean?")
OPENING_WORDS = 10  # a turn that opens with the same 10 words as an earlier one: retried, kept last
NEAR_REPEAT = 0.9  # difflib similarity of the words at or above which a turn repeats an earlier one
TRIM_MIN_SHARE = 0.5  # a cut-off reply is kept to its last sentence only if that keeps half its text
# A sentence's end: ".", "!" or "?", closing quotes, brackets or markdown, then a space or the end.
SENTENCE_END = re.compile(r"[.!?][\"'”’)\]*_]*(?=\s|$)")


# The reason a loop cut back by `runaway_rewinds` is counted under (with the attempts rejected).
REWOUND = "runaway loop cut back, sampled on (same attempt)"


def runaway(ids: Sequence[int]) -> bool:
    """True when a reply has started repeating itself: at least half of the RUNAWAY_NGRAM-token
    phrases ending in its last RUNAWAY_WINDOW tokens occurred earlier in the reply.

    Small models loop under sampling by saying a sentence over and over with small changes ("It's a
    perfect example of how storytelling can..." / "This example is a perfect example of how..."),
    so the test counts repeated phrases rather than asking for an exact period. How the stop reads
    on SmolLM2's replies (plain sampling at the default build's 13 hardest assistant contexts, 6
    each, the test at each 32-token chunk's end and the reply's: `scripts/bench_build.py --only
    sampling_penalties --replies-out FILE`, read by hand): of the 24 cut off at the 256-token limit
    it stops 16, each a sentence or paragraph said over and over; of the 8 it leaves, 1 restates a
    paragraph with changes and 7 ramble on; of the 54 that ended it stops 7, four of them one
    sentence said three or more times."""
    n = RUNAWAY_NGRAM
    phrases = [tuple(ids[k - n : k]) for k in range(n, len(ids) + 1)]
    start = max(0, len(phrases) - RUNAWAY_WINDOW)
    if len(phrases) - start < RUNAWAY_MIN:
        return False
    seen, repeated = set(phrases[:start]), 0
    for phrase in phrases[start:]:
        repeated += phrase in seen
        seen.add(phrase)
    return repeated >= RUNAWAY_SHARE * (len(phrases) - start)


def chunk_size(max_new_tokens: int) -> int:
    """Tokens per decoding chunk of a reply of this budget (256 -> 64, 64 -> 32): a batch's
    unfinished rows go on after each chunk, and the runaway stop looks at each chunk's end."""
    return max(32, max_new_tokens // 4)


def loop_start(ids: Sequence[int]) -> int:
    """Where the loop of a reply `runaway` calls begins: the first said-before phrase from which on
    at least RUNAWAY_SHARE of the phrases were said before, taken back to that phrase's first
    occurrence (the first time the looping sentence was said). Cutting the reply there and
    sampling on resamples the sentence the loop grew from; len(ids) when there is no such phrase."""
    n = RUNAWAY_NGRAM
    phrases = [tuple(ids[k : k + n]) for k in range(len(ids) - n + 1)]
    first: dict[tuple, int] = {}
    repeated = []
    for j, phrase in enumerate(phrases):
        repeated.append(phrase in first)
        first.setdefault(phrase, j)
    start, count = None, 0
    for j in range(len(phrases) - 1, -1, -1):
        count += repeated[j]
        if repeated[j] and count >= RUNAWAY_SHARE * (len(phrases) - j):
            start = j
    return len(ids) if start is None else first[phrases[start]]


def trim_to_sentence(text: str) -> str | None:
    """A reply cut off at the token limit, up to the end of its last full sentence, or None when
    that would keep less than TRIM_MIN_SHARE of it. A number before the mark ends no sentence
    (a list's "2.", and so also "in 2023.")."""
    end = None
    for m in SENTENCE_END.finditer(text):
        before = text[: m.start()].rsplit(None, 1)  # [..., the word before the mark]
        if before and not before[-1].isdigit():
            end = m.end()
    if end is None or end < TRIM_MIN_SHARE * len(text.rstrip()):
        return None
    return text[:end]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def repeats(text: str, earlier: str) -> bool:
    """`text` repeats `earlier` exactly or nearly: the same words, or >= 90% similar words (difflib)."""
    a, b = _words(text), _words(earlier)
    if not a or not b:
        return False
    return a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= NEAR_REPEAT


def same_opening(text: str, earlier: str) -> bool:
    """`text` opens with the same OPENING_WORDS words as `earlier` ("The answer is no, it is not
    possible to travel with bicycles" three times), whatever follows."""
    a, b = _words(text), _words(earlier)
    return len(a) >= OPENING_WORDS and a[:OPENING_WORDS] == b[:OPENING_WORDS]


# A flaw, not a fault: such a turn is retried, and kept after the last attempt if no better came
# (like a user turn without a question), so that a model's habit of opening alike drops nothing.
SAME_OPENING = "opens like an earlier turn"
NO_QUESTION = "user turn without a question"
# The turns kept with a flaw, counted per conversation (and in the provenance, under these names).
FLAWED_TURN_COUNTS = ("non_question_user_turns", "same_opening_turns", "trimmed_turns")


def conversation_problem(text: str, role: str, messages: list[dict]) -> str | None:
    """Why a turn that is sound on its own does not fit its conversation, or None; SAME_OPENING
    is a flaw to retry, the others faults."""
    if role == "user" and len(_words(text)) < MIN_USER_WORDS:
        return f"user turn under {MIN_USER_WORDS} words"
    earlier = [m["content"] for m in messages if m["role"] in ("user", "assistant")]
    if any(repeats(text, e) for e in earlier):
        return "repeats an earlier turn"
    if any(same_opening(text, e) for e in earlier):
        return SAME_OPENING
    return None


class Reply(NamedTuple):
    text: str
    finished: bool  # ended with an end-of-turn token
    runaway: bool = False  # repeats itself (`runaway`): stopped early, or ended that way
    rewinds: int = 0  # loops cut back to where they began and sampled on from there


class ReplyRepetition:
    """transformers' repetition penalty and no-repeat n-gram ban, over each row's reply so far.

    `generate`'s own options look at the `input_ids` of one call, which with a reused cache are
    only the uncached tokens: a penalty or ban would forget the reply's earlier chunks. This
    processor sees the reply's tokens from earlier chunks (`written`, per row) plus those this call
    generated (from column `start` on); the prompt is not penalised (the chat template repeats
    its role tokens every turn). A logits processor for `generate(logits_processor=...)`."""

    def __init__(self, written: list[list[int]], start: int, penalty: float | None, ngram: int):
        self.written, self.start, self.penalty, self.ngram = written, start, penalty, ngram

    def __call__(self, input_ids, scores):
        import torch

        for b, before in enumerate(self.written):
            reply = before + input_ids[b, self.start :].tolist()
            if self.penalty is not None and reply:
                ids = torch.tensor(sorted(set(reply)), device=scores.device)
                s = scores[b, ids]
                scores[b, ids] = torch.where(s < 0, s * self.penalty, s / self.penalty)
            n = self.ngram
            if n and len(reply) >= n:
                prefix = reply[len(reply) - n + 1 :]
                banned = [
                    reply[k + n - 1] for k in range(len(reply) - n + 1) if reply[k : k + n - 1] == prefix
                ]
                scores[b, banned] = -float("inf")
        return scores


NUCLEUS_CANDIDATES = 256  # tokens ranked for a row's nucleus; a row whose nucleus is wider is sorted whole


def nucleus_draw(cum, u, top_p: float | None):
    """Per row (a [B, 1] tensor), the position in `cum`, a row's cumulative probabilities in the
    order its tokens were ranked, of the token a uniform draw `u` in [0, 1) picks from the nucleus:
    the leading tokens through the first whose cumulative probability reaches `top_p` (every token
    when None), in proportion to their probabilities (inverse CDF)."""
    import torch

    n = cum.shape[-1] if top_p is None else (cum < top_p).sum(-1, keepdim=True) + 1
    n = torch.as_tensor(n, device=cum.device).clamp(max=cum.shape[-1]).expand(cum.shape[0], 1)
    mass = cum.gather(-1, n - 1)
    return torch.minimum(torch.searchsorted(cum, u[:, None] * mass, right=True), n - 1)


class RowSampler:
    """Draws each row's next token with the row's own `torch.Generator`, then leaves `generate` no
    choice (every other token at -inf; `BatchedChat.advance` then decodes greedily), so a row's
    sample does not depend on the batch around it.

    Nucleus sampling by inverse CDF: scores / temperature (one, or one per row), softmax, the
    smallest set of most likely tokens whose probability reaches `top_p` (the set transformers'
    TopPLogitsWarper keeps, up to float rounding at its edge), and one uniform draw from the row's
    generator picks a token of it in proportion to its probability. Only the NUCLEUS_CANDIDATES
    most likely tokens are ranked, unless a row's nucleus is wider: sorting the whole vocabulary
    and drawing an exponential per token (`torch.multinomial`) for each row took as long as the
    model's forward at 50 rows on SmolLM2. A logits processor for `generate(logits_processor=...)`,
    last in the list."""

    def __init__(self, generators: list, temperature: float | Sequence[float], top_p: float):
        self.generators, self.temperature, self.top_p = generators, temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        temperature = torch.as_tensor(self.temperature, dtype=torch.float32, device=scores.device)
        probs = (scores.float() / (temperature[:, None] if temperature.ndim else temperature)).softmax(-1)
        u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in self.generators])
        if self.top_p >= 1:  # every token: no ranking needed
            chosen = nucleus_draw(probs.cumsum(-1), u, None)
        else:
            ranked, index = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
            cum = ranked.cumsum(-1)
            chosen = index.gather(-1, nucleus_draw(cum, u, self.top_p))
            wide = (cum[:, -1] < self.top_p).nonzero().flatten() if cum.shape[-1] < probs.shape[-1] else []
            if len(wide):
                ranked, index = probs[wide].sort(dim=-1, descending=True)
                chosen[wide] = index.gather(-1, nucleus_draw(ranked.cumsum(-1), u[wide], self.top_p))
        only = torch.full_like(scores, -float("inf"))
        return only.scatter_(1, chosen, 0.0)


class StepClock:
    """Moves a chat's clock from "prefill" to "decoding" once a `generate` call's first forward has
    its logits, and counts the decoding steps after it (`BatchedChat.decoding_steps`). A logits
    processor (processors run eagerly, outside a compiled decoding step), first in the list; used
    as a context manager around the call, which leaves "decoding" when the call ends."""

    def __init__(self, chat: BatchedChat):
        self.chat, self.forwards = chat, 0

    def __call__(self, input_ids, scores):
        if self.forwards == 0:
            self.chat.settle()
            self.chat.clock.enter("decoding")
        self.forwards += 1
        return scores

    def __enter__(self) -> StepClock:
        return self

    def __exit__(self, *exc) -> None:
        if self.forwards:
            self.chat.settle()
            self.chat.clock.leave()
            self.chat.decoding_steps += self.forwards - 1


class QuestionStop:
    """Ends a row's reply once it holds a question of at least MIN_USER_WORDS words
    (`extract_question`), looked for whenever the row samples a token with a "?" in it. `stopped`:
    row -> the tokens this call generated up to that one. A stopping criterion for
    `generate(stopping_criteria=...)`; the rows stopped are padded until the call ends."""

    def __init__(
        self,
        tokenizer,
        marks: frozenset[int],
        written: list[list[int]],
        start: int,
        asks: Sequence[bool] | None = None,
    ):
        self.tokenizer, self.marks, self.written, self.start = tokenizer, marks, written, start
        self.asks = [True] * len(written) if asks is None else list(asks)  # the rows it watches
        self.stopped: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        for b, last in enumerate(input_ids[:, -1].tolist()):
            if self.asks[b] and b not in self.stopped and last in self.marks:
                new = input_ids[b, self.start :].tolist()
                text = self.tokenizer.decode(self.written[b] + new, skip_special_tokens=True)
                if (q := extract_question(text)) and len(_words(q)) >= MIN_USER_WORDS:
                    self.stopped[b] = len(new)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done[list(self.stopped)] = True
        return done


@dataclass
class Conversation:
    conversation_id: int
    topic: str
    messages: list[dict]  # the final conversation: system prompt, then user/assistant turns
    attempts: list[int] = field(default_factory=list)  # per non-system message
    non_question_user_turns: int = 0
    same_opening_turns: int = 0  # kept although they open like an earlier turn (SAME_OPENING)
    trimmed_turns: int = 0  # cut off at the token limit, kept to their last sentence (trim_cut_off)
    dropped: str | None = None  # why the conversation was left out
    rejected: dict[str, int] = field(default_factory=dict)  # attempts rejected, by reason
    # Given user turns, one per round (a source read with `--regenerate assistant`): kept verbatim,
    # and only the assistant turns are generated.
    user_turns: list[str] | None = None

    @property
    def last_answer(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "assistant")


@dataclass
class GenerationSettings:
    """What generation needs of a build's options; the defaults are BuildConfig's (their one home)."""

    strategy: Strategy = "reply"
    rounds: int = BuildConfig.rounds
    max_attempts: int = BuildConfig.max_attempts
    user_max_new_tokens: int = BuildConfig.user_max_new_tokens
    assistant_max_new_tokens: int = BuildConfig.assistant_max_new_tokens
    temperature: float = BuildConfig.temperature
    retry_temperature: float | None = BuildConfig.retry_temperature  # None: temperature
    top_p: float = BuildConfig.top_p
    batch_size: int = BuildConfig.batch_size
    seed: int = BuildConfig.seed
    seed_per_conversation: bool = BuildConfig.seed_per_conversation
    stop_runaway: bool = BuildConfig.stop_runaway  # stop a reply as soon as it repeats itself
    runaway_rewinds: int = BuildConfig.runaway_rewinds  # a loop cut and sampled on, per reply
    stop_at_question: bool = BuildConfig.stop_at_question  # reply strategy: user replies end at a question
    trim_cut_off: bool = BuildConfig.trim_cut_off  # keep a cut-off reply to its last sentence
    check_repeats: bool = BuildConfig.check_repeats  # retry repeated turns, and user turns under 3 words
    repetition_penalty: float | None = BuildConfig.repetition_penalty  # transformers' option
    no_repeat_ngram_size: int = BuildConfig.no_repeat_ngram_size  # transformers' option; 0 = off
    continuous: bool = BuildConfig.continuous  # continuous batching (generate_continuously)
    parallel_attempts: int = BuildConfig.parallel_attempts  # attempts of one turn in flight at once
    compile_decoding: bool = BuildConfig.compile_decoding  # a static cache and a compiled decoding step

    @property
    def continuous_chunk(self) -> int:
        """Tokens per decoding chunk under continuous batching: the shorter role's chunk."""
        return min(chunk_size(n) for n in (self.user_max_new_tokens, self.assistant_max_new_tokens))

    def temperature_of(self, attempt: int) -> float:
        """The sampling temperature of attempt `attempt` (0-based) at a turn."""
        return self.temperature if attempt == 0 or self.retry_temperature is None else self.retry_temperature

    @classmethod
    def of(cls, config: BuildConfig, strategy: Strategy) -> GenerationSettings:
        """A build's generation settings: its options of the same names."""
        return cls(
            strategy=strategy,
            **{f.name: getattr(config, f.name) for f in fields(cls) if f.name != "strategy"},
        )


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """The ids that end a turn: the generation config's end-of-sequence ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, list | tuple) else [eos]
    return sorted({e for e in [*eos, tokenizer.eos_token_id] if e is not None})


def step_seed(seed: int, *parts: int | str) -> int:
    """A seed per (step, attempt, batch) or (step, attempt, "conversation", id): a resumed build
    replays each call with the same RNG."""
    return int.from_bytes(hashlib.sha256(repr((seed, *parts)).encode()).digest()[:4], "little")


@dataclass
class Row:
    """One reply being written, over the chunks (`BatchedChat.advance` calls) it takes."""

    ids: list[int]  # the prompt's token ids
    key: Hashable  # its cache entry
    max_new_tokens: int
    generator: Any = None  # its own torch.Generator (RowSampler); None: the call's seed
    temperature: float = BuildConfig.temperature
    asks: bool = False  # ends at its first question (QuestionStop)
    written: list[int] = field(default_factory=list)
    finished: bool = False  # ended with an end-of-turn token
    looping: bool = False  # repeats itself (`runaway`)
    rewinds: int = 0
    done: bool = False
    generated: int = 0  # tokens sampled, kept or not (end-of-turn and rewound ones too)


class BatchedChat:
    """Batched sampling from a chat model with left padding, reusing each conversation's KV
    cache from one call to the next (see `prefix_cache`).

    `clock` times where generation goes, in stages (`turnphase.timing.Stopwatch`; a build adds
    "checkpoint"):
    - "prefill": each `generate` call up to its first forward's logits (what the cache does not
      hold: a prompt's new tokens, or in a later chunk the last token sampled), and `prefill`;
    - "decoding": the forwards after that, one token per row each (`decoding_steps` counts them),
      with their sampling and stopping, so decoding seconds / steps is a step's time as a build
      runs it (`scripts/bench_gpu.py --generation` times steps alone);
    - "cache": prefixes laid out before a call and kept after it.
    On a GPU each stage waits for its kernels before it ends, so its seconds are its own."""

    def __init__(self, model, tokenizer, settings: GenerationSettings, *, reuse_cache: bool = True):
        from turnphase.builders.prefix_cache import PrefixCache  # imports torch

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.eos_ids = end_of_turn_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.cache = PrefixCache(model.config, reuse=reuse_cache, static=settings.compile_decoding)
        if settings.compile_decoding and not self.cache.static:
            log.warning("--compile-decoding: this model's cache is not a plain one; decoding is not compiled")
        elif settings.compile_decoding and model.device.type != "cuda":
            log.warning("--compile-decoding on %s: slower than eager decoding on CPUs (README)", model.device)
        self.new_tokens = 0
        self.discarded_tokens = 0  # written by attempts dropped unjudged (parallel_attempts)
        self.on_tokens: Callable[[int], None] | None = None  # told each chunk's new tokens (progress)
        self.clock = Stopwatch()
        self.decoding_steps = 0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage on `clock`; on a GPU its kernels are waited for before it ends."""
        with self.clock.stage(name):
            yield
            self.settle()

    def settle(self) -> None:
        """Wait for the model's device to finish what it was given (on a GPU; elsewhere it has)."""
        import torch

        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def __call__(
        self,
        chats: list[list[dict]],
        max_new_tokens: int,
        seed: int,
        keys: list[Hashable] | None = None,
        row_seeds: list[int] | None = None,
        stop_at_question: bool = False,
        temperature: float | None = None,
    ) -> list[Reply]:
        """Reply to each chat: its text, whether it ended, and whether it was stopped as a runaway.

        `keys` name the chats whose cache is kept for later calls (a conversation id); chats
        without a key keep theirs for this call only. `row_seeds`: sample each chat from its own
        generator (RowSampler) instead of the one `seed` gives the whole call. `stop_at_question`:
        a reply ends as soon as it holds a question of MIN_USER_WORDS words or more (QuestionStop).
        `temperature`: this call's, instead of the settings' (a retry's).

        A batched `generate` keeps computing every row until the longest one stops, so one
        runaway reply would make the whole batch pay for the token limit. The budget is spent in
        chunks instead (256 -> 4 x 64, 64 -> 2 x 32; `advance`): after each chunk only the
        unfinished rows go on.
        """
        import torch

        keys = list(keys) if keys is not None else [None] * len(chats)
        # Chats without a key still reuse their cache between chunks, under a key of this call.
        call_keys = [k if k is not None else ("call", i) for i, k in enumerate(keys)]
        temperature = self.settings.temperature if temperature is None else temperature
        torch.manual_seed(seed)
        seeds = row_seeds if row_seeds is not None else [None] * len(chats)
        rows = [
            self.row(c, k, max_new_tokens, s, temperature, stop_at_question)
            for c, k, s in zip(chats, call_keys, seeds, strict=True)
        ]
        pending, size = rows, chunk_size(max_new_tokens)
        while pending:
            self.advance(pending, size)
            pending = [r for r in pending if not r.done]
        self.cache.forget(k for k, given in zip(call_keys, keys, strict=True) if given is None)
        return [self.reply(r) for r in rows]

    def row(
        self,
        chat: list[dict],
        key: Hashable,
        max_new_tokens: int,
        seed: int | None = None,
        temperature: float | None = None,
        asks: bool = False,
    ) -> Row:
        """A reply to `chat` to be written by `advance`, from its own generator when `seed` is given."""
        import torch

        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        generator = None if seed is None else torch.Generator(self.model.device).manual_seed(seed)
        temperature = self.settings.temperature if temperature is None else temperature
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Row(ids, key, max_new_tokens, generator, temperature, asks)

    def reply(self, row: Row) -> Reply:
        text = self.tokenizer.decode(row.written, skip_special_tokens=True).strip()
        return Reply(text, row.finished, row.looping, row.rewinds)

    def prefill(self, rows: list[Row]) -> None:
        """Feed the uncached prompts of the rows that have more than their last token to feed (new
        replies), in a forward of their own, and cache them: in a batch with rows that feed one
        token each, their prompts would make every row pay for their width in padding. (One greedy
        token is generated and thrown away; the row's own sampling is left untouched.)"""
        import torch

        if not self.cache.reuse:  # nothing would be kept: every call feeds whole prompts
            return
        new = [
            r for r in rows if len(r.ids) + len(r.written) - self.cache.reusable(r.key, r.ids + r.written) > 1
        ]
        if not new:
            return
        prompts, keys = [r.ids + r.written for r in new], [r.key for r in new]
        with self.stage("cache"):
            input_ids, mask, cache = self.cache.batch(keys, prompts, self.pad_id, 1)
        with self.stage("prefill"), torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                cache=cache,
                max_new_tokens=1,
                do_sample=False,
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
            )
        with self.stage("cache"):
            self.cache.store(keys, prompts, mask, out.cache, [[] for _ in new])

    def advance(self, rows: list[Row], size: int) -> None:
        """One batched `generate` call: every row writes up to `size` more tokens, from its cache
        plus what it wrote so far. A row is `done` when it ends, fills its budget, holds its
        question, or has started repeating itself (`runaway`) and stops there instead of looping to
        the limit, or, with `runaway_rewinds`, is cut back to where its loop began (`loop_start`)
        and goes on with its room given back, up to that many times. The rows either all have
        their own generator or all sample from the global one (seeded by the caller) at one
        temperature."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        penalty, ngram = self.settings.repetition_penalty, self.settings.no_repeat_ngram_size
        # A row may write max_new_tokens in all; only a row cut back to before its loop has
        # more room than the others.
        room = [r.max_new_tokens - len(r.written) for r in rows]
        chunk = min(size, max(room))
        prompts = [r.ids + r.written for r in rows]
        keys = [r.key for r in rows]
        with self.stage("cache"):
            input_ids, mask, cache = self.cache.batch(keys, prompts, self.pad_id, chunk)
        steps = StepClock(self)  # first, so that no other processor's work counts as prefill
        processors = [steps]
        if penalty is not None or ngram:
            processors.append(ReplyRepetition([r.written for r in rows], input_ids.shape[1], penalty, ngram))
        own = [r.generator for r in rows]
        # generate's own sampling, or (rows with their own generators) RowSampler's, last: it
        # samples from what the others left, and leaves generate's greedy pick a single token
        sampling = {"do_sample": True, "temperature": rows[0].temperature, "top_p": self.settings.top_p}
        if any(g is not None for g in own):
            temperatures = [r.temperature for r in rows]
            one = len(set(temperatures)) == 1
            processors.append(RowSampler(own, temperatures[0] if one else temperatures, self.settings.top_p))
            sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        options = {"logits_processor": LogitsProcessorList(processors)}
        if self.cache.static:
            options["compile_config"] = self.compile_config
        question = None
        if any(r.asks for r in rows):
            question = QuestionStop(
                self.tokenizer,
                self.question_marks,
                [r.written for r in rows],
                input_ids.shape[1],
                [r.asks for r in rows],
            )
            options["stopping_criteria"] = StoppingCriteriaList([question])
        with self.stage("prefill"), steps, torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                cache=cache,
                max_new_tokens=chunk,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
                **sampling,
                **options,
            )
        generated, before = [], self.new_tokens
        for b, (r, tokens) in enumerate(
            zip(rows, out.sequences[:, input_ids.shape[1] :].tolist(), strict=True)
        ):
            asked = question.stopped.get(b) if question else None  # tokens up to its question
            tokens = tokens if asked is None else tokens[:asked]
            end = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
            ended = end is not None
            new = tokens[:end] if ended else tokens[: room[b]]  # a row past its room is cut off
            r.written += new
            generated.append(new)
            r.generated += end + 1 if ended else len(tokens)
            self.new_tokens += end + 1 if ended else len(tokens)  # generated, kept or not
            if asked is not None and not ended:
                r.done = True  # it holds its question
            elif self.settings.stop_runaway and runaway(r.written):
                if r.rewinds < self.settings.runaway_rewinds:
                    r.written = r.written[: loop_start(r.written)]
                    r.rewinds += 1
                else:
                    r.looping, r.finished, r.done = True, ended, True
            elif ended:
                r.finished = r.done = True
            elif len(r.written) >= r.max_new_tokens:
                r.done = True
        with self.stage("cache"):
            self.cache.store(keys, prompts, mask, out.cache, generated)
        if self.on_tokens:
            self.on_tokens(self.new_tokens - before)

    @functools.cached_property
    def compile_config(self):
        """How `generate` compiles the decoding step over a static cache: CUDA graphs
        ("reduce-overhead", transformers' default) on a GPU, inductor's kernels elsewhere.
        transformers compiles on accelerators only unless its config says otherwise
        (`_compile_all_devices`, which it keeps for tests), so the CPU's tests run this path too."""
        from transformers import CompileConfig

        config = CompileConfig(mode="reduce-overhead" if self.model.device.type == "cuda" else "default")
        config._compile_all_devices = True
        return config

    @functools.cached_property
    def question_marks(self) -> frozenset[int]:
        """The ids of the tokens with a "?" in them."""
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        return frozenset(i for i, t in enumerate(vocab) if t and "?" in t)

    def keep_cache(self, keys: list[Hashable]) -> None:
        """Forget every cached conversation but these."""
        self.cache.keep(keys)


def _user_chat(conv: Conversation, prompts: dict, strategy: Strategy, first: bool) -> list[dict]:
    key = "first_user" if first else "followup_user"
    if strategy == "study":
        instruction = prompts[key].format(topic=conv.topic)
        return [*conv.messages, {"role": "system", "content": instruction}]
    text = prompts[key].format(topic=conv.topic, last_answer="" if first else conv.last_answer)
    return [{"role": "user", "content": text}]


def _take(
    conv: Conversation,
    reply: Reply,
    step: int,
    attempt: int,
    settings: GenerationSettings,
    fallback: dict[int, tuple[str, str, bool]],
) -> bool:
    """Judge attempt `attempt` (0-based) at turn `step` of `conv`: keep it in `conv.messages`, or
    on the last attempt keep the flawed fallback or drop the conversation; True asks for a retry.
    `fallback` holds, per conversation, a sound turn with a flaw (no question, an opening said
    before), kept if nothing better comes, and whether it was trimmed. With `trim_cut_off`, a reply
    cut off at the token limit (a loop would have been stopped as a runaway) is judged as its text
    up to its last full sentence (`trim_to_sentence`), and counted when kept."""
    rnd, role = divmod(step, 2)
    role_name = "user" if role == 0 else "assistant"
    last = attempt == settings.max_attempts - 1
    text, finished, looped, rewinds = Reply(*reply)
    cid = conv.conversation_id
    if rewinds:  # parts of this attempt, not attempts: counted apart
        conv.rejected[REWOUND] = conv.rejected.get(REWOUND, 0) + rewinds
    flaw = None  # kept after the last attempt if nothing better comes
    trimmed = False
    if role_name == "user" and settings.strategy == "reply" and (question := extract_question(text)):
        # The reply only carries the question: a question found in it is the turn, even when the
        # reply around it ran on past the token limit.
        text, problem = question, turn_problem(question, True)
    else:
        if settings.trim_cut_off and not (finished or looped) and (short := trim_to_sentence(text)):
            text, finished, trimmed = short, True, True
        problem = "repeats itself (runaway)" if looped else turn_problem(text, finished)
        # reply: no question was found above; study: the turn is the reply
        if role_name == "user" and not (settings.strategy == "study" and "?" in text):
            flaw = NO_QUESTION
    if settings.check_repeats:
        problem = problem or conversation_problem(text, role_name, conv.messages)
        if problem == SAME_OPENING:
            problem, flaw = None, flaw or SAME_OPENING
    if reason := problem or flaw:
        conv.rejected[reason] = conv.rejected.get(reason, 0) + 1
    if problem is None and flaw:
        fallback.setdefault(cid, (text, flaw, trimmed))
    if problem is None and not flaw:
        conv.messages.append({"role": role_name, "content": text})
        conv.trimmed_turns += trimmed
    elif last and cid in fallback:
        text, flaw, trimmed = fallback.pop(cid)
        conv.messages.append({"role": role_name, "content": text})
        conv.trimmed_turns += trimmed
        if flaw == NO_QUESTION:
            conv.non_question_user_turns += 1
        else:
            conv.same_opening_turns += 1
    elif last:
        conv.dropped = f"round {rnd} {role_name} turn: {problem} after {attempt + 1} attempts"
        return False
    else:
        return True
    fallback.pop(cid, None)
    conv.attempts.append(attempt + 1)
    return False


def _give_user_turn(conv: Conversation, step: int) -> bool:
    """Append a given user turn (a source read with `--regenerate assistant`) at a user step."""
    if step % 2 or conv.user_turns is None:
        return False
    conv.messages.append({"role": "user", "content": conv.user_turns[step // 2]})
    conv.attempts.append(0)  # given, not generated
    return True


def _attempt_key(conv: Conversation, settings: GenerationSettings) -> Hashable:
    """The cache entry of the attempts at the next turn of `conv`: the conversation's, except for
    the user chats of the `reply` strategy, new text each round, kept under ("user", id) until their
    turn is settled."""
    user = len(conv.attempts) % 2 == 0
    cid = conv.conversation_id
    return ("user", cid) if user and settings.strategy == "reply" else cid


def _attempt_row(
    chat: BatchedChat, conv: Conversation, attempt: int, prompts: dict, settings: GenerationSettings
) -> Row:
    """Attempt `attempt` at the next turn of `conv`, as a row of its own (continuous batching):
    sampled from the conversation's own generator (seeded as with seed_per_conversation), cached
    under `_attempt_key`."""
    step = len(conv.attempts)
    rnd, role = divmod(step, 2)
    user = role == 0
    messages = _user_chat(conv, prompts, settings.strategy, rnd == 0) if user else conv.messages
    return chat.row(
        messages,
        _attempt_key(conv, settings),
        settings.user_max_new_tokens if user else settings.assistant_max_new_tokens,
        step_seed(settings.seed, step, attempt, "conversation", conv.conversation_id),
        settings.temperature_of(attempt),
        asks=user and settings.stop_at_question and settings.strategy == "reply",
    )


def generate_continuously(
    conversations: list[Conversation],
    chat: BatchedChat,
    prompts: dict,
    settings: GenerationSettings,
    *,
    on_step: Callable[[int, list[Conversation]], None] | None = None,
) -> list[Conversation]:
    """The turn-taking with continuous batching: every conversation moves on as soon as its turn
    is settled, and each chunk (`BatchedChat.advance`) batches whatever reply each live
    conversation is writing, a user turn, an assistant turn or a retry, so the batch stays full
    instead of waiting for a step's longest reply and then running its retries in small batches.
    Each conversation resumes at its own next turn (its settled turns, `attempts`); its samples
    come from its own generators, seeded per (turn, attempt) as with seed_per_conversation, so its
    text does not depend on the schedule where the numerics allow. `on_step(steps, snapshot)` is
    called whenever every live conversation has settled `steps` turns, with the conversations as
    they were after their last settled turn (what a resume starts from).

    With `settings.parallel_attempts` N > 1, the rows no conversation needs (once conversations
    have finished, or a `batch_size` above their count) go to turns that have had an attempt
    rejected: up to N of a turn's attempts are written at once, the most rejected turns first,
    each under a cache entry of its own, ("attempt", key, attempt). They are still judged in order
    (a later attempt that ends first waits for the earlier ones), and once one is kept the later
    ones are dropped unjudged (`chat.discarded_tokens` counts what they had sampled), so the
    conversations are those of N = 1."""
    total = 2 * settings.rounds
    size = settings.continuous_chunk
    # conversation id -> the attempts in flight at its next turn; the first is the next to judge
    flight: dict[int, dict[int, Row]] = {}
    fallback: dict[int, tuple[str, str, bool]] = {}
    settled = {c.conversation_id: to_json([c])[0] for c in conversations}
    steps_done = min((len(c.attempts) for c in conversations if c.dropped is None), default=total)
    by_id = {c.conversation_id: c for c in conversations}
    # a checkpoint's cache may hold entries of attempts in flight when it was saved: none is now
    chat.cache.forget([k for k in list(chat.cache.entries) if isinstance(k, tuple) and k[0] == "attempt"])

    def start(c: Conversation, attempt: int) -> None:
        row = _attempt_row(chat, c, attempt, prompts, settings)
        if flight.get(c.conversation_id):  # a second attempt at the turn: a cache entry of its own
            turn_key, row.key = row.key, ("attempt", row.key, attempt)
            chat.cache.alias(row.key, turn_key)  # which holds the turn's prompt
        flight.setdefault(c.conversation_id, {})[attempt] = row

    def unfinished(c: Conversation) -> bool:
        return c.dropped is None and len(c.attempts) < total

    with progress(desc="generation", unit="tok") as bar:
        chat.on_tokens = bar.update
        while True:
            writing = sum(not r.done for f in flight.values() for r in f.values())
            for c in conversations:
                while unfinished(c) and c.conversation_id not in flight:
                    if _give_user_turn(c, len(c.attempts)):
                        settled[c.conversation_id] = to_json([c])[0]
                    elif writing < settings.batch_size:
                        start(c, 0)
                        writing += 1
                    else:
                        break
            # Rows left once every unfinished conversation has one: later attempts of the turns
            # with a rejected attempt (the first in flight is not attempt 0), most rejected first.
            # (Each turn in flight is writing its first attempt; the other rows writing are spare.)
            spare = settings.batch_size - sum(map(unfinished, conversations)) - (writing - len(flight))
            while spare > 0:
                turns = [
                    cid
                    for cid, f in flight.items()
                    if min(f) > 0
                    and len(f) < settings.parallel_attempts
                    and max(f) + 1 < settings.max_attempts
                ]
                if not turns:
                    break
                cid = min(turns, key=lambda i: (len(flight[i]), -min(flight[i]), len(by_id[i].attempts), i))
                start(by_id[cid], max(flight[cid]) + 1)
                spare -= 1
            if not flight:
                break
            live = [c for c in conversations if c.dropped is None]
            rows = [flight[cid][a] for cid in sorted(flight) for a in sorted(flight[cid])]
            rows = [r for r in rows if not r.done]
            bar.set_postfix_str(
                f"continuous: {len(rows)} replies in flight, turns {min(len(c.attempts) for c in live)}"
                f"-{max(len(c.attempts) for c in live)} of {total} settled, "
                f"{sum(sum(c.rejected.values()) for c in conversations)} attempts rejected, "
                f"{sum(c.dropped is not None for c in conversations)} dropped"
            )
            chat.prefill(rows)
            chat.advance(rows, size)
            for cid in sorted(flight):
                c, f = by_id[cid], flight[cid]
                step, key = len(c.attempts), _attempt_key(c, settings)
                while f and f[min(f)].done:  # judged in order
                    attempt = min(f)
                    row = f.pop(attempt)
                    if _take(c, chat.reply(row), step, attempt, settings, fallback):
                        if row.key != key:
                            chat.cache.forget([row.key])
                        if not f:
                            start(c, attempt + 1)
                        continue
                    chat.cache.rename(row.key, key)  # the kept attempt's entry is the conversation's
                    chat.discarded_tokens += sum(r.generated for r in f.values())
                    chat.cache.forget(r.key for r in f.values())
                    f.clear()
                    chat.cache.forget([("user", cid)])
                    if c.dropped is not None or len(c.attempts) == total:
                        chat.cache.forget([cid])  # no turn of it is left to write
                    settled[cid] = to_json([c])[0]
                if not f:
                    del flight[cid]
            done = min((len(c.attempts) for c in conversations if c.dropped is None), default=total)
            if done > steps_done:
                steps_done = done
                if on_step:
                    on_step(steps_done, from_json([settled[c.conversation_id] for c in conversations]))
    chat.on_tokens = None
    return conversations


def generate_conversations(
    conversations: list[Conversation],
    chat: BatchedChat,
    prompts: dict,
    settings: GenerationSettings,
    *,
    start_step: int = 0,
    on_step: Callable[[int, list[Conversation]], None] | None = None,
) -> list[Conversation]:
    """Run the turn-taking for every conversation, from `start_step` (2 steps per round: user,
    assistant) on. `on_step(steps_done, conversations)` is called after each step, for
    checkpointing. Returns the same list, with `dropped` set on the conversations left out.
    With `settings.continuous`, `generate_continuously` (each conversation from its own next turn)."""
    if settings.continuous:
        return generate_continuously(conversations, chat, prompts, settings, on_step=on_step)
    total = 2 * settings.rounds
    # Counted in generated tokens, with no ETA: a turn's length, its retries and the drops are
    # not known in advance, so any ETA would be a guess. The postfix says where the build is.
    with progress(desc="generation", unit="tok") as bar:
        chat.on_tokens = bar.update
        for step in range(start_step, total):
            rnd, role = divmod(step, 2)
            role_name = "user" if role == 0 else "assistant"
            live = [c for c in conversations if c.dropped is None]
            pending = [c for c in live if not _give_user_turn(c, step)]
            fallback: dict[int, tuple[str, str, bool]] = {}
            for attempt in range(settings.max_attempts):
                bar.set_postfix_str(
                    f"round {rnd + 1}/{settings.rounds} {role_name} attempt {attempt + 1}, {len(live)} live, "
                    f"{sum(sum(c.rejected.values()) for c in conversations)} attempts rejected, "
                    f"{sum(c.dropped is not None for c in conversations)} dropped"
                )
                retry = []
                for b in range(0, len(pending), settings.batch_size):
                    group = pending[b : b + settings.batch_size]
                    # Chats that continue the conversation reuse its KV cache; the `reply` strategy's
                    # separate user chats are new text each round.
                    keys = [c.conversation_id for c in group]
                    if role_name == "user":
                        chats = [_user_chat(c, prompts, settings.strategy, rnd == 0) for c in group]
                        max_new = settings.user_max_new_tokens
                        keys = keys if settings.strategy == "study" else None
                    else:
                        chats = [c.messages for c in group]
                        max_new = settings.assistant_max_new_tokens
                    seeds = None
                    if settings.seed_per_conversation:
                        seeds = [
                            step_seed(settings.seed, step, attempt, "conversation", c.conversation_id)
                            for c in group
                        ]
                    asks = settings.stop_at_question and role_name == "user" and settings.strategy == "reply"
                    replies = chat(
                        chats,
                        max_new,
                        step_seed(settings.seed, step, attempt, b),
                        keys,
                        seeds,
                        stop_at_question=asks,
                        temperature=settings.temperature_of(attempt),
                    )
                    for conv, reply in zip(group, replies, strict=True):
                        if _take(conv, reply, step, attempt, settings, fallback):
                            retry.append(conv)
                pending = retry
                if not pending:
                    break
            chat.keep_cache([c.conversation_id for c in conversations if c.dropped is None])
            if on_step:
                on_step(step + 1, conversations)
    chat.on_tokens = None
    return conversations


def new_conversations(n: int, prompts: dict, first: int = 0) -> list[Conversation]:
    """Conversations first .. first + n - 1, each on topic (id mod the number of topics)."""
    topics = load_topics()
    return [
        Conversation(
            i,
            topics[i % len(topics)],
            [{"role": "system", "content": prompts["system"].format(topic=topics[i % len(topics)])}],
        )
        for i in range(first, first + n)
    ]


def to_json(conversations: list[Conversation]) -> list[dict]:
    return [asdict(c) for c in conversations]


def from_json(rows: list[dict]) -> list[Conversation]:
    return [Conversation(**r) for r in rows]
