"""torch.compile of the DiT (`tokentrim.wan.compile`): a rollout with prunes, evictions and prompt switches compiles
a bounded number of graphs (one per call kind on the static cache) and gives the eager path's output.

Most trace with dynamo's `eager` backend (the captured graphs run the same operations: bit-exact); the last one
uses inductor, which generates and compiles C++ (g++). Tracing alone takes tens of seconds on two CPU cores: slow
tier."""

import shutil

import pytest
import torch

from tokentrim.errors import UserError
from tokentrim.pipelines import (
    Request,
    RollingForcingConfig,
    RollingForcingPipeline,
    SelfForcingConfig,
    SelfForcingPipeline,
)
from tokentrim.wan import build_model, get_preset
from tokentrim.wan.compile import compile_counts, compile_dit, counts_since
from tokentrim_core import TokenTrim, TokenTrimConfig

C = get_preset("tiny")
PRUNING = TokenTrimConfig(lam=0.0, warmup=1)


def rollout(pipe, frames: int, switch_at=()):
    gen = torch.Generator().manual_seed(5)
    embeds = torch.randn(1, 9, C.text_dim, generator=gen)
    switches = tuple((f, torch.randn(1, 12, C.text_dim, generator=gen)) for f in switch_at)
    return pipe(Request(embeds, frames, seed=1, hook=TokenTrim(PRUNING, C.patch_size[1:]), switches=switches))


def eager_and_compiled(make_pipe, layout: str, backend: str, frames: int, switch_at=()):
    """(eager output, compiled output, compile counts of the compiled rollout, counts of a second one)."""
    torch._dynamo.reset()
    model = build_model(C, seed=3)
    eager = rollout(make_pipe(model, layout), frames, switch_at)
    compile_dit(model, layout, backend)
    before = compile_counts()
    compiled = rollout(make_pipe(model, layout), frames, switch_at)
    first = counts_since(before)
    rollout(make_pipe(model, layout), frames, switch_at)
    return eager, compiled, first, counts_since(before)


def self_forcing(model, layout):
    return SelfForcingPipeline(model, SelfForcingConfig(cache_frames=9), cache=layout)


def rolling_forcing(model, layout):
    return RollingForcingPipeline(model, RollingForcingConfig(), cache=layout)


def same_decisions(a, b) -> bool:
    return [(r.action, r.pruned_positions) for r in a.records] == [
        (r.action, r.pruned_positions) for r in b.records
    ]


@pytest.mark.slow
def test_static_cache_compiles_one_graph_per_call_kind():
    """Self Forcing with evictions (9-frame cache, 30 frames), prunes and two prompt switches: the block call
    (denoising steps and commit alike) plus one re-cache call per switch (re-caching 9 frames each time: one
    kind). A second rollout compiles nothing."""
    eager, compiled, first, again = eager_and_compiled(self_forcing, "static", "eager", 30, (12, 21))
    assert sum(r.action == "prune" for r in eager.records) >= 2
    assert first["graphs"] == 2 and again["graphs"] == 2
    assert torch.equal(compiled.latents, eager.latents) and same_decisions(compiled, eager)


@pytest.mark.slow
def test_rolling_forcing_static_graphs_are_its_call_kinds():
    """Rolling Forcing's kinds: windows of 3..15 frames at the head (attending to themselves) and at the tail
    (reading the rotated anchor), the full window, the raw anchor commit, commits reading the anchor, and commits
    after it dropped out of the span: 5 + 4 + 1 + 1 + 1 + 1 = 13, however long the video."""
    eager, compiled, first, _ = eager_and_compiled(rolling_forcing, "static", "eager", 60)
    assert first["graphs"] == 13
    assert torch.equal(compiled.latents, eager.latents) and same_decisions(compiled, eager)


@pytest.mark.slow
def test_dynamic_cache_recompiles_a_bounded_number_of_times():
    eager, compiled, first, again = eager_and_compiled(self_forcing, "dynamic", "eager", 30, (12, 21))
    assert 1 <= first["graphs"] <= 8 and again["graphs"] == first["graphs"]
    assert torch.equal(compiled.latents, eager.latents) and same_decisions(compiled, eager)


def test_bad_compile_settings_are_user_errors():
    model = build_model(C, device="meta")
    with pytest.raises(UserError, match="compile_backend"):
        compile_dit(model, "static", "tensorrt")


def test_inductor_on_the_cpu_without_a_compiler_is_refused():
    """Inductor runs the compiler of `torch._inductor.config.cpp.cxx`; none found is one line, before loading."""
    import torch._inductor.config as inductor_config

    from tokentrim.wan.compile import check_compile

    with (
        inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}),
        pytest.raises(UserError, match="needs a C\\+\\+ compiler") as err,
    ):
        check_compile("inductor", "cpu")
    assert err.value.field == "compile"
    check_compile("eager", "cpu")  # tracing needs no compiler
    check_compile("inductor", "meta")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None, reason="inductor on the CPU needs g++ (apt-get install -y g++)"
)
@pytest.mark.parametrize("layout", ["static", "dynamic"])
def test_inductor_matches_eager_within_fp32_rounding(layout):
    """The generated C++ kernels (inductor on the CPU) against eager, fp32: within 1e-5, the same decisions."""
    eager, compiled, first, again = eager_and_compiled(self_forcing, layout, "inductor", 21, (12,))
    assert again["graphs"] == first["graphs"] == (2 if layout == "static" else first["graphs"])
    torch.testing.assert_close(compiled.latents, eager.latents, rtol=0, atol=1e-5)
    assert same_decisions(compiled, eager)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None, reason="inductor on the CPU needs g++ (apt-get install -y g++)"
)
def test_inductor_compiles_an_int8_model_as_it_runs_eagerly():
    """`--quantize int8 --compile`: the blocks' weights are torchao tensor subclasses when the DiT is compiled (the
    order `generate` and `bench` apply them in); the static cache still makes one graph per call kind, and the
    output is the quantised model's eager output within fp32 rounding."""
    pytest.importorskip("torchao")
    from tokentrim.wan.quantize import quantize_dit

    torch._dynamo.reset()
    model = quantize_dit(build_model(C, seed=3), "int8")
    eager = rollout(self_forcing(model, "static"), 21, (12,))
    compile_dit(model, "static", "inductor")
    before = compile_counts()
    compiled = rollout(self_forcing(model, "static"), 21, (12,))
    assert counts_since(before)["graphs"] == 2
    torch.testing.assert_close(compiled.latents, eager.latents, rtol=0, atol=1e-5)
    assert same_decisions(compiled, eager) and sum(r.action == "prune" for r in eager.records) >= 1
