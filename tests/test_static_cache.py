"""The static-shape KV cache (`tokentrim.wan.static_cache`) against the dynamic one: the same keys and values for
every call (call by call, through commits, evictions, TokenTrim's removal, FlowMo's read-only calls and LongLive's
re-cache), fixed shapes, no data moved; and whole rollouts of every pipeline with the same decisions and latents
within fp32 rounding."""

import pytest
import torch

from tokentrim.errors import UserError
from tokentrim.pipelines import REGISTRY, Request, SelfForcingConfig, SelfForcingPipeline
from tokentrim.pipelines.longlive import LongLiveConfig, SlotRopeCachePolicy
from tokentrim.pipelines.rolling_forcing import AnchorCachePolicy, RollingForcingConfig
from tokentrim.pipelines.self_forcing import SinkCachePolicy
from tokentrim.wan import KVCache, build_model, get_preset
from tokentrim.wan.kv_cache import CachedFrame
from tokentrim.wan.rope import RopeTable
from tokentrim.wan.static_cache import StaticKVCache
from tokentrim_core import FlowMoConfig, TokenTrim, TokenTrimConfig

C = get_preset("tiny")
T = C.tokens_per_frame


class Twin:
    """One policy kind over a dynamic and a static cache, driven by the same calls with the same keys/values."""

    def __init__(self, make_policy, capacity: int, span: int | None = None):
        self.dynamic = make_policy(KVCache(C, 1, capacity))
        self.static = make_policy(StaticKVCache(C, 1, capacity, span_frames=span))
        self.gen = torch.Generator().manual_seed(capacity)
        self.key_lengths = set()

    def call(
        self, start: int, n: int, commit: bool = False, write: bool = True, recache_at: int | None = None
    ):
        """One model call (every layer) on both; asserts the static keys/values under the mask equal the
        dynamic ones, in order, bit for bit."""
        shape = (1, n * T, C.num_heads, C.head_dim)
        k, k_raw, v = (torch.randn(shape, generator=self.gen) for _ in range(3))
        plans = []
        for policy in (self.dynamic, self.static):
            if recache_at is None:
                plans.append(policy.plan(start, n, commit=commit, write=write))
            else:
                plans.append(policy.recache_plan(recache_at, keep_pruning=True)[1])
        views = [p.cache.view(plan) for p, plan in zip((self.dynamic, self.static), plans, strict=True)]
        for layer in range(C.num_layers):
            kd, vd, md = views[0].layer(layer).attend(k, k_raw, v)
            ks, vs, ms = views[1].layer(layer).attend(k, k_raw, v)
            assert md is None and ms.dtype == torch.bool and ms.shape == (1, ks.shape[1])
            assert torch.equal(ks[:, ms[0]], kd) and torch.equal(vs[:, ms[0]], vd)
            self.key_lengths.add(ks.shape[1])
        for policy, plan in zip((self.dynamic, self.static), plans, strict=True):
            policy.cache.finish(plan)
        assert self.dynamic.cache.frame_indices == self.static.cache.frame_indices

    def both(self, method: str, *args, **kwargs):
        out = [getattr(p, method)(*args, **kwargs) for p in (self.dynamic, self.static)]
        assert out[0] == out[1]
        return out[0]


def run_blocks(twin: Twin, blocks, steps: int = 2, flowmo: bool = False, prune_at=()):
    """Self Forcing's traffic: room, denoising calls (written, uncommitted), optionally a FlowMo read-only call,
    optionally a TokenTrim removal and a regenerated call, then the commit."""
    for b in blocks:
        s = 3 * b
        twin.both("make_room", 3)
        for _ in range(steps):
            twin.call(s, 3)
        if flowmo:
            twin.call(s, 3, write=False)
        if b in prune_at:
            twin.both("prune", torch.tensor([0, 5, T - 1]))
            twin.call(s, 3)
        twin.call(s, 3, commit=True)


def test_sink_cache_keys_equal_call_by_call_through_eviction_removal_and_flowmo():
    twin = Twin(lambda cache: SinkCachePolicy(cache, 3), capacity=9)
    run_blocks(twin, range(7), flowmo=True, prune_at=(2, 4, 5))
    assert twin.key_lengths == {9 * T}  # one key length for every call, whatever the cache held


def test_anchor_cache_keys_equal_with_the_anchor_rotated_when_read():
    rope = RopeTable(C)
    twin = Twin(lambda cache: AnchorCachePolicy(cache, rope, 3, 21), capacity=24, span=21)
    twin.call(0, 15)  # head window: attends to itself
    twin.call(0, 3, commit=True)
    for s in range(3, 60, 3):  # commits past the 24-frame buffer, windows of 15 and tail windows of 9
        twin.both("make_room", 3)
        for n in (15, 9):
            twin.call(s, n)
        if s in (30, 45):
            twin.both("prune", torch.arange(0, T, 3))
        twin.call(s, 3, commit=True)
    assert twin.key_lengths == {21 * T}


@pytest.mark.parametrize("slot_rope", [False, True])
def test_recache_keys_equal_with_the_removed_positions_masked(slot_rope):
    rope = RopeTable(C)
    make = (
        (lambda c: SlotRopeCachePolicy(c, 3, True, rope)) if slot_rope else (lambda c: SinkCachePolicy(c, 3))
    )
    twin = Twin(make, capacity=12)
    run_blocks(twin, range(6), prune_at=(4, 5))
    twin.call(6, 12, recache_at=18)  # LongLive's re-cache of frames 6..17 under a kept sink
    run_blocks(twin, range(6, 8), prune_at=(7,))


def test_eviction_and_removal_move_no_data_and_pages_are_reused():
    cache = StaticKVCache(C, 1, 4)
    policy = SinkCachePolicy(cache, 1)
    for s in range(4):
        plan = policy.plan(s, 1, commit=True)
        cache.view(plan).layer(0).attend(*(torch.full((1, T, C.num_heads, C.head_dim), float(s)),) * 3)
        cache.finish(plan)
    before = cache.k.clone()
    cache.remove_positions(torch.tensor([1, 2]))
    assert policy.make_room(2) == [1, 2]
    assert torch.equal(cache.k, before)  # nothing moved
    assert [(f.index, f.page) for f in cache.frames] == [(0, 0), (3, 3)]
    assert cache.positions(3).tolist() == [n for n in range(T) if n not in (1, 2)]
    plan = policy.plan(4, 2, commit=True)
    view = cache.view(plan)
    assert view.write.tolist() == list(range(T, 3 * T))  # the lowest free pages, 1 and 2
    # read in time order: frame 0, frame 3 without positions 1 and 2, then the new frames; padded to the span
    expected = list(range(T)) + [3 * T + n for n in range(T) if n not in (1, 2)] + list(range(T, 3 * T))
    assert view.read[: len(expected)].tolist() == expected
    assert view.mask[0].tolist() == [True] * len(expected) + [False] * (4 * T - len(expected))


def test_a_call_reading_more_than_the_span_is_refused():
    policy = SinkCachePolicy(StaticKVCache(C, 1, 9, span_frames=3), 0)
    for s in (0, 3):
        policy.cache.finish(policy.plan(s, 3, commit=True))
    with pytest.raises(ValueError, match="raise span_frames"):
        policy.cache.view(policy.plan(6, 3, write=False))


def test_a_full_unpruned_cache_attends_bit_exactly():
    """No padded row: the mask is all True and SDPA's result is the dynamic cache's, bit for bit."""
    model = build_model(C, seed=3)
    context = model.encode_context(torch.randn(1, 9, C.text_dim, generator=torch.Generator().manual_seed(1)))
    gen = torch.Generator().manual_seed(2)
    kv = torch.randn(2, C.num_layers, 1, 6 * T, C.num_heads, C.head_dim, generator=gen)
    outs = []
    for cache in (KVCache(C, 1, 9), StaticKVCache(C, 1, 9)):
        cache.k[:, :, : 6 * T], cache.v[:, :, : 6 * T] = kv[0], kv[1]
        cache.frames = [CachedFrame(i, torch.arange(T), False, i < 3, None if type(cache) is KVCache else i)
                        for i in range(6)]  # fmt: skip
        policy = SinkCachePolicy(cache, 3)
        x = torch.randn(
            1, 3, C.in_dim, C.latent_height, C.latent_width, generator=torch.Generator().manual_seed(3)
        )
        t = torch.full((1, 3), 500.0)
        with torch.no_grad():
            outs.append(model(x, t, context, cache=cache, plan=policy.plan(6, 3), start_frame=6))
    assert torch.equal(outs[0], outs[1])


def test_unknown_layout_is_a_user_error():
    with pytest.raises(UserError, match="`cache` must be one of"):
        SelfForcingPipeline(build_model(C, device="meta"), cache="paged")
    with pytest.raises(ValueError, match="cache must be one of \\('dynamic', 'static'\\), got 'paged'"):
        SelfForcingConfig(cache="paged")


def test_the_layout_is_a_run_option_of_every_sampler():
    """Declared once on `SamplerConfig`: a run config's `<pipeline>.cache` picks the storage the loop builds, the
    decision log's settings record it, and a wrong value is one line naming the choices."""
    from tokentrim.app.run_config import default_config_path, load_run_config

    for name in REGISTRY:
        run = load_run_config(default_config_path(name), [f"{name}.cache=static"])
        assert run.to_dict()[name]["cache"] == "static"
        policy = run.checker(C).make_cache(1, torch.device("meta"), torch.float32)
        assert isinstance(policy.cache, StaticKVCache), name
        default = load_run_config(default_config_path(name)).checker(C)
        assert type(default.make_cache(1, torch.device("meta"), torch.float32).cache) is KVCache
    with pytest.raises(UserError, match="cache must be one of \\('dynamic', 'static'\\), got 'paged'"):
        load_run_config(default_config_path("self_forcing"), ["self_forcing.cache=paged"])


# Whole rollouts: every registered pipeline, TokenTrim pruning most blocks (lam = 0), evictions, sinks / anchors,
# FlowMo, prompt switches with LongLive's re-cache.
PRUNING = TokenTrimConfig(lam=0.0, warmup=1)
ROLLOUTS = {
    "self_forcing_rolling_flowmo": ("self_forcing", SelfForcingConfig(cache_frames=9), 30, True, ()),
    "self_forcing_no_sink_switch": ("self_forcing", SelfForcingConfig(cache_frames=9, sink_frames=0), 30, False,
                                    (12,)),
    "rolling_forcing_evicting": ("rolling_forcing", RollingForcingConfig(), 45, True, ()),
    "causal_forcing_framewise": ("causal_forcing_framewise", None, 14, True, (7,)),
    "longlive_switches": ("longlive", LongLiveConfig(), 36, False, (12, 24)),
    "longlive_slot_rope_switches": ("longlive", LongLiveConfig(rope="slot"), 36, False, (15, 27)),
    "longlive_no_global_sink": ("longlive", LongLiveConfig(global_sink=False), 30, False, (18,)),
}  # fmt: skip


def decisions(out) -> list[tuple]:
    return [
        (r.block, r.action, r.pruned_positions, r.tokens_removed, r.regenerations, r.kept)
        for r in out.records
    ]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ROLLOUTS))
def test_rollouts_match_the_dynamic_cache(case):
    name, sampler, frames, flowmo, switch_at = ROLLOUTS[case]
    model = build_model(C, seed=3)
    gen = torch.Generator().manual_seed(5)
    embeds = torch.randn(1, 9, C.text_dim, generator=gen)
    switches = tuple((f, torch.randn(1, 12, C.text_dim, generator=gen)) for f in switch_at)
    entry = REGISTRY[name]
    outs = []
    for layout in ("dynamic", "static"):
        pipe = entry.pipeline(model, sampler or entry.config(), cache=layout)
        hook = TokenTrim(PRUNING, C.patch_size[1:])
        guidance = FlowMoConfig(mode="first_block" if flowmo else "off")
        outs.append(pipe(Request(embeds, frames, seed=1, hook=hook, flowmo=guidance, switches=switches)))
    dynamic, static = outs
    assert sum(r.action == "prune" for r in dynamic.records) >= 2
    assert decisions(static) == decisions(dynamic)
    for a, b in zip(static.records, dynamic.records, strict=True):  # drift scores: within rounding
        assert a.severity == (None if b.severity is None else pytest.approx(b.severity, rel=1e-4, abs=1e-7))
    torch.testing.assert_close(static.latents, dynamic.latents, rtol=0, atol=1e-5)
    if dynamic.flowmo_losses:
        torch.testing.assert_close(torch.tensor(static.flowmo_losses), torch.tensor(dynamic.flowmo_losses))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["self_forcing", "rolling_forcing"])
def test_the_static_cache_reads_the_device_no_more_than_the_dynamic_one(name):
    """Run on the meta device, where any host read of device data is counted (`DeviceReads`): the static
    cache's host bookkeeping adds none (its indices go host to device)."""
    from tools.gpu_check.device_reads import DeviceReads

    entry = REGISTRY[name]
    counts = []
    for layout in ("dynamic", "static"):
        pipe = entry.pipeline(build_model(C, device="meta"), entry.config(), cache=layout)
        noise = torch.zeros(1, 18, C.in_dim, C.latent_height, C.latent_width, device="meta")
        with DeviceReads() as reads:
            hook = TokenTrim(PRUNING, C.patch_size[1:])
            prompt = torch.zeros(1, 9, C.text_dim, device="meta")
            pipe(Request(prompt, 18, noise=noise, generator=torch.Generator(), hook=hook))
        counts.append(reads.counts())
    assert counts[1] == counts[0] and sum(counts[0].values()) > 0
