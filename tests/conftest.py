import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENTRIM_CACHE", os.path.join(os.path.dirname(__file__), ".cache-tests"))
torch.set_num_threads(2)


@pytest.fixture
def tiny_config():
    from tokentrim.wan import get_preset

    return get_preset("tiny")
