"""Provenance: what made a dataset, saved next to it as `turnphase.json`.

The same dict feeds the dataset card, the validator's count checks and a resumed build's
"is this the same build?" check (`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime
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


def source_state(root: Path | None = None) -> dict | None:
    """The git commit the running code was checked out at: {commit, committed (its committer's
    time, in UTC), dirty (uncommitted changes to tracked files; untracked files are not counted)};
    None when there is none to read: not a git checkout (an installed wheel, or one installed inside
    another project's repository), no commit yet, or git missing or refusing the folder. A steering
    run records it, so that "fixed before the run" can be read off steer.json: the hypotheses'
    commit, its time, the run's start."""
    root = Path(__file__).resolve().parent.parent if root is None else root
    # the folder's own repository, whatever a calling hook's GIT_DIR says; no index lock taken
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, env=env
        )
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None  # installed inside some other repository's folder
        commit, committed = git("log", "-1", "--format=%H %cI").split(" ", 1)
        committed = datetime.fromisoformat(committed).astimezone(UTC).isoformat()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "committed": committed, "dirty": dirty}


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
