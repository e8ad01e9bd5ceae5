"""Model folders: layout detection, loading both layouts from tiny fake folders, missing-file errors, tiny preset."""

import fnmatch
import json
import os

import pytest
import torch
from test_vae import diffusers_to_wan_vae_keys

import tokentrim.wan.text_encoder as text_encoder_module
import tokentrim.wan.vae as vae_module
from tokentrim.errors import UserError
from tokentrim.wan import get_preset
from tokentrim.wan.components import build_tiny_components, detect_layout, load_components
from tokentrim.wan.text_encoder import (
    build_tiny_text_encoder,
    encode_prompts,
    tiny_umt5_config,
    to_wan_t5_state_dict,
)
from tokentrim.wan.vae import build_tiny_vae

ORIGINAL_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "models_t5_umt5-xxl-enc-bf16.pth",
                  "google/umt5-xxl/tokenizer_config.json", "Wan2.1_VAE.pth"]  # fmt: skip
DIFFUSERS_FILES = ["transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                   "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json",
                   "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_text_encoder(seed=0), build_tiny_vae(seed=0)


def tiny_original_config():
    cfg = get_preset("tiny")
    return {"model_type": "t2v", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": 16,
            "out_dim": 16, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "text_len": cfg.text_len,
            "text_dim": cfg.text_dim, "eps": 1e-6}  # fmt: skip


def make_original(root, tiny):
    encoder, vae = tiny
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(tiny_original_config()))
    (root / "diffusion_pytorch_model.safetensors").write_bytes(b"dit weights are loaded elsewhere")
    torch.save(to_wan_t5_state_dict(encoder.model.state_dict()), root / "models_t5_umt5-xxl-enc-bf16.pth")
    encoder.tokenizer.save_pretrained(root / "google" / "umt5-xxl")
    torch.save(diffusers_to_wan_vae_keys(vae.model.state_dict()), root / "Wan2.1_VAE.pth")
    return root


def make_diffusers(root, tiny):
    encoder, vae = tiny
    cfg = get_preset("tiny")
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    (root / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "WanTransformer3DModel", "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_channels": 16,
        "out_channels": 16, "num_layers": cfg.num_layers, "text_dim": cfg.text_dim, "patch_size": [1, 2, 2],
    }))  # fmt: skip
    (root / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    encoder.model.save_pretrained(root / "text_encoder")
    encoder.tokenizer.save_pretrained(root / "tokenizer")
    vae.model.save_pretrained(root / "vae")
    return root


@pytest.fixture
def tiny_original_architecture(monkeypatch):
    """The original-layout loaders build umT5-XXL / the full VAE; point them at the tiny architectures."""
    monkeypatch.setattr(text_encoder_module, "UMT5_XXL_CONFIG", tiny_umt5_config(32).to_dict())
    monkeypatch.setattr(vae_module, "WAN21_VAE_CONFIG", dict(base_dim=8, z_dim=16))


def test_detect_layout(tmp_path, tiny):
    assert detect_layout(make_original(tmp_path / "o", tiny)) == "original"
    assert detect_layout(make_diffusers(tmp_path / "d", tiny)) == "diffusers"
    (tmp_path / "d2" / "transformer").mkdir(parents=True)
    assert detect_layout(tmp_path / "d2") == "diffusers"
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "Wan2.1_VAE.pth").write_bytes(b"")
    assert detect_layout(tmp_path / "o2") == "original"


def test_detect_layout_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist.*hf download Wan-AI/Wan2.1-T2V-1.3B"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        detect_layout(tmp_path / "empty")


def test_load_original_layout(tmp_path, tiny, tiny_original_architecture):
    root = make_original(tmp_path / "wan", tiny)
    parts = load_components(root, device="cpu")
    assert parts.layout == "original"
    assert parts.dit_config == get_preset("tiny").replace(
        latent_height=60, latent_width=104
    )  # grid: defaults
    assert parts.dit_weights == root / "diffusion_pytorch_model.safetensors"
    prompts = ["a cat walks in the snow"]
    assert torch.equal(parts.text_encoder.encode(prompts), tiny[0].encode(prompts))
    z = torch.randn(1, 2, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(parts.vae.decode(z), tiny[1].decode(z))


def test_load_diffusers_layout(tmp_path, tiny):
    root = make_diffusers(tmp_path / "wan-diffusers", tiny)
    parts = load_components(root, device="cpu", dtype=torch.float32)
    assert parts.layout == "diffusers"
    cfg = get_preset("tiny")
    assert (parts.dit_config.dim, parts.dit_config.num_heads, parts.dit_config.text_dim) == (48, 2, 32)
    assert parts.dit_config.num_layers == cfg.num_layers and parts.dit_weights == root / "transformer"
    assert parts.text_encoder.text_len == parts.dit_config.text_len
    prompts = ["a boat on the lake"]
    expected = tiny[0].encode(prompts)
    assert torch.equal(parts.text_encoder.encode(prompts)[:, : cfg.text_len], expected)
    z = torch.randn(1, 1, 16, 8, 12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(parts.vae.decode(z), tiny[1].decode(z))


def test_lazy_text_encoder_and_identity(tmp_path, tiny, tiny_original_architecture):
    root = make_original(tmp_path / "wan", tiny)
    parts = load_components(root, device="cpu", text_encoder=False, vae=False)
    assert parts.text_encoder is None and parts.vae is None
    factory = parts.text_encoder_factory
    assert factory.loads == 0
    out = encode_prompts(["a cat"], factory, tmp_path / "cache")
    assert factory.loads == 1 and out.shape == (1, get_preset("tiny").text_len, 32)
    # Changing the weights file changes the identity (so cache entries of the old weights are not reused).
    weights = root / "models_t5_umt5-xxl-enc-bf16.pth"
    os.utime(weights, ns=(0, weights.stat().st_mtime_ns + 10**9))
    again = load_components(root, device="cpu", text_encoder=False, vae=False).text_encoder_factory
    assert again.identity != factory.identity
    f32 = load_components(root, device="cpu", dtype=torch.float32, text_encoder=False, vae=False)
    bf16 = load_components(root, device="cpu", dtype=torch.bfloat16, text_encoder=False, vae=False)
    assert f32.text_encoder_factory.identity != bf16.text_encoder_factory.identity


@pytest.mark.parametrize("layout, files", [("original", ORIGINAL_FILES), ("diffusers", DIFFUSERS_FILES)])
def test_each_missing_file_is_named(tmp_path, tiny, layout, files):
    make = make_original if layout == "original" else make_diffusers
    for i, name in enumerate(files[1:]):  # the config identifies the layout; every other file in turn
        root = make(tmp_path / f"m{i}", tiny)
        os.remove(root / name)
        with pytest.raises(UserError) as err:
            load_components(root, device="cpu")
        message = str(err.value)
        listed = message.split("is missing: ")[1].split(". Download")[0].split(", ")
        assert len(listed) == 1 and fnmatch.fnmatch(name, listed[0]), (name, message)  # may be a glob
        assert (
            f"hf download Wan-AI/Wan2.1-T2V-1.3B{'-Diffusers' if layout == 'diffusers' else ''} " in message
        )
        assert f"--local-dir {root}" in message


def test_all_missing_files_in_one_error(tmp_path):
    root = tmp_path / "wan"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(tiny_original_config()))
    with pytest.raises(UserError) as err:
        load_components(root, device="cpu")
    for name in ORIGINAL_FILES[1:]:
        assert name in str(err.value)
    # Without the DiT weights requirement the base safetensors file is not asked for.
    with pytest.raises(UserError) as err:
        load_components(root, device="cpu", dit_weights=False)
    assert "diffusion_pytorch_model" not in str(err.value)
    parts = load_components(root, device="cpu", dit_weights=False, text_encoder=False, vae=False)
    assert parts.dit_weights is None and parts.text_encoder_factory is None


def test_tiny_components():
    parts = build_tiny_components(seed=0)
    cfg = get_preset("tiny")
    assert parts.layout == "tiny" and parts.dit_config == cfg and parts.dit_weights is None
    embeds = parts.text_encoder.encode(["a red car"])
    assert embeds.shape == (1, cfg.text_len, cfg.text_dim)
    video = parts.vae.decode(torch.zeros(1, 2, cfg.out_dim, cfg.latent_height, cfg.latent_width))
    assert video.shape == (1, 5, 8 * cfg.latent_height, 8 * cfg.latent_width, 3)
    assert parts.text_encoder_factory.get() is parts.text_encoder


def test_tokenizer_vocabulary_shards_and_corrupt_weights(tmp_path, tiny, tiny_original_architecture):
    root = make_original(tmp_path / "o", tiny)
    for name in ("tokenizer.json", "spiece.model"):
        (root / "google" / "umt5-xxl" / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"google/umt5-xxl/spiece.model\|google/umt5-xxl/tokenizer.json"):
        load_components(root, device="cpu")
    # a sharded Diffusers text encoder whose index names a shard that is not there
    root = make_diffusers(tmp_path / "d", tiny)
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (root / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    os.replace(root / "text_encoder" / "model.safetensors", root / "text_encoder" / shards["a"])
    with pytest.raises(UserError, match="is missing: text_encoder/model-00002-of-00002.safetensors"):
        load_components(root, device="cpu")
    (root / "text_encoder" / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(UserError, match=r"model.safetensors.index.json \(unreadable\)"):
        load_components(root, device="cpu")
    # a truncated original T5 file: one clear error, not a pickle traceback
    root = make_original(tmp_path / "o2", tiny)
    weights = root / "models_t5_umt5-xxl-enc-bf16.pth"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot read checkpoint .*download it again"):
        load_components(root, device="cpu")
