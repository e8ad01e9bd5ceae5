"""FlowMo: variance-based motion-coherence guidance, x0-prediction and patch-wise (arXiv 2506.01144;
TokenTrim paper Sec. 4.1).

At chosen denoising steps the noisy latent x_t is refined by a few Adam steps that lower the temporal variance
of the predicted clean video's frame-to-frame changes, measured per patch token. TokenTrim uses it on the first
block only ("first_block"); the FlowMo baseline uses it on every block ("every_block").
See docs/tokentrim.md for how FlowMo's 50-step schedule maps onto the distilled samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .options import check_options, option

MODES = ("off", "first_block", "every_block")
REDUCTIONS = ("max", "softmax")
SCOPES = ("window", "block")

# The settings before issue 22: 3 Adam steps per guided step, every guided block of a Rolling Forcing window
# optimised by its own guidance call, gradient checkpointing on at every model size. `FlowMoConfig.legacy`
# reproduces runs made with them bit for bit (docs/tokentrim.md#41-the-settings-what-the-paper-ran).
LEGACY_SETTINGS: dict[str, object] = {"iterations": 3, "scope": "block", "checkpointing": True}


@dataclass(frozen=True)
class FlowMoConfig:
    """FlowMo settings; the defaults are what the paper ran, FlowMo's inference defaults
    (docs/tokentrim.md#4-flowmo).

    steps: indices into the sampler's denoising-step list at which guidance runs (0 = the first, t = 1000).
    iterations: Adam steps per guided step; 1 is FlowMo's command-line setting, lr 1e-3 its default rate.
    reduce: how per-token variances become one loss, "max" (FlowMo) or a softmax(v / temperature)-weighted mean.
    keep_best: return the lowest-loss latent seen instead of the last one.
    scope: what one guidance call covers when a model call holds several blocks (Rolling Forcing's window).
      "window": one optimisation per call; the rows of all its guided blocks move together and the loss is
      taken on the whole call's x0 (FlowMo scores the whole sample it denoises). "block": one optimisation per
      guided block, moving and scoring only that block's rows (the behaviour before issue 22).
    checkpointing: recompute the predictor's activations in the backward pass instead of storing them (one
      more forward per iteration); None lets the caller choose from the model's size (the pipelines: on for
      Wan2.1-1.3B, off for the tiny and toy models).
    """

    mode: str = option(
        "off",
        "FlowMo guidance: off, the first block (TokenTrim's initialisation) or every block",
        choices=MODES,
        flag="--flowmo",
        label="FlowMo",
    )
    steps: tuple[int, ...] = (0,)
    iterations: int = option(1, "Adam steps per guided step", low=1)
    lr: float = option(1e-3, "Adam learning rate", low=0.0, low_open=True)
    reduce: str = option("max", "per-token variances to one loss", choices=REDUCTIONS)
    temperature: float = option(1.0, "softmax temperature of reduce=softmax", low=0.0, low_open=True)
    keep_best: bool = option(True, "return the lowest-loss latent seen instead of the last one")
    scope: str = option(
        "window", "what one guidance call optimises when a call holds several blocks", choices=SCOPES
    )
    checkpointing: bool | None = option(
        None, "recompute activations in the backward pass (null: by model size)"
    )

    @classmethod
    def legacy(cls, **fields) -> FlowMoConfig:
        """The named setting `LEGACY_SETTINGS` (the behaviour before issue 22); `fields` set the others."""
        return cls(**{**LEGACY_SETTINGS, **fields})

    def __post_init__(self) -> None:
        check_options(self)
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


@dataclass
class Guided:
    """What `flowmo_guidance` keeps. latent: the guided x_t `[B, F, C, H, W]` (x_t's dtype); x0: the predictor's
    output for exactly that latent, `[B, F, C, H, W]`, so the caller's denoising step reuses it instead of
    evaluating the model again; losses[i]: the loss after i Adam steps (iterations + 1 values)."""

    latent: torch.Tensor
    x0: torch.Tensor
    losses: list[float]


def flowmo_guidance(
    x_t: torch.Tensor,
    predict_x0: Callable[[torch.Tensor, bool], torch.Tensor],
    cfg: FlowMoConfig,
    patch: tuple[int, int],
    frames: Sequence[int] | None = None,
    scored: Sequence[int] | None = None,
) -> Guided:
    """Refine the noisy latent x_t with `cfg.iterations` Adam steps on motion_variance(predict_x0(x)[:, scored]).

    Only the rows `frames` of x_t move (default: all); the others are held fixed. They are a float32 leaf
    copy; gradients are taken with torch.autograd.grad with respect to that copy alone, so no parameter's
    .grad is touched. `predict_x0(latent, grad)` receives the whole latent `[B, F, C, H, W]` in x_t's dtype and
    returns its x0 `[B, F, C, H, W]`; with grad=True it must be differentiable in it (the caller freezes the
    model's weights), with grad=False (the last latent's evaluation) it runs without autograd. The loss is
    taken on the x0 rows `scored` (default: all).

    Passes: `iterations` differentiable evaluations, each with one backward, and one evaluation without
    autograd of the last latent, which the keep-best rule needs (FlowMo's optimiser keeps its lowest-loss
    sample, docs/spec.md#the-tokentrim-paper) and whose x0 is the denoising step's own.
    The kept latent's x0 is returned with it, detached, so the caller needs no further evaluation.
    Callers may run under torch.no_grad (gradients are re-enabled here) but not under torch.inference_mode,
    whose tensors cannot enter autograd; x_t itself is never modified.
    Shapes: x_t [B, F, C, H, W] -> Guided(latent [B, F, C, H, W], x0 [B, F, C, H, W], losses).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "flowmo_guidance needs autograd: call it under torch.no_grad, not torch.inference_mode"
        )
    dtype = x_t.dtype
    rows = None if frames is None else torch.as_tensor(list(frames), dtype=torch.long, device=x_t.device)
    score = None if scored is None else torch.as_tensor(list(scored), dtype=torch.long, device=x_t.device)
    fixed = x_t.detach()
    x = (fixed if rows is None else fixed.index_select(1, rows)).clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=cfg.lr)

    def whole(z: torch.Tensor) -> torch.Tensor:
        """The optimised rows back in place among the fixed ones: the latent the predictor sees."""
        return z.to(dtype) if rows is None else fixed.index_copy(1, rows, z.to(dtype))

    def loss_of(x0: torch.Tensor) -> torch.Tensor:
        judged = x0 if score is None else x0.index_select(1, score)
        return motion_variance(judged, patch, cfg.reduce, cfg.temperature)

    losses: list[float] = []
    best: tuple[torch.Tensor, torch.Tensor] | None = None  # (latent, its x0)
    best_loss = math.inf

    def keep(loss: torch.Tensor, x0: torch.Tensor, last: bool) -> None:
        nonlocal best, best_loss
        losses.append(loss.item())
        value = math.inf if math.isnan(losses[-1]) else losses[-1]
        if best is None or (value < best_loss if cfg.keep_best else last):
            best, best_loss = (whole(x.detach()).clone(), x0.detach()), value

    with torch.enable_grad():
        for _ in range(cfg.iterations):
            x0 = predict_x0(whole(x), True)
            loss = loss_of(x0)
            keep(loss, x0, last=False)
            (x.grad,) = torch.autograd.grad(loss, [x])
            optimizer.step()
            x.grad = None
    with torch.no_grad():
        x0 = predict_x0(whole(x), False)  # the last latent, so that it can be the one kept
        keep(loss_of(x0), x0, last=True)
    assert best is not None
    return Guided(best[0], best[1], losses)
