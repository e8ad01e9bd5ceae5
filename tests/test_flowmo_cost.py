"""FlowMo's cost in model passes, counted through a wrapper, against the cost model of
docs/tokentrim.md#42-the-cost-model.

Counted per run: forward calls without autograd (denoising steps, clean passes, FlowMo's last evaluation),
differentiable forward calls, backward passes through the model, and forward re-runs of the DiT blocks in the
backward pass (gradient checkpointing). The expected numbers are written out by hand from the cost model:

Self Forcing, S = 4 steps, nb blocks: plain = nb (S + 1) calls without autograd; each guided block adds, per
guided step, I differentiable forwards and I backwards (I = iterations) and nothing else, because FlowMo's last
evaluation is that step's DiT call.
Rolling Forcing, K = 5 levels, nb blocks: nb + K - 1 windows, each one window call and one clean pass. With
scope "window" each window holding a guided block adds I differentiable forwards and I backwards of the window;
with scope "block" each guided block does, plus one evaluation without autograd, of which one per window is the
window's own call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from tokentrim.pipelines import Request, RollingForcingPipeline, Rollout, SelfForcingPipeline
from tokentrim.pipelines.common import NoHook
from tokentrim_core import FlowMoConfig, Verdict, motion_variance


@dataclass
class Passes:
    plain: list[int] = field(default_factory=list)  # frames of each forward without autograd
    grad: list[int] = field(default_factory=list)  # frames of each differentiable forward
    backward: int = 0
    recomputed: int = 0  # block re-runs in the backward pass (per model, counted on the first DiT block)
    block_runs: int = 0


def count_passes(model, monkeypatch) -> Passes:
    """Wrap the model's forward (and its first DiT block) to count passes."""
    passes, forward, first = Passes(), type(model).forward, model.blocks[0]
    block_forward = first.forward

    def counting(self, x, t, *args, **kwargs):
        out = forward(self, x, t, *args, **kwargs)
        if out.requires_grad:
            passes.grad.append(x.shape[1])

            def backward_seen(grad):
                passes.backward += 1
                return grad

            out.register_hook(backward_seen)
        else:
            passes.plain.append(x.shape[1])
        return out

    def block_counting(*args, **kwargs):
        passes.block_runs += 1
        return block_forward(*args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    monkeypatch.setattr(first, "forward", block_counting)
    return passes


def run(model, embeds, monkeypatch, pipeline, frames, flowmo, hook=None) -> Passes:
    passes = count_passes(model, monkeypatch)
    pipeline(model)(Request(embeds, frames, seed=2, flowmo=flowmo, hook=hook))
    passes.recomputed = passes.block_runs - len(passes.plain) - len(passes.grad)
    return passes


# Self Forcing, 9 frames = 3 blocks of 3 frames; every call is one block: 3 x (4 steps + 1 clean pass) = 15
SF_CASES = {
    "off": (FlowMoConfig(), 0, 0),
    "first_block": (FlowMoConfig(mode="first_block"), 1, 0),  # block 0 at step 0, one Adam step
    "every_block": (FlowMoConfig(mode="every_block"), 3, 0),  # 3 blocks x 1 step x 1 iteration
    # 3 blocks x 2 steps x 2 iterations, each differentiable forward's blocks re-run in its backward
    "every_block_2x2_checkpointed": (
        FlowMoConfig(mode="every_block", steps=(0, 1), iterations=2, checkpointing=True),
        12,
        12,
    ),
    "legacy_every_block": (FlowMoConfig.legacy(mode="every_block"), 9, 9),  # 3 blocks x 3 iterations
}


@pytest.mark.parametrize("name", sorted(SF_CASES))
def test_self_forcing_passes(model, embeds, monkeypatch, name):
    cfg, grad, recomputed = SF_CASES[name]
    passes = run(model, embeds, monkeypatch, SelfForcingPipeline, 9, cfg)
    assert passes.plain == [3] * 15  # FlowMo's last evaluation is the step's call: no call is added
    assert passes.grad == [3] * grad
    assert passes.backward == grad
    assert passes.recomputed == recomputed


# Rolling Forcing, 15 frames = 5 blocks, windows 0..8 over 3, 6, 9, 12, 15, 12, 9, 6, 3 frames, a clean pass of
# 3 frames after each: 18 calls without autograd. Block b is at level 0 in window b, at level 1 in window b + 1.
WINDOWS = [3, 6, 9, 12, 15, 12, 9, 6, 3]
PER_BLOCK = [3, 6, 6, 9, 9, 12, 12, 15, 15, 12]  # windows 0-5 once per guided block (two in windows 1-4)
RF_CASES = {  # (config, frames of the differentiable forwards, extra window calls without autograd)
    "off": (FlowMoConfig(), [], []),
    # block 0: level 0 in window 0 (3 frames), level 1 in window 1 (6 frames)
    "first_block": (FlowMoConfig(mode="first_block", steps=(0, 1)), [3, 6], []),
    # windows 0-5 hold a block at level 0 or 1: one joint optimisation each
    "every_block": (FlowMoConfig(mode="every_block", steps=(0, 1)), WINDOWS[:6], []),
    # one optimisation per guided block: in windows 1-4 the first one's last evaluation is extra
    "every_block_per_block": (
        FlowMoConfig(mode="every_block", steps=(0, 1), scope="block"),
        PER_BLOCK,
        [6, 9, 12, 15],
    ),
    "every_block_per_block_2x_checkpointed": (  # as the legacy setting does, with 2 iterations
        FlowMoConfig(mode="every_block", steps=(0, 1), scope="block", iterations=2, checkpointing=True),
        [n for n in PER_BLOCK for _ in range(2)],
        [6, 9, 12, 15],
    ),
}


@pytest.mark.parametrize("name", sorted(RF_CASES))
def test_rolling_forcing_passes(model, embeds, monkeypatch, name):
    cfg, grad, extra = RF_CASES[name]
    passes = run(model, embeds, monkeypatch, RollingForcingPipeline, 15, cfg)
    assert sorted(passes.plain) == sorted(
        WINDOWS + [3] * 9 + extra
    )  # windows, clean passes, extra evaluations
    assert passes.grad == grad
    assert passes.backward == len(grad)
    assert passes.recomputed == (len(grad) if cfg.checkpointing else 0)


class PruneOnce(NoHook):
    """A hook that prunes block 1 once (position 0) and accepts everything else."""

    records: list = []

    def propose(self, block, frames, x0):
        return Verdict(True, torch.tensor([0])) if block == 1 else Verdict(False)

    def regenerated(self, block, x0, tokens_removed, regenerations):
        return Verdict(False)

    def accepted(self, block, x0):
        return x0


def test_a_regeneration_repeats_the_guidance_in_self_forcing_only(model, embeds, monkeypatch):
    cfg = FlowMoConfig(mode="every_block")
    sf = run(model, embeds, monkeypatch, SelfForcingPipeline, 9, cfg, hook=PruneOnce())
    assert sf.plain == [3] * 19 and sf.grad == [3] * 4  # block 1 again: 4 steps, its guided step again
    monkeypatch.undo()
    rf = run(model, embeds, monkeypatch, RollingForcingPipeline, 15, cfg, hook=PruneOnce())
    # block 1 is final in window 5 (12 frames): its window pass again, from the same guided input
    assert sorted(rf.plain) == sorted(WINDOWS + [3] * 9 + [12])
    assert rf.grad == WINDOWS[:5]  # the dataclass default guides level 0 only: windows 0-4


@pytest.mark.parametrize("pipeline, frames", [(SelfForcingPipeline, 6), (RollingForcingPipeline, 15)])
@pytest.mark.parametrize(
    "cfg",
    [
        FlowMoConfig(mode="every_block", steps=(0, 1)),  # the kept latent is the last one evaluated
        # lr far too large: the kept latent is an earlier one (its x0 is from a differentiable, checkpointed call)
        FlowMoConfig(mode="every_block", iterations=2, lr=0.5, checkpointing=True),
    ],
)
def test_reused_x0_is_a_fresh_evaluation_bit_for_bit(model, embeds, monkeypatch, pipeline, frames, cfg):
    compared, guide = [], Rollout.guide

    def checking(self, x, t, start, blocks=None):
        guided, x0 = guide(self, x, t, start, blocks)
        fresh = self.predict_x0(guided, t, start)  # the loop's own call, as it ran before issue 22
        compared.append(torch.equal(x0, fresh))
        return guided, fresh

    # (FlowMoConfig.legacy runs reuse x0 too: the golden FlowMo rollouts, recorded with a second evaluation,
    # are reproduced bit for bit by tests/test_golden.py)
    reused = pipeline(model)(Request(embeds, frames, seed=2, flowmo=cfg))
    monkeypatch.setattr(Rollout, "guide", checking)
    evaluated = pipeline(model)(Request(embeds, frames, seed=2, flowmo=cfg))
    assert compared and all(compared)
    assert torch.equal(reused.latents, evaluated.latents)
    assert reused.flowmo_losses == evaluated.flowmo_losses


@pytest.mark.parametrize("pipeline, frames", [(SelfForcingPipeline, 9), (RollingForcingPipeline, 15)])
def test_every_guided_call_lowers_its_objective(model, embeds, monkeypatch, pipeline, frames, tiny_config):
    """With the default settings (one Adam step of lr 1e-3), each guidance call keeps a latent whose x0 scores
    lower than the unguided one's; and the loss recorded is the motion variance of the x0 the loop uses."""
    kept, guide = [], Rollout.guide

    def recording(self, x, t, start, blocks=None):
        guided, x0 = guide(self, x, t, start, blocks)
        kept.append(float(motion_variance(x0, tiny_config.patch_size[1:])))
        return guided, x0

    monkeypatch.setattr(Rollout, "guide", recording)
    out = pipeline(model)(Request(embeds, frames, seed=2, flowmo=FlowMoConfig(mode="every_block")))
    assert len(out.flowmo_losses) == frames // 3  # one guided step per block (step 0)
    for losses, score in zip(out.flowmo_losses, kept, strict=True):
        assert len(losses) == 2 and losses[1] < losses[0]
        assert score == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("pipeline, frames", [(SelfForcingPipeline, 9), (RollingForcingPipeline, 15)])
def test_off_is_the_plain_loop_pass_for_pass(model, embeds, monkeypatch, pipeline, frames):
    plain = pipeline(model)(Request(embeds, frames, seed=2))
    passes = count_passes(model, monkeypatch)
    off = pipeline(model)(Request(embeds, frames, seed=2, flowmo=FlowMoConfig(mode="off", steps=(0, 1))))
    assert torch.equal(plain.latents, off.latents)
    assert passes.grad == [] and passes.backward == 0
    assert len(passes.plain) == (15 if pipeline is SelfForcingPipeline else 18)
