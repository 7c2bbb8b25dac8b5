"""Analysing a Hub dataset id in memory, and an unknown id, over olah (a Hub-compatible server).
(tests/hub/test_olah_read.py covers the streamed read of a Hub id.)

The server is started through the documented command line of tests/hub/olah_server.py; the
client runs in a subprocess because huggingface_hub reads HF_ENDPOINT when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from git_mirror import commit_folder
from olah_serving import olah_serving
from reference import assert_same
from synthetic import write_synthetic_dataset

from turnphase.analysis.config import AnalysisConfig
from turnphase.analysis.report import analyze

REPO_ID = "turnphase-test/turnphase-analysis"
DAMAGED_ID = "turnphase-test/turnphase-damaged"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(endpoint, local folder identical to the served repo)."""
    pytest.importorskip("olah")
    root = tmp_path_factory.mktemp("olah_analysis")
    repo = write_synthetic_dataset(root / "mirrors" / "datasets" / REPO_ID)
    commit_folder(repo, "data")
    # the same dataset with one layer shard that lost its activations
    damaged = write_synthetic_dataset(root / "mirrors" / "datasets" / DAMAGED_ID)
    shard = next((damaged / "layer_1").glob("*.parquet"))
    pq.write_table(pq.read_table(shard).drop_columns(["activation"]), shard)
    commit_folder(damaged, "data")
    with olah_serving(root) as endpoint:
        yield endpoint, repo


def run_analyze(endpoint: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home / "hf_home"),
        "HF_DATASETS_CACHE": str(home / "datasets_cache"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "TQDM_DISABLE": "1",
    }
    cmd = [sys.executable, "-m", "turnphase.builders.cli", "analyze", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_hub_id_in_memory_gives_the_folder_report(hub, tmp_path):
    endpoint, folder = hub
    done = run_analyze(endpoint, tmp_path, REPO_ID, "--out", str(tmp_path / "r"), "--layers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "r" / "report.json").read_text())
    local = analyze(AnalysisConfig(str(folder), layers=[1]), tmp_path / "local", verbose=False).report
    assert got.pop("source") == REPO_ID
    assert got["config"].pop("source") == REPO_ID
    local.pop("source"), local["config"].pop("source")
    assert_same(got, local)


def test_unknown_hub_id_is_one_line(hub, tmp_path):
    endpoint, _ = hub
    done = run_analyze(endpoint, tmp_path, "turnphase-test/absent", "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "turnphase-test/absent: not a local folder" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_damaged_hub_dataset_is_refused_before_any_work(hub, tmp_path):
    """Shard schemas are read from the Parquet footers over the Hub API, before labels or layers."""
    endpoint, _ = hub
    done = run_analyze(endpoint, tmp_path, DAMAGED_ID, "--out", str(tmp_path / "r"), "--streaming")
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("turnphase")]
    assert len(errors) == 1 and "layer_1/train-" in errors[0] and "missing activation" in errors[0], errors
    assert not (tmp_path / "r").exists()


def test_hub_id_on_a_two_worker_cluster_gives_the_folder_report(hub, tmp_path):
    """The workers read the shards themselves, over hf:// URLs pinned to the commit the client opened."""
    pytest.importorskip("distributed")
    endpoint, folder = hub
    out = tmp_path / "r"
    done = run_analyze(endpoint, tmp_path, REPO_ID, "--out", str(out), "--layers", "1", "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((out / "report.json").read_text())
    local = analyze(AnalysisConfig(str(folder), layers=[1]), tmp_path / "local", verbose=False).report
    assert got["config"].pop("workers") == 2 and local["config"].pop("workers") is None
    for report in (got, local):
        report.pop("source"), report["config"].pop("source"), report.pop("timings")
    assert_same(got, local)
