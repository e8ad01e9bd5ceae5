"""Long rollouts of the toy world model with and without TokenTrim, over many seeds, with drift metrics.

For each seed: a held-out scene's prompt and observed first block (`observed_start`), one rollout per (pipeline,
variant), decoded with the toy codec, measured with the weight-free drift metrics of `tokentrim.eval`, plus two
toy-only ground-truth measures against the true world rendered from the same scene: the Bhattacharyya distance
between each segment's colour histogram and the truth's, and the shape coverage (`shape_coverage`). Writes
`summary.json`, `table.md` (means, spreads, paired differences), frame strips and drift curves for the first
seed.

    python scripts/toy_study.py --seeds 32 --latent-frames 120 --out results/toy_study

Other toy weights (`--weights`, e.g. a fine-tune from scripts/train_toy.py) and other sampler settings (`--set
KEY=VALUE`, added to every variant; a key under another pipeline's section only applies to that pipeline) measure
the baseline's stability, e.g. `--variants baseline --set self_forcing.denoising_steps=[1000,875,750,625,500,375,
250,125]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from tokentrim.app.api import Pipeline
from tokentrim.app.backends import PRESETS
from tokentrim.app.figures import plot_drift, plot_frame_strips
from tokentrim.app.run_config import default_config_path, load_run_config
from tokentrim.eval import evaluate_frames
from tokentrim.eval.metrics import bhattacharyya_distance, channel_histograms
from tokentrim.pipelines import pipeline_names
from tokentrim.toy import HELD_OUT_SCENES, observed_start, sample_scene
from tokentrim.toy.world import COLORS
from tokentrim.video import atomic_path

VARIANTS = {  # name -> overrides
    "baseline": ["tokentrim.enabled=false", "flowmo.mode=off"],
    "tokentrim_p0.05": ["tokentrim.p=0.05", "flowmo.mode=off"],
    "tokentrim_p0.1": ["tokentrim.p=0.1", "flowmo.mode=off"],
    "tokentrim_p0.2": ["tokentrim.p=0.2", "flowmo.mode=off"],
    # a lower trigger (not run by default): --variants baseline tokentrim_p0.1_lam1 tokentrim_p0.1_lam0.5
    "tokentrim_p0.1_lam1": ["tokentrim.p=0.1", "tokentrim.lam=1.0", "flowmo.mode=off"],
    "tokentrim_p0.1_lam0.5": ["tokentrim.p=0.1", "tokentrim.lam=0.5", "flowmo.mode=off"],
}  # FlowMo guides block 0 only, which the rollouts observe: it has nothing to do here
DEFAULT_VARIANTS = ["baseline", "tokentrim_p0.05", "tokentrim_p0.1", "tokentrim_p0.2"]
FPS = 8
HIST_BINS = 32
SHAPE_COLOUR_RADIUS = 35.0  # RGB distance; the two closest shape colours are 78 apart
SCENE_SEED_OFFSET = HELD_OUT_SCENES  # training streams start at 0, 1_000_003, ...; validation at 1e7


def truth_distance(frames: np.ndarray, truth: np.ndarray, segment: int) -> list[float]:
    """Per segment: Bhattacharyya distance of the rollout's pooled histogram to the true world's."""
    out = []
    for s in range(0, len(frames) - segment + 1, segment):
        h = np.mean([channel_histograms(f, HIST_BINS) for f in frames[s : s + segment]], axis=0)
        g = np.mean([channel_histograms(f, HIST_BINS) for f in truth[s : s + segment]], axis=0)
        out.append(bhattacharyya_distance(h, g))
    return out


def shape_coverage(frames: np.ndarray, truth: np.ndarray, scene, segment: int) -> list[float]:
    """Per segment: how much of the scene's shape colours the rollout shows, relative to the true world.

    For each shape, the fraction of pixels within RGB distance `SHAPE_COLOUR_RADIUS` of its colour, summed over
    the segment, divided by the same count in the true world; averaged over the shapes. 1 = the shapes are all
    there (at some position), 0 = they have vanished, > 1 = their colour has spread."""
    colours = np.array([COLORS[s.color] for s in scene.shapes], dtype=np.float32)  # (S, 3)

    def counts(video):
        d = np.linalg.norm(video[:, :, :, None, :].astype(np.float32) - colours, axis=-1)  # (T, H, W, S)
        return (d < SHAPE_COLOUR_RADIUS).sum(axis=(1, 2))  # (T, S)

    got, want = counts(frames), counts(truth)
    out = []
    for s in range(0, len(frames) - segment + 1, segment):
        g, w = got[s : s + segment].sum(0), want[s : s + segment].sum(0)
        out.append(float(np.mean(g / np.maximum(w, 1))))
    return out


def next_block_check(model, text, codec, seeds: int = 8) -> dict:
    """One-step prediction on held-out scenes: blocks 0-1 clean as context, block 2 at noise level sigma; the
    x0 MSE (latent units) of the model against repeating the last clean frame (the best guess that ignores
    motion). Noise drawn from a fixed seed."""
    from tokentrim.wan import block_causal_mask

    fpb = model.config.frames_per_block
    gen = torch.Generator().manual_seed(0)
    out = {}
    for sigma in (1.0, 0.5, 0.25):
        model_err, copy_err = [], []
        for i in range(seeds):
            scene = sample_scene(SCENE_SEED_OFFSET + 1000 + i)
            x0 = codec.encode(torch.from_numpy(scene.render(3 * fpb))[None])
            level = torch.tensor([0.0] * (2 * fpb) + [sigma] * fpb)[None]
            s = level[..., None, None, None]
            x_t = (1 - s) * x0 + s * torch.randn(x0.shape, generator=gen)
            ctx = model.encode_context(text.encode([scene.prompt]))
            mask = block_causal_mask(3 * fpb, fpb, model.config.tokens_per_frame)
            with torch.no_grad():
                pred = x_t - s * model(x_t, 1000 * level, ctx, attn_mask=mask)
            model_err.append((pred[:, 2 * fpb :] - x0[:, 2 * fpb :]).pow(2).mean().item())
            copy_err.append((x0[:, 2 * fpb - 1 : 2 * fpb] - x0[:, 2 * fpb :]).pow(2).mean().item())
        out[f"sigma={sigma}"] = {
            "model": float(np.mean(model_err)),
            "copy_last_frame": float(np.mean(copy_err)),
        }
    return out


def pipeline_overrides(pipeline: str, extra: list[str]) -> list[str]:
    """The `--set` overrides for one pipeline: a key under another pipeline's section is left out."""
    others = set(pipeline_names()) - {pipeline}
    return [o for o in extra if o.split(".", 1)[0] not in others]


def severity_cv(records: list[dict]) -> float:
    """Coefficient of variation (std / mean) of TokenTrim's drift severity D_t over a rollout's scored blocks:
    how wide the running mean + lam std band is relative to a typical block (recorded with TokenTrim off too)."""
    xs = [r["severity"] for r in records if r["severity"] is not None]
    return (
        statistics.pstdev(xs) / statistics.mean(xs)
        if len(xs) > 1 and statistics.mean(xs) > 0
        else float("nan")
    )


def load_backend(weights: Path | None):
    """The toy preset, or the same model with other weights."""
    if weights is None:
        return PRESETS["toy"].load(torch.device("cpu"), torch.float32, True)
    from tokentrim.app.backends import Backend
    from tokentrim.toy import load_toy
    from tokentrim.wan.text_encoder import TextEncoderFactory

    model, text, codec = load_toy(path=weights)
    factory = TextEncoderFactory(lambda: text, identity=f"toy-text:{weights}", text_len=model.config.text_len,
                                 device=torch.device("cpu"))  # fmt: skip
    return Backend("toy", model, factory, codec, fps=FPS)


def rollout(backend, pipeline: str, variant: str, embeds, prefix, frames: int, seed: int, extra: list[str]):
    run = load_run_config(
        default_config_path(pipeline, "toy"), VARIANTS[variant] + pipeline_overrides(pipeline, extra)
    )
    result = Pipeline(backend, run).generate(
        embeds, latent_frames=frames, seed=seed, start=prefix, decode=False
    )
    video = backend.decoder.decode(result.latents)[0].cpu().numpy()
    return video, [r.to_dict() for r in result.records], result.wall_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--latent-frames", type=int, default=120)
    ap.add_argument(
        "--pipelines", nargs="+", default=pipeline_names(paper_only=True), choices=pipeline_names()
    )
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--segment-seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("results/toy_study"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=Path, help="toy weights (.safetensors; default: the shipped ones)")
    ap.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="run config overrides, every variant"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backend = load_backend(args.weights)
    model, codec = backend.model, backend.decoder
    text = backend.encoder_factory.get()
    check = next_block_check(model, text, codec)
    print("next-block x0 MSE (model vs repeating the last frame):", json.dumps(check), flush=True)
    segment = int(args.segment_seconds * FPS)
    rows = []
    for seed in range(args.seeds):  # seed i: scene SCENE_SEED_OFFSET + i, sampler seed i
        scene = sample_scene(SCENE_SEED_OFFSET + seed)
        prompt, prefix = observed_start(SCENE_SEED_OFFSET + seed)
        embeds = text.encode([prompt])
        truth = scene.render(args.latent_frames)
        for pipeline in args.pipelines:
            logs = {}
            for variant in args.variants:
                video, records, wall = rollout(
                    backend, pipeline, variant, embeds, prefix, args.latent_frames, seed, args.set
                )
                report = evaluate_frames(video, FPS, args.segment_seconds, name=f"seed{seed}")
                dist = truth_distance(video, truth, segment)
                cover = shape_coverage(video, truth, scene, segment)
                rows.append({
                    "seed": seed, "pipeline": pipeline, "variant": variant, "wall_s": wall,
                    "prune_rate": sum(r["action"] == "prune" for r in records) / len(records),
                    "truth_first": dist[0], "truth_last": dist[-1], "truth_mean": float(np.mean(dist)),
                    "shapes_first": cover[0], "shapes_last": cover[-1], "truth_curve": dist, "shapes_curve": cover,
                    "severity_cv": severity_cv(records),
                    "drift": {k: m["drift"] for k, m in report["metrics"].items()},
                })  # fmt: skip
                logs[variant] = ({"config": {}, "blocks": records}, video)
                print(f"seed {seed} {pipeline:16s} {variant:22s} prune {rows[-1]['prune_rate']:.2f} "
                      f"truth {dist[0]:.3f} -> {dist[-1]:.3f} shapes {cover[0]:.2f} -> {cover[-1]:.2f} {wall:.1f}s", flush=True)  # fmt: skip
            if seed == 0:
                names = [v for v in ("baseline", "tokentrim_p0.1") if v in logs]
                plot_drift(
                    [logs[v][0] for v in names], args.out / f"drift_{pipeline}_seed0.png", labels=names
                )
                times = [0, 3, 6, 9, (args.latent_frames - 1) / FPS]
                plot_frame_strips([truth] + [logs[v][1] for v in names], ["true world", *names], FPS, times,
                                  args.out / f"frames_{pipeline}_seed0.png")  # fmt: skip
    write_summary(rows, args, check)


def paired_differences(rows: list[dict], args, metrics: list[str]) -> tuple[dict, list[str]]:
    """Per variant and metric: variant - baseline on the same seed, mean and standard error over seeds.
    Negative = less drift than the baseline; bold in the table when |mean| > 2 standard errors."""
    keys = [*metrics, "truth_last", "truth_mean", "shapes_last"]

    def value(row, key):
        return row["drift"][key] if key in row["drift"] else row[key]

    paired: dict = {}
    lines = [
        "Paired differences (variant - baseline, same seed; mean ± standard error; bold: beyond 2 s.e.)",
        "",
        "| pipeline | variant | " + " | ".join(keys) + " |",
        "|" + "---|" * (2 + len(keys)),
    ]
    for pipeline in args.pipelines:
        base = {r["seed"]: r for r in rows if r["pipeline"] == pipeline and r["variant"] == "baseline"}
        for variant in args.variants:
            group = [r for r in rows if r["pipeline"] == pipeline and r["variant"] == variant]
            if variant == "baseline" or not base or len(group) < 2:
                continue
            cells, entry = [], {}
            for key in keys:
                diffs = [value(r, key) - value(base[r["seed"]], key) for r in group]
                mean, se = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
                entry[key] = (mean, se)
                cell = f"{mean:+.3f} ± {se:.3f}"
                cells.append(f"**{cell}**" if abs(mean) > 2 * se > 0 else cell)
            paired[f"{pipeline}/{variant}"] = entry
            lines.append(f"| {pipeline} | {variant} | " + " | ".join(cells) + " |")
    return paired, lines


def write_summary(rows: list[dict], args, check: dict) -> None:
    metrics = sorted(rows[0]["drift"])
    lines = ["| pipeline | variant | prune rate | truth dist first → last | truth mean | shapes first → last | "
             + " | ".join(metrics) + " | s / video |", "|" + "---|" * (7 + len(metrics))]  # fmt: skip
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
                "shapes_first": ms([r["shapes_first"] for r in group]),
                "shapes_last": ms([r["shapes_last"] for r in group]),
                "drift": {m: ms([r["drift"][m] for r in group]) for m in metrics},
                "wall_s": ms([r["wall_s"] for r in group]),
            }
            summary[f"{pipeline}/{variant}"] = entry

            def fmt(pair, digits=3):
                return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

            lines.append(
                f"| {pipeline} | {variant} | {fmt(entry['prune_rate'], 2)} | {entry['truth_first'][0]:.3f} → "
                f"{fmt(entry['truth_last'])} | {fmt(entry['truth_mean'])} | "
                f"{entry['shapes_first'][0]:.2f} → {fmt(entry['shapes_last'], 2)} | "
                + " | ".join(fmt(entry["drift"][m]) for m in metrics)
                + f" | {entry['wall_s'][0]:.1f} |"
            )
    paired, paired_lines = paired_differences(rows, args, metrics)
    table = "\n".join(lines) + "\n\n" + "\n".join(paired_lines) + "\n"
    with atomic_path(args.out / "summary.json") as tmp:
        tmp.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                   "paired": paired, "next_block": check, "rows": rows}, indent=1))  # fmt: skip
    with atomic_path(args.out / "table.md") as tmp:
        tmp.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
