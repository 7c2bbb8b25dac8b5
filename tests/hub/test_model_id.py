"""A `--model` Hub id the Hub cannot give: one line and exit 2 after one request, not
transformers' minute of retries (against the STAND-IN Hub, which serves no models, and a closed port)."""

from __future__ import annotations

import socket

from hub_clients import hub_env, run_cli

MODEL = "alice/no-such-model"


def _one_line(done) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("turnphase build: error:"), done.stderr[-3000:]
    return lines[0]


def test_a_model_the_hub_does_not_have_fails_after_one_request(standin_hub, tmp_path):
    env = hub_env(standin_hub.endpoint, tmp_path)
    line = _one_line(run_cli(["build", "--out", str(tmp_path / "ds"), "--model", MODEL], env))
    assert f"{MODEL}: not a local folder or .gguf file, not in the Hugging Face cache" in line
    assert "the Hub cannot provide it (" in line and "404" in line
    asked = [path for _, path, _ in standin_hub.requests if MODEL in path]
    assert len(asked) == 1 and asked[0].startswith(f"/api/models/{MODEL}"), standin_hub.requests
    assert not (tmp_path / "ds").exists()


def test_an_unreachable_hub_fails_in_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = hub_env(f"http://127.0.0.1:{port}", tmp_path)
    line = _one_line(run_cli(["build", "--out", str(tmp_path / "ds"), "--model", MODEL], env))
    assert "the Hub cannot provide it" in line and "Connect" in line
    assert not (tmp_path / "ds").exists()
