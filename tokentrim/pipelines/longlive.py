"""LongLive-1.3B inference (docs/spec.md#longlive): the Self Forcing block loop (3-frame blocks, 4 steps, a clean
pass per block) on a 12-frame cache whose first 3 frames (the first block) are a sink that is never evicted.
Once the cache is full every call attends to the sink, the 6 newest frames and its own 3: [sink | 6 | block].

Two RoPE modes. "absolute" (the released model): keys are stored rotated at their absolute frame. "slot" (the
reference's "infinite" mode, docs/spec.md#infinite-mode): keys are stored without RoPE and every call rotates the
cached keys at their slot in the cache (sink 0-2, then the window's frames in order) and its own queries and keys
at the slots it writes, so temporal positions stay below the cache size however long the video.

Prompt switches re-cache the window under the new prompt (`SinkCachePolicy.recache_plan`,
docs/spec.md#prompt-switches). The weights are the base checkpoint (`generator`) with the LoRA merged
(`tokentrim.wan.lora`; `--lora` or `tokentrim merge-lora`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from tokentrim.errors import UserError
from tokentrim.pipelines.self_forcing import SelfForcingPipeline, SinkCacheConfig, SinkCachePolicy
from tokentrim.wan.kv_cache import CallPlan, KVCache, Segment
from tokentrim.wan.rope import RopeTable
from tokentrim_core.options import option, option_of

ROPE_MODES = ("absolute", "slot")


@dataclass(frozen=True)
class LongLiveConfig(SinkCacheConfig):
    """Sampler settings (`configs/longlive_inference.yaml` of the reference): the sink cache with a 12-frame
    attention window (`local_attn_size`) whose first 3 frames are the sink (`sink_size`); rope "absolute" or
    "slot" (the "infinite" mode)."""

    cache_frames: int = option_of(SinkCacheConfig, "cache_frames", 12)
    rope: str = option(
        "absolute",
        "temporal RoPE positions: absolute frames, or slots in the cache (the infinite mode)",
        choices=ROPE_MODES,
    )


class SlotRopeCachePolicy(SinkCachePolicy):
    """The sink cache with slot RoPE: raw keys, rotated when read at the slot of their frame in the cache; a
    call's own frames sit at the slots after the cached frames it follows (the call's `rope_frame`)."""

    def __init__(self, cache: KVCache, sink_frames: int, global_sink: bool, rope: RopeTable):
        super().__init__(cache, sink_frames, global_sink)
        self.rope = rope

    def _slot_freqs(self, spatial: list[torch.Tensor]) -> torch.Tensor:
        """RoPE factors for rows holding the positions `spatial[i]` of the frame at slot i, in order."""
        frames = torch.cat([torch.full((len(sp),), i, dtype=torch.long) for i, sp in enumerate(spatial)])
        self.rope.ensure(len(spatial))
        device = self.cache.k.device
        return self.rope.token_freqs(frames.to(device), torch.cat(spatial).to(device))

    def plan(
        self, start_frame: int, num_frames: int, *, commit: bool = False, write: bool = True
    ) -> CallPlan:
        plan = super().plan(start_frame, num_frames, commit=commit, write=write)
        cache = self.cache
        slot = cache.slot_of(start_frame)
        slot = len(cache.frames) if slot is None else slot
        spatial = [f.spatial for f in cache.frames[:slot]]
        if write:  # the call's rows are read back from the buffer, at its own slots
            spatial += [torch.arange(cache.tokens_per_frame)] * num_frames
        reads = (Segment(0, plan.reads[0].end, self._slot_freqs(spatial)),) if plan.reads else ()
        return replace(plan, reads=reads, write_raw=True, rope_frame=slot)

    def _recache_call(self, rs: int, n: int, sink, built: range, kept: dict, pin: int) -> CallPlan:
        """The re-cache at slots: the call's frames at slots 0 .. n - 1 (under a kept sink its first frames are
        queries on the sink's slots, its rebuilt frames follow the sink)."""
        plan = super()._recache_call(rs, n, sink, built, kept, pin)
        full = torch.arange(self.cache.tokens_per_frame)
        spatial = [f.spatial for f in sink] + [kept.get(f, full) for f in built]
        reads = (replace(plan.reads[0], rope_freqs=self._slot_freqs(spatial)),)
        return replace(plan, reads=reads, write_raw=True, rope_frame=0)


class LongLivePipeline(SelfForcingPipeline):
    title = "LongLive"
    config_class = LongLiveConfig

    def check_cache(self, num_frames: int) -> None:
        c = self.config
        if c.cache_frames < c.sink_frames + self.frames_per_block:
            raise UserError(
                f"longlive.cache_frames ({c.cache_frames}) must hold the sink ({c.sink_frames}) and one block"
            )

    def make_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> SinkCachePolicy:
        c = self.config
        cache = self.new_cache(batch, c.cache_frames, device, dtype)
        if c.rope == "slot":
            return SlotRopeCachePolicy(cache, c.sink_frames, c.global_sink, self.model.rope)
        return SinkCachePolicy(cache, c.sink_frames, c.global_sink)
