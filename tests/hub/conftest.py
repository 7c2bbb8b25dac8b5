"""Fixtures for Hub tests: a stand-in Hub that accepts pushes, and olah serving a local mirror.

Servers bind 127.0.0.1 on a free port and stop with their fixture; every wait is bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from git_mirror import commit_folder
from hub_clients import analyze, hub_env
from olah_serving import olah_serving
from standin_hub import StandinHub
from synthetic import write_synthetic_dataset


@pytest.fixture
def standin_hub():
    with StandinHub() as hub:
        yield hub


# Every dataset here is this one (the writer is seeded), so one folder analysis serves as reference.
DATASET = {"n_conversations": 12, "conversations_per_shard": 5}


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A small valid dataset folder: 12 conversations in 3 shards, layers 1 and 2."""
    return write_synthetic_dataset(tmp_path / "ds", **DATASET)


@pytest.fixture(scope="session")
def folder_report(tmp_path_factory) -> dict:
    """`turnphase analyze` of the DATASET folder: what analysing a pushed copy must reproduce."""
    pytest.importorskip("turnphase.analysis.report", reason="the analysis package is not there yet")
    root = tmp_path_factory.mktemp("reference")
    folder = write_synthetic_dataset(root / "ds", **DATASET)
    return analyze(str(folder), root / "report", hub_env("http://127.0.0.1:9", root))


# ---- olah ---------------------------------------------------------------------------------------

OLAH_REPO_ID = "turnphase-test/turnphase-synthetic"


@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory):
    """olah in offline mode serving one dataset repo from a local git mirror.

    Yields (endpoint, repo_id, folder); `folder` is a checkout identical to the served repo.
    """
    pytest.importorskip("olah")
    root = tmp_path_factory.mktemp("olah")
    repo = root / "mirrors" / "datasets" / OLAH_REPO_ID
    write_synthetic_dataset(repo, **DATASET)
    commit_folder(repo, "turnphase synthetic dataset")
    with olah_serving(root) as endpoint:
        yield endpoint, OLAH_REPO_ID, repo
