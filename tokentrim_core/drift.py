"""TokenTrim drift scoring: latent summaries, per-token drift, the unstable set and the drift severity.

Pure functions on tensors, no state and no randomness (paper Sec. 4.2–4.4, Eq. 3–7). Letters: B batch, F frames of
a block, C latent channels, H x W latent grid, (ph, pw) the DiT patch, N = (H/ph)(W/pw) spatial tokens per frame,
D = C·ph·pw token dimension.
"""

from __future__ import annotations

import math

import torch

# Decimal places kept before taking ceil(p·N): p·N is computed in binary floating point, so 0.07 * 100 gives
# 7.000000000000001 and a plain ceil would give 8. Rounding first removes that representation error.
_CEIL_DECIMALS = 9


def num_unstable(p: float, n_tokens: int) -> int:
    """|S_t| = ceil(p·N), the size of the unstable set (Eq. 6), robust to float representation error.

    p·N is rounded to 9 decimals before the ceiling, so p = 0.1, N = 1560 gives 156 (not 157) and p = 0.07,
    N = 100 gives 7. The result is clamped to [1, N] so the set is never empty.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must satisfy 0 < p < 1, got {p}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    k = math.ceil(round(p * n_tokens, _CEIL_DECIMALS))
    return min(max(k, 1), n_tokens)


def latent_summary(x0: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Frame-averaged latent summary of a block, as patch tokens (Eq. 3–4).

    The block's latents are averaged over its F frames, then each (ph, pw) patch of the latent grid is flattened
    into one token, in the order (c, i, j) within the patch. Tokens are ordered row-major over the patch grid,
    n = h * grid_w + w, which is the spatial index of the KV cache. Computed in float32.

    Shapes: x0 [B, F, C, H, W] -> [B, N, D], N = (H/ph)(W/pw), D = C·ph·pw.
    """
    if x0.ndim != 5:
        raise ValueError(f"x0 must be [B, F, C, H, W], got shape {tuple(x0.shape)}")
    ph, pw = patch
    b, _, c, h, w = x0.shape
    if h % ph or w % pw:
        raise ValueError(f"latent grid {h}x{w} is not divisible by patch {ph}x{pw}")
    gh, gw = h // ph, w // pw
    z = x0.float().mean(dim=1)  # (B, C, H, W), Eq. 4
    z = z.reshape(b, c, gh, ph, gw, pw)
    z = z.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, ph, pw)
    return z.reshape(b, gh * gw, c * ph * pw)


def token_drift(z: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
    """Per-token drift d_i = ||Z_t(i) - Z_{t-1}(i)||_2 over the token dimension (Eq. 5).

    Shapes: z, z_prev [B, N, D] -> [B, N].
    """
    if z.shape != z_prev.shape:
        raise ValueError(f"summary shapes differ: {tuple(z.shape)} vs {tuple(z_prev.shape)}")
    return torch.linalg.vector_norm(z.float() - z_prev.float(), ord=2, dim=-1)


def unstable_set(d: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unstable set S_t = top-ceil(pN) drift tokens and drift severity D_t = mean of d over S_t (Eq. 6–7).

    A KV cache is shared by every sample of the batch, so one position set serves the whole batch: with B > 1
    the drift of each token is first averaged over the batch, then the top-k is taken. Ties are broken by
    `torch.topk`; D_t does not depend on how ties are broken. No host sync: D_t stays a tensor.

    Shapes: d [B, N] or [N] -> (indices long [k] sorted ascending, severity float32 0-dim), k = ceil(pN).
    """
    if d.ndim == 2:
        d = d.float().mean(dim=0)  # (N,) one position set per batch
    elif d.ndim != 1:
        raise ValueError(f"d must be [B, N] or [N], got shape {tuple(d.shape)}")
    k = num_unstable(p, d.shape[0])
    values, indices = torch.topk(d.float(), k, sorted=False)
    return torch.sort(indices).values, values.mean()


def consecutive_block_drift(
    latents: torch.Tensor, patch: tuple[int, int], frames_per_block: int
) -> torch.Tensor:
    """Per-token drift of each block against the block before it, over a whole rollout (Eq. 3–5), as the
    controller would score it against an accepted previous block. Frames past the last full block are ignored.

    Shapes: latents [F, C, H, W] -> [n_blocks - 1, N]; row i compares block i + 1 with block i.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be [F, C, H, W], got shape {tuple(latents.shape)}")
    n_blocks = latents.shape[0] // frames_per_block
    if n_blocks < 2:
        raise ValueError(
            f"need at least 2 blocks of {frames_per_block} latent frames, got {latents.shape[0]}"
        )
    blocks = latents[: n_blocks * frames_per_block].reshape(n_blocks, frames_per_block, *latents.shape[1:])
    z = latent_summary(blocks, patch)  # (n_blocks, N, D): each block is one batch row
    return token_drift(z[1:], z[:-1])
