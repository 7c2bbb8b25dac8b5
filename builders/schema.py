"""The turnphase dataset schema, defined once.

The writer, the dataset card, the validator and the analysis reader all import these names, so a
column renamed here is renamed everywhere. Importing this module pulls in pyarrow only (no torch).

Layout of a dataset folder (the layout the Hub uses, so `load_dataset(folder_or_repo, config)`
works without a loading script)::

    README.md                                   dataset card, YAML `configs:` lists every config
    turnphase.json                              provenance (PROVENANCE_FILE)
    conversations/train-00000-of-00001.parquet  one row per conversation
    tokens/train-0000i-of-0000n.parquet         one row per token
    layer_<L>/train-0000i-of-0000n.parquet      one row per token, with `activation`

Shard i of every per-token config holds the same conversations in the same order, so row r of
`layer_<L>` is row r of `tokens`.
"""

from __future__ import annotations

import re
from typing import Literal

import pyarrow as pa

CONVERSATIONS = "conversations"
TOKENS = "tokens"
PROVENANCE_FILE = "turnphase.json"
CARD_FILE = "README.md"
SPLIT = "train"
SCHEMA_VERSION = 1

ROLES = ("system", "user", "assistant")
Dtype = Literal["float16", "float32"]
ARROW_FLOAT: dict[str, pa.DataType] = {"float16": pa.float16(), "float32": pa.float32()}

_LAYER_RE = re.compile(r"^layer_(\d+)$")
_SHARD_RE = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")


def layer_config(layer: int) -> str:
    return f"layer_{layer}"


def config_names(layers, *, conversations: bool = True) -> list[str]:
    """A dataset's configs in their order: conversations, tokens, then one per stored layer."""
    return ([CONVERSATIONS] if conversations else []) + [TOKENS] + [layer_config(L) for L in layers]


def parse_layer_config(name: str) -> int | None:
    """`layer_13` -> 13; anything else -> None."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def shard_name(index: int, n_shards: int) -> str:
    return f"{SPLIT}-{index:05d}-of-{n_shards:05d}.parquet"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """`train-00002-of-00005.parquet` -> (2, 5); anything else -> None."""
    m = _SHARD_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


SHARD_GLOB = f"{SPLIT}-*.parquet"


def data_files_glob(config: str) -> str:
    return f"{config}/{SHARD_GLOB}"


MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

CONVERSATIONS_SCHEMA = pa.schema(
    [
        ("conversation_id", pa.int32()),
        ("topic", pa.string()),
        ("messages", pa.list_(MESSAGE)),  # system prompt first, then user/assistant alternating
        ("attempts", pa.list_(pa.int16())),  # generation attempts per non-system message
        ("model", pa.string()),
    ]
)

# Key and label columns shared by `tokens` and every `layer_<L>` config, in this order.
KEY_LABEL_FIELDS = [
    pa.field("conversation_id", pa.int32()),
    pa.field("position", pa.int32()),  # 0-based index in the rendered conversation
    pa.field("role", pa.string()),  # one of ROLES
    pa.field("round", pa.int16()),  # 0-based; null for system tokens
    pa.field("phase", pa.float32()),  # study's scheme: user 0..0.5, assistant 0.5..1; null for system
    pa.field("phase_round", pa.float32()),  # 0..1 linearly across the round; null for system
]

TOKENS_SCHEMA = pa.schema(
    KEY_LABEL_FIELDS
    + [
        pa.field("token_id", pa.int32()),
        pa.field("token", pa.string()),  # decoded text of this single token
        pa.field("index_in_turn", pa.int32()),  # k in phase = 0.5*k/(n-1)
        pa.field("turn_length", pa.int32()),  # n, template markup included
        pa.field("is_template", pa.bool_()),  # chat-template markup, not content
    ]
)

KEY_LABEL_COLUMNS = [f.name for f in KEY_LABEL_FIELDS]
ACTIVATION = "activation"


def layer_schema(d_model: int, dtype: Dtype = "float16") -> pa.Schema:
    """Schema of a `layer_<L>` config: key/label columns plus a fixed-size activation vector."""
    return pa.schema(KEY_LABEL_FIELDS + [pa.field(ACTIVATION, pa.list_(ARROW_FLOAT[dtype], d_model))])


def schema_for(config: str, d_model: int, dtype: Dtype) -> pa.Schema:
    if config == CONVERSATIONS:
        return CONVERSATIONS_SCHEMA
    if config == TOKENS:
        return TOKENS_SCHEMA
    if parse_layer_config(config) is not None:
        return layer_schema(d_model, dtype)
    raise ValueError(f"unknown config {config!r}")


def schema_difference(got: pa.Schema, expected: pa.Schema) -> str | None:
    """What differs between a shard's schema and the expected one, in a few words; None if equal."""
    got, expected = got.remove_metadata(), expected.remove_metadata()
    if got.equals(expected):
        return None
    names, want = got.names, expected.names
    missing = [n for n in want if n not in names]
    extra = [n for n in names if n not in want]
    typed = [
        f"{n} is {got.field(n).type}, not {expected.field(n).type}"
        for n in want
        if n in names and not got.field(n).type.equals(expected.field(n).type)
    ]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + typed
    parts += [f"unexpected {', '.join(extra)}"] if extra else []
    return "; ".join(parts) or f"columns in another order ({', '.join(names)})"


# Rows per Parquet row group. A row group is the unit a streaming reader fetches, so per-token
# configs use groups of about 2 MB of activations; conversations are small and few.
ROW_GROUP_ROWS = {CONVERSATIONS: 64, TOKENS: 8192, "layer": 2048}


def row_group_rows(config: str) -> int:
    return ROW_GROUP_ROWS.get(config, ROW_GROUP_ROWS["layer"])
