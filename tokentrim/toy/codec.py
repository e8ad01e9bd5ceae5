"""The toy model's "VAE": pixel-unshuffle (space-to-depth) with a fixed per-channel normalisation.

No temporal compression: one video frame is one latent frame. A frame `[S, S, 3]` in 0..255 is mapped to [-1, 1],
then each `f x f` pixel block becomes `3 f^2` channels (channel `c f^2 + i f + j` holds colour c of pixel (i, j)
of the block, `torch.nn.functional.pixel_unshuffle` order), then each colour's channels are normalised with the
world's pixel statistics so latents are roughly unit scale. Decoding inverts this exactly and rounds to uint8.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tokentrim.errors import UserError

UNSHUFFLE = 2  # spatial factor: 32x32x3 frames <-> 16x16x12 latents
# Per-colour mean and std of world pixels mapped to [-1, 1], measured on 1000 scenes x 12 frames of the first
# version of the world (2-4 smaller shapes): mean (-0.070, -0.098, -0.139), std (0.440, 0.358, 0.430). Fixed, as
# the shipped weights were trained with them; on the current world the latents still have std about 0.97.
PIXEL_MEAN = (-0.07, -0.10, -0.14)
PIXEL_STD = (0.44, 0.36, 0.43)


class ToyCodec:
    """uint8 frames `[B, T, S, S, 3]` <-> latents `[B, T, 3 f^2, S/f, S/f]` (frames before channels)."""

    def __init__(self, frame_size: int, factor: int = UNSHUFFLE):
        if frame_size % factor:
            raise ValueError(f"frame_size {frame_size} is not divisible by the unshuffle factor {factor}")
        self.frame_size = frame_size
        self.factor = factor

    @property
    def z_dim(self) -> int:
        """Latent channels (3 f^2)."""
        return 3 * self.factor**2

    @property
    def latent_size(self) -> int:
        return self.frame_size // self.factor

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return self.factor

    def num_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames (no temporal compression)."""
        return latent_frames

    def num_latent_frames(self, video_frames: int) -> int | None:
        """Latent frames encoded from `video_frames` frames (one each)."""
        return video_frames if video_frames >= 1 else None

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std per latent channel `[C, 1, 1]` (each colour repeated f^2 times), float32."""
        reps = self.factor**2
        mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=device).repeat_interleave(reps)
        std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=device).repeat_interleave(reps)
        return mean[:, None, None], std[:, None, None]

    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 `[B, T, S, S, 3]` -> float32 latents `[B, T, C, S/f, S/f]` on the frames' device."""
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            raise UserError(f"frames must be uint8 [B, T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        b, t, h, w, _ = frames.shape
        if (h, w) != (self.frame_size, self.frame_size):
            raise UserError(f"frames are {h}x{w}, the toy codec expects {self.frame_size}x{self.frame_size}")
        x = frames.permute(0, 1, 4, 2, 3).flatten(0, 1).float() / 127.5 - 1.0  # (B*T, 3, S, S)
        z = F.pixel_unshuffle(x, self.factor)  # (B*T, C, S/f, S/f)
        mean, std = self._stats(z.device)
        return ((z - mean) / std).unflatten(0, (b, t))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, F, C, S/f, S/f]` (any float dtype) -> uint8 frames `[B, F, S, S, 3]`, rounded and clamped."""
        if latents.ndim != 5 or latents.shape[2] != self.z_dim:
            raise UserError(f"latents must be [B, F, {self.z_dim}, h, w], got {list(latents.shape)}")
        mean, std = self._stats(latents.device)
        z = latents.float().flatten(0, 1) * std + mean
        x = F.pixel_shuffle(z, self.factor)  # (B*F, 3, S, S)
        pixels = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.unflatten(0, latents.shape[:2]).permute(0, 1, 3, 4, 2)

    def streaming(self) -> ToyStreamingDecoder:
        return ToyStreamingDecoder(self)


class ToyStreamingDecoder:
    """Block-by-block decoding (same interface as the Wan VAE's): frames are independent, so it is stateless."""

    def __init__(self, codec: ToyCodec):
        self.codec = codec
        self.latent_frames = 0

    def reset(self) -> None:
        self.latent_frames = 0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.latent_frames += latents.shape[1]
        return self.codec.decode(latents)
