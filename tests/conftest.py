import os
import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _isolated_hf_cache(tmp_path_factory):
    """Keep `load_dataset`'s Arrow cache out of the user's home and fresh for every run."""
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
