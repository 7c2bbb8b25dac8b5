"""Synthetic turnphase datasets with planted geometry, written through the real writer and schema.

    write_synthetic_dataset(tmp_path / "ds", geometry="helix")

Token labels follow the same phase rules as `builders/phases.py` (they are computed by its
`ramp`), activations are Gaussian noise plus a planted signal:

- "helix":  cos/sin of 2*pi*phase in a random plane (the clock) plus phase along a third direction
- "switch": only whose turn it is (a step between user and assistant), no position within a turn
- "noise":  nothing but noise
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from turnphase.builders import provenance, schema, writer
from turnphase.builders.phases import PHASE_START, ramp

Geometry = Literal["helix", "switch", "noise"]


def synthetic_tokens(conversation_id: int, rounds: int, rng: np.random.Generator) -> pa.Table:
    roles, rnds, phases, phase_rounds, idx, lengths = [], [], [], [], [], []
    n_sys = 10
    roles += ["system"] * n_sys
    rnds += [None] * n_sys
    phases += [None] * n_sys
    phase_rounds += [None] * n_sys
    idx += list(range(n_sys))
    lengths += [n_sys] * n_sys
    for r in range(rounds):
        n_user, n_asst = int(rng.integers(8, 24)), int(rng.integers(30, 90))
        pr = ramp(n_user + n_asst)
        for role, n in (("user", n_user), ("assistant", n_asst)):
            roles += [role] * n
            rnds += [r] * n
            phases += list(PHASE_START[role] + 0.5 * ramp(n))
            idx += list(range(n))
            lengths += [n] * n
        phase_rounds += list(pr)
    n = len(roles)
    return pa.Table.from_pydict(
        {
            "conversation_id": [conversation_id] * n,
            "position": list(range(n)),
            "role": roles,
            "round": rnds,
            "phase": phases,
            "phase_round": phase_rounds,
            "token_id": rng.integers(0, 1000, n).tolist(),
            "token": [f"t{i}" for i in range(n)],
            "index_in_turn": idx,
            "turn_length": lengths,
            "is_template": [i < 3 for i in idx],
        },
        schema=schema.TOKENS_SCHEMA,
    )


def planted_activations(
    tokens: pa.Table, geometry: Geometry, basis: np.ndarray, rng: np.random.Generator, noise: float = 1.0
) -> np.ndarray:
    """(n_tokens, d_model) activations: noise plus the planted signal along `basis` rows."""
    phase = np.nan_to_num(tokens.column("phase").to_numpy(zero_copy_only=False).astype(float))
    role = np.asarray(tokens.column("role").to_pylist())
    x = rng.normal(0.0, noise, (tokens.num_rows, basis.shape[1]))
    turn = role != "system"
    if geometry == "helix":
        angle = 2 * np.pi * phase
        signal = 4 * np.cos(angle)[:, None] * basis[0] + 4 * np.sin(angle)[:, None] * basis[1]
        signal += 6 * phase[:, None] * basis[2]
        x[turn] += signal[turn]
    elif geometry == "switch":
        x[turn] += 4 * np.where(role[turn] == "assistant", 1.0, -1.0)[:, None] * basis[0]
    return x


def planted_basis(d_model: int, seed: int = 0) -> np.ndarray:
    """(3, d_model) orthonormal rows: cos and sin directions of the clock, then the line.

    The same directions `write_synthetic_dataset(..., d_model=d_model, seed=seed)` plants.
    """
    return _basis(np.random.default_rng(seed), d_model)


def _basis(rng: np.random.Generator, d_model: int) -> np.ndarray:
    return np.linalg.qr(rng.normal(size=(d_model, 3)))[0].T  # 3 orthonormal directions


def write_synthetic_dataset(
    root: Path,
    *,
    geometry: Geometry = "helix",
    n_conversations: int = 12,
    rounds: int = 3,
    layers: tuple[int, ...] = (1, 2),
    d_model: int = 32,
    dtype: schema.Dtype = "float16",
    conversations_per_shard: int = 5,
    seed: int = 0,
) -> Path:
    """Write a complete dataset folder (card and provenance included) and return it."""
    rng = np.random.default_rng(seed)
    basis = _basis(rng, d_model)
    root = Path(root)
    convs = list(range(n_conversations))
    chunks = [
        convs[i : i + conversations_per_shard] for i in range(0, n_conversations, conversations_per_shard)
    ]
    n_tokens = 0
    for shard, chunk in enumerate(chunks):
        tokens = pa.concat_tables([synthetic_tokens(c, rounds, rng) for c in chunk])
        n_tokens += tokens.num_rows
        writer.write_shard(root, schema.TOKENS, shard, len(chunks), tokens)
        for L in layers:
            acts = planted_activations(tokens, geometry, basis, rng)
            writer.write_shard(
                root, schema.layer_config(L), shard, len(chunks), writer.layer_table(tokens, acts, dtype)
            )
    conversations = pa.Table.from_pylist(
        [
            {
                "conversation_id": c,
                "topic": f"topic {c}",
                "messages": [{"role": "system", "content": "s"}]
                + [{"role": r, "content": "x"} for _ in range(rounds) for r in ("user", "assistant")],
                "attempts": [1] * (2 * rounds),
                "model": "synthetic",
            }
            for c in convs
        ],
        schema=schema.CONVERSATIONS_SCHEMA,
    )
    writer.write_shard(root, schema.CONVERSATIONS, 0, 1, conversations)
    rows = {schema.CONVERSATIONS: n_conversations, schema.TOKENS: n_tokens}
    rows |= {schema.layer_config(L): n_tokens for L in layers}
    prov = provenance.make_provenance(
        model={"id": f"synthetic-{geometry}", "n_layers": max(layers) + 1, "d_model": d_model},
        layers=list(layers),
        dtype=dtype,
        seed=seed,
        generation={
            "strategy": "synthetic",
            "rounds": rounds,
            "description": f"Synthetic labels with a planted {geometry} geometry (tests/synthetic.py).",
            "prompts": {},
        },
        counts={"conversations": n_conversations, "dropped": [], "tokens": n_tokens, "rows": rows},
    )
    writer.finalize(root, prov)
    return root
