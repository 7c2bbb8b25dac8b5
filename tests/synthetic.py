"""Synthetic turnphase datasets with planted geometry, written through the real writer and schema.

    write_synthetic_dataset(tmp_path / "ds", geometry="helix")

Token labels follow the same phase rules as `builders/phases.py` (they are computed by its
`ramp`), activations are Gaussian noise plus a planted signal:

- "helix":        cos/sin of 2*pi*phase in a random plane (the clock) plus phase along a third direction
- "weak_helix":   the same clock at radius 1.2 and a line of slope 1.5, under 30 directions of
                  standard deviation 3 that carry nothing: the clock's plane is far below the top PCs
- "switch":       only whose turn it is (a step between user and assistant), no position within a turn
- "switch_ramps": whose turn it is, plus the index in the turn along one direction shared by both
                  roles (restarting every turn): no rotation, yet a high trig R^2 with the study's labels
- "progress":     phase along one direction (a progress bar), nothing else
- "noise":        nothing but noise
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from turnphase.builders import provenance, schema, writer
from turnphase.builders.phases import PHASE_START, ramp

Geometry = Literal["helix", "weak_helix", "switch", "switch_ramps", "progress", "noise"]
N_DISTRACTORS = 30  # high-variance directions under which the weak helix hides


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
    index = tokens.column("index_in_turn").to_numpy().astype(float)
    length = tokens.column("turn_length").to_numpy().astype(float)
    x = rng.normal(0.0, noise, (tokens.num_rows, basis.shape[1]))
    turn = role != "system"
    angle = 2 * np.pi * phase
    switch = np.where(role == "assistant", 1.0, -1.0)
    if geometry in ("helix", "weak_helix"):
        radius, slope = (4.0, 6.0) if geometry == "helix" else (1.2, 1.5)
        signal = radius * (np.cos(angle)[:, None] * basis[0] + np.sin(angle)[:, None] * basis[1])
        signal += slope * phase[:, None] * basis[2]
        if geometry == "weak_helix":
            signal += 3.0 * rng.normal(size=(len(x), N_DISTRACTORS)) @ basis[3 : 3 + N_DISTRACTORS]
        x[turn] += signal[turn]
    elif geometry == "switch":
        x[turn] += 4 * switch[turn, None] * basis[0]
    elif geometry == "switch_ramps":
        ramp_in_turn = index / np.maximum(length - 1, 1)
        x[turn] += (2 * switch[:, None] * basis[0] + 4 * ramp_in_turn[:, None] * basis[1])[turn]
    elif geometry == "progress":
        x[turn] += 6 * phase[turn, None] * basis[2]
    return x


def planted_basis(d_model: int, seed: int = 0) -> np.ndarray:
    """(d, d_model) orthonormal rows: cos and sin directions of the clock, the line, then distractors.

    The same directions `write_synthetic_dataset(..., d_model=d_model, seed=seed)` plants.
    """
    return _basis(np.random.default_rng(seed), d_model)


def _basis(rng: np.random.Generator, d_model: int) -> np.ndarray:
    k = min(d_model, 3 + N_DISTRACTORS)
    return np.linalg.qr(rng.normal(size=(d_model, k)))[0].T  # (k, d_model) orthonormal directions


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
