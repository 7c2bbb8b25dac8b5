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
    role: np.ndarray  # (n,) role names
    round: np.ndarray  # (n,)

    @property
    def targets(self) -> np.ndarray:
        return np.stack([self.phase, np.sin(2 * np.pi * self.phase), np.cos(2 * np.pi * self.phase)], axis=1)


def load_reference(root: Path, layer: int, exclude_template: bool = True) -> Reference:
    """Turn tokens of `layer`, without chat-template markup unless asked (the analysis default)."""
    tables = [pq.read_table(f) for f in sorted((root / schema.layer_config(layer)).glob(schema.SHARD_GLOB))]
    tokens = [pq.read_table(f) for f in sorted((root / schema.TOKENS).glob(schema.SHARD_GLOB))]
    layer_t, tok_t = pa.concat_tables(tables), pa.concat_tables(tokens)
    turn = pc.is_valid(tok_t.column("phase")).to_numpy(zero_copy_only=False)
    if exclude_template:
        turn &= ~tok_t.column("is_template").to_numpy(zero_copy_only=False)
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
        role=col(tok_t, "role"),
        round=col(tok_t, "round"),
    )


def assert_same(a, b, path: str = "report") -> None:
    """Two reports (or parts) agree: same keys and strings, numbers to 1e-7 relative; the
    wall-clock `timings` only in their keys."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if path == "report" and k == "timings":
                assert a[k].keys() == b[k].keys(), f"{path}.{k}"
                continue
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and a and isinstance(a[0], (dict, list)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, list) and a and isinstance(a[0], str):
        assert a == b, path
    elif isinstance(a, (float, int, list)) and not isinstance(a, bool):
        np.testing.assert_allclose(
            np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-7, atol=1e-9, err_msg=path
        )
    else:
        assert a == b, path
