"""TokenTrim wired into both pipelines: bit-identity when it does nothing, and an injected corruption that is
detected, pruned from the cache (never from the sink / anchor), and regenerated away."""

import pytest
import torch

from tokentrim.pipelines import Request, RollingForcingPipeline, SelfForcingConfig, SelfForcingPipeline
from tokentrim.pipelines.common import NoHook
from tokentrim_core import TokenTrim, TokenTrimConfig, Verdict

CORRUPTED = [3, 10, 17]  # spatial token indices on the tiny 4x6 patch grid; p = 0.125 -> ceil(3.0) = 3


class Corrupting:
    """Wraps a hook; adds a large offset to the candidate of one block at chosen token positions."""

    def __init__(self, inner, block, positions, grid_width, patch=(2, 2)):
        self.inner, self.block, self.positions = inner, block, positions
        self.grid_width, self.patch = grid_width, patch
        self.corrupted = None

    def propose(self, block, frames, x0):
        if block == self.block:
            ph, pw = self.patch
            for n in self.positions:
                h, w = divmod(n, self.grid_width)
                x0[:, :, :, h * ph : (h + 1) * ph, w * pw : (w + 1) * pw] += 25.0
            self.corrupted = x0.clone()
        return self.inner.propose(block, frames, x0)

    def regenerated(self, block, x0, tokens_removed, regenerations) -> Verdict:
        return self.inner.regenerated(block, x0, tokens_removed, regenerations)

    def accepted(self, block, x0):
        return self.inner.accepted(block, x0)

    @property
    def records(self):
        return self.inner.records


@pytest.mark.parametrize("pipeline", [SelfForcingPipeline, RollingForcingPipeline])
def test_disabled_or_idle_tokentrim_is_bit_identical(model, embeds, pipeline):
    base = pipeline(model)(Request(embeds, 18, seed=3)).latents
    off = TokenTrim(TokenTrimConfig(enabled=False), (2, 2))
    run_off = pipeline(model)(Request(embeds, 18, seed=3, hook=off))
    idle = TokenTrim(TokenTrimConfig(lam=1e9), (2, 2))  # armed, never triggers
    run_idle = pipeline(model)(Request(embeds, 18, seed=3, hook=idle))
    assert torch.equal(base, run_off.latents) and torch.equal(base, run_idle.latents)
    assert [r.action for r in run_off.records] == ["off"] * 6
    assert [r.action for r in run_idle.records] == ["warmup"] * 3 + ["accept"] * 3


def test_self_forcing_corruption_is_flagged_pruned_and_regenerated(
    model, embeds, tiny_config, captured_caches
):
    caches = captured_caches
    config = TokenTrimConfig(p=0.125, lam=2.0, warmup=2)
    hook = Corrupting(TokenTrim(config, (2, 2)), 4, CORRUPTED, tiny_config.grid_width)
    sampler = SelfForcingConfig(cache_frames=21, sink_frames=3)
    out = SelfForcingPipeline(model, sampler)(Request(embeds, 18, seed=3, hook=hook))
    record = out.records[4]
    assert record.action == "prune" and record.pruned_positions == CORRUPTED
    assert record.tokens_removed == len(CORRUPTED) * 9  # 3 positions x 9 unpinned cached frames (3..11)
    assert record.regenerated_severity < record.severity / 3
    assert all(r.action != "prune" for i, r in enumerate(out.records) if i != 4)
    cache = caches[0]
    full = list(range(tiny_config.tokens_per_frame))
    pruned = [n for n in full if n not in CORRUPTED]
    for frame in cache.frame_indices:
        expected = pruned if 3 <= frame < 12 else full  # sink 0..2 untouched; 12.. committed after the prune
        assert cache.positions(frame).tolist() == expected
    assert cache.length == 18 * tiny_config.tokens_per_frame - 27
    # the accepted block 4 is the regenerated one, without the injected offset
    assert (out.latents[:, 12:15] - hook.corrupted).abs().max() > 20


def test_rolling_forcing_prunes_working_cache_never_the_anchor(model, embeds, tiny_config, captured_caches):
    caches = captured_caches
    config = TokenTrimConfig(p=0.125, lam=2.0, warmup=2)
    hook = Corrupting(TokenTrim(config, (2, 2)), 4, CORRUPTED, tiny_config.grid_width)
    out = RollingForcingPipeline(model)(Request(embeds, 21, seed=3, hook=hook))
    record = out.records[4]
    assert record.action == "prune" and record.pruned_positions == CORRUPTED
    # at block 4's decision the cache holds the anchor (0..2) and working frames 3..11
    assert record.tokens_removed == len(CORRUPTED) * 9
    cache = caches[0]
    full = list(range(tiny_config.tokens_per_frame))
    for frame in (0, 1, 2):
        assert cache.positions(frame).tolist() == full
    for frame in range(3, 12):
        assert cache.positions(frame).tolist() == [n for n in full if n not in CORRUPTED]
    assert cache.positions(12).tolist() == full


class KeepCandidate(NoHook):
    """Prunes block 2 once, then asks the pipeline to commit the candidate (attempt 0) instead of the regeneration."""

    records = []

    def __init__(self):
        self.candidate = self.regenerated_x0 = None

    def propose(self, block, frames, x0):
        if block == 2:
            self.candidate = x0.clone()
            return Verdict(True, torch.tensor([0, 1]))
        return Verdict(False)

    def regenerated(self, block, x0, tokens_removed, regenerations):
        self.regenerated_x0 = x0.clone()
        return Verdict(False, keep=0)

    def accepted(self, block, x0):
        return x0


@pytest.mark.parametrize("pipeline", [SelfForcingPipeline, RollingForcingPipeline])
def test_a_kept_candidate_is_what_is_committed(model, embeds, pipeline):
    hook = KeepCandidate()
    out = pipeline(model)(Request(embeds, 15, seed=3, hook=hook))
    assert not torch.equal(hook.candidate, hook.regenerated_x0)  # the pruned cache changed the regeneration
    assert torch.equal(out.latents[:, 6:9], hook.candidate)
    plain = pipeline(model)(Request(embeds, 15, seed=3))
    assert torch.equal(out.latents[:, :9], plain.latents[:, :9])  # up to block 2 nothing else differs
