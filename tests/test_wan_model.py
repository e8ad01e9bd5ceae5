"""The DiT's parameter names/shapes (docs/spec.md#state-dict-keys), derived sizes, and forward-pass details."""

import json

import pytest
import torch

from tokentrim.pipelines.self_forcing import SinkCachePolicy
from tokentrim.wan import WanConfig, block_causal_mask, build_model, get_preset
from tokentrim.wan.kv_cache import KVCache
from tokentrim.wan.model import RMSNorm, sinusoid, unpatchify


def spec_keys(layers=30, dim=1536, ffn=8960, text_dim=4096, freq=256):
    """The table of docs/spec.md#state-dict-keys, written out independently of the model code."""
    keys = {
        "patch_embedding.weight": (dim, 16, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (64, dim), "head.head.bias": (64,), "head.modulation": (1, 2, dim),
    }  # fmt: skip
    for i in range(layers):
        p = f"blocks.{i}."
        keys[p + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                keys[f"{p}{attn}.{proj}.weight"] = (dim, dim)
                keys[f"{p}{attn}.{proj}.bias"] = (dim,)
            keys[f"{p}{attn}.norm_q.weight"] = (dim,)
            keys[f"{p}{attn}.norm_k.weight"] = (dim,)
        keys[p + "norm3.weight"] = (dim,)
        keys[p + "norm3.bias"] = (dim,)
        keys[p + "ffn.0.weight"] = (ffn, dim)
        keys[p + "ffn.0.bias"] = (ffn,)
        keys[p + "ffn.2.weight"] = (dim, ffn)
        keys[p + "ffn.2.bias"] = (dim,)
    return keys


def test_full_size_state_dict_matches_spec_on_meta():
    model = build_model("wan2.1-t2v-1.3b", device="meta")
    sd = model.state_dict()
    expected = spec_keys()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert len(sd) == 825
    assert sum(v.numel() for v in sd.values()) == 1_418_996_800
    assert not list(model.buffers())  # RoPE is a plain attribute, not a buffer


def test_derived_sizes_of_the_full_preset():
    c = get_preset("wan2.1-t2v-1.3b")
    assert (c.head_dim, c.rope_dims, c.tokens_per_frame, c.patch_channels) == (128, (44, 42, 42), 1560, 64)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_config_json_in_both_namings_gives_the_same_dataclass(tmp_path, layout):
    if layout == "original":
        raw = {"model_type": "t2v", "dim": 1536, "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "out_dim": 16,
               "num_heads": 12, "num_layers": 30, "text_len": 512, "eps": 1e-6}  # fmt: skip
    else:
        raw = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 12,
               "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096,
               "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
               "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    assert WanConfig.from_json(path) == get_preset("wan2.1-t2v-1.3b")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_heads"):
        WanConfig(dim=100, num_heads=12)
    with pytest.raises(ValueError, match="latent grid"):
        WanConfig(latent_height=61)


def test_sinusoid_cosine_half_first():
    t = torch.tensor([0.0, 937.5])
    s = sinusoid(t, 8)
    omega = [10000 ** (-j / 4) for j in range(4)]
    expected = [[1.0] * 4 + [0.0] * 4, [torch.cos(torch.tensor(937.5 * w, dtype=torch.float64)).item() for w in omega]
                + [torch.sin(torch.tensor(937.5 * w, dtype=torch.float64)).item() for w in omega]]  # fmt: skip
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, torch.tensor(expected, dtype=torch.float64))


def test_rmsnorm_over_full_width_with_fp32_statistics():
    norm = RMSNorm(4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 0.5]))
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    rms = (25 / 4 + 1e-6) ** 0.5
    torch.testing.assert_close(norm(x), torch.tensor([[3 / rms, 8 / rms, 0.0, 0.0]]))


def test_rmsnorm_bf16_statistics_in_fp32_then_cast_then_weight():
    """docs/spec.md#transformer-block in bf16: normalise in fp32, cast to bf16, then multiply by the (bf16)
    weight."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 1536, generator=g) * 30).to(torch.bfloat16)
    norm = RMSNorm(1536, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_((1 + torch.randn(1536, generator=g) / 3).to(torch.bfloat16))
    xf = x.double()
    normed = (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).float().to(torch.bfloat16)
    expected = normed * norm.weight
    assert torch.equal(norm(x), expected)
    # the orders this pins down do differ in bf16 (so the check above can fail)
    bf16_stats = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    weight_in_fp32 = (xf.float() * torch.rsqrt(xf.float().pow(2).mean(-1, keepdim=True) + 1e-6)
                      * norm.weight.float()).to(torch.bfloat16)  # fmt: skip
    assert not torch.equal(bf16_stats, expected) and not torch.equal(weight_in_fp32, expected)


def test_unpatchify_channel_to_pixel_mapping(tiny_config):
    c = tiny_config
    b, f, ph, pw, ch = 1, 2, 2, 2, c.out_dim
    out = torch.arange(b * f * c.tokens_per_frame * c.patch_channels, dtype=torch.float32)
    out = out.reshape(b, f, c.tokens_per_frame, c.patch_channels)
    video = unpatchify(out, c)
    for frame, h, w, q, r, chan in [(0, 0, 0, 0, 0, 0), (1, 3, 5, 1, 0, 7), (0, 2, 1, 1, 1, 15)]:
        token = h * c.grid_width + w
        o = (q * pw + r) * ch + chan  # docs/spec.md#head-and-unpatchify
        assert video[0, frame, chan, h * ph + q, w * pw + r] == out[0, frame, token, o]


def test_per_frame_timesteps_modulate_each_frame_separately(tiny_config):
    model = build_model(tiny_config, seed=1)
    ctx = model.encode_context(torch.randn(1, 5, tiny_config.text_dim))
    x = torch.randn(1, 3, 16, 8, 12)
    with torch.no_grad():
        a = model(x, torch.tensor([[100.0, 500.0, 900.0]]), ctx)
        b = model(x, torch.tensor([[100.0, 500.0, 901.0]]), ctx)
    # every frame attends to every other, so frame 2's timestep changes all frames, but frame 2 the most
    assert (a - b)[:, 2].abs().mean() > (a - b)[:, 0].abs().mean() > 0


@pytest.mark.parametrize("batch", [1, 2])
def test_block_causal_equivalence(tiny_config, batch):
    """3 blocks through the KV cache == one full forward with the block-causal mask (docs/spec.md#attention)."""
    c = tiny_config
    model = build_model(c, dtype=torch.float64, seed=2)
    ctx = model.encode_context(torch.randn(batch, 7, c.text_dim, dtype=torch.float64))
    x = torch.randn(batch, 9, 16, 8, 12, dtype=torch.float64)
    t = torch.rand(batch, 9, dtype=torch.float64) * 1000
    with torch.no_grad():
        full = model(x, t, ctx, attn_mask=block_causal_mask(9, 3, c.tokens_per_frame))
        policy = SinkCachePolicy(KVCache(c, batch, 9, dtype=torch.float64), sink_frames=0)
        cache, steps = policy.cache, []
        for j in range(3):
            sl, s = slice(3 * j, 3 * j + 3), 3 * j
            model(
                x[:, sl] + 1.0, t[:, sl], ctx, cache=cache, plan=policy.plan(s, 3), start_frame=s
            )  # no commit
            steps.append(
                model(
                    x[:, sl], t[:, sl], ctx, cache=cache, plan=policy.plan(s, 3, commit=True), start_frame=s
                )
            )
        unmasked = model(x, t, ctx)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)
    assert (unmasked[:, :3] - full[:, :3]).abs().max() > 1e-3  # the mask matters
