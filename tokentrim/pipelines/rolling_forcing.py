"""Rolling Forcing inference (docs/spec.md#rolling-forcing-loop): a window of K = len(steps) blocks at staggered
noise levels, one denoising pass per window, re-noising of every unfinished block, and a clean pass that commits
the window's oldest block. TokenTrim judges the block being finalised (the oldest, at its last level) after the
window's denoising pass and before the re-noising and the clean pass; a regeneration re-runs the window's
denoising pass on the pruned cache, so every block of the window takes the regenerated x0."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokentrim.errors import UserError
from tokentrim.pipelines.common import BlockPipeline, CachePolicy, Rollout
from tokentrim.wan.kv_cache import CallPlan, KVCache, Segment
from tokentrim.wan.rope import RopeTable
from tokentrim.wan.scheduler import check_sampler_steps
from tokentrim_core.flowmo import applies


@dataclass(frozen=True)
class RollingForcingConfig:
    """Sampler settings (`configs/rolling_forcing_dmd.yaml` of the reference and its hard-coded cache sizes).

    cache_frames: KV buffer in latent frames (24 = anchor block + 7 blocks); attention_frames: the most frames
    any call attends to (21, the training length). The anchor is the first block, never evicted or pruned.
    """

    denoising_steps: tuple[float, ...] = (1000, 800, 600, 400, 200)
    warp_denoising_step: bool = True
    timestep_shift: float = 5.0
    context_noise: float = 0.0
    cache_frames: int = 24
    attention_frames: int = 21

    def __post_init__(self) -> None:
        check_sampler_steps(self.denoising_steps, self.timestep_shift)
        if len(self.denoising_steps) < 2:
            raise ValueError("denoising_steps needs at least 2 levels for a rolling window")
        if self.attention_frames > self.cache_frames:
            raise ValueError(f"attention_frames ({self.attention_frames}) must not exceed cache_frames")


class AnchorCachePolicy(CachePolicy):
    """Rolling Forcing's cache (docs/spec.md#rolling-forcing-cache). The first block (the anchor) is stored
    without RoPE, pinned, and rotated when read so that it sits just before the working frames read. A denoising
    call reads the anchor, at most `attention_frames - call - anchor` working frames and itself, and writes
    nothing (the reference's writes there are always overwritten by the clean pass before anything reads them);
    the clean (commit) call reads the newest `attention_frames` frames including itself, the anchor (at its true
    position) only while they fit. A call starting at frame 0 attends only to itself."""

    def __init__(self, cache: KVCache, rope: RopeTable, anchor_frames: int, attention_frames: int):
        super().__init__(cache)
        self.rope, self.anchor_frames, self.attention_frames = rope, anchor_frames, attention_frames
        self._anchor_spatial: tuple[tuple[int, ...], torch.Tensor] | None = None

    def _anchor_segment(self, offset: int) -> Segment:
        """The pinned raw frames rotated to start at absolute frame `offset`."""
        anchor = self.cache.pinned
        rows = [f.rows for f in anchor]
        assert offset >= 0, f"anchor offset {offset} is negative"
        self.rope.ensure(offset + len(anchor))  # host-side: the device frame indices below are in range
        device = self.cache.k.device
        key = tuple(rows)
        if self._anchor_spatial is None or self._anchor_spatial[0] != key:
            # positions of the anchor's tokens, moved to the device once (the anchor never changes once full)
            self._anchor_spatial = (key, torch.cat([f.spatial for f in anchor]).to(device))
        if len(set(rows)) == 1:  # the usual case (a complete anchor): no host-to-device copy
            frames = torch.arange(offset, offset + len(anchor), device=device).repeat_interleave(rows[0])
        else:
            frames = (
                torch.arange(offset, offset + len(anchor)).repeat_interleave(torch.tensor(rows)).to(device)
            )
        return Segment(0, sum(rows), self.rope.token_freqs(frames, self._anchor_spatial[1]))

    def plan(
        self, start_frame: int, num_frames: int, *, commit: bool = False, write: bool = True
    ) -> CallPlan:
        cache = self.cache
        anchor = len(cache.pinned)
        if start_frame == 0:  # attends only to itself; committing it stores the raw anchor
            row = cache.next_row(0, num_frames) if commit else None
            pin = max(0, min(num_frames, self.anchor_frames - anchor)) if commit else 0
            return CallPlan(start_frame, num_frames, (), True, row, True, commit, pin)
        if not commit:
            # denoising pass: anchor + the newest working frames that fit the span + the whole window
            budget = max(0, self.attention_frames - num_frames - anchor)
            take = min(budget, len(cache.frames) - anchor)
            reads = [self._anchor_segment(start_frame - take - anchor)] if anchor else []
            if take:
                reads.append(Segment(cache.row_of(len(cache.frames) - take), cache.length))
            return CallPlan(start_frame, num_frames, tuple(reads), True)
        # clean pass: the newest `attention_frames` frames counting the call itself
        row = cache.next_row(start_frame, num_frames)
        first = max(0, len(cache.frames) + num_frames - self.attention_frames)
        reads = []
        if first == 0:
            if anchor:
                reads.append(self._anchor_segment(cache.frames[0].index))
            first = anchor
        assert first >= anchor, "the attention span would cut through the anchor block"
        if first < len(cache.frames):
            reads.append(Segment(cache.row_of(first), cache.length))
        return CallPlan(start_frame, num_frames, tuple(reads), True, row, commit=True)


class RollingForcingPipeline(BlockPipeline):
    title = "Rolling Forcing"
    config_class = RollingForcingConfig

    @property
    def window_blocks(self) -> int:
        return len(self.config.denoising_steps)

    @property
    def min_frames(self) -> int:
        """One full window."""
        return self.window_blocks * self.frames_per_block

    def check_cache(self, num_frames: int) -> None:
        block, window = self.frames_per_block, self.min_frames
        if self.config.attention_frames < window + block:
            raise UserError(
                f"rolling_forcing.attention_frames ({self.config.attention_frames}) must hold the anchor block "
                f"and a {window}-frame window: set it to {window + block} or more"
            )

    def make_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> AnchorCachePolicy:
        cache = self.new_cache(batch, self.config.cache_frames, device, dtype, self.config.attention_frames)
        return AnchorCachePolicy(cache, self.model.rope, self.frames_per_block,
                                 self.config.attention_frames)  # fmt: skip

    def generate(self, r: Rollout) -> None:
        block, k, observed, steps = r.block, self.window_blocks, r.observed, r.steps
        batch, device, dtype = r.noise.shape[0], r.noise.device, r.noise.dtype
        noisy = torch.zeros_like(r.noise)  # `noisy_cache`: each unfinished block at its next noise level
        generated = r.num_blocks - observed
        for w in r.progress_bar(range(generated + k - 1), "Rolling Forcing windows"):
            # blocks first..last are in the window; block b sits at level w - (b - observed) (0 = pure noise)
            first, last = observed + max(0, w - k + 1), observed + min(generated - 1, w)
            s, e = first * block, (last + 1) * block
            # 1. input: unfinished blocks from `noisy`, the newest block (while one enters) from the noise
            if e - s == k * block or first == observed:
                x = torch.cat([noisy[:, s : e - block], r.noise[:, e - block : e]], dim=1)
            else:
                x = noisy[:, s:e]
            level_of_first = w - (first - observed)
            t = steps[torch.arange(w - (last - observed), level_of_first + 1, device=device).flip(0)]
            t = t.repeat_interleave(block)[None].expand(batch, -1).contiguous()
            # Head windows commit their oldest block before it is final; without observed blocks that is block 0,
            # overwritten before any call reads it. After observed blocks it would be read as if earlier, so
            # there only final blocks are committed.
            final = level_of_first == k - 1
            commit_now = observed == 0 or final
            if commit_now and s > 0 and r.cache.cache.frame_indices[-1] < s:
                r.cache.make_room(block)  # a new block will be committed at the end of this window
            # 2. one denoising pass; FlowMo first on the blocks it applies to (each at the levels in flowmo.steps),
            #    its last evaluation being this pass
            guided = [range((b - first) * block, (b - first + 1) * block) for b in range(first, last + 1)
                      if applies(r.flowmo, b) and w - (b - observed) in r.flowmo.steps]  # fmt: skip
            if guided:
                x, x0 = r.guide(x, t, s, guided)
            else:
                x0 = r.predict_x0(x, t, s)
            # 3. TokenTrim judges the block being finalised; a regeneration re-runs the window pass in place
            if final:
                replaced = []  # the window's x0 of each attempt a regeneration replaces

                def regenerate(x0=x0, x=x, t=t, s=s, replaced=replaced) -> torch.Tensor:
                    replaced.append(x0.clone())
                    x0.copy_(r.predict_x0(x, t, s))
                    return x0[:, :block]

                _, kept = r.judge(first, x0[:, :block], regenerate)
                if kept < len(replaced):  # an earlier attempt is kept: the whole window takes it back
                    x0.copy_(replaced[kept])
                x0[:, :block] = r.accepted(s, x0[:, :block])
            # 4. re-noise every unfinished block to its next level; one full-window draw per block
            for b in range(first, last + 1):
                level = w - (b - observed)
                if level == k - 1:
                    continue
                eps = torch.randn(x0.shape, generator=r.generator, device=device, dtype=dtype)
                renoised = r.schedule.add_noise(x0, eps, steps[level + 1].expand(x0.shape[:2]))
                noisy[:, b * block : (b + 1) * block] = renoised[
                    :, (b - first) * block : (b - first + 1) * block
                ]
            # 5. clean pass: the window's oldest block enters the cache
            if commit_now:
                r.commit(x0[:, :block], s)
            if final:
                r.finished(s, x0[:, :block])
