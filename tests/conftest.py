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


@pytest.fixture
def model(tiny_config):
    """A 2-layer random-weight DiT on the tiny 8x12 latent grid (tests may override with their own seed)."""
    from tokentrim.wan import build_model

    return build_model(tiny_config, seed=3)


@pytest.fixture
def embeds(tiny_config):
    """Random prompt embeddings, 9 of the tiny preset's 16 text rows."""
    return torch.randn(1, 9, tiny_config.text_dim, generator=torch.Generator().manual_seed(5))
