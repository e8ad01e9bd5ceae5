"""FlowMo: variance-based motion-coherence guidance, x0-prediction and patch-wise (paper §2.7, arXiv 2506.01144).

At chosen denoising steps the noisy latent x_t is refined by a few Adam steps that lower the temporal variance
of the predicted clean video's frame-to-frame changes, measured per patch token. TokenTrim uses it on the first
block only ("first_block"); the FlowMo baseline uses it on every block ("every_block").
See docs/tokentrim.md for how FlowMo's 50-step schedule maps onto the distilled samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("off", "first_block", "every_block")
REDUCTIONS = ("max", "softmax")


@dataclass(frozen=True)
class FlowMoConfig:
    """FlowMo settings. iterations 3 and lr 1e-3 are FlowMo's optimizer class defaults.

    steps: indices into the sampler's denoising-step list at which guidance runs (0 = the first, t = 1000).
    reduce: how per-token variances become one loss, "max" (FlowMo) or a softmax(v / temperature)-weighted mean.
    keep_best: return the lowest-loss latent seen instead of the last one.
    checkpointing: recompute the predictor's activations in the backward pass instead of storing them (the
    caller's model honours it), so a guided 1.3B step fits one GPU; costs one extra forward per iteration.
    """

    mode: str = "off"
    steps: tuple[int, ...] = (0,)
    iterations: int = 3
    lr: float = 1e-3
    reduce: str = "max"
    temperature: float = 1.0
    keep_best: bool = True
    checkpointing: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.steps, tuple) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.steps
        ):
            raise ValueError(
                f"steps must be a tuple of ints >= 0 (denoising-step indices), got {self.steps!r}"
            )
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"steps must not repeat an index, got {self.steps!r}")
        if self.mode != "off" and not self.steps:
            raise ValueError(f"steps must name at least one step when mode is {self.mode!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {self.iterations!r}")
        if not isinstance(self.lr, int | float) or isinstance(self.lr, bool) or not 0.0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {self.reduce!r}")
        if (
            not isinstance(self.temperature, int | float)
            or isinstance(self.temperature, bool)
            or not 0.0 < self.temperature < math.inf
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"keep_best must be a bool, got {self.keep_best!r}")
        if not isinstance(self.checkpointing, bool):
            raise ValueError(f"checkpointing must be a bool, got {self.checkpointing!r}")


def applies(cfg: FlowMoConfig, block_index: int) -> bool:
    """Whether guidance runs for this block: block 0 for "first_block", every block for "every_block"."""
    if cfg.mode == "every_block":
        return True
    return cfg.mode == "first_block" and block_index == 0


def motion_variance(
    x0: torch.Tensor, patch: tuple[int, int], reduce: str = "max", temperature: float = 1.0
) -> torch.Tensor:
    """FlowMo's motion-incoherence loss on a predicted clean block.

    1. |x0[:, f+1] - x0[:, f]| for consecutive frames           -> [B, F-1, C, H, W]
    2. population variance over time (the F-1 axis)             -> [B, C, H, W]
    3. mean over channels and over each (ph, pw) patch          -> [B, N], row-major tokens
    4. over tokens: max, or softmax(v / temperature)-weighted mean -> [B]
    5. mean over the batch                                      -> scalar
    A static video and a constant-velocity video both give 0. Differentiable in x0.

    Shapes: x0 [B, F, C, H, W] with F >= 3 -> 0-dim float32.
    """
    if x0.ndim != 5:
        raise ValueError(f"x0 must be [B, F, C, H, W], got shape {tuple(x0.shape)}")
    if x0.shape[1] < 3:
        raise ValueError(
            f"motion_variance needs at least 3 frames (2 frame differences) for a variance, got F={x0.shape[1]}"
        )
    ph, pw = patch
    h, w = x0.shape[-2:]
    if h % ph or w % pw:
        raise ValueError(f"latent grid {h}x{w} is not divisible by patch {ph}x{pw}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    x0 = x0.float()
    change = (x0[:, 1:] - x0[:, :-1]).abs()  # (B, F-1, C, H, W)
    var = change.var(dim=1, unbiased=False).mean(dim=1)  # (B, H, W)
    v = F.avg_pool2d(var.unsqueeze(1), kernel_size=(ph, pw)).flatten(1)  # (B, N), n = h * grid_w + w
    if reduce == "max":
        per_sample = v.amax(dim=1)
    else:
        per_sample = (torch.softmax(v / temperature, dim=1) * v).sum(dim=1)
    return per_sample.mean()


def flowmo_guidance(
    x_t: torch.Tensor,
    predict_x0: Callable[[torch.Tensor, bool], torch.Tensor],
    cfg: FlowMoConfig,
    patch: tuple[int, int],
) -> tuple[torch.Tensor, list[float]]:
    """Refine the noisy latent x_t with `cfg.iterations` Adam steps on motion_variance(predict_x0(x)).

    Only the latent is optimised: a float32 leaf copy of x_t; gradients are taken with torch.autograd.grad
    with respect to that copy alone, so no parameter's .grad is touched. `predict_x0(latent, grad)` receives the
    latent in x_t's dtype; with grad=True it must be differentiable in it (the caller freezes the model's
    weights), with grad=False (the final evaluation) it runs without autograd.
    Callers may run under torch.no_grad (gradients are re-enabled here) but not under torch.inference_mode,
    whose tensors cannot enter autograd; x_t itself is never modified.

    Returns (x_t_new in x_t's dtype, losses), losses[i] = the loss after i steps (iterations + 1 values; the
    last latent is evaluated too so it can be kept). x_t_new is the lowest-loss latent if keep_best, else the
    last one. Shapes: x_t [B, F, C, H, W] -> [B, F, C, H, W].
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "flowmo_guidance needs autograd: call it under torch.no_grad, not torch.inference_mode"
        )
    dtype = x_t.dtype
    x = x_t.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=cfg.lr)

    def loss_of(latent: torch.Tensor, grad: bool) -> torch.Tensor:
        return motion_variance(predict_x0(latent.to(dtype), grad), patch, cfg.reduce, cfg.temperature)

    losses: list[float] = []
    best, best_loss = x.detach().clone(), math.inf

    def keep(loss: torch.Tensor) -> None:
        nonlocal best, best_loss
        losses.append(loss.item())
        if losses[-1] < best_loss:
            best, best_loss = x.detach().clone(), losses[-1]

    with torch.enable_grad():
        for _ in range(cfg.iterations):
            loss = loss_of(x, True)
            keep(loss)
            (x.grad,) = torch.autograd.grad(loss, [x])
            optimizer.step()
            x.grad = None
    with torch.no_grad():
        keep(loss_of(x, False))  # the last step's latent, so that it can be the one kept
    result = best if cfg.keep_best else x.detach()
    return result.to(dtype), losses
