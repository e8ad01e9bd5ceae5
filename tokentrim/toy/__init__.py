"""The toy world model shipped with the package (`--preset toy`): a small causal Wan DiT trained on moving shapes.

The DiT is the same `CausalWanModel` as Wan2.1 at a small size; the "VAE" is a pixel-unshuffle codec
(`ToyCodec`) and the text encoder a learned word embedding (`ToyTextEncoder`). Weights: `toy.safetensors` next to
this file (DiT tensors under their Wan names, the text embedding under `text.`), trained by `scripts/train_toy.py`;
`toy.json` holds the config and the training record. See docs/toy.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tokentrim.errors import UserError
from tokentrim.toy.codec import ToyCodec
from tokentrim.toy.text import VOCAB, ToyTextEncoder
from tokentrim.toy.world import FRAME_SIZE, Scene, sample_scene
from tokentrim.wan.config import WanConfig

CODEC = ToyCodec(FRAME_SIZE)
TOY_CONFIG = WanConfig(
    dim=128,
    ffn_dim=384,
    freq_dim=64,
    in_dim=CODEC.z_dim,
    out_dim=CODEC.z_dim,
    num_heads=4,
    num_layers=4,
    text_len=24,
    text_dim=32,
    patch_size=(1, 2, 2),
    latent_height=CODEC.latent_size,
    latent_width=CODEC.latent_size,
    frames_per_block=3,
)
TEXT_PREFIX = "text."  # checkpoint prefix of the text encoder's tensors
WEIGHTS_PATH = Path(__file__).with_name("toy.safetensors")


def load_toy(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    path: str | os.PathLike | None = None,
):
    """Build the toy DiT on the meta device and load the shipped weights (strict, `assign=True`).

    Returns `(model, text_encoder, codec)`: a frozen `CausalWanModel` in eval mode, a `ToyTextEncoder` and the
    `ToyCodec` (pass it to the pipelines as their `vae`). `path` defaults to the package's `toy.safetensors`.
    """
    from safetensors.torch import load_file

    from tokentrim.wan.model import build_model

    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise UserError(
            f"toy weights not found at {path}; reinstall tokentrim or train them with "
            f"`python scripts/train_toy.py --out {path}`"
        )
    meta_path = path.with_suffix(".json")
    if meta_path.is_file():
        saved = WanConfig.from_dict(json.loads(meta_path.read_text())["config"])
        if saved != TOY_CONFIG:
            raise UserError(f"{path} was trained for a different config than TOY_CONFIG; retrain it")
    state = load_file(str(path))
    text_state = {k[len(TEXT_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(TEXT_PREFIX)}
    model = build_model(TOY_CONFIG, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    text_encoder = ToyTextEncoder(TOY_CONFIG.text_len, TOY_CONFIG.text_dim)
    text_encoder.load_state_dict(text_state, strict=True)
    text_encoder = text_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model, text_encoder, CODEC


HELD_OUT_SCENES = 20_000_000  # scene seeds from here on are never drawn by scripts/train_toy.py


def observed_start(seed: int, frames: int = TOY_CONFIG.frames_per_block) -> tuple[str, torch.Tensor]:
    """Scene `seed`'s prompt and its first `frames` frames as latents `[1, frames, C, h, w]` (the pipelines'
    `prefix`): a rollout that starts from an observation of the world, as a world model does."""
    scene = sample_scene(seed)
    return scene.prompt, CODEC.encode(torch.from_numpy(scene.render(frames))[None])


__all__ = [
    "CODEC", "HELD_OUT_SCENES", "TOY_CONFIG", "VOCAB", "Scene", "ToyCodec", "ToyTextEncoder", "load_toy",
    "observed_start", "sample_scene",
]  # fmt: skip
