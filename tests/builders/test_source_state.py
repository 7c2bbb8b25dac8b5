"""source_state: the commit a run's code comes from, as steer.json records it (`run.source`)."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

from turnphase.builders.provenance import source_state

ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, env={**os.environ, **ENV}
    )
    return done.stdout.strip()


def test_a_checkout_gives_its_commit_and_whether_tracked_files_changed(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    state = source_state(tmp_path)
    assert state["commit"] == git(tmp_path, "rev-parse", "HEAD") and state["dirty"] is False
    assert datetime.fromisoformat(state["committed"]).isoformat() == git(
        tmp_path, "log", "-1", "--format=%cI"
    )
    (tmp_path / "new.py").write_text("y = 2\n")  # untracked: not the code that ran
    assert source_state(tmp_path)["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_state(tmp_path) == {**state, "dirty": True}


def test_no_commit_outside_a_checkout_or_below_its_top(tmp_path):
    assert source_state(tmp_path) is None  # not a repository
    git(tmp_path, "init", "-q")
    assert source_state(tmp_path) is None  # a repository without a commit
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    inside = tmp_path / "venv" / "site-packages"
    inside.mkdir(parents=True)
    assert source_state(inside) is None  # installed inside some other project's repository
