"""Loop structure, RNG order, cache consistency and input errors of both pipelines (docs/spec.md#self-forcing-loop,
docs/spec.md#rolling-forcing-loop, docs/spec.md#rng-order)."""

import pytest
import torch

from tokentrim.errors import UserError
from tokentrim.pipelines import (
    Request,
    RollingForcingConfig,
    RollingForcingPipeline,
    SelfForcingConfig,
    SelfForcingPipeline,  # fmt: skip
)
from tokentrim.wan import block_causal_mask, kv_cache
from tokentrim.wan.rope import apply_rope

SF_STEPS = [1000.0, 937.5, 833.33, 625.0]
RF_STEPS = [1000.0, 952.38, 882.35, 769.23, 555.56]


def instrument(model):
    """Record (start_frame, frames, per-frame timesteps, commit) for every DiT call."""
    calls, forward = [], model.forward

    def recording(x, t, context, cache=None, plan=None, start_frame=0, attn_mask=None):
        commit = plan is not None and plan.commit
        calls.append((start_frame, x.shape[1], [round(v, 2) for v in t[0].tolist()], commit))
        return forward(x, t, context, cache=cache, plan=plan, start_frame=start_frame, attn_mask=attn_mask)

    model.forward = recording
    return calls


def record_draws(monkeypatch):
    draws, randn = [], torch.randn

    def recording(*args, **kwargs):
        out = randn(*args, **kwargs)
        draws.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "randn", recording)
    return draws


def test_self_forcing_calls_for_21_frames(model, embeds):
    calls = instrument(model)
    SelfForcingPipeline(model)(Request(embeds, 21, seed=0))
    assert len(calls) == 7 * (4 + 1)
    for j in range(7):
        block = calls[5 * j : 5 * j + 5]
        assert [c[0] for c in block] == [3 * j] * 5 and all(c[1] == 3 for c in block)
        assert [c[2][0] for c in block] == SF_STEPS + [0.0]
        assert [c[3] for c in block] == [False] * 4 + [True]


def test_rolling_forcing_window_table_for_21_frames(model, embeds):
    """The spec's F = 21 table: per window the frames, and each block's timestep oldest -> newest."""
    table = [
        (0, 3, [1000]), (0, 6, [952.38, 1000]), (0, 9, [882.35, 952.38, 1000]),
        (0, 12, [769.23, 882.35, 952.38, 1000]), (0, 15, RF_STEPS[::-1]), (3, 18, RF_STEPS[::-1]),
        (6, 21, RF_STEPS[::-1]), (9, 21, [555.56, 769.23, 882.35, 952.38]), (12, 21, [555.56, 769.23, 882.35]),
        (15, 21, [555.56, 769.23]), (18, 21, [555.56]),
    ]  # fmt: skip
    calls = instrument(model)
    RollingForcingPipeline(model)(Request(embeds, 21, seed=0))
    assert len(calls) == 2 * (7 + 4)
    for w, (s, e, per_block) in enumerate(table):
        denoise, clean = calls[2 * w], calls[2 * w + 1]
        assert denoise[:2] == (s, e - s) and not denoise[3]
        assert denoise[2] == [t for t in per_block for _ in range(3)]
        assert clean == (s, 3, [0.0, 0.0, 0.0], True)


def test_rng_order_self_forcing(model, embeds, monkeypatch):
    draws = record_draws(monkeypatch)
    SelfForcingPipeline(model)(Request(embeds, 9, seed=0))
    assert draws == [(1, 9, 16, 8, 12)] + [(1, 3, 16, 8, 12)] * (3 * 3)


def test_rng_order_rolling_forcing(model, embeds, monkeypatch):
    draws = record_draws(monkeypatch)
    RollingForcingPipeline(model)(Request(embeds, 21, seed=0))
    expected = [(1, 21, 16, 8, 12)]
    for w in range(11):  # head windows draw w + 1 times; later ones (blocks - 1) times, full-window shapes
        first, last = max(0, w - 4), min(6, w)
        n = 3 * (last - first + 1)
        count = w + 1 if w < 4 else last - first
        expected += [(1, n, 16, 8, 12)] * count
    assert draws == expected


@pytest.mark.parametrize("pipeline", [SelfForcingPipeline, RollingForcingPipeline])
def test_same_seed_same_latents_and_explicit_noise(model, embeds, pipeline):
    a = pipeline(model)(Request(embeds, 15, seed=7)).latents
    b = pipeline(model)(Request(embeds, 15, seed=7)).latents
    c = pipeline(model)(Request(embeds, 15, seed=8)).latents
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 15, 16, 8, 12, generator=gen)
    d = pipeline(model)(Request(embeds, 15, noise=noise, generator=gen)).latents
    assert torch.equal(a, d)


def recomputed_kv(model, embeds, latents, mask):
    """Per layer, rotated keys and values `[B, F*T, H, D]` of one masked forward over `latents` at t = 0."""
    cfg, captured, hooks = model.config, {}, []
    for n, blk in enumerate(model.blocks):
        hooks.append(
            blk.self_attn.norm_k.register_forward_hook(lambda m, i, o, n=n: captured.update({("k", n): o}))
        )
        hooks.append(
            blk.self_attn.v.register_forward_hook(lambda m, i, o, n=n: captured.update({("v", n): o}))
        )
    with torch.no_grad():
        model(latents, torch.zeros(latents.shape[:2]), model.encode_context(embeds), attn_mask=mask)
    for h in hooks:
        h.remove()
    freqs = model.rope.grid_freqs(0, latents.shape[1], cfg.tokens_per_frame, "cpu")
    heads = (cfg.num_heads, cfg.head_dim)
    return [
        (apply_rope(captured[("k", n)].unflatten(-1, heads), freqs), captured[("v", n)].unflatten(-1, heads))
        for n in range(cfg.num_layers)
    ]


def test_self_forcing_cache_equals_recomputation(model, embeds, tiny_config, captured_caches):
    """The final cached keys/values equal a from-scratch block-causal pass over the accepted latents at t = 0."""
    out = SelfForcingPipeline(model)(Request(embeds, 9, seed=1))
    cache = captured_caches[0]
    kv = recomputed_kv(model, embeds, out.latents, block_causal_mask(9, 3, tiny_config.tokens_per_frame))
    assert cache.frame_indices == list(range(9))
    for n, (k, v) in enumerate(kv):
        torch.testing.assert_close(cache.k[n, :, : cache.length], k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.v[n, :, : cache.length], v, rtol=1e-5, atol=1e-5)


def test_self_forcing_rolling_cache_equals_recomputation(model, embeds, tiny_config, captured_caches):
    """A 9-frame cache with 3 sink frames over 18 frames: room for the sink, one earlier block and the new one, so
    block j was committed attending to block 0, block j-1 and itself; one forward with that mask recomputes it.
    The cache ends with frames 0-2 and 12-17."""
    config = SelfForcingConfig(cache_frames=9, sink_frames=3)
    out = SelfForcingPipeline(model, config)(Request(embeds, 18, seed=1))
    cache, T = captured_caches[0], tiny_config.tokens_per_frame
    blocks = 6
    seen = torch.zeros(blocks, blocks, dtype=torch.bool)
    for j in range(blocks):
        seen[j, 0] = True
        seen[j, max(1, j - 1) : j + 1] = True
    mask = seen.repeat_interleave(3 * T, 0).repeat_interleave(3 * T, 1)
    kv = recomputed_kv(model, embeds, out.latents, mask)
    assert cache.frame_indices == [0, 1, 2, *range(12, 18)]
    rows = torch.cat([torch.arange(0, 3 * T), torch.arange(12 * T, 18 * T)])
    for n, (k, v) in enumerate(kv):
        torch.testing.assert_close(cache.k[n, :, : cache.length], k[:, rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.v[n, :, : cache.length], v[:, rows], rtol=1e-5, atol=1e-5)


def test_self_forcing_long_rollout_evicts_with_sink(model, embeds):
    calls = instrument(model)
    config = SelfForcingConfig(cache_frames=9, sink_frames=3)
    out = SelfForcingPipeline(model, config)(Request(embeds, 24, seed=0))
    assert out.latents.shape[1] == 24 and torch.isfinite(out.latents).all()
    assert [c[0] for c in calls if c[3]] == list(range(0, 24, 3))


def test_self_forcing_sink_frames_stay(model, embeds, monkeypatch):
    seen, original = [], kv_cache.KVCache.evict_oldest

    def spy(self, n):
        evicted = original(self, n)
        seen.append((evicted, list(self.frame_indices)))
        return evicted

    monkeypatch.setattr(kv_cache.KVCache, "evict_oldest", spy)
    SelfForcingPipeline(model, SelfForcingConfig(cache_frames=9, sink_frames=3))(Request(embeds, 18, seed=0))
    assert seen[3] == ([3, 4, 5], [0, 1, 2, 6, 7, 8])
    assert seen[5] == ([9, 10, 11], [0, 1, 2, 12, 13, 14])


def test_input_errors(model, embeds):
    with pytest.raises(UserError, match="multiple of 3"):
        SelfForcingPipeline(model)(Request(embeds, 10, seed=0))
    with pytest.raises(UserError, match="at least 15 latent frames"):
        RollingForcingPipeline(model)(Request(embeds, 12, seed=0))
    with pytest.raises(UserError, match="global cache"):
        SelfForcingPipeline(model, SelfForcingConfig(rolling=False))(Request(embeds, 24, seed=0))
    with pytest.raises(UserError, match="prompt_embeds"):
        SelfForcingPipeline(model)(Request(torch.randn(1, 9, 7), 9, seed=0))
    with pytest.raises(UserError, match="seed"):
        SelfForcingPipeline(model)(Request(embeds, 9))
    with pytest.raises(ValueError, match="sink_frames"):
        SelfForcingConfig(cache_frames=3, sink_frames=3)
    with pytest.raises(ValueError, match="attention_frames"):
        RollingForcingConfig(cache_frames=20, attention_frames=21)


def test_rolling_forcing_data_flow_follows_the_spec(model, embeds, monkeypatch):
    """Replay docs/spec.md#rolling-forcing-loop from the recorded calls and draws: which tensor feeds each window,
    what is re-noised and stored, what each clean pass commits, what is output (F = 21: head, full and tail
    windows)."""
    from tokentrim.wan.scheduler import FlowMatchSchedule

    calls, forward = [], model.forward

    def recording(x, t, context, cache=None, plan=None, start_frame=0, attn_mask=None):
        out = forward(x, t, context, cache=cache, plan=plan, start_frame=start_frame, attn_mask=attn_mask)
        calls.append((start_frame, x.clone(), t.clone(), plan is not None and plan.commit, out.clone()))
        return out

    model.forward = recording
    draws, randn = [], torch.randn

    def drawing(*args, **kwargs):
        draws.append(randn(*args, **kwargs))
        return draws[-1]

    monkeypatch.setattr(torch, "randn", drawing)
    F, K, B = 21, 5, 3
    gen = torch.Generator().manual_seed(4)
    noise = randn(1, F, 16, 8, 12, generator=gen)
    out = RollingForcingPipeline(model)(Request(embeds, F, noise=noise, generator=gen))
    sched = FlowMatchSchedule(5.0)
    steps = sched.warp([1000, 800, 600, 400, 200])
    noisy, final, calls_iter, draw_iter = (
        torch.zeros_like(noise),
        torch.empty_like(noise),
        iter(calls),
        iter(draws),
    )
    for w in range(F // B + K - 1):
        first, last = max(0, w - K + 1), min(F // B - 1, w)
        s, e = first * B, (last + 1) * B
        start, x, t, commit, flow = next(calls_iter)  # the window's denoising pass
        fresh = e - s == K * B or s == 0
        expected = torch.cat([noisy[:, s : e - B], noise[:, e - B : e]], 1) if fresh else noisy[:, s:e]
        assert (start, commit) == (s, False) and torch.equal(x, expected), w
        levels = [w - b for b in range(first, last + 1)]
        assert torch.equal(t[0], steps[levels].repeat_interleave(B))
        x0 = sched.to_x0(flow, x, t)
        for i, b in enumerate(range(first, last + 1)):
            if levels[i] < K - 1:
                eps = next(draw_iter)
                assert eps.shape == x0.shape  # one full-window draw per unfinished block
                renoised = sched.add_noise(x0, eps, steps[levels[i] + 1].expand(x0.shape[:2]))
                noisy[:, b * B : (b + 1) * B] = renoised[:, i * B : (i + 1) * B]
        final[:, s:e] = x0
        start, x, t, commit, _ = next(calls_iter)  # the clean pass commits the oldest block at t = 0
        assert (start, commit) == (s, True) and torch.equal(x, x0[:, :B]) and (t == 0).all()
    assert next(calls_iter, None) is None and next(draw_iter, None) is None
    assert torch.equal(out.latents, final)


# Observed first frames (`prefix`) ---------------------------------------------------------------------------------
def test_self_forcing_observed_block_equal_to_its_own_gives_the_same_video(model, embeds, tiny_config):
    """Observing the block the model generated itself, with the generator advanced past that block's re-noising
    draws, must continue exactly as the unobserved run did (TokenTrim decisions included)."""
    from tokentrim_core import TokenTrim, TokenTrimConfig

    def hook():
        return TokenTrim(TokenTrimConfig(p=0.2, lam=0.0, warmup=1), tiny_config.patch_size[1:])

    pipe = SelfForcingPipeline(model)
    first = pipe(Request(embeds, 24, seed=4, hook=hook()))
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(first.latents.shape, generator=gen)
    for _ in range(len(SF_STEPS) - 1):  # block 0's re-noising draws
        torch.randn(1, 3, *first.latents.shape[2:], generator=gen)
    # the initial noise covers the generated frames only
    second = pipe(
        Request(embeds, 24, noise=noise[:, 3:], generator=gen, start=first.latents[:, :3], hook=hook())
    )
    assert torch.equal(second.latents, first.latents)
    actions = [[r.action for r in out.records] for out in (first, second)]
    assert actions[0] == actions[1] and "prune" in actions[0]  # lam = 0: the comparison covers prunes


@pytest.mark.parametrize("blocks", [1, 2])
def test_rolling_forcing_after_observed_blocks_is_the_same_loop_shifted(model, embeds, blocks):
    """With P observed blocks: P clean passes at frames 0, 3, ..., then the DiT calls of an unobserved run over
    the remaining frames with every start frame shifted by 3 P (same windows and levels), except the head
    windows' clean passes of a not yet final block (in the unobserved run they only overwrite block 0)."""
    calls = instrument(model)
    plain = RollingForcingPipeline(model)(Request(embeds, 15, seed=0))
    head = len(RF_STEPS) - 1  # windows 0..3 commit block 0 before it is final
    kept = [c for i, c in enumerate(calls) if not (i % 2 == 1 and i // 2 < head)]
    assert len(kept) == len(calls) - head and all(c[0] == 0 and c[3] for c in calls[1 : 2 * head : 2])
    expected = [(s + 3 * blocks, n, t, c) for s, n, t, c in kept]
    calls.clear()
    prefix = torch.randn(1, 3 * blocks, *plain.latents.shape[2:], generator=torch.Generator().manual_seed(1))
    out = RollingForcingPipeline(model)(Request(embeds, 15 + 3 * blocks, seed=0, start=prefix))
    assert calls[:blocks] == [(3 * b, 3, [0.0] * 3, True) for b in range(blocks)]
    assert calls[blocks:] == expected
    assert torch.equal(out.latents[:, : 3 * blocks], prefix)


def test_self_forcing_observed_blocks_are_committed_and_returned(model, embeds, monkeypatch):
    prefix = torch.randn(1, 6, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    calls = instrument(model)
    draws = record_draws(monkeypatch)
    out = SelfForcingPipeline(model)(Request(embeds, 12, seed=0, start=prefix))
    assert torch.equal(out.latents[:, :6], prefix)
    assert calls[:2] == [(0, 3, [0.0] * 3, True), (3, 3, [0.0] * 3, True)]
    assert [c[0] for c in calls[2:]] == [6] * 5 + [9] * 5
    assert draws == [(1, 6, 16, 8, 12)] + [(1, 3, 16, 8, 12)] * (
        2 * 3
    )  # noise for the generated frames, 2 blocks


def test_observed_frames_errors(model, embeds):
    with pytest.raises(UserError, match="multiple of 3"):
        SelfForcingPipeline(model)(Request(embeds, 9, seed=0, start=torch.zeros(1, 2, 16, 8, 12)))
    with pytest.raises(UserError, match=r"latents \[1, P, 16, 8, 12\]"):
        SelfForcingPipeline(model)(Request(embeds, 9, seed=0, start=torch.zeros(1, 3, 16, 8, 8)))
    with pytest.raises(UserError, match="at least 6 latent frames"):
        SelfForcingPipeline(model)(Request(embeds, 3, seed=0, start=torch.zeros(1, 3, 16, 8, 12)))
    with pytest.raises(UserError, match="at least 18 latent frames"):
        RollingForcingPipeline(model)(Request(embeds, 15, seed=0, start=torch.zeros(1, 3, 16, 8, 12)))


def test_own_key_mask_by_hand():
    """Two cached segments (3 rows and a gathered 2), then the call's own 2 frames of 4 tokens: positions 1 and 3
    of every own frame are masked for every query; cached keys stay."""
    from tokentrim.pipelines.common import own_key_mask

    plan = kv_cache.CallPlan(
        start_frame=2,
        num_frames=2,
        reads=(kv_cache.Segment(0, 3), kv_cache.Segment(3, 8, index=torch.tensor([4, 6]))),
        append_current=True,
    )
    mask = own_key_mask(plan, 2, 4, torch.tensor([1, 3]), torch.device("cpu"))
    row = [True] * 5 + [True, False, True, False] * 2
    assert mask.shape == (8, 13) and mask.tolist() == [row] * 8


def test_prune_window_masks_only_regenerations():
    """rolling_forcing.prune_window: the rollout equals the plain one up to the first prune, then differs (the
    regeneration's own window keys at the pruned positions are masked); refused with the static cache."""
    from tokentrim.app.api import Pipeline
    from tokentrim.app.backends import PRESETS
    from tokentrim.app.run_config import default_config_path, load_run_config
    from tokentrim.toy import HELD_OUT_SCENES, observed_start

    toy = PRESETS["toy"].load(torch.device("cpu"), torch.float32, True)
    prompt, prefix = observed_start(HELD_OUT_SCENES)
    out = {}
    for on in ("false", "true"):
        overrides = ["flowmo.mode=off", "tokentrim.lam=0", f"rolling_forcing.prune_window={on}"]
        run = load_run_config(default_config_path("rolling_forcing", "toy"), overrides)
        out[on] = Pipeline(toy, run).generate(prompt, latent_frames=18, seed=0, start=prefix, decode=False)
    first = next(r.block for r in out["false"].records if r.action == "prune")
    a, b = out["false"].latents, out["true"].latents
    assert torch.equal(a[:, : 3 * first], b[:, : 3 * first]) and not torch.equal(
        a[:, 3 * first :], b[:, 3 * first :]
    )
    with pytest.raises(ValueError, match="dynamic"):
        RollingForcingConfig(prune_window=True, cache="static")
