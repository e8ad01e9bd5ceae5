"""Long rollouts of the toy world model with and without TokenTrim, over many seeds, with drift metrics.

For each seed: the scene's prompt, one rollout per (pipeline, variant), decoded with the toy codec, measured with
the weight-free drift metrics of `tokentrim.eval`, plus a toy-only ground-truth measure: the Bhattacharyya
distance between each segment's colour histogram and that of the true world rendered from the same scene
(same shapes, colours and background; positions differ, histograms barely). Writes `summary.json`,
`table.md`, frame strips and drift curves for the first seed.

    python scripts/toy_study.py --seeds 32 --latent-frames 120 --out results/toy_study
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tokentrim.eval import evaluate_frames
from tokentrim.eval.metrics import bhattacharyya_distance, channel_histograms
from tokentrim.figures import plot_drift, plot_frame_strips
from tokentrim.pipelines import RollingForcingPipeline, SelfForcingPipeline
from tokentrim.run_config import default_config_path, load_run_config
from tokentrim.toy import load_toy, sample_scene
from tokentrim.video import atomic_path
from tokentrim_core import TokenTrim

VARIANTS = {  # name -> overrides
    "baseline": ["tokentrim.enabled=false", "flowmo.mode=off"],
    "tokentrim_p0.05": ["tokentrim.p=0.05", "flowmo.mode=off"],
    "tokentrim_p0.1": ["tokentrim.p=0.1", "flowmo.mode=off"],
    "tokentrim_p0.2": ["tokentrim.p=0.2", "flowmo.mode=off"],
    "tokentrim_p0.1_flowmo": ["tokentrim.p=0.1", "flowmo.mode=first_block"],
}
FPS = 8
HIST_BINS = 32
SCENE_SEED_OFFSET = (
    20_000_000  # held-out scenes: training streams start at 0, 1_000_003, ...; validation at 1e7
)


def truth_distance(frames: np.ndarray, truth: np.ndarray, segment: int) -> list[float]:
    """Per segment: Bhattacharyya distance of the rollout's pooled histogram to the true world's."""
    out = []
    for s in range(0, len(frames) - segment + 1, segment):
        h = np.mean([channel_histograms(f, HIST_BINS) for f in frames[s : s + segment]], axis=0)
        g = np.mean([channel_histograms(f, HIST_BINS) for f in truth[s : s + segment]], axis=0)
        out.append(bhattacharyya_distance(h, g))
    return out


def rollout(model, codec, pipeline: str, variant: str, embeds, frames: int, seed: int):
    run = load_run_config(default_config_path(pipeline), VARIANTS[variant])
    sampler = SelfForcingPipeline(model, run.self_forcing) if pipeline == "self_forcing" else \
        RollingForcingPipeline(model, run.rolling_forcing)  # fmt: skip
    hook = TokenTrim(run.tokentrim, model.config.patch_size[1:])
    start = time.perf_counter()
    out = sampler(embeds, frames, seed=seed, hook=hook, flowmo=run.flowmo, progress=False)
    wall = time.perf_counter() - start
    video = codec.decode(out.latents)[0].cpu().numpy()
    return video, out.records, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--latent-frames", type=int, default=120)
    ap.add_argument("--pipelines", nargs="+", default=["self_forcing", "rolling_forcing"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--segment-seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("results/toy_study"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, text, codec = load_toy()
    segment = int(args.segment_seconds * FPS)
    rows = []
    for seed in range(args.seeds):  # seed i: scene SCENE_SEED_OFFSET + i, sampler seed i
        scene = sample_scene(SCENE_SEED_OFFSET + seed)
        embeds = text.encode([scene.prompt])
        truth = scene.render(args.latent_frames)
        for pipeline in args.pipelines:
            logs = {}
            for variant in args.variants:
                video, records, wall = rollout(
                    model, codec, pipeline, variant, embeds, args.latent_frames, seed
                )
                report = evaluate_frames(video, FPS, args.segment_seconds, name=f"seed{seed}")
                dist = truth_distance(video, truth, segment)
                rows.append({
                    "seed": seed, "pipeline": pipeline, "variant": variant, "wall_s": wall,
                    "prune_rate": sum(r["action"] == "prune" for r in records) / len(records),
                    "truth_first": dist[0], "truth_last": dist[-1], "truth_mean": float(np.mean(dist)),
                    "drift": {k: m["drift"] for k, m in report["metrics"].items()},
                })  # fmt: skip
                logs[variant] = ({"config": {}, "blocks": records}, video)
                print(f"seed {seed} {pipeline:16s} {variant:22s} prune {rows[-1]['prune_rate']:.2f} "
                      f"truth {dist[0]:.3f} -> {dist[-1]:.3f}  {wall:.1f}s", flush=True)  # fmt: skip
            if seed == 0:
                names = [v for v in ("baseline", "tokentrim_p0.1") if v in logs]
                plot_drift(
                    [logs[v][0] for v in names], args.out / f"drift_{pipeline}_seed0.png", labels=names
                )
                times = [0, 3, 6, 9, (args.latent_frames - 1) / FPS]
                plot_frame_strips([truth] + [logs[v][1] for v in names], ["true world", *names], FPS, times,
                                  args.out / f"frames_{pipeline}_seed0.png")  # fmt: skip
    write_summary(rows, args)


def write_summary(rows: list[dict], args) -> None:
    metrics = sorted(rows[0]["drift"])
    lines = ["| pipeline | variant | prune rate | truth dist first → last | truth mean | "
             + " | ".join(metrics) + " | s / video |", "|" + "---|" * (6 + len(metrics))]  # fmt: skip
    summary = {}
    for pipeline in args.pipelines:
        for variant in args.variants:
            group = [r for r in rows if r["pipeline"] == pipeline and r["variant"] == variant]

            def ms(xs):
                return statistics.mean(xs), statistics.pstdev(xs)

            entry = {
                "n": len(group),
                "prune_rate": ms([r["prune_rate"] for r in group]),
                "truth_first": ms([r["truth_first"] for r in group]),
                "truth_last": ms([r["truth_last"] for r in group]),
                "truth_mean": ms([r["truth_mean"] for r in group]),
                "drift": {m: ms([r["drift"][m] for r in group]) for m in metrics},
                "wall_s": ms([r["wall_s"] for r in group]),
            }
            summary[f"{pipeline}/{variant}"] = entry

            def fmt(pair, digits=3):
                return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

            lines.append(
                f"| {pipeline} | {variant} | {fmt(entry['prune_rate'], 2)} | {entry['truth_first'][0]:.3f} → "
                f"{fmt(entry['truth_last'])} | {fmt(entry['truth_mean'])} | "
                + " | ".join(fmt(entry["drift"][m]) for m in metrics)
                + f" | {entry['wall_s'][0]:.1f} |"
            )
    table = "\n".join(lines) + "\n"
    with atomic_path(args.out / "summary.json") as tmp:
        tmp.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                   "rows": rows}, indent=1))  # fmt: skip
    with atomic_path(args.out / "table.md") as tmp:
        tmp.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
