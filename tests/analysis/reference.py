"""The same data read directly with pyarrow, for cross-checks against scikit-learn.

Independent of turnphase.analysis.source on purpose: a bug there must not hide here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from turnphase.builders import schema


@dataclass
class Reference:
    x: np.ndarray  # (n, d_model) float64, turn tokens only, in row order
    conversation: np.ndarray  # (n,)
    phase: np.ndarray  # (n,)
    position: np.ndarray  # (n,)
    index_in_turn: np.ndarray  # (n,)

    @property
    def targets(self) -> np.ndarray:
        return np.stack([self.phase, np.sin(2 * np.pi * self.phase), np.cos(2 * np.pi * self.phase)], axis=1)


def load_reference(root: Path, layer: int) -> Reference:
    tables = [pq.read_table(f) for f in sorted((root / schema.layer_config(layer)).glob(schema.SHARD_GLOB))]
    tokens = [pq.read_table(f) for f in sorted((root / schema.TOKENS).glob(schema.SHARD_GLOB))]
    layer_t, tok_t = pa.concat_tables(tables), pa.concat_tables(tokens)
    turn = pc.is_valid(tok_t.column("phase")).to_numpy(zero_copy_only=False)
    act = layer_t.column(schema.ACTIVATION).combine_chunks()
    x = pc.list_flatten(act).to_numpy().astype(np.float64).reshape(layer_t.num_rows, act.type.list_size)

    def col(t: pa.Table, name: str) -> np.ndarray:
        return t.column(name).to_numpy(zero_copy_only=False)[turn]

    return Reference(
        x=x[turn],
        conversation=col(tok_t, "conversation_id"),
        phase=col(tok_t, "phase").astype(np.float64),
        position=col(tok_t, "position"),
        index_in_turn=col(tok_t, "index_in_turn"),
    )
