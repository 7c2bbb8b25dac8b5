"""Commit a dataset folder as a local git repository, the form olah serves as an offline mirror."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> None:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "turnphase tests",
        "GIT_AUTHOR_EMAIL": "tests@turnphase.invalid",
        "GIT_COMMITTER_NAME": "turnphase tests",
        "GIT_COMMITTER_EMAIL": "tests@turnphase.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, timeout=60)


def commit_folder(repo: Path, message: str = "turnphase dataset") -> None:
    """`git init` the folder on branch main and commit everything in it."""
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
