"""The recipes of docs/integrations.md, pasted into stand-in loops of their kind: the reference loops' block
structure and RNG order on the reference-layout cache of tests/reference_layout.py, with the tiny DiT. Run so,
they make this project's loops' TokenTrim decisions and latents, bit for bit (the diffusers recipe runs in
tests/test_modular_block.py)."""

import pytest
import torch
import torch.nn.functional as F
from reference_layout import Call, ReferenceAttention, recipes, reference_cache, split

from tokentrim.pipelines import (
    LongLiveConfig,
    LongLivePipeline,
    Request,
    RollingForcingPipeline,
    SelfForcingConfig,
    SelfForcingPipeline,
)
from tokentrim.wan import build_model, get_preset
from tokentrim_core import CachePruner, TokenTrim, TokenTrimConfig

RECIPES = recipes()
EAGER = TokenTrimConfig(lam=0.0, warmup=1)  # prunes often on random weights


def test_every_recipe_is_short_and_exercised():
    exercised = {"self-forcing", "rolling-forcing", "key-mask", "longlive-switch", "diffusers"}
    assert set(RECIPES) == exercised
    assert all(len(code.strip().splitlines()) <= 15 for code in RECIPES.values())


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    embeds = torch.randn(1, 9, cfg.text_dim, generator=torch.Generator().manual_seed(5))
    return build_model(cfg, seed=3), embeds


def paste(code: str, **names) -> dict:
    """Run a recipe's set-up with `names` in scope, with the paper's settings replaced by EAGER's."""
    assert code.count("TokenTrimConfig()") == 1
    names.setdefault("EAGER", EAGER)
    exec(code.replace("TokenTrimConfig()", "EAGER"), names)
    return names


def at_switch(drop: tuple[str, ...] = ()) -> str:
    """The LongLive switch recipe without the lines calling `drop`."""
    lines = RECIPES["longlive-switch"].splitlines()
    kept = [line for line in lines if not any(f"pruner.{name}(" in line for name in drop)]
    assert len(kept) == len(lines) - len(drop)
    return "\n".join(kept)


def block_loop(
    model, embeds, frames, seed, pipe, *, rule, sink, local=-1, mode="remove", switch=None, drop=()
):
    """A Self Forcing-style loop (Self Forcing, Causal Forcing, LongLive): noise first, then per block its
    denoising steps with one draw per step but the last, TokenTrim (the recipe), the clean pass at t = 0; at a
    prompt switch (frame, prompt_embeds) LongLive's re-cache, wrapped in its recipe (less the calls `drop`)."""
    cfg, T, block = model.config, model.config.tokens_per_frame, model.config.frames_per_block
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, frames, cfg.in_dim, cfg.latent_height, cfg.latent_width, generator=generator)
    kv_cache = reference_cache(cfg, 1, pipe.config.cache_frames)
    setup, step = split(RECIPES["self-forcing"])
    if mode == "mask":
        setup = setup.replace("sink_frames=sink_size)", 'sink_frames=sink_size, mode="mask")')
    ns = paste(setup, frame_seq_length=T, sink_size=sink, kv_cache=kv_cache)
    assert ns["pruner"].mode == mode
    attention = ReferenceAttention(
        kv_cache, rule, T, sink_frames=sink, local_frames=local, pruner=ns["pruner"]
    )
    context, steps, schedule = model.encode_context(embeds), pipe.timesteps, pipe.schedule
    output = torch.zeros_like(noise)
    with torch.no_grad():
        for s in range(0, frames, block):
            if switch is not None and s == switch[0]:
                context = model.encode_context(switch[1])

                def recache(s=s, context=context):
                    n = min(pipe.config.cache_frames, s)
                    x0 = output[:, s - n : s]
                    model(
                        x0,
                        torch.zeros(x0.shape[:2]),
                        context,
                        cache=attention,
                        plan=Call(s - n, n),
                        start_frame=s - n,
                    )

                ns["recache"] = recache
                exec(at_switch(drop), ns)
            state = generator.get_state()

            def denoise_block(x=noise[:, s : s + block], s=s, state=state, context=context):
                generator.set_state(state)
                for i, t_i in enumerate(steps):
                    t = t_i.expand(x.shape[:2]).to(torch.float32)
                    x0 = schedule.to_x0(
                        model(x, t, context, cache=attention, plan=Call(s, block), start_frame=s), x, t
                    )
                    if i + 1 < len(steps):
                        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
                        x = schedule.add_noise(x0, eps, steps[i + 1].expand(x.shape[:2]))
                return x0

            ns.update(denoised_pred=denoise_block(), current_start_frame=s, denoise_block=denoise_block)
            exec(step, ns)
            x0 = ns["denoised_pred"]
            model(x0, torch.zeros(x0.shape[:2]), context, cache=attention, plan=Call(s, block), start_frame=s)
            output[:, s : s + block] = x0
    return output, ns["tokentrim"].records, kv_cache


def rows(records):
    return [{k: v for k, v in r.to_dict().items() if k != "score_ms"} for r in records]


def assert_same(got, builtin):
    latents, records = got[:2]
    assert sum(r.action == "prune" for r in records) >= 2, "the case must prune to test anything"
    assert rows(records) == rows(builtin.records)
    assert torch.equal(latents, builtin.latents)


@pytest.mark.parametrize("block", [3, 1])  # Self Forcing / Causal Forcing chunk-wise; frame-wise (ComfyUI's)
def test_self_forcing_recipe(tiny, block):
    model, embeds = tiny
    if block == 1:
        model = build_model(model.config.replace(frames_per_block=1), seed=3)
    pipe = SelfForcingPipeline(model, SelfForcingConfig(cache_frames=21, sink_frames=0, rolling=False))
    frames = 21 if block == 3 else 12
    got = block_loop(model, embeds, frames, 0, pipe, rule="self_forcing", sink=0)
    assert_same(got, pipe(Request(embeds, frames, seed=0, hook=TokenTrim(EAGER, (2, 2)))))


@pytest.mark.parametrize(
    "pruning, drop", [("keep", ("restore", "reapply")), ("reset", ("reapply",))]
)  # fmt: skip
def test_longlive_masked_across_a_prompt_switch(tiny, pruning, drop):
    """LongLive's 12-frame window with its 3-frame sink, a switch at frame 18 (> 12: the global sink stays) and
    the key mask in LongLive's attention: the masks stay active through the re-cache (this project's
    `switch_pruning: keep`), or `restore` before it resets them (`reset`); bit for bit."""
    model, embeds = tiny
    other = torch.randn(1, 9, model.config.text_dim, generator=torch.Generator().manual_seed(6))
    pipe = LongLivePipeline(model, LongLiveConfig(switch_pruning=pruning))
    got = block_loop(
        model, embeds, 30, 2, pipe, rule="longlive", sink=3, mode="mask", switch=(18, other), drop=drop
    )
    assert got[1][6].action == "switch" and got[1][6].prompt_switch
    builtin = pipe(Request(embeds, 30, seed=2, hook=TokenTrim(EAGER, (2, 2)), switches=((18, other),)))
    assert_same(got, builtin)


def test_longlive_recipe_removes_across_a_prompt_switch(tiny, monkeypatch):
    """The LongLive recipe as written ("remove": LongLive's attention unchanged): the re-cache finds whole-frame
    rows, the sink stays the first prompt's, and the removals are back on the rebuilt frames after it."""
    model, embeds = tiny
    T = model.config.tokens_per_frame
    other = torch.randn(1, 9, model.config.text_dim, generator=torch.Generator().manual_seed(6))
    seen = {}
    restore, reapply = CachePruner.restore, CachePruner.reapply

    def spy_restore(self, kv_cache):
        seen["sink"] = kv_cache[0]["k"][:, : 3 * T].clone()
        seen["removed"] = restore(self, kv_cache)
        seen["whole"] = int(kv_cache[0]["local_end_index"])
        return seen["removed"]

    def spy_reapply(self, kv_cache, removed):
        seen["recached"] = int(kv_cache[0]["local_end_index"])
        seen["sink kept"] = torch.equal(kv_cache[0]["k"][:, : 3 * T], seen["sink"])
        return reapply(self, kv_cache, removed)

    monkeypatch.setattr(CachePruner, "restore", spy_restore)
    monkeypatch.setattr(CachePruner, "reapply", spy_reapply)
    pipe = LongLivePipeline(model, LongLiveConfig())
    latents, records, kv_cache = block_loop(
        model, embeds, 30, 2, pipe, rule="longlive", sink=3, switch=(18, other)
    )
    assert sum(r.action == "prune" for r in records[:6]) >= 2 and seen["removed"]
    assert seen["whole"] == seen["recached"] == 12 * T  # the re-cache wrote whole frames and moved no index
    assert seen["sink kept"]  # the global sink: the first prompt's
    assert set(seen["removed"]) <= set(range(9, 18))  # the frames it rebuilt
    assert records[6].action == "switch" and torch.isfinite(latents).all()
    assert int(kv_cache[0]["global_end_index"]) == 30 * T and int(kv_cache[0]["local_end_index"]) <= 12 * T
    assert all(int(c["local_end_index"]) == int(kv_cache[0]["local_end_index"]) for c in kv_cache)


def test_rolling_forcing_recipe(tiny):
    """Rolling Forcing's windows (5 levels, one draw per unfinished block, a clean pass per window) with the
    recipe on the finalised block and the key mask in attention (the stand-in gathers the kept rows; the
    key-mask recipe's boolean mask is the same attention, next test)."""
    model, embeds = tiny
    pipe = RollingForcingPipeline(model)
    cfg, T, block, steps = model.config, model.config.tokens_per_frame, 3, pipe.timesteps
    K, frames, schedule = len(steps), 30, pipe.schedule
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, frames, cfg.in_dim, cfg.latent_height, cfg.latent_width, generator=generator)
    kv_cache = reference_cache(cfg, 1, pipe.config.cache_frames)
    setup, step = split(RECIPES["rolling-forcing"])
    ns = paste(setup, frame_seq_length=T, kv_cache=kv_cache)
    attention = ReferenceAttention(kv_cache, "rolling_forcing", T, attention_frames=pipe.config.attention_frames,
                                   rope=model.rope, pruner=ns["pruner"])  # fmt: skip
    context, noisy, output = model.encode_context(embeds), torch.zeros_like(noise), torch.zeros_like(noise)
    nb = frames // block
    with torch.no_grad():
        for w in range(nb + K - 1):
            first, last = max(0, w - K + 1), min(nb - 1, w)
            s, e = first * block, (last + 1) * block
            full = e - s == K * block or s == 0
            x = torch.cat([noisy[:, s : e - block], noise[:, e - block : e]], 1) if full else noisy[:, s:e]
            t = torch.stack([steps[w - b] for b in range(first, last + 1)]).repeat_interleave(block)[None]

            def denoise_window(x=x, t=t, s=s, e=e):
                return schedule.to_x0(
                    model(x, t, context, cache=attention, plan=Call(s, e - s), start_frame=s), x, t
                )

            denoised_pred = denoise_window()
            if w - first == K - 1:  # the oldest block is at its last level: final
                ns.update(denoised_pred=denoised_pred, current_start_frame=s, denoise_window=denoise_window)
                exec(step, ns)
                denoised_pred = ns["denoised_pred"]
                output[:, s : s + block] = denoised_pred[:, :block]
            for b in range(first, last + 1):
                if w - b == K - 1:
                    continue
                eps = torch.randn(denoised_pred.shape, generator=generator, dtype=denoised_pred.dtype)
                renoised = schedule.add_noise(
                    denoised_pred, eps, steps[w - b + 1].expand(denoised_pred.shape[:2])
                )
                noisy[:, b * block : (b + 1) * block] = renoised[
                    :, (b - first) * block : (b - first + 1) * block
                ]
            clean = denoised_pred[:, :block]
            model(clean, torch.zeros(1, block), context, cache=attention, plan=Call(s, block, updating_cache=True),
                  start_frame=s)  # fmt: skip
    builtin = pipe(Request(embeds, frames, seed=0, hook=TokenTrim(EAGER, (2, 2))))
    assert_same((output, ns["tokentrim"].records), builtin)


def test_key_mask_recipe_is_attention_over_the_kept_rows():
    """The boolean key mask of the mask variant gives the attention over only the kept cached rows."""
    T, heads, dim = 6, 2, 8
    gen = torch.Generator().manual_seed(0)
    cache = {"k": torch.randn(1, 8 * T, heads, dim, generator=gen), "v": torch.randn(1, 8 * T, heads, dim, generator=gen),
             "global_end_index": torch.tensor([11 * T]), "local_end_index": torch.tensor([8 * T])}  # fmt: skip
    pruner = CachePruner(T, sink_frames=2, mode="mask")
    pruner.prune([cache], torch.tensor([1, 4]), frames=range(5, 9))  # frames 5..8: rows 2T..6T
    q, k_own, v_own = (torch.randn(1, T, heads, dim, generator=gen) for _ in range(3))
    ns = {"torch": torch, "F": F, "pruner": pruner, "cache": cache, "q": q, "k_own": k_own, "v_own": v_own,
          "global_end": 11 * T, "local_end": 8 * T, "lo": 0, "hi": 8 * T}  # fmt: skip
    exec(RECIPES["key-mask"], ns)
    masked = {
        (f - 3) * T + p for f in range(5, 9) for p in (1, 4)
    }  # rows of frames 5..8 (after 2 sink frames)
    kept = torch.tensor([r for r in range(8 * T) if r not in masked])
    keys = torch.cat([cache["k"][:, kept], k_own], 1)
    values = torch.cat([cache["v"][:, kept], v_own], 1)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
    torch.testing.assert_close(ns["out"], want)
    assert not torch.allclose(ns["out"], F.scaled_dot_product_attention(
        q.transpose(1, 2), torch.cat([cache["k"], k_own], 1).transpose(1, 2),
        torch.cat([cache["v"], v_own], 1).transpose(1, 2)))  # fmt: skip
