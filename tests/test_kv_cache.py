"""KV-cache storage operations and the two loops' cache policies against hand-built expectations
(docs/spec.md#self-forcing-cache, docs/spec.md#rolling-forcing-cache)."""

import pytest
import torch

from tokentrim.pipelines.rolling_forcing import AnchorCachePolicy
from tokentrim.pipelines.self_forcing import SinkCachePolicy
from tokentrim.wan import KVCache, get_preset
from tokentrim.wan.rope import RopeTable

C = get_preset("tiny")
T = C.tokens_per_frame


def tagged(frames, raw=False):
    """Keys/values whose channel 0 holds the frame index and channel 1 the spatial index (channel 2: raw flag)."""
    x = torch.zeros(1, len(frames) * T, C.num_heads, C.head_dim)
    for i, f in enumerate(frames):
        x[0, i * T : (i + 1) * T, :, 0] = f
        x[0, i * T : (i + 1) * T, :, 1] = torch.arange(T, dtype=torch.float32)[:, None]
    if raw:
        x[..., 2] = 1.0
    return x


def sink(capacity, pinned=0):
    return SinkCachePolicy(KVCache(C, 1, capacity), pinned)


def anchor():
    return AnchorCachePolicy(KVCache(C, 1, 24), RopeTable(C), 3, 21)


def call(policy, start, n, commit):
    """Run one model call's cache traffic for every layer; return (K, V) seen by layer 0."""
    cache = policy.cache
    plan = policy.plan(start, n, commit=commit)
    frames = list(range(start, start + n))
    out, view = None, cache.view(plan)
    for layer in range(C.num_layers):
        k, v, _ = view.layer(layer).attend(tagged(frames), tagged(frames, raw=True), tagged(frames))
        out = out or (k, v)
    cache.finish(plan)
    return out


def frames_of(k):
    """Frame tag of each key row, collapsed to one entry per run of equal tags."""
    tags = k[0, :, 0, 0].tolist()
    return [int(t) for i, t in enumerate(tags) if i == 0 or tags[i - 1] != t]


def test_append_overwrite_and_read_order_self_forcing():
    policy = sink(9)
    cache = policy.cache
    with torch.no_grad():
        k, _ = call(policy, 0, 3, commit=False)  # a denoising step: written but not committed
        assert cache.frame_indices == [] and frames_of(k) == [0, 1, 2]
        call(policy, 0, 3, commit=True)
        k, _ = call(policy, 3, 3, commit=False)
    assert frames_of(k) == [0, 1, 2, 3, 4, 5]
    assert cache.frame_indices == [0, 1, 2]
    assert k.shape[1] == 6 * T
    assert (k[0, :, 0, 2] == 0).all()  # Self Forcing stores rotated keys, never the raw ones


def test_evict_keeps_sink_frames():
    policy = sink(9, 3)
    cache = policy.cache
    with torch.no_grad():
        for start in (0, 3, 6):
            policy.make_room(3)
            call(policy, start, 3, commit=True)
        assert policy.make_room(3) == [3, 4, 5]
        k, _ = call(policy, 9, 3, commit=True)
        assert policy.make_room(3) == [6, 7, 8]
        k, _ = call(policy, 12, 3, commit=False)
    assert cache.frame_indices == [0, 1, 2, 9, 10, 11]
    assert frames_of(k) == [0, 1, 2, 9, 10, 11, 12, 13, 14]
    # the physical rows moved: rows of frame 9 now sit right after the sink
    assert cache.k[0, 0, 3 * T, 0, 0] == 9


def test_make_room_without_unpinned_frames_fails():
    policy = sink(4, 3)
    with torch.no_grad():
        call(policy, 0, 3, commit=True)
    with pytest.raises(ValueError, match="cannot fit"):
        policy.make_room(3)


def test_remove_positions_from_unpinned_frames_in_every_layer():
    policy = sink(12, 3)
    cache = policy.cache
    with torch.no_grad():
        for start in (0, 3, 6):
            call(policy, start, 3, commit=True)
        removed = cache.remove_positions(torch.tensor([1, 5, 5]))
        k, _ = call(policy, 9, 3, commit=False)
    assert removed == 2 * 6  # 2 positions x 6 unpinned frames
    for frame in range(9):
        expected = list(range(T)) if frame < 3 else [n for n in range(T) if n not in (1, 5)]
        assert cache.positions(frame).tolist() == expected
    for layer in range(C.num_layers):
        rows = cache.k[layer, 0, : cache.length, 0]
        spatial = cache.k[layer, 0, : cache.length, 0, 1]
        assert not ((rows[:, 0] >= 3) & ((spatial == 1) | (spatial == 5))).any()
    assert k.shape[1] == 9 * T - 12 + 3 * T
    # eviction after removal drops whole frames (by frame, not by token count)
    with torch.no_grad():
        policy.make_room(6)
    assert cache.frame_indices == [0, 1, 2, 6, 7, 8]
    assert cache.k[1, 0, 3 * T, 0, 0] == 6 and cache.k[1, 0, 3 * T, 0, 1] == 0


def test_rolling_forcing_anchor_is_raw_and_overwritten_in_place():
    policy = anchor()
    cache = policy.cache
    with torch.no_grad():
        k, _ = call(policy, 0, 15, commit=False)  # head window: attends only to itself
        assert k.shape[1] == 15 * T and cache.frame_indices == []
        call(policy, 0, 3, commit=True)
        call(policy, 0, 3, commit=True)  # the anchor is rewritten at later head windows
    assert cache.frame_indices == [0, 1, 2]
    assert (cache.k[:, 0, : 3 * T, 0, 2] == 1).all()  # raw (un-rotated) keys stored


def _expected_anchor_freqs(offset):
    rope = RopeTable(C)
    frames = torch.arange(offset, offset + 3).repeat_interleave(T)
    return rope.token_freqs(frames, torch.arange(T).repeat(3))


def test_rolling_forcing_anchor_offset_uses_working_frame_span():
    policy = anchor()
    cache = policy.cache
    with torch.no_grad():
        call(policy, 0, 3, commit=True)
        for start in (3, 6, 9, 12, 15, 18):
            policy.make_room(3)
            call(policy, start, 3, commit=True)
    # denoising window at frame 21 with 15 frames: budget 21 - 15 - 3 = 3 working frames (18..20)
    plan = policy.plan(21, 15)
    assert [(s.start, s.end) for s in plan.reads] == [(0, 3 * T), (18 * T, 21 * T)]
    torch.testing.assert_close(plan.reads[0].rope_freqs, _expected_anchor_freqs(21 - 3 - 3))
    # a 9-frame tail window reads 9 working frames; the anchor moves back accordingly
    plan = policy.plan(21, 9)
    assert (plan.reads[1].start, plan.reads[1].end) == (12 * T, 21 * T)
    torch.testing.assert_close(plan.reads[0].rope_freqs, _expected_anchor_freqs(21 - 9 - 3))
    # after removing tokens, the offset still counts frames (not tokens)
    cache.remove_positions(torch.arange(0, T, 2))
    plan = policy.plan(21, 15)
    assert plan.reads[1].end - plan.reads[1].start == 3 * (T // 2)
    torch.testing.assert_close(plan.reads[0].rope_freqs, _expected_anchor_freqs(15))
    assert cache.positions(0).tolist() == list(range(T))  # the anchor is never pruned


def test_rolling_forcing_clean_pass_span():
    policy = anchor()
    cache = policy.cache
    with torch.no_grad():
        call(policy, 0, 3, commit=True)
        for start in (3, 6, 9, 12, 15):
            call(policy, start, 3, commit=True)
        # 18 cached + 3 = 21: the anchor is read, rotated to its true frames 0..2
        plan = policy.plan(18, 3, commit=True)
        torch.testing.assert_close(plan.reads[0].rope_freqs, _expected_anchor_freqs(0))
        assert (plan.reads[1].start, plan.reads[1].end) == (3 * T, 18 * T)
        cache.finish(plan)
        # 21 cached + 3 = 24 > 21: the anchor drops out of the clean pass
        plan = policy.plan(21, 3, commit=True)
    assert [(s.start, s.end, s.rope_freqs) for s in plan.reads] == [(3 * T, 21 * T, None)]


def test_remove_positions_from_chosen_frames_only():
    policy = sink(12, 3)
    cache = policy.cache
    with torch.no_grad():
        for start in (0, 3, 6):
            call(policy, start, 3, commit=True)
    removed = cache.remove_positions(torch.tensor([0, 2]), frames=[4, 7])
    assert removed == 2 * 2
    for frame in range(9):
        expected = [n for n in range(T) if n not in (0, 2)] if frame in (4, 7) else list(range(T))
        assert cache.positions(frame).tolist() == expected
    # rows of frame 5 directly follow frame 4's remaining rows, in every layer
    row5 = 4 * T + (T - 2)
    assert (cache.k[:, 0, row5, 0, 0] == 5).all() and (cache.k[:, 0, row5 - 1, 0, 0] == 4).all()
    with pytest.raises(KeyError, match="not cached"):
        cache.remove_positions(torch.tensor([1]), frames=[30])


def test_rolling_forcing_eviction_keeps_anchor_and_newest_working_frames():
    """docs/spec.md#rolling-forcing-cache: a 24-frame buffer = the pinned 3-frame anchor + the newest 21 working
    frames."""
    policy = anchor()
    cache = policy.cache
    with torch.no_grad():
        call(policy, 0, 3, commit=True)
        for start in range(3, 36, 3):
            evicted = policy.make_room(3)
            assert evicted == ([] if start < 24 else [start - 21, start - 20, start - 19])
            call(policy, start, 3, commit=True)
    assert cache.frame_indices == [0, 1, 2] + list(range(15, 36))
    # the anchor rows were never moved or overwritten; the working rows sit in time order after it
    assert (cache.k[:, 0, : 3 * T, 0, 0] == torch.arange(3).repeat_interleave(T)).all()
    assert (cache.k[:, 0, 3 * T : 24 * T, 0, 0] == torch.arange(15, 36).repeat_interleave(T)).all()
    # next full window at frame 36: 21 - 15 - 3 = 3 working frames (33..35), the anchor rotated to 30..32
    plan = policy.plan(36, 15)
    assert [(s.start, s.end) for s in plan.reads] == [(0, 3 * T), (21 * T, 24 * T)]
    torch.testing.assert_close(plan.reads[0].rope_freqs, _expected_anchor_freqs(30))
