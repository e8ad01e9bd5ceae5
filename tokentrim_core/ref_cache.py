"""TokenTrim's pruning in the reference KV-cache layout: the caches of the Self Forcing, Rolling Forcing, Causal
Forcing and LongLive inference code, and of the tools built on it (docs/integrations.md).

The layout: one dict per transformer layer with `k`, `v` `[B, L, H, D]` (preallocated row buffers),
`global_end_index` (the absolute token index one past the newest token written) and `local_end_index` (one past
the newest buffer row in use), each a 1-element long tensor. With T tokens per latent frame and S sink frames:

* rows [0, min(S·T, local_end)) hold the sink (Self Forcing's / LongLive's `sink_size` frames, Rolling
  Forcing's anchor block, a pinned image frame): never evicted, never pruned;
* rows [S·T, local_end) hold the later cached frames in time order, the newest one ending at the absolute token
  `global_end` (the loop evicts the oldest rows after the sink when it needs room).

`CachePruner` removes TokenTrim's unstable spatial positions from the frames it is told, in every layer, and
keeps the bookkeeping that lets a later removal find each frame's rows: the positions each pruned frame still
holds. Its two modes:

* "remove": the rows are deleted and the rest moved up, `local_end_index` shrinks by the tokens removed and
  `global_end_index` stays (it counts absolute tokens). The loop's next write lands after the kept rows, its
  in-place rewrite of the current block (`end == global_end`) hits the block's own rows, and its eviction rule
  (`evict = new + local_end - L`, rows after the sink) still holds: a pruned cache simply has room for more
  history. For loops whose attention derives positions from row counts (Rolling Forcing's anchor offset,
  LongLive's slot RoPE) use "mask".
* "mask": nothing moves (shapes and indices are static); `keep_mask` gives the rows a call may attend to, rebuilt
  from the indices at each call, so it follows every row the loop shifts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

MODES = ("remove", "mask")


@dataclass
class Pruned:
    """What one call removed (masked): the spatial positions per absolute frame, and the tokens per layer."""

    positions: dict[int, torch.Tensor]  # frame -> long [n] (CPU), ascending
    tokens: int


class CachePruner:
    """TokenTrim's removals from one reference-layout cache (see the module docstring). One per video; it resets
    itself when the loop restarts the cache (`global_end_index` going back).

    frame_tokens: T, spatial tokens per latent frame (grid_h * grid_w); sink_frames: S, the protected leading
    frames; mode: "remove" or "mask".
    """

    def __init__(self, frame_tokens: int, sink_frames: int = 0, mode: str = "remove") -> None:
        if isinstance(frame_tokens, bool) or not isinstance(frame_tokens, int) or frame_tokens < 1:
            raise ValueError(f"frame_tokens must be an int >= 1, got {frame_tokens!r}")
        if isinstance(sink_frames, bool) or not isinstance(sink_frames, int) or sink_frames < 0:
            raise ValueError(f"sink_frames must be an int >= 0, got {sink_frames!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.frame_tokens, self.sink_frames, self.mode = frame_tokens, sink_frames, mode
        self.reset()

    def reset(self) -> None:
        """Forget every removal (a new video)."""
        self.held: dict[int, torch.Tensor] = {}  # frame -> positions it still holds (pruned frames only)
        self._end = 0  # global_end_index at the last call

    # Bookkeeping --------------------------------------------------------------------------------------------
    def _indices(self, kv_cache: Sequence[dict]) -> tuple[int, int, int]:
        """(global_end, local_end, buffer rows), read once for every layer (one host transfer); every layer of a
        reference cache carries the same indices."""
        ends = torch.stack(
            [torch.cat([c["global_end_index"].reshape(1), c["local_end_index"].reshape(1)]) for c in kv_cache]
        ).tolist()
        if any(e != ends[0] for e in ends):
            raise ValueError("the layers' global_end_index / local_end_index differ: not one reference cache")
        (g, lc), rows = ends[0], kv_cache[0]["k"].shape[1]
        if g % self.frame_tokens:
            raise ValueError(
                f"global_end_index {g} is not a whole number of {self.frame_tokens}-token frames"
            )
        if g < self._end:  # the loop restarted the cache (a new video)
            self.held = {}
        self._end = g
        return g, lc, rows

    def sink_rows(self, local_end: int) -> int:
        return min(self.sink_frames * self.frame_tokens, local_end)

    def layout(self, global_end: int, local_end: int) -> list[tuple[int, torch.Tensor]]:
        """The frames after the sink, oldest first, each with the spatial positions its rows hold, in row order
        (rows [S·T, local_end)). A frame the loop evicted in part keeps its last rows."""
        full = torch.arange(self.frame_tokens)
        left = local_end - self.sink_rows(local_end)
        frame, frames = global_end // self.frame_tokens - 1, []
        while left > 0:
            if frame < 0:
                raise ValueError(
                    f"local_end_index {local_end} holds more rows than the frames before global_end_index "
                    f"{global_end}: the cache was changed by something other than its loop and this pruner"
                )
            held = self.held.get(frame, full) if self.mode == "remove" else full
            take = min(held.numel(), left)
            frames.append((frame, held[held.numel() - take :]))
            left, frame = left - take, frame - 1
        frames.reverse()
        if frames:  # frames older than the oldest cached one were evicted
            self.held = {f: p for f, p in self.held.items() if f >= frames[0][0]}
        return frames

    # Operations ---------------------------------------------------------------------------------------------
    def prune(self, kv_cache: Sequence[dict], positions: torch.Tensor, frames: Iterable[int]) -> Pruned:
        """Remove (or mask) the spatial `positions` from the cached `frames` (absolute latent-frame indices) in
        every layer; sink rows, and frames not cached, are left alone. Returns what was removed."""
        positions = torch.as_tensor(positions).detach().to("cpu", torch.long).unique()
        if positions.numel() and not 0 <= int(positions[0]) <= int(positions[-1]) < self.frame_tokens:
            raise ValueError(f"positions must lie in [0, {self.frame_tokens}), got {positions.tolist()}")
        return self._drop(kv_cache, dict.fromkeys(frames, positions))

    def restore(self, kv_cache: Sequence[dict]) -> dict[int, torch.Tensor]:
        """Before a re-cache that rebuilds every cached frame whole (LongLive's prompt switch): "remove" mode
        sets `local_end_index` back to the whole-frame length min(global_end, L) the re-cache's index arithmetic
        expects (the rows in between are stale until the re-cache writes them). Forgets the removals and returns
        them ({frame: positions removed}) for `reapply`."""
        g, lc, rows = self._indices(kv_cache)
        full = torch.arange(self.frame_tokens)
        cached = [f for f, _ in self.layout(g, lc)]
        removed = {f: full[~torch.isin(full, self.held[f])] for f in cached if f in self.held}
        if self.mode == "remove":
            for layer in kv_cache:
                layer["local_end_index"].fill_(min(g, rows))
        self.held = {}
        return removed

    def reapply(self, kv_cache: Sequence[dict], removed: dict[int, torch.Tensor]) -> Pruned:
        """After the re-cache: remove (mask) again the positions `restore` returned, from the frames still cached
        outside the sink."""
        return self._drop(kv_cache, removed)

    def keep_mask(self, kv_cache: Sequence[dict]) -> torch.Tensor:
        """The buffer rows a call may attend to: bool [L] on the cache's device (`row_mask` at the cache's
        current indices)."""
        g, lc, rows = self._indices(kv_cache)
        return self.row_mask(g, lc, rows).to(kv_cache[0]["k"].device)

    def row_mask(self, global_end: int, local_end: int, rows: int) -> torch.Tensor:
        """bool [rows] (CPU): True for the rows in use that are not masked (rows from local_end on are False),
        at the given indices (inside a call, after its write moved them). Sink rows are never masked; in
        "remove" mode every row in use is kept."""
        keep = torch.zeros(rows, dtype=torch.bool)
        keep[:local_end] = True
        if self.mode == "mask":
            row = self.sink_rows(local_end)
            for frame, held in self.layout(global_end, local_end):
                if frame in self.held:
                    keep[row : row + held.numel()] = torch.isin(held, self.held[frame])
                row += held.numel()
        return keep

    def _drop(self, kv_cache: Sequence[dict], drop: dict[int, torch.Tensor]) -> Pruned:
        """Remove (mask) drop[frame] from each cached frame after the sink; compact the rows ("remove")."""
        g, lc, _ = self._indices(kv_cache)
        start = row = self.sink_rows(lc)
        full = torch.arange(self.frame_tokens)
        kept_rows, removed = [], {}
        for frame, rows_hold in self.layout(g, lc):
            current = self.held.get(frame, full)  # positions not removed (masked) so far
            present = rows_hold if self.mode == "remove" else current  # what dropping can still take away
            gone = present[torch.isin(present, drop[frame])] if frame in drop else present[:0]
            if gone.numel():
                removed[frame] = gone
                self.held[frame] = current[~torch.isin(current, gone)]
            kept_rows.append(torch.arange(row, row + rows_hold.numel())[~torch.isin(rows_hold, gone)])
            row += rows_hold.numel()
        tokens = sum(p.numel() for p in removed.values())
        if self.mode == "remove" and tokens:
            self._compact(kv_cache, start, torch.cat(kept_rows))
        return Pruned(removed, tokens)

    @staticmethod
    def _compact(kv_cache: Sequence[dict], start: int, index: torch.Tensor) -> None:
        """Move the kept rows `index` (host long, ascending, all >= start) to rows [start, start + n) of every
        layer's k and v, and set local_end_index to start + n."""
        n = index.numel()
        moved = index != torch.arange(start, start + n)
        first = int(moved.int().argmax()) if bool(moved.any()) else n  # rows before it stay where they are
        rows = index[first:].to(kv_cache[0]["k"].device)
        for layer in kv_cache:
            if first < n:  # each buffer is gathered before it is written: sources and targets may overlap
                for name in ("k", "v"):
                    layer[name][:, start + first : start + n] = layer[name].index_select(1, rows)
            layer["local_end_index"].fill_(start + n)
