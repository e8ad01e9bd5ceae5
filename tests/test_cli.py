"""The command line end to end on the tiny preset: generate (single, batch, resume), figures, bench, reproduce,
and one clear error (exit status 2, no traceback) per bad input."""

import json

import numpy as np
import pytest
import torch

from tokentrim.app.cli import main
from tokentrim.app.generate import batch_outputs, shard
from tokentrim.video import read_video

PROMPT = "a dog runs on the beach"


def run(capsys, *argv):
    try:
        code = main([*argv])
    except SystemExit as stop:  # argument-parser errors
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_single_video_and_log(tmp_path, capsys):
    video = tmp_path / "dog.mp4"
    code, out, _ = run(capsys, "generate", "--preset", "tiny", "--pipeline", "rolling_forcing", "--prompt", PROMPT,
                       "--latent-frames", "15", "--out", str(video), "--save-latents", "tokentrim.lam=0.5")  # fmt: skip
    assert code == 0 and str(video) in out
    frames, fps = read_video(video)
    assert frames.shape == (1 + 4 * 14, 64, 96, 3) and fps == 16
    log = json.loads(video.with_suffix(".json").read_text())
    assert (
        log["config"]["run"]["pipeline"] == "rolling_forcing"
        and log["config"]["run"]["tokentrim"]["lam"] == 0.5
    )
    assert [b["block"] for b in log["blocks"]] == [0, 1, 2, 3, 4]
    fields = {"block", "frames", "action", "severity", "mean", "std", "threshold", "pruned_positions",
              "tokens_removed", "regenerated_severity", "score_ms"}  # fmt: skip
    assert fields <= set(log["blocks"][3])
    assert torch.load(video.with_suffix(".latents.pt"), weights_only=True).shape == (15, 16, 8, 12)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_generate_with_int8_weights_on_the_static_cache(tmp_path, capsys):
    """--quantize and --cache reach the model and the loop, and the decision log says so; the latents differ from
    the fp32 model's on the dynamic cache, by a few per cent at most over two blocks (int8 weights moved the toy's
    first block by 0.5 %, docs/benchmarks.md#weight-quantisation)."""
    pytest.importorskip("torchao")
    base, fast = tmp_path / "base.mp4", tmp_path / "fast.mp4"
    common = ["generate", "--preset", "tiny", "--prompt", PROMPT, "--latent-frames", "6", "--save-latents"]
    assert run(capsys, *common, "--out", str(base))[0] == 0
    assert run(capsys, *common, "--out", str(fast), "--quantize", "int8", "--cache", "static")[0] == 0
    log = json.loads(fast.with_suffix(".json").read_text())["config"]
    assert log["quantize"] == "int8" and log["run"]["self_forcing"]["cache"] == "static"
    assert (
        "quantize" not in json.loads(base.with_suffix(".json").read_text())["config"]
    )  # defaults unrecorded
    a, b = (torch.load(v.with_suffix(".latents.pt"), weights_only=True) for v in (base, fast))
    assert 0 < (a - b).norm() / a.norm() < 0.05


def test_baseline_flag_logs_off(tmp_path, capsys):
    video = tmp_path / "base.mp4"
    code, _, _ = run(capsys, "generate", "--preset", "tiny", "--prompt", PROMPT, "--latent-frames", "9",
                     "--out", str(video), "--no-tokentrim")  # fmt: skip
    log = json.loads(video.with_suffix(".json").read_text())
    assert code == 0 and [b["action"] for b in log["blocks"]] == ["off"] * 3
    assert log["config"]["run"]["flowmo"]["mode"] == "off"


@pytest.mark.slow
def test_batch_is_resumable_and_deterministic(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat on a boat\n\n# comment\na bird in the sky\n")
    out_dir = tmp_path / "batch"
    args = ["generate", "--preset", "tiny", "--prompts", str(prompts), "--out-dir", str(out_dir),
            "--latent-frames", "6", "--save-latents", "--seed", "5"]  # fmt: skip
    assert run(capsys, *args)[0] == 0
    first, _ = batch_outputs(out_dir, 0, "a cat on a boat")
    second, _ = batch_outputs(out_dir, 1, "a bird in the sky")
    latents = {p: torch.load(p.with_suffix(".latents.pt"), weights_only=True) for p in (first, second)}
    mtime = first.stat().st_mtime_ns
    second.unlink()  # an interrupted run: the second video never finished
    code, out, _ = run(capsys, *args)
    assert code == 0 and str(second) in out and str(first) not in out
    assert first.stat().st_mtime_ns == mtime
    assert torch.equal(torch.load(second.with_suffix(".latents.pt"), weights_only=True), latents[second])
    assert not torch.equal(latents[first], latents[second])  # prompt i uses seed + i
    code, out, _ = run(capsys, *args)
    assert code == 0 and "nothing to do" in out


def test_shard_assignment():
    assert shard(list(range(10)), 0, 3) == [0, 3, 6, 9]
    assert shard(list(range(10)), 2, 3) == [2, 5, 8]
    assert sorted(sum((shard(list(range(10)), r, 4) for r in range(4)), [])) == list(range(10))


def test_missing_model_files_error(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--model-dir", str(tmp_path), "--checkpoint", str(tmp_path / "c.pt"),
                       "--prompt", PROMPT)  # fmt: skip
    assert code == 2 and "config.json" in err


@pytest.mark.slow
def test_figure_drift_from_a_generated_log(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    run(capsys, "generate", "--preset", "tiny", "--prompt", PROMPT, "--latent-frames", "15", "--out", str(video),
        "--save-latents")  # fmt: skip
    png = tmp_path / "drift.png"
    assert run(capsys, "figure", "drift", str(video.with_suffix(".json")), "-o", str(png))[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heat = tmp_path / "heat.png"
    code = run(capsys, "figure", "heatmap", str(video.with_suffix(".latents.pt")), "--video", str(video),
               "-o", str(heat))[0]  # fmt: skip
    assert code == 0 and heat.stat().st_size > 1000


def test_bench_compare_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, _, _ = run(capsys, "bench", "--preset", "tiny", "--pipeline", "self_forcing", "--latent-frames", "12",
                     "--compare", "--repeats", "2", "--no-decode", "--json", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    assert code == 0 and report["overhead_ratio"] > 0 and report["decoded"] is False
    for name in ("baseline", "tokentrim"):
        r = report[name]
        assert r["runs"] == 2 and len(r["wall_s"]) == 2
        for key in ("block_latency_ms_median", "dit_fps", "scoring_s_median", "scoring_share",
                    "regeneration_rate", "peak_memory_mb"):  # fmt: skip
            assert r[key] >= 0, key
        assert r["decode_s_median"] is None and r["end_to_end_fps"] is None
    assert report["overhead_ratio"] == pytest.approx(
        report["tokentrim"]["wall_s_median"] / report["baseline"]["wall_s_median"]
    )
    from tokentrim.wan import get_preset

    c = get_preset("tiny")  # keys + values, every layer, 21 cached frames (the SF default), fp32 on CPU
    expected = 2 * c.num_layers * 21 * c.tokens_per_frame * c.dim * 4 / 2**20
    assert report["kv_cache_mb"] == pytest.approx(expected)


def test_bench_times_the_decoder_apart(tmp_path, capsys):
    """The tiny preset's VAE decodes every block, timed apart from the loop: fps of the loop and end to end."""
    out = tmp_path / "bench.json"
    code, _, _ = run(capsys, "bench", "--preset", "tiny", "--pipeline", "self_forcing", "--latent-frames", "12",
                     "--repeats", "1", "--warmup-runs", "0", "--json", str(out))  # fmt: skip
    r = json.loads(out.read_text())["run"]
    assert code == 0 and r["decode_s_median"] > 0
    assert r["end_to_end_s_median"] == pytest.approx(r["wall_s_median"] + r["decode_s_median"])
    assert r["video_frames"] == 1 + 4 * (12 - 1)  # the Wan VAE's frames for 12 latent frames
    assert r["dit_fps"] == pytest.approx(r["video_frames"] / r["wall_s_median"])
    assert r["end_to_end_fps"] == pytest.approx(r["video_frames"] / r["end_to_end_s_median"])
    assert r["end_to_end_fps"] < r["dit_fps"]
    assert 0 < r["first_block_latency_ms_median"] < 1000 * r["end_to_end_s_median"]


@pytest.mark.slow
def test_bench_compile_measures_eager_then_compiled_in_one_run(tmp_path, capsys):
    """--compile: the same runs eager, then compiled (dynamo's `eager` backend: tracing only, bit-exact), with the
    graphs compiled: two call kinds for Self Forcing on the static cache."""
    out = tmp_path / "bench.json"
    code, _, _ = run(capsys, "bench", "--preset", "tiny", "--pipeline", "self_forcing", "--latent-frames", "12",
                     "--compile", "--compile-backend", "eager", "--cache", "static", "--no-decode",
                     "--repeats", "1", "--warmup-runs", "1", "--json", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    assert code == 0 and report["compile"] is True and report["cache"] == "static" and not report["decoded"]
    assert report["compiled_graphs"] == 2  # the block calls, and FlowMo's call on block 0 (it writes nothing)
    assert report["compile_speedup"] == pytest.approx(
        report["eager"]["run"]["wall_s_median"] / report["run"]["wall_s_median"]
    )
    assert report["run"]["decode_s_median"] is None and report["run"]["end_to_end_fps"] is None


@pytest.mark.slow
def test_reproduce_tiny_writes_tables(tmp_path, capsys):
    out = tmp_path / "results"
    code, stdout, _ = run(capsys, "reproduce", "--preset", "tiny", "--num-prompts", "1", "--latent-frames", "15",
                          "--variants", "baseline", "tokentrim", "tokentrim_p0.2", "--out", str(out),
                          "--segment-seconds", "1")  # fmt: skip
    assert code == 0
    table = (out / "table.md").read_text().split("\n\n")[0].splitlines()
    assert len(table) == 2 + 2 * 3  # header, rule, 2 pipelines x 3 variants
    assert "lower is better" in (out / "table.md").read_text().lower()  # the caption
    csv_rows = (out / "table.csv").read_text().splitlines()
    header = (
        "pipeline,variant,videos,prune_rate,runtime_x,colour_tiles,colourfulness,structure,sharpness,detail,"
        "textured_area,spatial_information,warp_error,motion,content_motion,temporal_information,"
        "effective_frame_rate"
    )
    assert csv_rows[0] == header + ",degenerate" and len(csv_rows) == 7
    assert (out / "drift_rolling_forcing.png").exists() and (out / "drift_self_forcing.png").exists()
    # rerun: everything exists, nothing is regenerated
    videos = sorted((out / "videos").rglob("*.mp4"))
    stamps = [v.stat().st_mtime_ns for v in videos]
    assert run(capsys, "reproduce", "--preset", "tiny", "--num-prompts", "1", "--latent-frames", "15",
               "--variants", "baseline", "tokentrim", "tokentrim_p0.2", "--out", str(out),
               "--segment-seconds", "1")[0] == 0  # fmt: skip
    assert [v.stat().st_mtime_ns for v in videos] == stamps


@pytest.mark.slow
def test_interrupted_batch_leaves_no_partial_output_and_resumes_identically(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt in the middle of the second video, then a rerun, equals one uninterrupted run."""
    from tokentrim import video as video_module

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat on a boat\na bird in the sky\n")

    def args(folder):
        return ["generate", "--preset", "tiny", "--prompts", str(prompts), "--out-dir", str(folder),
                "--latent-frames", "9", "--save-latents", "--seed", "2"]  # fmt: skip

    assert run(capsys, *args(tmp_path / "clean"))[0] == 0
    appended, append = [], video_module.VideoWriter.append

    def interrupting(self, frames):
        appended.append(self.path)
        if len(appended) == 5:  # video 0 has 3 blocks; stop inside video 1's second block
            raise KeyboardInterrupt
        append(self, frames)

    monkeypatch.setattr(video_module.VideoWriter, "append", interrupting)
    assert run(capsys, *args(tmp_path / "cut"))[0] == 130
    monkeypatch.setattr(video_module.VideoWriter, "append", append)
    first, first_log = batch_outputs(tmp_path / "cut", 0, "a cat on a boat")
    second, second_log = batch_outputs(tmp_path / "cut", 1, "a bird in the sky")
    assert first.exists() and first_log.exists()
    assert not second.exists() and not second_log.exists()
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")]  # no temporary files left
    code, out, _ = run(capsys, *args(tmp_path / "cut"))
    assert code == 0 and "skipping 1 finished" in out
    for index, prompt in enumerate(["a cat on a boat", "a bird in the sky"]):
        resumed, _ = batch_outputs(tmp_path / "cut", index, prompt)
        clean, _ = batch_outputs(tmp_path / "clean", index, prompt)
        load = lambda p: torch.load(p.with_suffix(".latents.pt"), weights_only=True)
        assert torch.equal(load(resumed), load(clean))
        assert (read_video(resumed)[0] == read_video(clean)[0]).all()


def test_ranks_from_the_environment_take_their_share(tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, _ = run(capsys, "generate", "--preset", "tiny", "--prompts", str(prompts), "--out-dir",
                     str(tmp_path), "--latent-frames", "3")  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [batch_outputs(tmp_path, 1, "two")[0].name]


def test_png_frames_are_the_decoded_frames(tmp_path, capsys):
    """The PNGs are exactly a one-shot VAE decode of the saved latents (not the lossy mp4)."""
    from PIL import Image

    from tokentrim.wan.components import build_tiny_components

    video = tmp_path / "v.mp4"
    code, _, _ = run(capsys, "generate", "--preset", "tiny", "--prompt", PROMPT, "--latent-frames", "6",
                     "--out", str(video), "--png-frames", "--no-tokentrim", "--save-latents")  # fmt: skip
    pngs = sorted((tmp_path / "v").glob("*.png"))
    assert code == 0 and [p.name for p in pngs] == [f"{i:05d}.png" for i in range(1 + 4 * 5)]
    latents = torch.load(video.with_suffix(".latents.pt"), weights_only=True)
    expected = build_tiny_components(0, device="cpu", dtype=torch.float32).vae.decode(latents[None])[0]
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in pngs]), expected.numpy())


def test_single_prompt_overwrites_and_checkpoint_with_preset_is_refused(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    argv = ["generate", "--preset", "tiny", "--prompt", PROMPT, "--latent-frames", "3", "--out", str(video)]
    assert run(capsys, *argv)[0] == 0
    stamp = video.stat().st_mtime_ns
    assert run(capsys, *argv)[0] == 0 and video.stat().st_mtime_ns != stamp
    code, _, err = run(capsys, *argv, "--checkpoint", str(tmp_path / "c.pt"))
    assert code == 2 and "drop --model-dir / --checkpoint" in err
    code, _, err = run(capsys, *argv[:-1], str(tmp_path / "v.avi"))
    assert code == 2 and "must be an .mp4" in err


def test_toy_preset_runs_its_own_sampler_config(tmp_path, capsys):
    """`--preset toy` defaults to configs/toy/<pipeline>.yaml (shift 1); other presets to configs/<pipeline>.yaml;
    the log records the config that ran."""
    from tokentrim.app.run_config import default_config_path, load_run_config

    for pipeline in ("self_forcing", "rolling_forcing"):
        wan = load_run_config(default_config_path(pipeline)).sampler
        toy = load_run_config(default_config_path(pipeline, "toy")).sampler
        assert wan.timestep_shift == 5.0 and toy.timestep_shift == 1.0
        assert toy.denoising_steps == wan.denoising_steps
        assert default_config_path(pipeline, "tiny") == default_config_path(pipeline)
    video = tmp_path / "toy.mp4"
    code, _, _ = run(capsys, "generate", "--preset", "toy", "--prompt", "a red circle bounces over a plain blue background",
                     "--latent-frames", "6", "--out", str(video), "--no-tokentrim")  # fmt: skip
    log = json.loads(video.with_suffix(".json").read_text())
    assert code == 0 and log["config"]["run"]["self_forcing"]["timestep_shift"] == 1.0
    frames, _ = read_video(video)
    assert frames.shape[1:] == (32, 32, 3)


def test_toy_scene_starts_from_the_observed_first_block(tmp_path, capsys):
    """`--scene N`: the scene's prompt, its first block observed (lossless PNGs == the world's frames), the rest
    generated; the log says so. --scene without the toy preset, or with a prompt, is one clear error."""
    from PIL import Image

    from tokentrim.toy import TOY_CONFIG, sample_scene

    fpb = TOY_CONFIG.frames_per_block
    video = tmp_path / "scene.mp4"
    code, _, _ = run(capsys, "generate", "--preset", "toy", "--scene", "20000001", "--latent-frames",
                     str(3 * fpb), "--out", str(video), "--png-frames")  # fmt: skip
    assert code == 0
    log = json.loads(video.with_suffix(".json").read_text())
    scene = sample_scene(20000001)
    assert log["config"]["prompt"] == scene.prompt and log["config"]["observed_frames"] == fpb
    assert log["config"]["scene"] == 20000001 and [b["block"] for b in log["blocks"]] == [0, 1, 2]
    pngs = sorted(video.with_suffix("").glob("*.png"))
    assert len(pngs) == 3 * fpb
    truth = scene.render(fpb)
    for i in range(fpb):
        np.testing.assert_array_equal(np.asarray(Image.open(pngs[i]).convert("RGB")), truth[i])
    code, _, err = run(
        capsys, "generate", "--preset", "tiny", "--scene", "1", "--out", str(tmp_path / "x.mp4")
    )
    assert code == 2 and "--preset toy" in err and "Traceback" not in err
    code, _, err = run(capsys, "generate", "--preset", "toy", "--scene", "1", "--prompt", "a red circle")
    assert code == 2 and "own prompt" in err


def test_reproduce_toy_starts_from_held_out_scenes(tmp_path, capsys):
    """The toy grid's default prompts are held-out scenes, each started from its observed first block (the saved
    latents' first block equals the codec's encoding of the world's frames)."""
    from tokentrim.toy import HELD_OUT_SCENES, TOY_CONFIG, observed_start

    out = tmp_path / "results"
    code, _, _ = run(capsys, "reproduce", "--preset", "toy", "--num-prompts", "2", "--pipelines", "rolling_forcing",
                     "--variants", "baseline", "--latent-frames", "18", "--segment-seconds", "1",
                     "--out", str(out))  # fmt: skip
    assert code == 0
    for i, log in enumerate(sorted((out / "videos" / "rolling_forcing" / "baseline").glob("*.json"))):
        config = json.loads(log.read_text())["config"]
        prompt, first_block = observed_start(HELD_OUT_SCENES + i)
        assert config["scene"] == HELD_OUT_SCENES + i and config["prompt"] == prompt
        assert config["observed_frames"] == TOY_CONFIG.frames_per_block
        latents = torch.load(log.with_suffix(".latents.pt"), weights_only=True)
        assert torch.equal(latents[: first_block.shape[1]], first_block[0])
