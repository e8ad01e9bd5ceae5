"""What every autoregressive loop shares.

* `BlockPipeline`: a loaded loop (model, sampler settings, optional VAE). `stream(request)` checks the `Request`,
  sets one generation up (initial noise, text context, empty cache, observed blocks) and yields a `BlockEvent`
  each time frames become final; `__call__(request)` runs a stream to its end. Progress bars, timing, display
  and cancellation belong to the reader: it stops reading and closes the stream (`close()` runs the clean-up). A
  loop file subclasses `BlockPipeline`, names its cache policy (`make_cache`) and writes only its loop
  (`generate`, a generator of finished blocks).
* `SamplerConfig`: the sampler settings every loop has; a loop's config subclasses it.
* `Rollout`: one generation in progress (context, cache policy, generator, noise, output, hook), with the steps
  every loop uses: one denoising call, the clean commit pass, FlowMo guidance of one step, the hook's decision,
  a prompt switch, and a finished block.
* `CachePolicy`: what a loop's calls read from and write to the `KVCache` storage, what is pinned, what is
  evicted. Each loop's policy lives beside its loop.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from tokentrim.errors import UserError
from tokentrim.pipelines.request import BlockEvent, GenerationOutput, Request, Start, check_frames
from tokentrim.wan.config import WanConfig
from tokentrim.wan.kv_cache import CallPlan, KVCache
from tokentrim.wan.model import CausalWanModel, ContextCache
from tokentrim.wan.scheduler import FlowMatchSchedule, check_sampler_steps
from tokentrim.wan.static_cache import StaticKVCache
from tokentrim_core.flowmo import FlowMoConfig, flowmo_guidance
from tokentrim_core.hook import BlockHook, BlockRecord, Verdict
from tokentrim_core.options import check_options, option
from tokentrim_core.trim import TokenTrim

# The KV cache's layouts: "dynamic" (`KVCache`: a call's key set is exactly what it attends to, compacted in place)
# or "static" (`StaticKVCache`: fixed shapes per call kind and a mask; for torch.compile without recompiles and CUDA
# graphs). Both give the same keys; docs/benchmarks.md#static-shape-kv-cache compares them.
CACHE_LAYOUTS = ("dynamic", "static")


@dataclass(frozen=True)
class SamplerConfig:
    """The sampler settings every loop has (docs/spec.md#flow-matching-schedule); a loop's config subclasses it and adds its own (its
    cache, how it regenerates). The defaults are Self Forcing's (`configs/self_forcing_dmd.yaml` of the reference):
    steps [1000, 750, 500, 250], warped to [1000, 937.5, 833.33, 625] by the shift-5 table."""

    denoising_steps: tuple[float, ...] = (1000, 750, 500, 250)
    warp_denoising_step: bool = option(True, "map the steps onto the shifted schedule's table")
    timestep_shift: float = option(5.0, "the flow-matching schedule's shift", low=0.0, low_open=True)
    context_noise: float = option(
        0.0, "timestep of the clean pass that writes a block into the cache", low=0.0, high=1000.0
    )
    cache: str = option(
        "dynamic",
        "KV-cache layout: exact key sets (dynamic) or fixed shapes and a mask (static: one compiled graph per "
        "call kind with --compile, the layout for CUDA graphs)",
        choices=CACHE_LAYOUTS,
        flag="--cache",
    )

    def __post_init__(self) -> None:
        check_options(self)
        check_sampler_steps(self.denoising_steps, self.timestep_shift)


class NoHook:
    """The plain reference loop: every block accepted as it is, nothing recorded."""

    @property
    def records(self) -> list[BlockRecord]:
        return []

    def propose(self, block: int, frames: range, x0: torch.Tensor) -> Verdict:
        return Verdict(False)

    def regenerated(self, block: int, x0: torch.Tensor, tokens_removed: int, regenerations: int) -> Verdict:
        return Verdict(False)

    def accepted(self, block: int, x0: torch.Tensor) -> torch.Tensor:
        return x0

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


def own_key_mask(
    plan: CallPlan, frames: int, tokens_per_frame: int, exclude: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Boolean attention mask `[Lq, Lk]` (True = attend) of a call that appends its own keys after the cached
    segments it reads: the call's own keys at spatial positions `exclude` (in every one of its frames) are masked
    for every query; the cached keys stay. Lq = frames * tokens_per_frame."""
    assert plan.append_current and not plan.skip_frames, (
        "own keys are masked in calls that attend to themselves"
    )
    cached = sum(seg.end - seg.start if seg.index is None else seg.index.numel() for seg in plan.reads)
    own = torch.ones(frames, tokens_per_frame, dtype=torch.bool, device=device)
    own[:, exclude.to(device)] = False
    lq = frames * tokens_per_frame
    keys = torch.cat([torch.ones(cached, dtype=torch.bool, device=device), own.flatten()])
    return keys.expand(lq, -1)


def model_device_dtype(model: CausalWanModel) -> tuple[torch.device, torch.dtype]:
    weight = model.patch_embedding.weight
    return weight.device, weight.dtype


@dataclass
class Rollout:
    """One generation in progress. Latents are `[B, F, C, H, W]`; `t` tensors are `[B, F]` float32."""

    pipe: BlockPipeline
    flowmo: FlowMoConfig
    hook: BlockHook
    context: ContextCache  # the current prompt's cross-attention cache (a prompt switch replaces it)
    cache: CachePolicy
    generator: torch.Generator
    steps: torch.Tensor  # the sampler's timesteps, on the device
    noise: torch.Tensor  # the initial noise by absolute frame (observed rows are zeros, never read)
    output: torch.Tensor  # final latents on the CPU, filled as blocks finish
    observed: int  # observed (start) blocks, committed before the loop
    # (first frame, its prompt's context) of the prompt switches still to come
    switches: list[tuple[int, ContextCache]] = field(default_factory=list)
    # FlowMo: per guidance call, the loss per iteration
    losses: list[list[float]] = field(default_factory=list)
    handed_out: tuple[int, int] = (0, 0)  # records and losses already in events
    # the positions of the latest prune (what a regeneration may also mask)
    pruned: torch.Tensor | None = None

    @property
    def model(self) -> CausalWanModel:
        return self.pipe.model

    @property
    def schedule(self) -> FlowMatchSchedule:
        return self.pipe.schedule

    @property
    def block(self) -> int:
        """Latent frames per block."""
        return self.pipe.frames_per_block

    @property
    def context_noise(self) -> float:
        return self.pipe.config.context_noise

    @property
    def num_blocks(self) -> int:
        return self.output.shape[1] // self.block

    def randn(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """Standard-normal draws from the run's generator, on its device, as `like`'s dtype and device."""
        out = torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=like.dtype)
        return out.to(like.device)

    # Model calls --------------------------------------------------------------------------------------------
    def predict_x0(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        start: int,
        write: bool = True,
        exclude: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One DiT call on a noisy block or window (no cache commit), converted to x0. `exclude`: spatial positions
        whose keys in the call's own frames no query attends to (the cached keys are the cache's business)."""
        plan = self.cache.plan(start, x.shape[1], write=write)
        mask = None if exclude is None else own_key_mask(plan, x.shape[1], self.cache.cache.tokens_per_frame,
                                                          exclude, x.device)  # fmt: skip
        flow = self.model(
            x, t, self.context, cache=self.cache.cache, plan=plan, start_frame=start, attn_mask=mask
        )
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
                guided = flowmo_guidance(
                    x,
                    x0_of,
                    self.flowmo,
                    cfg.patch_size[1:],
                    None if frames == every else frames,
                    None if scored == every else scored,
                )
                x, x0 = guided.latent, guided.x0[:, lead:]
                self.losses.append(guided.losses)
        finally:
            self.model.gradient_checkpointing = before
        return x, x0

    # Blocks -------------------------------------------------------------------------------------------------
    def judge(
        self, block: int, x0: torch.Tensor, regenerate: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        """Ask the hook about a candidate block; while it says prune, prune the cache and regenerate
        (`regenerate()`; the positions just pruned are `self.pruned`). Returns the attempt the hook keeps and its
        index (0 = the candidate, i = the i-th regeneration)."""
        s = block * self.block
        verdict = self.hook.propose(block, range(s, s + self.block), x0)
        attempts = [x0]
        while verdict.prune:
            removed, self.pruned = self.cache.prune(verdict.positions), verdict.positions
            attempts.append(regenerate())
            verdict = self.hook.regenerated(block, attempts[-1], removed, len(attempts) - 1)
        kept = len(attempts) - 1 if verdict.keep is None else verdict.keep
        return attempts[kept], kept

    def accepted(self, block: int, x0: torch.Tensor) -> torch.Tensor:
        """The kept attempt of generated block `block`: the latents to commit and output (the hook's say)."""
        return self.hook.accepted(block, x0)

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
        rs, plan, kept = self.cache.recache_plan(start, self.pipe.config.switch_pruning == "keep")
        x0 = self.output[:, rs:start].to(self.noise.device)
        t = torch.full(x0.shape[:2], self.context_noise, device=x0.device, dtype=torch.float32)
        self.model(x0, t, self.context, cache=self.cache.cache, plan=plan, start_frame=rs)
        every = torch.arange(self.cache.cache.tokens_per_frame)
        for frame, positions in kept.items():  # the removed positions leave the rebuilt rows again
            self.cache.cache.remove_positions(every[~torch.isin(every, positions)], frames=[frame])

    def finished(self, block: int, x0: torch.Tensor) -> BlockEvent:
        """Frames of block `block` (x0 `[B, f, C, H, W]`, f frames from the block's first) are final: into the
        output; the event that hands them out, with the hook's record of the block and FlowMo's new losses."""
        s = block * self.block
        self.output[:, s : s + x0.shape[1]] = x0
        records, (seen, guided) = self.hook.records, self.handed_out
        record = next((r for r in reversed(records[seen:]) if r.block == block), None)
        losses, self.handed_out = tuple(self.losses[guided:]), (len(records), len(self.losses))
        frames = range(s, s + x0.shape[1])
        return BlockEvent(
            block, frames, self.output[:, s : frames.stop], record, block < self.observed, losses
        )

    def denoised(self, block: int, level: int, x0: torch.Tensor) -> torch.Tensor:
        """An unfinished block's x0 `[B, f, C, H, W]` after a denoising pass at `level`, before it is re-noised
        (loops that refine a block over several passes: Rolling Forcing's window). The latents to carry on with:
        x0 itself unless the hook has a `denoised(block, level, x0)` method that changes them (an experiment's
        hook point; BlockHook does not require it, TokenTrim has none)."""
        hook = getattr(self.hook, "denoised", None)
        return x0 if hook is None else hook(block, level, x0)

    def commit_observed(self, prefix: torch.Tensor | None) -> Iterator[BlockEvent]:
        """The observed blocks 0 .. observed-1, in order: room in the cache, the clean pass, the output.

        The last one is shown to the hook (its latent summary becomes the reference of the first generated
        block); observed blocks are never judged for pruning."""
        device, dtype = self.noise.device, self.output.dtype
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
            yield self.finished(b, x0)

    def release(self) -> None:
        """Free the cache and the context (the run is over, or its reader stopped)."""
        self.cache = self.context = None
        self.switches.clear()


class BlockPipeline:
    """The skeleton shared by every block-autoregressive loop; subclasses set the class attributes and write
    `make_cache` and `generate`. The sampler config is a `SamplerConfig`."""

    title: ClassVar[str] = "pipeline"  # in messages
    config_class: ClassVar[type[SamplerConfig]] = SamplerConfig
    switching: ClassVar[bool] = False  # whether the loop switches prompts (its policy can re-cache)

    def __init__(self, model: CausalWanModel, config: Any = None, vae=None, *, cache: str | None = None):
        """cache: the KV-cache layout instead of the config's (`SamplerConfig.cache`)."""
        self.model = model
        self.config = config if config is not None else self.config_class()
        if cache is not None:
            if cache not in CACHE_LAYOUTS:
                raise UserError(f"`cache` must be one of {CACHE_LAYOUTS}, got {cache!r}", field="cache")
            self.config = dataclasses.replace(self.config, cache=cache)
        self.vae = vae  # decodes latents block by block when a request asks (`streaming()`)
        self.schedule = FlowMatchSchedule(self.config.timestep_shift)
        self.timesteps = self.warp(self.config.denoising_steps)

    def warp(self, steps: Sequence[float]) -> torch.Tensor:
        """A step list as the sampler's timesteps (warped onto the schedule's table when the config says so)."""
        return self.schedule.warp(steps) if self.config.warp_denoising_step else torch.tensor(steps).float()

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
        """KV storage in the config's layout (`cache`) for `make_cache`; `span_frames`: the most frames one call
        attends to, its own included (default: the capacity), which fixes the static layout's key length."""
        config = self.model.config
        if self.config.cache == "static":
            return StaticKVCache(
                config, batch, capacity_frames, span_frames=span_frames, device=device, dtype=dtype
            )
        return KVCache(config, batch, capacity_frames, device=device, dtype=dtype)

    def generate(self, r: Rollout) -> Iterator[BlockEvent]:
        """Generate every block after the observed ones, yielding `r.finished(...)` as frames become final."""
        raise NotImplementedError

    # Shared -------------------------------------------------------------------------------------------------
    def check_num_frames(self, num_frames: int) -> None:
        """The frame count against the model and this sampler's cache (no prompt needed: callable early)."""
        check_frames(num_frames, self.frames_per_block, self.min_frames, self.title)
        self.check_cache(num_frames)

    @torch.no_grad()
    def stream(self, request: Request) -> Iterator[BlockEvent]:
        """Generate the video `request` asks for, yielding a `BlockEvent` as each block becomes final (observed
        blocks first). Stop reading to stop the run; `close()` (or the end) frees its cache."""
        request.check(self)
        if request.decode and self.vae is None:
            raise UserError("`decode` needs a pipeline with a VAE (`vae=`); `tokentrim.load(...)` gives one")
        r, prefix = self._start(request)
        decoder = self.vae.streaming() if request.decode else None
        clock = time.perf_counter()
        try:
            for event in itertools.chain(r.commit_observed(prefix), self.generate(r)):
                loop_s = time.perf_counter() - clock
                if decoder is not None:
                    decoded = decoder.decode(event.latents.to(getattr(self.vae, "device", "cpu"))).cpu()
                    event = dataclasses.replace(
                        event, decoded=decoded, decode_s=time.perf_counter() - clock - loop_s
                    )
                yield dataclasses.replace(event, loop_s=loop_s)
                clock = time.perf_counter()
        finally:
            r.release()

    def __call__(self, request: Request) -> GenerationOutput:
        """The whole video of `request` (`stream` run to its end); decoded frames when it asks for them."""
        return GenerationOutput.collect(self.stream(request), frames=request.decode)

    def _start(self, request: Request) -> tuple[Rollout, torch.Tensor | None]:
        """1. The initial noise first (the frames to generate), then the text contexts, an empty cache and the
        hook: the rollout, and the observed frames."""
        embeds, prefix = request.prompt, request.start
        if (
            not isinstance(embeds, torch.Tensor)
            or isinstance(prefix, Start)
            or any(not isinstance(p, torch.Tensor) for _, p in request.switches)
        ):
            raise UserError(
                "a loop takes prompt embeddings and latents: encode the text prompts and the start "
                "first (pipelines from `tokentrim.load(...)` do)"
            )
        model, block = self.model, self.frames_per_block
        device, dtype = model_device_dtype(model)
        batch, observed = embeds.shape[0], request.observed_frames
        shape = (batch, request.latent_frames - observed, *self.latent_shape)
        generator = request.generator
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(request.seed)
        drawn = request.noise
        if drawn is None:
            drawn = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
        drawn = drawn.to(device=device, dtype=dtype)
        noise = torch.cat([drawn.new_zeros(batch, observed, *shape[2:]), drawn], 1) if observed else drawn
        if request.hook is not None:
            hook = request.hook
        elif request.tokentrim is not None:
            hook = TokenTrim(request.tokentrim, model.config.patch_size[1:])
        else:
            hook = NoHook()
        r = Rollout(
            pipe=self,
            flowmo=request.flowmo,
            hook=hook,
            context=model.encode_context(embeds.to(device)),
            cache=self.make_cache(batch, device, dtype),
            generator=generator,
            steps=self.timesteps.to(device),
            noise=noise,
            output=torch.empty(noise.shape, dtype=dtype, device="cpu"),  # off the device: any length
            observed=observed // block,
            switches=[(f, model.encode_context(e.to(device))) for f, e in request.switches],
        )
        return r, prefix

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of a latent frame."""
        cfg = self.model.config
        return cfg.in_dim, cfg.latent_height, cfg.latent_width
