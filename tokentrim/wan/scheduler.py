"""Flow-matching schedule of the few-step samplers (docs/spec.md#flow-matching-schedule).

Table: s_i = linspace(1, 0, 1001)[i] for i < 1000 (float32), sigma_i = shift*s_i / (1 + (shift-1)*s_i),
T_i = 1000*sigma_i. Convention: x_t = (1 - sigma) x0 + sigma eps, the model predicts v = eps - x0, so
x0 = x_t - sigma v. Configured steps k are warped to T_ext[1000 - k] with T_ext = [T_0 .. T_999, 0].
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

NUM_TRAIN_TIMESTEPS = 1000


def check_sampler_steps(steps: Sequence[float], shift: float) -> None:
    """Sampler settings the schedule can honour: integer steps in (0, 1000], strictly decreasing; shift > 0.

    Raises ValueError naming the field (the reference indexes its table with integer steps,
    docs/spec.md#flow-matching-schedule).
    """
    if not steps:
        raise ValueError("denoising_steps must not be empty")
    if any(not 0 < k <= NUM_TRAIN_TIMESTEPS or float(k) != int(k) for k in steps):  # range first: inf, nan
        raise ValueError(f"denoising_steps must be integers in (0, {NUM_TRAIN_TIMESTEPS}], got {list(steps)}")
    if any(a <= b for a, b in pairwise(steps)):
        raise ValueError(f"denoising_steps must be strictly decreasing, got {list(steps)}")
    if not 0 < shift < float("inf"):
        raise ValueError(f"timestep_shift must be a finite number > 0, got {shift}")


class FlowMatchSchedule:
    def __init__(self, shift: float = 5.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        if shift <= 0:
            raise ValueError(f"timestep shift must be positive, got {shift}")
        self.shift = shift
        n = num_train_timesteps
        s = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float32)[:-1]
        self.sigmas = shift * s / (1 + (shift - 1) * s)  # float32 [n], descending
        self.timesteps = self.sigmas * n  # float32 [n]
        self.num_train_timesteps = n
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas) on `device`, copied once (no host transfer inside the sampling loop)."""
        if device not in self._on_device:
            self._on_device[device] = (self.timesteps.to(device), self.sigmas.to(device))
        return self._on_device[device]

    def warp(self, steps: Sequence[float]) -> torch.Tensor:
        """Configured steps (e.g. [1000, 750, 500, 250]) -> the timesteps the model receives (float32)."""
        extended = torch.cat([self.timesteps, torch.zeros(1)])
        index = torch.tensor([self.num_train_timesteps - int(k) for k in steps])
        if (index < 0).any() or (index > self.num_train_timesteps).any():
            raise ValueError(
                f"denoising steps must lie in [0, {self.num_train_timesteps}], got {list(steps)}"
            )
        return extended[index]

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma of the table entry nearest to each timestep (float32, same shape as t)."""
        table, sigmas = self._tables(t.device)
        index = (table[None, :] - t.reshape(-1, 1).float()).abs().argmin(dim=1)
        return sigmas[index].reshape(t.shape)

    def to_x0(self, flow: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = x_t - sigma(t) v in float64, cast to the flow's dtype. flow, x_t `[B, F, C, H, W]`, t `[B, F]`."""
        sigma = self.sigma(t).to(torch.float64)[..., None, None, None]
        return (x_t.to(torch.float64) - sigma * flow.to(torch.float64)).to(flow.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(1 - sigma) x0 + sigma eps computed in float32, cast to the noise dtype. t `[B, F]`."""
        sigma = self.sigma(t)[..., None, None, None]
        return ((1 - sigma) * x0 + sigma * noise).to(noise.dtype)
