"""Prompts from the dataset's held-out conversations (those one analysis fold never trained on).

    start   the conversation up to the start of an assistant turn: the chat template's generation
            prompt, so the model writes the whole turn
    mid     the same, plus the first `cut` of that assistant turn's own tokens: the model finishes it

One prompt per assistant turn of each held-out conversation, a seeded sample of `max_prompts`.
`next_header(tokenizer)` gives what the chat template writes after an assistant turn, up to the
token where it names the next turn's role (the `next_user` measure reads that token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from turnphase.analysis.source import DatasetSource
from turnphase.builders import schema
from turnphase.builders.errors import TurnphaseError


@dataclass
class Prompt:
    conversation_id: int
    round: int  # which assistant turn (0-based)
    ids: list[int]
    natural_length: int  # tokens the dataset's own turn has from here to its end
    kept_text: str = ""  # `mid`: the part of the assistant turn the prompt already holds


@dataclass(frozen=True)
class NextHeader:
    """What follows an assistant turn in the chat template: `tail`, the end of the turn and the next
    header up to its role (SmolLM2: <|im_end|>, newline, <|im_start|>); `user` and `assistant`, the
    first token of each role's name there (where the two headers first differ)."""

    tail: list[int]
    user: int
    assistant: int


def next_header(tokenizer) -> NextHeader:
    """Read from the template on a sample chat: the text after an assistant's message (which the
    user's header follows) and after a user's (the assistant's), tokenized; their shared start is
    the tail, and the next token of each names the role."""
    x, y, z = "Xq7", "Yq7", "Zq7"
    chat = [
        {"role": "user", "content": x},
        {"role": "assistant", "content": y},
        {"role": "user", "content": z},
    ]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    to_user = tokenizer(text[text.index(y) + len(y) : text.index(z)], add_special_tokens=False)["input_ids"]
    to_assistant = tokenizer(text[text.index(x) + len(x) : text.index(y)], add_special_tokens=False)[
        "input_ids"
    ]
    shared = next(
        (i for i, (u, a) in enumerate(zip(to_user, to_assistant, strict=False)) if u != a),
        min(len(to_user), len(to_assistant)),
    )
    if shared == 0 or shared == min(len(to_user), len(to_assistant)):
        raise TurnphaseError(
            "the chat template's headers after a user's and after an assistant's turn do not start "
            "alike and then name the role in a token: the next_user measure cannot be read"
        )
    return NextHeader(to_user[:shared], to_user[shared], to_assistant[shared])


def conversations(src: DatasetSource, ids: np.ndarray) -> dict[int, list[dict]]:
    """conversation id -> messages, for the ids asked for."""
    wanted, found = set(int(i) for i in ids), {}
    for t in src.tables(schema.CONVERSATIONS, ["conversation_id", "messages"]):
        for cid, messages in zip(t["conversation_id"].to_pylist(), t["messages"].to_pylist(), strict=True):
            if cid in wanted:
                found[cid] = messages
    return found


def make_prompts(
    tokenizer, chats: dict[int, list[dict]], setting: str, cut: float, max_prompts: int, seed: int
) -> list[Prompt]:
    prompts = []
    for cid in sorted(chats):
        messages = chats[cid]
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        for rnd, i in enumerate(turns):
            text = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            answer = tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"]
            kept = int(len(answer) * cut) if setting == "mid" else 0
            kept_text = tokenizer.decode(answer[:kept], skip_special_tokens=True)
            prompts.append(Prompt(cid, rnd, ids + answer[:kept], len(answer) - kept, kept_text))
    if not prompts:
        raise TurnphaseError("no prompts: the held-out conversations have no assistant turns")
    if len(prompts) > max_prompts:
        rng = np.random.default_rng([seed, len(prompts)])
        prompts = [prompts[i] for i in sorted(rng.choice(len(prompts), max_prompts, replace=False))]
    return prompts
