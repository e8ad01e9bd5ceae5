"""`tokentrim reproduce`: the paper's comparison grid, end to end.

Both pipelines x the variants of the paper's Tables 1-4 (baseline, TokenTrim, FlowMo on every block, TokenTrim
with p = 0.05 / 0.2, TokenTrim without FlowMo initialisation) over a prompt file, then the weight-free drift
metrics, then tables (markdown + CSV) and figures, all under one output folder. A video is skipped when it exists
with the same settings, so an interrupted run resumes where it stopped; videos made with other settings are an
error (or regenerated with --overwrite), never mixed in.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
from pathlib import Path

from tokentrim.app.backends import PRESETS
from tokentrim.app.run_config import BASELINE
from tokentrim.errors import UserError
from tokentrim.eval.command import check_segment_seconds
from tokentrim.files import write_json, write_text
from tokentrim.pipelines import pipeline_names

logger = logging.getLogger(__name__)
# name -> what the variant changes in the run config (the paper's rows, Tables 1-4;
# docs/spec.md#the-tokentrim-paper); the rest is the shipped config: TokenTrim at the paper's settings, FlowMo on
# the first block.
VARIANTS = {
    "baseline": BASELINE,
    "tokentrim": {},
    "flowmo_every_block": {"tokentrim": {"enabled": False}, "flowmo": {"mode": "every_block"}},
    "tokentrim_p0.05": {"tokentrim": {"p": 0.05}},
    "tokentrim_p0.2": {"tokentrim": {"p": 0.2}},
    "tokentrim_no_flowmo": {"flowmo": {"mode": "off"}},
}
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


TOY_SCENES = 4  # the toy grid: held-out scenes HELD_OUT_SCENES + 0..3, each from its observed first block


def default_prompts(preset: str | None) -> list[str]:
    if preset == "toy":
        from tokentrim.toy import HELD_OUT_SCENES, sample_scene

        return [sample_scene(HELD_OUT_SCENES + i).prompt for i in range(TOY_SCENES)]
    return [
        p for p in (PROMPTS_DIR / "paper_30s.txt").read_text().splitlines() if p and not p.startswith("#")
    ]


def plan_grid(args, prompts: list[str], out: Path) -> list[dict]:
    """Every (pipeline, variant, prompt) of the grid with its run config, outputs and settings, all checked before
    any weights load. The toy preset's default scenes start from their observed first block."""
    from tokentrim.app import backends as bk
    from tokentrim.app import generate as gen
    from tokentrim.app.run_config import default_config_path, load_run_config

    prefixes, scenes = [None] * len(prompts), [{}] * len(prompts)
    if args.preset == "toy" and args.prompts is None:
        from tokentrim.toy import HELD_OUT_SCENES, observed_start

        scenes = [{"scene": HELD_OUT_SCENES + i} for i in range(len(prompts))]
        prefixes = [observed_start(HELD_OUT_SCENES + i)[1] for i in range(len(prompts))]
    jobs = []
    for pipeline in args.pipelines:
        checkpoint = args.checkpoints.get(pipeline)
        config = bk.model_config(args.preset, args.model_dir)
        for variant in args.variants:
            updates = {"pipeline": pipeline, **VARIANTS[variant]}
            run = load_run_config(
                default_config_path(pipeline, args.preset), args.overrides, updates, runs=args.pipelines
            )
            run.request(prompts[0], args.latent_frames, seed=args.seed, start=prefixes[0]).check(
                run.checker(config)
            )
            for i, prompt in enumerate(prompts):
                video, log = gen.batch_outputs(out / "videos" / pipeline / variant, i, prompt)
                extra = {"prompt": prompt, "variant": variant, "index": i, **scenes[i]}
                settings = gen.video_settings(
                    run,
                    seed=args.seed + i,
                    latent_frames=args.latent_frames,
                    observed_frames=0 if prefixes[i] is None else prefixes[i].shape[1],
                    backend=bk.backend_name(args.preset, checkpoint),
                    dtype=args.dtype_,
                    attention="sdpa",
                    **extra,
                )
                jobs.append(
                    {
                        "pipeline": pipeline,
                        "variant": variant,
                        "prompt_index": i,
                        "prompt": prompt,
                        "checkpoint": checkpoint,
                        "run": run,
                        "prefix": prefixes[i],
                        "extra": extra,
                        "seed": args.seed + i,
                        "video": video,
                        "log": log,
                        "settings": settings,
                    }
                )
    return jobs


def generate_grid(args, jobs: list[dict]) -> list[dict]:
    """Generate every job not finished with the same settings, each video's files written as it is generated;
    return one row per job."""
    from tokentrim.app import backends as bk
    from tokentrim.app import generate as gen
    from tokentrim.app.api import Pipeline

    pending = [
        job
        for job in jobs
        if gen.unfinished(
            [(job["prompt_index"], job["prompt"], job["video"], job["log"], job["seed"])],
            lambda job=job, **_: job["settings"],
            args.overwrite,
        )
    ]
    loaded, encoded = {}, {}
    for job in pending:
        key = args.preset or job["checkpoint"]
        if key not in loaded:
            loaded[key] = bk.load_backend(
                preset=args.preset,
                model_dir=args.model_dir,
                checkpoint=job["checkpoint"],
                device=args.device_,
                dtype=args.dtype_,
            )
            prompts = sorted({j["prompt"] for j in pending})
            encoded[key] = dict(zip(prompts, Pipeline(loaded[key], job["run"]).embed(prompts), strict=True))
        pipe = Pipeline(loaded[key], job["run"])
        request = pipe.request(
            encoded[key][job["prompt"]][None],
            latent_frames=args.latent_frames,
            seed=job["seed"],
            start=job["prefix"],
        )
        gen.write_video_files(
            pipe.run(request),
            settings=job["settings"],
            fps=pipe.fps,
            video=job["video"],
            log=job["log"],
            latents=job["video"].with_suffix(".latents.pt"),
        )
        print(f"[{job['pipeline']}/{job['variant']}] {job['video']}")
    return [
        {
            k: str(job[k]) if k in ("video", "log") else job[k]
            for k in ("pipeline", "variant", "prompt_index", "video", "log")
        }
        for job in jobs
    ]


def evaluate(rows: list[dict], segment_seconds: float) -> list[dict]:
    """Per video: the evaluation's summary row (each measure's whole-video drift, the degenerate flag), the
    guard flags, prune rate and generation wall time."""
    from tokentrim.eval import evaluate_video
    from tokentrim.eval.summary import summary_row

    for row in rows:
        log = json.loads(Path(row["log"]).read_text())
        blocks = log["blocks"]
        row["prune_rate"] = sum(b["action"] == "prune" for b in blocks) / max(1, len(blocks))
        row["wall_s"] = log.get("timings", {}).get("wall_s")
        report = evaluate_video(row["video"], segment_seconds=segment_seconds)
        row["metrics"] = summary_row(report)
        row["flags"] = report.get("flags", [])
    return rows


def caption(segment_seconds: float) -> str:
    from tokentrim.eval.summary import summary_caption

    return (
        "Per pipeline and variant: mean ± population std over prompts. `prune_rate`: fraction of blocks "
        "TokenTrim pruned and regenerated; `runtime_x`: generation wall time relative to the pipeline's baseline "
        "(no decoding). " + summary_caption(segment_seconds)
    )


def tables(rows: list[dict]) -> tuple[str, str]:
    """Markdown and CSV: per pipeline and variant, the mean (and std) over prompts of each summary column
    (`tokentrim.eval.summary`: >= 0, lower is better)."""
    from tokentrim.eval.summary import SUMMARY_COLUMNS

    present = {m for r in rows for m in r["metrics"]}
    metric_names = [c.name for c in SUMMARY_COLUMNS if c.name in present]
    header = ["pipeline", "variant", "videos", "prune_rate", "runtime_x"] + metric_names
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["pipeline"], r["variant"]), []).append(r)
    csv_rows, md = [], ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (pipeline, variant), items in groups.items():
        base = groups.get((pipeline, "baseline"), items)
        base_wall = statistics.mean(r["wall_s"] or 0 for r in base) or float("nan")
        values = [
            pipeline,
            variant,
            len(items),
            statistics.mean(r["prune_rate"] for r in items),
            statistics.mean(r["wall_s"] or 0 for r in items) / base_wall,
        ]
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in values]
        for name in metric_names:
            xs = [r["metrics"][name] for r in items if r["metrics"].get(name) is not None]
            mean = statistics.mean(xs) if xs else float("nan")
            std = statistics.pstdev(xs) if len(xs) > 1 else 0.0
            values.append(mean)
            cells.append(f"{mean:.4g} ± {std:.2g}")
        csv_rows.append(values)
        md.append("| " + " | ".join(cells) + " |")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(csv_rows)
    return "\n".join(md) + "\n", buf.getvalue()


def figures(rows: list[dict], out: Path) -> list[Path]:
    """Drift curves, baseline vs TokenTrim, for the first prompt of each pipeline."""
    from tokentrim.app.figures import plot_drift

    made = []
    for pipeline in sorted({r["pipeline"] for r in rows}):
        logs = {r["variant"]: r["log"] for r in rows if r["pipeline"] == pipeline and r["prompt_index"] == 0}
        chosen = [v for v in ("baseline", "tokentrim") if v in logs]
        if chosen:
            target = out / f"drift_{pipeline}.png"
            plot_drift([json.loads(Path(logs[v]).read_text()) for v in chosen], target, labels=chosen)
            made.append(target)
    return made


def cmd_reproduce(args: argparse.Namespace) -> int:
    from tokentrim.app import backends as bk
    from tokentrim.files import check_output

    args.checkpoints = parse_checkpoints(args)
    if args.preset is None and not (args.model_dir and args.checkpoints):
        raise UserError("give --preset tiny|toy, or --model-dir with --checkpoint-sf / --checkpoint-rf")
    if args.preset is not None and (args.model_dir or args.checkpoints):
        raise UserError(f"--preset {args.preset} uses built-in weights: drop --model-dir and the checkpoints")
    if args.preset is None:
        args.pipelines = [p for p in args.pipelines if p in args.checkpoints]
        if not args.pipelines:
            raise UserError("none of --pipelines has a checkpoint: add --checkpoint-sf / --checkpoint-rf")
    check_segment_seconds(args.segment_seconds)
    args.device_ = bk.pick_device(args.device)
    args.dtype_ = bk.pick_dtype(args.dtype, args.device_)
    out = check_output(args.out, "--out", folder=True)
    prompts = default_prompts(args.preset) if args.prompts is None else _read(args.prompts)
    prompts = prompts[: args.num_prompts] if args.num_prompts else prompts
    rows = evaluate(generate_grid(args, plan_grid(args, prompts, out)), args.segment_seconds)
    md, csv_text = tables(rows)
    md = md + "\n" + caption(args.segment_seconds) + "\n"
    write_text(out / "table.md", md)
    write_text(out / "table.csv", csv_text)
    write_json(out / "per_video.json", rows)
    made = figures(rows, out)
    print(md)
    print(f"tables: {out / 'table.md'}, {out / 'table.csv'}; figures: {', '.join(map(str, made))}")
    return 0


def _read(path: str) -> list[str]:
    from tokentrim.app.generate import read_prompts

    return read_prompts(path)


def parse_checkpoints(args) -> dict[str, str]:
    """Pipeline name -> checkpoint file, from --checkpoint NAME=FILE and the -sf / -rf shortcuts."""
    found = {"self_forcing": args.checkpoint_sf, "rolling_forcing": args.checkpoint_rf}
    for item in args.checkpoint or []:
        name, sep, path = item.partition("=")
        if not sep or name not in pipeline_names():
            raise UserError(
                f"--checkpoint takes PIPELINE=FILE with PIPELINE one of {pipeline_names()}, got {item!r}"
            )
        found[name] = path
    return {name: path for name, path in found.items() if path}


def register(subparsers) -> None:
    from tokentrim.app.args import POSITIVE_FLOAT, POSITIVE_INT, SEED

    p = subparsers.add_parser(
        "reproduce",
        help="the paper's comparison grid: generate, evaluate, tabulate",
        description="Both pipelines x the paper's variants over a prompt set, then the drift "
        "metrics, tables and figures in one folder. Resumable.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="built-in model (CPU); else --model-dir with --checkpoint-sf / --checkpoint-rf",
    )
    p.add_argument("--model-dir", help="Wan2.1-T2V-1.3B folder (original or -Diffusers layout)")
    p.add_argument("--checkpoint-sf", help="Self Forcing checkpoint (self_forcing_dmd.pt)")
    p.add_argument("--checkpoint-rf", help="Rolling Forcing checkpoint (rolling_forcing_dmd.pt)")
    p.add_argument(
        "--checkpoint",
        action="append",
        metavar="PIPELINE=FILE",
        help="the checkpoint of any registered pipeline (repeatable)",
    )
    p.add_argument(
        "--prompts",
        help="UTF-8 prompt file, one per line (default: the paper's 30 s project-page "
        "prompts, or held-out scenes for the toy)",
    )
    p.add_argument("--num-prompts", type=POSITIVE_INT, help="use only the first N prompts, N >= 1")
    p.add_argument(
        "--pipelines",
        nargs="+",
        default=pipeline_names(paper_only=True),
        choices=pipeline_names(),
        help="pipelines to run",
    )
    p.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="variants to run"
    )
    p.add_argument(
        "--latent-frames",
        type=POSITIVE_INT,
        default=120,
        help="latent frames per video, a multiple of 3 (120 = 30 s at 16 fps)",
    )
    p.add_argument("--seed", type=SEED, default=0, help="prompt i uses seed + i")
    p.add_argument(
        "--segment-seconds", type=POSITIVE_FLOAT, default=2.0, help="evaluation segment length, > 0 s"
    )
    p.add_argument("--out", default="results", help="output folder (videos/, tables, figures)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate videos in --out that were made with other settings (else: an error)",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", help="bf16 | fp32 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE applied to every run")
    p.set_defaults(func=cmd_reproduce)
