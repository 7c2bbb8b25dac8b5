"""Every turn a steering run wrote, one row each, as Parquet (`turns.parquet` beside steer.json).

steer.json keeps each condition's per-prompt measures and a few example texts; this keeps every
turn's text and ids with the same measures, for reading what an edit made the model write:

    from datasets import load_dataset
    turns = load_dataset("parquet", data_files="steer/smollm2/turns.parquet", split="train")
    turns.filter(lambda r: r["condition"] == "unsteered" and r["next_user"] < 0)["text"]

Row order: layer, setting, then the unsteered turns and each condition's (random draws included)
in the run's order, each over the setting's prompts in order (`prompt` indexes steer.json's
`prompts[setting]`, which names each one's conversation, round and fold).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from turnphase.steering.generate import Generation
from turnphase.steering.measures import MEASURES
from turnphase.steering.prompts import Prompt

TURNS_FILE = "turns.parquet"
UNSTEERED = "unsteered"  # the `condition` of the turns written without an edit
SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("setting", pa.string()),
        ("condition", pa.string()),  # UNSTEERED or the condition's name in steer.json
        ("family", pa.string()),  # a random draw's family in steer.json's `random`; null otherwise
        ("prompt", pa.int32()),
        ("conversation_id", pa.int64()),
        ("round", pa.int32()),
        ("text", pa.string()),  # the turn, decoded without special tokens (`mid`: after the kept part)
        ("ids", pa.list_(pa.int32())),  # the turn's token ids, before its end-of-turn token
        *[(k, pa.float64()) for k in MEASURES],
    ]
)


def turn_rows(
    layer: int,
    setting: str,
    condition: str,
    family: str | None,
    prompts: list[Prompt],
    gen: Generation,
    texts: list[str],
    measured: dict[str, np.ndarray],
) -> list[dict]:
    """One row per prompt of a condition's (or the unsteered) turns, with its measures."""
    return [
        {
            "layer": layer,
            "setting": setting,
            "condition": condition,
            "family": family,
            "prompt": i,
            "conversation_id": p.conversation_id,
            "round": p.round,
            "text": texts[i],
            "ids": gen.tokens[i],
            **{k: float(measured[k][i]) for k in MEASURES},
        }
        for i, p in enumerate(prompts)
    ]


def write_turns(rows: list[dict], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
