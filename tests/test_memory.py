"""Memory accounting (`tokentrim.wan.memory`): the peak of live tensors against hand-counted bytes, and the
full-size model's parts measured on the meta device against their closed forms."""

import torch

from tokentrim.pipelines import SelfForcingPipeline
from tokentrim.wan import build_model, get_preset
from tokentrim.wan.memory import PeakLiveBytes, fused_attention, parameter_bytes


def test_peak_counts_live_storages_once():
    with PeakLiveBytes() as m:
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.zeros(2000)  # 12000 alive
        del a  # 8000
        b.view(-1, 2).add_(1)  # a view, updated in place: no new storage
        c = torch.empty(500, dtype=torch.float64)  # 12000 again
        d = c[::2]  # a view
        torch.empty(0)  # an operation, so the deletions are seen
    assert m.peak == 12000 and m.current == 12000
    del b, c, d


def test_tensors_made_before_are_not_counted():
    weights = torch.zeros(10_000)
    with PeakLiveBytes() as m:
        weights.mul_(2)
        out = weights[:10] + 1
    assert m.peak == 40 and out.numel() == 10


def test_meta_tensors_are_counted_without_memory():
    with PeakLiveBytes() as m:
        x = torch.empty(2**30, device="meta", dtype=torch.bfloat16)  # 2 GiB that exist nowhere
        y = x * 2
    assert m.peak == 2 * 2**31 and y.is_meta


def test_fused_attention_keeps_no_attention_matrix():
    """On the meta device the model's attention allocates its output and a log-sum-exp, not Lq x Lk scores."""
    lq, lk, h, d = 4096, 8192, 2, 8
    q = torch.empty(1, lq, h, d, device="meta")
    k = v = torch.empty(1, lk, h, d, device="meta")
    from tokentrim.wan import model as wan_model

    with fused_attention(), PeakLiveBytes() as fused:
        wan_model.attention(q, k, v)
    with PeakLiveBytes() as plain:
        wan_model.attention(q, k, v)
    output, lse = lq * h * d * 4, h * lq * 4
    assert fused.peak == output + lse
    assert plain.peak >= h * lq * lk * 4  # the unfused path materialises the scores


def test_kv_cache_and_weights_of_the_full_size_model_match_their_closed_forms():
    """Self Forcing at 480x832: K and V of 21 frames x 1560 tokens x 1536 channels x 30 layers, bf16; the DiT's
    1,418,996,800 parameters (docs/benchmarks.md#memory-model)."""
    model = build_model("wan2.1-t2v-1.3b", device="meta").to(torch.bfloat16)
    c = get_preset("wan2.1-t2v-1.3b")
    assert parameter_bytes(model) == 2 * 1_418_996_800
    pipe = SelfForcingPipeline(model)
    with PeakLiveBytes() as m:
        cache = pipe.make_cache(1, torch.device("meta"), torch.bfloat16).cache
    assert m.peak == 2 * 21 * 1560 * c.dim * c.num_layers * 2 == 2 * cache.k.numel() * 2


def test_eviction_moves_rows_without_a_temporary():
    """The dynamic cache shifts its kept rows over the evicted ones in place (per chunk, no clone)."""
    from tokentrim.pipelines.self_forcing import SinkCachePolicy
    from tokentrim.wan import KVCache

    c = get_preset("tiny")
    t = c.tokens_per_frame
    cache = KVCache(c, 1, 9)
    policy = SinkCachePolicy(cache, 3)
    for s in range(0, 9, 3):
        cache.finish(policy.plan(s, 3, commit=True))
    frame_of_row = torch.arange(9).repeat_interleave(t).float()
    cache.k[..., 0] = frame_of_row[None, None, :, None]
    with PeakLiveBytes() as m:
        assert policy.make_room(2) == [3, 4]
    assert m.peak < 4 * t * c.dim  # a few index scalars, never the rows
    expected = torch.tensor([0, 1, 2, 5, 6, 7, 8], dtype=torch.float32).repeat_interleave(t)
    assert torch.equal(cache.k[0, 0, : 7 * t, 0, 0], expected)


def test_closed_forms_at_480x832_by_hand():
    """The memory model's exact parts of Wan2.1-1.3B at 480x832 in bf16 (docs/benchmarks.md#memory-model), each
    counted by hand: 60 x 104 latents, 30 x 52 = 1560 tokens per frame, 1536 channels, 30 layers, 512 text rows."""
    from tokentrim.wan.memory import context_bytes, kv_cache_bytes, latent_bytes, video_bytes

    c = get_preset("wan2.1-t2v-1.3b")
    assert kv_cache_bytes(c, 21) == 6_038_323_200  # Self Forcing: 6.04 GB (docs/spec.md#memory)
    assert kv_cache_bytes(c, 12) == 3_450_470_400  # LongLive
    assert kv_cache_bytes(c, 1, torch.float32) == 575_078_400
    assert context_bytes(c) == 94_371_840
    assert latent_bytes(c, 1) == 199_680 and latent_bytes(c, 1200) == 239_616_000
    assert video_bytes(c, 21) == 81 * 480 * 832 * 3 == 97_044_480
    assert video_bytes(c, 1200, torch.bfloat16) == 2 * 4797 * 480 * 832 * 3


def test_closed_forms_equal_the_tensors_the_model_makes():
    """The text context and the KV cache as the model and the pipelines allocate them (meta device)."""
    from tokentrim.pipelines import REGISTRY
    from tokentrim.wan.memory import context_bytes, kv_cache_bytes

    model = build_model("wan2.1-t2v-1.3b", device="meta").to(torch.bfloat16)
    c = model.config
    ctx = model.encode_context(torch.zeros(1, 7, c.text_dim, device="meta"))
    assert sum(t.numel() * t.element_size() for t in ctx.keys + ctx.values) == context_bytes(c)
    for name, frames in [("self_forcing", 21), ("rolling_forcing", 24), ("longlive", 12)]:
        pipe = REGISTRY[name].pipeline(model)
        cache = pipe.make_cache(1, torch.device("meta"), torch.bfloat16).cache
        assert 2 * cache.k.numel() * cache.k.element_size() == kv_cache_bytes(c, frames), name


def test_video_memory_phases_by_hand():
    """Three phases: encode (backend + text encoder + its forward), generate (backend + rollout + the latent buffers
    that grow with the video), decode (backend + decoder); the text encoder stays only if asked."""
    from tokentrim.wan.memory import VideoMemory

    m = VideoMemory(dit=10, vae=2, text_encoder=50, text_encoder_forward=5, rollout=100, decode=7, latent_frame=1,
                    measured_frames=30, growing=2)  # fmt: skip
    # generate: 12 + 100 (30 frames of the second buffer inside) + 120 noise + 90 more of the second buffer
    assert m.phases(120) == {"encode": 67, "generate": 322, "decode": 19}
    assert m.phases(120, text_encoder_on_device=True) == {"encode": 67, "generate": 372, "decode": 69}
    assert m.peak(30) == 12 + 100 + 30
    one = VideoMemory(dit=10, vae=2, text_encoder=500, text_encoder_forward=5, rollout=100, decode=7,
                      latent_frame=3, measured_frames=27)  # fmt: skip
    assert one.phases(1200)["generate"] == 12 + 100 + 3600 and one.peak(1200) == 3712
    assert one.peak(21) == 517  # the encoding phase sets it
    # the prompt's embedding read from disk: no encoding phase
    assert one.phases(21, encode=False) == {"generate": 12 + 100 + 63, "decode": 19}
