"""Steps shared by the Self Forcing and Rolling Forcing loops: noise, one denoising call, the clean commit pass,
FlowMo guidance of one step, input checks and the output dataclass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tokentrim.errors import UserError
from tokentrim.wan.kv_cache import KVCache
from tokentrim.wan.model import CausalWanModel, ContextCache
from tokentrim.wan.scheduler import FlowMatchSchedule
from tokentrim_core.flowmo import FlowMoConfig, flowmo_guidance
from tokentrim_core.hook import BlockHook, Verdict

# Called with (first latent frame, x0 [B, F, C, H, W]) whenever frames become final, in time order.
BlockCallback = Callable[[int, torch.Tensor], None]


@dataclass
class GenerationOutput:
    latents: torch.Tensor  # [B, F, C, H, W], the model dtype
    frames: torch.Tensor | None = None  # uint8 [B, T, H, W, 3] when a decoder was given
    records: list[dict] = field(default_factory=list)  # one TokenTrim decision record per block
    flowmo_losses: list[list[float]] = field(default_factory=list)


class NoHook:
    """The plain reference loop: every block accepted, nothing recorded."""

    records: list[dict] = []

    def propose(self, block: int, frames: range, x0: torch.Tensor) -> Verdict:
        return Verdict(False)

    def regenerated(self, block: int, x0: torch.Tensor, tokens_removed: int, regenerations: int) -> Verdict:
        return Verdict(False)


def model_device_dtype(model: CausalWanModel) -> tuple[torch.device, torch.dtype]:
    weight = model.patch_embedding.weight
    return weight.device, weight.dtype


def check_frames(model: CausalWanModel, num_frames: int, minimum: int, pipeline: str) -> None:
    """Latent-frame count checks common to both loops (spec §10 length limits)."""
    block = model.config.frames_per_block
    limit = model.config.rope_max_seq_len // block * block
    if num_frames % block or num_frames <= 0:
        raise UserError(
            f"--latent-frames must be a positive multiple of {block} for {pipeline}, got {num_frames}"
        )
    if num_frames < minimum:
        raise UserError(
            f"{pipeline} needs at least {minimum} latent frames (one full window), got {num_frames}; "
            f"use --latent-frames {minimum} or more"
        )
    if num_frames > limit:
        raise UserError(f"at most {limit} latent frames fit the RoPE table, got {num_frames}")


def prepare_noise(
    model: CausalWanModel,
    batch: int,
    num_frames: int,
    seed: int | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Generator]:
    """The initial noise `[B, F, C, H, W]` (drawn first, spec §4.3) and the generator for the in-loop draws."""
    device, dtype = model_device_dtype(model)
    cfg = model.config
    shape = (batch, num_frames, cfg.in_dim, cfg.latent_height, cfg.latent_width)
    if generator is None:
        if seed is None:
            raise UserError("give a seed, or an initial noise tensor together with a torch.Generator")
        generator = torch.Generator(device=device).manual_seed(seed)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(noise.shape) != shape:
        raise UserError(f"noise must have shape {list(shape)}, got {list(noise.shape)}")
    return noise.to(device=device, dtype=dtype), generator


def check_prefix(
    model: CausalWanModel,
    prefix: torch.Tensor | None,
    batch: int,
    num_frames: int,
    minimum: int,
    pipeline: str,
) -> int:
    """Observed first frames (clean latents `[B, P, C, H, W]`, P a multiple of the block) -> P // block.

    At least `minimum` frames must be left to generate (one block; Rolling Forcing: one full window)."""
    if prefix is None:
        return 0
    cfg, block = model.config, model.config.frames_per_block
    shape = (batch, cfg.in_dim, cfg.latent_height, cfg.latent_width)
    if prefix.dim() != 5 or (prefix.shape[0], *prefix.shape[2:]) != shape or prefix.shape[1] % block:
        raise UserError(
            f"the observed first frames must be latents [{batch}, P, {', '.join(map(str, shape[1:]))}] with P a "
            f"multiple of {block}, got {list(prefix.shape)}"
        )
    if num_frames - prefix.shape[1] < minimum:
        raise UserError(
            f"{pipeline} with {prefix.shape[1]} observed frames needs at least {prefix.shape[1] + minimum} latent "
            f"frames in all, got {num_frames}"
        )
    return prefix.shape[1] // block


def commit_observed(
    model: CausalWanModel,
    prefix: torch.Tensor,
    observed: int,
    context: ContextCache,
    cache: KVCache,
    output: torch.Tensor,
    hook: BlockHook,
    context_noise: float,
    on_block: BlockCallback | None,
) -> None:
    """The observed blocks 0 .. observed-1, in order: room in the cache, copied to `output`, the clean pass.

    The last one is shown to the hook (its latent summary becomes the reference of the first generated block);
    observed blocks are never judged for pruning."""
    device, dtype = model_device_dtype(model)
    block = model.config.frames_per_block
    for b in range(observed):
        s = b * block
        cache.make_room(block)
        x0 = prefix[:, s : s + block].to(device=device, dtype=dtype)
        if b == observed - 1 and hook.propose(b, range(s, s + block), x0).prune:
            raise RuntimeError(
                f"the hook asked to prune observed block {b}; observed blocks are never regenerated"
            )
        output[:, s : s + block] = x0
        commit(model, x0, context, cache, s, context_noise)
        if on_block is not None:
            on_block(s, x0)


def check_prompt_embeds(model: CausalWanModel, prompt_embeds: torch.Tensor) -> None:
    cfg = model.config
    if (
        prompt_embeds.dim() != 3
        or prompt_embeds.shape[2] != cfg.text_dim
        or prompt_embeds.shape[1] > cfg.text_len
    ):
        raise UserError(
            f"prompt_embeds must be [B, <= {cfg.text_len}, {cfg.text_dim}], got {list(prompt_embeds.shape)}; "
            "was it made by the text encoder of this model?"
        )


def predict_x0(
    model: CausalWanModel,
    schedule: FlowMatchSchedule,
    x: torch.Tensor,
    t: torch.Tensor,
    context: ContextCache,
    cache: KVCache,
    start_frame: int,
) -> torch.Tensor:
    """One DiT call on a noisy block or window (no cache commit), converted to x0. t: `[B, F]` float32."""
    flow = model(x, t, context, cache=cache, start_frame=start_frame)
    return schedule.to_x0(flow, x, t)


def commit(
    model: CausalWanModel,
    x0: torch.Tensor,
    context: ContextCache,
    cache: KVCache,
    start_frame: int,
    t_context: float,
) -> None:
    """The clean pass: re-run the finished block at t = context_noise to write its keys/values into the cache."""
    t = torch.full(x0.shape[:2], t_context, device=x0.device, dtype=torch.float32)
    model(x0, t, context, cache=cache, start_frame=start_frame, commit=True)


def guide(
    model: CausalWanModel,
    schedule: FlowMatchSchedule,
    x: torch.Tensor,
    t: torch.Tensor,
    context: ContextCache,
    cache: KVCache,
    start_frame: int,
    flowmo: FlowMoConfig,
    frames: slice = slice(None),
) -> tuple[torch.Tensor, list[float]]:
    """FlowMo: a few gradient steps on the noisy latent of `frames` (the rest of x held fixed), judged on their
    x0, before the step's regular DiT call. Returns the updated x and the loss per iteration."""
    cfg = model.config
    patch = (cfg.patch_size[1], cfg.patch_size[2])

    def x0_of(z: torch.Tensor) -> torch.Tensor:
        full = torch.cat([x[:, : frames.start or 0], z, x[:, frames.stop :]], dim=1) if frames.stop else z
        return predict_x0(model, schedule, full, t, context, cache, start_frame)[:, frames]

    before, model.gradient_checkpointing = model.gradient_checkpointing, flowmo.checkpointing
    try:
        guided, losses = flowmo_guidance(x[:, frames], x0_of, flowmo, patch)
    finally:
        model.gradient_checkpointing = before
    out = x.clone()
    out[:, frames] = guided
    return out, losses


def run_hook(
    hook: BlockHook,
    block: int,
    frames: range,
    x0: torch.Tensor,
    cache: KVCache,
    regenerate: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """Ask the hook about a candidate; while it says prune, remove the positions and regenerate."""
    verdict = hook.propose(block, frames, x0)
    regenerations = 0
    while verdict.prune:
        removed = cache.remove_positions(verdict.positions)  # pinned (sink / anchor) frames are never pruned
        x0 = regenerate()
        regenerations += 1
        verdict = hook.regenerated(block, x0, removed, regenerations)
    return x0
