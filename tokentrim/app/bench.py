"""`tokentrim bench`: speed and memory of a pipeline, with and without TokenTrim, as JSON.

The loop's time (DiT, TokenTrim, FlowMo: `wall_s`) and the VAE's streamed decoding of each block (`decode_s`) are
timed apart: fps of the loop alone (`dit_fps`) and end to end (`end_to_end_fps`), per-block latency of the loop
and the first block's latency (its frames decoded: what a viewer waits for). Also the time in drift scoring, peak
memory (CUDA max allocated, or the process's max RSS on CPU) and the regeneration rate. Warm-up runs are
excluded. `--compare` alternates baseline and TokenTrim runs in one process and reports the ratio of their loop
times as `overhead_ratio`. `--compile` measures the same runs eager first, then compiled, in one process: the
speed-up, the compilation time and the graphs compiled (dynamo's count; after the warm-up runs none should be).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
from collections.abc import Iterator

import torch

from tokentrim.app.args import NONNEG_INT, POSITIVE_INT, add_model_args, add_run_args
from tokentrim.app.fast_path import add_fast_path_args
from tokentrim.errors import UserError
from tokentrim.files import write_json
from tokentrim.wan.compile import COMPILE_BACKENDS
from tokentrim.wan.quantize import weight_bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_once(
    backend,
    run,
    embeds,
    latent_frames: int,
    seed: int,
    device: torch.device,
    decoder=None,
) -> dict:
    """One generation, timed block by block: the loop's time per block (the device synchronised at each block's
    copy to the host) and, with a `decoder`, the streamed decoding of each block to host frames."""
    loop = run.loop(backend.model, decoder)
    request = run.request(embeds, latent_frames, seed=seed, decode=decoder is not None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    records, blocks, decodes = [], [], []
    _sync(device)
    for event in loop.stream(request):
        _sync(device)
        blocks.append(event.loop_s)
        decodes.append(event.decode_s)
        if event.record is not None:
            records.append(event.record)
    return {
        "wall_s": sum(blocks),
        "decode_s": sum(decodes),
        "first_block_s": blocks[0] + decodes[0],
        "block_s": blocks,
        "score_s": sum(r.score_ms for r in records) / 1000,
        "regenerations": sum(r.action == "prune" for r in records),
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
    decoder=None,
) -> Iterator[tuple[str, bool, dict]]:
    """Run each config (name -> RunConfig) `warmup_runs` times unmeasured, on `warmup_frames` latent frames
    (default: the measured length; fewer is enough to load the kernels), then `repeats` rounds alternating the
    configs, so drifting clocks or thermals affect all alike. Yields `(name, warm-up, run_once dict)` as each
    run ends. decoder: decode each block (`run_once`)."""
    frames = warmup_frames or latent_frames
    for _ in range(warmup_runs):
        for name, run in configs.items():
            yield name, True, run_once(backend, run, embeds, frames, seed, device, decoder)
    for _ in range(repeats):
        for name, run in configs.items():
            yield name, False, run_once(backend, run, embeds, latent_frames, seed, device, decoder)


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
    """Medians over runs. `wall_s`: the loop (DiT, TokenTrim, FlowMo), without decoding; `decode_s`: the VAE;
    fps over the video frames the VAE makes of the latents (None where nothing was decoded)."""
    walls = [r["wall_s"] for r in runs]
    blocks = [b for r in runs for b in r["block_s"]]
    video_frames = 1 + temporal_scale * (latent_frames - 1) if temporal_scale > 1 else latent_frames
    wall = statistics.median(walls)
    decode = statistics.median(r["decode_s"] for r in runs)
    end_to_end = statistics.median(r["wall_s"] + r["decode_s"] for r in runs)
    decoded = decode > 0
    score = statistics.median(r["score_s"] for r in runs)
    return {
        "runs": len(runs),
        "wall_s_median": wall,
        "wall_s": walls,
        "decode_s_median": decode if decoded else None,
        "end_to_end_s_median": end_to_end if decoded else None,
        "block_latency_ms_median": 1000 * statistics.median(blocks),
        "block_latency_ms_p90": 1000 * sorted(blocks)[int(0.9 * (len(blocks) - 1))],
        "first_block_latency_ms_median": 1000 * statistics.median(r["first_block_s"] for r in runs),
        "video_frames": video_frames,
        "dit_fps": video_frames / wall,
        "end_to_end_fps": video_frames / end_to_end if decoded else None,
        "latent_fps": latent_frames / wall,
        "scoring_s_median": score,
        "scoring_share": score / wall,
        "dit_and_rest_s_median": wall - score,
        "regeneration_rate": statistics.mean(r["regenerations"] / max(1, r["blocks"]) for r in runs),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
    }


def cmd_bench(args: argparse.Namespace) -> int:
    from tokentrim.app.args import load_model, runtime
    from tokentrim.app.fast_path import fast_path_from_args
    from tokentrim.wan.compile import compile_counts, compile_dit, counts_since

    # 1. Everything checked before weights load
    device, dtype, attention = runtime(args)
    configs = bench_configs(args)
    fast = fast_path_from_args(args)
    fast.check(device, args.compile_backend)
    # 2. Load (and quantise), measure eager, compile and measure again if asked, report
    backend = load_model(args, device, dtype, attention, decoder=not args.no_decode, text_encoder=False,
                         random_weights=args.random_weights)  # fmt: skip
    decoder = None if args.no_decode else bench_decoder(backend, args.random_weights, device, dtype)
    treated_name = "tokentrim" if args.compare else "run"  # the configuration the report's header describes
    treated = configs[treated_name]
    layout = treated.sampler.cache
    dataclasses.replace(fast, compile=False).apply(backend.model, layout)  # quantised for both
    cfg = backend.model.config
    gen_ = torch.Generator().manual_seed(args.seed)
    embeds = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen_).to(device)  # content does not matter
    warmup_frames = args.warmup_frames or args.latent_frames

    def measured() -> tuple[dict, list]:
        results, warmup = {name: [] for name in configs}, []
        for name, warming, run in measure(backend, configs, embeds, args.latent_frames, args.seed, device,
                                          repeats=args.repeats, warmup_runs=args.warmup_runs,
                                          warmup_frames=warmup_frames, decoder=decoder):  # fmt: skip
            warmup.append(run["wall_s"]) if warming else results[name].append(run)
        return summaries(backend, results, args.latent_frames), warmup

    eager = None
    if fast.compile:
        eager, eager_warmup = measured()
        compile_dit(backend.model, layout, args.compile_backend)
        before = compile_counts()
    main, warmup = measured()
    report = {
        **bench_header(args, backend, treated, device, dtype, fast),
        "decoded": decoder is not None,
        "warmup_frames": warmup_frames,
        "warmup_wall_s": warmup,  # with --compile: compilation included
        **main,
    }
    if eager is not None:
        counts = counts_since(before)
        report |= {
            "eager": eager,
            "eager_warmup_wall_s": eager_warmup,
            "compiled_graphs": counts["graphs"],  # every call kind of the run; more: recompilations
            "compile_s": counts["compile_s"],
            "compile_speedup": eager[treated_name]["wall_s_median"] / main[treated_name]["wall_s_median"],
        }
    if args.compare:
        report["overhead_ratio"] = report["tokentrim"]["wall_s_median"] / report["baseline"]["wall_s_median"]
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))
    return 0


def bench_decoder(backend, random_weights: bool, device: torch.device, dtype: torch.dtype):
    """The VAE that decodes each block: the backend's, or with `random_weights` (no VAE loaded) a random-weight
    Wan VAE built on `device` in `dtype`."""
    if backend.decoder is None and random_weights:
        from tokentrim.wan.vae import build_random_vae

        return build_random_vae(device=device, dtype=dtype)
    return backend.decoder


def bench_header(
    args: argparse.Namespace, backend, treated, device: torch.device, dtype: torch.dtype, fast
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
        **dataclasses.asdict(fast),  # compile, quantize
        "cache": treated.sampler.cache,
        "compile_backend": args.compile_backend if fast.compile else None,
        "torch": torch.__version__,
        "tokentrim_config": treated.to_dict()["tokentrim"],
        "flowmo_config": treated.to_dict()["flowmo"],
        "kv_cache_mb": kv_cache_mb(backend, treated, dtype),
        "dit_weights_mb": weight_bytes(backend.model) / 2**20,  # as stored: int8 / fp8 with --quantize
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
    p.add_argument(
        "--no-decode", action="store_true", help="time the loop only: no VAE decoding of the blocks"
    )
    add_fast_path_args(p)
    p.add_argument(
        "--compile-backend",
        default="inductor",
        choices=list(COMPILE_BACKENDS),
        help="torch.compile backend for --compile (eager, aot_eager: trace only, a quick check)",
    )
    p.set_defaults(func=cmd_bench)
