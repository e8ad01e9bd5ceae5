"""`tokentrim generate | eval | figure | bench | reproduce | demo | stress | compare | merge-lora`.

A thin layer: parse arguments into the config dataclasses, load weights once, run the video in memory, write
files. User errors print one line (no traceback) and exit with status 2. This module imports nothing heavy:
`main` first turns SIGINT / SIGTERM into the clean `interrupted` / `terminated` exit, then imports the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import re
import signal
import sys
from pathlib import Path

from tokentrim.errors import UserError

logger = logging.getLogger("tokentrim")
DESCRIPTION = (
    "Long-video generation with autoregressive Wan2.1 video diffusion (Self Forcing, Rolling Forcing) and "
    "TokenTrim, an inference-time KV-cache pruning fix for long-horizon drift."
)
# Library messages name arguments and config fields in backticks; on the command line they are these options (the
# run options' flags come from their declarations, `tokentrim.app.args.flag_names`).
LOADING_FLAGS = {"model_dir": "--model-dir", "checkpoint": "--checkpoint", "device": "--device", "dtype": "--dtype",
                 "preset": "--preset", "pipeline": "--pipeline", "use_ema=True": "--ema", "use_ema=False": "--no-ema",
                 "random_weights": "--random-weights", "out_dir": "--out-dir", "overwrite": "--overwrite",
                 "init_image": "--init-image", "init_video": "--init-video", "init_frames": "--init-frames",
                 "init_resize": "--init-resize", "timeline": "--timeline", "prompt": "--prompt"}  # fmt: skip


def cli_message(err: UserError) -> str:
    """The error text with `argument` names replaced by the options that set them (other quoted text stays)."""
    from tokentrim.app.args import flag_names

    flags = LOADING_FLAGS | flag_names()
    return re.sub(r"`([^`]+)`", lambda m: flags.get(m.group(1), m.group(0)), str(err))


def cmd_generate(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app import generate as gen
    from tokentrim.app.api import Pipeline
    from tokentrim.app.args import ema_choice, load_model, run_config_from_args, runtime
    from tokentrim.app.fast_path import fast_path_from_args

    # 1. What to generate and where it goes, all checked before any weights load
    run = run_config_from_args(args)
    device, dtype, attention = runtime(args)
    fast = fast_path_from_args(args)
    fast.check(device)
    if (args.model_dir is None) != (args.checkpoint is None) and args.preset is None:
        raise UserError("the official weights need both --model-dir and --checkpoint")
    request, extra = asked_request(args, run, backends.model_config(args.preset, args.model_dir))
    jobs = output_jobs(args, request)
    if args.lora is not None and not Path(args.lora).is_file():
        raise UserError(f"--lora {args.lora} not found")
    name = backends.backend_name(args.preset, args.checkpoint, use_ema=ema_choice(args), lora=args.lora)
    settings_of = functools.partial(
        gen.video_settings,
        run,
        latent_frames=args.latent_frames,
        backend=name,
        observed_frames=request.observed_frames,
        dtype=dtype,
        attention=attention,
        **fast.settings(),
        **extra,
    )
    # A single --prompt overwrites. A batch resumes: a prompt whose outputs exist with the same settings is done;
    # outputs made with other settings are never mixed in silently.
    todo = jobs if args.prompt is not None else gen.unfinished(jobs, settings_of, args.overwrite)
    if len(todo) < len(jobs):
        print(f"skipping {len(jobs) - len(todo)} finished video(s) made with the same settings")
    if not todo:
        print("nothing to do: every output exists, made with the same settings")
        return 0
    # 2. Load, encode every prompt at once, then each video: its files written as its blocks arrive
    backend = load_model(args, device, dtype, attention)
    fast.apply(backend.model, run.sampler.cache)
    pipe = Pipeline(backend, run, offload=args.offload)
    asked = [dataclasses.replace(request, prompt=prompt, seed=seed) for _, prompt, _, _, seed in todo]
    for (index, prompt, video, log, seed), ready in zip(todo, pipe.encode(asked), strict=True):
        blocks = args.latent_frames // pipe.loop.frames_per_block
        out = gen.write_video_files(
            gen.with_progress(pipe.loop.stream(ready), blocks, f"{pipe.loop.title} blocks"),
            settings=settings_of(index=index, prompt=prompt, seed=seed),
            fps=pipe.fps,
            start=request.start,
            video=video,
            log=log,
            latents=video.with_suffix(".latents.pt") if args.save_latents else None,
            frames_dir=video.with_suffix("") if args.png_frames else None,
        )
        pruned = sum(r.action == "prune" for r in out.records)
        print(f"wrote {video} and {log}  [{len(out.records)} blocks, {pruned} pruned]")
    return 0


def asked_request(args: argparse.Namespace, run, config) -> tuple:
    """The video `generate` is asked for as a `Request` (text, a scene's or image's start, a timeline's switches),
    checked against the model config and the pipeline; and what the decision log records about its inputs."""
    from tokentrim.app import generate as gen

    if args.timeline is not None and (args.prompt is not None or args.prompts is not None):
        raise UserError("--timeline brings its own prompts: drop --prompt / --prompts")
    if args.scene is not None and args.preset != "toy":
        raise UserError("--scene is for the toy world model: add --preset toy")
    if args.scene is not None and (args.prompt is not None or args.prompts is not None):
        raise UserError("--scene brings its own prompt: drop --prompt / --prompts")
    asked = [x is not None for x in (args.prompt, args.prompts, args.timeline, args.scene)]
    if sum(asked) != 1 or args.scene is not None and args.timeline is not None:
        raise UserError(
            "give exactly one of --prompt TEXT, --prompts FILE (with --out-dir), --timeline FILE or --scene SEED (toy)"
        )
    checker, extra, start, switches = run.checker(config), {}, None, ()
    prompt = args.prompt if args.prompts is None else gen.read_prompts(args.prompts)[0]
    if args.scene is not None:
        from tokentrim.toy import observed_start

        prompt, start = observed_start(args.scene)
        extra["scene"] = args.scene
    observation = observe(args, config, checker.frames_per_block)
    if observation is not None:
        start, extra["init"] = observation, observation.settings
    if args.timeline is not None:
        from tokentrim.app.timeline import read_timeline

        timeline = read_timeline(args.timeline)
        if not checker.switching:
            raise UserError(
                f"--timeline: {checker.title} cannot switch prompts; use --pipeline "
                f"{' / '.join(gen.switching_pipelines())}"
            )
        observed = 0 if start is None else (start.latent_frames if observation else start.shape[1])
        frames = timeline.switch_frames(checker.frames_per_block, observed, args.latent_frames)
        prompt, switches = timeline.prompts[0], tuple(zip(frames, timeline.prompts[1:], strict=True))
        extra["timeline"] = timeline.settings(frames)
    request = run.request(
        prompt, args.latent_frames, seed=args.seed, start=start, switches=switches, decode=True
    )
    request.check(checker)
    return request, extra


def output_jobs(args: argparse.Namespace, request) -> list[tuple]:
    """The videos to write, `(index, prompt, video, log, seed)`, every output checked writable: one for --prompt
    (default outputs/<prompt>.mp4), or one per line of --prompts in --out-dir, this rank's share."""
    from tokentrim.app import generate as gen
    from tokentrim.files import check_output

    if args.prompts and not args.out_dir:
        raise UserError("--prompts needs --out-dir DIR")
    if args.prompts is None and args.out_dir:
        raise UserError("--out-dir is for --prompts; a single --prompt writes --out")
    if args.prompts is not None and (args.out or args.log):
        raise UserError("--out / --log name one video; with --prompts the files go to --out-dir")
    if args.prompts is None:
        out = Path(args.out or Path("outputs") / f"{gen.slugify(request.prompt)}.mp4")
        if out.suffix.lower() != ".mp4":
            raise UserError(f"--out must be an .mp4 file, got {out}")
        jobs = [(0, request.prompt, out, Path(args.log) if args.log else out.with_suffix(".json"), args.seed)]
    else:
        prompts = gen.read_prompts(args.prompts)
        # the ranks share --out-dir: each claims its own files in it
        check_output(args.out_dir, "--out-dir", folder=True, shared=True)
        rank, world = gen.rank_and_world()
        jobs = [
            (i, prompts[i], *gen.batch_outputs(Path(args.out_dir), i, prompts[i]), args.seed + i)
            for i in gen.shard(list(range(len(prompts))), rank, world)
        ]  # documented per-prompt seed
    for _, _, video, log, _ in jobs:
        check_output(video, "--out")
        check_output(log, "--log")
        if args.png_frames:
            check_output(video.with_suffix(""), "the --png-frames folder", folder=True)
    return jobs


def observe(args: argparse.Namespace, config, block: int):
    """The --init-image / --init-video observation (read and checked before any weights load), or None."""
    from tokentrim.app import backends
    from tokentrim.app.inputs import image_start, video_start

    if args.init_image is None and args.init_video is None:
        if args.init_frames is not None or args.keep_init:
            raise UserError("--init-frames / --keep-init go with --init-video")
        return None
    if args.init_image is not None and args.init_video is not None:
        raise UserError("give --init-image or --init-video, not both")
    if args.scene is not None:
        raise UserError("--scene brings its own observed start: drop --init-image / --init-video")
    spatial, temporal = backends.vae_strides(args.preset)
    size = (config.latent_height * spatial, config.latent_width * spatial)
    if args.init_image is not None:
        if args.init_frames is not None or args.keep_init:
            raise UserError("--init-frames / --keep-init go with --init-video")
        return image_start(args.init_image, size, block, temporal, args.init_resize)
    return video_start(
        args.init_video, size, block, temporal, args.init_frames, args.init_resize, args.keep_init
    )


def build_parser() -> argparse.ArgumentParser:
    from tokentrim.app import bench, compare, demo, figures, merge_lora, reproduce, stress
    from tokentrim.app.args import Parser
    from tokentrim.eval import command as eval_command

    parser = Parser(prog="tokentrim", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and library notices")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    register_generate(sub)
    eval_command.register(sub)
    figures.register(sub)
    bench.register(sub)
    demo.register(sub)
    reproduce.register(sub)
    stress.register(sub)
    compare.register(sub)
    merge_lora.register(sub)
    return parser


def register_generate(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate`: the model and run options, the fast path, and its inputs and outputs; runs `cmd_generate`."""
    from tokentrim.app.args import POSITIVE_INT, SEED, add_model_args, add_run_args
    from tokentrim.app.fast_path import add_fast_path_args

    p = subparsers.add_parser(
        "generate",
        help="generate a video (or a batch) with a registered pipeline",
        description="Generate a video from a prompt (or one per line of a file) with TokenTrim.",
    )
    add_model_args(p)
    add_run_args(p)
    add_fast_path_args(p)
    g = p.add_argument_group("input and output")
    g.add_argument("--prompt", help="the text prompt")
    g.add_argument(
        "--prompts", help="a UTF-8 file with one prompt per line (batch mode, resumable; needs --out-dir)"
    )
    g.add_argument(
        "--timeline",
        help="prompt switches: a YAML / JSONL file of prompts with the latent frame each "
        "starts at (docs/longlive.md#2-timelines); Self Forcing, Causal Forcing and LongLive",
    )
    g.add_argument(
        "--scene",
        type=SEED,
        help="toy world only: start from scene SEED's observed first block and "
        "its prompt; the model generates the rest",
    )
    g.add_argument(
        "--init-image",
        help="start from this image (PNG/JPEG): it becomes the first block, then "
        "generation continues (docs/causal_forcing.md#2-image-and-video-start)",
    )
    g.add_argument(
        "--init-video", help="extend this video: its last --init-frames frames become the first blocks"
    )
    g.add_argument(
        "--init-frames",
        type=POSITIVE_INT,
        help="frames taken from the end of --init-video, encoding to "
        "whole blocks: 9, 21, 33, ... for 3-frame blocks (default: one block, 9; frame-wise: 1)",
    )
    g.add_argument(
        "--init-resize",
        default="stretch",
        choices=["stretch", "crop"],
        help="fit the image / video to the model's frame size: bilinear stretch (the reference's "
        "image-to-video), or scale to cover and crop the centre",
    )
    g.add_argument(
        "--keep-init", action="store_true", help="write the given video before the generated frames"
    )
    g.add_argument("--out", help="output .mp4 for --prompt (default: outputs/<prompt>.mp4; overwritten)")
    g.add_argument("--out-dir", help="output folder for --prompts (NNNN_<prompt>.mp4 + .json per prompt)")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="batch mode: regenerate videos in --out-dir that were made with other settings",
    )
    g.add_argument("--log", help="decision log JSON for --prompt (default: next to the video)")
    g.add_argument("--save-latents", action="store_true", help="also save the latents as <video>.latents.pt")
    g.add_argument("--png-frames", action="store_true", help="also write every frame as <video>/NNNNN.png")
    g.add_argument(
        "--offload",
        default="cpu",
        choices=["none", "cpu", "free"],
        help="text encoder after encoding: keep on the device, move to the CPU, or free it",
    )
    p.set_defaults(func=cmd_generate)


def main(argv: list[str] | None = None) -> int:
    # First, before any heavy import: Ctrl-C and SIGTERM unwind to the one-line exits below, whenever they come.
    from tokentrim.app import interrupts
    from tokentrim.files import command_claims  # light: the outputs this run claims go when it ends

    with interrupts.handling(), command_claims():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    from tokentrim.app import interrupts

    try:
        parser = build_parser()  # imports torch and the rest
        interrupts.raise_if_received()  # a library caught the interrupt while it was imported
        args = parser.parse_args(argv)
        if not args.verbose:  # diffusers / transformers read these when first imported
            os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        level = logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(levelname)s %(message)s", force=True)
        # Load-time notices of libraries are not the user's business: diffusers and transformers; torchao (installed
        # with the quant extra, imported by diffusers) and torch's notice about one of torchao's enums.
        for noisy in ("diffusers", "transformers", "torchao", "torch.utils._pytree"):
            logging.getLogger(noisy).setLevel(level if args.verbose else logging.ERROR)
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {cli_message(err)}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # non-finite latents (tokentrim_core)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        interrupts.release_cut_short(err)
        return interrupts.stopped(signal.SIGINT)
    except SystemExit as err:
        if err.code == 128 + signal.SIGTERM:
            interrupts.release_cut_short(err)
            interrupts.stopped(signal.SIGTERM)  # its one line; raises SystemExit(143)
        raise
    except Exception as err:
        if interrupts.received:  # an interrupt that surfaced as another error (an import cut short)
            interrupts.release_cut_short(err)
            return interrupts.stopped(
                signal.SIGTERM if signal.SIGTERM in interrupts.received else signal.SIGINT
            )
        raise


def entry() -> None:
    """The `tokentrim` command (the console script, `python -m tokentrim.app.cli`): `main`, then the process ends;
    a signal while Python shuts down ends it at once (`interrupts.quiet_shutdown`)."""
    from tokentrim.app import interrupts

    try:
        code = main()
    finally:
        interrupts.quiet_shutdown()
    sys.exit(code)


if __name__ == "__main__":
    entry()
