"""Reading a dataset over HTTP from olah, a real Hub-compatible server (see olah_server.py)."""

from __future__ import annotations

from hub_clients import analyze, hub_env, read_repo, summarize_folder


def test_load_dataset_streaming_layer_over_olah(olah_hub, tmp_path):
    endpoint, repo_id, folder = olah_hub
    got = read_repo(repo_id, "layer_1", hub_env(endpoint, tmp_path), streaming=True)
    assert got == summarize_folder(folder, "layer_1")


def test_load_dataset_tokens_over_olah(olah_hub, tmp_path):
    endpoint, repo_id, folder = olah_hub
    got = read_repo(repo_id, "tokens", hub_env(endpoint, tmp_path), streaming=False)
    assert got == summarize_folder(folder, "tokens")


def test_analyze_streaming_from_repo_id_matches_folder(olah_hub, folder_report, tmp_path):
    endpoint, repo_id, _ = olah_hub
    assert analyze(repo_id, tmp_path / "report", hub_env(endpoint, tmp_path), "--streaming") == folder_report
