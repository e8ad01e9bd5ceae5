"""3-D rotary position embedding of the Wan DiT, in float64 complex arithmetic (docs/spec.md#rope).

The head dimension is split into complex pairs (2j, 2j+1): the first `rope_dims[0] / 2` pairs rotate with the
latent-frame index, the next `rope_dims[1] / 2` with the patch row, the last `rope_dims[2] / 2` with the patch
column. Frame indices are absolute (a call starting at frame s0 uses rows s0.. of the temporal table), with no
upper limit (`RopeTable`).
"""

from __future__ import annotations

import torch

from tokentrim.wan.config import WanConfig


def rope_axis_table(positions: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """`table[p, j] = exp(i * p * theta^(-2j/dim))` for j < dim/2, complex128 `[positions, dim/2]`."""
    # Always built on the CPU (also when the model is constructed under a meta-device context).
    inv_freq = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64, device="cpu"), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


class RopeTable:
    """The three per-axis tables of a config, kept in complex128 and out of any module dtype cast.

    The reference precomputes 1024 temporal positions and cannot address a frame past them (docs/spec.md#rope).
    Here the temporal table is a cache of the closed form exp(i p theta^(-2j/d)): it starts with
    `rope_max_seq_len` rows and is extended (doubling) when a call needs a later frame. Row p is computed by the
    same float64 arithmetic whatever the table's length, so every factor is exactly what a table long enough from
    the start would hold: videos of any length, bit-identical to the reference's table below 1024 frames.
    """

    def __init__(self, config: WanConfig):
        self.dims = config.rope_dims
        self.grid_width = config.grid_width
        n = config.rope_max_seq_len
        dt, dh, dw = self.dims
        self.parts = (rope_axis_table(n, dt), rope_axis_table(n, dh), rope_axis_table(n, dw))
        self._device_parts: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    @property
    def max_frames(self) -> int:
        """Temporal positions currently tabulated (the table grows on demand)."""
        return self.parts[0].shape[0]

    def ensure(self, frames: int) -> None:
        """Make temporal positions 0 .. frames - 1 available (host-side; extends the table exactly)."""
        if frames > self.max_frames:
            size = max(frames, 2 * self.max_frames)
            self.parts = (rope_axis_table(size, self.dims[0]), *self.parts[1:])
            self._device_parts.clear()

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._device_parts:
            self._device_parts[device] = tuple(p.to(device) for p in self.parts)
        return self._device_parts[device]

    def token_freqs(self, frames: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        """Per-token factors for absolute frame indices and spatial indices `n = h * grid_w + w`.

        frames, spatial: long `[L]` on the target device; frames must be `< max_frames` (callers with device
        tensors call `ensure` with the range they know on the host, so no device sync is needed). Returns
        complex128 `[L, head_dim / 2]`.
        """
        if frames.device.type == "cpu" and frames.numel():
            if int(frames.min()) < 0:
                raise ValueError(f"latent frame {int(frames.min())} is negative")
            self.ensure(int(frames.max()) + 1)
        t, h, w = self._on(frames.device)
        rows = torch.div(spatial, self.grid_width, rounding_mode="floor")
        cols = spatial - rows * self.grid_width
        return torch.cat([t[frames], h[rows], w[cols]], dim=1)

    def grid_freqs(self, start_frame: int, num_frames: int, tokens_per_frame: int, device) -> torch.Tensor:
        """Factors for `num_frames` full frames starting at absolute frame `start_frame`: `[F*T, head_dim/2]`."""
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        self.ensure(start_frame + num_frames)
        frames = torch.arange(start_frame, start_frame + num_frames, device=device)
        frames = frames.repeat_interleave(tokens_per_frame)
        spatial = torch.arange(tokens_per_frame, device=device).repeat(num_frames)
        return self.token_freqs(frames, spatial)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate `x [B, L, H, D]` by `freqs [L, D/2]` (complex128); computed in float64, returned in x's dtype."""
    b, length, heads, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, length, heads, d // 2, 2))
    out = torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3)
    return out.to(x.dtype)
