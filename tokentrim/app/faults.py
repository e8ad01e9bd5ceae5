"""Injected faults: a few spatial tokens of one block corrupted, so the corruption enters the KV cache (and the
video) the way an unstable region would, and the rollout continues from there.

A fault is a compact region of K tokens on the DiT patch grid (a rectangle as square as K allows, placed by a
seeded generator), applied to every latent frame of block J. Where (`Fault.level`):
- None: block J's accepted latents, before its clean pass (Self Forcing and the other one-pass loops). The
  faulted latents are what later blocks attend to and what TokenTrim judges block J + 1 against;
- a level L: block J's x0 after the denoising pass at level L of a multi-pass loop (Rolling Forcing's window),
  before it is re-noised, so the fault spreads through the window and TokenTrim judges it with block J itself.
Kinds, in latent space, their size set by `contrast` C in units of the block's own per-channel std sigma_c (so
they scale with any VAE; with the toy codec the channels are colour planes):
- `blob`: a flat patch — every channel set to the region's own mean over the block (its local content) shifted by
  C sigma_c, away from the block's mean of that channel: a fixed contrast against what was there;
- `foreign`: the same region copied from another rollout (another scene) at the same frames (its contrast is the
  other scene's: measured and recorded, not set);
- `noise`: a noise burst — Gaussian noise of C sigma_c added;
- `cast`: a local colour cast — the first third of the channels (the toy codec's red plane) shifted by C sigma_c.
`measured_contrast` gives the root-mean-square change inside the region in units of sigma_c.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tokentrim.errors import UserError
from tokentrim_core.hook import BlockHook, BlockRecord, Verdict

KINDS = ("blob", "foreign", "noise", "cast")


DEFAULT_CONTRAST = 3.0


@dataclass(frozen=True)
class Fault:
    kind: str
    block: int  # the block whose latents are corrupted
    tokens: tuple[int, ...]  # spatial token indices n = h * grid_w + w
    seed: int  # for the noise burst
    contrast: float = DEFAULT_CONTRAST  # C, in units of the block's per-channel std
    level: int | None = (
        None  # None: the accepted block; L: its x0 after the pass at level L (multi-pass loops)
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"`kind` must be one of {KINDS}, got {self.kind!r}")
        if not (math.isfinite(self.contrast) and self.contrast > 0):
            raise UserError(f"`contrast` must be a number > 0, got {self.contrast!r}")


def check_tokens(k: int, tokens_per_frame: int, flag: str) -> None:
    """A command's fault size, checked before the weights load."""
    if not 1 <= k <= tokens_per_frame:
        raise UserError(f"{flag} must be in 1 .. {tokens_per_frame} (the tokens of a latent frame), got {k}")


def region(grid: tuple[int, int], k: int, rng: np.random.Generator) -> tuple[int, ...]:
    """K tokens forming a compact rectangle (rows x cols as square as possible, cut to K) at a random place."""
    gh, gw = grid
    if not 1 <= k <= gh * gw:
        raise UserError(f"`tokens` must be in 1 .. {gh * gw} (the tokens of a frame), got {k}")
    rows = min(gh, max(1, math.isqrt(k)))
    cols = min(gw, math.ceil(k / rows))
    rows = math.ceil(k / cols)
    top, left = int(rng.integers(0, gh - rows + 1)), int(rng.integers(0, gw - cols + 1))
    cells = [(top + r) * gw + left + c for r in range(rows) for c in range(cols)]
    return tuple(sorted(cells[:k]))


def token_mask(tokens: tuple[int, ...], grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Boolean latent-pixel mask `[H, W]` of the tokens' patches."""
    (gh, gw), (ph, pw) = grid, patch
    mask = torch.zeros(gh, gw, dtype=torch.bool)
    for n in tokens:
        mask[n // gw, n % gw] = True
    return mask.repeat_interleave(ph, 0).repeat_interleave(pw, 1)


def corrupt(
    fault: Fault, x0: torch.Tensor, mask: torch.Tensor, foreign: torch.Tensor | None = None
) -> torch.Tensor:
    """The block `x0 [B, f, C, H, W]` with the fault applied inside `mask [H, W]` (a new tensor)."""
    out = x0.clone()
    m = mask.to(x0.device)
    c = fault.contrast
    mean = x0.float().mean(dim=(1, 3, 4), keepdim=True)  # (B, 1, C, 1, 1): the block's own statistics
    std = x0.float().std(dim=(1, 3, 4), keepdim=True)
    if fault.kind == "blob":
        local = x0.float()[..., m].mean(dim=(1, 3)).reshape(mean.shape)  # the region's own mean per channel
        away = torch.where(local > mean, -1.0, 1.0)
        new = (local + away * c * std).expand_as(x0)
    elif fault.kind == "foreign":
        if foreign is None or foreign.shape != x0.shape:
            raise UserError("a `foreign` fault needs the other rollout's latents of the same block")
        new = foreign.to(x0.device, x0.dtype)
    elif fault.kind == "noise":
        gen = torch.Generator().manual_seed(fault.seed)
        burst = torch.randn(x0.shape, generator=gen).to(x0.device)
        new = x0.float() + c * std * burst
    else:  # cast
        shift = torch.zeros_like(std)
        shift[:, :, : x0.shape[2] // 3] = c * std[:, :, : x0.shape[2] // 3]
        new = (x0.float() + shift).expand_as(x0)
    out[..., m] = new.to(x0.dtype)[..., m]
    return out


def measured_contrast(x0: torch.Tensor, bad: torch.Tensor, mask: torch.Tensor) -> float:
    """Root-mean-square change inside the region, in units of the clean block's per-channel std."""
    std = x0.float().std(dim=(1, 3, 4), keepdim=True)
    change = ((bad.float() - x0.float()) / std)[..., mask.to(x0.device)]
    return float(change.pow(2).mean().sqrt())


class FaultHook:
    """A `BlockHook` around another (TokenTrim, scoring only or pruning): it passes every decision through and
    corrupts block `fault.block` once, where `fault.level` says: at acceptance (level None: the corrupted latents
    go on to the inner hook, so they are the reference the next block is judged against, and into the cache and
    the video), or after the block's window pass at that level (`denoised`, Rolling Forcing). `applied` holds the
    injected error energy and `contrast` its `measured_contrast` once the block has passed.

    foreign: the other rollout's latents `[B, F, C, H, W]` (a `foreign` fault copies its block)."""

    def __init__(
        self, inner: BlockHook, fault: Fault, mask: torch.Tensor, foreign: torch.Tensor | None = None
    ):
        self.inner, self.fault, self.mask, self.foreign = inner, fault, mask, foreign
        self.applied: list[torch.Tensor] = []
        self.contrast: list[float] = []

    @property
    def records(self) -> list[BlockRecord]:
        return self.inner.records

    def propose(self, block: int, frames: range, x0: torch.Tensor) -> Verdict:
        return self.inner.propose(block, frames, x0)

    def regenerated(self, block: int, x0: torch.Tensor, tokens_removed: int, regenerations: int) -> Verdict:
        return self.inner.regenerated(block, x0, tokens_removed, regenerations)

    def switched(self, block: int) -> None:
        self.inner.switched(block)

    def accepted(self, block: int, x0: torch.Tensor) -> torch.Tensor:
        return self.inner.accepted(block, self._corrupt(block, None, x0))

    def denoised(self, block: int, level: int, x0: torch.Tensor) -> torch.Tensor:
        """The loop's hook point after a window pass (`Rollout.denoised`)."""
        return self._corrupt(block, level, x0)

    def _corrupt(self, block: int, level: int | None, x0: torch.Tensor) -> torch.Tensor:
        if block != self.fault.block or level != self.fault.level or self.applied:
            return x0
        s = block * x0.shape[1]
        foreign = None if self.foreign is None else self.foreign[:, s : s + x0.shape[1]]
        bad = corrupt(self.fault, x0, self.mask, foreign)
        self.applied.append((bad - x0).float().pow(2).sum().cpu())
        self.contrast.append(measured_contrast(x0, bad, self.mask))
        return bad
