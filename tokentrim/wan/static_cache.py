"""The static-shape KV cache: every call of one kind sees keys and indices of one fixed shape for a whole video.

Layout: the buffers of `KVCache`, `[layers, B, capacity_frames * T, H, D]`, cut into pages of one frame (T rows).
A frame keeps its page from its commit to its eviction. Nothing ever moves: eviction frees pages, TokenTrim's
removal drops positions from the frame's bookkeeping (its rows become invalid), a new frame takes the lowest free
page. The bookkeeping is `KVCache`'s (frames in time order, the spatial positions each holds, pinned, raw), so the
pipelines' cache policies plan a call in the dynamic layout's row numbers, and `StaticView` maps those rows to
pages.

A call gathers the rows it reads, in the plan's order, into a key set of `span_frames * T` rows, its own keys
included (`span_frames`: the most frames any call of the pipeline attends to), padded with masked rows; attention
takes the mask (`[1, Lk]`, True = attend). So the key length, the gather index and the mask have one shape per
call kind (frames per call, whether it writes, appends its own keys, reads raw keys), whatever the cache holds:
`torch.compile` traces one graph per kind for a whole rollout, and a CUDA graph can replay it. The price: masked
rows are computed (the cache's empty pages while it fills, the positions TokenTrim removed), and SDPA with a mask
cannot use the flash kernels.

Against the dynamic cache: the same keys and values in the same order. Keys stored without RoPE are rotated as
read, the rows needing no rotation by exactly 1 + 0i (an exact multiplication). Where no row is padded (a full,
unpruned cache) the attention result is the same bit for bit; with padded rows SDPA's reduction runs over a longer
row, which changes fp32 results in the last bits (docs/benchmarks.md#static-shape-kv-cache).
"""

from __future__ import annotations

import torch

from tokentrim.wan.config import WanConfig
from tokentrim.wan.kv_cache import CacheView, CallPlan, KVCache, _to_device
from tokentrim.wan.rope import apply_rope


class StaticKVCache(KVCache):
    """`KVCache` with pages: fixed shapes per call kind, a validity mask instead of moved rows."""

    def __init__(
        self,
        config: WanConfig,
        batch: int,
        capacity_frames: int,
        *,
        span_frames: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config, batch, capacity_frames, device=device, dtype=dtype)
        self.span_frames = capacity_frames if span_frames is None else span_frames
        if self.span_frames <= 0:
            raise ValueError(f"span_frames must be positive, got {self.span_frames}")

    def _shift(self, start: int, mid: int, end: int) -> None:
        """Eviction frees the evicted frames' pages (they are no longer in `frames`); nothing moves."""

    def _compact(self, index: torch.Tensor) -> None:
        """Removal shrinks the frames' positions; their rows stay where they are, unread."""

    def _pages(self, plan: CallPlan) -> list[int]:
        """The pages a call writes: its frames' own pages if they are cached (overwritten in place), else the
        lowest free pages, in frame order (the same pages from the first write to the commit)."""
        first, n = plan.start_frame + plan.skip_frames, plan.num_frames - plan.skip_frames
        slot = self.slot_of(first)
        if slot is not None:
            return [f.page for f in self.frames[slot : slot + n]]
        used = {f.page for f in self.frames}
        free = [p for p in range(self.capacity_frames) if p not in used]
        assert len(free) >= n, "evict before appending a new block"
        return free[:n]

    def view(self, plan: CallPlan) -> StaticView:
        return StaticView(self, plan)


class StaticView(CacheView):
    """A call on the static cache: host bookkeeping turned into three fixed-shape device tensors, copied once.

    write: long `[W]` buffer rows the call's keys/values go to (None: nothing written); read: long
    `[span * T - A]` the rows gathered, in the plan's order, then padding (A = the call's own rows when it appends
    them); mask: bool `[1, span * T]`; rope: complex128 `[span * T - A, D/2]` factors for the gathered keys when the
    plan rotates any (None otherwise)."""

    def __init__(self, cache: StaticKVCache, plan: CallPlan):
        super().__init__(cache)
        T, device = cache.tokens_per_frame, cache.k.device
        own = (plan.num_frames - plan.skip_frames) * T
        self.skip, self.write_raw, self.append_current = (
            plan.skip_frames * T,
            plan.write_raw,
            plan.append_current,
        )
        # 1. the dynamic layout's rows -> buffer rows: the cached frames in order, then the frames appended now
        rows = [f.page * T + f.spatial for f in cache.frames]
        write = None
        if plan.write_row is not None:
            write = torch.cat([page * T + torch.arange(T) for page in cache._pages(plan)])
            if plan.write_row == cache.length:
                rows.append(write)
        row_map = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        if write is not None:
            assert torch.equal(row_map[plan.write_row : plan.write_row + own], write), "write rows mismatch"
        # 2. the rows read, in plan order, padded to the fixed size
        read = [row_map[s.start : s.end] if s.index is None else row_map[s.index] for s in plan.reads]
        read = torch.cat(read) if read else torch.zeros(0, dtype=torch.long)
        size = cache.span_frames * T - (own if plan.append_current else 0)
        if read.numel() > size:
            raise ValueError(f"a call reads {read.numel() // T} frames of keys, more than span_frames allows "
                             f"({size // T}); raise span_frames")  # fmt: skip
        mask = torch.zeros(size + (own if plan.append_current else 0), dtype=torch.bool)
        mask[: read.numel()] = True
        mask[size:] = True  # the call's own keys, when appended
        pad = size - read.numel()
        read = torch.cat([read, torch.zeros(pad, dtype=torch.long)])
        # 3. RoPE for stored raw keys: the plan's factors, 1 + 0i elsewhere
        self.rope = None
        if any(s.rope_freqs is not None for s in plan.reads):
            half = cache.k.shape[-1] // 2
            ones = lambda n: torch.ones(n, half, dtype=torch.complex128, device=device)
            parts = [ones(s.end - s.start if s.index is None else s.index.numel()) if s.rope_freqs is None
                     else s.rope_freqs for s in plan.reads]  # fmt: skip
            self.rope = torch.cat([*parts, ones(pad)])
        # 4. one host-to-device copy for the three index tensors
        w = 0 if write is None else write.numel()
        packed = _to_device(torch.cat([*([write] if w else []), read, mask.long()]), device)
        self.write = packed[:w] if w else None
        self.read = packed[w : w + size]
        self.mask = packed[w + size :].bool()[None]

    def attend(self, k_buf, v_buf, k, k_raw, v):
        if self.skip:  # queries only for the first frames
            k, k_raw, v = k[:, self.skip :], k_raw[:, self.skip :], v[:, self.skip :]
        if self.write is not None:
            k_buf.index_copy_(1, self.write, k_raw if self.write_raw else k)
            v_buf.index_copy_(1, self.write, v)
        keys, values = k_buf.index_select(1, self.read), v_buf.index_select(1, self.read)
        if self.rope is not None:
            keys = apply_rope(keys, self.rope)
        if self.append_current:
            keys, values = torch.cat([keys, k], dim=1), torch.cat([values, v], dim=1)
        return keys, values, self.mask
