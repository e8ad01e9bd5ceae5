"""umT5 text encoder: Wan key conversion, a hand-written Wan-style forward as oracle, prompt cleaning, zeroed
padding rows, both checkpoint layouts and the prompt-embedding cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from tokentrim.errors import UserError
from tokentrim.wan.text_encoder import (
    TextEncoder,
    TextEncoderFactory,
    build_tiny_text_encoder,
    build_tiny_tokenizer,
    clean_prompt,
    convert_wan_t5_state_dict,
    encode_prompts,
    load_diffusers_text_encoder,
    load_original_text_encoder,
    tiny_umt5_config,
    to_wan_t5_state_dict,
)

TEXT_LEN = 16  # tiny preset
D_MODEL = 32  # tiny preset text_dim


@pytest.fixture(scope="module")
def encoder():
    return build_tiny_text_encoder(seed=0)


def wan_keys(num_layers):
    """Wan's umT5 encoder key names, from docs/spec.md#text-encoder."""
    keys = {"token_embedding.weight", "norm.weight"}
    for i in range(num_layers):
        keys |= {f"blocks.{i}.{s}" for s in ("norm1.weight", "attn.q.weight", "attn.k.weight", "attn.v.weight",
                 "attn.o.weight", "norm2.weight", "ffn.gate.0.weight", "ffn.fc1.weight", "ffn.fc2.weight",
                 "pos_embedding.embedding.weight")}  # fmt: skip
    return keys


def test_key_round_trip(encoder):
    native = encoder.model.state_dict()
    wan = to_wan_t5_state_dict(native)
    assert set(wan) == wan_keys(2)
    back = convert_wan_t5_state_dict(wan)
    assert set(back) == set(native)
    for k, v in native.items():
        assert torch.equal(back[k], v), k
    assert torch.equal(
        to_wan_t5_state_dict(back)["blocks.1.ffn.gate.0.weight"], wan["blocks.1.ffn.gate.0.weight"]
    )


def test_gate_maps_to_the_gelu_branch(encoder):
    wan = to_wan_t5_state_dict(encoder.model.state_dict())
    ffn = encoder.model.encoder.block[0].layer[1].DenseReluDense
    assert torch.equal(wan["blocks.0.ffn.gate.0.weight"], ffn.wi_0.weight)  # GELU-activated branch
    assert torch.equal(wan["blocks.0.ffn.fc1.weight"], ffn.wi_1.weight)  # linear branch
    assert encoder.model.config.dense_act_fn == "gelu_new"  # tanh approximation


def test_unknown_keys_rejected():
    with pytest.raises(UserError, match="unexpected keys"):
        convert_wan_t5_state_dict(
            {"token_embedding.weight": torch.zeros(2, 2), "blocks.0.attn.qkv.weight": 0}
        )


# A Wan-style umT5 encoder forward written from docs/spec.md#text-encoder, run directly on Wan-named weights.
def _buckets(rel, num_buckets, max_distance):
    """Bidirectional T5 relative-position buckets; rel = key position - query position."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    large = exact + (
        torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    )
    large = large.long().clamp(max=half - 1)
    return out + torch.where(n < exact, n, large)


def _rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def wan_t5_reference(sd, ids, mask, heads, num_buckets, max_distance, swap_ffn=False):
    B, L = ids.shape
    x = sd["token_embedding.weight"][ids]
    pos = torch.arange(L)
    bucket = _buckets(pos[None, :] - pos[:, None], num_buckets, max_distance)  # (Lq, Lk)
    key_mask = torch.zeros(B, 1, 1, L).masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(layers):
        p = f"blocks.{i}."
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = ((h @ sd[p + f"attn.{n}.weight"].T).view(B, L, heads, -1).transpose(1, 2) for n in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # (1, H, Lq, Lk)
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias + key_mask, dim=-1)  # no 1/sqrt(d) scaling
        x = x + (attn @ v).transpose(1, 2).reshape(B, L, -1) @ sd[p + "attn.o.weight"].T
        h = _rms(x, sd[p + "norm2.weight"])
        gate, fc1 = sd[p + "ffn.gate.0.weight"], sd[p + "ffn.fc1.weight"]
        if swap_ffn:
            gate, fc1 = fc1, gate
        x = x + ((h @ fc1.T) * F.gelu(h @ gate.T, approximate="tanh")) @ sd[p + "ffn.fc2.weight"].T
    return _rms(x, sd["norm.weight"])


def test_matches_wan_style_reference(encoder):
    prompts = ["a red car drives along the road at sunset", "a cat"]
    tokens = encoder.tokenizer(prompts, padding="max_length", max_length=TEXT_LEN, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    cfg = encoder.model.config
    sd = to_wan_t5_state_dict(encoder.model.state_dict())
    ref = wan_t5_reference(sd, ids, mask, cfg.num_heads, cfg.relative_attention_num_buckets,
                           cfg.relative_attention_max_distance)  # fmt: skip
    got = encoder.encode(prompts)
    real = mask.bool()
    assert torch.allclose(got[real], ref[real], atol=1e-5)
    # The oracle can tell the two FFN branches apart.
    swapped = wan_t5_reference(sd, ids, mask, cfg.num_heads, cfg.relative_attention_num_buckets,
                               cfg.relative_attention_max_distance, swap_ffn=True)  # fmt: skip
    assert (swapped[real] - ref[real]).abs().max() > 1e-3


def test_original_layout_loader(encoder, tmp_path):
    torch.save(to_wan_t5_state_dict(encoder.model.state_dict()), tmp_path / "t5.pth")
    encoder.tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_original_text_encoder(
        tmp_path / "t5.pth", tmp_path / "tok", text_len=TEXT_LEN, device="cpu", dtype=torch.float32,
        config=tiny_umt5_config(D_MODEL).to_dict(),
    )  # fmt: skip
    assert loaded.model.encoder.embed_tokens.weight is loaded.model.shared.weight
    prompts = ["a dog runs on the beach", "snow"]
    assert torch.equal(loaded.encode(prompts), encoder.encode(prompts))


def test_diffusers_layout_loader(encoder, tmp_path):
    encoder.model.save_pretrained(tmp_path / "text_encoder")
    encoder.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = load_diffusers_text_encoder(
        tmp_path / "text_encoder",
        tmp_path / "tokenizer",
        text_len=TEXT_LEN,
        device="cpu",
        dtype=torch.float32,
    )
    prompts = ["a bird flies over the sea"]
    assert torch.equal(loaded.encode(prompts), encoder.encode(prompts))


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  a   cat\n\tsits  ", "a cat sits"),
        ("&amp;lt;b&amp;gt; bold", "<b> bold"),  # unescaped twice
        ("caf\u00c3\u00a9 at night", "caf\u00e9 at night"),  # mojibake repaired by ftfy
        ("", ""),
    ],
)
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


def test_rows_past_prompt_are_zero(encoder):
    prompts = ["a cat", "A   cat sits", "the " * 30]
    out = encoder.encode(prompts)
    assert out.shape == (3, TEXT_LEN, D_MODEL)
    for row, n_tokens in zip(
        out, [2 + 1, 3 + 1, TEXT_LEN], strict=True
    ):  # words + EOS, truncated to text_len
        assert row[:n_tokens].abs().sum(-1).min() > 0
        assert torch.count_nonzero(row[n_tokens:]) == 0
    ids = encoder.tokenizer(["the " * 30], truncation=True, max_length=TEXT_LEN)["input_ids"][0]
    assert len(ids) == TEXT_LEN and ids[-1] == 1  # EOS kept after truncation
    # A prompt's embedding does not depend on what it is batched with.
    assert torch.allclose(encoder.encode(["a cat"])[0], out[0], atol=1e-6)


def test_tiny_tokenizer_ids():
    tok = build_tiny_tokenizer()
    assert tok("The cat zebra")["input_ids"] == [7, 18, 2, 1]  # the, cat, <unk>, </s>
    assert tok.pad_token_id == 0


# Prompt-embedding cache ----------------------------------------------------------------------------------------------
def counting_factory(identity="tiny-a", text_len=TEXT_LEN):
    calls = []

    def load():
        calls.append(1)
        enc = build_tiny_text_encoder(seed=0)
        return TextEncoder(enc.model, enc.tokenizer, text_len)

    return TextEncoderFactory(load, identity=identity, text_len=text_len, device="cpu"), calls


def test_cache_hit_skips_the_encoder(tmp_path):
    prompts = ["a cat", "a dog", "a cat"]
    factory, calls = counting_factory()
    first = encode_prompts(prompts, factory, tmp_path)
    assert len(calls) == 1 and first.shape == (3, TEXT_LEN, D_MODEL)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(
        f.endswith(".safetensors") and len(f) == 64 + 12 for f in files
    )  # no temp files
    fresh, fresh_calls = counting_factory()
    second = encode_prompts(["a  cat ", "a dog", "a cat"], fresh, tmp_path)  # same after cleaning
    assert fresh_calls == [] and fresh.loads == 0
    assert torch.equal(first, second)
    assert torch.equal(first[0], build_tiny_text_encoder(seed=0).encode(["a cat"])[0])


def test_a_cached_long_prompt_still_warns(tmp_path, caplog):
    long = "a cat walks " + "on the street " * 30  # far more than TEXT_LEN tokens
    for _ in range(2):  # encoded, then read from the cache
        factory, calls = counting_factory()
        caplog.clear()
        with caplog.at_level("WARNING", logger="tokentrim"):
            encode_prompts([long], factory, tmp_path)
        assert [r.getMessage().endswith(f"keeps the first {TEXT_LEN}") for r in caplog.records] == [True]
    assert calls == []  # the second time from the cache


def test_cache_key_sensitivity(tmp_path):
    factory, _ = counting_factory("tiny-a")
    encode_prompts(["a cat"], factory, tmp_path)
    for identity, text_len, prompt in [("tiny-b", TEXT_LEN, "a cat"), ("tiny-a", TEXT_LEN - 4, "a cat"),
                                       ("tiny-a", TEXT_LEN, "a cat sits")]:  # fmt: skip
        other, calls = counting_factory(identity, text_len)
        out = encode_prompts([prompt], other, tmp_path)
        assert calls == [1], (identity, text_len, prompt)
        assert out.shape == (1, text_len, D_MODEL)
    assert len(list(tmp_path.iterdir())) == 4


def test_corrupt_cache_file_is_recomputed(tmp_path):
    factory, calls = counting_factory()
    ref = encode_prompts(["a cat"], factory, tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not safetensors")
    fresh, calls = counting_factory()
    assert torch.equal(encode_prompts(["a cat"], fresh, tmp_path), ref) and calls == [1]


def test_offload_modes(tmp_path):
    factory, calls = counting_factory()
    encode_prompts(["a cat"], factory, tmp_path, offload="none")
    encode_prompts(["a dog"], factory, tmp_path, offload="cpu")
    assert len(calls) == 1  # kept between calls
    assert factory._encoder is not None and factory._encoder.device.type == "cpu"
    encode_prompts(["a bird"], factory, tmp_path, offload="free")
    assert factory._encoder is None
    encode_prompts(["a fish"], factory, tmp_path)
    assert len(calls) == 2  # freed, so loaded again
    with pytest.raises(UserError, match="offload must be"):
        encode_prompts(["a cat"], factory, tmp_path, offload="disk")


def test_default_cache_dir(monkeypatch, tmp_path):
    from tokentrim.wan.text_encoder import default_cache_dir

    monkeypatch.setenv("TOKENTRIM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "prompt_embeds"
    monkeypatch.delenv("TOKENTRIM_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "tokentrim", "prompt_embeds")


def test_umt5_is_transformers_model(encoder):
    from transformers import UMT5EncoderModel

    assert isinstance(encoder.model, UMT5EncoderModel)
    blocks = encoder.model.encoder.block
    assert all(
        b.layer[0].SelfAttention.has_relative_attention_bias for b in blocks
    )  # one bias table per block


def test_umt5_xxl_config_size():
    from transformers import UMT5Config, UMT5EncoderModel

    from tokentrim.wan.text_encoder import UMT5_XXL_CONFIG

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**UMT5_XXL_CONFIG))
    # docs/spec.md#text-encoder: embeddings 256384*4096 = 1.05B + 24 blocks of ~193M = ~5.68B parameters (tied
    # embedding once).
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(5.68e9, rel=0.01)
    wan = to_wan_t5_state_dict(model.state_dict())
    assert set(wan) == wan_keys(24)
    assert wan["blocks.0.pos_embedding.embedding.weight"].shape == (32, 64)  # buckets x heads
    assert wan["blocks.0.ffn.gate.0.weight"].shape == wan["blocks.0.ffn.fc1.weight"].shape == (10240, 4096)
