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
from collections.abc import Iterator

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
    """One generation without decoding, timed between the blocks its stream yields (the device synchronised at
    each block boundary only)."""
    loop = run.loop(backend.model)
    request = run.request(embeds, latent_frames, seed=seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    records, marks = [], []
    _sync(device)
    t0 = time.perf_counter()
    for event in loop.stream(request):
        _sync(device)
        marks.append(time.perf_counter())
        if event.record is not None:
            records.append(event.record)
    wall = time.perf_counter() - t0
    blocks = [b - a for a, b in zip([t0, *marks[:-1]], marks, strict=True)]
    score_s = sum(r.score_ms for r in records) / 1000
    regens = sum(r.action == "prune" for r in records)
    return {
        "wall_s": wall,
        "block_s": blocks,
        "score_s": score_s,
        "regenerations": regens,
        "blocks": len(records),
        "peak_memory_mb": _peak_memory_mb(device),
    }


def measure(
    backend,
    configs: dict,
    embeds: torch.Tensor,
    latent_frames: int,
    seed: int,
    device: torch.device,
    *,
    repeats: int,
    warmup_runs: int = 1,
    warmup_frames: int | None = None,
) -> Iterator[tuple[str, bool, dict]]:
    """Run each config (name -> RunConfig) `warmup_runs` times unmeasured, on `warmup_frames` latent frames
    (default: the measured length; fewer is enough to load the kernels), then `repeats` rounds alternating the
    configs, so drifting clocks or thermals affect all alike. Yields `(name, warm-up, run_once dict)` as each
    run ends."""
    frames = warmup_frames or latent_frames
    for _ in range(warmup_runs):
        for name, run in configs.items():
            yield name, True, run_once(backend, run, embeds, frames, seed, device)
    for _ in range(repeats):
        for name, run in configs.items():
            yield name, False, run_once(backend, run, embeds, latent_frames, seed, device)


def check_compile_backend(backend: str) -> str:
    """A torch.compile backend name (`inductor`; `eager` only traces, a quick check on a CPU)."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(
            f"--compile-backend {backend!r} is unknown; use inductor (the default) or eager (trace only)"
        )
    return backend


def compile_blocks(model, backend: str = "inductor") -> None:
    """torch.compile each DiT block, dynamic in its shapes: the key length changes as the cache fills, rolls and
    loses pruned tokens."""
    for block in model.blocks:
        block.compile(dynamic=True, backend=check_compile_backend(backend))


def kv_cache_mb(backend, run, dtype: torch.dtype) -> float:
    """Bytes of the pipeline's preallocated KV cache (keys + values, batch 1), exact: built on the meta device."""
    cache = run.loop(backend.model).make_cache(1, torch.device("meta"), dtype).cache
    return 2 * cache.k.numel() * cache.k.element_size() / 2**20


def summaries(backend, results: dict[str, list[dict]], latent_frames: int) -> dict[str, dict]:
    """`summarise` for each config's runs; video frames counted as the backend's decoder makes them."""
    # The toy codec makes 1 frame per latent frame; the Wan VAE 1 + 4 (F - 1) from F.
    scale = 1 if backend.name == "toy" else 4
    return {name: summarise(runs, latent_frames, scale) for name, runs in results.items() if runs}


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
    from tokentrim.app.args import load_model, runtime

    # 1. Everything checked before weights load
    device, dtype, attention = runtime(args)
    configs = bench_configs(args)
    # 2. Load, measure (each run's stream timed block by block), report
    backend = load_model(
        args, device, dtype, attention, decoder=False, text_encoder=False, random_weights=args.random_weights
    )
    if args.compile:
        compile_blocks(backend.model, args.compile_backend)
    cfg = backend.model.config
    gen_ = torch.Generator().manual_seed(args.seed)
    embeds = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen_).to(device)  # content does not matter
    warmup_frames = args.warmup_frames or args.latent_frames
    results, warmup = {name: [] for name in configs}, []
    for name, warming, run in measure(
        backend,
        configs,
        embeds,
        args.latent_frames,
        args.seed,
        device,
        repeats=args.repeats,
        warmup_runs=args.warmup_runs,
        warmup_frames=warmup_frames,
    ):
        warmup.append(run["wall_s"]) if warming else results[name].append(run)
    treated = configs["tokentrim" if args.compare else "run"]
    report = {
        **bench_header(args, backend, treated, device, dtype),
        "warmup_frames": warmup_frames,
        "warmup_wall_s": warmup,
        **summaries(backend, results, args.latent_frames),
    }
    if args.compile:
        from torch._dynamo.utils import counters

        report["compiled_graphs"] = counters["stats"]["unique_graphs"]  # > 1: recompilations
    if args.compare:
        report["overhead_ratio"] = report["tokentrim"]["wall_s_median"] / report["baseline"]["wall_s_median"]
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))
    return 0


def bench_header(
    args: argparse.Namespace, backend, treated, device: torch.device, dtype: torch.dtype
) -> dict:
    """What a report was measured on: the pipeline, the weights, the device, the settings, the cache's size."""
    cfg = backend.model.config
    return {
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
        "compile_backend": args.compile_backend if args.compile else None,
        "torch": torch.__version__,
        "tokentrim_config": treated.to_dict()["tokentrim"],
        "flowmo_config": treated.to_dict()["flowmo"],
        "kv_cache_mb": kv_cache_mb(backend, treated, dtype),
        "dit_weights_mb": sum(p.numel() * p.element_size() for p in backend.model.parameters()) / 2**20,
    }


def bench_configs(args: argparse.Namespace) -> dict:
    """The runs to measure (`{"run": ...}`, or `{"tokentrim": ..., "baseline": ...}` with --compare), with every
    argument checked: the requests against the model config, the outputs, the attention and compile backends."""
    from tokentrim.app import backends
    from tokentrim.app.args import run_config_from_args
    from tokentrim.files import check_output

    treated = run_config_from_args(args)
    if args.random_weights and (args.preset or args.model_dir or args.checkpoint):
        raise UserError(
            "--random-weights builds the full-size DiT by itself: drop --preset / --model-dir / --checkpoint"
        )
    if not args.random_weights and args.preset is None and not (args.model_dir and args.checkpoint):
        raise UserError("give --preset tiny|toy, --random-weights, or both --model-dir and --checkpoint")
    checker = treated.checker(backends.model_config(args.preset, args.model_dir, args.random_weights))
    treated.request("(random embeddings)", args.latent_frames, seed=args.seed).check(checker)
    if args.warmup_frames:
        try:
            treated.request("(random embeddings)", args.warmup_frames, seed=args.seed).check(checker)
        except UserError as err:  # the same limits, named by this option
            raise UserError(str(err).replace("`latent_frames`", "--warmup-frames")) from None
    if args.json:
        check_output(args.json, "--json")
    if args.compile:
        check_compile_backend(args.compile_backend)
    return {"tokentrim": treated, "baseline": treated.baseline()} if args.compare else {"run": treated}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure speed and memory (JSON)",
        description="Per-block latency, fps, scoring share and peak memory of a pipeline "
        "(random prompt embeddings, no decoding); --compare alternates baseline and TokenTrim.",
    )
    add_model_args(p)
    add_run_args(p)
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="the full-size Wan2.1 DiT with random weights (speed and memory without downloads)",
    )
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument(
        "--compare",
        action="store_true",
        help="baseline vs TokenTrim, alternating in one process; overhead_ratio",
    )
    p.add_argument("--repeats", type=POSITIVE_INT, default=3, help="measured runs per configuration, >= 1")
    p.add_argument("--warmup-runs", type=NONNEG_INT, default=1, help="unmeasured runs first, >= 0")
    p.add_argument(
        "--warmup-frames",
        type=POSITIVE_INT,
        help="latent frames of each warm-up run (default: --latent-frames)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block")
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend for --compile (eager: trace only, a quick check)",
    )
    p.set_defaults(func=cmd_bench)
