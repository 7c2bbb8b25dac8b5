"""Provenance: what made a dataset, saved next to it as `turnphase.json`.

The same dict feeds the dataset card, the validator's count checks and a resumed build's
"is this the same build?" check (`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

from turnphase.builders import schema


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def turnphase_version() -> str:
    try:
        return version("turnphase")
    except Exception:  # running from a source tree that was never installed
        return "0+unknown"


def make_provenance(
    *,
    model: dict,
    layers: list[int],
    dtype: str,
    seed: int,
    generation: dict,
    counts: dict,
    license: str = "other",
    build_options: dict | None = None,
) -> dict:
    """Assemble the provenance dict.

    model: {id, revision, weights_sha256, n_layers, d_model, n_params, chat_template_sha256,
            license (the model's, as its metadata states it; "unknown" if none does)}
    license: the dataset's licence, for its card
    generation: {strategy, rounds, description, prompts, settings...}
    counts: {conversations, dropped: [{conversation_id, topic, reason}], tokens,
             tokens_by_role, rows: {config: n}, shards: {config: n}, ...}; `writer.finalize` adds
             bytes (Parquet bytes per config) and arrow_bytes (per config, the Arrow size `datasets`
             gives as the split's `num_bytes`; missing in builds from before it was recorded)
    """
    return {
        "turnphase_version": turnphase_version(),
        "schema_version": schema.SCHEMA_VERSION,
        "model": model,
        "layers": list(layers),
        "dtype": dtype,
        "seed": seed,
        "license": license,
        "generation": generation,
        "build_options": build_options or {},
        "counts": counts,
    }


def fingerprint(options: dict) -> str:
    """A stable hash of a JSON object: the options that determine a build's data (not its output
    folder), or a dataset's whole provenance (which dataset a report was made from)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def read_provenance(root: Path) -> dict:
    return json.loads((Path(root) / schema.PROVENANCE_FILE).read_text())
