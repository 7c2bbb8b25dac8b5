"""The Hugging Face token is sent to the Hub and nowhere else: not in output, logs or files.

Pushes run against the STAND-IN Hub (standin_hub.py) with a distinctive fake token and
huggingface_hub's most verbose logging (HF_DEBUG=1 prints every request as a curl command).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from hub_clients import hub_env, read_repo, run_cli

from turnphase.builders.errors import TurnphaseError
from turnphase.builders.push import push_folder

TOKEN = "hf_tpSECRET_do_not_leak_7f3a9c0e1b2d4f6a8c"
REPO = "alice/turnphase-secrecy"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_token_reaches_the_hub_only(standin_hub, dataset, tmp_path):
    env = hub_env(standin_hub.endpoint, tmp_path, token=TOKEN, HF_DEBUG="1", HF_HUB_VERBOSITY="debug")
    outputs = []
    standin_hub.interrupt_after_puts = 2  # the error path prints too
    failed = run_cli(["push", str(dataset), REPO, "--private"], env)
    assert failed.returncode == 2
    standin_hub.interrupt_after_puts = None
    pushed = run_cli(["push", str(dataset), REPO, "--private"], env)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    outputs += [failed.stdout, failed.stderr, pushed.stdout, pushed.stderr]
    read_repo(REPO, "layer_1", env, streaming=True)

    assert any(auth == f"Bearer {TOKEN}" for _, _, auth in standin_hub.requests), "the token was never sent"
    assert "authorization: <TOKEN>" in pushed.stderr  # debug logging was on, and masked it
    for text in outputs:
        assert TOKEN not in text
    # dataset folder, HF_HOME (hub cache, token files), datasets cache: everything under tmp_path
    assert _files_containing(tmp_path, TOKEN.encode()) == []
    assert all(TOKEN.encode() not in data for data in standin_hub.files(REPO).values())


def test_token_not_in_python_logs_or_errors(standin_hub, dataset, monkeypatch, caplog):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", standin_hub.endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    hf_tqdm = sys.modules["huggingface_hub.utils.tqdm"]  # `huggingface_hub.utils.tqdm` is the class
    monkeypatch.setattr(hf_tqdm, "are_progress_bars_disabled", lambda *a, **k: True)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # its own logger defaults to WARNING

    standin_hub.interrupt_after_puts = 1
    with pytest.raises(TurnphaseError) as refused:
        push_folder(dataset, REPO, private=False, revision="v2", token=TOKEN)
    assert TOKEN not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__

    standin_hub.interrupt_after_puts = None
    url = push_folder(dataset, REPO, private=False, revision="v2", token=TOKEN)
    assert url == f"{standin_hub.endpoint}/datasets/{REPO}/tree/v2"
    assert any(r.name.startswith("huggingface_hub") and r.levelno == logging.DEBUG for r in caplog.records)
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    assert TOKEN not in caplog.text
