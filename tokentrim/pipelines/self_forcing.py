"""Self Forcing inference (docs/spec.md#self-forcing-loop): 3-frame blocks, a few denoising steps each, then a
clean pass at t = context_noise that writes the block into the KV cache. TokenTrim decides after the block's final
x0 and before its clean pass."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tokentrim.errors import UserError
from tokentrim.pipelines.common import BlockPipeline, CachePolicy, Rollout, SamplerConfig
from tokentrim.pipelines.request import BlockEvent
from tokentrim.wan.kv_cache import CallPlan, KVCache, Segment
from tokentrim_core.flowmo import applies
from tokentrim_core.options import option


@dataclass(frozen=True)
class SinkCacheConfig(SamplerConfig):
    """The settings of a loop on a sink cache (Self Forcing, Causal Forcing frame-wise, LongLive): its size, its
    pinned first frames, how a pruned block is regenerated and what a prompt switch's re-cache keeps."""

    cache_frames: int = option(21, "KV-cache length in latent frames (`local_attn_size`)", low=1)
    sink_frames: int = option(3, "first frames kept forever once the cache rolls (`sink_size`)", low=0)
    global_sink: bool = option(
        True,
        "a prompt switch's re-cache keeps the first prompt's sink (LongLive's "
        "default), or re-anchors it on the rebuilt frames",
    )
    regen_noise: str = option(
        "same",
        "a pruned block is regenerated from its first attempt's noise, or from fresh noise",
        choices=("same", "fresh"),
    )
    switch_pruning: str = option(
        "keep",
        "a prompt switch's re-cache keeps the positions TokenTrim removed "
        "(masked inside it, removed again after), or rebuilds whole frames",
        choices=("keep", "reset"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sink_frames >= self.cache_frames:
            raise ValueError(f"sink_frames must be in [0, cache_frames), got {self.sink_frames}")


@dataclass(frozen=True)
class SelfForcingConfig(SinkCacheConfig):
    """Sampler settings (`configs/self_forcing_dmd.yaml` of the reference, plus the rolling cache).

    cache_frames 21 = the training length, which for videos of up to 21 frames is exactly the reference's global
    cache; sink_frames 3 = the first block. rolling: evict the oldest non-sink frames when full; False reproduces
    the reference's hard 21-frame limit.
    """

    rolling: bool = option(
        True, "evict the oldest unpinned frames when the cache is full; false: the reference's hard limit"
    )


class SinkCachePolicy(CachePolicy):
    """Self Forcing's cache (docs/spec.md#self-forcing-cache): keys stored after RoPE at their absolute frame; the
    first `sink_frames` committed frames are pinned (never evicted, never pruned); a call attends to every cached
    token plus its own. A writing call puts its rows where the block lives (overwritten by later steps and by the
    clean pass) and attends to one contiguous slice."""

    def __init__(self, cache: KVCache, sink_frames: int, global_sink: bool = True):
        super().__init__(cache)
        self.sink_frames = sink_frames
        self.global_sink = global_sink  # a re-cache keeps the first prompt's sink (LongLive's `global_sink`)

    def plan(
        self, start_frame: int, num_frames: int, *, commit: bool = False, write: bool = True
    ) -> CallPlan:
        row = self.cache.next_row(start_frame, num_frames)
        if not write:  # attend to the cache plus the call's own tensors, write nothing
            assert not commit, "a committing call writes"
            return CallPlan(start_frame, num_frames, (Segment(0, row),) if row else (), append_current=True)
        end = row + num_frames * self.cache.tokens_per_frame
        pin = max(0, min(num_frames, self.sink_frames - len(self.cache.pinned))) if commit else 0
        return CallPlan(start_frame, num_frames, (Segment(0, end),), False, row, commit=commit, pin=pin)

    def recache_plan(self, s: int, keep_pruning: bool) -> tuple[int, CallPlan, dict[int, torch.Tensor]]:
        """LongLive's KV re-cache after a prompt switch before frame s (docs/spec.md#prompt-switches): the newest
        n = min(capacity, s) frames [rs, s) are encoded again at t = context_noise under the new prompt, all of
        them attending to each other (no mask). Which rows are rebuilt:
        - s <= capacity (rs = 0): all n frames from row 0; the sink is re-encoded under the new prompt;
        - s > capacity, global sink: the sink stays (the first prompt's); frames rs + sink .. s - 1 are rebuilt
          after it and attend to it; frames rs .. rs + sink - 1 are queries only (their rows would fall on the
          protected sink, so the reference drops them);
        - s > capacity, no global sink: all n frames from row 0, the first `sink_frames` the new pinned sink
          (written: the reference's zero-sink bug, docs/spec.md#upstream-bugs-avoided, is not reproduced).
        With `keep_pruning`, the positions TokenTrim removed from the rebuilt unpinned frames are masked inside
        the re-cache (attended keys) and returned, to be removed from the rebuilt rows again; a frame that becomes
        the new sink is rebuilt whole (pinned rows are never pruned). Frames the cache had evicted come back
        whole. Updates the bookkeeping; returns (rs, the call's plan, {frame: kept positions})."""
        cache, T = self.cache, self.cache.tokens_per_frame
        n = min(cache.capacity_frames, s)
        rs = s - n
        sink = cache.pinned if rs > 0 and self.global_sink else []
        pin = 0 if sink else min(self.sink_frames, n)
        built = range(rs + len(sink), s)
        pruned = (
            {f.index: f.spatial for f in cache.frames if f.rows < T and not f.pinned} if keep_pruning else {}
        )
        kept = {f: pruned[f] for f in built[pin:] if f in pruned}
        cache.frames = list(sink)  # everything after the sink is rebuilt
        return rs, self._recache_call(rs, n, sink, built, kept, pin), kept

    def _recache_call(self, rs: int, n: int, sink, built: range, kept: dict, pin: int) -> CallPlan:
        """The re-cache's plan: written after the sink, attending to the sink and the rebuilt rows (the kept
        positions only, for frames TokenTrim pruned)."""
        T = self.cache.tokens_per_frame
        base = sum(f.rows for f in sink)
        index = None
        if kept:  # the keep-mask as a key mask inside the re-cache
            rows = [torch.arange(base)] + [
                base + i * T + (kept[f] if f in kept else torch.arange(T)) for i, f in enumerate(built)
            ]
            index = torch.cat(rows)  # host rows; the cache moves them to the device once per call
        reads = (Segment(0, base + len(built) * T, index=index),)
        return CallPlan(rs, n, reads, False, base, commit=True, pin=pin, skip_frames=len(sink))


class SelfForcingPipeline(BlockPipeline):
    title = "Self Forcing"
    config_class = SelfForcingConfig
    switching = True  # prompt switches, with the re-cache of `SinkCachePolicy.recache_plan`

    def check_cache(self, num_frames: int) -> None:
        block, c = self.frames_per_block, self.config
        if c.cache_frames < c.sink_frames + block:
            raise UserError(
                f"self_forcing.cache_frames ({c.cache_frames}) must hold the sink ({c.sink_frames}) and one block"
            )
        if not c.rolling and num_frames > c.cache_frames:
            raise UserError(
                f"{num_frames} latent frames do not fit the {c.cache_frames}-frame global cache; "
                "set self_forcing.rolling=true (rolling cache with sink frames) or use fewer frames"
            )

    def make_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> SinkCachePolicy:
        cache = self.new_cache(batch, self.config.cache_frames, device, dtype)
        return SinkCachePolicy(cache, self.config.sink_frames, self.config.global_sink)

    # What a block is denoised with (a loop built on this one, e.g. Causal Forcing frame-wise, may change them)
    def block_steps(self, r: Rollout, j: int) -> torch.Tensor:
        """The timesteps of block j."""
        return r.steps

    def guided(self, r: Rollout, j: int) -> bool:
        """Whether FlowMo guides block j."""
        return applies(r.flowmo, j)

    def guide(
        self, r: Rollout, x: torch.Tensor, t: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """FlowMo at one step of a block: (the guided latent, its x0)."""
        return r.guide(x, t, start)

    def generate(self, r: Rollout) -> Iterator[BlockEvent]:
        block = r.block
        for j in range(r.observed, r.num_blocks):
            s = j * block
            r.switch(s)  # 0. a prompt switch at this block boundary: the new prompt, then the re-cache
            r.cache.make_room(block)  # 1. evict before the block's first step
            x_init = r.noise[:, s : s + block]
            steps, guided = self.block_steps(r, j), self.guided(r, j)
            # 2. the candidate block, from its noise; the re-noising draws are kept for a regeneration
            x0, draws = self._denoise_block(r, x_init, s, steps, None, guided)

            def regenerate(x_init=x_init, s=s, steps=steps, draws=draws, guided=guided) -> torch.Tensor:
                """The block again on the pruned cache, by the candidate's procedure (FlowMo included): from
                the same noise and draws, or from fresh noise."""
                if self.config.regen_noise == "fresh":
                    return self._denoise_block(r, r.randn(x_init.shape, x_init), s, steps, None, guided)[0]
                return self._denoise_block(r, x_init, s, steps, draws, guided)[0]

            # 3. TokenTrim: accept, or prune the cache and regenerate; the hook has the last word on the block
            x0, _ = r.judge(j, x0, regenerate)
            x0 = r.accepted(j, x0)
            # 4. clean pass: the accepted block enters the cache, and is final
            r.commit(x0, s)
            yield r.finished(j, x0)

    def _denoise_block(
        self,
        r: Rollout,
        x: torch.Tensor,
        start: int,
        steps: torch.Tensor,
        draws: list[torch.Tensor] | None,
        guided: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the step list on one block: x0 = G(x, t_i); x = add_noise(x0, eps_i, t_{i+1}).

        `draws` replays earlier re-noising draws (same-noise regeneration); otherwise they are drawn, in the
        reference order: one `[B, block, C, H, W]` standard-normal draw per step but the last.
        """
        used = []
        shape = x.shape[:2]
        for i, step in enumerate(steps):
            t = step.expand(shape).to(torch.float32)
            if guided and i in r.flowmo.steps:  # FlowMo, whose last evaluation is this step's DiT call
                x, x0 = self.guide(r, x, t, start)
            else:
                x0 = r.predict_x0(x, t, start)
            if i + 1 < len(steps):
                eps = draws[i] if draws is not None else r.randn(x0.shape, x0)
                used.append(eps)
                x = r.schedule.add_noise(x0, eps, steps[i + 1].expand(shape))
        return x0, used
