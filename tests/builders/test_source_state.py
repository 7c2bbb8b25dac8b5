"""source_state: the commit a run's code comes from, as steer.json records it (`run.source`)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest
from git_mirror import commit_folder, git

from turnphase.builders.provenance import source_state
from turnphase.steering.summary import source_line

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def test_a_checkout_gives_its_commit_and_whether_tracked_files_changed(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    commit_folder(tmp_path)
    state = source_state(tmp_path)
    assert state["commit"] == git(tmp_path, "rev-parse", "HEAD") and state["dirty"] is False
    committed = datetime.fromisoformat(state["committed"])
    assert committed.utcoffset().total_seconds() == 0  # in UTC, like the run's start
    assert committed == datetime.fromisoformat(git(tmp_path, "log", "-1", "--format=%cI"))
    (tmp_path / "new.py").write_text("y = 2\n")  # untracked files are not counted
    assert source_state(tmp_path)["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_state(tmp_path) == {**state, "dirty": True}


def test_no_commit_outside_a_checkout_below_its_top_or_without_git(tmp_path, monkeypatch):
    assert source_state(tmp_path) is None  # not a repository
    git(tmp_path, "init", "-q")
    assert source_state(tmp_path) is None  # a repository without a commit
    (tmp_path / "a.py").write_text("x = 1\n")
    commit_folder(tmp_path)
    head = git(tmp_path, "rev-parse", "HEAD")
    inside = tmp_path / "venv" / "site-packages"
    inside.mkdir(parents=True)
    assert source_state(inside) is None  # installed inside some other project's repository
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))  # a calling hook's: not this folder's
    assert source_state(tmp_path)["commit"] == head
    monkeypatch.setenv("PATH", "")
    assert source_state(tmp_path) is None  # no git to ask


def test_the_findings_line_says_when_and_from_what_code():
    started = datetime(2026, 12, 7, 14, 37, 19, tzinfo=UTC).isoformat()
    source = {"commit": "869408f" + "0" * 33, "committed": "2026-12-07T14:37:18+00:00", "dirty": False}
    line = source_line({"started": started, "source": source})
    assert line == (
        "The run started 2026-12-07T14:37:19+00:00, from commit 869408f00000 (committed 2026-12-07T14:37:18+00:00)."
    )
    dirty = source_line({"started": started, "source": {**source, "dirty": True}})
    assert dirty.endswith("+00:00), with uncommitted changes to tracked files.")
    none = source_line({"started": started, "source": None})
    assert (
        none
        == "The run started 2026-12-07T14:37:19+00:00; no commit recorded (not a git checkout, or git unavailable)."
    )
