"""A build under hostile conditions: a damaged finished folder, a second builder, limits, corrupt
state files, planted pickles, full disks and read-only places. Each gets one line and exit 2, and
nothing that blocks the folder afterwards. (Resume itself is tested in test_build.py.)"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from tiny_model import TINY_BUILD_ARGS as TINY_ARGS

from turnphase.builders import conversations, schema
from turnphase.builders.cli import main
from turnphase.builders.lock import lock_path
from turnphase.builders.validate import validate

STATE = ".turnphase_build"


def _one_line_error(args, capsys, code=2) -> str:
    capsys.readouterr()
    assert main(args) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("turnphase ")]  # not progress bars
    assert len(lines) == 1 and lines[0].startswith(f"turnphase {args[0]}: error:"), err[-2000:]
    assert "Traceback" not in err
    return lines[0]


def _build(out, model, *extra):
    return ["build", "--out", str(out), "--model", str(model), *TINY_ARGS, *extra]


def _interrupt_after_first_checkpoint(monkeypatch, out):
    real = conversations.BatchedChat.__call__

    def flaky(self, *a, **kw):
        if (out / STATE / "generation.json").exists():
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(conversations.BatchedChat, "__call__", flaky)


def test_rerun_of_a_damaged_complete_build_refuses(tiny_build, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(tiny_build, out)
    (out / "layer_3" / "train-00001-of-00002.parquet").unlink()
    line = _one_line_error(_build(out, tiny_model_dir), capsys)
    assert "holds this build but it is damaged" in line and "layer_3" in line


def test_a_second_builder_is_refused_and_a_killed_holder_frees_the_folder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()  # as the holding build made it
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from turnphase.builders.lock import folder_lock
                with folder_lock({str(out)!r}, "turnphase build"):
                    print("locked", flush=True)
                    time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _one_line_error(_build(out, tiny_model_dir), capsys)
        # who holds it, where and since when
        assert re.search(
            rf"is in use by turnphase build \(pid {holder.pid} on {re.escape(socket.gethostname())}, "
            r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)",
            line,
        ), line
        line = _one_line_error(["push", str(out), "alice/turnphase-x"], capsys)
        assert "is in use by turnphase build" in line
        # analyze and steer lock the folder they write
        line = _one_line_error(["analyze", str(out), "--out", str(out)], capsys)
        assert "is in use by turnphase build" in line
        steer = ["steer", str(out), "--report", str(out), "--layers", "1", "--out", str(out)]
        assert "is in use by turnphase build" in _one_line_error(steer, capsys)
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    from turnphase.builders.lock import folder_lock

    with folder_lock(out, "test"):
        assert "test (pid" in lock_path(out).read_text()
    assert not lock_path(out).exists()


def test_limits_fail_before_anything_is_written(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "huge"
    line = _one_line_error(_build(out, tiny_model_dir, "-n", "1000000000"), capsys)
    assert "GiB of KV caches" in line and "available" in line
    line = _one_line_error(_build(out, tiny_model_dir, "--assistant-max-new-tokens", "2000000000"), capsys)
    assert "beyond the model's context of 2048" in line
    assert not out.exists() and not lock_path(out).exists()


def test_the_memory_check_counts_the_sampling_copy(tiny_model_dir, tmp_path, monkeypatch):
    """--generation-dtype's copy of the weights is in the memory a build needs: its KV caches in
    the copy's dtype plus every parameter at 2 bytes, refused one byte short of that."""
    from turnphase.builders import limits
    from turnphase.builders.config import BuildConfig
    from turnphase.builders.errors import TurnphaseError
    from turnphase.builders.model import load_model

    loaded = load_model(str(tiny_model_dir), layers="auto")
    prompts = conversations.load_prompts("study")
    small = {"out": tmp_path / "x", "n_conversations": 4, "rounds": 2}  # in the tiny model's context
    cfg = BuildConfig(**small, generation_dtype="bfloat16")
    checked = limits.check_build_limits(cfg, loaded, prompts)
    kv = limits.check_build_limits(BuildConfig(**small), loaded, prompts)
    weights = sum(p.numel() for p in loaded.model.parameters())
    assert checked["kv_cache_bytes"] == kv["kv_cache_bytes"] // 2 + 2 * weights  # float32 KV halved
    monkeypatch.setattr(limits, "available_memory", lambda device: checked["kv_cache_bytes"] - 1)
    with pytest.raises(TurnphaseError, match="GiB of KV caches and a bfloat16 copy of the weights"):
        limits.check_build_limits(cfg, loaded, prompts)
    monkeypatch.setattr(limits, "available_memory", lambda device: checked["kv_cache_bytes"])
    limits.check_build_limits(cfg, loaded, prompts)


def test_the_memory_check_counts_a_static_cache_at_its_rounded_length(tiny_model_dir, tmp_path):
    """--compile-decoding: the batched call's rows (4 here) hold a static cache rounded up to
    STATIC_LENGTH_STEP tokens, not just the longest conversation."""
    from turnphase.builders import limits
    from turnphase.builders.config import BuildConfig
    from turnphase.builders.model import load_model
    from turnphase.builders.prefix_cache import STATIC_LENGTH_STEP

    loaded = load_model(str(tiny_model_dir), layers="auto")
    prompts = conversations.load_prompts("study")
    small = {"out": tmp_path / "x", "n_conversations": 4, "rounds": 2}
    eager = limits.check_build_limits(BuildConfig(**small), loaded, prompts)
    static = limits.check_build_limits(BuildConfig(**small, compile_decoding=True), loaded, prompts)
    longest = eager["longest_conversation"]
    rounding = -longest % STATIC_LENGTH_STEP
    assert rounding > 0  # else this test checks nothing
    per_token = eager["kv_cache_bytes"] // (8 * longest)
    assert static["kv_cache_bytes"] == eager["kv_cache_bytes"] + 4 * rounding * per_token


def test_a_build_that_fails_before_its_first_checkpoint_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "early"

    def fail(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(conversations.BatchedChat, "__call__", fail)
    assert main(_build(out, tiny_model_dir)) == 130
    assert not out.exists()
    # a folder left with options but no checkpoint (as kill -9 would leave it) blocks no one
    (out / STATE).mkdir(parents=True)
    (out / STATE / "options.json").write_text(json.dumps({"fingerprint": "another build", "options": {}}))
    monkeypatch.undo()
    assert main(_build(out, tiny_model_dir, "-n", "2", "--rounds", "1")) == 0
    assert validate(out) == []


def test_corrupt_state_and_provenance_files_are_named(tiny_build, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "state"
    (out / STATE).mkdir(parents=True)
    (out / STATE / "options.json").write_text("{oops")
    line = _one_line_error(_build(out, tiny_model_dir), capsys)
    assert f"{out / STATE / 'options.json'} is corrupt: delete {out / STATE} to start over" in line
    done = tmp_path / "done"
    shutil.copytree(tiny_build, done)
    (done / schema.PROVENANCE_FILE).write_text("[1, 2")
    assert f"{done / schema.PROVENANCE_FILE} is corrupt" in _one_line_error(
        _build(done, tiny_model_dir), capsys
    )


@pytest.mark.parametrize("plant", ["zeros", "pickle"])
def test_a_replaced_kv_checkpoint_is_refused(plant, tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "kv"
    _interrupt_after_first_checkpoint(monkeypatch, out)
    assert main(_build(out, tiny_model_dir)) == 130
    monkeypatch.undo()
    (kv,) = (out / STATE).glob("kv_cache_*.pt")
    if plant == "zeros":  # valid-looking: the same structure, every value zero
        entries = torch.load(kv, weights_only=True)
        torch.save({k: (ids, torch.zeros_like(t)) for k, (ids, t) in entries.items()}, kv)
    else:
        kv.write_bytes(pickle.dumps({"x": os.system}))
    line = _one_line_error(_build(out, tiny_model_dir), capsys)
    assert f"{kv} is missing or does not match its checkpoint: delete {out / STATE} to start over" in line


def test_a_pickle_as_model_weights_is_refused(tiny_model_dir, tmp_path, capsys):
    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_model_dir, evil)
    for f in evil.glob("*.safetensors"):
        f.unlink()
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"x": os.system}))
    line = _one_line_error(_build(tmp_path / "out", evil), capsys)
    assert "holds more than tensors and is refused" in line and "weights_only" not in line


def test_wording_of_common_mistakes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert "5-3 is an empty range" in _one_line_error(_build(out, tiny_model_dir, "--layers", "5-3"), capsys)
    line = _one_line_error(["build", "--out", str(out), "--model", "./no/such/model"], capsys)
    assert line.endswith("--model: ./no/such/model: no such file or folder")
    assert not out.exists()


def test_a_simulated_full_disk_is_one_line_and_resumes(
    tiny_build, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """ENOSPC while writing a shard (the tmpfs test below does it for real where it can)."""
    out = tmp_path / "full"
    real = pq.write_table

    def full(table, where, **kw):
        if "layer_3" in str(where):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", full)
    line = _one_line_error(_build(out, tiny_model_dir), capsys)
    assert f"no space left on device writing {out / 'layer_3'}" in line and "rerun to resume" in line
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(_build(out, tiny_model_dir)) == 0
    for config in ("tokens", "layer_3"):
        assert pq.read_table(out / config).equals(pq.read_table(tiny_build / config))


def _can_mount() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || exit 1"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="cannot mount a tmpfs in a user namespace here")


def _in_namespace(script: str) -> subprocess.CompletedProcess:
    """Run `script` (sh) in a private mount namespace; `$TP` runs the turnphase CLI."""
    env = os.environ | {"TP": f"{sys.executable} -m turnphase.builders.cli", "TQDM_DISABLE": "1"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env)


@needs_mount
def test_a_real_full_disk_is_one_line_and_resumes_after_freeing_space(tiny_build, tiny_model_dir, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = " ".join(_build(mnt / "out", tiny_model_dir))
    done = _in_namespace(
        f"mount -t tmpfs -o size=96k tmpfs {mnt} && $TP {args}; echo rc=$?; "
        f"mount -o remount,size=64m {mnt} && $TP {args} >/dev/null && $TP validate {mnt / 'out'}"
    )
    first, last = done.stdout.split("rc=")[1].splitlines()[0], done.stdout.strip().splitlines()[-1]
    errors = [line for line in done.stderr.splitlines() if line.startswith("turnphase")]
    assert first == "2", done.stderr[-3000:]
    assert errors[0].startswith("turnphase build: error: no space left on device writing")
    assert "Traceback" not in done.stderr
    assert last == f"{mnt / 'out'}: valid", done.stderr[-2000:]


@needs_mount
def test_read_only_places_fail_before_the_model_or_the_data_is_read(tiny_build, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    done = _in_namespace(
        f"mount -t tmpfs -o ro tmpfs {ro} && "
        f"$TP build --out {ro / 'out'} --model /no/such/model; echo rc=$?; "
        f"$TP analyze /no/such/dataset --out {ro / 'report'}; echo rc=$?"
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("turnphase")]
    assert done.stdout.split() == ["rc=2", "rc=2"], done.stderr
    assert "cannot" in errors[0] and "Read-only file system" in errors[0]
    assert "cannot" in errors[1] and "Read-only file system" in errors[1]
    assert Path(ro).exists() and not any(Path(ro).iterdir())


def test_the_context_bound_holds_every_built_conversation(tiny_build, tiny_model_dir):
    from transformers import AutoTokenizer

    from turnphase.builders.config import BuildConfig
    from turnphase.builders.limits import longest_conversation

    cfg = BuildConfig(out=Path("unused"), rounds=2, user_max_new_tokens=24, assistant_max_new_tokens=24)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bound = longest_conversation(cfg, tokenizer, conversations.load_prompts("reply"))
    positions = pq.read_table(tiny_build / "tokens", columns=["conversation_id", "position"]).to_pydict()
    lengths = {}
    for cid, pos in zip(positions["conversation_id"], positions["position"], strict=True):
        lengths[cid] = max(lengths.get(cid, 0), pos + 1)
    assert max(lengths.values()) <= bound
    assert 2 * (24 + 24) < bound < 2 * (24 + 24) + 400  # turns, markup and the instruction; no more


def test_a_killed_runs_staged_folder_is_removed_by_the_next_write_to_the_same_place(tmp_path):
    """analyze and steer write into `.<out>.partial-<host>-<pid>` and rename it whole; kill -9 or
    SIGTERM leaves it behind. The next staged write to `out` removes this host's dead ones and keeps
    a running process's, another host's and another folder's."""
    from turnphase.builders.writer import staged_folder

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, host = int(gone.stdout), socket.gethostname()
    left = {
        "dead": tmp_path / f".report.partial-{host}-{dead}",
        "live": tmp_path / f".report.partial-{host}-{os.getppid()}",
        "another host": tmp_path / f".report.partial-elsewhere-{dead}",
        "a host named like it": tmp_path / f".report.partial-{host}-2-{dead}",
        "another folder": tmp_path / f".steer.partial-{host}-{dead}",
    }
    for folder in left.values():
        (folder / "figures").mkdir(parents=True)
    with staged_folder(tmp_path / "report") as tmp:
        assert tmp.name == f".report.partial-{host}-{os.getpid()}"
        (tmp / "report.json").write_text("{}")
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted(["report", *(v.name for k, v in left.items() if k != "dead")])
    assert (tmp_path / "report" / "report.json").read_text() == "{}"
