"""Causal Forcing (docs/spec.md#causal-forcing): the frame-wise loop's calls, step lists and RNG order derived
from the spec; chunk-wise and long video as Self Forcing / Rolling Forcing run configs; checkpoint entries;
lengths past the RoPE table."""

import json
from pathlib import Path

import pytest
import torch

from tokentrim.app.run_config import load_run_config
from tokentrim.pipelines import (
    CausalForcingFramewisePipeline,
    Request,
    RollingForcingPipeline,
    SelfForcingPipeline,
)
from tokentrim.wan import build_model, get_preset, load_dit_checkpoint
from tokentrim.wan.scheduler import FlowMatchSchedule

CONFIGS = Path(__file__).resolve().parent.parent / "tokentrim" / "configs" / "causal_forcing"
WARPED = {1000: 1000.0, 750: 937.5, 500: 833.33, 250: 625.0}


def instrument(model):
    calls, forward = [], model.forward

    def recording(x, t, context, cache=None, plan=None, start_frame=0, attn_mask=None):
        calls.append((start_frame, x.shape[1], round(float(t[0, 0]), 2), plan is not None and plan.commit))
        return forward(x, t, context, cache=cache, plan=plan, start_frame=start_frame, attn_mask=attn_mask)

    model.forward = recording
    return calls


def draws_of(monkeypatch):
    draws, randn = [], torch.randn

    def recording(*args, **kwargs):
        out = randn(*args, **kwargs)
        draws.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "randn", recording)
    return draws


def sampler(name):
    return load_run_config(CONFIGS / f"{name}.yaml").sampler


@pytest.mark.parametrize(
    "name, steps, first",
    [("framewise", [1000, 750, 500, 250], [1000, 750, 500, 250]),
     ("framewise_2step", [1000, 500], [1000, 750, 500, 250]),
     ("framewise_1step", [1000], [1000, 750, 500, 250])],
)  # fmt: skip
def test_framewise_calls_step_lists_and_draws(model, embeds, monkeypatch, name, steps, first):
    """docs/spec.md#frame-wise: one frame per block; the first generated frame takes the first-chunk list; each
    frame then a clean pass at t = 0; (steps - 1) draws of [B, 1, C, H, W] per frame after one [B, F, ...] initial
    draw."""
    calls, draws = instrument(model), draws_of(monkeypatch)
    frames = 6
    CausalForcingFramewisePipeline(model, sampler(name))(Request(embeds, frames, seed=0))
    expected, expected_draws = [], [(1, frames, 16, 8, 12)]
    for j in range(frames):
        lst = first if j == 0 else steps
        expected += [(j, 1, WARPED[s], False) for s in lst] + [(j, 1, 0.0, True)]
        expected_draws += [(1, 1, 16, 8, 12)] * (len(lst) - 1)
    assert calls == expected and draws == expected_draws
    assert len(calls) == {"framewise": 30, "framewise_2step": 5 + 5 * 3, "framewise_1step": 5 + 5 * 2}[name]


def test_framewise_image_start_uses_the_first_list_on_frame_one(model, embeds, monkeypatch):
    """docs/spec.md#image-to-video: the image frame gets only the clean pass; frame 1 (the first generated) takes the 4-step list; the
    initial noise covers the generated frames only, [1, F - 1, ...], drawn before the loop."""
    image = torch.randn(1, 1, 16, 8, 12, generator=torch.Generator().manual_seed(1))
    calls, draws = instrument(model), draws_of(monkeypatch)
    out = CausalForcingFramewisePipeline(model, sampler("framewise_1step"))(
        Request(embeds, 4, seed=0, start=image)
    )
    assert calls[0] == (0, 1, 0.0, True) and torch.equal(out.latents[:, :1], image)
    assert [c for c in calls[1:6]] == [(1, 1, WARPED[s], False) for s in (1000, 750, 500, 250)] + [
        (1, 1, 0.0, True)
    ]
    assert calls[6:] == [(2, 1, 1000.0, False), (2, 1, 0.0, True), (3, 1, 1000.0, False), (3, 1, 0.0, True)]
    assert draws == [(1, 3, 16, 8, 12)] + [(1, 1, 16, 8, 12)] * 3


def test_framewise_noise_order_against_a_hand_replay(model, embeds):
    """The whole frame-wise rollout replayed from the spec with the same generator: same latents bit for bit."""
    cfg = sampler("framewise_2step")
    out = CausalForcingFramewisePipeline(model, cfg)(Request(embeds, 3, seed=5))
    sched = FlowMatchSchedule(5.0)
    first, steps = sched.warp(cfg.first_block_steps), sched.warp(cfg.denoising_steps)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 3, 16, 8, 12, generator=gen)
    from tokentrim.pipelines.self_forcing import SinkCachePolicy
    from tokentrim.wan.kv_cache import KVCache

    policy = SinkCachePolicy(KVCache(model.config, 1, 21), 3)
    ctx = model.encode_context(embeds)
    with torch.no_grad():
        for j in range(3):
            lst, x = (first if j == 0 else steps), noise[:, j : j + 1]
            for i, step in enumerate(lst):
                t = step.expand(1, 1).float()
                x0 = sched.to_x0(
                    model(x, t, ctx, cache=policy.cache, plan=policy.plan(j, 1), start_frame=j), x, t
                )
                if i + 1 < len(lst):
                    x = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), lst[i + 1].expand(1, 1))
            assert torch.equal(out.latents[:, j : j + 1], x0), j
            model(
                x0,
                torch.zeros(1, 1),
                ctx,
                cache=policy.cache,
                plan=policy.plan(j, 1, commit=True),
                start_frame=j,
            )


def test_chunkwise_is_self_forcing_and_longvideo_is_rolling_forcing_with_four_levels(model, embeds):
    chunk = load_run_config(CONFIGS / "chunkwise.yaml")
    assert chunk.pipeline == "self_forcing" and chunk.sampler == load_run_config(
        CONFIGS.parent / "self_forcing.yaml").sampler  # fmt: skip
    a = SelfForcingPipeline(model, chunk.sampler)(Request(embeds, 9, seed=2)).latents
    b = SelfForcingPipeline(model)(Request(embeds, 9, seed=2)).latents
    assert torch.equal(a, b)
    long = load_run_config(CONFIGS / "longvideo.yaml")
    assert long.pipeline == "rolling_forcing" and long.sampler.denoising_steps == (1000, 750, 500, 250)
    calls = instrument(model)
    RollingForcingPipeline(model, long.sampler)(Request(embeds, 12, seed=0))
    assert len(calls) == 2 * (4 + 3)  # docs/spec.md#long-video: 2 (nb + 3) calls
    windows = [(s, n) for s, n, _, commit in calls if not commit]
    assert windows == [(0, 3), (0, 6), (0, 9), (0, 12), (3, 9), (6, 6), (9, 3)]
    with pytest.raises(Exception, match="at least 12 latent frames"):
        RollingForcingPipeline(model, long.sampler)(Request(embeds, 9, seed=0))


def test_framewise_flowmo_and_tokentrim(model, embeds):
    """FlowMo scores a frame with the two final frames before it; TokenTrim judges frames."""
    from tokentrim_core import FlowMoConfig, TokenTrim, TokenTrimConfig

    pipe = CausalForcingFramewisePipeline(model, sampler("framewise"))
    hook = TokenTrim(TokenTrimConfig(lam=0.0, warmup=1), (2, 2))
    out = pipe(Request(embeds, 6, seed=1, hook=hook, flowmo=FlowMoConfig(mode="every_block", steps=(0,), iterations=2)))  # fmt: skip
    guided = len(out.flowmo_losses)
    regenerated = sum(r.regenerations for r in out.records if r.frames[0] >= 2)
    assert guided == (6 - 2) + regenerated  # frames 2..5 and their regenerations
    assert all(len(losses) == 3 and losses[-1] <= losses[0] + 1e-6 for losses in out.flowmo_losses)
    assert [r.frames for r in out.records] == [(j, j + 1) for j in range(6)]
    first = pipe(Request(embeds, 6, seed=1, flowmo=FlowMoConfig(mode="first_block", steps=(0,))))
    assert len(first.flowmo_losses) == 1  # frame 2 only: the first 3-frame chunk's scorable frame


def test_checkpoint_entries_by_release(tmp_path, tiny_config):
    """docs/spec.md#causal-forcing-checkpoints: chunk-wise reads `generator`, the frame-wise / long-video files `generator_ema`; overridable."""
    ema, plain = build_model(tiny_config, seed=1), build_model(tiny_config, seed=2)
    state = {"generator_ema": {f"model._fsdp_wrapped_module.{k}": v for k, v in ema.state_dict().items()},
             "generator": {f"model.{k}": v for k, v in plain.state_dict().items()}}  # fmt: skip
    for folder, want in (("chunkwise", plain), ("framewise", ema)):
        path = tmp_path / folder / "causal_forcing.pt"
        path.parent.mkdir()
        torch.save(state, path)
        got = load_dit_checkpoint(build_model(tiny_config, device="meta"), path)
        assert torch.equal(got.blocks[0].self_attn.q.weight, want.blocks[0].self_attn.q.weight), folder
    forced = load_dit_checkpoint(build_model(tiny_config, device="meta"), tmp_path / "chunkwise" / "causal_forcing.pt",
                                 use_ema=True)  # fmt: skip
    assert torch.equal(forced.blocks[0].self_attn.q.weight, ema.blocks[0].self_attn.q.weight)
    lonely = tmp_path / "chunkwise" / "longvideo.pt"
    torch.save({"generator": state["generator"]}, lonely)
    from tokentrim.errors import UserError

    with pytest.raises(UserError, match="'generator_ema' entry"):
        load_dit_checkpoint(build_model(tiny_config, device="meta"), lonely)


def test_past_the_rope_table_equals_a_long_enough_table(embeds):
    """120 frames with a 64-position table == the same with a 1024-position table, bit for bit (both loops)."""
    short = build_model(get_preset("tiny").replace(rope_max_seq_len=64), seed=3)
    long = build_model(get_preset("tiny"), seed=3)
    for pipe in (SelfForcingPipeline, RollingForcingPipeline):
        a = pipe(short)(Request(embeds, 120, seed=0)).latents
        b = pipe(long)(Request(embeds, 120, seed=0)).latents
        assert torch.equal(a, b), pipe.__name__


@pytest.mark.slow
def test_every_causal_forcing_setup_runs_through_the_cli(tmp_path, capsys):
    from tokentrim.app.cli import main

    for name in ("chunkwise", "framewise", "framewise_2step", "framewise_1step", "longvideo"):
        config = load_run_config(CONFIGS / f"{name}.yaml")
        out = tmp_path / f"{name}.mp4"
        assert main(["generate", "--preset", "tiny", "--pipeline", config.pipeline, "--config",
                     str(CONFIGS / f"{name}.yaml"), "--prompt", "a cat", "--latent-frames", "12",
                     "--out", str(out)]) == 0  # fmt: skip
        log = json.loads(out.with_suffix(".json").read_text())
        assert len(log["blocks"]) == (12 if "framewise" in name else 4) and out.is_file()
