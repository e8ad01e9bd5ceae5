"""`tokentrim generate | eval | figure | bench | reproduce`.

A thin layer: parse arguments into the config dataclasses, load weights once, call the library, write files.
User errors print one line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tokentrim.errors import UserError

logger = logging.getLogger("tokentrim")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=["tiny", "toy", "wan2.1-t2v-1.3b"],
                   help="built-in model: tiny (random weights), toy (shipped world model)")  # fmt: skip
    g.add_argument("--model-dir", help="Wan2.1-T2V-1.3B folder (original or -Diffusers layout)")
    g.add_argument("--checkpoint", help="self_forcing_dmd.pt / rolling_forcing_dmd.pt (or a DiT safetensors)")
    g.add_argument(
        "--no-ema", action="store_true", help="load the checkpoint's 'generator' instead of 'generator_ema'"
    )
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available, else cpu)")
    g.add_argument("--dtype", help="bf16 | fp32 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--attention", default="sdpa", choices=["sdpa", "flash", "auto"], help="attention backend")


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default="self_forcing", choices=["self_forcing", "rolling_forcing"])
    p.add_argument("--config", help="run config YAML (default: configs/<pipeline>.yaml)")
    p.add_argument(
        "--latent-frames", type=int, default=21, help="latent frames (video frames = 1 + 4 (F - 1))"
    )
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("TokenTrim (override the config file)")
    g.add_argument("--no-tokentrim", action="store_true", help="the baseline: no pruning (and FlowMo off)")
    g.add_argument("--p", type=float, help="pruning fraction (0 < p < 1)")
    g.add_argument("--lam", type=float, help="threshold: mean + lam * std")
    g.add_argument("--warmup", type=int, help="blocks that only feed the statistics")
    g.add_argument("--max-regen", type=int, help="regenerations per block")
    g.add_argument("--flowmo", choices=["off", "first_block", "every_block"], help="FlowMo guidance")
    p.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. tokentrim.p=0.05 self_forcing.sink_frames=0"
    )


def run_config_from_args(args: argparse.Namespace):
    from tokentrim.run_config import default_config_path, load_run_config

    overrides = [f"pipeline={args.pipeline}", *args.overrides]
    flags = {"p": args.p, "lam": args.lam, "warmup": args.warmup, "max_regen": args.max_regen}
    overrides += [f"tokentrim.{k}={v}" for k, v in flags.items() if v is not None]
    if args.no_tokentrim:
        overrides.append("tokentrim.enabled=false")
        if args.flowmo is None:
            overrides.append("flowmo.mode=off")
    if args.flowmo is not None:
        overrides.append(f"flowmo.mode={args.flowmo}")
    return load_run_config(args.config or default_config_path(args.pipeline, args.preset), overrides)


def cmd_generate(args: argparse.Namespace) -> int:
    from tokentrim import generate as gen
    from tokentrim.wan.attention import check_backend

    prefix, scene_log = None, {}
    if args.scene is not None:
        if args.preset != "toy":
            raise UserError("--scene is for the toy world model: add --preset toy")
        if args.prompt is not None or args.prompts is not None:
            raise UserError("--scene brings its own prompt: drop --prompt / --prompts")
        if args.scene < 0:
            raise UserError(f"--scene must be a non-negative scene seed, got {args.scene}")
        from tokentrim.toy import observed_start

        args.prompt, prefix = observed_start(args.scene)
        scene_log = {"scene": args.scene}
    if (args.prompt is None) == (args.prompts is None):
        raise UserError(
            "give exactly one of --prompt TEXT, --prompts FILE (with --out-dir) or --scene SEED (toy)"
        )
    if args.prompts and not args.out_dir:
        raise UserError("--prompts needs --out-dir DIR")
    run = run_config_from_args(args)
    device = gen.pick_device(args.device)
    dtype = gen.pick_dtype(args.dtype, device)
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
    backend = gen.load_backend(preset=args.preset, model_dir=args.model_dir, checkpoint=args.checkpoint,
                               device=device, dtype=dtype, use_ema=not args.no_ema)  # fmt: skip
    backend.model.attention_backend = check_backend(args.attention)
    gen.make_pipeline(backend, run).check_num_frames(args.latent_frames)  # before the text encoder loads
    embeds = gen.encode(backend, [job[1] for job in todo], args.offload)
    for (index, prompt, video, log, seed), emb in zip(todo, embeds, strict=True):
        frames_dir = video.with_suffix("") if args.png_frames else None
        result = gen.generate_video(backend, run, prompt, emb[None], latent_frames=args.latent_frames, seed=seed,
                                    out=video, log=log, save_latents=args.save_latents, frames_dir=frames_dir,
                                    extra_log={"index": index, **scene_log}, prefix=prefix)  # fmt: skip
        pruned = sum(r["action"] == "prune" for r in result.records)
        where = video if backend.decoder is not None else "(no decoder)"
        print(f"wrote {where} and {log}  [{len(result.records)} blocks, {pruned} pruned]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokentrim", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate a video (or a batch) with Self Forcing / Rolling Forcing")
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

    from tokentrim import bench, figures, reproduce
    from tokentrim.eval import command as eval_command

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
    except (UserError, FloatingPointError) as err:  # FloatingPointError: non-finite latents (tokentrim_core)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
