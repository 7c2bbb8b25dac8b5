import pytest
from tiny_model import TINY_BUILD_ARGS, save_tiny_chat_model

from turnphase.builders.cli import main

# 6 conversations x 2 rounds (3 analysis folds of 2); the steering tests' small grid
TINY_DATA_ARGS = [*TINY_BUILD_ARGS, "-n", "6"]
FAST_STEER = ["--prompts", "4", "--max-new-tokens", "6", "--add", "0.1,0.5", "--rotate", "90"]
FAST_STEER += ["--random", "3", "--kl-tokens", "4", "--bootstrap", "50"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("models") / "tiny-chat")


@pytest.fixture(scope="session")
def tiny_analysed(tiny_model_dir, tmp_path_factory):
    """(dataset, report): a tiny build and its analysis with 3 folds, made through the CLI."""
    root = tmp_path_factory.mktemp("steer")
    data, report = root / "data", root / "report"
    assert main(["build", "--out", str(data), "--model", str(tiny_model_dir), *TINY_DATA_ARGS]) == 0
    assert main(["analyze", str(data), "--out", str(report), "--folds", "3", "--bootstrap", "20"]) == 0
    return data, report
