"""The temporal self-attention KV cache, with token-level removal.

Layout: one preallocated buffer per keys and values, `[layers, B, rows, H, D]`, `rows = capacity_frames * T`
(T = tokens per latent frame). Cached frames occupy consecutive rows in time order; a frame whose tokens were
removed simply occupies fewer rows. All bookkeeping (which frame holds which rows, which spatial positions, which
frames are pinned) is host-side Python, so the per-layer path never synchronises with the device.

Two reference conventions (spec §2.5, §2.6):

* ``self_forcing``: keys stored after RoPE at their absolute frame; optional rolling window (capacity) with
  `pinned_frames` sink frames that are never evicted; a call attends to every cached token plus its own.
* ``rolling_forcing``: the first block (the anchor) is stored without RoPE and rotated when read so that it sits
  just before the working frames that are read; a denoising call reads the anchor, at most
  `attention_frames - call - anchor` working frames and itself; the clean (commit) call reads the newest
  `attention_frames` frames including itself, the anchor (at its true position) only while they fit.

A call is described once by a `CallPlan` (host-side), then every layer applies it with `layer_kv`. The named
operations, in those terms:

* append a block: `plan(start, n, commit=True)` for frames not cached yet, `layer_kv` per layer, `finish(plan)`;
* overwrite the block being denoised: the same for frames already cached (their rows are written in place);
* evict the oldest frames, keeping the pinned sink / anchor frames: `make_room(n)`;
* remove tokens by (frames, spatial positions): `remove_positions(positions, frames=None)`;
* the keys / values to attend to: what `layer_kv` returns (cached segments, then the call's own tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokentrim.wan.config import WanConfig
from tokentrim.wan.rope import RopeTable, apply_rope

MODES = ("self_forcing", "rolling_forcing")


@dataclass
class CachedFrame:
    index: int  # absolute latent frame index
    spatial: torch.Tensor  # long [n] (CPU), spatial positions held, ascending
    raw: bool  # keys stored without RoPE (Rolling Forcing anchor)
    pinned: bool  # sink / anchor frame: never evicted, never pruned

    @property
    def rows(self) -> int:
        return int(self.spatial.numel())


@dataclass(frozen=True)
class Segment:
    start: int  # buffer rows [start, end)
    end: int
    rope_freqs: torch.Tensor | None = None  # rotate raw keys by these factors when read


@dataclass(frozen=True)
class CallPlan:
    start_frame: int
    num_frames: int
    reads: tuple[Segment, ...]  # cached rows to attend to, in order
    append_current: bool  # then the call's own keys/values
    write_row: int | None  # where the call's keys/values are written (None: not written)
    write_raw: bool  # write keys before RoPE
    commit: bool  # the written rows become cached frames after the call


class KVCache:
    """Per-layer keys/values of committed latent frames; see the module docstring for the two conventions."""

    def __init__(
        self,
        config: WanConfig,
        batch: int,
        capacity_frames: int,
        *,
        mode: str = "self_forcing",
        pinned_frames: int = 0,
        attention_frames: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if mode not in MODES:
            raise ValueError(f"KVCache mode must be one of {MODES}, got {mode!r}")
        if not 0 <= pinned_frames < capacity_frames:
            raise ValueError(
                f"pinned_frames ({pinned_frames}) must be in [0, capacity_frames={capacity_frames})"
            )
        self.mode = mode
        self.tokens_per_frame = config.tokens_per_frame
        self.capacity_frames = capacity_frames
        self.pinned_frames = pinned_frames
        self.attention_frames = attention_frames or capacity_frames
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
        self._anchor_spatial: tuple[tuple[int, ...], torch.Tensor] | None = None

    # Bookkeeping --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.frames = []
        self._anchor_spatial = None

    @property
    def length(self) -> int:
        """Rows in use."""
        return sum(f.rows for f in self.frames)

    @property
    def frame_indices(self) -> list[int]:
        return [f.index for f in self.frames]

    def _row_of(self, slot: int) -> int:
        return sum(f.rows for f in self.frames[:slot])

    def _slot_of(self, frame_index: int) -> int | None:
        for slot, f in enumerate(self.frames):
            if f.index == frame_index:
                return slot
        return None

    # Named operations ---------------------------------------------------------------------------------------
    def make_room(self, num_new_frames: int) -> list[int]:
        """Evict the oldest unpinned frames until `num_new_frames` more fit; returns the evicted frame indices."""
        excess = len(self.frames) + num_new_frames - self.capacity_frames
        if excess <= 0:
            return []
        first = sum(f.pinned for f in self.frames)
        if first + excess > len(self.frames):
            raise ValueError(
                f"cannot fit {num_new_frames} frames: capacity {self.capacity_frames}, {first} pinned frames"
            )
        start, mid, end = self._row_of(first), self._row_of(first + excess), self.length
        keep = end - mid
        # Shift the kept rows left over the evicted ones (through a copy: source and target overlap).
        self.k[:, :, start : start + keep] = self.k[:, :, mid:end].clone()
        self.v[:, :, start : start + keep] = self.v[:, :, mid:end].clone()
        evicted = self.frames[first : first + excess]
        del self.frames[first : first + excess]
        return [f.index for f in evicted]

    def remove_positions(
        self,
        positions: torch.Tensor,
        frames: Sequence[int] | None = None,
        include_pinned: bool = False,
    ) -> int:
        """Remove the tokens at spatial `positions` from the cached `frames` (absolute indices; default every
        cached frame), in every layer and head. Pinned frames are skipped unless `include_pinned`.

        Returns the number of tokens removed per layer. The kept rows stay in time order and are compacted.
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
        index = torch.cat(keep_rows).to(self.k.device)
        n = index.numel()
        self.k[:, :, :n] = self.k.index_select(2, index)
        self.v[:, :, :n] = self.v.index_select(2, index)
        return removed

    def positions(self, frame_index: int) -> torch.Tensor:
        """Spatial positions still held for a cached frame (CPU long tensor)."""
        slot = self._slot_of(frame_index)
        if slot is None:
            raise KeyError(f"frame {frame_index} is not cached (cached: {self.frame_indices})")
        return self.frames[slot].spatial.clone()

    # Per-call plan ------------------------------------------------------------------------------------------
    def plan(self, start_frame: int, num_frames: int, commit: bool, rope: RopeTable) -> CallPlan:
        """Describe what a model call over frames [start_frame, start_frame + num_frames) reads and writes."""
        if self.mode == "self_forcing":
            return self._plan_self_forcing(start_frame, num_frames, commit)
        return self._plan_rolling_forcing(start_frame, num_frames, commit, rope)

    def _write_row(self, start_frame: int, num_frames: int) -> int:
        slot = self._slot_of(start_frame)
        if slot is not None:  # overwrite a cached block in place (its frames are complete and consecutive)
            assert all(f.rows == self.tokens_per_frame for f in self.frames[slot : slot + num_frames])
            return self._row_of(slot)
        assert len(self.frames) + num_frames <= self.capacity_frames, "call make_room() before a new block"
        return self.length

    def _plan_self_forcing(self, start_frame: int, num_frames: int, commit: bool) -> CallPlan:
        row = self._write_row(start_frame, num_frames)
        if torch.is_grad_enabled() and not commit:
            # Differentiable call (FlowMo): attend to the cache plus the call's own tensors, write nothing.
            reads = (Segment(0, row),) if row else ()
            return CallPlan(start_frame, num_frames, reads, True, None, False, False)
        # The call's rows are written where the block lives, then one contiguous slice is attended to.
        end = row + num_frames * self.tokens_per_frame
        return CallPlan(start_frame, num_frames, (Segment(0, end),), False, row, False, commit)

    def _anchor_segment(self, offset: int, rope: RopeTable) -> Segment:
        """Pinned raw frames rotated to start at absolute frame `offset`."""
        anchor = [f for f in self.frames if f.pinned]
        rows = [f.rows for f in anchor]
        if offset < 0 or offset + len(anchor) > rope.max_frames:
            raise ValueError(f"anchor offset {offset} is outside the RoPE table")
        key = tuple(rows)
        if self._anchor_spatial is None or self._anchor_spatial[0] != key:
            # positions of the anchor's tokens, moved to the device once (the anchor never changes once full)
            self._anchor_spatial = (key, torch.cat([f.spatial for f in anchor]).to(self.k.device))
        device = self.k.device
        if len(set(rows)) == 1:  # the usual case (a complete anchor): no host-to-device copy
            frames = torch.arange(offset, offset + len(anchor), device=device).repeat_interleave(rows[0])
        else:
            frames = (
                torch.arange(offset, offset + len(anchor)).repeat_interleave(torch.tensor(rows)).to(device)
            )
        return Segment(0, sum(rows), rope.token_freqs(frames, self._anchor_spatial[1]))

    def _plan_rolling_forcing(
        self, start_frame: int, num_frames: int, commit: bool, rope: RopeTable
    ) -> CallPlan:
        anchor_frames = sum(f.pinned for f in self.frames)
        if start_frame == 0:
            # A call that starts at frame 0 attends only to itself; committing it stores the raw anchor.
            row = self._write_row(0, num_frames) if commit else None
            return CallPlan(start_frame, num_frames, (), True, row, True, commit)
        if not commit:
            # Denoising pass: anchor + the newest working frames that fit the span + the whole window.
            budget = max(0, self.attention_frames - num_frames - anchor_frames)
            working = len(self.frames) - anchor_frames
            take = min(budget, working)
            reads = [self._anchor_segment(start_frame - take - anchor_frames, rope)] if anchor_frames else []
            if take:
                reads.append(Segment(self._row_of(len(self.frames) - take), self.length))
            return CallPlan(start_frame, num_frames, tuple(reads), True, None, False, False)
        # Clean pass: the newest `attention_frames` frames counting the call itself.
        row = self._write_row(start_frame, num_frames)
        first = max(0, len(self.frames) + num_frames - self.attention_frames)
        reads = []
        if first == 0:
            if anchor_frames:
                reads.append(self._anchor_segment(self.frames[0].index, rope))
            first = anchor_frames
        assert first >= anchor_frames, "the attention span would cut through the anchor block"
        if first < len(self.frames):
            reads.append(Segment(self._row_of(first), self.length))
        return CallPlan(start_frame, num_frames, tuple(reads), True, row, False, True)

    # Per-layer application ----------------------------------------------------------------------------------
    def layer_kv(
        self, layer: int, plan: CallPlan, k: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the call's keys/values as planned and return the keys/values to attend to `[B, Lk, H, D]`."""
        if plan.write_row is not None:
            rows = slice(plan.write_row, plan.write_row + k.shape[1])
            self.k[layer, :, rows] = k_raw if plan.write_raw else k
            self.v[layer, :, rows] = v
        keys, values = [], []
        for seg in plan.reads:
            kk = self.k[layer, :, seg.start : seg.end]
            keys.append(kk if seg.rope_freqs is None else apply_rope(kk, seg.rope_freqs))
            values.append(self.v[layer, :, seg.start : seg.end])
        if plan.append_current:
            keys.append(k)
            values.append(v)
        if len(keys) == 1:
            return keys[0], values[0]
        return torch.cat(keys, dim=1), torch.cat(values, dim=1)

    def finish(self, plan: CallPlan) -> None:
        """After all layers ran: record the committed frames."""
        if not plan.commit:
            return
        slot = self._slot_of(plan.start_frame)
        if slot is not None:  # overwritten in place
            return
        full = torch.arange(self.tokens_per_frame)
        for i in range(plan.num_frames):
            pinned = sum(f.pinned for f in self.frames) < self.pinned_frames and (
                self.mode == "self_forcing" or plan.start_frame == 0
            )
            self.frames.append(CachedFrame(plan.start_frame + i, full.clone(), plan.write_raw, pinned))
