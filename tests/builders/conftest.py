import pytest
from tiny_model import TINY_BUILD_ARGS as TINY_ARGS
from tiny_model import save_tiny_chat_model

from turnphase.builders.cli import main

__all__ = ["TINY_ARGS"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("models") / "tiny-chat")


@pytest.fixture(scope="session")
def tiny_build(tiny_model_dir, tmp_path_factory):
    """A finished build with the tiny model, made through the CLI as a user would."""
    out = tmp_path_factory.mktemp("builds") / "tiny"
    assert main(["build", "--out", str(out), "--model", str(tiny_model_dir), *TINY_ARGS]) == 0
    return out
