"""`turnphase build --conversations NS/NAME`: conversations read from a Hub dataset served by olah
(ShareGPT layout, a JSONL file), pinned to the commit in the provenance; an unknown id is one line."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from git_mirror import commit_folder
from hub_clients import hub_env, run_cli
from olah_serving import olah_serving
from tiny_model import TINY_BUILD_ARGS, save_tiny_chat_model

from turnphase.builders import schema

CHATS_ID = "turnphase-test/chats"
ROUNDS = 2  # TINY_BUILD_ARGS


def _chat(i: int) -> list[dict]:
    turns = [{"from": "system", "value": "Answer briefly."}]
    for r in range(3):
        turns += [
            {"from": "human", "value": f"Round {r} of chat {i}: how do bees find flowers?"},
            {"from": "gpt", "value": f"Reply {r} of chat {i}: by scent, colour and the waggle dance."},
        ]
    return turns


@pytest.fixture(scope="module")
def chats_hub(tmp_path_factory):
    pytest.importorskip("olah")
    root = tmp_path_factory.mktemp("olah_chats")
    repo = root / "mirrors" / "datasets" / CHATS_ID
    (repo / "data").mkdir(parents=True)
    rows = [{"id": i, "conversations": _chat(i)} for i in range(4)]
    (repo / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    commit_folder(repo, "chats")
    with olah_serving(root) as endpoint:
        yield endpoint, rows


def test_a_hub_dataset_of_chats_builds_a_dataset(chats_hub, tmp_path):
    endpoint, rows = chats_hub
    model = save_tiny_chat_model(tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["build", "--out", str(out), "--model", str(model), "--conversations", CHATS_ID, *TINY_BUILD_ARGS]
    done = run_cli(args, hub_env(endpoint, tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    stored = pq.read_table(out / schema.CONVERSATIONS).to_pylist()
    names = {"system": "system", "human": "user", "gpt": "assistant"}
    expected = [
        [{"role": names[t["from"]], "content": t["value"]} for t in r["conversations"][: 1 + 2 * ROUNDS]]
        for r in rows
    ]
    assert [r["messages"] for r in stored] == expected
    source = json.loads((out / schema.PROVENANCE_FILE).read_text())["generation"]["source"]
    assert source["kind"] == "hub" and len(source["revision"]) == 40 and source["split"] == "train"
    assert source["rows"][0] == f"{CHATS_ID} train row 0"


def test_an_unknown_hub_dataset_is_one_line(chats_hub, tmp_path):
    endpoint, _ = chats_hub
    out = tmp_path / "out"
    done = run_cli(
        ["build", "--out", str(out), "--conversations", "turnphase-test/absent"], hub_env(endpoint, tmp_path)
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("turnphase")]
    assert (
        len(errors) == 1 and "--conversations turnphase-test/absent: not a local file or folder" in errors[0]
    )
    assert not out.exists()
