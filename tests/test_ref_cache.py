"""`CachePruner` on reference-layout caches moved by the reference loops' index arithmetic (tests/reference_layout.py),
one test per layout rule, against an independent recomputation of what the cache must hold.

Tokens are labelled: every key and value row carries (frame, spatial position, prompt) in its three channels, so
the rows a call attends to read back as the tokens they are. The expectation is recomputed from the rule's
meaning alone: which tokens were written, which were pruned, how many rows the buffer has."""

import pytest
import torch
from reference_layout import Call, ReferenceAttention, reference_cache

from tokentrim.wan import get_preset
from tokentrim_core.ref_cache import CachePruner

T = 4  # tokens per frame
CONFIG = get_preset("tiny").replace(num_heads=1, dim=6, latent_height=4, latent_width=4)  # T = 4, head_dim 6
assert CONFIG.tokens_per_frame == T


class FlatRope:
    """RoPE factors of 1 (labels pass unchanged) that remember the frame offsets asked for."""

    def __init__(self):
        self.offsets = []

    def grid_freqs(self, start, frames, tokens, device):
        self.offsets.append(start)
        return torch.ones(frames * tokens, CONFIG.head_dim // 2, dtype=torch.complex128)


def labels(start: int, frames: int, prompt: int = 0) -> torch.Tensor:
    """Keys for frames [start, start + frames): [1, F*T, 1, 6], channels (frame, position, prompt, 0, 0, 0)."""
    f = torch.arange(start, start + frames).repeat_interleave(T)
    p = torch.arange(T).repeat(frames)
    x = torch.stack([f, p, torch.full_like(f, prompt)] + [torch.zeros_like(f)] * 3, dim=1).double()
    return x[None, :, None, :]


def read(keys: torch.Tensor) -> list[tuple]:
    return [tuple(int(round(float(c))) for c in row[0, :3]) for row in keys[0]]


def call(att: ReferenceAttention, c: Call, prompt: int = 0) -> list[tuple]:
    """Run one model call through every layer; the tokens layer 0 attended to (all layers must agree)."""
    k = labels(c.start_frame, c.num_frames, prompt)
    seen = [read(att.layer_kv(i, c, k, k, k)[0]) for i in range(CONFIG.num_layers)]
    assert all(s == seen[0] for s in seen)
    return seen[0]


def tokens(frames, prompt=0, without=()) -> list[tuple]:
    """(frame, position, prompt) of whole frames in time order, less the (frame, position) pairs `without`."""
    return [(f, p, prompt) for f in frames for p in range(T) if (f, p) not in set(without)]


def ends(kv) -> tuple[int, int]:
    layer = kv[0] if isinstance(kv, list) else kv
    return int(layer["global_end_index"]), int(layer["local_end_index"])


def make(rule, frames, pruner, **kw):
    kv = reference_cache(CONFIG, 1, frames, torch.float64)
    return kv, ReferenceAttention(kv, rule, T, pruner=pruner, **kw)


def self_forcing_block(att, s, steps=2) -> list[tuple]:
    """A block's denoising steps at frames [s, s + 3) (the last one's keys returned), before its clean pass."""
    for _ in range(steps):
        seen = call(att, Call(s, 3))
    return seen


def test_global_cache_removal():
    """Self Forcing's official cache (no window, no sink; Causal Forcing's too): the pruned tokens leave every
    later read, the block being judged rewrites its own rows, the next block appends after the kept rows."""
    pruner = CachePruner(T, sink_frames=0)
    kv, att = make("self_forcing", 21, pruner)
    for s in (0, 3):
        self_forcing_block(att, s)
        call(att, Call(s, 3))  # clean pass
    self_forcing_block(att, 6)  # the candidate of block 2
    pruned = pruner.prune(kv, torch.tensor([3, 1]), frames=range(6))
    assert pruned.tokens == 2 * 6 and set(pruned.positions) == set(range(6))
    assert all(p.tolist() == [1, 3] for p in pruned.positions.values())
    gone = [(f, p) for f in range(6) for p in (1, 3)]
    assert ends(kv) == (9 * T, 9 * T - 12)
    assert call(att, Call(6, 3)) == tokens(range(9), without=gone)  # the regeneration, in place
    call(att, Call(6, 3))  # the clean pass
    assert self_forcing_block(att, 9) == tokens(range(12), without=gone)  # the next block appends
    # a second prune finds the pruned frames' rows through the bookkeeping
    pruner.prune(kv, torch.tensor([0, 1]), frames=range(9))
    gone += [(f, 0) for f in range(9)] + [(f, 1) for f in range(6, 9)]
    assert call(att, Call(9, 3)) == tokens(range(12), without=gone)
    assert ends(kv)[1] == 12 * T - len(gone)


def test_rolling_cache_with_sink_removal():
    """A rolling window of 12 frames with a 3-frame sink (Self Forcing's `local_attn_size` / `sink_size`, LongLive's
    window): the sink is never pruned; pruning frees rows, and the reference's token-count eviction then keeps
    the newest tokens that fit, an old frame in part."""
    pruner = CachePruner(T, sink_frames=3)
    kv, att = make("self_forcing", 12, pruner, sink_frames=3, local_frames=12)
    sink, rest = [], []  # the recomputation: what the cache holds, by meaning

    for s in range(0, 24, 3):
        block = tokens(range(s, s + 3))
        if s < 3:
            sink = block
        else:  # a new block pushes out the oldest tokens after the sink that no longer fit
            rest = rest[max(0, len(rest) + len(block) - (12 - 3) * T) :] + block
        assert self_forcing_block(att, s) == sink + rest
        if s == 12:  # judged: positions 0 and 2 leave frames 9..11 (listing the sink frames changes nothing)
            result = pruner.prune(kv, torch.tensor([2, 0]), frames=[0, 1, 9, 10, 11])
            assert {f: p.tolist() for f, p in result.positions.items()} == {f: [0, 2] for f in (9, 10, 11)}
            rest = [t for t in rest if not (t[0] in (9, 10, 11) and t[1] in (0, 2))]
            assert call(att, Call(s, 3)) == sink + rest  # the regeneration rewrites its own rows
        if s == 15:  # the freed rows hold history: frame 7 stays in part
            assert [t[:2] for t in rest[:3]] == [(7, 2), (7, 3), (8, 0)]
        call(att, Call(s, 3))  # the clean pass
        for layer in kv:
            assert read(layer["k"][:, : ends(layer)[1]]) == sink + rest
    assert ends(kv) == (24 * T, 12 * T)


def test_rolling_forcing_anchor_and_recent_masked():
    """Rolling Forcing (here a 12-frame buffer: the anchor block and 3 blocks; a 9-frame attention span): "mask"
    mode never touches the anchor, keeps whole-frame rows so the anchor's RoPE offset still counts the working
    frames, and the mask follows the rows the eviction shifts."""
    pruner = CachePruner(T, sink_frames=3, mode="mask")
    rope = FlatRope()
    kv, att = make("rolling_forcing", 12, pruner, attention_frames=9, rope=rope)
    masked = set()
    for s in range(0, 30, 3):
        seen = call(att, Call(s, 3))  # the denoising pass of a 1-block window
        if s == 0:
            assert seen == tokens(range(3))
        else:
            take = min(3, s - 3)  # working frames that fit: span 9 - window 3 - anchor 3
            assert rope.offsets[-1] == s - take - 3
            assert seen == tokens(range(3)) + tokens(range(s - take, s), without=masked) + tokens(
                range(s, s + 3)
            )
        if s in (9, 18):
            result = pruner.prune(kv, torch.tensor([1, 2]), frames=range(s))
            fresh = {(f, p) for f in range(3, s) for p in (1, 2) if (f, p) not in masked}
            cached = {(f, p) for f, p in fresh if f >= s - 6}  # 6 working frames fit beside anchor and block
            assert {(f, int(p)) for f, ps in result.positions.items() for p in ps} == cached
            masked |= fresh
        seen = call(att, Call(s, 3, updating_cache=True))  # the clean pass
        g, lc = ends(kv)
        first = max(0, lc // T - 9)  # the newest 9 cached frames, the anchor while it is among them
        cached = list(range(3)) + list(range(g // T - (lc // T - 3), g // T))
        assert seen == tokens(cached[first:], without=masked)
    assert ends(kv) == (30 * T, 12 * T)  # rows never removed: the indices count whole frames


def test_longlive_recache_after_removal():
    """LongLive (12-frame window, 3-frame sink): a prompt switch re-caches the newest 12 frames under the new
    prompt. Its index arithmetic needs whole frames: `restore` first (without it the rows would start before row
    0), then the re-cache, then `reapply` keeps the removals on the rebuilt frames; the sink stays the first
    prompt's (global sink)."""
    pruner = CachePruner(T, sink_frames=3)
    kv, att = make("longlive", 12, pruner, sink_frames=3)
    for s in range(0, 18, 3):
        self_forcing_block(att, s)
        if s == 15:
            pruner.prune(kv, torch.tensor([0]), frames=range(s))
        call(att, Call(s, 3))
    gone = {(f, 0) for f in range(6, 15)}  # frames 3..5 had been evicted
    with pytest.raises(AssertionError, match="rows start at"):
        ReferenceAttention(kv, "longlive", T, sink_frames=3).layer_kv(
            0, Call(6, 12), labels(6, 12), None, labels(6, 12)
        )
    removed = pruner.restore(kv)
    assert {f: p.tolist() for f, p in removed.items()} == {f: [0] for f in range(9, 15)}  # 9 rebuilt: cached
    assert ends(kv) == (18 * T, 12 * T)
    seen = call(att, Call(6, 12), prompt=1)  # the re-cache at s = 18: frames 6..17 under the new prompt
    assert seen == tokens(range(3)) + tokens(range(9, 18), prompt=1)  # 6..8 are queries only: the sink's rows
    pruner.reapply(kv, removed)
    assert read(kv[0]["k"][:, : ends(kv)[1]]) == tokens(range(3)) + tokens(range(9, 18), 1, without=gone)
    seen = self_forcing_block(att, 18)  # the next block: evicts one frame's worth of tokens, appends
    assert seen[: 3 * T] == tokens(range(3))
    assert seen[-3 * T :] == tokens(range(18, 21))


def test_longlive_recache_without_global_sink_masked():
    """`global_sink: false`: the re-cache rebuilds all 12 frames from row 0 and the first three become the sink.
    In "mask" mode nothing is restored; a pruned frame that becomes the sink is attended whole."""
    pruner = CachePruner(T, sink_frames=3, mode="mask")
    kv, att = make("longlive", 12, pruner, sink_frames=3)
    for s in range(0, 18, 3):
        self_forcing_block(att, s)
        if s == 12:
            assert set(pruner.prune(kv, torch.tensor([3]), frames=range(s)).positions) == set(range(6, 12))
        call(att, Call(s, 3))
    masked = {(f, 3) for f in range(9, 12)}
    for layer in kv:  # LongLive zeroes the buffers first
        layer["k"].zero_()
        layer["v"].zero_()
    seen = call(att, Call(6, 12, sink_recache=True), prompt=1)
    assert seen == tokens(range(6, 9), 1) + tokens(range(9, 18), 1, without=masked)
    seen = self_forcing_block(att, 18)
    assert seen[: 3 * T] == tokens(range(6, 9), 1)  # the new sink


def test_pruner_bookkeeping_and_errors():
    pruner = CachePruner(T, sink_frames=1)
    kv, att = make("self_forcing", 8, pruner, sink_frames=1, local_frames=8)
    for s in range(0, 6, 3):
        call(att, Call(s, 3))
    assert pruner.prune(kv, torch.tensor([], dtype=torch.long), frames=range(6)).tokens == 0
    assert pruner.prune(kv, torch.tensor([2]), frames=[0, 4, 40]).positions.keys() == {
        4
    }  # sink, uncached: skipped
    assert pruner.prune(kv, torch.tensor([2]), frames=[4]).tokens == 0  # already removed
    mask = pruner.keep_mask(kv)
    assert mask.tolist() == [True] * (6 * T - 1) + [False] * (2 * T + 1)  # remove mode: every row in use
    for layer in kv:  # the loop starts a new video
        layer["global_end_index"].zero_()
        layer["local_end_index"].zero_()
    call(att, Call(0, 3))
    assert pruner.prune(kv, torch.tensor([1]), frames=range(3)).tokens == 2 and set(pruner.held) == {1, 2}
    with pytest.raises(ValueError, match="positions must lie in"):
        pruner.prune(kv, torch.tensor([T]), frames=[1])
    kv[1]["local_end_index"].fill_(1)
    with pytest.raises(ValueError, match="differ"):
        pruner.prune(kv, torch.tensor([0]), frames=[1])
    for field, value, message in [("frame_tokens", 0, "frame_tokens"), ("sink_frames", -1, "sink_frames"),
                                  ("mode", "drop", "mode must be")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            CachePruner(**{"frame_tokens": T, field: value})


def test_restore_gives_back_removals_not_evictions():
    """A pruned frame the loop then evicts in part: `restore` returns only what TokenTrim removed."""
    pruner = CachePruner(T, sink_frames=3)
    kv, att = make("self_forcing", 12, pruner, sink_frames=3, local_frames=12)
    for s in range(0, 15, 3):
        self_forcing_block(att, s)
        if s == 12:
            pruner.prune(kv, torch.tensor([0]), frames=[8])
            pruner.prune(kv, torch.tensor([0, 1]), frames=[10])
        call(att, Call(s, 3))
    seen = self_forcing_block(att, 15)  # evicts 12 - 3 = 9 rows: frames 6, 7 and one row of frame 8
    assert seen[3 * T : 3 * T + 2] == [(8, 2, 0), (8, 3, 0)]
    removed = pruner.restore(kv)
    assert {f: p.tolist() for f, p in removed.items()} == {8: [0], 10: [0, 1]}
    assert ends(kv) == (18 * T, 12 * T) and pruner.held == {}
