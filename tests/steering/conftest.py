import pytest
from steer_args import TINY_DATA_ARGS
from tiny_model import save_tiny_chat_model

from turnphase.builders.cli import main


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
