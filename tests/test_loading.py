"""DiT checkpoint round trips in the three supported formats, and the error texts
(docs/spec.md#checkpoints-and-loading, docs/spec.md#diffusers-names)."""

import re

import pytest
import torch
from safetensors.torch import save_file

from tokentrim.errors import UserError
from tokentrim.wan import build_model, load_dit_checkpoint


def wan_to_diffusers(key):
    """Forward mapping written from the table of docs/spec.md#diffusers-names (original Wan -> diffusers)."""
    table = [
        (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
        (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
        (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
        (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
        (r"^time_projection\.1\.", "condition_embedder.time_proj."),
        (r"\.self_attn\.o\.", ".attn1.to_out.0."),
        (r"\.cross_attn\.o\.", ".attn2.to_out.0."),
        (r"\.self_attn\.([qkv])\.", r".attn1.to_\1."),
        (r"\.cross_attn\.([qkv])\.", r".attn2.to_\1."),
        (r"\.self_attn\.norm_", ".attn1.norm_"),
        (r"\.cross_attn\.norm_", ".attn2.norm_"),
        (r"\.norm3\.", ".norm2."),
        (r"\.ffn\.0\.", ".ffn.net.0.proj."),
        (r"\.ffn\.2\.", ".ffn.net.2."),
        (r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
        (r"^head\.head\.", "proj_out."),
        (r"^head\.modulation$", "scale_shift_table"),
    ]
    for pattern, repl in table:
        key = re.sub(pattern, repl, key)
    return key


@pytest.fixture
def source(tiny_config):
    return build_model(tiny_config, seed=11)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_training_checkpoint_ema_and_generator(tmp_path, tiny_config, source):
    ema = {f"model.{k}": v.clone() for k, v in source.state_dict().items()}
    ema = {k.replace("blocks.0.", "blocks.0._fsdp_wrapped_module."): v for k, v in ema.items()}
    other = build_model(tiny_config, seed=12)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save(
        {"generator_ema": ema, "generator": {f"model.{k}": v for k, v in other.state_dict().items()}}, path
    )
    loaded = load_dit_checkpoint(build_model(tiny_config, device="meta"), path)
    assert_same_weights(loaded, source)
    loaded = load_dit_checkpoint(build_model(tiny_config, device="meta"), path, use_ema=False)
    assert_same_weights(loaded, other)


def test_base_safetensors_and_cast(tmp_path, tiny_config, source):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = load_dit_checkpoint(build_model(tiny_config, device="meta"), path, dtype=torch.bfloat16)
    assert loaded.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    w = source.blocks[0].self_attn.q.weight
    assert torch.equal(loaded.blocks[0].self_attn.q.weight, w.to(torch.bfloat16))


def test_diffusers_transformer_folder(tmp_path, tiny_config, source):
    folder = tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "transformer"
    folder.mkdir(parents=True)
    converted = {wan_to_diffusers(k): v for k, v in source.state_dict().items()}
    assert "blocks.1.attn2.to_out.0.weight" in converted and "scale_shift_table" in converted
    save_file(converted, str(folder / "diffusion_pytorch_model.safetensors"))
    loaded = load_dit_checkpoint(build_model(tiny_config, device="meta"), folder.parent)
    assert_same_weights(loaded, source)


def test_corrupted_file_error(tmp_path, tiny_config):
    path = tmp_path / "rolling_forcing_dmd.pt"
    path.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(UserError, match="not a PyTorch checkpoint, or it is truncated"):
        load_dit_checkpoint(build_model(tiny_config, device="meta"), path)


def test_partial_checkpoint_error_is_summarised(tmp_path, tiny_config, source):
    sd = {f"model.{k}": v for k, v in source.state_dict().items() if "ffn" not in k}
    path = tmp_path / "partial.pt"
    torch.save({"generator_ema": sd}, path)
    with pytest.raises(UserError) as err:
        load_dit_checkpoint(build_model(tiny_config, device="meta"), path)
    text = str(err.value)
    assert "missing 8" in text and "blocks.*.ffn.0.weight (x2)" in text and "partial download" in text
    assert len(text.splitlines()) <= 5


def test_wrong_size_error(tmp_path, tiny_config, source):
    path = tmp_path / "big.safetensors"
    sd = dict(source.state_dict())
    sd["head.head.weight"] = torch.zeros(3, 3)
    save_file(sd, str(path))
    with pytest.raises(UserError, match="wrong shape 1: head.head.weight"):
        load_dit_checkpoint(build_model(tiny_config, device="meta"), path)


def test_missing_entry_and_missing_file(tmp_path, tiny_config):
    path = tmp_path / "x.pt"
    torch.save({"critic": {"a": 1}}, path)
    with pytest.raises(UserError, match="no 'generator_ema' or 'generator' entry"):
        load_dit_checkpoint(build_model(tiny_config, device="meta"), path)
    with pytest.raises(UserError, match="not found"):
        load_dit_checkpoint(build_model(tiny_config, device="meta"), tmp_path / "nope.pt")


@pytest.mark.parametrize("prefix", ["model.", "model.diffusion_model."])
def test_safetensors_with_wrapper_prefix(tmp_path, tiny_config, source, prefix):
    """A safetensors export of the training wrapper ("model.") or ComfyUI ("model.diffusion_model.")."""
    path = tmp_path / "exported.safetensors"
    save_file({prefix + k: v for k, v in source.state_dict().items()}, str(path))
    assert_same_weights(load_dit_checkpoint(build_model(tiny_config, device="meta"), path), source)
