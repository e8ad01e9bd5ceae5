"""The Wan2.1 causal DiT and its components (text encoder, VAE), loaded from the official files."""

from tokentrim.wan.config import PRESETS, WanConfig, get_preset

__all__ = ["PRESETS", "WanConfig", "get_preset"]
