"""Wan2.1 VAE through diffusers' `AutoencoderKLWan`: encoding (image and video start), one-shot and block-by-block
streaming decoding.

Latents cross in as `[B, F, C, H, W]` and leave as uint8 video `[B, T, 8H, 8W, 3]` with `T = 1 + 4 (F - 1)`.
The streaming decoder runs the same per-latent-frame decoder loop as `AutoencoderKLWan._decode`, but keeps the
causal-convolution feature cache across calls instead of clearing it, so its frames equal a one-shot decode.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from tokentrim.errors import UserError
from tokentrim.wan.loading import read_torch_file

if TYPE_CHECKING:  # diffusers is imported where a VAE is built: importing this module stays cheap
    from diffusers import AutoencoderKLWan

# Wan2.1 VAE per-channel latent statistics (docs/spec.md#vae, Self Forcing's `WanVAEWrapper`; the same
# numbers are AutoencoderKLWan's `latents_mean` / `latents_std` config defaults).
LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


# Wan2.1 VAE architecture (docs/spec.md#vae) in AutoencoderKLWan's argument names (also its defaults): no config
# download.
WAN21_VAE_CONFIG = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True],
)  # fmt: skip


def denormalize_latents(latents: torch.Tensor) -> torch.Tensor:
    """`z / (1/std) + mean` in the latents' dtype, the reciprocal taken after casting std (docs/spec.md#vae, decode).

    latents: `[B, F, C, H, W]` with C = 16.
    """
    dtype, device = latents.dtype, latents.device
    mean = torch.tensor(LATENTS_MEAN, dtype=torch.float32).to(device=device, dtype=dtype)
    inv_std = 1.0 / torch.tensor(LATENTS_STD, dtype=torch.float32).to(device=device, dtype=dtype)
    return latents / inv_std[:, None, None] + mean[:, None, None]


def normalize_latents(mu: torch.Tensor) -> torch.Tensor:
    """`(mu - mean) * (1/std)` in mu's dtype, the reciprocal taken after casting std (docs/spec.md#vae, encode;
    the inverse of `denormalize_latents`). mu: `[B, F, C, H, W]`."""
    dtype, device = mu.dtype, mu.device
    mean = torch.tensor(LATENTS_MEAN, dtype=torch.float32).to(device=device, dtype=dtype)
    inv_std = 1.0 / torch.tensor(LATENTS_STD, dtype=torch.float32).to(device=device, dtype=dtype)
    return (mu - mean[:, None, None]) * inv_std[:, None, None]


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] -> uint8: `x * 0.5 + 0.5`, clamp to [0, 1], `* 255`, rounded to nearest."""
    pixels = (video.float() * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0
    return pixels.round().to(torch.uint8)


class WanVAE:
    """An `AutoencoderKLWan` plus the Wan latent de-normalisation; device and dtype are the model's."""

    def __init__(self, model: AutoencoderKLWan):
        self.model = model.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.model.post_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.post_quant_conv.weight.dtype

    @property
    def z_dim(self) -> int:
        return self.model.config.z_dim

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along each side (8)."""
        return self.model.config.scale_factor_spatial

    def num_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames: 1 + 4 (F - 1)."""
        return 1 + self.model.config.scale_factor_temporal * (latent_frames - 1)

    def num_latent_frames(self, video_frames: int) -> int | None:
        """Latent frames the causal encoder makes of `video_frames` frames (1 + 4 k -> 1 + k); None otherwise."""
        stride = self.model.config.scale_factor_temporal
        return (
            1 + (video_frames - 1) // stride
            if video_frames >= 1 and (video_frames - 1) % stride == 0
            else None
        )

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 video `[B, T, H, W, 3]` (T = 1 + 4 k) -> normalised latents `[B, 1 + k, C, H/8, W/8]` in the VAE's
        dtype: pixels to [-1, 1] as the reference's ToTensor + Normalize(0.5, 0.5) (float32, then the VAE dtype),
        the encoder's mean (no sampling), then `(mu - mean) / std` (docs/spec.md#vae, docs/spec.md#image-to-video)."""
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            raise UserError(f"frames must be uint8 [B, T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if self.num_latent_frames(frames.shape[1]) is None:
            raise UserError(f"the causal VAE encodes 1 + 4k frames, got {frames.shape[1]}")
        x = (frames.to(self.device).float() / 255.0 - 0.5) / 0.5
        x = x.permute(0, 4, 1, 2, 3).to(self.dtype)  # (B, 3, T, H, W)
        mu = self.model.encode(x).latent_dist.mean  # (B, C, F, h, w)
        return normalize_latents(mu.permute(0, 2, 1, 3, 4))

    def prepare(self, latents: torch.Tensor) -> torch.Tensor:
        """`[B, F, C, H, W]` latents -> de-normalised decoder input `[B, C, F, H, W]` in the VAE's dtype."""
        if latents.ndim != 5 or latents.shape[2] != self.z_dim:
            raise UserError(f"latents must be [B, F, {self.z_dim}, H, W], got {list(latents.shape)}")
        z = denormalize_latents(latents.to(self.device))
        return z.permute(0, 2, 1, 3, 4).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, F, C, H, W]` -> uint8 video `[B, 1+4(F-1), 8H, 8W, 3]` (diffusers' one-shot decode)."""
        video = self.model.decode(self.prepare(latents)).sample  # (B, 3, T, 8H, 8W), clamped to [-1, 1]
        return to_uint8(video.permute(0, 2, 3, 4, 1))

    def streaming(self) -> StreamingDecoder:
        return StreamingDecoder(self)


class StreamingDecoder:
    """Decodes latents block by block with the VAE's causal feature cache carried across calls.

    The first call yields `1 + 4 (f - 1)` frames for `f` latent frames, later calls `4 f`; the concatenation equals
    `WanVAE.decode` of all latents at once. Usage::

        stream = vae.streaming()
        for block in latent_blocks:          # [B, f, C, H, W]
            writer.append(stream.decode(block)[0].cpu().numpy())
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        # One cache slot per causal conv of the decoder, indexed in call order (as AutoencoderKLWan.clear_cache).
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.model.decoder.modules())
        self.reset()

    def reset(self) -> None:
        """Forget the previous frames; the next call starts a new video."""
        self._feat_cache: list = [None] * self._num_convs
        self.latent_frames = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Next latent block `[B, f, C, H, W]` -> its uint8 video frames `[B, t, 8H, 8W, 3]`."""
        model = self.vae.model
        x = model.post_quant_conv(self.vae.prepare(latents))  # 1x1x1 conv: no temporal context needed
        outs = []
        for i in range(x.shape[2]):
            conv_idx = [0]
            outs.append(
                model.decoder(
                    x[:, :, i : i + 1],
                    feat_cache=self._feat_cache,
                    feat_idx=conv_idx,
                    first_chunk=self.latent_frames == 0,
                )
            )
            self.latent_frames += 1
        video = torch.cat(outs, dim=2).clamp(-1.0, 1.0)  # (B, 3, t, 8H, 8W)
        return to_uint8(video.permute(0, 2, 3, 4, 1))


def load_original_vae(
    path: str | os.PathLike, *, device: torch.device | str, dtype: torch.dtype, config: dict | None = None
) -> WanVAE:
    """Wan's `Wan2.1_VAE.pth`, renamed by diffusers' `convert_wan_vae_to_diffusers`.

    `config`: `AutoencoderKLWan` arguments, default `WAN21_VAE_CONFIG`.
    """
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state_dict = read_torch_file(path)
    converted = {k: v.to(dtype) for k, v in convert_wan_vae_to_diffusers(state_dict).items()}
    with torch.device("meta"):
        model = AutoencoderKLWan(**(config or WAN21_VAE_CONFIG))
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as err:
        raise UserError(f"{path} is not a Wan2.1 VAE checkpoint: {err}") from err
    return WanVAE(model.to(device))


def load_diffusers_vae(
    vae_dir: str | os.PathLike, *, device: torch.device | str, dtype: torch.dtype
) -> WanVAE:
    """A Diffusers-layout `vae/` folder, read from disk only."""
    from diffusers import AutoencoderKLWan

    model = AutoencoderKLWan.from_pretrained(str(vae_dir), torch_dtype=dtype, local_files_only=True)
    return WanVAE(model.to(device))


# Same strides as Wan2.1 (8x spatial, 4x temporal: dim_mult length 4, temporal down-sampling in the last two
# stages), 8 base channels; z_dim comes from the tiny DiT preset.
TINY_VAE_BASE_DIM = 8


def build_tiny_vae(
    seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> WanVAE:
    """Random-weight `AutoencoderKLWan` for the `tiny` preset: an 8x12 latent grid decodes to 64x96 frames."""
    from diffusers import AutoencoderKLWan

    from tokentrim.wan.config import get_preset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLWan(base_dim=TINY_VAE_BASE_DIM, z_dim=get_preset("tiny").out_dim)
    return WanVAE(model.to(device=device, dtype=dtype))


def build_random_vae(
    seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16
) -> WanVAE:
    """The Wan2.1 VAE's architecture with diffusers' default initialisation, seeded (the global RNG left as it
    was): its speed and memory without the weights (`tokentrim bench --random-weights`, the GPU check)."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLWan(**WAN21_VAE_CONFIG)
    return WanVAE(model.to(device=device, dtype=dtype).eval().requires_grad_(False))
