"""Tokens and phases: render a conversation once, tokenize once, label every token.

Each token belongs to the system prompt or to one turn. A turn's tokens include its chat-template
markup (flagged `is_template`), so a turn of n tokens covers everything from its opening marker to
its closing one. Phases, as in the study:

    user turn,      token k of n:  phase = 0.5 * k / (n - 1)
    assistant turn, token k of n:  phase = 0.5 + 0.5 * k / (n - 1)
    whole round,    token j of m:  phase_round = j / (m - 1)

System tokens have no phase (null).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from turnphase.builders import schema

PHASE_START = {"user": 0.0, "assistant": 0.5}


def ramp(n: int) -> np.ndarray:
    """k / (n - 1) for k in 0..n-1; a one-token turn sits at 0."""
    return np.arange(n) / max(n - 1, 1)


@dataclass(frozen=True)
class Span:
    """Where one message sits in the rendered text, template markup included."""

    role: str
    start: int  # first character of the message's rendered segment
    end: int  # one past its last character
    content_start: int  # the message's own text, inside the segment
    content_end: int


def message_spans(tokenizer, messages: list[dict]) -> tuple[str, list[Span]]:
    """Render `messages` with the model's chat template and locate each message in the text.

    Segment boundaries come from rendering growing prefixes of the conversation, which works for
    any template that renders a prefix as a prefix of the whole (ChatML, Llama 3, ...).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, prev = [], 0
    for i, msg in enumerate(messages):
        end = (
            len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
            if i + 1 < len(messages)
            else len(text)
        )
        segment = text[prev:end]
        content = msg["content"].strip()
        at = segment.find(content) if content else -1
        if not text.startswith(segment, prev) or (content and at < 0):
            raise ValueError("the chat template does not render each message as a prefix of the whole")
        c0 = prev + at if at >= 0 else end
        spans.append(Span(msg["role"], prev, end, c0, c0 + len(content)))
        prev = end
    return text, spans


def label_tokens(conversation_id: int, tokenizer, messages: list[dict]) -> pa.Table:
    """One row per token of the rendered conversation, in the `tokens` schema."""
    text, spans = message_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    ends = np.asarray([e for _, e in enc["offset_mapping"]], dtype=np.int64)
    n = len(ids)
    owner = np.searchsorted([s.end for s in spans], starts, side="right")  # message index per token
    owner = np.minimum(owner, len(spans) - 1)

    role = np.array([spans[i].role for i in owner], dtype=object)
    content_start = np.array([s.content_start for s in spans])[owner]
    content_end = np.array([s.content_end for s in spans])[owner]
    is_template = ~((ends > content_start) & (starts < content_end))
    rnd = np.full(n, -1, dtype=np.int16)
    index_in_turn = np.zeros(n, dtype=np.int32)
    turn_length = np.zeros(n, dtype=np.int32)
    phase = np.full(n, np.nan, dtype=np.float32)
    phase_round = np.full(n, np.nan, dtype=np.float32)

    user_turns_seen = -1
    round_of_msg = []
    for span in spans:
        if span.role == "user":
            user_turns_seen += 1
        round_of_msg.append(user_turns_seen if span.role in PHASE_START else -1)
    for i, span in enumerate(spans):
        idx = np.flatnonzero(owner == i)
        index_in_turn[idx] = np.arange(len(idx))
        turn_length[idx] = len(idx)
        if span.role in PHASE_START:
            rnd[idx] = round_of_msg[i]
            phase[idx] = PHASE_START[span.role] + 0.5 * ramp(len(idx))
        elif span.role != "system":
            raise ValueError(f"unexpected role {span.role!r}")
    for r in np.unique(rnd[rnd >= 0]):
        idx = np.flatnonzero(rnd == r)
        phase_round[idx] = ramp(len(idx))

    turn = rnd >= 0
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    token_text = [tokenizer.convert_tokens_to_string([t]) for t in tokens]
    return pa.Table.from_pydict(
        {
            "conversation_id": np.full(n, conversation_id, dtype=np.int32),
            "position": np.arange(n, dtype=np.int32),
            "role": role.tolist(),
            "round": pa.array(rnd, mask=~turn),
            "phase": pa.array(phase, mask=~turn),
            "phase_round": pa.array(phase_round, mask=~turn),
            "token_id": ids,
            "token": token_text,
            "index_in_turn": index_in_turn,
            "turn_length": turn_length,
            "is_template": is_template,
        },
        schema=schema.TOKENS_SCHEMA,
    )
