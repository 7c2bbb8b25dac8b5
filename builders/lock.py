"""One writer per folder: an exclusive lock held for a command's whole life.

    with folder_lock(out, "turnphase build"):
        ...  # a second process locking `out` gets one line naming this one, exit 2

The lock is `fcntl.flock` on a hidden file beside the folder (`.NAME.lock`; beside, because the
folder may not exist yet, or may be replaced whole as a report is). The kernel drops it when the
process dies, kill -9 included, so a stale file never blocks anyone. The file holds who locked it,
for the message the second process prints; it is removed on release. (`filelock` truncates the
file on every attempt, which would erase the holder's name, hence these few lines.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from turnphase.builders.errors import TurnphaseError


def lock_path(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def folder_lock(folder: Path, holder: str) -> Iterator[None]:
    """Hold the lock on `folder` for the block; raise TurnphaseError if another process holds it."""
    path = lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TurnphaseError(f"cannot create {path.parent}: {e.strerror}") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TurnphaseError(f"cannot lock {folder}: cannot create {path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise TurnphaseError(
                f"{folder} is in use by {other}; wait for it to finish or stop it, then rerun"
            ) from None
        # The holder before us may have removed the file between our open and our lock: then we
        # locked an orphan, and must lock the file now at `path` instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        try:  # the holder's name is a courtesy for the message; a full disk must not stop the work
            os.ftruncate(fd, 0)
            os.write(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since {started})".encode())
        except OSError:
            pass
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
