"""Clients for the Hub tests, run as subprocesses with their own HF_ENDPOINT and caches.

huggingface_hub reads HF_ENDPOINT when it is imported, so every client here (the `turnphase` CLI,
`read_repo.py`) runs in a subprocess with `hub_env(endpoint, home)`; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from turnphase.builders import schema

HERE = Path(__file__).parent
CLIENT_TIMEOUT_S = 180
SERVER_START_TIMEOUT_S = 60


def hub_env(endpoint: str, home: Path, token: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for a client subprocess talking to `endpoint` with caches under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home / "hf_home"),
        "HF_DATASETS_CACHE": str(home / "hf_datasets_cache"),
        "HF_HUB_DISABLE_XET": "1",  # the stand-in speaks the LFS protocol, not Xet
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "30",
        "HF_HUB_DOWNLOAD_TIMEOUT": "30",
        "OMP_NUM_THREADS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if token is not None:
        env["HF_TOKEN"] = token
    return env | extra


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "turnphase.builders.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )


def read_repo(
    repo_id: str, config: str, env: dict[str, str], *, streaming: bool, revision: str | None = None
) -> dict:
    """Summary of `config` as `load_dataset(repo_id, config)` sees it through the endpoint in `env`."""
    args = [sys.executable, str(HERE / "read_repo.py"), repo_id, config]
    args += ["--streaming"] if streaming else []
    args += ["--revision", revision] if revision else []
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize_folder(folder: Path, config: str) -> dict:
    """The numbers `read_repo` prints, computed from the local folder with pyarrow."""
    rows, keys, act_sum, width = 0, 0, 0.0, None
    for path in sorted((folder / config).glob(schema.SHARD_GLOB)):
        table = pq.read_table(path)
        rows += table.num_rows
        if "position" in table.column_names:
            cid = table.column("conversation_id").to_numpy().astype(np.int64)
            keys += int((cid * 100_003 + table.column("position").to_numpy()).sum())
        if schema.ACTIVATION in table.column_names:
            column = table.column(schema.ACTIVATION).combine_chunks()
            width = column.type.list_size
            act_sum += float(pc.list_flatten(column).to_numpy().astype(np.float64).sum())
    provenance = json.loads((folder / schema.PROVENANCE_FILE).read_text())
    return {"rows": rows, "keys": keys, "act_sum": act_sum, "width": width, "provenance": provenance}


def folder_files(folder: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file a push publishes (hidden files and folders excluded)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = path.read_bytes()
    return out


ANALYZE_FAST = ["--layers", "1", "--bootstrap", "20"]


def analyze(source: str, out: Path, env: dict[str, str], *extra: str) -> dict:
    """`turnphase analyze SOURCE --out OUT` in a subprocess; returns report.json's numbers."""
    done = run_cli(["analyze", source, "--out", str(out), *ANALYZE_FAST, *extra], env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    return {k: report[k] for k in ("tokens", "layers", "summary")}
