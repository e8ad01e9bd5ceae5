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


@pytest.fixture
def captured_caches(monkeypatch):
    """Every KVCache constructed during the test, in order (to inspect a pipeline's cache afterwards)."""
    from tokentrim.wan import kv_cache

    made, original = [], kv_cache.KVCache.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(kv_cache.KVCache, "__init__", remember)
    return made
