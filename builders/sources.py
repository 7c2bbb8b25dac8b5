"""Conversations read from a source instead of generated: a local file or folder, or a Hub dataset.

    turnphase build --out data/wild --conversations chats.jsonl --rounds 3
    turnphase build --out data/wild --conversations allenai/WildChat-1M --regenerate assistant

A source row holds one conversation, in one of the common chat layouts (found per row):

    messages:      [{role, content}, ...]     OpenAI, HF chat templates, UltraChat
    conversation:  [{role, content, ...}]     WildChat (extra keys ignored)
    conversations: [{from, value}, ...]       ShareGPT (from: human / gpt / system)

or under another column (`--messages-column`). Leading system messages are kept, dropped or
replaced (`--system`); then turns must alternate user, assistant. A conversation with fewer than
`--rounds` complete rounds is skipped and counted; a longer one is cut at `--rounds`; `-n` caps
the count with a seeded sample. Anything malformed (no such file, an unknown layout, a column that
is not a list of messages, an unknown role, roles that do not alternate, empty content) is one line
naming the file and the row.

`read_source` returns the conversations and what the provenance and card must say (`info`):
the source, its sha256 (files) or commit (Hub), the layout, counts of what was skipped and why.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from turnphase.builders.conversations import Conversation
from turnphase.builders.errors import TurnphaseError, one_line
from turnphase.builders.provenance import sha256_file

LAYOUTS = {
    "messages": ("role", "content"),
    "conversation": ("role", "content"),
    "conversations": ("from", "value"),
}
ROLE_NAMES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
}
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TOPIC_CHARS = 80  # the `topic` of a read conversation: the start of its first user turn


@dataclass(frozen=True)
class SourceOptions:
    source: str
    rounds: int
    n: int
    seed: int
    column: str | None = None  # the messages column; None: found per row from LAYOUTS
    system: str = "keep"  # keep, drop or replace
    system_prompt: str | None = None  # with system="replace"
    config: str | None = None  # Hub dataset config
    split: str = "train"
    revision: str | None = None


def read_source(opts: SourceOptions) -> tuple[list[Conversation], dict]:
    """The conversations (ids 0..n-1 in source order) and what the provenance must say."""
    if opts.system == "replace" and not opts.system_prompt:
        raise TurnphaseError("--system replace needs --system-prompt TEXT")
    rows, identity = _rows(opts)
    skipped: Counter = Counter()
    eligible: list[tuple[str, list[dict]]] = []
    cut = read = 0
    for where, row in rows:
        read += 1
        messages = _messages(row, where, opts.column)
        messages = _with_system(messages, opts)
        turns = [m for m in messages if m["role"] != "system"]
        rounds = len(turns) // 2
        if rounds < opts.rounds:
            skipped[f"fewer than {opts.rounds} rounds"] += 1
            continue
        cut += rounds > opts.rounds or len(turns) % 2 == 1
        head = [m for m in messages if m["role"] == "system"]
        eligible.append((where, head + turns[: 2 * opts.rounds]))
    if not read:
        raise TurnphaseError(f"{opts.source}: holds no conversations (an empty file, list or dataset)")
    if not eligible:
        raise TurnphaseError(
            f"{opts.source}: none of its {read} conversations has {opts.rounds} complete rounds"
            + (f" ({dict(skipped)})" if skipped else "")
        )
    chosen = range(len(eligible))
    if len(eligible) > opts.n:
        chosen = sorted(random.Random(opts.seed).sample(range(len(eligible)), opts.n))
    convs, origin = [], []
    for cid, i in enumerate(chosen):
        where, messages = eligible[i]
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        topic = " ".join(first_user.split())[:TOPIC_CHARS]
        convs.append(Conversation(cid, topic, messages, attempts=[0] * (len(messages) - _n_system(messages))))
        origin.append(where)
    info = {
        "source": opts.source,
        **identity,
        "column": opts.column,
        "system": opts.system,
        "system_prompt": opts.system_prompt,
        "read": read,
        "skipped": dict(skipped),
        "cut_at_rounds": int(cut),
        "eligible": len(eligible),
        "sampled": len(convs) < len(eligible),
        "rows": origin,  # where each conversation came from (file:line or split row)
    }
    return convs, info


def _n_system(messages: list[dict]) -> int:
    return sum(m["role"] == "system" for m in messages)


def _with_system(messages: list[dict], opts: SourceOptions) -> list[dict]:
    turns = [m for m in messages if m["role"] != "system"]
    if opts.system == "drop":
        return turns
    if opts.system == "replace":
        return [{"role": "system", "content": opts.system_prompt}, *turns]
    return messages


def _messages(row: object, where: str, column: str | None) -> list[dict]:
    """The row's messages as [{role, content}] with roles normalised, checked to alternate."""
    if not isinstance(row, dict):
        raise TurnphaseError(f"{where}: a row must be an object with a messages column")
    name = column or next((c for c in LAYOUTS if c in row), None)
    if name is None or name not in row:
        wanted = column or " / ".join(LAYOUTS)
        raise TurnphaseError(
            f"{where}: no {wanted} column (columns: {', '.join(map(str, row)) or 'none'}); "
            "name the column with --messages-column"
        )
    items = row[name]
    if not isinstance(items, list) or not all(isinstance(m, dict) for m in items):
        raise TurnphaseError(f"{where}: column {name!r} is not a list of messages")
    out = []
    for k, item in enumerate(items):
        keys = LAYOUTS.get(name) if column is None else None
        role_key, text_key = keys or (("from", "value") if "from" in item else ("role", "content"))
        role, text = item.get(role_key), item.get(text_key)
        if role not in ROLE_NAMES:
            raise TurnphaseError(
                f"{where}: message {k} has role {role!r}, not one of {', '.join(ROLE_NAMES)}"
            )
        if not isinstance(text, str) or not text.strip():
            raise TurnphaseError(f"{where}: message {k} ({role}) has empty content")
        out.append({"role": ROLE_NAMES[role], "content": text})
    system = _n_system(out)
    if any(m["role"] == "system" for m in out[system:]):
        raise TurnphaseError(f"{where}: a system message after the first turn")
    for k, m in enumerate(out[system:]):
        want = "user" if k % 2 == 0 else "assistant"
        if m["role"] != want:
            raise TurnphaseError(
                f"{where}: message {system + k} is {m['role']}, expected {want} (roles must alternate)"
            )
    return out


def _rows(opts: SourceOptions) -> tuple[Iterator[tuple[str, object]], dict]:
    """(where, row) pairs, and the source's identity: file sha256s, or the Hub commit."""
    path = Path(opts.source).expanduser()
    if path.is_file() or path.is_dir():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES)
        if not files:
            raise TurnphaseError(f"{opts.source}: no {', '.join(FILE_SUFFIXES)} files in this folder")
        for f in files:
            if f.suffix not in FILE_SUFFIXES:
                raise TurnphaseError(f"{f}: not a {', '.join(FILE_SUFFIXES)} file")
        identity = {"kind": "files", "files": {str(f): sha256_file(f) for f in files}}
        return (pair for f in files for pair in _file_rows(f)), identity
    if not _HUB_ID.match(opts.source) or opts.source.startswith((".", "/", "~")):
        raise TurnphaseError(f"--conversations {opts.source}: no such file or folder")
    return _hub_rows(opts)


def _file_rows(path: Path) -> Iterator[tuple[str, object]]:
    try:
        if path.stat().st_size == 0:
            return  # no rows (a folder may hold other files; a source of no rows is refused)
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield f"{path}:{n}", _json(line, f"{path}:{n}")
        elif path.suffix == ".json":
            data = _json(path.read_text(encoding="utf-8"), str(path))
            data = data.get("data", data) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise TurnphaseError(f"{path}: a JSON source is a list of rows (or {{'data': [...]}})")
            for n, row in enumerate(data):
                yield f"{path} row {n}", row
        else:
            import pyarrow.parquet as pq

            f = pq.ParquetFile(path)
            n = 0
            for batch in f.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield f"{path} row {n}", row
                    n += 1
    except (OSError, UnicodeDecodeError) as e:
        raise TurnphaseError(f"{path}: cannot read ({one_line(e)})") from None
    except Exception as e:
        if isinstance(e, TurnphaseError):
            raise
        raise TurnphaseError(f"{path}: not a readable {path.suffix} file ({one_line(e)})") from None


def _json(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except ValueError as e:
        raise TurnphaseError(f"{where}: not JSON ({one_line(e)})") from None


def _hub_rows(opts: SourceOptions) -> tuple[Iterator[tuple[str, object]], dict]:
    import datasets
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(opts.source, revision=opts.revision or "main").sha
        ds = datasets.load_dataset(opts.source, opts.config, split=opts.split, streaming=True, revision=sha)
    except Exception as e:
        raise TurnphaseError(
            f"--conversations {opts.source}: not a local file or folder, and the Hub cannot provide it "
            f"({one_line(e)})"
        ) from None
    identity = {"kind": "hub", "revision": sha, "config": opts.config, "split": opts.split}

    def rows() -> Iterator[tuple[str, object]]:
        try:
            for n, row in enumerate(ds):
                yield f"{opts.source} {opts.split} row {n}", row
        except TurnphaseError:
            raise
        except Exception as e:
            raise TurnphaseError(f"{opts.source}: cannot read ({one_line(e)})") from None

    return rows(), identity
