"""`tokentrim reproduce`: the paper's comparison grid, end to end.

Both pipelines x the variants of the paper's Tables 1-4 (baseline, TokenTrim, FlowMo on every block, TokenTrim
with p = 0.05 / 0.2, TokenTrim without FlowMo initialisation) over a prompt file, then the weight-free drift
metrics, then tables (markdown + CSV) and figures, all under one output folder. Every video is skipped when it
already exists, so an interrupted run resumes where it stopped.
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
from tokentrim.errors import UserError
from tokentrim.eval.command import check_segment_seconds
from tokentrim.files import write_json, write_text
from tokentrim.pipelines import pipeline_names

logger = logging.getLogger(__name__)
# name -> (tokentrim enabled, p, flowmo mode); the paper's rows (tokentrim-paper.md §5)
VARIANTS = {
    "baseline": (False, 0.1, "off"),
    "tokentrim": (True, 0.1, "first_block"),
    "flowmo_every_block": (False, 0.1, "every_block"),
    "tokentrim_p0.05": (True, 0.05, "first_block"),
    "tokentrim_p0.2": (True, 0.2, "first_block"),
    "tokentrim_no_flowmo": (True, 0.1, "off"),
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


def variant_overrides(name: str) -> list[str]:
    enabled, p, flowmo = VARIANTS[name]
    return [f"tokentrim.enabled={str(enabled).lower()}", f"tokentrim.p={p}", f"flowmo.mode={flowmo}"]


def generate_grid(args, prompts: list[str], out: Path) -> list[dict]:
    """Generate every missing video; return one row per (pipeline, variant, prompt). The toy preset's default
    scenes start from their observed first block (`tokentrim.toy.observed_start`)."""
    from tokentrim.app import backends as bk
    from tokentrim.app import generate as gen
    from tokentrim.app.run_config import default_config_path, load_run_config

    device = bk.pick_device(args.device)
    dtype = bk.pick_dtype(args.dtype, device)
    rows, loaded = [], {}
    prefixes, scenes = [None] * len(prompts), [{}] * len(prompts)
    if args.preset == "toy" and args.prompts is None:
        from tokentrim.toy import HELD_OUT_SCENES, observed_start

        scenes = [{"scene": HELD_OUT_SCENES + i} for i in range(len(prompts))]
        prefixes = [observed_start(HELD_OUT_SCENES + i)[1] for i in range(len(prompts))]
    for pipeline in args.pipelines:
        checkpoint = args.checkpoints.get(pipeline)
        key = args.preset or checkpoint
        if key not in loaded:
            loaded[key] = bk.load_backend(preset=args.preset, model_dir=args.model_dir, checkpoint=checkpoint,
                                          device=device, dtype=dtype)  # fmt: skip
        backend = loaded[key]
        embeds = gen.encode(backend, prompts, "cpu")
        for variant in args.variants:
            run = load_run_config(
                default_config_path(pipeline, args.preset), variant_overrides(variant) + args.overrides
            )
            folder = out / "videos" / pipeline / variant
            for i, prompt in enumerate(prompts):
                video, log = gen.batch_outputs(folder, i, prompt)
                row = {"pipeline": pipeline, "variant": variant, "prompt_index": i, "video": str(video),
                       "log": str(log)}  # fmt: skip
                if not (video.exists() and log.exists()):
                    result = gen.run_video(backend, run, embeds[i : i + 1], latent_frames=args.latent_frames,
                                           seed=args.seed + i, prefix=prefixes[i], progress=False,
                                           settings={"prompt": prompt, "variant": variant, "index": i,
                                                     **scenes[i]})  # fmt: skip
                    gen.write_outputs(result, video=video, log=log, latents=video.with_suffix(".latents.pt"))
                    print(f"[{pipeline}/{variant}] {video}")
                rows.append(row)
    return rows


def evaluate(rows: list[dict], segment_seconds: float) -> list[dict]:
    """Per video: the drift metrics (first-vs-last-segment deltas), prune rate and wall time."""
    from tokentrim.eval import evaluate_video

    for row in rows:
        log = json.loads(Path(row["log"]).read_text())
        blocks = log["blocks"]
        row["prune_rate"] = sum(b["action"] == "prune" for b in blocks) / max(1, len(blocks))
        row["wall_s"] = log.get("timings", {}).get("wall_s")
        report = evaluate_video(row["video"], segment_seconds=segment_seconds)
        row["metrics"] = {name: m["drift"] for name, m in report["metrics"].items()}
    return rows


def tables(rows: list[dict]) -> tuple[str, str]:
    """Markdown and CSV: per pipeline and variant, the mean (and std) over prompts of each metric's first-vs-last drift (>= 0, lower is better)."""
    metric_names = sorted({m for r in rows for m in r["metrics"]})
    header = ["pipeline", "variant", "videos", "prune_rate", "runtime_x"] + metric_names
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["pipeline"], r["variant"]), []).append(r)
    csv_rows, md = [], ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (pipeline, variant), items in groups.items():
        base = groups.get((pipeline, "baseline"), items)
        base_wall = statistics.mean(r["wall_s"] or 0 for r in base) or float("nan")
        values = [pipeline, variant, len(items), statistics.mean(r["prune_rate"] for r in items),
                  statistics.mean(r["wall_s"] or 0 for r in items) / base_wall]  # fmt: skip
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
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    args.checkpoints = parse_checkpoints(args)
    if args.preset is None and not (args.model_dir and args.checkpoints):
        raise UserError("give --preset tiny|toy, or --model-dir with --checkpoint-sf / --checkpoint-rf")
    if args.preset is None:
        args.pipelines = [p for p in args.pipelines if p in args.checkpoints]
    if args.num_prompts is not None and args.num_prompts < 1:
        raise UserError(f"--num-prompts must be at least 1, got {args.num_prompts}")
    check_segment_seconds(args.segment_seconds)
    prompts = default_prompts(args.preset) if args.prompts is None else _read(args.prompts)
    prompts = prompts[: args.num_prompts] if args.num_prompts else prompts
    out = Path(args.out)
    rows = evaluate(generate_grid(args, prompts, out), args.segment_seconds)
    md, csv_text = tables(rows)
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
    p = subparsers.add_parser("reproduce", help="the paper's comparison grid: generate, evaluate, tabulate")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="built-in model (CPU); else --model-dir + checkpoints"
    )
    p.add_argument("--model-dir")
    p.add_argument("--checkpoint-sf", help="self_forcing_dmd.pt")
    p.add_argument("--checkpoint-rf", help="rolling_forcing_dmd.pt")
    p.add_argument(
        "--checkpoint", action="append", metavar="PIPELINE=FILE", help="checkpoint of any pipeline"
    )
    p.add_argument(
        "--prompts", help="prompt file (default: the paper's 30 s project-page prompts, or toy scenes)"
    )
    p.add_argument("--num-prompts", type=int, help="use only the first N prompts")
    p.add_argument("--pipelines", nargs="+", default=pipeline_names(paper_only=True), choices=pipeline_names(),
                   help="default: the paper's pipelines")  # fmt: skip
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--latent-frames", type=int, default=120, help="120 latent frames = 30 s at 16 fps")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--segment-seconds", type=float, default=2.0)
    p.add_argument("--out", default="results")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every run (key=value)")
    p.set_defaults(func=cmd_reproduce)
