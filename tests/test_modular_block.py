"""TokenTrimBlock inside a small diffusers modular pipeline built here from diffusers' public API: a denoise
block and a cache-update block of the real-time tools' kind (one pipeline call per block, the reference-layout
`kv_cache` in the pipeline state), run on the tiny random-weight DiT, assembled by docs/integrations.md's diffusers
recipe. With the denoise block wrapped by `with_tokentrim`, the pipeline makes the built-in Self Forcing loop's
TokenTrim decisions and latents, bit for bit."""

import pytest
import torch
from diffusers.modular_pipelines import (
    ComponentSpec,
    ConfigSpec,
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
)
from reference_layout import Call, ReferenceAttention, recipes, reference_cache

from tokentrim.integrations.modular import (
    TokenTrimBlock,
    TokenTrimComponent,
    TokenTrimRegenerate,
    with_tokentrim,
)
from tokentrim.pipelines import Request, SelfForcingConfig, SelfForcingPipeline
from tokentrim.wan import build_model, get_preset
from tokentrim.wan.model import CausalWanModel
from tokentrim.wan.scheduler import FlowMatchSchedule
from tokentrim_core import TokenTrim, TokenTrimConfig

EAGER = TokenTrimConfig(lam=0.0, warmup=1)


def attention(components, kv_cache):
    c = components.config
    return ReferenceAttention(kv_cache, "self_forcing", components.transformer.config.tokens_per_frame,
                              sink_frames=c.sink_size, local_frames=c.local_attn_size)  # fmt: skip


class DenoiseBlock(ModularPipelineBlocks):
    """The few-step denoising of one block: x0 = G(x, t_i); x = add_noise(x0, eps, t_{i+1})."""

    @property
    def expected_components(self):
        return [ComponentSpec("transformer", CausalWanModel), ComponentSpec("scheduler", FlowMatchSchedule)]

    @property
    def expected_configs(self):
        return [ConfigSpec("sink_size", 0), ConfigSpec("local_attn_size", -1)]

    @property
    def inputs(self):
        return [InputParam(n, required=True) for n in
                ("latents", "kv_cache", "current_start_frame", "context", "timesteps", "generator")]  # fmt: skip

    @property
    def intermediate_outputs(self):
        return [OutputParam("latents", type_hint=torch.Tensor)]

    @torch.no_grad()
    def __call__(self, components, state):
        s = self.get_block_state(state)
        model, schedule, x, start = (
            components.transformer,
            components.scheduler,
            s.latents,
            s.current_start_frame,
        )
        cache = attention(components, s.kv_cache)
        for i, step in enumerate(s.timesteps):
            t = step.expand(x.shape[:2]).to(torch.float32)
            flow = model(x, t, s.context, cache=cache, plan=Call(start, x.shape[1]), start_frame=start)
            x0 = schedule.to_x0(flow, x, t)
            if i + 1 < len(s.timesteps):
                eps = torch.randn(x0.shape, generator=s.generator, dtype=x0.dtype)
                x = schedule.add_noise(x0, eps, s.timesteps[i + 1].expand(x.shape[:2]))
        s.latents = x0
        self.set_block_state(state, s)
        return components, state


class CleanKVCacheBlock(ModularPipelineBlocks):
    """The clean pass: the block again at t = 0 writes its keys/values into the cache."""

    @property
    def expected_components(self):
        return [ComponentSpec("transformer", CausalWanModel)]

    @property
    def inputs(self):
        return [
            InputParam(n, required=True) for n in ("latents", "kv_cache", "current_start_frame", "context")
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        s = self.get_block_state(state)
        x0, start = s.latents, s.current_start_frame
        cache = attention(components, s.kv_cache)
        t = torch.zeros(x0.shape[:2])
        components.transformer(
            x0, t, s.context, cache=cache, plan=Call(start, x0.shape[1]), start_frame=start
        )
        return components, state


@pytest.fixture(scope="module")
def setup():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=3)
    embeds = torch.randn(1, 9, cfg.text_dim, generator=torch.Generator().manual_seed(5))
    return model, embeds


def make_pipeline(model, sampler, config, sink):
    """The pipeline of docs/integrations.md's diffusers recipe (run as written), then the test's components."""
    names = {"DenoiseBlock": DenoiseBlock, "CleanKVCacheBlock": CleanKVCacheBlock,
             "frame_seq_length": model.config.tokens_per_frame, "sink_size": sink}  # fmt: skip
    code = recipes()["diffusers"]
    assert code.count("TokenTrimConfig()") == 1
    exec(code.replace("TokenTrimConfig()", "CONFIG"), {**names, "CONFIG": config}, names)
    pipe = names["pipe"]
    pipe.update_components(transformer=model, scheduler=FlowMatchSchedule(sampler.timestep_shift),
                           sink_size=sampler.sink_frames,
                           local_attn_size=sampler.cache_frames if sampler.rolling else -1)  # fmt: skip
    return pipe, names["tokentrim"]


def stream(pipe, model, sampler, embeds, frames, seed):
    """A real-time tool's driver: the noise drawn first, then one pipeline call per 3-frame block."""
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, frames, cfg.in_dim, cfg.latent_height, cfg.latent_width, generator=generator)
    kv_cache = reference_cache(cfg, 1, sampler.cache_frames)
    context = model.encode_context(embeds)
    timesteps = SelfForcingPipeline(model, sampler).timesteps
    blocks = []
    for s in range(0, frames, 3):
        blocks.append(pipe(latents=noise[:, s : s + 3], kv_cache=kv_cache, current_start_frame=s, context=context,
                           timesteps=timesteps, generator=generator, output="latents"))  # fmt: skip
    return torch.cat(blocks, dim=1), kv_cache


def rows(records):
    return [{k: v for k, v in r.to_dict().items() if k != "score_ms"} for r in records]


@pytest.mark.parametrize("sink", [0, 3])
def test_modular_pipeline_makes_the_built_in_decisions(setup, sink):
    model, embeds = setup
    sampler = SelfForcingConfig(
        cache_frames=21, sink_frames=sink, rolling=False
    )  # the reference's global cache
    pipe, component = make_pipeline(model, sampler, EAGER, sink)
    assert isinstance(component, TokenTrimComponent) and component.pruner.sink_frames == sink
    with torch.no_grad():
        latents, kv_cache = stream(pipe, model, sampler, embeds, 21, seed=0)
    builtin = SelfForcingPipeline(model, sampler)(Request(embeds, 21, seed=0, hook=TokenTrim(EAGER, (2, 2))))
    assert sum(r.action == "prune" for r in component.records) >= 2
    assert rows(component.records) == rows(builtin.records)
    assert torch.equal(latents, builtin.latents)
    removed = sum(r.tokens_removed for r in component.records)
    assert int(kv_cache[0]["local_end_index"]) == 21 * model.config.tokens_per_frame - removed
    assert int(kv_cache[1]["global_end_index"]) == 21 * model.config.tokens_per_frame


def test_block_declares_its_state_and_needs_its_component(setup):
    block = TokenTrimBlock()
    assert set(block.input_names) == {"latents", "kv_cache", "current_start_frame"}
    assert {"tokentrim_decision", "tokentrim_regenerate", "tokentrim_record"} <= set(
        block.intermediate_output_names
    )
    wrapped = with_tokentrim(DenoiseBlock())
    assert isinstance(wrapped, TokenTrimRegenerate) and list(wrapped.sub_blocks) == ["denoise", "tokentrim"]
    assert [c.name for c in wrapped.expected_components] == ["transformer", "scheduler", "tokentrim"]
    model, embeds = setup
    sampler = SelfForcingConfig(cache_frames=21, rolling=False)
    pipe, _ = make_pipeline(model, sampler, EAGER, 3)
    pipe.update_components(tokentrim=None)
    with pytest.raises(ValueError, match="update_components\\(tokentrim="):
        stream(pipe, model, sampler, embeds, 3, seed=0)
