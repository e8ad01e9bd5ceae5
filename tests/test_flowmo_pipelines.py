"""FlowMo inside both pipelines on the tiny DiT: the objective falls, weights stay, the right blocks are guided."""

import pytest
import torch

from tokentrim.pipelines import Request, RollingForcingPipeline, Rollout, SelfForcingPipeline
from tokentrim_core import FlowMoConfig

PIPELINES = [(SelfForcingPipeline, 9), (RollingForcingPipeline, 15)]


def record_guided(monkeypatch):
    """(start_frame, guided block rows of the call) of every `Rollout.guide` call."""
    calls, guide = [], Rollout.guide

    def recording(self, x, t, start, blocks=None):
        rows = [range(x.shape[1])] if blocks is None else list(blocks)
        calls.append((start, [(r.start, r.stop) for r in rows]))
        return guide(self, x, t, start, blocks)

    monkeypatch.setattr(Rollout, "guide", recording)
    return calls


@pytest.mark.parametrize("pipeline, frames", PIPELINES)
def test_off_is_bit_identical_to_no_flowmo(model, embeds, pipeline, frames):
    plain = pipeline(model)(Request(embeds, frames, seed=2))
    off = pipeline(model)(Request(embeds, frames, seed=2, flowmo=FlowMoConfig(mode="off", steps=(0, 1))))
    assert torch.equal(plain.latents, off.latents)
    assert off.flowmo_losses == []


@pytest.mark.parametrize("pipeline, frames", PIPELINES)
def test_objective_falls_and_weights_stay(model, embeds, pipeline, frames):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FlowMoConfig(mode="first_block", steps=(0,), iterations=6, lr=0.05, keep_best=False)
    guided = pipeline(model)(Request(embeds, frames, seed=2, flowmo=cfg))
    plain = pipeline(model)(Request(embeds, frames, seed=2))
    assert len(guided.flowmo_losses) == 1  # block 0, step 0, once
    losses = guided.flowmo_losses[0]
    assert len(losses) == cfg.iterations + 1 and losses[-1] < losses[0]
    assert not torch.equal(guided.latents[:, :3], plain.latents[:, :3])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_self_forcing_guides_the_chosen_blocks(model, embeds, monkeypatch):
    calls = record_guided(monkeypatch)
    cfg = FlowMoConfig(mode="first_block", steps=(0, 1))
    SelfForcingPipeline(model)(Request(embeds, 9, seed=2, flowmo=cfg))
    assert calls == [(0, [(0, 3)]), (0, [(0, 3)])]  # block 0 at steps 0 and 1, nothing later
    calls.clear()
    SelfForcingPipeline(model)(Request(embeds, 9, seed=2, flowmo=FlowMoConfig(mode="every_block")))
    assert calls == [(0, [(0, 3)]), (3, [(0, 3)]), (6, [(0, 3)])]


def test_rolling_forcing_guides_block_zero_rows_only(model, embeds, monkeypatch):
    calls = record_guided(monkeypatch)
    cfg = FlowMoConfig(mode="first_block", steps=(0, 1))
    RollingForcingPipeline(model)(Request(embeds, 15, seed=2, flowmo=cfg))
    # window 0 holds block 0 at level 0; window 1 holds blocks 0-1 with block 0 (its rows 0-2) at level 1
    assert calls == [(0, [(0, 3)]), (0, [(0, 3)])]


@pytest.mark.parametrize("scope, guide_calls", [("window", 6), ("block", 10)])
def test_rolling_forcing_every_block_guides_each_window_once(model, embeds, monkeypatch, scope, guide_calls):
    calls = record_guided(monkeypatch)
    cfg = FlowMoConfig(mode="every_block", steps=(0, 1), scope=scope)
    out = RollingForcingPipeline(model)(Request(embeds, 15, seed=2, flowmo=cfg))
    # 5 blocks, windows 0..8: block b is at level 0 in window b and at level 1 in window b + 1, so windows 1-4
    # hold two guided blocks (the newest at rows 3w..3w+2 while w <= 4, the one before it just below)
    assert calls == [(0, [(0, 3)])] + [(0, [(3 * w - 3, 3 * w), (3 * w, 3 * w + 3)]) for w in range(1, 5)] + [
        (3, [(9, 12)])
    ]
    assert len(out.flowmo_losses) == guide_calls  # one optimisation per window, or one per guided block


def test_checkpointing_default_follows_the_model_size(model, embeds, monkeypatch, tiny_config):
    from tokentrim.pipelines.common import flowmo_checkpointing
    from tokentrim.wan import get_preset

    seen, forward = [], type(model).forward

    def spy(self, *args, **kwargs):
        if torch.is_grad_enabled():
            seen.append(self.gradient_checkpointing)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    SelfForcingPipeline(model)(Request(embeds, 3, seed=2, flowmo=FlowMoConfig(mode="first_block")))
    assert seen == [False]  # tiny: activations are small, nothing recomputed
    seen.clear()
    cfg = FlowMoConfig(mode="first_block", checkpointing=True)
    SelfForcingPipeline(model)(Request(embeds, 3, seed=2, flowmo=cfg))
    assert seen == [True] and model.gradient_checkpointing is False
    assert flowmo_checkpointing(FlowMoConfig(), get_preset("wan2.1-t2v-1.3b")) is True
    assert flowmo_checkpointing(FlowMoConfig(), tiny_config) is False
    assert flowmo_checkpointing(FlowMoConfig(checkpointing=False), get_preset("wan2.1-t2v-1.3b")) is False


def test_checkpointing_is_exact_and_restored(model, embeds):
    runs = []
    for checkpointing in (False, True):
        cfg = FlowMoConfig(mode="first_block", iterations=3, lr=0.05, checkpointing=checkpointing)
        runs.append(SelfForcingPipeline(model)(Request(embeds, 6, seed=2, flowmo=cfg)))
        assert model.gradient_checkpointing is False
    assert runs[0].flowmo_losses[0] == pytest.approx(runs[1].flowmo_losses[0], rel=1e-5)
    torch.testing.assert_close(runs[0].latents, runs[1].latents, rtol=1e-4, atol=1e-5)
