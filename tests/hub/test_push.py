"""`turnphase push` against the STAND-IN Hub (standin_hub.py): a contract test, not the real Hub.

The CLI runs in a subprocess with HF_ENDPOINT pointing at the stand-in and HF_HUB_DISABLE_XET=1,
so huggingface_hub talks the LFS protocol the stand-in speaks.
"""

from __future__ import annotations

import shutil

from hub_clients import analyze, folder_files, hub_env, read_repo, run_cli, summarize_folder
from synthetic import write_synthetic_dataset

from turnphase.builders import schema

TOKEN = "hf_standinTOKEN_0123456789abcdefXYZ"
REPO = "alice/turnphase-synthetic-helix"


def _push(hub, folder, tmp_path, *extra: str, token: str | None = TOKEN, **env_extra: str):
    env = hub_env(hub.endpoint, tmp_path, token=token, **env_extra)
    return run_cli(["push", str(folder), REPO, *extra], env)


def test_push_round_trip_equals_folder_and_loads(standin_hub, dataset, tmp_path):
    (dataset / ".cache" / "huggingface").mkdir(parents=True)  # hidden files stay local
    (dataset / ".cache" / "huggingface" / "state.json").write_text("{}")
    shutil.copy(dataset / "tokens" / "train-00000-of-00003.parquet", dataset / "tokens" / ".partial.tmp")
    done = _push(standin_hub, dataset, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{standin_hub.endpoint}/datasets/{REPO}" in done.stdout

    remote = standin_hub.files(REPO)
    assert remote.pop(".gitattributes")
    assert remote == folder_files(dataset)
    # the card and provenance come in the last commit, after every shard
    repo = standin_hub.repos[REPO]
    last = repo.commits[repo.branches["main"]]
    assert set(last.files) - set(repo.commits[last.parent].files) == {
        schema.CARD_FILE,
        schema.PROVENANCE_FILE,
    }
    assert f'load_dataset("{REPO}", "tokens"' in remote[schema.CARD_FILE].decode()
    assert not standin_hub.repos[REPO].private

    env = hub_env(standin_hub.endpoint, tmp_path, token=TOKEN)
    before = len(standin_hub.requests)
    assert read_repo(REPO, "layer_2", env, streaming=True) == summarize_folder(dataset, "layer_2")
    # streaming one layer fetches that layer's shards and no other config's (paths: REV/PATH)
    reads = [
        path.split("/resolve/", 1)[1] for _, path, _ in standin_hub.requests[before:] if "/resolve/" in path
    ]
    shards = {r.split("?")[0].split("/", 1)[1] for r in reads if r.split("?")[0].endswith(".parquet")}
    assert shards == {f"layer_2/{f.name}" for f in (dataset / "layer_2").glob("*.parquet")}, reads
    assert read_repo(REPO, "conversations", env, streaming=False) == summarize_folder(
        dataset, "conversations"
    )


def test_build_push_analyze_private_repo_round_trip(standin_hub, dataset, folder_report, tmp_path):
    """build (the synthetic writer) -> push to a branch -> `turnphase analyze REPO_ID --streaming`."""
    assert _push(standin_hub, dataset, tmp_path, "--private", "--revision", "v2").returncode == 0
    env = hub_env(standin_hub.endpoint, tmp_path, token=TOKEN)
    assert analyze(REPO, tmp_path / "report", env, "--streaming", "--revision", "v2") == folder_report


def test_push_refuses_invalid_folder_and_sends_nothing(standin_hub, dataset, tmp_path):
    next((dataset / "layer_1").glob("*.parquet")).unlink()
    done = _push(standin_hub, dataset, tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not a valid dataset" in done.stderr
    assert standin_hub.requests == []


def test_push_without_token_is_one_line(standin_hub, dataset, tmp_path):
    done = _push(standin_hub, dataset, tmp_path, token=None)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "HF_TOKEN" in done.stderr
    assert standin_hub.requests == []


def test_push_rejects_bad_repo_id(standin_hub, dataset, tmp_path):
    env = hub_env(standin_hub.endpoint, tmp_path, token=TOKEN)
    done = run_cli(["push", str(dataset), "no-namespace"], env)
    assert done.returncode == 2 and "NAMESPACE/NAME" in done.stderr


def test_private_repo_on_a_new_branch(standin_hub, dataset, tmp_path):
    done = _push(standin_hub, dataset, tmp_path, "--private", "--revision", "v2")
    assert done.returncode == 0, done.stderr
    repo = standin_hub.repos[REPO]
    assert repo.private
    assert set(standin_hub.files(REPO, "main")) == {".gitattributes"}
    pushed = standin_hub.files(REPO, "v2")
    pushed.pop(".gitattributes")
    assert pushed == folder_files(dataset)
    assert 'revision="v2"' in pushed[schema.CARD_FILE].decode()

    env = hub_env(standin_hub.endpoint, tmp_path, token=TOKEN)
    got = read_repo(REPO, "layer_1", env, streaming=True, revision="v2")
    assert got == summarize_folder(dataset, "layer_1")

    # pushing again to the same branch is a no-op that succeeds
    n_commits = len(repo.commits)
    assert _push(standin_hub, dataset, tmp_path, "--private", "--revision", "v2").returncode == 0
    assert len(repo.commits) == n_commits


def test_private_push_to_existing_public_repo_is_refused(standin_hub, dataset, tmp_path):
    assert _push(standin_hub, dataset, tmp_path).returncode == 0
    done = _push(standin_hub, dataset, tmp_path, "--private")
    assert done.returncode == 2 and "is public" in done.stderr


def test_interrupted_push_resumes_without_resending(standin_hub, dataset, tmp_path):
    n_objects = sum(1 for p in folder_files(dataset) if p.endswith(".parquet"))
    standin_hub.interrupt_after_puts = 3
    done = _push(standin_hub, dataset, tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert set(standin_hub.files(REPO)) == {".gitattributes"}  # nothing committed
    assert standin_hub.lfs_puts == 3

    standin_hub.interrupt_after_puts = None
    done = _push(standin_hub, dataset, tmp_path)
    assert done.returncode == 0, done.stderr
    assert standin_hub.lfs_puts == n_objects  # the 3 stored objects were not sent again
    remote = standin_hub.files(REPO)
    remote.pop(".gitattributes")
    assert remote == folder_files(dataset)


def test_repush_of_a_rebuilt_dataset_drops_stale_shards(standin_hub, dataset, tmp_path):
    assert _push(standin_hub, dataset, tmp_path).returncode == 0
    rebuilt = write_synthetic_dataset(
        tmp_path / "rebuilt", n_conversations=12, conversations_per_shard=12, seed=1
    )
    assert _push(standin_hub, rebuilt, tmp_path).returncode == 0
    remote = standin_hub.files(REPO)
    remote.pop(".gitattributes")
    assert remote == folder_files(rebuilt)


def test_build_push_to_hub_publishes_the_finished_folder(standin_hub, tmp_path):
    from tiny_model import TINY_BUILD_ARGS, save_tiny_chat_model

    model = save_tiny_chat_model(tmp_path / "tiny-chat")
    out = tmp_path / "built"
    env = hub_env(standin_hub.endpoint, tmp_path, token=TOKEN)
    done = run_cli(
        ["build", "--out", str(out), "--model", str(model), *TINY_BUILD_ARGS, "--push-to-hub", REPO], env
    )
    assert done.returncode == 0, done.stderr
    remote = standin_hub.files(REPO)
    remote.pop(".gitattributes")
    assert remote == folder_files(out)
    assert f'load_dataset("{REPO}"' in (out / schema.CARD_FILE).read_text()
    assert TOKEN not in done.stdout + done.stderr
