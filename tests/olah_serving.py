"""olah (a Hub-compatible server, offline) serving local git mirrors, for the Hub tests.

with olah_serving(root) as endpoint:   # serves root/mirrors/datasets/NS/NAME (git repos)
    ...                                 # clients use HF_ENDPOINT=endpoint (hub_clients.hub_env)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OLAH_SERVER = Path(__file__).parent / "hub" / "olah_server.py"
SERVER_START_TIMEOUT_S = 60


@contextmanager
def olah_serving(root: Path) -> Iterator[str]:
    """olah, offline, serving the git repos under `root/mirrors/{datasets,models}/NS/NAME`; yields
    its endpoint and stops it on exit."""
    config = root / "olah.toml"
    config.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f'repos-path = "{root / "cache"}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\n'
        "[accessibility]\n"
        "offline = true\n"
    )
    log = open(root / "olah.log", "w")
    server = subprocess.Popen(
        [sys.executable, str(OLAH_SERVER), str(config), str(root / "logs")],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    try:
        yield _read_endpoint(server)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


def _read_endpoint(server: subprocess.Popen) -> str:
    """The launcher prints `http://127.0.0.1:PORT` once it listens; bounded by a timer."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(server.stdout.readline()), daemon=True)
    reader.start()
    reader.join(SERVER_START_TIMEOUT_S)
    if not line or not line[0].startswith("http://"):
        server.kill()
        raise RuntimeError(f"olah did not start within {SERVER_START_TIMEOUT_S}s: {line}")
    return line[0].strip()
