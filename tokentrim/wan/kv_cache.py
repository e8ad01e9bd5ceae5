"""The temporal self-attention KV cache: storage with token-level removal. It knows no pipeline.

Layout: one preallocated buffer per keys and values, `[layers, B, rows, H, D]`, `rows = capacity_frames * T`
(T = tokens per latent frame). Cached frames occupy consecutive rows in time order; a frame whose tokens were
removed simply occupies fewer rows. All bookkeeping (which frame holds which rows, which spatial positions, which
frames are pinned, which keys are stored without RoPE) is host-side Python, so the per-layer path never
synchronises with the device.

What a model call reads and writes is described once by a `CallPlan` (host-side), which the pipeline's cache
*policy* builds (`tokentrim/pipelines/`: what to attend to, what is pinned, what to evict); every layer then
applies it through the call's `view` (`CacheView.layer(i).attend(...)`), and `finish` records the committed
frames. The named operations:

* append a block: a plan whose `write_row` is `next_row(start, n)` for frames not cached yet, `commit=True`;
* overwrite a cached block in place: the same for frames already cached (their rows are rewritten);
* evict the oldest unpinned frames: `evict_oldest(n)` (pinned sink / anchor frames stay);
* remove tokens by (frames, spatial positions): `remove_positions(positions, frames=None)`;
* view the keys / values a call attends to: what `view(plan).layer(i).attend(...)` returns (planned segments, then
  the call's own).

This is the dynamic layout: the key set of a call is exactly the tokens it attends to, so its length changes from
call to call (as the cache fills, rolls and loses pruned tokens). `tokentrim.wan.static_cache.StaticKVCache` keeps
every shape fixed instead (a validity mask, no data moved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokentrim.wan.config import WanConfig
from tokentrim.wan.rope import apply_rope


def _to_device(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host index tensor on `device`. On CUDA the copy goes through page-locked memory with `non_blocking`, so
    it does not synchronise the stream (a plain copy from pageable memory does); the caching host allocator keeps
    the page-locked block until the copy has run."""
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


@dataclass
class CachedFrame:
    index: int  # absolute latent frame index
    spatial: torch.Tensor  # long [n] (CPU), spatial positions held, ascending
    raw: bool  # keys stored without RoPE (rotated when read)
    pinned: bool  # never evicted, never pruned (unless asked explicitly)
    page: int | None = (
        None  # static layout only: the frame's rows are [page * T, (page + 1) * T) of the buffer
    )

    @property
    def rows(self) -> int:
        return int(self.spatial.numel())


@dataclass(frozen=True)
class Segment:
    start: int  # buffer rows [start, end)
    end: int
    rope_freqs: torch.Tensor | None = None  # rotate the stored (raw) keys by these factors when read
    index: torch.Tensor | None = None  # long [L] on the host: gather these rows instead of [start, end)


@dataclass(frozen=True)
class CallPlan:
    """What one model call over frames [start_frame, start_frame + num_frames) reads and writes.

    reads: cached row segments attended to, in order; then the call's own keys/values if `append_current`.
    write_row: where the call's keys/values are written (None: nothing is written; a differentiable call).
    write_raw: write keys before RoPE. commit: the written rows become cached frames after the call, the first
    `pin` of them pinned. skip_frames: the call's first frames are queries only (their keys/values are neither
    written nor attended: LongLive's re-cache under a global sink). rope_frame: the temporal RoPE position of the
    call's first frame (None: start_frame; LongLive's "infinite" mode rotates by buffer slot).
    """

    start_frame: int
    num_frames: int
    reads: tuple[Segment, ...]
    append_current: bool
    write_row: int | None = None
    write_raw: bool = False
    commit: bool = False
    pin: int = 0
    skip_frames: int = 0
    rope_frame: int | None = None

    def __post_init__(self) -> None:
        assert self.commit <= (self.write_row is not None), "a committing call must write its rows"
        assert 0 <= self.skip_frames < self.num_frames
        assert 0 <= self.pin <= (self.num_frames - self.skip_frames) * self.commit


class KVCache:
    """Per-layer keys/values of committed latent frames, preallocated for `capacity_frames` full frames."""

    def __init__(
        self,
        config: WanConfig,
        batch: int,
        capacity_frames: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if capacity_frames <= 0:
            raise ValueError(f"capacity_frames must be positive, got {capacity_frames}")
        self.tokens_per_frame = config.tokens_per_frame
        self.capacity_frames = capacity_frames
        shape = (
            config.num_layers,
            batch,
            capacity_frames * self.tokens_per_frame,
            config.num_heads,
            config.head_dim,
        )
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.frames: list[CachedFrame] = []

    # Bookkeeping --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.frames = []

    @property
    def length(self) -> int:
        """Rows in use."""
        return sum(f.rows for f in self.frames)

    @property
    def frame_indices(self) -> list[int]:
        return [f.index for f in self.frames]

    @property
    def pinned(self) -> list[CachedFrame]:
        return [f for f in self.frames if f.pinned]

    def row_of(self, slot: int) -> int:
        """First buffer row of the `slot`-th cached frame (== `length` for slot == number of frames)."""
        return sum(f.rows for f in self.frames[:slot])

    def slot_of(self, frame_index: int) -> int | None:
        for slot, f in enumerate(self.frames):
            if f.index == frame_index:
                return slot
        return None

    def positions(self, frame_index: int) -> torch.Tensor:
        """Spatial positions still held for a cached frame (CPU long tensor)."""
        slot = self.slot_of(frame_index)
        if slot is None:
            raise KeyError(f"frame {frame_index} is not cached (cached: {self.frame_indices})")
        return self.frames[slot].spatial.clone()

    def next_row(self, start_frame: int, num_frames: int) -> int:
        """Where a call's frames are written: over their own rows if cached, else after the cached frames."""
        slot = self.slot_of(start_frame)
        if slot is not None:  # overwrite in place (the block's frames are complete and consecutive)
            assert all(f.rows == self.tokens_per_frame for f in self.frames[slot : slot + num_frames])
            return self.row_of(slot)
        assert len(self.frames) + num_frames <= self.capacity_frames, "evict before appending a new block"
        return self.length

    # Named operations ---------------------------------------------------------------------------------------
    def evict_oldest(self, num_new_frames: int) -> list[int]:
        """Evict the oldest unpinned frames until `num_new_frames` more fit; returns the evicted frame indices.

        Pinned frames lead the buffer (they are committed first), so the kept rows shift left over the evicted
        ones and the pinned rows never move."""
        excess = len(self.frames) + num_new_frames - self.capacity_frames
        if excess <= 0:
            return []
        first = len(self.pinned)
        assert all(f.pinned for f in self.frames[:first]), "pinned frames must lead the cache"
        if first + excess > len(self.frames):
            raise ValueError(
                f"cannot fit {num_new_frames} frames: capacity {self.capacity_frames}, {first} pinned frames"
            )
        self._shift(self.row_of(first), self.row_of(first + excess), self.length)
        evicted = self.frames[first : first + excess]
        del self.frames[first : first + excess]
        return [f.index for f in evicted]

    def _shift(self, start: int, mid: int, end: int) -> None:
        """Move rows [mid, end) to `start`, in place: in ascending chunks of `mid - start` rows, so that no chunk
        overlaps its own target and every row is read before it is overwritten. No temporary (a clone of the kept
        rows was 2 GiB per buffer for Self Forcing at 1.3B size)."""
        step = mid - start
        for buf in (self.k, self.v):
            for src in range(mid, end, step):
                n = min(step, end - src)
                buf[:, :, src - step : src - step + n].copy_(buf[:, :, src : src + n])

    def remove_positions(
        self,
        positions: torch.Tensor,
        frames: Sequence[int] | None = None,
        include_pinned: bool = False,
    ) -> int:
        """Remove the tokens at spatial `positions` from the cached `frames` (absolute indices; default every
        cached frame), in every layer and head. Pinned frames are skipped unless `include_pinned`.

        Returns the number of tokens removed per layer. The kept rows stay in time order and are compacted in
        place, in the preallocated buffers (`_compact`). `positions` is best a host tensor (TokenTrim's verdict
        is one): a device tensor costs one device-to-host copy here.
        """
        drop = torch.zeros(self.tokens_per_frame, dtype=torch.bool)
        drop[positions.detach().to("cpu", torch.long)] = True
        chosen = None if frames is None else set(frames)
        if chosen is not None and not chosen <= set(self.frame_indices):
            raise KeyError(f"frames {sorted(chosen - set(self.frame_indices))} are not cached")
        keep_rows, row, removed = [], 0, 0
        for f in self.frames:
            mask = torch.ones(f.rows, dtype=torch.bool)
            if (include_pinned or not f.pinned) and (chosen is None or f.index in chosen):
                mask = ~drop[f.spatial]
            keep_rows.append(torch.arange(row, row + f.rows)[mask])
            row += f.rows
            removed += int((~mask).sum())
            f.spatial = f.spatial[mask]
        if removed == 0:
            return 0
        self._compact(torch.cat(keep_rows))
        return removed

    def _compact(self, index: torch.Tensor) -> None:
        """Move the kept rows `index` (host long `[n]`, ascending) to rows `[0, n)` of both buffers, in place.

        Row i receives row index[i] >= i. Destination rows are written in ascending chunks of one frame's rows,
        each gathered into a temporary first: a chunk's sources all lie at or after its own rows, and every later
        chunk reads rows past them, so nothing a later chunk reads is overwritten. The temporary is one frame per
        layer (1/capacity of the cache) where a single gather would copy the whole cache. Rows before the first
        removed one stay where they are; rows from n on keep their stale contents. The result equals
        `buf[:, :, :n] = buf.index_select(2, index)` bit for bit.
        """
        n = index.numel()
        moved = index != torch.arange(n)
        if not bool(moved.any()):  # host tensors: no device synchronisation
            return
        first = int(moved.int().argmax())
        rows = _to_device(index[first:], self.k.device)
        chunk = self.tokens_per_frame
        for buf in (self.k, self.v):
            for start in range(first, n, chunk):
                stop = min(start + chunk, n)
                buf[:, :, start:stop] = buf.index_select(2, rows[start - first : stop - first])

    # Per-call view ----------------------------------------------------------------------------------------
    def view(self, plan: CallPlan) -> CacheView:
        """What every layer of the call described by `plan` reads and writes (`CacheView.layer(i).attend`)."""
        return DynamicView(self, plan)

    def finish(self, plan: CallPlan) -> None:
        """After all layers ran: record the committed frames (rows rewritten in place are already recorded)."""
        first = plan.start_frame + plan.skip_frames
        if not plan.commit or self.slot_of(first) is not None:
            return
        full = torch.arange(self.tokens_per_frame)
        for i, page in enumerate(self._pages(plan)):
            self.frames.append(CachedFrame(first + i, full.clone(), plan.write_raw, i < plan.pin, page))

    def _pages(self, plan: CallPlan) -> list[int | None]:
        """The pages of the frames a call writes (the dynamic layout has none: rows follow the frames)."""
        return [None] * (plan.num_frames - plan.skip_frames)


class CacheView:
    """One model call's use of the cache, prepared once for all layers (host bookkeeping, device indices).

    `attend(k_buf, v_buf, k, k_raw, v)` writes the call's keys/values into one layer's buffers as planned and
    returns `(keys [B, Lk, H, D], values, mask)`: what the call's queries attend to, `mask` a boolean `[1, Lk]`
    (True = attend) or None (every key)."""

    def __init__(self, cache: KVCache):
        self.cache = cache

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self.cache.k[i], self.cache.v[i], self)

    def attend(self, k_buf, v_buf, k, k_raw, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


@dataclass(frozen=True)
class LayerKV:
    """One layer's key / value buffers `[B, rows, H, D]` and the call's view: what a DiT block receives."""

    k: torch.Tensor
    v: torch.Tensor
    view: CacheView

    def attend(self, k: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor):
        """The call's keys after RoPE `k`, before RoPE `k_raw`, values `v`, each `[B, F*T, H, D]` ->
        (keys, values, mask) to attend to (`CacheView.attend`)."""
        return self.view.attend(self.k, self.v, k, k_raw, v)


class DynamicView(CacheView):
    """The dynamic layout's call: slices of the buffer in plan order, then the call's own keys/values; no mask."""

    def __init__(self, cache: KVCache, plan: CallPlan):
        super().__init__(cache)
        self.plan = plan
        self.skip = plan.skip_frames * cache.tokens_per_frame
        # gather indices to the device once per call (not per layer)
        self.indices = [None if s.index is None else _to_device(s.index, cache.k.device) for s in plan.reads]

    def attend(self, k_buf, v_buf, k, k_raw, v):
        plan = self.plan
        if self.skip:  # queries only for the first frames
            k, k_raw, v = k[:, self.skip :], k_raw[:, self.skip :], v[:, self.skip :]
        if plan.write_row is not None:
            rows = slice(plan.write_row, plan.write_row + k.shape[1])
            k_buf[:, rows] = k_raw if plan.write_raw else k
            v_buf[:, rows] = v
        keys, values = [], []
        for seg, index in zip(plan.reads, self.indices, strict=True):
            if index is None:
                kk, vv = k_buf[:, seg.start : seg.end], v_buf[:, seg.start : seg.end]
            else:
                kk, vv = k_buf.index_select(1, index), v_buf.index_select(1, index)
            keys.append(kk if seg.rope_freqs is None else apply_rope(kk, seg.rope_freqs))
            values.append(vv)
        if plan.append_current:
            keys.append(k)
            values.append(v)
        if len(keys) == 1:
            return keys[0], values[0], None
        return torch.cat(keys, dim=1), torch.cat(values, dim=1), None
