"""A stand-in for the reference inference code's temporal self-attention cache, for tests.

The reference loops (Self Forcing, Rolling Forcing, Causal Forcing, LongLive) keep their cache in the layout of
`tokentrim_core.ref_cache` and move it with index arithmetic inside each layer's attention; docs/integrations.md
restates that arithmetic, and `ReferenceAttention` implements it from there:

* "self_forcing": a call of n tokens at absolute token `start` ends at `end = start + n`; with a rolling window
  (`local_frames` != -1), when `end > global_end` and `n + local_end > L`, the `evict = n + local_end - L` oldest
  rows after the sink go (the rest shift up); the call's rows are `[new_end - n, new_end)` with
  `new_end = local_end + (end - global_end) - evict`; it attends to rows `[max(0, new_end - L), new_end)`.
* "rolling_forcing": only a call's first block is written (`cache_end = start + block`), un-rotated while it is
  the first block of the video (the anchor); eviction as above, keyed on `new = cache_end - global_end > 0`,
  indices updated only then; three attention modes: a call at frame 0 attends to itself; the clean pass
  (`updating_cache`) to rows `[max(0, new_end - A), new_end)` (the anchor rotated at frame 0 when included); a
  denoising pass to the anchor rotated to sit just before the working rows `[max(anchor, ls - W), ls)`
  (`W = A - n - anchor`), then the working rows, then itself.
* "longlive": Self Forcing's eviction; a recompute (`end <= global_end`, `start > 0`) never writes the sink rows
  (unless `sink_recache`, LongLive's `sink_recache_after_switch`) and leaves the indices; keys are the sink rows
  and the newest `L - sink` rows.

With a `CachePruner` in "mask" mode, the rows it masks are left out of every read (gathered out), which is what a
boolean key mask does. This project's DiT runs on the stand-in as its `cache` (`view(call).layer(i).attend`, i.e. `layer_kv` per layer, `finish`
per call), so the project's loops run over a reference-layout cache through `ReferencePolicy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tokentrim.pipelines.common import CachePolicy
from tokentrim.wan.config import WanConfig
from tokentrim.wan.rope import RopeTable, apply_rope
from tokentrim_core.ref_cache import CachePruner


def reference_cache(config: WanConfig, batch: int, frames: int, dtype=torch.float32) -> list[dict]:
    """An empty reference-layout cache of `frames` latent frames: one dict per layer."""
    shape = (batch, frames * config.tokens_per_frame, config.num_heads, config.head_dim)
    return [{"k": torch.zeros(shape, dtype=dtype), "v": torch.zeros(shape, dtype=dtype),
             "global_end_index": torch.zeros(1, dtype=torch.long),
             "local_end_index": torch.zeros(1, dtype=torch.long)} for _ in range(config.num_layers)]  # fmt: skip


@dataclass(frozen=True)
class Call:
    """One model call: its frames, and the reference's flags."""

    start_frame: int
    num_frames: int
    updating_cache: bool = False  # Rolling Forcing's clean pass
    sink_recache: bool = False  # LongLive's re-cache without the global sink
    rope_frame: int | None = None  # (read by the model: absolute RoPE)


class ReferenceAttention:
    """The per-layer cache arithmetic of one reference loop over `kv` (see the module docstring)."""

    def __init__(
        self,
        kv: list[dict],
        rule: str,
        frame_tokens: int,
        *,
        sink_frames: int = 0,
        local_frames: int = -1,
        attention_frames: int | None = None,
        block_frames: int = 3,
        rope: RopeTable | None = None,
        pruner: CachePruner | None = None,
    ):
        assert rule in ("self_forcing", "rolling_forcing", "longlive")
        self.kv, self.rule, self.T = kv, rule, frame_tokens
        self.rows = kv[0]["k"].shape[1]
        self.sink_rows = (block_frames if rule == "rolling_forcing" else sink_frames) * frame_tokens
        self.local_frames, self.block_frames, self.rope, self.pruner = (
            local_frames,
            block_frames,
            rope,
            pruner,
        )
        self.span = self.rows if attention_frames is None else attention_frames * frame_tokens
        self.attended: list[int] = []  # keys each call attended to (layer 0)

    # What the project's DiT and loops read ------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return self.T

    @property
    def frame_indices(self) -> list[int]:
        g, lc = self.ends(self.kv[0])
        pruner = self.pruner or CachePruner(self.T, self.sink_rows // self.T)
        return list(range(min(self.sink_rows, lc) // self.T)) + [f for f, _ in pruner.layout(g, lc)]

    def finish(self, call: Call) -> None:
        """The reference updates each layer's indices inside the layer: nothing is left for the end."""

    def layer_kv(self, layer: int, call: Call, k, k_raw, v) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = getattr(self, "_" + self.rule)(self.kv[layer], call, k, k_raw, v)
        if layer == 0:
            self.attended.append(keys.shape[1])
        return keys, values

    def view(self, call: Call) -> ReferenceView:
        """What the DiT asks a cache for once per call (`KVCache.view`): one layer at a time."""
        return ReferenceView(self, call)

    # Shared steps -------------------------------------------------------------------------------------------
    @staticmethod
    def ends(c: dict) -> tuple[int, int]:
        return int(c["global_end_index"]), int(c["local_end_index"])

    def _evict(self, c: dict, evict: int, local_end: int) -> None:
        """Drop `evict` rows after the sink; the kept rows shift up (through a copy: the ranges overlap)."""
        s, keep = self.sink_rows, local_end - evict - self.sink_rows
        for name in ("k", "v"):
            c[name][:, s : s + keep] = c[name][:, s + evict : s + evict + keep].clone()

    def _read(self, c: dict, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [start, stop), less the rows a mask-mode pruner masks (at this layer's current indices)."""
        k, v = c["k"][:, start:stop], c["v"][:, start:stop]
        if self.pruner is not None and self.pruner.mode == "mask":
            g, lc = self.ends(c)
            keep = self.pruner.row_mask(g, lc, self.rows)[start:stop]
            if not bool(keep.all()):
                index = keep.nonzero().squeeze(1).to(k.device)
                k, v = k.index_select(1, index), v.index_select(1, index)
        return k, v

    # The three rules ----------------------------------------------------------------------------------------
    def _self_forcing(self, c, call, k, k_raw, v):
        n = k.shape[1]
        end = call.start_frame * self.T + n
        g, lc = self.ends(c)
        evict = 0
        if self.local_frames != -1 and end > g and n + lc > self.rows:
            evict = n + lc - self.rows
            self._evict(c, evict, lc)
        new_end = lc + (end - g) - evict
        assert n <= new_end <= self.rows, "the write falls outside the buffer (the reference's cache limit)"
        c["k"][:, new_end - n : new_end], c["v"][:, new_end - n : new_end] = k, v
        c["global_end_index"].fill_(end)
        c["local_end_index"].fill_(new_end)
        return self._read(c, max(0, new_end - self.span), new_end)

    def _rolling_forcing(self, c, call, k, k_raw, v):
        n, block, anchor = k.shape[1], self.block_frames * self.T, self.sink_rows
        start = call.start_frame * self.T
        g, lc = self.ends(c)
        new = start + block - g
        evict = 0
        if new > 0 and new + lc > self.rows:
            evict = new + lc - self.rows
            self._evict(c, evict, lc)
        new_end = lc + new - evict
        ls = new_end - block
        c["v"][:, ls:new_end] = v[:, :block]
        c["k"][:, ls:new_end] = (k_raw if ls == 0 else k)[:, :block]
        if new > 0:
            c["global_end_index"].fill_(start + block)
            c["local_end_index"].fill_(new_end)
        if ls == 0:  # the call starts the video: attends to itself
            return k, v
        if call.updating_cache:
            a = max(0, new_end - self.span)
            keys, values = self._read(c, a, new_end)
            if a == 0:  # the raw anchor rotated at its true position
                rotated = apply_rope(
                    c["k"][:, :anchor], self.rope.grid_freqs(0, self.block_frames, self.T, k.device)
                )
                keys = torch.cat([rotated, keys[:, anchor:]], dim=1)
            return keys, values
        budget = self.span - n - anchor
        lo = max(anchor, ls - budget)
        offset = call.start_frame - (ls - lo) // self.T - self.block_frames
        rotated = apply_rope(
            c["k"][:, :anchor], self.rope.grid_freqs(offset, self.block_frames, self.T, k.device)
        )
        wk, wv = self._read(c, lo, ls)
        keys = torch.cat([rotated, wk, k], dim=1)
        values = torch.cat([c["v"][:, :anchor], wv, v], dim=1)
        return keys, values

    def _longlive(self, c, call, k, k_raw, v):
        n, sink = k.shape[1], self.sink_rows
        start = call.start_frame * self.T
        end = start + n
        g, lc = self.ends(c)
        recompute = end <= g and start > 0
        evict = 0
        if end > g and n + lc > self.rows:
            evict = n + lc - self.rows
            self._evict(c, evict, lc)
        new_end = lc + (end - g) - evict
        ls = new_end - n
        assert ls >= 0, f"the call's rows start at {ls}: local_end_index does not match the cached frames"
        ws = max(ls, sink) if recompute and not (call.sink_recache and not evict) else ls
        c["k"][:, ws:new_end], c["v"][:, ws:new_end] = k[:, ws - ls :], v[:, ws - ls :]
        if not recompute:
            c["global_end_index"].fill_(end)
            c["local_end_index"].fill_(new_end)
        lo = max(sink, new_end - (self.rows - sink)) if sink else max(0, new_end - self.rows)
        sk, sv = c["k"][:, :sink], c["v"][:, :sink]
        wk, wv = self._read(c, lo, new_end)
        return torch.cat([sk, wk], dim=1), torch.cat([sv, wv], dim=1)


class ReferencePolicy(CachePolicy):
    """Runs this project's Self Forcing / Rolling Forcing loops on a `ReferenceAttention`: the reference evicts
    inside attention (so `make_room` does nothing), and TokenTrim's removal is the `CachePruner`'s, from every
    cached frame before the block being judged."""

    def __init__(self, attention: ReferenceAttention, pruner: CachePruner):
        super().__init__(attention)
        self.pruner = pruner
        self.judged = 0  # first frame of the last call that was not a clean pass (the block being decided)

    def plan(self, start_frame: int, num_frames: int, *, commit: bool = False, write: bool = True) -> Call:
        assert write, "the reference loops have no calls that write nothing (FlowMo's)"
        if not commit:
            self.judged = start_frame
        return Call(start_frame, num_frames, updating_cache=commit)

    def make_room(self, num_frames: int) -> list[int]:
        return []

    def prune(self, positions: torch.Tensor) -> int:
        return self.pruner.prune(self.cache.kv, positions, range(self.judged)).tokens


# The recipes of docs/integrations.md, as the tests run them ----------------------------------------------------
DOCS = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def recipes() -> dict[str, str]:
    """The code blocks of docs/integrations.md tagged `# recipe: <name>`, by name (without the tag line)."""
    found = re.findall(r"```python\n# recipe: ([\w-]+)\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    return {name: code for name, code in found}


def split(code: str) -> tuple[str, str]:
    """A loop recipe's set-up (once per video) and its per-block part, at the `# in the ... loop` comment."""
    head, marker, tail = code.partition("\n# in the ")
    assert marker, "a loop recipe marks where its per-block part starts"
    return head, "# in the " + tail


class ReferenceView:
    """A model call's view of `ReferenceAttention`: `layer(i).attend(k, k_raw, v)` -> (keys, values, no mask)."""

    def __init__(self, ref: ReferenceAttention, call: Call):
        self.ref, self.call = ref, call

    def layer(self, i: int) -> ReferenceLayer:
        return ReferenceLayer(self, i)


class ReferenceLayer:
    def __init__(self, view: ReferenceView, i: int):
        self.view, self.i = view, i

    def attend(self, k, k_raw, v):
        keys, values = self.view.ref.layer_kv(self.i, self.view.call, k, k_raw, v)
        return keys, values, None
