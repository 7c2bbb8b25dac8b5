"""Run olah (a real Hub-compatible mirror server) on 127.0.0.1, a free port, for the read tests.

    python tests/hub/olah_server.py OLAH_TOML LOG_DIR     # prints http://127.0.0.1:PORT, then serves

olah serves the git repositories under the config's `mirrors-path`
(`<mirrors>/datasets/<namespace>/<name>`) in offline mode, through the same REST and resolve
routes as the Hub. One gap, measured with olah 0.5.4: for local-mirror files its resolve route
ignores `Range` and answers 200 with the whole file. HTTP allows that, but huggingface_hub's
HfFileSystem (what `load_dataset(..., streaming=True)` reads Parquet footers and row groups
through) trusts the body to be the requested range, so streaming reads garbage. The Hub answers
206 with the range, so `RangeFromFullBody` below turns olah's full 200 bodies into the 206 partial
responses the Hub gives. Everything else is olah's.
"""

from __future__ import annotations

import os
import re
import socket
import sys


class RangeFromFullBody:
    """ASGI middleware: answer a `Range` GET with 206 and the slice when the app ignored Range."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers") or [])
        rng = headers.get(b"range")
        if scope["type"] != "http" or scope["method"] != "GET" or rng is None:
            return await self.app(scope, receive, send)
        start_message, chunks = {}, []

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                start_message.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        status = start_message.get("status", 500)
        out_headers = [(k, v) for k, v in start_message.get("headers", []) if k.lower() != b"content-length"]
        m = re.fullmatch(rb"bytes=(\d*)-(\d*)", rng.strip())
        if status == 200 and m and (m[1] or m[2]):
            size = len(body)
            start = int(m[1]) if m[1] else max(size - int(m[2]), 0)
            end = min(int(m[2]), size - 1) if (m[1] and m[2]) else size - 1
            if start > end:
                status, body = 416, b""
                out_headers.append((b"content-range", f"bytes */{size}".encode()))
            else:
                status, body = 206, body[start : end + 1]
                out_headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
        out_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    config_path, log_dir = sys.argv[1], sys.argv[2]
    os.environ["OLAH_CONFIG"] = config_path  # olah.server configures its app from this at import
    os.environ["OLAH_LOG_PATH"] = log_dir
    import uvicorn
    from olah.server import app  # replaces sys.stdout with a logger; the port goes to fd 1 below

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # olah writes URLs for LFS redirects from its mirror netloc; point it at the real port.
    settings = app.state.app_settings.config
    settings.mirror_netloc = settings.mirror_lfs_netloc = f"127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(RangeFromFullBody(app), log_level="warning", lifespan="on"))
    os.write(1, f"http://127.0.0.1:{port}\n".encode())
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
