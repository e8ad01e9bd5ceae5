"""`tokentrim generate | eval | figure | bench | reproduce`.

A thin layer: parse arguments into the config dataclasses, load weights once, run the video in memory, write
files. User errors print one line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from tokentrim.app.args import add_model_args, add_run_args, run_config_from_args
from tokentrim.errors import UserError

logger = logging.getLogger("tokentrim")
DESCRIPTION = (
    "Long-video generation with autoregressive Wan2.1 video diffusion (Self Forcing, Rolling Forcing) and "
    "TokenTrim, an inference-time KV-cache pruning fix for long-horizon drift."
)
# Library messages name arguments and config fields in backticks; on the command line they are these options.
FLAGS = {"num_frames": "--latent-frames", "model_dir": "--model-dir", "checkpoint": "--checkpoint",
         "device": "--device", "dtype": "--dtype", "preset": "--preset", "pipeline": "--pipeline",
         "use_ema=True": "without --no-ema", "use_ema=False": "--no-ema", "random_weights": "--random-weights",
         "tokentrim.p": "--p", "tokentrim.lam": "--lam", "tokentrim.warmup": "--warmup",
         "tokentrim.max_regen": "--max-regen", "flowmo.mode": "--flowmo"}  # fmt: skip


def cli_message(err: UserError) -> str:
    """The error text with `argument` names replaced by the options that set them (other quoted text stays)."""
    return re.sub(r"`([^`]+)`", lambda m: FLAGS.get(m.group(1), m.group(0)), str(err))


def cmd_generate(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app import generate as gen
    from tokentrim.wan.attention import check_backend

    prefix, scene = None, {}
    if args.scene is not None:
        if args.preset != "toy":
            raise UserError("--scene is for the toy world model: add --preset toy")
        if args.prompt is not None or args.prompts is not None:
            raise UserError("--scene brings its own prompt: drop --prompt / --prompts")
        if args.scene < 0:
            raise UserError(f"--scene must be a non-negative scene seed, got {args.scene}")
        from tokentrim.toy import observed_start

        args.prompt, prefix = observed_start(args.scene)
        scene = {"scene": args.scene}
    if (args.prompt is None) == (args.prompts is None):
        raise UserError(
            "give exactly one of --prompt TEXT, --prompts FILE (with --out-dir) or --scene SEED (toy)"
        )
    if args.prompts and not args.out_dir:
        raise UserError("--prompts needs --out-dir DIR")
    run = run_config_from_args(args)
    device = backends.pick_device(args.device)
    dtype = backends.pick_dtype(args.dtype, device)
    if args.prompt is not None:
        out = Path(args.out or Path("outputs") / f"{gen.slugify(args.prompt)}.mp4")
        jobs = [(0, args.prompt, out, Path(args.log) if args.log else out.with_suffix(".json"), args.seed)]
    else:
        prompts = gen.read_prompts(args.prompts)
        rank, world = gen.rank_and_world()
        jobs = []
        for i in gen.shard(list(range(len(prompts))), rank, world):
            video, log = gen.batch_outputs(Path(args.out_dir), i, prompts[i])
            jobs.append((i, prompts[i], video, log, args.seed + i))  # documented per-prompt seed
    if args.prompt is not None and jobs[0][2].suffix.lower() != ".mp4":
        raise UserError(f"--out must be an .mp4 file, got {jobs[0][2]}")
    # Batch mode resumes: a prompt whose video and log both exist is done. A single --prompt overwrites.
    todo = [job for job in jobs if args.prompt is not None or not (job[2].exists() and job[3].exists())]
    if len(todo) < len(jobs):
        print(f"skipping {len(jobs) - len(todo)} finished video(s)")
    if not todo:
        print("nothing to do: every output exists")
        return 0
    backend = backends.load_backend(preset=args.preset, model_dir=args.model_dir, checkpoint=args.checkpoint,
                                    device=device, dtype=dtype, use_ema=not args.no_ema)  # fmt: skip
    backend.model.attention_backend = check_backend(args.attention)
    gen.make_pipeline(backend, run).check_num_frames(args.latent_frames)  # before the text encoder loads
    embeds = gen.encode(backend, [job[1] for job in todo], args.offload)
    for (index, prompt, video, log, seed), emb in zip(todo, embeds, strict=True):
        result = gen.run_video(backend, run, emb[None], latent_frames=args.latent_frames, seed=seed, prefix=prefix,
                               settings={"prompt": prompt, "index": index, **scene})  # fmt: skip
        decoded = backend.decoder is not None
        gen.write_outputs(result, video=video if decoded else None, log=log,
                          latents=video.with_suffix(".latents.pt") if args.save_latents else None,
                          frames_dir=video.with_suffix("") if args.png_frames and decoded else None)  # fmt: skip
        pruned = sum(r.action == "prune" for r in result.records)
        where = video if decoded else "(no decoder)"
        print(f"wrote {where} and {log}  [{len(result.records)} blocks, {pruned} pruned]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tokentrim.app import bench, figures, reproduce
    from tokentrim.eval import command as eval_command

    parser = argparse.ArgumentParser(prog="tokentrim", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and library notices")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate a video (or a batch) with a registered pipeline")
    add_model_args(p)
    add_run_args(p)
    p.add_argument("--prompt", help="the text prompt")
    p.add_argument("--prompts", help="a file with one prompt per line (batch mode, resumable)")
    p.add_argument("--scene", type=int, help="toy world: start from scene SEED's first block (observed) and its "
                   "prompt; the model generates the rest")  # fmt: skip
    p.add_argument("--out", help="output mp4 (default outputs/<prompt>.mp4)")
    p.add_argument("--out-dir", help="output folder for --prompts")
    p.add_argument("--log", help="decision log JSON (default: next to the video)")
    p.add_argument("--save-latents", action="store_true", help="also save the latents as <video>.latents.pt")
    p.add_argument("--png-frames", action="store_true", help="also write every frame as <video>/NNNNN.png")
    p.add_argument("--offload", default="cpu", choices=["none", "cpu", "free"],
                   help="text encoder after encoding: keep, move to CPU, or free")  # fmt: skip
    p.set_defaults(func=cmd_generate)

    eval_command.register(sub)
    figures.register(sub)
    bench.register(sub)
    reproduce.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:  # diffusers / transformers read these when first imported
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", force=True)
    for noisy in ("diffusers", "transformers"):  # their load-time notices are not the user's business
        logging.getLogger(noisy).setLevel(level if args.verbose else logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {cli_message(err)}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # non-finite latents (tokentrim_core)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
