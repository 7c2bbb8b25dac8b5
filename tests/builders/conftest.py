import pytest
from tiny_model import save_tiny_chat_model

from turnphase.builders.cli import main

TINY_ARGS = [
    "-n",
    "4",
    "--rounds",
    "2",
    "--layers",
    "1,3",
    "--conversations-per-shard",
    "2",
    "--batch-size",
    "3",
]
TINY_ARGS += ["--user-max-new-tokens", "24", "--assistant-max-new-tokens", "24", "--seed", "7"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("models") / "tiny-chat")


@pytest.fixture(scope="session")
def tiny_build(tiny_model_dir, tmp_path_factory):
    """A finished build with the tiny model, made through the CLI as a user would."""
    out = tmp_path_factory.mktemp("builds") / "tiny"
    assert main(["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    return out
