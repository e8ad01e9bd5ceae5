"""`tokentrim bench`: speed and memory of a pipeline, with and without TokenTrim, as JSON.

Per-block latency (the device is synchronised at block boundaries only), video fps, time in drift scoring vs
the rest (DiT), peak memory (CUDA max allocated, or the process's max RSS on CPU) and the regeneration rate.
Warm-up runs are excluded. `--compare` alternates baseline and TokenTrim runs in one process and reports the
wall-clock ratio TokenTrim / baseline as `overhead_ratio`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from tokentrim.app.args import NONNEG_INT, POSITIVE_INT, add_model_args, add_run_args
from tokentrim.errors import UserError
from tokentrim.files import write_json


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_once(backend, run, embeds, latent_frames: int, seed: int, device: torch.device) -> dict:
    """One generation without decoding; per-block wall times measured at block boundaries."""
    from tokentrim.app.generate import run_video

    marks: list[float] = []

    def on_block(event) -> None:
        _sync(device)
        marks.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    out = run_video(
        backend, run, embeds, latent_frames=latent_frames, seed=seed, on_block=on_block, progress=False
    )
    _sync(device)
    wall = time.perf_counter() - t0
    blocks = [b - a for a, b in zip([t0, *marks[:-1]], marks, strict=True)]
    score_s = sum(r.score_ms for r in out.records) / 1000
    regens = sum(r.action == "prune" for r in out.records)
    return {"wall_s": wall, "block_s": blocks, "score_s": score_s, "regenerations": regens,
            "blocks": len(out.records), "peak_memory_mb": _peak_memory_mb(device)}  # fmt: skip


def kv_cache_mb(backend, run, dtype: torch.dtype) -> float:
    """Bytes of the pipeline's preallocated KV cache (keys + values, batch 1), exact: built on the meta device."""
    from tokentrim.app.generate import make_pipeline

    cache = make_pipeline(backend, run).make_cache(1, torch.device("meta"), dtype).cache
    return 2 * cache.k.numel() * cache.k.element_size() / 2**20


def summarise(runs: list[dict], latent_frames: int, temporal_scale: int) -> dict:
    walls = [r["wall_s"] for r in runs]
    blocks = [b for r in runs for b in r["block_s"]]
    video_frames = 1 + temporal_scale * (latent_frames - 1) if temporal_scale > 1 else latent_frames
    wall = statistics.median(walls)
    score = statistics.median(r["score_s"] for r in runs)
    return {
        "runs": len(runs),
        "wall_s_median": wall,
        "wall_s": walls,
        "block_latency_ms_median": 1000 * statistics.median(blocks),
        "block_latency_ms_p90": 1000 * sorted(blocks)[int(0.9 * (len(blocks) - 1))],
        "video_frames": video_frames,
        "video_fps": video_frames / wall,
        "latent_fps": latent_frames / wall,
        "scoring_s_median": score,
        "scoring_share": score / wall,
        "dit_and_rest_s_median": wall - score,
        "regeneration_rate": statistics.mean(r["regenerations"] / max(1, r["blocks"]) for r in runs),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
    }


def cmd_bench(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app.args import ema_choice, run_config_from_args
    from tokentrim.app.generate import check_request
    from tokentrim.files import check_output
    from tokentrim.wan.attention import check_backend

    device = backends.pick_device(args.device)
    dtype = backends.pick_dtype(args.dtype, device)
    attention = check_backend(args.attention)
    treated = run_config_from_args(args)
    baseline = run_config_from_args(args, baseline=True)
    if args.random_weights and (args.preset or args.model_dir or args.checkpoint):
        raise UserError(
            "--random-weights builds the full-size DiT by itself: drop --preset / --model-dir / --checkpoint"
        )
    if not args.random_weights and args.preset is None and not (args.model_dir and args.checkpoint):
        raise UserError("give --preset tiny|toy, --random-weights, or both --model-dir and --checkpoint")
    check_request(
        backends.model_config(args.preset, args.model_dir, args.random_weights), treated, args.latent_frames
    )
    if args.json:
        check_output(args.json, "--json")
    backend = backends.load_backend(preset=args.preset, model_dir=args.model_dir, checkpoint=args.checkpoint,
                                    device=device, dtype=dtype, use_ema=ema_choice(args), decoder=False,
                                    text_encoder=False, random_weights=args.random_weights)  # fmt: skip
    backend.model.attention_backend = attention
    if args.compile:
        for block in backend.model.blocks:
            block.compile(dynamic=True)
    cfg = backend.model.config
    gen_ = torch.Generator().manual_seed(args.seed)
    embeds = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen_).to(device)  # content does not matter
    configs = {"tokentrim": treated, "baseline": baseline} if args.compare else {"run": treated}
    for _ in range(args.warmup_runs):
        for run in configs.values():
            run_once(backend, run, embeds, args.latent_frames, args.seed, device)
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.repeats):  # alternate, so drifting clocks or thermals affect both alike
        for name, run in configs.items():
            results[name].append(run_once(backend, run, embeds, args.latent_frames, args.seed, device))
    scale = 1 if backend.name == "toy" else 4
    report = {
        "pipeline": args.pipeline,
        "backend": backend.name,
        "latent_frames": args.latent_frames,
        "latent_grid": [cfg.latent_height, cfg.latent_width],
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "attention": args.attention,
        "compile": args.compile,
        "torch": torch.__version__,
        "tokentrim_config": treated.to_dict()["tokentrim"],
        "flowmo_config": treated.to_dict()["flowmo"],
        "kv_cache_mb": kv_cache_mb(backend, treated, dtype),
        "dit_weights_mb": sum(p.numel() * p.element_size() for p in backend.model.parameters()) / 2**20,
        **{name: summarise(runs, args.latent_frames, scale) for name, runs in results.items()},
    }
    if args.compare:
        report["overhead_ratio"] = report["tokentrim"]["wall_s_median"] / report["baseline"]["wall_s_median"]
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure speed and memory (JSON)",
                              description="Per-block latency, fps, scoring share and peak memory of a pipeline "
                              "(random prompt embeddings, no decoding); --compare alternates baseline and TokenTrim.")  # fmt: skip
    add_model_args(p)
    add_run_args(p)
    p.add_argument("--random-weights", action="store_true",
                   help="the full-size Wan2.1 DiT with random weights (speed and memory without downloads)")  # fmt: skip
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument(
        "--compare",
        action="store_true",
        help="baseline vs TokenTrim, alternating in one process; overhead_ratio",
    )
    p.add_argument("--repeats", type=POSITIVE_INT, default=3, help="measured runs per configuration, >= 1")
    p.add_argument("--warmup-runs", type=NONNEG_INT, default=1, help="unmeasured runs first, >= 0")
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    p.set_defaults(func=cmd_bench)
