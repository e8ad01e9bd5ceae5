"""Wan VAE: frame counts, streaming == one-shot, uint8 rounding, de-normalisation, both checkpoint layouts."""

import re

import pytest
import torch

from tokentrim.errors import UserError
from tokentrim.wan.vae import (
    LATENTS_MEAN,
    LATENTS_STD,
    StreamingDecoder,
    build_tiny_vae,
    denormalize_latents,
    load_diffusers_vae,
    load_original_vae,
    to_uint8,
)

TINY_VAE_ARGS = dict(base_dim=8, z_dim=16)  # what build_tiny_vae builds


@pytest.fixture(scope="module")
def vae():
    return build_tiny_vae(seed=0)


def latents(b, f, seed=0, h=8, w=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f, 16, h, w, generator=g)


@pytest.mark.parametrize("f, t", [(1, 1), (2, 5), (4, 13)])
def test_frame_count_and_size(vae, f, t):
    video = vae.decode(latents(1, f))
    assert video.dtype == torch.uint8
    assert tuple(video.shape) == (1, t, 64, 96, 3)  # 8x12 latent grid -> 64x96 pixels
    assert vae.num_frames(f) == t


def test_streaming_equals_one_shot(vae):
    z = latents(2, 7, seed=1, h=4, w=6)  # any grid: a small one decodes faster
    full = vae.decode(z)
    assert full.float().std() > 1  # not a constant image, so equality means something
    stream = vae.streaming()
    assert isinstance(stream, StreamingDecoder)
    blocks = [stream.decode(z[:, s : s + 3]) for s in range(0, 7, 3)]
    assert [b.shape[1] for b in blocks] == [1 + 4 * 2, 4 * 3, 4 * 1]
    # Same decoder calls on the same inputs with the same cache contents: bit-identical.
    assert torch.equal(torch.cat(blocks, dim=1), full)
    # After reset the decoder starts a new video.
    stream.reset()
    again = torch.cat([stream.decode(z[:, :4]), stream.decode(z[:, 4:])], dim=1)
    assert torch.equal(again, full)


def test_streaming_without_cache_would_differ(vae):
    # Decoding the second block as a fresh video (no carried cache) must change its frames: the cache matters.
    z = latents(1, 6, seed=2, h=4, w=6)
    full = vae.decode(z)
    fresh = vae.streaming().decode(z[:, 3:])  # 1 + 4 + 4 frames
    later = full[:, 1 + 4 * 3 :]  # frames of latent frames 4 and 5 in the full video
    assert fresh[:, 1:].shape == later.shape
    assert (fresh[:, 1:].float() - later.float()).abs().mean() > 0.5


def test_to_uint8_rounds_and_clamps():
    # x * 0.5 + 0.5 = p / 255  <=>  x = 2 p / 255 - 1
    wanted = torch.tensor([100.6, 100.4, 254.7, 0.3], dtype=torch.float64)
    x = (2 * wanted / 255 - 1).float()
    x = torch.cat([x, torch.tensor([-1.5, 2.0, -1.0, 1.0])])
    got = to_uint8(x).tolist()
    assert got == [
        101,
        100,
        255,
        0,
        0,
        255,
        0,
        255,
    ]  # truncation would give 100 and 254 for the first and third


def test_denormalize_hand_values():
    z = torch.zeros(1, 1, 16, 1, 1)
    z[0, 0, 0] = 1.0
    z[0, 0, 15] = -2.0
    out = denormalize_latents(z)[0, 0, :, 0, 0]
    assert out[0].item() == pytest.approx(1.0 * 2.8184 - 0.7571, abs=1e-5)
    assert out[15].item() == pytest.approx(-2.0 * 1.9160 - 0.2921, abs=1e-5)
    assert out[1].item() == pytest.approx(-0.7089, abs=1e-6)  # zero latent -> the mean
    assert len(LATENTS_MEAN) == len(LATENTS_STD) == 16


def test_denormalize_keeps_bf16():
    z = latents(1, 1).bfloat16()
    out = denormalize_latents(z)
    assert out.dtype == torch.bfloat16
    ref = z.double() * torch.tensor(LATENTS_STD, dtype=torch.float64)[:, None, None]
    ref = ref + torch.tensor(LATENTS_MEAN, dtype=torch.float64)[:, None, None]
    assert torch.allclose(out.double(), ref, rtol=0.02, atol=0.05)


def test_bad_latent_shape(vae):
    with pytest.raises(UserError, match="latents must be"):
        vae.decode(torch.zeros(1, 2, 8, 8, 12))


# Original-format checkpoint ------------------------------------------------------------------------------------------
def diffusers_to_wan_vae_keys(sd):
    """Diffusers AutoencoderKLWan names -> the names in Wan's `Wan2.1_VAE.pth` (inverse of diffusers' converter)."""
    res = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}  # fmt: skip

    def res_part(rest):
        for new, old in res.items():
            if rest.startswith(new + "."):
                return old + rest[len(new) :]
        raise AssertionError(rest)

    out = {}
    for key, value in sd.items():
        if m := re.match(r"^(quant_conv|post_quant_conv)\.(.+)$", key):
            new = {"quant_conv": "conv1", "post_quant_conv": "conv2"}[m[1]] + "." + m[2]
        elif m := re.match(r"^(encoder|decoder)\.conv_in\.(.+)$", key):
            new = f"{m[1]}.conv1.{m[2]}"
        elif m := re.match(r"^(encoder|decoder)\.norm_out\.(.+)$", key):
            new = f"{m[1]}.head.0.{m[2]}"
        elif m := re.match(r"^(encoder|decoder)\.conv_out\.(.+)$", key):
            new = f"{m[1]}.head.2.{m[2]}"
        elif m := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key):
            new = f"{m[1]}.middle.{2 * int(m[2])}.{res_part(m[3])}"
        elif m := re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
            new = f"{m[1]}.middle.1.{m[2]}"
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.(resample|time_conv)(.*)$", key):
            new = f"encoder.downsamples.{m[1]}.{m[2]}{m[3]}"
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.(.+)$", key):
            new = f"encoder.downsamples.{m[1]}.{res_part(m[2])}"
        elif m := re.match(r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.+)$", key):
            new = f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{res_part(m[3])}"
        elif m := re.match(r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.+)$", key):
            new = f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
        else:
            raise AssertionError(f"unmapped key {key}")
        out[new] = value
    return out


def test_inverse_key_map_matches_diffusers_converter(vae):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = vae.model.state_dict()
    wan = diffusers_to_wan_vae_keys(sd)
    # Names from the table of docs/spec.md#vae.
    for name in ("decoder.middle.0.residual.0.gamma", "conv2.weight", "decoder.head.2.weight",
                 "decoder.upsamples.0.residual.0.gamma", "decoder.upsamples.4.shortcut.weight",
                 "decoder.upsamples.3.resample.1.weight", "encoder.downsamples.0.residual.2.weight"):  # fmt: skip
        assert name in wan, name
    assert set(convert_wan_vae_to_diffusers(wan)) == set(sd)


def test_original_vae_round_trip(vae, tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(diffusers_to_wan_vae_keys(vae.model.state_dict()), path)
    loaded = load_original_vae(path, device="cpu", dtype=torch.float32, config=TINY_VAE_ARGS)
    z = latents(1, 3, seed=3)
    assert torch.equal(loaded.decode(z), vae.decode(z))


def test_original_vae_wrong_file(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="not a Wan2.1 VAE"):
        load_original_vae(path, device="cpu", dtype=torch.float32, config=TINY_VAE_ARGS)


def test_diffusers_vae_folder(vae, tmp_path):
    vae.model.save_pretrained(tmp_path / "vae")
    loaded = load_diffusers_vae(tmp_path / "vae", device="cpu", dtype=torch.float32)
    z = latents(1, 2, seed=4)
    assert torch.equal(loaded.decode(z), vae.decode(z))


def test_wan21_config_is_the_spec_architecture():
    from diffusers import AutoencoderKLWan

    from tokentrim.wan.vae import WAN21_VAE_CONFIG

    with torch.device("meta"):
        model = AutoencoderKLWan(**WAN21_VAE_CONFIG)
    cfg = model.config
    # docs/spec.md#vae: dim 96, z_dim 16, dim_mult [1,2,4,4], 2 res blocks, no attention scales, temporal [F, T, T].
    assert (cfg.base_dim, cfg.z_dim, list(cfg.dim_mult), cfg.num_res_blocks) == (96, 16, [1, 2, 4, 4], 2)
    assert list(cfg.attn_scales) == [] and list(cfg.temperal_downsample) == [False, True, True]
    assert list(cfg.latents_mean) == list(LATENTS_MEAN) and list(cfg.latents_std) == list(LATENTS_STD)
