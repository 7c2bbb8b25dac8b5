"""Conversations read from files: every layout, the skip / cut / sample rules, system options,
bad input (one line naming the file and row, exit 2, nothing written), a build that stores the
source's turns and one that regenerates the assistant's, and the analysis of such a dataset.
(A Hub dataset id as the source: tests/hub/test_conversation_source.py.)"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_model import TINY_BUILD_ARGS as TINY_ARGS

from turnphase.builders import schema
from turnphase.builders.cli import main
from turnphase.builders.errors import TurnphaseError
from turnphase.builders.sources import SourceOptions, read_source
from turnphase.builders.validate import validate


def chat(i: int, rounds: int, system: str | None = "Be brief.") -> list[dict]:
    """A conversation with `rounds` rounds whose turns are all different."""
    out = [{"role": "system", "content": system}] if system else []
    for r in range(rounds):
        out.append({"role": "user", "content": f"Question {r} of chat {i}: why does the tide turn?"})
        out.append({"role": "assistant", "content": f"Answer {r} of chat {i}: the moon pulls the sea."})
    return out


def sharegpt(messages: list[dict]) -> list[dict]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in messages]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def opts(source, **kw) -> SourceOptions:
    return SourceOptions(source=str(source), **({"rounds": 2, "n": 50, "seed": 0} | kw))


def test_every_layout_reads_the_same_conversations(tmp_path):
    convs = [chat(i, 2) for i in range(3)]
    messages = write_jsonl(tmp_path / "messages.jsonl", [{"messages": c} for c in convs])
    wild = tmp_path / "wildchat.json"  # WildChat: extra keys on each message, and on the row
    wild.write_text(
        json.dumps([{"conversation": [m | {"language": "English"} for m in c], "hash": 1} for c in convs])
    )
    share = tmp_path / "sharegpt.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"id": i, "conversations": sharegpt(c)} for i, c in enumerate(convs)]), share
    )
    custom = write_jsonl(tmp_path / "custom.jsonl", [{"dialog": c} for c in convs])
    for source, column in ((messages, None), (wild, None), (share, None), (custom, "dialog")):
        read, info = read_source(opts(source, column=column))
        assert [c.messages for c in read] == convs, source.name
        assert [c.conversation_id for c in read] == [0, 1, 2]
        assert read[0].topic.startswith("Question 0 of chat 0") and read[0].attempts == [0] * 4
        assert info["kind"] == "files" and len(info["files"][str(source)]) == 64
    folder = tmp_path / "folder"
    folder.mkdir()
    for f in (messages, share):
        (folder / f.name).write_bytes(f.read_bytes())
    read, info = read_source(opts(folder))
    assert len(read) == 6 and len(info["files"]) == 2


def test_short_conversations_are_skipped_long_ones_cut_and_n_samples(tmp_path):
    rows = [{"messages": chat(i, r)} for i, r in enumerate([1, 2, 3, 2, 4, 1, 2])]
    rows[3]["messages"].append({"role": "user", "content": "And one more question without an answer?"})
    source = write_jsonl(tmp_path / "mixed.jsonl", rows)
    read, info = read_source(opts(source))
    assert len(read) == 5 and all(len(c.messages) == 5 for c in read)  # system + 2 rounds
    assert info["read"] == 7 and info["skipped"] == {"fewer than 2 rounds": 2}
    assert info["cut_at_rounds"] == 3  # 3 rounds, 4 rounds, and 2 rounds plus a dangling question
    assert info["rows"][0] == f"{source}:2"  # file:line
    sample, info = read_source(opts(source, n=3, seed=1))
    again, _ = read_source(opts(source, n=3, seed=1))
    assert [c.messages for c in sample] == [c.messages for c in again] and info["sampled"]
    assert [c.conversation_id for c in sample] == [0, 1, 2]
    lines = [int(r.rsplit(":", 1)[1]) for r in info["rows"]]
    assert lines == sorted(lines)  # a sample keeps the source's order


def test_system_messages_kept_dropped_or_replaced(tmp_path):
    source = write_jsonl(
        tmp_path / "s.jsonl", [{"messages": chat(0, 2)}, {"messages": chat(1, 2, system=None)}]
    )
    kept, _ = read_source(opts(source))
    assert [c.messages[0]["role"] for c in kept] == ["system", "user"]
    dropped, _ = read_source(opts(source, system="drop"))
    assert all(c.messages[0]["role"] == "user" for c in dropped)
    replaced, _ = read_source(opts(source, system="replace", system_prompt="You answer in one line."))
    assert all(c.messages[0] == {"role": "system", "content": "You answer in one line."} for c in replaced)


BAD_ROWS = {
    "no messages column": ({"text": "hi"}, "no messages / conversation / conversations column"),
    "not a list of messages": ({"messages": "hello"}, "column 'messages' is not a list of messages"),
    "unknown role": ({"messages": [{"role": "narrator", "content": "Once."}]}, "has role 'narrator'"),
    "roles do not alternate": (
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "user", "content": "Hello?"}]},
        "message 1 is user, expected assistant",
    ),
    "empty content": (
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "  "}]},
        "message 1 (assistant) has empty content",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_rows_are_one_line_naming_file_and_row(case, tiny_model_dir, tmp_path, capsys):
    row, words = BAD_ROWS[case]
    source = write_jsonl(tmp_path / "bad.jsonl", [{"messages": chat(0, 2)}, row])
    out = tmp_path / "out"
    capsys.readouterr()
    assert (
        main(["build", "--out", str(out), "--model", str(tiny_model_dir), "--conversations", str(source)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"turnphase build: error: {source}:2: ") and words in err[0], (
        err
    )
    assert not out.exists()


def test_bad_sources(tmp_path):
    with pytest.raises(TurnphaseError, match="no such file or folder"):
        read_source(opts(tmp_path / "absent.jsonl"))
    (tmp_path / "x.jsonl").write_text('{"messages": [\n')
    with pytest.raises(TurnphaseError, match=r"x.jsonl:1: not JSON"):
        read_source(opts(tmp_path / "x.jsonl"))
    (tmp_path / "y.json").write_text('{"rows": 3}')
    with pytest.raises(TurnphaseError, match="a JSON source is a list of rows"):
        read_source(opts(tmp_path / "y.json"))
    (tmp_path / "z.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(TurnphaseError, match="z.parquet: not a readable .parquet file"):
        read_source(opts(tmp_path / "z.parquet"))
    for name, text in [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.json", ""), ("list.json", "[]")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(TurnphaseError, match=f"{name}: holds no conversations"):
            read_source(opts(tmp_path / name))
    (tmp_path / "nothing.parquet").write_bytes(b"")
    with pytest.raises(TurnphaseError, match="nothing.parquet: holds no conversations"):
        read_source(opts(tmp_path / "nothing.parquet"))
    (tmp_path / "none").mkdir()
    with pytest.raises(TurnphaseError, match="none: no .* files in this folder"):
        read_source(opts(tmp_path / "none"))
    short = write_jsonl(tmp_path / "short.jsonl", [{"messages": chat(0, 1)}])
    with pytest.raises(TurnphaseError, match="none of its 1 conversations has 2 complete rounds"):
        read_source(opts(short))
    with pytest.raises(TurnphaseError, match="--system replace needs --system-prompt"):
        read_source(opts(short, system="replace"))


def _build(out, model, source, *extra):
    args = ["build", "--out", str(out), "--model", str(model), "--conversations", str(source)]
    return main([*args, *TINY_ARGS, *extra])


def test_a_build_from_a_file_stores_its_turns_and_analyses(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(i, 3)} for i in range(6)])
    out = tmp_path / "from_file"
    assert _build(out, tiny_model_dir, source, "-n", "5") == 0
    assert validate(out) == []
    stored = pq.read_table(out / schema.CONVERSATIONS).to_pylist()
    read, _ = read_source(opts(source, n=5, seed=7))  # TINY_ARGS: --rounds 2 --seed 7
    assert [r["messages"] for r in stored] == [c.messages for c in read]
    prov = json.loads((out / schema.PROVENANCE_FILE).read_text())
    source_info = prov["generation"]["source"]
    assert source_info["files"] == {str(source): read_source(opts(source))[1]["files"][str(source)]}
    assert source_info["cut_at_rounds"] == 6 and prov["generation"]["regenerate"] == "none"
    card = (out / schema.CARD_FILE).read_text()
    assert f"read from `{source}`" in card and "assistant turns | the source's" in card
    report = tmp_path / "report"
    assert main(["analyze", str(out), "--out", str(report), "--folds", "3", "--bootstrap", "20"]) == 0
    assert (report / "report.json").exists()


def test_regenerate_assistant_keeps_user_turns_and_writes_the_rest(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat(i, 2)} for i in range(4)])
    out = tmp_path / "regenerated"
    assert _build(out, tiny_model_dir, source, "--regenerate", "assistant") == 0
    assert validate(out) == []
    stored = pq.read_table(out / schema.CONVERSATIONS).to_pylist()
    read, _ = read_source(opts(source))
    assert stored  # conversations whose answers kept failing may be dropped, not all
    for row in stored:
        original = read[row["conversation_id"]]
        users = [m["content"] for m in row["messages"] if m["role"] == "user"]
        assert users == [m["content"] for m in original.messages if m["role"] == "user"]
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert len(answers) == 2 and not set(answers) & {m["content"] for m in original.messages}
        assert row["attempts"][0] == 0 and row["attempts"][1] >= 1  # given user turn, generated answer
    card = (out / schema.CARD_FILE).read_text()
    assert "assistant turns | regenerated by the model" in card


def test_conversations_longer_than_the_context_are_skipped_and_counted(tiny_model_dir, tmp_path):
    rows = [{"messages": chat(i, 2)} for i in range(4)]
    rows[1]["messages"][2]["content"] = "the moon pulls the sea " * 600  # beyond the tiny model's 2048
    source = write_jsonl(tmp_path / "long.jsonl", rows)
    out = tmp_path / "out"
    assert _build(out, tiny_model_dir, source) == 0
    prov = json.loads((out / schema.PROVENANCE_FILE).read_text())
    assert prov["generation"]["source"]["skipped"] == {"longer than the model's context": 1}
    assert prov["counts"]["conversations"] == 3
    assert prov["generation"]["source"]["rows"] == [f"{source}:{n}" for n in (1, 3, 4)]
