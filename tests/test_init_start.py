"""Image and video starts (`--init-image`, `--init-video`): what is encoded, how it enters the cache, what the
written video holds, and the bad inputs."""

import numpy as np
import pytest
import torch

from tokentrim.app.api import Pipeline
from tokentrim.app.backends import PRESETS
from tokentrim.app.inputs import image_start, latent_frames_of, resize, video_frames_of, video_start
from tokentrim.app.run_config import default_config_path, load_run_config
from tokentrim.errors import UserError
from tokentrim.pipelines import Request


@pytest.fixture(scope="module")
def tiny():
    return PRESETS["tiny"].load(torch.device("cpu"), torch.float32, True)


@pytest.fixture(scope="module")
def toy():
    return PRESETS["toy"].load(torch.device("cpu"), torch.float32, True)


def picture(tmp_path, h=50, w=70, seed=0):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / "start.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_frame_counts_of_the_causal_vae():
    assert [latent_frames_of(n, 4) for n in (1, 5, 9, 21, 8)] == [1, 2, 3, 6, None]
    assert [video_frames_of(n, 4) for n in (1, 3, 6)] == [1, 9, 21]
    assert latent_frames_of(6, 1) == 6 and video_frames_of(6, 1) == 6


def test_resize_modes():
    frames = np.zeros((1, 10, 40, 3), dtype=np.uint8)
    frames[:, :, :10] = 255  # a white left quarter
    assert resize(frames, (20, 20), "stretch").shape == (1, 20, 20, 3)
    cropped = resize(frames, (20, 20), "crop")  # scaled to 20x80, the centre 20 columns: no white left
    assert cropped.shape == (1, 20, 20, 3) and cropped.max() == 0
    assert resize(frames, (20, 20), "stretch")[0, :, :4].min() == 255  # stretched: the white quarter stays


def test_image_start_is_a_still_block_encoded_by_the_vae(tmp_path, tiny):
    path, _ = picture(tmp_path)
    obs = image_start(path, (64, 96), block=3, temporal=4)
    assert obs.frames.shape == (9, 64, 96, 3) and (obs.frames == obs.frames[:1]).all()  # the image 9 times
    assert obs.latent_frames == 3 and obs.drop == (1, 9)
    run = load_run_config(default_config_path("self_forcing"), ["tokentrim.enabled=false", "flowmo.mode=off"])
    embeds = torch.randn(1, 16, tiny.model.config.text_dim, generator=torch.Generator().manual_seed(1))
    result = Pipeline(tiny, run).generate(embeds, latent_frames=9, seed=0, start=obs)
    encoded = tiny.decoder.encode(torch.from_numpy(obs.frames)[None])
    assert torch.equal(result.latents[:, :3], encoded)  # the prefix is exactly the VAE encoding
    assert len(result.frames) == 1 + 4 * 8 - 8  # the still clip's repeats are not shown
    assert obs.settings["kind"] == "image" and len(obs.settings["sha256"]) == 64


def test_image_start_commits_the_encoding_as_a_generated_block_would_be(tmp_path, tiny, captured_caches):
    """The cache after the observed block holds what a clean pass over those latents writes."""
    from tokentrim.pipelines import SelfForcingPipeline
    from tokentrim.pipelines.self_forcing import SinkCachePolicy
    from tokentrim.wan.kv_cache import KVCache

    path, _ = picture(tmp_path, seed=3)
    prefix = tiny.decoder.encode(torch.from_numpy(image_start(path, (64, 96), 3, 4).frames)[None])
    embeds = torch.randn(1, 16, tiny.model.config.text_dim, generator=torch.Generator().manual_seed(2))
    SelfForcingPipeline(tiny.model)(Request(embeds, 6, seed=0, start=prefix))
    cache = captured_caches[0]
    policy = SinkCachePolicy(KVCache(tiny.model.config, 1, 21), 3)
    ctx = tiny.model.encode_context(embeds)
    with torch.no_grad():
        tiny.model(prefix, torch.zeros(1, 3), ctx, cache=policy.cache, plan=policy.plan(0, 3, commit=True))
    rows = 3 * tiny.model.config.tokens_per_frame
    assert torch.equal(cache.k[:, :, :rows], policy.cache.k[:, :, :rows])
    assert torch.equal(cache.v[:, :, :rows], policy.cache.v[:, :, :rows])


def test_framewise_image_start_is_one_latent_frame(tmp_path):
    path, _ = picture(tmp_path)
    obs = image_start(path, (64, 96), block=1, temporal=4)
    assert obs.frames.shape == (1, 64, 96, 3) and obs.latent_frames == 1 and obs.drop == (1, 1)


def test_video_extension_on_the_toy(tmp_path, toy):
    """The last N frames are the prefix (exactly the codec's encoding); the output is the generated frames, or with
    keep the given video first."""
    from tokentrim.toy import sample_scene
    from tokentrim.video import read_video, write_video

    scene = sample_scene(20_000_005)
    clip = scene.render(12)
    path = tmp_path / "given.mp4"
    write_video(path, clip, fps=8)
    given, _ = read_video(path)
    obs = video_start(path, (32, 32), block=3, temporal=1, frames=6, keep=True)
    assert (
        obs.latent_frames == 6 and np.array_equal(obs.frames, given[-6:]) and np.array_equal(obs.lead, given)
    )
    run = load_run_config(default_config_path("self_forcing", "toy"))
    embeds = toy.encoder_factory.get().encode([scene.prompt])
    result = Pipeline(toy, run).generate(embeds, latent_frames=15, seed=0, start=obs)
    assert torch.equal(result.latents[:, :6], toy.decoder.encode(torch.from_numpy(given[-6:])[None]))
    frames = result.frames
    assert len(frames) == 12 + 9 and np.array_equal(frames[:12], given)  # the given video, then 9 new frames
    plain = video_start(path, (32, 32), block=3, temporal=1, frames=6)
    result = Pipeline(toy, run).generate(embeds, latent_frames=15, seed=0, start=plain)
    assert len(result.frames) == 9  # the generated frames only


@pytest.mark.parametrize(
    "kind, kwargs, message",
    [
        ("image", {"path": "missing.png"}, "not found"),
        ("image", {"path": "text.txt"}, "is not an image"),
        ("video", {"frames": 5}, "must encode to whole 3-frame blocks: 3, 6, 9"),
        ("video", {"frames": 27}, "has 12 frames; `init_frames` 27 needs at least 27"),
        ("video", {"path": "text.txt", "frames": 3}, "cannot read video"),
    ],
)
def test_bad_starts(tmp_path, kind, kwargs, message):
    from tokentrim.toy import sample_scene
    from tokentrim.video import write_video

    (tmp_path / "text.txt").write_text("not a picture")
    write_video(tmp_path / "given.mp4", sample_scene(1).render(12), fps=8)
    path = tmp_path / kwargs.pop("path", "given.mp4")
    with pytest.raises(UserError, match=message):
        if kind == "image":
            image_start(path, (32, 32), 3, 1)
        else:
            video_start(path, (32, 32), 3, 1, **kwargs)
