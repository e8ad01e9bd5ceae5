"""Every bad input: exit status 2, one line saying what to change, no traceback, no file left behind; and
interruptions (SIGINT, SIGTERM, SIGKILL then a rerun) leave no temporary or half-written files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokentrim.app.cli import main

TOY = ["generate", "--preset", "toy", "--prompt", "a red circle"]
IN = "{in}"  # replaced by the folder of prepared inputs

CASES = [
    # generate: frames, seeds, TokenTrim values
    (TOY + ["--latent-frames", "10"], "--latent-frames must be a positive multiple of 3"),
    (TOY + ["--latent-frames", "0"], "--latent-frames: latent_frames must be an int >= 1, got 0"),
    (TOY + ["--latent-frames", "abc"], "--latent-frames: latent_frames must be an int >= 1, got abc"),
    (TOY + ["--pipeline", "rolling_forcing", "--latent-frames", "12"], "at least 15 latent frames"),
    (TOY + ["--seed", str(2**64)], "--seed: seed must be an int >= 0 and <= 9223372036854775807"),
    (TOY + ["--seed", "-1"], "--seed: seed must be an int >= 0"),
    (TOY + ["--p", "0"], "--p: p must be a finite number > 0 and < 1, got 0"),
    (TOY + ["--p", "1.5"], "--p: p must be a finite number > 0 and < 1, got 1.5"),
    (TOY + ["--lam", "-1"], "--lam: lam must be a finite number >= 0, got -1"),
    (TOY + ["--lam", "nan"], "--lam: lam must be a finite number >= 0, got nan"),
    (TOY + ["--lam", "inf"], "--lam: lam must be a finite number >= 0, got inf"),
    (TOY + ["--p=-inf"], "--p: p must be a finite number > 0 and < 1, got -inf"),
    (TOY + ["tokentrim.lam=inf"], "lam must be a finite number >= 0, got inf"),
    (TOY + ["tokentrim.p=nan"], "p must be a finite number > 0 and < 1, got nan"),
    (TOY + ["--warmup", "-1"], "--warmup: warmup must be an int >= 0, got -1"),
    (TOY + ["--max-regen", "1.5"], "--max-regen: max_regen must be an int >= 0, got 1.5"),
    (TOY + ["--flowmo", "sometimes"], "argument --flowmo: invalid choice"),
    # generate: config files and overrides
    (TOY + ["tokentrim.nope=1"], "unknown key 'tokentrim.nope'; tokentrim has enabled, p, lam"),
    (TOY + ["tokentrim.p"], "overrides must look like key=value"),
    (TOY + ["tokentrim.p=2"], "p must be a finite number > 0 and < 1, got 2"),
    # a value of the wrong type names its key and what it must be
    (TOY + ["tokentrim.lam=lots"], "tokentrim.lam must be a number, got lots"),
    (TOY + ["tokentrim.warmup=1.5"], "tokentrim.warmup must be an integer, got 1.5"),
    (TOY + ["tokentrim.enabled=maybe"], "tokentrim.enabled must be true or false, got maybe"),
    (TOY + ["flowmo.steps=[a]"], "flowmo.steps must be a list of integers, got [a]"),
    (TOY + ["self_forcing.denoising_steps=abc"], "self_forcing.denoising_steps must be a list, got abc"),
    (TOY + ["--config", "{in}/wrong_type.yaml"], "tokentrim.lam must be a number, got 'lots'"),
    (TOY + ["--config", "{in}/wrong_entry.yaml"], "flowmo.steps must be a list of integers"),
    (TOY + ["flowmo.steps=[9]"], "must index the 4 denoising steps"),
    (
        TOY + ["--pipeline", "rolling_forcing", "--latent-frames", "15", "tokentrim.regen_noise=fresh"],
        "regen_noise=fresh is not available for rolling_forcing",
    ),
    (TOY + ["self_forcing.denoising_steps=[1000,1000]"], "denoising_steps must be strictly decreasing"),
    (TOY + ["self_forcing.denoising_steps=[1000,1500]"], "integers in (0, 1000]"),
    (TOY + ["self_forcing.timestep_shift=0"], "timestep_shift must be"),
    (TOY + ["--config", "{in}/missing.yaml"], "config file not found"),
    (TOY + ["--config", "{in}/binary.dat"], "is not a text (YAML) file"),
    (TOY + ["--config", "{in}/broken.yaml"], "is not valid YAML"),
    (TOY + ["--config", "{in}/list.yaml"], "must hold a mapping"),
    (
        TOY
        + [
            "--config",
            "{in}/wrong_pipeline.yaml",
            "--pipeline",
            "rolling_forcing",
            "--latent-frames",
            "15",
            "rolling_forcing.attention_frames=12",
        ],
        "must hold the anchor block",
    ),  # fmt: skip
    # generate: device, dtype, attention
    (TOY + ["--device", "tpu"], "--device must look like cpu, cuda or cuda:N"),
    (TOY + ["--device", "cuda:7"], "--device cuda:7"),
    (TOY + ["--dtype", "fp8"], "--dtype must be one of"),
    (TOY + ["--attention", "flash"], "needs flash-attn"),
    # generate: prompts, scenes
    (["generate", "--preset", "toy", "--prompt", ""], "--prompt is empty"),
    (["generate", "--preset", "toy", "--prompt", "a red " + "circle " * 2000], "the toy model takes at most"),
    (["generate", "--preset", "toy", "--prompt", "a zebra " * 2000], "the toy text encoder does not know"),
    (["generate", "--preset", "toy"], "give exactly one of --prompt"),
    (TOY + ["--prompts", "{in}/prompts.txt", "--out-dir", "o"], "give exactly one of --prompt"),
    (["generate", "--preset", "toy", "--prompts", "{in}/prompts.txt"], "--prompts needs --out-dir"),
    (
        ["generate", "--preset", "toy", "--prompts", "{in}/missing.txt", "--out-dir", "o"],
        "prompt file not found",
    ),
    (
        ["generate", "--preset", "toy", "--prompts", "{in}/binary.dat", "--out-dir", "o"],
        "is not a UTF-8 text file",
    ),
    (["generate", "--preset", "toy", "--prompts", "{in}/empty.txt", "--out-dir", "o"], "holds no prompts"),
    (TOY + ["--out-dir", "o"], "--out-dir is for --prompts"),
    (["generate", "--preset", "tiny", "--scene", "3"], "--scene is for the toy world model"),
    (["generate", "--preset", "toy", "--scene", "-1"], "--scene: the seed must be an int >= 0"),
    (
        ["generate", "--preset", "toy", "--scene", "3", "--prompt", "a red circle"],
        "--scene brings its own prompt",
    ),
    # generate: image and video starts
    (TOY + ["--init-image", "{in}/missing.png"], "--init-image {in}/missing.png not found"),
    (TOY + ["--init-image", "{in}/text.txt"], "is not an image PIL can read"),
    (TOY + ["--init-video", "{in}/text.txt"], "cannot read video"),
    (TOY + ["--log", "/dev/null"], "--log /dev/null is a device; give a file name there instead"),
    (TOY + ["--init-frames", "9"], "--init-frames / --keep-init go with --init-video"),
    (TOY + ["--init-image", "{in}/text.txt", "--init-video", "{in}/text.txt"], "not both"),
    (
        ["generate", "--preset", "toy", "--scene", "3", "--init-image", "{in}/text.txt"],
        "--scene brings its own",
    ),
    (TOY + ["--init-video", "{in}/a.mp4", "--init-frames", "5"], "must encode to whole 3-frame blocks"),
    (
        [
            "generate",
            "--preset",
            "tiny",
            "--prompt",
            "a cat",
            "--pipeline",
            "causal_forcing_framewise",
            "--init-video",
            "{in}/a.mp4",
            "--init-frames",
            "2",
        ],
        "must encode to whole 1-frame blocks: 1, 5, 9",
    ),
    # generate: outputs
    (TOY + ["--out", "x.avi"], "--out must be an .mp4 file"),
    (TOY + ["--out", "{in}/afile/x.mp4"], "is a file, not a folder"),
    (TOY + ["--out", "/proc/tokentrim-nope/x.mp4"], "cannot be written"),
    (TOY + ["--out", "{in}/folder.mp4"], "is a folder; give a file name"),
    (TOY + ["--log", "{in}/afile/x.json"], "is a file, not a folder"),
    (
        ["generate", "--preset", "toy", "--prompts", "{in}/prompts.txt", "--out-dir", "{in}/afile"],
        "--out-dir {in}/afile is a file",
    ),
    # generate: model files
    (TOY + ["--checkpoint", "{in}/ckpt.pt"], "uses built-in weights: drop --model-dir / --checkpoint"),
    (["generate", "--prompt", "x"], "give a --preset (tiny, toy), or both --model-dir"),
    (["generate", "--model-dir", "{in}/nowhere", "--checkpoint", "c.pt", "--prompt", "x"], "does not exist"),
    (
        ["generate", "--model-dir", "{in}/empty_dir", "--checkpoint", "c.pt", "--prompt", "x"],
        "is neither a Wan2.1 model folder",
    ),
    (
        ["generate", "--model-dir", "{in}/wan", "--checkpoint", "{in}/missing.pt", "--prompt", "x"],
        "DiT checkpoint not found",
    ),
    (
        [
            "generate",
            "--model-dir",
            "{in}/wan",
            "--checkpoint",
            "{in}/truncated.safetensors",
            "--prompt",
            "x",
        ],
        "is truncated",
    ),
    (
        ["generate", "--model-dir", "{in}/wan", "--checkpoint", "{in}/binary.dat", "--prompt", "x"],
        "is not a PyTorch checkpoint, or it is truncated",
    ),
    (
        [
            "generate",
            "--model-dir",
            "{in}/diffusers_no_text",
            "--checkpoint",
            "{in}/diffusers_no_text",
            "--prompt",
            "x",
        ],
        "is missing: text_encoder/config.json",
    ),  # fmt: skip
    (["generate", "--model-dir", "{in}/wan", "--prompt", "x"], "the official weights need both"),
    # eval
    (["eval", "--json", "e.json"], "give exactly one of"),
    (["eval", "{in}/missing.mp4", "--json", "e.json"], "not found"),
    (["eval", "{in}/text.txt", "--json", "e.json"], "text.txt"),
    (["eval", "{in}/text.txt", "--json", "{in}"], "is a folder"),
    (["eval", "{in}/text.txt", "--json", "{in}/afile/e.json"], "is a file, not a folder"),
    (["eval", "--pairs", "{in}/missing.txt", "--json", "e.json"], "not found"),
    (["eval", "{in}/text.txt", "--json", "e.json", "--segment-seconds", "0"], "--segment-seconds"),
    # figure
    (["figure", "drift", "{in}/binary.dat", "-o", "d.png"], "is not a text file"),
    (["figure", "drift", "{in}/text.txt", "-o", "d.png"], "is not valid JSON"),
    (["figure", "drift", "{in}/list.json", "-o", "d.png"], "is not a TokenTrim decision log"),
    (["figure", "drift", "{in}/missing.json", "-o", "d.png"], "decision log not found"),
    (["figure", "drift", "{in}/log.json", "-o", "{in}/afile/d.png"], "is a file, not a folder"),
    (["figure", "drift", "{in}/log.json", "-o", "d.jpg"], "-o must name a .png file"),
    (["figure", "heatmap", "{in}/missing.pt", "-o", "h.png"], "latents file not found"),
    (["figure", "heatmap", "{in}/text.txt", "-o", "h.png"], "cannot load"),
    (["figure", "heatmap", "{in}/text.txt", "-o", "h.png", "--frames-per-block", "0"], "--frames-per-block"),
    (["figure", "frames", "{in}/missing.mp4", "-o", "f.png"], "not found"),
    (["figure", "frames", "{in}/a.mp4", "-o", "f.png", "--labels", "a", "b"], "--labels needs 1 names"),
    # bench
    (["bench", "--preset", "toy", "--repeats", "0"], "--repeats: the value must be an int >= 1"),
    (["bench", "--preset", "toy", "--warmup-runs", "-1"], "--warmup-runs: the value must be an int >= 0"),
    (["bench", "--preset", "toy", "--latent-frames", "10"], "multiple of 3"),
    (["bench", "--preset", "toy", "--json", "{in}/afile/b.json"], "is a file, not a folder"),
    (["bench", "--preset", "toy", "--random-weights"], "--random-weights builds the full-size DiT by itself"),
    (["bench"], "give --preset tiny|toy, --random-weights"),
    (
        ["bench", "--preset", "toy", "--quantize", "fp8"],
        "fp8 weights need a CUDA GPU of compute capability 8.9",
    ),
    (["bench", "--preset", "toy", "--quantize", "int4"], "argument --quantize: invalid choice"),
    (["bench", "--preset", "toy", "--cache", "fixed"], "argument --cache: invalid choice"),
    ([*TOY, "--quantize", "fp8"], "fp8 weights need a CUDA GPU of compute capability 8.9"),
    # reproduce
    (["reproduce"], "give --preset tiny|toy, or --model-dir"),
    (["reproduce", "--preset", "toy", "--num-prompts", "0"], "--num-prompts: the value must be an int >= 1"),
    (["reproduce", "--preset", "toy", "--variants", "nope"], "argument --variants: invalid choice"),
    (
        ["reproduce", "--preset", "toy", "--segment-seconds", "0"],
        "--segment-seconds: the value must be a finite number > 0",
    ),
    (["reproduce", "--preset", "toy", "--out", "{in}/afile"], "--out {in}/afile is a file"),
    (["reproduce", "--preset", "toy", "--latent-frames", "10"], "multiple of 3"),
    (["reproduce", "--preset", "toy", "--checkpoint", "nope=x.pt"], "--checkpoint takes PIPELINE=FILE"),
    (["reproduce", "--preset", "toy", "--prompts", "{in}/binary.dat"], "is not a UTF-8 text file"),
    (["reproduce", "--preset", "toy", "--checkpoint-sf", "x.pt"], "uses built-in weights"),
    (
        ["reproduce", "rolling_forcing.sink_frames=0", "--preset", "toy", "--pipelines", "self_forcing"],
        "rolling_forcing.sink_frames=0 sets the rolling_forcing sampler, but this command runs self_forcing: "
        "write self_forcing.sink_frames",
    ),
    # options are spelled out (an abbreviation was taken for whichever option it begins), unknown ones are reported
    # by the command they were given to
    (TOY + ["--lat", "6"], "unrecognized arguments: --lat (see: tokentrim generate --help)"),
    (
        ["merge-lora", "b.pt", "l.pt", "-o", "m.safetensors", "--lora", "2"],
        "unrecognized arguments: --lora 2",
    ),
    # overrides that name no setting
    (TOY + ["=5"], "override '=5' has no key: write KEY=VALUE, e.g. tokentrim.p=0.05"),
    (
        TOY + ["tokentrim=5"],
        "tokentrim is a section: set one of its keys, tokentrim.KEY=VALUE (tokentrim has enabled, p,",
    ),
    (TOY + ["pipeline=longlive"], "pipeline=longlive: choose the pipeline with --pipeline longlive"),
    (["eval", "--json", "e.json", "/dev/null"], "/dev/null is not a video file (not a regular file)"),
    # a key=value for the sampler of a pipeline the command does not run is read by nothing
    (
        TOY + ["rolling_forcing.attention_frames=12"],
        "rolling_forcing.attention_frames=12 sets the rolling_forcing sampler, but this command runs "
        "self_forcing: self_forcing's sampler has denoising_steps, ",
    ),
    (
        ["stress", "--pipeline", "rolling_forcing", "self_forcing.denoising_steps=[1000]"],
        "write rolling_forcing.",
    ),
    (["compare", "--out", "o", "--scene", "3", "longlive.cache=static"], "sets the longlive sampler"),
    # stress, compare
    (["stress", "--at-block", "1"], "--at-block must be >= 3"),
    (["stress", "--at-block", "4", "--latent-frames", "15"], "leaves no block after --at-block 4"),
    (["stress", "--tokens", "65"], "--tokens must be in 1 .. 64 (the tokens of a latent frame), got 65"),
    (["stress", "--kind", "nope"], "argument --kind: invalid choice"),
    (["stress", "--json", "{in}/afile/s.json"], "is a file, not a folder"),
    (["stress", "tokentrim.accept=best"], "accept must be one of ('regenerated', 'lower')"),
    (["stress", "--level", "1"], "--level is for Rolling Forcing"),
    (["stress", "--pipeline", "rolling_forcing", "--level", "4"], "--level must be in 0 .. 3"),
    (["stress", "--contrast", "0"], "--contrast"),
    (["stress", "tokentrim.detector=tokenwise"], "the runs' detectors are --detectors"),
    (
        [
            "stress",
            "--pipeline",
            "rolling_forcing",
            "rolling_forcing.cache=static",
            "rolling_forcing.prune_window=true",
        ],
        "prune_window masks keys in the dynamic cache's order: set cache to dynamic",
    ),
    (["compare", "--out", "o"], "give exactly one of --scene SEED (toy) or --prompt TEXT"),
    (["compare", "--out", "o", "--scene", "3", "--prompt", "a red circle"], "give exactly one of --scene"),
    (["compare", "--out", "o", "--scene", "3", "--latent-frames", "10"], "multiple of 3"),
    (["compare", "--out", "o", "--scene", "3", "--fault", "cast", "--fault-block", "40"], "--fault-block 40"),
    (["compare", "--out", "o", "--scene", "3", "--fault-tokens", "65"], "--fault-tokens must be in 1 .. 64"),
    (["compare", "--out", "o", "--scene", "3", "--fault", "foreign"], "argument --fault: invalid choice"),
    (["compare", "--preset", "tiny", "--scene", "3", "--out", "o"], "--scene is for the toy world model"),
    (["compare", "--out", "{in}/afile", "--scene", "3"], "--out {in}/afile is a file"),
    # top level
    (["nope"], "invalid choice"),
]


def _inputs(folder: Path) -> None:
    """The prepared bad (and good) input files the cases point at."""
    folder.mkdir()
    (folder / "binary.dat").write_bytes(b"\x00\x01\xff\xfe\x80")
    (folder / "text.txt").write_text("hello\n")
    (folder / "empty.txt").write_text("\n# only a comment\n\n")
    (folder / "prompts.txt").write_text("a red circle\n")
    (folder / "afile").write_text("")
    (folder / "broken.yaml").write_text("tokentrim: [1,\n")
    (folder / "list.yaml").write_text("- 1\n- 2\n")
    (folder / "wrong_pipeline.yaml").write_text("pipeline: self_forcing\n")
    (folder / "wrong_type.yaml").write_text("tokentrim:\n  lam: lots\n")
    (folder / "wrong_entry.yaml").write_text("flowmo:\n  steps: [a]\n")
    (folder / "list.json").write_text("[1, 2]\n")
    (folder / "log.json").write_text(
        json.dumps({"blocks": [{"block": 0, "action": "warmup", "severity": None}]})
    )
    (folder / "ckpt.pt").write_bytes(b"PK")
    (folder / "a.mp4").write_bytes(b"\x00" * 16)
    (folder / "empty_dir").mkdir()
    (folder / "folder.mp4").mkdir()
    from tokentrim.wan import get_preset

    tiny = get_preset("tiny").to_dict()
    (folder / "wan").mkdir()
    (folder / "wan" / "config.json").write_text(json.dumps({**tiny, "patch_size": list(tiny["patch_size"])}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    (folder / "truncated.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 100)
    diffusers = folder / "diffusers_no_text"
    (diffusers / "transformer").mkdir(parents=True)
    (diffusers / "vae").mkdir()
    heads = tiny["num_heads"]
    (diffusers / "transformer" / "config.json").write_text(json.dumps({
        "num_attention_heads": heads, "attention_head_dim": tiny["dim"] // heads, "ffn_dim": tiny["ffn_dim"],
        "freq_dim": tiny["freq_dim"], "in_channels": 16, "out_channels": 16, "num_layers": tiny["num_layers"],
        "text_dim": tiny["text_dim"], "patch_size": [1, 2, 2]}))  # fmt: skip
    (diffusers / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (diffusers / "vae" / "config.json").write_text("{}")
    (diffusers / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad") / "in"
    _inputs(folder)
    return folder


def test_the_table_is_large_and_covers_every_command():
    commands = {argv[0] for argv, _ in CASES}
    assert len(CASES) >= 40 and {"generate", "eval", "figure", "bench", "reproduce"} <= commands


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i:02d}-{a[0]}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_clear_line_and_leaves_nothing(argv, message, inputs, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [a.replace(IN, str(inputs)) for a in argv]
    before_in, before = snapshot(inputs), snapshot(work)
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert message.replace(IN, str(inputs)) in lines[0]
    assert len(lines[0]) < 600
    assert snapshot(work) == before and snapshot(inputs) == before_in  # no file appeared anywhere


def run(argv) -> int:
    """The exit status of `tokentrim ARGV` (argument-parser errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize(
    "argv",
    [[*TOY, "--out", "v.mp4", "--compile"], ["bench", "--preset", "toy", "--compile"]],
    ids=["generate", "bench"],
)
def test_compile_without_a_cpp_compiler_is_refused_before_loading(argv, tmp_path, monkeypatch, capsys):
    import torch._inductor.config as inductor_config

    monkeypatch.chdir(tmp_path)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "needs a C++ compiler" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_quantize_without_torchao_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("torchao", "torchao.quantization"):  # importing them fails, imported before or not
        monkeypatch.setitem(sys.modules, name, None)
    assert run([*TOY, "--out", "v.mp4", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: weight quantisation needs torchao: pip install 'tokentrim[quant]'"
    assert list(tmp_path.iterdir()) == []


# Interruptions ------------------------------------------------------------------------------------------------
def _start(out: Path, extra=()):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the tiny preset's VAE decodes slowly on a CPU: a long write phase for the signal to land in
    argv = [sys.executable, "-m", "tokentrim.app.cli", "generate", "--preset", "tiny", "--prompt", "a cat",
            "--latent-frames", "9", "--out", str(out), "--png-frames", *extra]  # fmt: skip
    return subprocess.Popen(argv, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_temporaries(folder: Path, proc, timeout: float = 600.0) -> list[Path]:
    """Poll until the run is writing (its temporary files exist), so the signal lands mid-write."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        found = [p for p in folder.iterdir() if ".tmp-" in p.name]
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError(
        f"the run never started writing (exit {proc.poll()}): {proc.stderr.read().decode()[-500:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_interrupt_leaves_no_temporary_or_partial_files(tmp_path, sig, code):
    out = tmp_path / "run.mp4"
    proc = _start(out)
    assert _wait_for_temporaries(tmp_path, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mp4, no PNG folder, no log, no temporaries
    err = proc.stderr.read().decode()
    line = "interrupted" if sig == signal.SIGINT else "terminated"
    assert err.split("\n")[-2:] == [line, ""] and "Traceback" not in err, err  # its own line, after any bar


@pytest.mark.slow
def test_ctrl_c_pressed_twice_still_cleans_up_and_says_one_line(tmp_path):
    """The second Ctrl-C lands while the first one's clean-up runs: it must not cut the clean-up short."""
    out = tmp_path / "run.mp4"
    proc = _start(out)
    assert _wait_for_temporaries(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    err = proc.stderr.read().decode()
    assert err.split("\n")[-2:] == ["interrupted", ""] and "Traceback" not in err, err


def test_the_second_signal_is_ignored_and_the_third_stops_at_once(monkeypatch, capsys):
    """`tokentrim.app.interrupts.handler`, installed by `main`: the first signal unwinds, the second (while the
    command stops) is ignored, the third exits at once with the first signal's status."""
    from tokentrim.app import interrupts

    class Exited(Exception):
        pass

    def exit_now(code):
        raise Exited(code)

    monkeypatch.setattr(interrupts.os, "_exit", exit_now)
    monkeypatch.setattr(interrupts, "received", [])
    with pytest.raises(SystemExit) as first:
        interrupts.handler(signal.SIGTERM, None)
    assert first.value.code == 143
    assert interrupts.handler(signal.SIGINT, None) is None
    with pytest.raises(Exited) as third:
        interrupts.handler(signal.SIGINT, None)
    assert third.value.args == (143,)
    assert capsys.readouterr().err == "stopped at once: the next run on this output removes what is left\n"


@pytest.mark.parametrize(
    "sig, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_inside_a_destructor_still_stops_the_run(sig, code, line, tmp_path, monkeypatch, capsys):
    """The signal lands while a destructor runs: Python only reports the exception ("Exception ignored in ...")
    and carries on. The report is muted and the run stops at the next block, in one line, leaving nothing."""
    import gc

    from tokentrim.app import generate

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    class SignalledWhileFreed:
        def __del__(self):
            os.kill(os.getpid(), sig)
            sum(range(1000))  # the handler runs here, inside the destructor

    blocks = generate.with_progress

    def with_a_destructor(events, *args):
        for i, event in enumerate(blocks(events, *args)):
            if i == 1:
                SignalledWhileFreed()  # made and freed at once
            yield event

    monkeypatch.setattr(generate, "with_progress", with_a_destructor)
    monkeypatch.chdir(tmp_path)
    assert run([*TOY, "--out", "v.mp4", "--latent-frames", "12"]) == code
    gc.collect()
    assert unraisable == []
    assert capsys.readouterr().err.split("\n")[-2:] == [line, ""]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sig, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_inside_a_progress_bars_constructor_ends_in_one_line(
    sig, code, line, tmp_path, monkeypatch, capsys
):
    """The signal lands after the bar set its first fields and before the rest: its destructor would then fail
    ("Exception ignored in tqdm.__del__ ... no attribute 'pos'") after the one line, as a CI run once showed."""
    import gc

    import tqdm.auto

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    original = tqdm.auto.tqdm.__init__

    def cut_short(self, *args, **kwargs):
        self.disable = False
        os.kill(os.getpid(), sig)
        original(self, *args, **kwargs)

    monkeypatch.setattr(tqdm.auto.tqdm, "__init__", cut_short)
    monkeypatch.chdir(tmp_path)
    assert run([*TOY, "--out", "v.mp4"]) == code
    gc.collect()
    assert unraisable == []
    assert capsys.readouterr().err.split("\n")[-2:] == [line, ""]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigkill_litter_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run.mp4"
    proc = _start(out)
    assert _wait_for_temporaries(tmp_path, proc)
    proc.kill()
    proc.wait(timeout=60)
    stale = sorted(p.name for p in tmp_path.iterdir())
    assert stale and all(
        ".tmp-" in name or name.endswith(".lock") for name in stale
    )  # no clean-up after a kill
    rerun = _start(out)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()[-800:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.json", "run.mp4"]
    assert len(list((tmp_path / "run").iterdir())) == 1 + 4 * (9 - 1)  # every decoded frame


# Outputs keyed to their settings; permissions; long prompts ---------------------------------------------------
def test_batch_outputs_made_with_other_settings_are_never_mixed_in(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out_dir = tmp_path / "batch"
    base = [
        "generate",
        "--preset",
        "toy",
        "--prompts",
        str(prompts),
        "--out-dir",
        str(out_dir),
        "--latent-frames",
        "6",
    ]
    assert run(base) == 0
    logs = sorted(out_dir.glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in logs]
    capsys.readouterr()
    assert run(base) == 0 and "nothing to do" in capsys.readouterr().out  # same settings: done
    for changed, what in ((["--seed", "1"], "seed: 0 -> 1"), (["--latent-frames", "9"], "latent_frames: 6 -> 9"),
                          (["--p", "0.2"], "run.tokentrim.p: 0.1 -> 0.2"),
                          (["--pipeline", "rolling_forcing", "--latent-frames", "15"], "run.pipeline")):  # fmt: skip
        argv = base[:-2] + changed if "--latent-frames" in changed else base + changed
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert "was made with other settings" in err and what in err and "--overwrite" in err
        assert [p.stat().st_mtime_ns for p in logs] == stamps  # nothing was touched
    assert run(base + ["--seed", "1", "--overwrite"]) == 0
    assert [json.loads(p.read_text())["config"]["seed"] for p in logs] == [1, 2]  # prompt i: seed + i


def test_outputs_have_the_usual_permissions(tmp_path):
    out = tmp_path / "v.mp4"
    mask = os.umask(0o022)
    try:
        assert run(TOY + ["--latent-frames", "3", "--out", str(out), "--save-latents", "--png-frames"]) == 0
    finally:
        os.umask(mask)
    for path in (out, out.with_suffix(".json"), out.with_suffix(".latents.pt"), out.with_suffix(""),
                 next(out.with_suffix("").iterdir())):  # fmt: skip
        want = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == want, path


def test_long_prompts_warn_how_many_tokens_were_kept(tmp_path, capsys):
    prompt = "a cat walks " + "on the street " * 30  # the tiny text encoder keeps 16 tokens
    assert run(["generate", "--preset", "tiny", "--prompt", prompt, "--latent-frames", "3",
                "--out", str(tmp_path / "v.mp4")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "tokens; the text encoder keeps the first 16" in err
    assert prompt not in err and len(err.splitlines()[0]) < 200  # the prompt is quoted, not echoed whole


def _parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_says_what_it_does_and_its_default():
    """Every option of every subcommand: a help text, and, if it takes a value, its default in the rendered
    help (the value itself, "none", or the help's own words); flags are off unless given; a required option
    shows none."""
    import argparse

    from tokentrim.app.cli import DESCRIPTION, build_parser

    parser = build_parser()
    assert DESCRIPTION.count(". ") == 0 and DESCRIPTION.endswith(".")  # one sentence
    seen, missing = 0, []
    for p in _parsers(parser):
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            seen += 1
            assert action.help, f"{p.prog} {action.dest} has no help"
            if not action.option_strings or action.nargs == 0:
                continue
            default = action.default
            if action.required:  # must be given: no default to show
                if "(default" in p._get_formatter()._get_help_string(action):
                    missing.append(
                        f"{p.prog} {'/'.join(action.option_strings)}: required, yet a default is shown"
                    )
                continue
            if "default" in action.help:
                shown = " ".join(action.help.replace("%(default)s", str(default)).replace("%%", "%").split())
            elif default is None:
                shown = "(default: none)"
            else:
                value = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
                shown = f"(default: {value})"
            if shown not in text:
                missing.append(f"{p.prog} {'/'.join(action.option_strings)}: {shown!r} not in its help")
    assert not missing, "\n".join(missing)
    assert seen > 60


@pytest.mark.parametrize(
    "argv, option",
    [(["generate"], "--seed"), (["compare"], "--seed"), (["reproduce"], "--seed"), (["compare"], "--flowmo"),
     (["stress"], "--json")],
)  # fmt: skip
def test_options_that_hid_their_default_show_it(argv, option, capsys):
    """`--seed` (default 0, once mistaken for "no default" because 0 == False), `compare --flowmo` and
    `stress --json` (default none) show their defaults."""
    assert run(argv + ["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    help_text = help_text[help_text.index("options:") :]  # past the usage line
    entry = help_text[help_text.index(option + " ") :]
    entry = entry[: entry.index(" --", len(option)) if " --" in entry[len(option) :] else None]
    assert "(default: " in entry, entry
