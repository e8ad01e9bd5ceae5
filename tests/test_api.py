"""The product's shape: `tokentrim.load` and the README's Python section, one request in and a stream of blocks out
(order, content, closing), `generate` writing the mp4 as the blocks come, and run options declared once."""

import gc
import json
import re
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tokentrim
from tokentrim.app import generate as gen
from tokentrim.app.run_config import RUN_DEFAULTS, default_config_path, load_run_config
from tokentrim.errors import UserError
from tokentrim.pipelines import REGISTRY, Request, RollingForcingPipeline, SelfForcingPipeline
from tokentrim.pipelines.common import NoHook
from tokentrim.toy import HELD_OUT_SCENES, observed_start
from tokentrim.video import read_video, write_video
from tokentrim.wan import KVCache, build_model
from tokentrim_core import FlowMoConfig, TokenTrimConfig, options

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy():
    return tokentrim.load("self_forcing", preset="toy", device="cpu")


def python_blocks(text: str, after: str) -> list[str]:
    """The ```python blocks of a markdown section (from the line starting with `after` to the next heading)."""
    section = text[text.index(after) :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_python_section_runs(capsys):
    """The README's snippets as they are: the toy preset through `tokentrim.load`, then a bare loop."""
    first, second = python_blocks((ROOT / "README.md").read_text(), "**Python API**")
    scope: dict = {}
    exec(compile(first, "README.md", "exec"), scope)
    video = scope["video"]
    assert video.frames.shape == (30, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.latents.shape[:2] == (1, 30) and len(video.records) == 10
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 10 and printed[0].startswith("0 warmup (1, 3, 32, 32, 3)")
    exec(compile(second, "README.md", "exec"), scope)
    assert scope["out"].latents.shape[:2] == (1, 30) and len(scope["out"].records) == 10


def test_generate_and_stream_give_the_same_video(toy):
    prompt, start = observed_start(HELD_OUT_SCENES)
    video = toy.generate(prompt, latent_frames=12, seed=3, start=start)
    events = list(toy.stream(prompt, latent_frames=12, seed=3, start=start))
    assert [e.block for e in events] == [0, 1, 2, 3] and events[0].observed and not events[1].observed
    assert [(e.frames.start, e.frames.stop) for e in events] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert torch.equal(torch.cat([e.latents for e in events], 1), video.latents)
    assert np.array_equal(np.concatenate([e.decoded[0].numpy() for e in events]), video.frames)
    assert [e.record.to_dict() | {"score_ms": 0} for e in events] == [
        r.to_dict() | {"score_ms": 0} for r in video.records
    ]
    assert torch.equal(video.latents[:, :3], start)  # the observed block comes back as it was given


def test_rolling_forcing_hands_out_each_block_when_it_becomes_final(model, embeds):
    """Block b is final after window b + 4 (a 5-level window: denoising pass and clean pass per window, one more
    pass per regeneration): its event comes right then, in time order, with its own decision; the events together
    are what `__call__` returns."""
    request = Request(embeds, 21, seed=0, tokentrim=TokenTrimConfig(lam=0.0, warmup=1))
    calls, forward = [], model.forward
    model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    events, at = [], []
    for event in RollingForcingPipeline(model).stream(request):
        events.append(event)
        at.append(len(calls))
    prunes = [e.record.action == "prune" for e in events]
    assert [e.block for e in events] == [e.record.block for e in events] == list(range(7)) and any(prunes)
    assert at == [2 * (b + 5) + sum(prunes[: b + 1]) for b in range(7)]
    model.forward = forward
    whole = RollingForcingPipeline(model)(request)
    assert torch.equal(whole.latents, torch.cat([e.latents for e in events], dim=1))
    assert [r.to_dict() | {"score_ms": 0} for r in whole.records] == [
        e.record.to_dict() | {"score_ms": 0} for e in events
    ]


def test_closing_a_stream_frees_its_cache(model, embeds, monkeypatch):
    made, init = [], KVCache.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(KVCache, "__init__", remember)
    stream = SelfForcingPipeline(model).stream(Request(embeds, 9, seed=0))
    next(stream)
    assert made[-1]() is not None
    stream.close()
    gc.collect()
    assert made[-1]() is None and next(stream, None) is None


def test_a_request_is_checked_before_any_weights_and_a_loop_takes_tensors(tiny_config):
    run = load_run_config(default_config_path("self_forcing"))
    checker = run.checker(tiny_config)  # a meta-device model: nothing loaded
    assert next(checker.model.parameters()).device.type == "meta"
    run.request("a cat", 21, seed=0).check(checker)  # text is a valid prompt before encoding
    with pytest.raises(UserError, match="`latent_frames` must be a positive multiple of 3"):
        run.request("a cat", 20, seed=0).check(checker)
    with pytest.raises(UserError, match="`prompt` is empty"):
        run.request(" ", 21, seed=0).check(checker)
    # a hook takes the place of the run's TokenTrim settings
    assert run.request("a cat", 21, seed=0, hook=NoHook()).tokentrim is None
    with pytest.raises(UserError, match="not both"):
        Request("a cat", 21, seed=0, tokentrim=run.tokentrim, hook=NoHook()).check(checker)
    with pytest.raises(UserError, match="a seed or a torch.Generator, not both"):
        run.request("a cat", 21, seed=0, generator=torch.Generator()).check(checker)
    with pytest.raises(UserError, match="encode the text prompts"):
        next(SelfForcingPipeline(build_model("tiny")).stream(Request("a cat", 9, seed=0)))


def test_a_cpu_generator_gives_the_same_video_on_any_device(model, embeds):
    """Noise and in-loop draws from a CPU generator are made on the CPU and moved to the model's device; on the
    CPU that is the plain run with that generator."""
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    noise = torch.randn(1, 9, 16, 8, 12, generator=gen_a)
    torch.randn(1, 9, 16, 8, 12, generator=gen_b)
    a = SelfForcingPipeline(model)(Request(embeds, 9, noise=noise, generator=gen_a)).latents
    b = SelfForcingPipeline(model)(Request(embeds, 9, seed=5)).latents
    assert torch.equal(a, b)


# Writing as the blocks come --------------------------------------------------------------------------------------
@pytest.mark.slow  # 6 s: a 30-frame tiny video written twice
def test_the_mp4_grows_under_its_temporary_name_and_equals_the_one_shot_video(tmp_path):
    """`generate`'s writer: the temporary mp4 exists from the first block and grows while the run goes on (ffmpeg
    writes its output in 256 KB pieces: 45 latent frames of the tiny preset's VAE are 177 frames, about 0.8 MB); the
    finished file is the one a one-shot write of the same frames gives."""
    pipe = tokentrim.load("self_forcing", preset="tiny", device="cpu")
    target, sizes, frames = tmp_path / "video.mp4", [], []

    def watching(events):
        for event in events:  # the blocks before this one are written
            temporaries = list(tmp_path.glob(".video.mp4.tmp-*"))
            assert len(temporaries) == 1 and not target.exists()  # under the temporary name only
            sizes.append(temporaries[0].stat().st_size)
            frames.append(event.decoded[0].numpy())
            yield event

    out = gen.write_video_files(
        watching(pipe.stream("a cat", latent_frames=45, seed=0)),
        settings={"seed": 0},
        fps=pipe.fps,
        video=target,
        log=tmp_path / "video.json",
    )
    assert len(sizes) == 15 and sizes == sorted(sizes) and sizes[-1] > sizes[0]  # it grew during the run
    assert not list(tmp_path.glob(".*tmp*"))
    one_shot = write_video(tmp_path / "one_shot.mp4", np.concatenate(frames), fps=pipe.fps)
    assert target.read_bytes() == one_shot.read_bytes()
    assert read_video(target)[0].shape == (177, 64, 96, 3)
    log = json.loads((tmp_path / "video.json").read_text())
    assert [b["block"] for b in log["blocks"]] == [r.block for r in out.records] == list(range(15))


def test_an_interrupted_stream_leaves_no_file(toy, tmp_path):
    prompt, start = observed_start(HELD_OUT_SCENES)

    def interrupted(events):
        for i, event in enumerate(events):
            if i == 2:
                raise KeyboardInterrupt
            yield event

    with pytest.raises(KeyboardInterrupt):
        gen.write_video_files(interrupted(toy.stream(prompt, latent_frames=15, seed=0, start=start)), settings={},
                              fps=toy.fps, video=tmp_path / "v.mp4", log=tmp_path / "v.json",
                              frames_dir=tmp_path / "v")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


# Options declared once ------------------------------------------------------------------------------------------
def test_every_flagged_option_is_on_the_command_line_with_its_range_and_default():
    from tokentrim.app.args import run_options
    from tokentrim.app.cli import build_parser

    parser = build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    flags = {a.option_strings[0]: a for a in generate._actions if a.option_strings}
    for section, cls, name in run_options():
        opt, kind, default = options(cls)[name]
        action = flags[opt.flag]
        run_default = getattr(RUN_DEFAULTS.get(section, cls()), name)
        assert opt.expected(kind) in action.help and f"config default {run_default}" in action.help, opt.flag
    assert {"--p", "--lam", "--warmup", "--max-regen", "--flowmo"} <= set(flags)
    assert flags["--latent-frames"].default == 21 and flags["--seed"].default == 0


def test_the_page_shows_every_labelled_option_with_its_default():
    from tokentrim.app.demo_run import PAGE_OPTIONS

    shown = {o.key: o.default for o in PAGE_OPTIONS}
    assert shown == {"latent_frames": options(Request)["latent_frames"][2], "seed": None,
                     "tokentrim.enabled": True, "tokentrim.p": 0.1, "tokentrim.lam": 2.0,
                     "flowmo.mode": "first_block"}  # fmt: skip


def test_shipped_configs_hold_only_what_differs_from_the_defaults():
    defaults = load_run_config().to_dict()
    for path in sorted((ROOT / "tokentrim" / "configs").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for section, values in data.items():
            if section == "pipeline":
                continue
            for key, value in values.items():
                default = defaults[section][key]
                assert value != (list(default) if isinstance(default, tuple) else default), (
                    f"{path}: {section}.{key}"
                )


def test_the_old_keys_of_moved_settings_still_load():
    run = load_run_config(default_config_path("self_forcing"), ["tokentrim.regen_noise=fresh"])
    assert run.sampler.regen_noise == "fresh"
    assert load_run_config(default_config_path("rolling_forcing"), ["tokentrim.regen_noise=same"]).pipeline
    with pytest.raises(UserError, match="regen_noise=fresh is not available for rolling_forcing"):
        load_run_config(default_config_path("rolling_forcing"), ["tokentrim.regen_noise=fresh"])


def test_one_baseline():
    run = load_run_config(default_config_path("self_forcing"), ["tokentrim.p=0.2"])
    base = run.baseline()
    assert (base.tokentrim.enabled, base.flowmo.mode, base.tokentrim.p) == (False, "off", 0.2)
    assert base.samplers == run.samplers and (run.tokentrim.enabled, run.flowmo.mode) == (True, "first_block")
    assert FlowMoConfig().mode == "off" and RUN_DEFAULTS["flowmo"].mode == "first_block"
    assert set(REGISTRY) <= set(run.to_dict())
