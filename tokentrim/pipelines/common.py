"""What every autoregressive loop shares.

* `BlockPipeline`: the skeleton of a call (input checks, initial noise, text context, cache, observed prefix,
  output); a loop file subclasses it, names its cache policy (`make_cache`) and writes only its loop
  (`generate`).
* `Rollout`: the typed bundle one generation carries (model, schedule, context, cache policy, generator,
  noise, output, hook), with the steps every loop uses: one denoising call, the clean commit pass, FlowMo
  guidance of one step, the TokenTrim decision, and handing a finished block out.
* `CachePolicy`: what a loop's calls read from and write to the `KVCache` storage, what is pinned, what is
  evicted. Each loop's policy lives beside its loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from tokentrim.errors import UserError
from tokentrim.wan.config import WanConfig
from tokentrim.wan.kv_cache import CallPlan, KVCache
from tokentrim.wan.model import CausalWanModel, ContextCache
from tokentrim.wan.scheduler import FlowMatchSchedule
from tokentrim.wan.static_cache import StaticKVCache
from tokentrim_core.flowmo import FlowMoConfig, flowmo_guidance
from tokentrim_core.hook import BlockHook, BlockRecord, Verdict

# Called with (first latent frame, x0 [B, F, C, H, W]) whenever frames become final, in time order.
BlockCallback = Callable[[int, torch.Tensor], None]
# Called with (first latent frame, x0) of each generated block once it is accepted, before its clean pass; returns
# the latents committed to the cache and output instead (an experiment's change: `tokentrim stress` faults).
BlockTransform = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class GenerationOutput:
    latents: torch.Tensor  # [B, F, C, H, W], the model dtype, on the CPU
    frames: torch.Tensor | None = None  # uint8 [B, T, H, W, 3] when a decoder was given
    records: list[BlockRecord] = field(default_factory=list)  # one TokenTrim decision per judged block
    flowmo_losses: list[list[float]] = field(default_factory=list)  # per guided step: loss per iteration


class NoHook:
    """The plain reference loop: every block accepted, nothing recorded."""

    @property
    def records(self) -> list[BlockRecord]:
        return []

    def propose(self, block: int, frames: range, x0: torch.Tensor) -> Verdict:
        return Verdict(False)

    def regenerated(self, block: int, x0: torch.Tensor, tokens_removed: int, regenerations: int) -> Verdict:
        return Verdict(False)

    def switched(self, block: int) -> None:
        pass


class CachePolicy:
    """A loop's use of its `KVCache`: `plan` describes what one model call attends to and writes.

    `write=False` asks for a call that writes nothing into the buffer (a differentiable FlowMo call); a
    committing call (`commit=True`) stores its frames. Pruning never touches pinned frames."""

    def __init__(self, cache: KVCache):
        self.cache = cache

    def plan(
        self, start_frame: int, num_frames: int, *, commit: bool = False, write: bool = True
    ) -> CallPlan:
        raise NotImplementedError

    def make_room(self, num_frames: int) -> list[int]:
        """Evict the oldest unpinned frames so that `num_frames` new ones fit."""
        return self.cache.evict_oldest(num_frames)

    def prune(self, positions: torch.Tensor) -> int:
        """TokenTrim's removal: `positions` leave every unpinned cached frame (pinned: sink / anchor)."""
        return self.cache.remove_positions(positions)

    def recache_plan(self, s: int, keep_pruning: bool) -> tuple[int, CallPlan, dict[int, torch.Tensor]]:
        """The re-cache call after a prompt switch before frame s (see `SinkCachePolicy.recache_plan`)."""
        raise NotImplementedError


# The KV cache's layouts: "dynamic" (`KVCache`: a call's key set is exactly what it attends to, compacted in place)
# or "static" (`StaticKVCache`: fixed shapes per call kind and a mask; for torch.compile without recompiles and CUDA
# graphs). Both give the same keys; docs/benchmarks.md#static-shape-kv-cache compares them.
CACHE_LAYOUTS = ("dynamic", "static")


# FlowMo's backward needs every DiT block's activations. Wan2.1-1.3B (dim 1536) keeps about 45 GB of them for one
# 15-frame Rolling Forcing window in bf16 (docs/tokentrim.md#41-the-settings-what-the-paper-ran, measured on the
# meta device), more than a 24-48 GB GPU holds beside weights and cache, so its blocks are recomputed in the
# backward pass instead (one more forward per iteration); models narrower than that (tiny: 48, toy: 128) keep a
# few MB, where recomputing would only cost time.
CHECKPOINTING_FROM_DIM = 1536


def flowmo_checkpointing(flowmo: FlowMoConfig, config: WanConfig) -> bool:
    """Whether FlowMo's differentiable calls recompute activations: `flowmo.checkpointing`, or when it is None
    the default for the model's size (on from `CHECKPOINTING_FROM_DIM` wide)."""
    if flowmo.checkpointing is not None:
        return flowmo.checkpointing
    return config.dim >= CHECKPOINTING_FROM_DIM


def model_device_dtype(model: CausalWanModel) -> tuple[torch.device, torch.dtype]:
    weight = model.patch_embedding.weight
    return weight.device, weight.dtype


@dataclass
class Rollout:
    """One generation in progress. Latents are `[B, F, C, H, W]`; `t` tensors are `[B, F]` float32."""

    model: CausalWanModel
    schedule: FlowMatchSchedule
    steps: torch.Tensor  # the sampler's timesteps, on the device
    context: ContextCache
    cache: CachePolicy
    generator: torch.Generator
    noise: (
        torch.Tensor
    )  # the initial noise, by absolute frame (the observed frames' rows are zeros, never read)
    output: torch.Tensor  # final latents on the CPU, filled as blocks finish
    hook: BlockHook
    flowmo: FlowMoConfig
    context_noise: float  # the clean pass's timestep
    block: int  # latent frames per block (the pipeline's)
    observed: int  # observed (prefix) blocks, committed before the loop
    regen_noise: str = "same"
    on_block: BlockCallback | None = None
    progress: bool = True
    alter: BlockTransform | None = None
    switches: list[tuple[int, ContextCache]] = field(
        default_factory=list
    )  # (first frame, its prompt's context)
    switch_pruning: str = (
        "keep"  # at a re-cache: "keep" the removed positions, or "reset" (rebuild whole frames)
    )
    losses: list[list[float]] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return self.output.shape[1] // self.block

    def progress_bar(self, items, desc: str):
        return tqdm(items, desc=desc, disable=not self.progress)

    # Model calls --------------------------------------------------------------------------------------------
    def predict_x0(self, x: torch.Tensor, t: torch.Tensor, start: int, write: bool = True) -> torch.Tensor:
        """One DiT call on a noisy block or window (no cache commit), converted to x0."""
        plan = self.cache.plan(start, x.shape[1], write=write)
        flow = self.model(x, t, self.context, cache=self.cache.cache, plan=plan, start_frame=start)
        return self.schedule.to_x0(flow, x, t)

    def commit(self, x0: torch.Tensor, start: int) -> None:
        """The clean pass: re-run finished frames at t = context_noise to write their keys/values into the cache."""
        t = torch.full(x0.shape[:2], self.context_noise, device=x0.device, dtype=torch.float32)
        plan = self.cache.plan(start, x0.shape[1], commit=True)
        self.model(x0, t, self.context, cache=self.cache.cache, plan=plan, start_frame=start)

    def guide(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        start: int,
        blocks: Sequence[range] | None = None,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """FlowMo on the rows `blocks` of x (one range per guided block; default: all of x, one block), the rest
        held fixed, in place of the step's regular DiT call: returns (the guided x, its x0), the x0 being that
        call's output for the guided x (no second evaluation). `flowmo.scope` "window" optimises every guided
        block in one call, scored on all of x's x0; "block" optimises them one after the other, each scored
        on its own rows. The losses of each guidance call are appended to `losses`.

        `context`: final x0 frames just before x, held fixed and scored together with x's x0 (a 1-frame block's
        own x0 has too few frames for FlowMo's loss, which needs 3); only with `blocks` None."""
        cfg, every = self.model.config, list(range(x.shape[1]))
        assert context is None or blocks is None, "context frames go with guiding the whole of x"
        lead = 0 if context is None else context.shape[1]
        blocks = [every] if blocks is None else [list(rows) for rows in blocks]
        if self.flowmo.scope == "window":  # guidance calls as (rows optimised, rows scored)
            calls = [([f for rows in blocks for f in rows], every)]
        else:
            calls = [(rows, rows) for rows in blocks]

        def x0_of(z: torch.Tensor, grad: bool) -> torch.Tensor:
            # Differentiable calls write nothing into the cache (a graph through the buffer would outlive them).
            x0 = self.predict_x0(z, t, start, write=not grad)
            return x0 if context is None else torch.cat([context.to(x0.device, x0.dtype), x0], dim=1)

        before = self.model.gradient_checkpointing
        self.model.gradient_checkpointing = flowmo_checkpointing(self.flowmo, cfg)
        try:
            for frames, scored in calls:
                guided = flowmo_guidance(x, x0_of, self.flowmo, cfg.patch_size[1:],
                                         None if frames == every else frames,
                                         None if scored == every else scored)  # fmt: skip
                x, x0 = guided.latent, guided.x0[:, lead:]
                self.losses.append(guided.losses)
        finally:
            self.model.gradient_checkpointing = before
        return x, x0

    # Blocks -------------------------------------------------------------------------------------------------
    def judge(
        self, block: int, x0: torch.Tensor, regenerate: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        """Ask the hook about a candidate block; while it says prune, prune the cache and regenerate. Returns the
        attempt the hook keeps and its index (0 = the candidate, i = the i-th regeneration)."""
        s = block * self.block
        verdict = self.hook.propose(block, range(s, s + self.block), x0)
        attempts = [x0]
        while verdict.prune:
            removed = self.cache.prune(verdict.positions)
            attempts.append(regenerate())
            verdict = self.hook.regenerated(block, attempts[-1], removed, len(attempts) - 1)
        kept = len(attempts) - 1 if verdict.keep is None else verdict.keep
        return attempts[kept], kept

    def switch(self, start: int) -> None:
        """At a block boundary: a prompt switch due by `start` takes effect — the new text context (the
        cross-attention cache is rebuilt), the hook is told, then the KV re-cache under the new prompt (the
        segment is advanced before the re-cache: a reference bug fixed upstream,
        docs/spec.md#upstream-bugs-avoided). The re-cache draws no random numbers, so a switch does not shift the
        noise stream."""
        due = False
        while self.switches and self.switches[0][0] <= start:
            self.context, due = self.switches.pop(0)[1], True
        if not due:
            return
        self.hook.switched(start // self.block)
        if start == 0:
            return
        rs, plan, kept = self.cache.recache_plan(start, self.switch_pruning == "keep")
        x0 = self.output[:, rs:start].to(self.noise.device)
        t = torch.full(x0.shape[:2], self.context_noise, device=x0.device, dtype=torch.float32)
        self.model(x0, t, self.context, cache=self.cache.cache, plan=plan, start_frame=rs)
        every = torch.arange(self.cache.cache.tokens_per_frame)
        for frame, positions in kept.items():  # the removed positions leave the rebuilt rows again
            self.cache.cache.remove_positions(every[~torch.isin(every, positions)], frames=[frame])

    def accepted(self, start: int, x0: torch.Tensor) -> torch.Tensor:
        """A generated block was accepted: the latents to commit and output (unchanged unless `alter` is set)."""
        return x0 if self.alter is None else self.alter(start, x0)

    def finished(self, start: int, x0: torch.Tensor) -> None:
        """Frames [start, start + F) are final: into the output, then to the caller's callback."""
        self.output[:, start : start + x0.shape[1]] = x0
        if self.on_block is not None:
            self.on_block(start, x0)

    def commit_observed(self, prefix: torch.Tensor | None) -> None:
        """The observed blocks 0 .. observed-1, in order: room in the cache, the clean pass, the output.

        The last one is shown to the hook (its latent summary becomes the reference of the first generated
        block); observed blocks are never judged for pruning."""
        device, dtype = self.output.device, self.output.dtype
        block = self.block
        for b in range(self.observed):
            s = b * block
            self.cache.make_room(block)
            x0 = prefix[:, s : s + block].to(device=device, dtype=dtype)
            if b == self.observed - 1 and self.hook.propose(b, range(s, s + block), x0).prune:
                raise RuntimeError(
                    f"the hook asked to prune observed block {b}; observed blocks are never regenerated"
                )
            self.commit(x0, s)
            self.finished(s, x0)


class BlockPipeline:
    """The skeleton shared by every block-autoregressive loop; subclasses set the class attributes and write
    `make_cache` and `generate`. The sampler config must have `denoising_steps`, `warp_denoising_step`,
    `timestep_shift` and `context_noise`."""

    title: ClassVar[str] = "pipeline"  # in messages and progress bars
    config_class: ClassVar[type] = object
    regen_noise_modes: ClassVar[tuple[str, ...]] = ("same",)  # how a pruned block may be regenerated
    switching: ClassVar[bool] = False  # whether the loop switches prompts (its policy can re-cache)

    def __init__(self, model: CausalWanModel, config: Any = None, vae=None, *, cache: str = "dynamic"):
        if cache not in CACHE_LAYOUTS:
            raise UserError(f"`cache` must be one of {CACHE_LAYOUTS}, got {cache!r}", field="cache")
        self.model = model
        self.cache_layout = cache
        self.config = config if config is not None else self.config_class()
        self.vae = vae
        self.schedule = FlowMatchSchedule(self.config.timestep_shift)
        steps = self.config.denoising_steps
        self.timesteps = (
            self.schedule.warp(steps) if self.config.warp_denoising_step else torch.tensor(steps).float()
        )

    # Per loop -----------------------------------------------------------------------------------------------
    @property
    def frames_per_block(self) -> int:
        """Latent frames per block (`num_frame_per_block`): the model config's, unless the loop sets its own."""
        return self.model.config.frames_per_block

    @property
    def min_frames(self) -> int:
        """Latent frames a call must generate at least (after any observed ones)."""
        return self.frames_per_block

    def check_cache(self, num_frames: int) -> None:
        """Loop-specific limits of the cache settings for `num_frames` frames (raise UserError)."""

    def make_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> CachePolicy:
        raise NotImplementedError

    def new_cache(
        self,
        batch: int,
        capacity_frames: int,
        device: torch.device,
        dtype: torch.dtype,
        span_frames: int | None = None,
    ) -> KVCache:
        """KV storage in the pipeline's layout (`cache`) for `make_cache`; `span_frames`: the most frames one call
        attends to, its own included (default: the capacity), which fixes the static layout's key length."""
        config = self.model.config
        if self.cache_layout == "static":
            return StaticKVCache(config, batch, capacity_frames, span_frames=span_frames, device=device,
                                 dtype=dtype)  # fmt: skip
        return KVCache(config, batch, capacity_frames, device=device, dtype=dtype)

    def generate(self, r: Rollout) -> None:
        """Generate every block after the observed ones into `r.output` (calling `r.finished` for each)."""
        raise NotImplementedError

    # Shared -------------------------------------------------------------------------------------------------
    def check_num_frames(self, num_frames: int) -> None:
        """The frame count against the model and this sampler's cache (no prompt needed: callable early)."""
        check_frames(num_frames, self.frames_per_block, self.min_frames, self.title)
        self.check_cache(num_frames)

    def check_inputs(self, prompt_embeds: torch.Tensor, num_frames: int) -> None:
        check_prompt_embeds(self.model, prompt_embeds)
        self.check_num_frames(num_frames)

    @torch.no_grad()
    def __call__(
        self,
        prompt_embeds: torch.Tensor,
        num_frames: int,
        *,
        seed: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
        hook: BlockHook | None = None,
        flowmo: FlowMoConfig = FlowMoConfig(),
        regen_noise: str = "same",
        on_block: BlockCallback | None = None,
        progress: bool = True,
        alter: BlockTransform | None = None,
        switches: Sequence[tuple[int, torch.Tensor]] = (),
        switch_pruning: str = "keep",
    ) -> GenerationOutput:
        """Generate `num_frames` latent frames for `prompt_embeds [B, <= text_len, text_dim]`.

        seed, or noise `[B, F - P, C, H, W]` with a generator for the in-loop draws. prefix (optional): P observed
        first frames, clean latents `[B, P, C, H, W]` (P a multiple of the block); their blocks are committed to
        the cache as they are (no denoising, no draws) and returned unchanged, the last of them is shown to the
        hook as its first block, and generation continues after them. The initial noise covers the frames to
        generate only, as the references draw it for an image start (`[B, F - 1, ...]` after one image frame,
        docs/spec.md#rng-order). regen_noise: "same" (regenerate a pruned block from its first attempt's
        noise) or, where the loop supports it, "fresh". alter: see `BlockTransform` (generated blocks only).
        switches: prompt switches `(first latent frame, prompt_embeds)` in time order, each frame a block
        boundary after the observed frames; switch_pruning: "keep" or "reset" (`Rollout.switch`)."""
        self.check_inputs(prompt_embeds, num_frames)
        if regen_noise not in self.regen_noise_modes:
            raise UserError(
                f"regen_noise={regen_noise!r} is not available for {self.title}; use one of {self.regen_noise_modes}"
            )
        model, block = self.model, self.frames_per_block
        device, dtype = model_device_dtype(model)
        batch = prompt_embeds.shape[0]
        observed = check_prefix(model, prefix, batch, num_frames, block, self.min_frames, self.title)
        check_switches(self, switches, num_frames, observed * block, prompt_embeds)
        # 1. initial noise first (the frames to generate), then the text context and an empty cache
        drawn, generator = prepare_noise(model, batch, num_frames - observed * block, seed, noise, generator)
        noise = (
            torch.cat([drawn.new_zeros(batch, observed * block, *drawn.shape[2:]), drawn], 1)
            if observed
            else drawn
        )
        context = model.encode_context(prompt_embeds.to(device))
        contexts = [(f, model.encode_context(e.to(device))) for f, e in switches]
        output = torch.empty(noise.shape, dtype=dtype, device="cpu")  # kept off the device: any length fits
        r = Rollout(model, self.schedule, self.timesteps.to(device), context, self.make_cache(batch, device, dtype),
                    generator, noise, output, hook or NoHook(), flowmo, self.config.context_noise, block, observed,
                    regen_noise, on_block, progress, alter, contexts, switch_pruning)  # fmt: skip
        # 2. observed blocks, then the loop
        r.commit_observed(prefix)
        self.generate(r)
        frames = self.vae.decode(r.output) if self.vae is not None else None
        return GenerationOutput(r.output, frames, list(r.hook.records), r.losses)


def check_switches(pipe: BlockPipeline, switches, num_frames: int, observed: int, prompt_embeds) -> None:
    if not switches:
        return
    if not pipe.switching:
        raise UserError(f"prompt switching is not available for {pipe.title} (its loop cannot re-cache)")
    frames = [f for f, _ in switches]
    block = pipe.frames_per_block
    if any(f % block or not observed < f < num_frames for f in frames) or frames != sorted(set(frames)):
        raise UserError(f"prompt switches must be increasing block boundaries (multiples of {block}) after the "
                        f"observed frames and before {num_frames}, got {frames}")  # fmt: skip
    for _, embeds in switches:
        if embeds.shape[0] != prompt_embeds.shape[0] or embeds.shape[2:] != prompt_embeds.shape[2:]:
            raise UserError(
                f"a switch's prompt_embeds must be like the first prompt's, got {list(embeds.shape)}"
            )


def check_frames(num_frames: int, block: int, minimum: int, pipeline: str) -> None:
    """Latent-frame count checks common to every loop. There is no upper limit: RoPE positions past the
    precomputed table are computed exactly (`tokentrim.wan.rope.RopeTable`)."""
    if (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, int)
        or num_frames % block
        or num_frames <= 0
    ):
        raise UserError(
            f"`num_frames` must be a positive multiple of {block} for {pipeline}, got {num_frames}",
            field="num_frames",
        )
    if num_frames < minimum:
        raise UserError(
            f"{pipeline} needs at least {minimum} latent frames (one full window), got {num_frames}; "
            f"use `num_frames` {minimum} or more",
            field="num_frames",
        )


def prepare_noise(
    model: CausalWanModel,
    batch: int,
    num_frames: int,
    seed: int | None,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Generator]:
    """The initial noise `[B, F, C, H, W]` (drawn first, docs/spec.md#rng-order) and the generator for the in-loop draws."""
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
    block: int,
    minimum: int,
    pipeline: str,
) -> int:
    """Observed first frames (clean latents `[B, P, C, H, W]`, P a multiple of the block) -> P // block.

    At least `minimum` frames must be left to generate (one block; Rolling Forcing: one full window)."""
    if prefix is None:
        return 0
    cfg = model.config
    shape = (batch, cfg.in_dim, cfg.latent_height, cfg.latent_width)
    if prefix.dim() != 5 or (prefix.shape[0], *prefix.shape[2:]) != shape or prefix.shape[1] % block:
        raise UserError(
            f"the observed first frames must be latents [{batch}, P, {', '.join(map(str, shape[1:]))}] with P a "
            f"multiple of {block}, got {list(prefix.shape)}"
        )
    if num_frames - prefix.shape[1] < minimum:
        raise UserError(
            f"{pipeline} with {prefix.shape[1]} observed frames needs at least {prefix.shape[1] + minimum} latent "
            f"frames in all, got {num_frames}",
            field="num_frames",
        )
    return prefix.shape[1] // block


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
