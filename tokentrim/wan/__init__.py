"""The Wan2.1 causal DiT and its components (text encoder, VAE), loaded from the official files."""

from tokentrim.wan.config import PRESETS, WanConfig, get_preset
from tokentrim.wan.kv_cache import KVCache
from tokentrim.wan.loading import load_dit_checkpoint, read_dit_state_dict
from tokentrim.wan.model import CausalWanModel, ContextCache, block_causal_mask, build_model
from tokentrim.wan.scheduler import FlowMatchSchedule

# Loaded on first use: they import transformers and diffusers, which the DiT alone does not need.
_COMPONENTS = ("Components", "build_tiny_components", "detect_layout", "load_components")


def __getattr__(name: str):
    if name in _COMPONENTS:
        from tokentrim.wan import components

        return getattr(components, name)
    raise AttributeError(f"module 'tokentrim.wan' has no attribute {name!r}")


__all__ = [
    "PRESETS", "CausalWanModel", "ContextCache", "FlowMatchSchedule", "KVCache", "WanConfig",
    "block_causal_mask", "build_model", "get_preset", "load_dit_checkpoint", "read_dit_state_dict", *_COMPONENTS,
]  # fmt: skip
