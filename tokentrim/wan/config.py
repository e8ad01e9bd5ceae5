"""Configuration of the causal Wan2.1 DiT.

Field names follow Wan's original `config.json` (`dim`, `ffn_dim`, `num_heads`, ...). A Diffusers-layout
`transformer/config.json` (`num_attention_heads`, `attention_head_dim`, ...) maps onto the same dataclass.
Every derived size (head dim, RoPE split, tokens per frame) is computed here once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tokentrim.errors import UserError


@dataclass(frozen=True)
class WanConfig:
    """Causal Wan DiT hyper-parameters (defaults: Wan2.1-T2V-1.3B, docs/spec.md#dit-configuration)."""

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    text_len: int = 512
    text_dim: int = 4096
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_max_seq_len: int = (
        1024  # RoPE positions precomputed per axis (docs/spec.md#rope); later frames extend it exactly
    )
    # Latent grid the model is run on (480x832 video -> 60x104 latents, VAE stride 8).
    latent_height: int = 60
    latent_width: int = 104
    frames_per_block: int = 3  # `num_frame_per_block` of both pipelines

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        positive = ("dim", "ffn_dim", "freq_dim", "in_dim", "out_dim", "num_heads", "num_layers", "text_len",
                    "text_dim", "rope_max_seq_len", "latent_height", "latent_width", "frames_per_block")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"WanConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 2 or self.rope_dims[1] == 0:
            raise ValueError(
                f"WanConfig head dim {self.head_dim} must be even and at least 6 for the 3-D RoPE"
            )
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig.freq_dim must be even, got {self.freq_dim}")
        if len(self.patch_size) != 3 or self.patch_size[0] != 1:
            raise ValueError(f"WanConfig.patch_size must be (1, ph, pw), got {self.patch_size}")
        _, ph, pw = self.patch_size
        if self.latent_height % ph or self.latent_width % pw:
            raise ValueError(
                f"latent grid {self.latent_height}x{self.latent_width} is not divisible by the patch {ph}x{pw}"
            )
        if not self.qk_norm or not self.cross_attn_norm:
            raise ValueError(
                "only qk_norm=True and cross_attn_norm=True (the Wan2.1 T2V models) are supported"
            )

    # Derived sizes ------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Real channels per RoPE axis (t, h, w): d - 4*(d//6), 2*(d//6), 2*(d//6) -> 44/42/42 for d = 128."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)

    @property
    def grid_height(self) -> int:
        return self.latent_height // self.patch_size[1]

    @property
    def grid_width(self) -> int:
        return self.latent_width // self.patch_size[2]

    @property
    def tokens_per_frame(self) -> int:
        """Spatial tokens of one latent frame (1560 = 30*52 for 480x832)."""
        return self.grid_height * self.grid_width

    @property
    def patch_channels(self) -> int:
        """Channels of one output patch token (64 = 16*2*2 for Wan)."""
        return self.out_dim * self.patch_size[1] * self.patch_size[2]

    # Construction -------------------------------------------------------------------------------------------
    def replace(self, **changes) -> WanConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: dict, **overrides) -> WanConfig:
        """Build from an original-Wan or Diffusers `config.json` dict; unknown keys are ignored."""
        raw = dict(raw)
        if "num_attention_heads" in raw:  # Diffusers naming
            heads = raw["num_attention_heads"]
            mapped = {
                "dim": heads * raw.get("attention_head_dim", 128),
                "num_heads": heads,
                "ffn_dim": raw.get("ffn_dim"),
                "freq_dim": raw.get("freq_dim"),
                "in_dim": raw.get("in_channels"),
                "out_dim": raw.get("out_channels"),
                "num_layers": raw.get("num_layers"),
                "text_dim": raw.get("text_dim"),
                "eps": raw.get("eps"),
                "patch_size": raw.get("patch_size"),
                "rope_max_seq_len": raw.get("rope_max_seq_len"),
                "cross_attn_norm": raw.get("cross_attn_norm"),
                "qk_norm": None if raw.get("qk_norm") is None else bool(raw.get("qk_norm")),
            }
        else:
            names = {f.name for f in dataclasses.fields(cls)}
            mapped = {k: v for k, v in raw.items() if k in names}
        if mapped.get("patch_size") is not None:
            mapped["patch_size"] = tuple(mapped["patch_size"])
        mapped = {k: v for k, v in mapped.items() if v is not None}
        mapped.update(overrides)
        return cls(**mapped)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides) -> WanConfig:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"DiT config not found: {path}. Point `model_dir` at the Wan2.1-T2V-1.3B folder.")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err}); re-download the model's config.json") from err
        if raw.get("model_type", "t2v") != "t2v":
            raise UserError(
                f"{path}: model_type {raw['model_type']!r} is not supported; use a Wan2.1 T2V model"
            )
        return cls.from_dict(raw, **overrides)


PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(),
    # Same code path at toy size: 2 layers, 2 heads of 24 channels, an 8x12 latent grid (4x6 = 24 tokens/frame).
    "tiny": WanConfig(
        dim=48,
        ffn_dim=96,
        freq_dim=32,
        num_heads=2,
        num_layers=2,
        text_len=16,
        text_dim=32,
        latent_height=8,
        latent_width=12,
    ),  # fmt: skip
}
PRESETS_DOC = {
    "wan2.1-t2v-1.3b": "Wan2.1-T2V-1.3B at 480x832 (the official checkpoints)",
    "tiny": "2-layer random-weight model on an 8x12 latent grid, for tests and CPU smoke runs",
}


def get_preset(name: str) -> WanConfig:
    """Return a named DiT config (`wan2.1-t2v-1.3b`, `tiny`). The toy world model's config is
    `tokentrim.toy.TOY_CONFIG` (it lives with its weights)."""
    key = name.lower()
    if key not in PRESETS:
        raise UserError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
