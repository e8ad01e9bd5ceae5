"""This project's Self Forcing and Rolling Forcing loops driven through the reference-layout path — a cache in the
reference layout moved by the reference's index arithmetic (tests/reference_layout.py), the loop-agnostic
`TokenTrimController`, and `CachePruner` — give the same decisions and the same latents, bit for bit, as the
built-in path (the project's `KVCache` and the `TokenTrim` hook), on the tiny and the toy models.

Where the two cache rules coincide: "remove" under a global cache (nothing is ever evicted), "mask" under the
rolling caches (every frame keeps its rows, so the reference's token-count eviction and Rolling Forcing's anchor
offset count whole frames, as the project's cache does)."""

import pytest
import torch
from reference_layout import ReferenceAttention, ReferencePolicy, reference_cache

from tokentrim.pipelines import (
    Request,
    RollingForcingConfig,
    RollingForcingPipeline,
    SelfForcingConfig,
    SelfForcingPipeline,
)
from tokentrim.wan import build_model, get_preset
from tokentrim_core import TokenTrim, TokenTrimConfig, TokenTrimController, Verdict
from tokentrim_core.ref_cache import CachePruner

EAGER = TokenTrimConfig(lam=0.0, warmup=1)  # prunes often on random weights


class ControllerHook:
    """What a user's loop does with the controller, wired to this project's loop calls: judge each candidate
    against the previous accepted block, report each regeneration, settle the accepted block."""

    def __init__(self, controller: TokenTrimController):
        self.controller, self.previous, self.attempts = controller, None, []

    @property
    def records(self):
        return self.controller.records

    def propose(self, block, frames, x0) -> Verdict:
        self.attempts = [x0.clone()]
        verdict = self.controller.judge(self.previous, x0, block=block, frames=frames)
        return verdict if verdict.prune else self._accept(verdict)

    def regenerated(self, block, x0, tokens_removed, regenerations) -> Verdict:
        self.attempts.append(x0.clone())
        verdict = self.controller.regenerated(x0, tokens_removed=tokens_removed)
        return verdict if verdict.prune else self._accept(verdict)

    def _accept(self, verdict: Verdict) -> Verdict:
        self.controller.settle()
        self.previous = self.attempts[verdict.keep or 0]
        return verdict

    def accepted(self, block, x0):
        self.previous = x0.clone()  # what the loop commits is the next block's reference
        return x0

    def switched(self, block):
        self.controller.switched()


def on_reference_cache(pipe, mode: str):
    """Give `pipe` reference-layout caches (its own sizes) pruned by a `CachePruner` in `mode`."""
    model, cfg, T = pipe.model, pipe.config, pipe.model.config.tokens_per_frame

    def make_cache(batch, device, dtype):
        kv = reference_cache(model.config, batch, cfg.cache_frames, dtype)
        if isinstance(pipe, RollingForcingPipeline):
            pruner = CachePruner(T, sink_frames=pipe.frames_per_block, mode=mode)  # the anchor
            attention = ReferenceAttention(kv, "rolling_forcing", T, attention_frames=cfg.attention_frames,
                                           block_frames=pipe.frames_per_block, rope=model.rope, pruner=pruner)  # fmt: skip
        else:
            pruner = CachePruner(T, sink_frames=cfg.sink_frames, mode=mode)
            attention = ReferenceAttention(kv, "self_forcing", T, sink_frames=cfg.sink_frames,
                                           local_frames=cfg.cache_frames if cfg.rolling else -1, pruner=pruner)  # fmt: skip
        return ReferencePolicy(attention, pruner)

    pipe.make_cache = make_cache
    return pipe


def rows(records):
    return [{k: v for k, v in r.to_dict().items() if k != "score_ms"} for r in records]


def assert_same(make_pipe, mode, embeds, frames, config, patch, **call):
    builtin = make_pipe()(Request(embeds, frames, hook=TokenTrim(config, patch), **call))
    hook = ControllerHook(TokenTrimController(config, patch))
    reference = on_reference_cache(make_pipe(), mode)(Request(embeds, frames, hook=hook, **call))
    assert sum(r.action == "prune" for r in builtin.records) >= 2, "the case must prune to test anything"
    assert rows(reference.records) == rows(builtin.records)
    assert torch.equal(reference.latents, builtin.latents)


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    embeds = torch.randn(1, 9, cfg.text_dim, generator=torch.Generator().manual_seed(5))
    return build_model(cfg, seed=3), embeds


@pytest.mark.parametrize(
    "sampler, frames, mode, batch, seed",
    [
        (
            SelfForcingConfig(cache_frames=21, sink_frames=0, rolling=False),
            21,
            "remove",
            1,
            0,
        ),  # global cache
        (
            SelfForcingConfig(cache_frames=21, sink_frames=3, rolling=False),
            21,
            "remove",
            1,
            3,
        ),  # ... with a sink
        (
            SelfForcingConfig(cache_frames=9, sink_frames=3),
            24,
            "mask",
            1,
            2,
        ),  # rolling cache with sink: evicts
        (SelfForcingConfig(cache_frames=9, sink_frames=0), 24, "mask", 2, 1),
    ],
)
def test_self_forcing_tiny(tiny, sampler, frames, mode, batch, seed):
    model, embeds = tiny
    embeds = embeds.expand(batch, -1, -1).contiguous()
    assert_same(lambda: SelfForcingPipeline(model, sampler), mode, embeds, frames, EAGER, (2, 2), seed=seed)


def test_rolling_forcing_tiny(tiny):
    model, embeds = tiny
    assert_same(lambda: RollingForcingPipeline(model), "mask", embeds, 45, EAGER, (2, 2), seed=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "pipeline, sampler, frames, mode",
    [
        (SelfForcingPipeline, SelfForcingConfig(timestep_shift=1.0, rolling=False), 21, "remove"),
        (SelfForcingPipeline, SelfForcingConfig(timestep_shift=1.0, cache_frames=12), 36, "mask"),
        (RollingForcingPipeline, RollingForcingConfig(timestep_shift=1.0), 30, "mask"),
    ],
)
def test_toy(pipeline, sampler, frames, mode):
    from tokentrim.toy import load_toy, observed_start

    toy, text, _ = load_toy()
    prompt, prefix = observed_start(20_000_001)
    with torch.no_grad():
        embeds = text([prompt])
    config = TokenTrimConfig(lam=0.5)
    patch = toy.config.patch_size[1:]
    assert_same(lambda: pipeline(toy, sampler), mode, embeds, frames, config, patch, seed=0, start=prefix)
