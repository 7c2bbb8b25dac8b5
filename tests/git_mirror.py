"""Commit a dataset folder as a local git repository, the form olah serves as an offline mirror."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> str:
    """git in `cwd` without user or system config, and without a caller's GIT_* (a hook's GIT_DIR);
    its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {
        "GIT_AUTHOR_NAME": "turnphase tests",
        "GIT_AUTHOR_EMAIL": "tests@turnphase.invalid",
        "GIT_COMMITTER_NAME": "turnphase tests",
        "GIT_COMMITTER_EMAIL": "tests@turnphase.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


def commit_folder(repo: Path, message: str = "turnphase dataset") -> None:
    """`git init` the folder on branch main and commit everything in it."""
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
