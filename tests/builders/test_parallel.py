"""Data-parallel builds (builders/parallel.py) under torchrun (and `accelerate launch`), on CPU: gloo,
2 processes, tiny model.

The sharded build validates, loads with `load_dataset`, holds every conversation once and equals a
one-process build of the same options row for row, for generated conversations and for ones read
from a file; a rank killed mid-build is completed by running the same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from tiny_model import TINY_BUILD_ARGS

from turnphase.builders import parallel, schema
from turnphase.builders.cli import main
from turnphase.builders.validate import validate

# seed 2: conversation 2 is dropped (every turn cut off at the limit), one of each rank's kept
ARGS = [*TINY_BUILD_ARGS[: TINY_BUILD_ARGS.index("--seed")], "--seed", "2", "--seed-per-conversation"]
CONFIGS = ["conversations", "tokens", "layer_1", "layer_3"]


def torchrun(out: Path, model: Path, args: list[str], marker: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "turnphase", "build", "--out", str(out), "--model", str(model), *args]
    env = os.environ | {"TURNPHASE_TEST_RUN": marker, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "ds"
    assert main(["build", "--out", str(out), "--model", str(tiny_model_dir), *ARGS]) == 0
    return out


def read_config(root: Path, config: str):
    return pq.read_table(sorted((root / config).glob(schema.SHARD_GLOB)))


def assert_same_rows(a: Path, b: Path) -> None:
    for config in CONFIGS:
        assert read_config(a, config).equals(read_config(b, config)), config


def both_ways(model: Path, args: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """Build with `args` in one process and on two ranks; check the rows agree; return the
    provenances (two ranks, one process)."""
    one = tmp_path / "one"
    assert main(["build", "--out", str(one), "--model", str(model), *args]) == 0
    out = tmp_path / "ds"
    run = torchrun(out, model, args, uuid.uuid4().hex)
    log, _ = run.communicate(timeout=600)
    assert run.returncode == 0, log[-4000:]
    assert validate(out) == []
    assert_same_rows(out, one)
    return tuple(json.loads((d / schema.PROVENANCE_FILE).read_text()) for d in (out, one))


def test_two_ranks_build_the_one_process_dataset(tiny_model_dir, one_process, tmp_path):
    out = tmp_path / "ds"
    run = torchrun(out, tiny_model_dir, ARGS, uuid.uuid4().hex)
    log, _ = run.communicate(timeout=600)
    assert run.returncode == 0, log[-4000:]
    assert validate(out) == []
    assert not (out / ".turnphase_build").exists()
    ids = read_config(out, "conversations").column("conversation_id").to_pylist()
    assert ids == read_config(one_process, "conversations").column("conversation_id").to_pylist()
    assert ids == sorted(set(ids)) and len(ids) == 3  # every kept conversation once, in order
    prov = json.loads((out / schema.PROVENANCE_FILE).read_text())
    # the one conversation dropped (on either rank) is in the merged counts
    assert sorted(ids + [d["conversation_id"] for d in prov["counts"]["dropped"]]) == [0, 1, 2, 3]
    tokens = datasets.load_dataset(str(out), "tokens", split="train")
    assert sorted(set(tokens["conversation_id"])) == ids
    assert_same_rows(out, one_process)
    assert prov["generation"]["data_parallel"] == {"ranks": 2, "conversations": [[0, 2], [2, 4]]}
    one = json.loads((one_process / schema.PROVENANCE_FILE).read_text())
    assert prov["build_options"] == one["build_options"]  # the same build, whichever way it was made
    assert prov["counts"]["rows"] == one["counts"]["rows"]
    assert log.count("conversations: 3 kept, 1 dropped") == 1  # rank 0 reports, once
    timing = prov["generation"]["timing"]  # work adds up over the ranks, each rank's kept
    assert timing["decoding_steps"] == sum(r["decoding_steps"] for r in timing["ranks"]) > 0
    assert timing["stages"]["decoding"] == pytest.approx(
        sum(r["stages"]["decoding"] for r in timing["ranks"])
    )

    before = {f: f.stat().st_mtime_ns for f in out.rglob("*")}
    again = torchrun(out, tiny_model_dir, ARGS, uuid.uuid4().hex)
    log, _ = again.communicate(timeout=600)
    assert again.returncode == 0, log[-4000:]
    assert "already holds this build, and it validates" in log
    assert {
        f: f.stat().st_mtime_ns for f in out.rglob("*")
    } == before  # a rerun of a finished build writes nothing


def test_accelerate_launch_builds_the_one_process_dataset(tiny_model_dir, one_process, tmp_path):
    """`accelerate launch --multi_gpu` starts its ranks through torch.distributed.run, on CPU too
    (gloo): the same dataset as one process. No accelerate config is read (HF_HOME is empty)."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "turnphase", "build", "--out", str(out), "--model", str(tiny_model_dir), *ARGS]
    env = os.environ | {"HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert validate(out) == []
    prov = json.loads((out / schema.PROVENANCE_FILE).read_text())
    assert prov["generation"]["data_parallel"]["ranks"] == 2
    assert_same_rows(out, one_process)


def _rank_pid(marker: str, rank: int) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TURNPHASE_TEST_RUN={marker}".encode() in env and f"RANK={rank}".encode() in env:
            if b"LOCAL_RANK=" + str(rank).encode() in env:  # a worker, not the launcher
                return int(pid)
    return None


def test_a_killed_rank_is_completed_by_running_the_command_again(tiny_model_dir, one_process, tmp_path):
    out, marker = tmp_path / "ds", uuid.uuid4().hex
    checkpoint = parallel.rank_dir(out, 1, 2) / ".turnphase_build" / "generation.json"
    run = torchrun(out, tiny_model_dir, ARGS, marker)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = _rank_pid(marker, 1)
    assert pid is not None and run.poll() is None, "rank 1 finished before it could be killed"
    os.kill(pid, signal.SIGKILL)
    log, _ = run.communicate(timeout=300)
    assert run.returncode != 0, log[-3000:]
    assert not (out / schema.PROVENANCE_FILE).exists()

    again = torchrun(out, tiny_model_dir, ARGS, uuid.uuid4().hex)
    log, _ = again.communicate(timeout=600)
    assert again.returncode == 0, log[-4000:]
    assert validate(out) == []
    assert_same_rows(out, one_process)


def test_a_data_parallel_build_without_per_conversation_seeds_is_refused(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what a launcher sets; refused before any process group
    monkeypatch.setenv("RANK", "0")
    assert (
        main(["build", "--out", str(tmp_path / "ds"), "--model", str(tiny_model_dir), *TINY_BUILD_ARGS]) == 2
    )
    assert "a data-parallel build needs --seed-per-conversation" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_a_rank_whose_every_conversation_is_dropped_adds_its_counts(tiny_model_dir, tmp_path):
    seed = TINY_BUILD_ARGS.index("--seed") + 1  # seed 8: 0 and 1 (rank 0's block) and 2 drop
    args = [*TINY_BUILD_ARGS[:seed], "8", *TINY_BUILD_ARGS[seed + 1 :], "--seed-per-conversation"]
    prov, alone = both_ways(tiny_model_dir, args, tmp_path)
    dropped = [d["conversation_id"] for d in prov["counts"]["dropped"]]
    assert {0, 1} <= set(dropped) and len(dropped) < 4  # rank 0 kept none, rank 1 some
    assert prov["counts"] == alone["counts"]


def test_when_every_rank_keeps_nothing_the_build_fails_as_one_process_does(tiny_model_dir, tmp_path):
    out = tmp_path / "ds"  # one attempt each: every conversation is dropped on both ranks
    run = torchrun(out, tiny_model_dir, [*ARGS, "--max-attempts", "1"], uuid.uuid4().hex)
    log, _ = run.communicate(timeout=600)
    assert run.returncode != 0
    assert "every conversation failed generation; nothing to write" in log
    assert not out.exists()  # the ranks' folders are removed, and OUT with them


def test_conversations_read_from_a_file_are_split_across_ranks(tiny_model_dir, tmp_path):
    chats = [
        [
            {"role": "system", "content": "Be brief."},
            *(
                {"role": role, "content": f"{role} turn {r} of chat {i}: why does the tide turn?"}
                for r in range(2)
                for role in ("user", "assistant")
            ),
        ]
        for i in range(5)
    ]
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    args = [*ARGS, "--conversations", str(source), "--regenerate", "assistant"]  # -n 4: a sample of 5
    prov, alone = both_ways(tiny_model_dir, args, tmp_path)
    assert prov["build_options"] == alone["build_options"]  # the source's hash included
    assert prov["generation"]["source"] == alone["generation"]["source"]  # its rows, in order
    assert prov["generation"]["data_parallel"] == {"ranks": 2, "conversations": [[0, 2], [2, 4]]}
    assert prov["counts"]["dropped"] == alone["counts"]["dropped"]
