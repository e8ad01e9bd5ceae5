"""`python -m tools.gpu_check [--dry-run] OUTDIR`: the prepared GPU check.

Run it through `scripts/gpu_check.sh` (its header says how on a GPU machine). Writes `OUTDIR/gpu_check.json` and
`OUTDIR/gpu_check.md`, rewritten after every step (`tools.gpu_check.report`). It drives the installed package
through its public API only: `tokentrim.load`, `Request`, the loops' `stream`, the bench's `measure`. The steps, the most important
first, so that a short slot still measures the main figures:

1. environment: GPU, torch / CUDA versions, flash-attn importable or not;
2. correctness: the tiny preset in fp32 on the device vs on the CPU, both pipelines, TokenTrim pruning every
   block it may (lam = 0), with and without FlowMo, and on the static cache against the CPU's dynamic one, the
   same noise (drawn on the CPU) for all; bf16 finite;
3. host_syncs: CUDA's synchronising calls per video of the tiny preset, by the function that made them;
4. model: the full-size Wan2.1 DiT with random weights (the dry run: the tiny preset);
5. speed_<pipeline>: baseline, TokenTrim (FlowMo off) and TokenTrim + FlowMo on block 0, alternating in one
   process (`tokentrim.app.bench.measure`), every block decoded by the Wan VAE (its architecture, random
   weights) and timed apart: the loop's fps and end-to-end fps, per-block and first-block latency, overhead
   ratios, scoring share;
6. memory: peak memory of a 30 s Rolling Forcing video (the larger cache) with TokenTrim + FlowMo, every block
   decoded as it finishes; no text encoder on the device;
7. static_cache: Self Forcing's baseline on the dynamic and the static KV cache, eager, alternating;
8. attention_flash: the baselines again with flash-attn's kernels, if flash-attn imports;
9. compile: `tokentrim bench --compile --cache static` in its own process (compilation is process-wide and may
   hang): the same runs eager, then compiled; speed-up, compilation time, graphs compiled;
10. flowmo: FlowMo off / first block / every block, TokenTrim off, on a shorter video;
11. memory_int8: the memory run again with the DiT's block weights in int8 (torchao), if torchao imports.

`--dry-run` runs the same steps on the CPU with the tiny preset and short videos, in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import tokentrim
from tokentrim.app.api import Pipeline
from tokentrim.app.backends import Backend
from tokentrim.app.bench import kv_cache_mb, measure, summaries
from tokentrim.app.run_config import RunConfig, default_config_path, load_run_config
from tokentrim.errors import UserError
from tokentrim.files import check_output
from tools.gpu_check.host_syncs import cuda_syncs
from tools.gpu_check.report import Figure, Report, Skip, StepTimeout

PIPELINES = ("self_forcing", "rolling_forcing")
GIB = 2**30
TOLERANCE = 1e-4  # max |latent difference|, fp32 device vs CPU
GOAL_GIB = 24  # a 30 s video on a 24 GB GPU
PRUNING = ["tokentrim.lam=0", "tokentrim.warmup=1"]  # threshold = the running mean: prunes most blocks
DEPENDENCIES = ("numpy", "diffusers", "transformers", "tokenizers", "safetensors", "omegaconf", "imageio",
                "imageio-ffmpeg", "opencv-python-headless", "matplotlib", "ftfy", "tqdm", "flash-attn", "triton", "torchao")  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What the check runs, on the GPU or in the dry run."""

    dry_run: bool
    device: str
    dtype: torch.dtype  # of the speed and memory runs
    preset: str | None  # None: the full-size Wan2.1 DiT with random weights
    speed_frames: int  # latent frames of the speed and memory runs
    warmup_frames: dict[str, int]  # warm-up run length per pipeline (loads the kernels)
    short_frames: int  # compile and FlowMo runs
    check_frames: int  # correctness and host-sync runs (tiny preset)
    compile_backend: str
    total_s: float  # the whole check; each step also has its own budget, cut to what is left
    budgets: dict[str, float]


# Budgets in seconds per step on one H100 / H200; scripts/gpu_check.sh lists them with the expected times.
GPU = Plan(
    dry_run=False, device="cuda", dtype=torch.bfloat16, preset=None, speed_frames=120,
    warmup_frames={"self_forcing": 9, "rolling_forcing": 15}, short_frames=30, check_frames=24,
    compile_backend="inductor", total_s=450.0,
    budgets={"environment": 15, "correctness": 60, "host_syncs": 45, "model": 60, "speed_self_forcing": 100,
             "speed_rolling_forcing": 120, "memory": 90, "static_cache": 40, "attention_flash": 70, "compile": 150,
             "flowmo": 100, "memory_int8": 60},
)  # fmt: skip
# The same steps on the CPU: the tiny preset, the shortest videos each pipeline allows, compilation traced only.
# About a minute in all; the budgets leave room for a CPU shared with other jobs (the longest step: ~20 s alone).
DRY = replace(
    GPU,
    dry_run=True,
    device="cpu",
    dtype=torch.float32,
    preset="tiny",
    speed_frames=15,
    short_frames=15,
    check_frames=15,
    compile_backend="eager",
    total_s=1200.0,
    budgets=dict.fromkeys(GPU.budgets, 300.0),
)

FIGURES = (
    Figure("Self Forcing baseline, video fps (H100-class)", ("speed_self_forcing", "baseline_fps"), "", ">=", 25),
    Figure("Rolling Forcing baseline, video fps", ("speed_rolling_forcing", "baseline_fps")),
    Figure("Self Forcing baseline, end-to-end fps (VAE decode included)",
           ("speed_self_forcing", "baseline_end_to_end_fps")),
    Figure("Rolling Forcing baseline, end-to-end fps", ("speed_rolling_forcing", "baseline_end_to_end_fps")),
    Figure("Self Forcing baseline, first-block latency (decoded)",
           ("speed_self_forcing", "baseline_first_block_latency_ms"), " ms"),
    Figure("Self Forcing baseline, block latency", ("speed_self_forcing", "baseline_block_latency_ms"), " ms"),
    Figure("Rolling Forcing baseline, block latency", ("speed_rolling_forcing", "baseline_block_latency_ms"), " ms"),
    Figure("TokenTrim overhead, Self Forcing", ("speed_self_forcing", "tokentrim_overhead"), "", "<=", 1.03),
    Figure("TokenTrim overhead, Rolling Forcing", ("speed_rolling_forcing", "tokentrim_overhead"), "", "<=", 1.03),
    Figure("TokenTrim + FlowMo block 0 overhead, Self Forcing", ("speed_self_forcing", "tokentrim_flowmo_overhead")),
    Figure("TokenTrim + FlowMo block 0 overhead, Rolling Forcing",
           ("speed_rolling_forcing", "tokentrim_flowmo_overhead")),
    Figure("scoring share of the run, Self Forcing", ("speed_self_forcing", "scoring_share"), "", "<", 0.01),
    Figure("scoring share of the run, Rolling Forcing", ("speed_rolling_forcing", "scoring_share"), "", "<", 0.01),
    Figure("peak allocated, 30 s video + VAE decode", ("memory", "peak_allocated_gib"), " GiB", "<=", GOAL_GIB),
    Figure("peak allocated, the same with int8 DiT weights", ("memory_int8", "peak_allocated_gib"), " GiB"),
    Figure("static / dynamic cache time, Self Forcing baseline", ("static_cache", "static_over_dynamic")),
    Figure("fp32 device static cache vs CPU, Self Forcing", ("correctness", "self_forcing", "max_abs_diff_static"),
           "", "<=", TOLERANCE),
    Figure("fp32 device vs CPU, Self Forcing", ("correctness", "self_forcing", "max_abs_diff"), "", "<=", TOLERANCE),
    Figure("fp32 device vs CPU, Rolling Forcing", ("correctness", "rolling_forcing", "max_abs_diff"), "", "<=",
           TOLERANCE),
    Figure("undocumented host syncs after block 0, Self Forcing",
           ("host_syncs", "self_forcing", "other_after_first_block"), "", "<=", 0),
    Figure("undocumented host syncs after block 0, Rolling Forcing",
           ("host_syncs", "rolling_forcing", "other_after_first_block"), "", "<=", 0),
    Figure("flash-attn baseline fps, Self Forcing", ("attention_flash", "self_forcing", "baseline_fps")),
    Figure("flash-attn baseline fps, Rolling Forcing", ("attention_flash", "rolling_forcing", "baseline_fps")),
    Figure("torch.compile speed-up, Self Forcing baseline, static cache", ("compile", "speedup")),
    Figure("graphs compiled, Self Forcing baseline, static cache", ("compile", "compiled_graphs")),
    Figure("FlowMo every block / off, Self Forcing", ("flowmo", "self_forcing", "every_block_ratio")),
    Figure("FlowMo every block / off, Rolling Forcing", ("flowmo", "rolling_forcing", "every_block_ratio")),
)  # fmt: skip


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def highest_fp32_precision():
    """fp32 matmuls and convolutions without TF32 (cuDNN allows TF32 by default: 1e-3 errors)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def tiny_pipeline(pipeline: str, device: torch.device, dtype: torch.dtype, overrides=()) -> Pipeline:
    """The tiny preset (the same seeded weights on every device) with `pipeline`'s run config and overrides."""
    return tokentrim.load(
        pipeline,
        preset="tiny",
        device=str(device),
        dtype=DTYPE_NAMES[dtype],
        overrides=list(overrides),
        decoder=False,
    )


class Check:
    """The steps; each fills its figures dict (and may `save` progress)."""

    def __init__(self, plan: Plan, out_dir: Path):
        self.plan, self.out_dir = plan, out_dir
        self.device = torch.device(plan.device)
        summary = (
            "CPU, tiny preset, short videos: checks that every step runs; its numbers say nothing about a GPU"
            if plan.dry_run
            else "full-size Wan2.1 DiT with random weights, bf16, 480x832"
        )
        header = {
            "check": "tokentrim GPU check",
            "dry_run": plan.dry_run,
            "summary": summary,
            "plan": {k: str(v) if isinstance(v, torch.dtype) else v for k, v in vars(plan).items()},
        }
        self.report = Report(out_dir, header, FIGURES, plan.total_s)
        self.backend: Backend | None = None
        self.vae = None
        self.embeds: torch.Tensor | None = None

    # Helpers -------------------------------------------------------------------------------------------------
    def run_config(
        self, pipeline: str, overrides=(), baseline: bool = False, preset: str | None = ""
    ) -> RunConfig:
        """The shipped run config of `pipeline` (for `preset`, default the plan's), with overrides; `baseline`:
        TokenTrim off (blocks still scored and logged, nothing pruned) and FlowMo off, as `bench --no-tokentrim`."""
        updates = {"tokentrim": {"enabled": False}, "flowmo": {"mode": "off"}} if baseline else None
        preset = self.plan.preset if preset == "" else preset
        return load_run_config(default_config_path(pipeline, preset), list(overrides), updates)

    def tiny_rollout(self, pipeline: str, device: torch.device, dtype: torch.dtype, overrides) -> tuple:
        """The tiny preset on `device`: (latents on the CPU, decisions). Same weights, embeddings and noise
        (the initial noise and the in-loop draws from CPU generators) whatever the device."""
        pipe = tiny_pipeline(pipeline, device, dtype, overrides)
        cfg = pipe.backend.model.config
        gen = torch.Generator().manual_seed(0)
        embeds = torch.randn(1, 16, cfg.text_dim, generator=gen)
        frames = self.plan.check_frames
        noise = torch.randn(1, frames, cfg.in_dim, cfg.latent_height, cfg.latent_width, generator=gen)
        request = pipe.request(
            embeds.to(device),
            latent_frames=frames,
            seed=None,
            noise=noise.to(device, dtype),
            generator=torch.Generator().manual_seed(1),
            decode=False,
        )
        out = pipe.loop(request)
        decisions = [(r.action, r.pruned_positions) for r in out.records]
        return out.latents.float().cpu(), decisions

    def _need_model(self) -> Backend:
        if self.backend is None:
            raise Skip("the model step did not finish")
        return self.backend

    def _measure(
        self,
        fig: dict,
        configs: dict,
        frames: int,
        warmup_runs: int,
        warmup_frames: int | None = None,
        decode: bool = False,
    ):
        """Alternating runs (`bench.measure`, one round; `decode`: each block decoded by the VAE, timed apart);
        the summaries in `fig["configs"]` after every run."""
        backend, runs = self._need_model(), {name: [] for name in configs}
        for name, warming, run in measure(
            backend,
            configs,
            self.embeds,
            frames,
            0,
            self.device,
            repeats=1,
            warmup_runs=warmup_runs,
            warmup_frames=warmup_frames,
            decoder=self.vae if decode else None,
        ):
            if not warming:
                runs[name].append(run)
                fig["configs"] = summaries(backend, runs, frames)
                self.report.save()
        return fig["configs"]

    # Steps ---------------------------------------------------------------------------------------------------
    def environment(self, fig: dict) -> None:
        from tokentrim.wan.attention import flash_available

        fig.update(
            python=platform.python_version(),
            torch=torch.__version__,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            cpu_count=os.cpu_count(),
            cuda_available=torch.cuda.is_available(),
            flash_attn_importable=importlib.util.find_spec("flash_attn") is not None,
            versions={d: _version(d) for d in DEPENDENCIES},
        )
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            fig.update(
                gpu=props.name,
                gpu_memory_gib=round(props.total_memory / GIB, 2),
                capability=f"{props.major}.{props.minor}",
                multiprocessors=props.multi_processor_count,
                flash_attention_usable=flash_available(),
            )

    def correctness(self, fig: dict) -> None:
        fig.update(
            compared=f"tiny preset, fp32, {self.plan.check_frames} latent frames: {self.device} vs cpu",
            tolerance=TOLERANCE,
            overrides=PRUNING,
        )
        with highest_fp32_precision():
            for pipeline in PIPELINES:
                row = fig[pipeline] = {}
                for label, flowmo in (("", "flowmo.mode=off"), ("_flowmo", "flowmo.mode=first_block")):
                    overrides = [*PRUNING, flowmo]
                    ref, ref_decisions = self.tiny_rollout(
                        pipeline, torch.device("cpu"), torch.float32, overrides
                    )
                    got, decisions = self.tiny_rollout(pipeline, self.device, torch.float32, overrides)
                    row[f"max_abs_diff{label}"] = (got - ref).abs().max().item()
                    row[f"decisions_equal{label}"] = decisions == ref_decisions
                    row[f"prunes{label}"] = sum(action == "prune" for action, _ in decisions)
                    self.report.save()
                # the static cache on the device against the dynamic one on the CPU (the run without FlowMo)
                overrides = [*PRUNING, "flowmo.mode=off"]
                ref, ref_decisions = self.tiny_rollout(
                    pipeline, torch.device("cpu"), torch.float32, overrides
                )
                got, decisions = self.tiny_rollout(
                    pipeline, self.device, torch.float32, [*overrides, f"{pipeline}.cache=static"]
                )
                row["max_abs_diff_static"] = (got - ref).abs().max().item()
                row["decisions_equal_static"] = decisions == ref_decisions
                self.report.save()
        for pipeline in PIPELINES:
            latents, _ = self.tiny_rollout(pipeline, self.device, torch.bfloat16, PRUNING)
            fig[pipeline]["bf16_finite"] = bool(torch.isfinite(latents).all())
        fig["passed"] = all(
            row[f"max_abs_diff{label}"] <= TOLERANCE and row[f"decisions_equal{label}"] and row["bf16_finite"]
            for row in map(fig.get, PIPELINES)
            for label in ("", "_flowmo", "_static")
        )

    def host_syncs(self, fig: dict) -> None:
        fig["run"] = (
            f"tiny preset, fp32, {self.plan.check_frames} latent frames, TokenTrim pruning, FlowMo block 0"
        )
        for pipeline in PIPELINES:
            pipe = tiny_pipeline(pipeline, self.device, torch.float32, [*PRUNING, "flowmo.mode=first_block"])
            embeds = torch.randn(
                1, 16, pipe.backend.model.config.text_dim, generator=torch.Generator().manual_seed(0)
            )
            fig[pipeline] = cuda_syncs(pipe, embeds.to(self.device), self.plan.check_frames, self.device)
            self.report.save()

    def model(self, fig: dict) -> None:
        start = time.perf_counter()
        model = {"random_weights": True} if self.plan.preset is None else {"preset": self.plan.preset}
        self.backend = tokentrim.load(
            "self_forcing",
            device=self.plan.device,
            dtype=DTYPE_NAMES[self.plan.dtype],
            decoder=False,
            **model,
        ).backend
        self.vae = self._vae()
        cfg = self.backend.model.config
        gen = torch.Generator().manual_seed(0)
        self.embeds = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen).to(self.device)
        fig.update(
            vae_weights_gib=sum(p.numel() * p.element_size() for p in self.vae.model.parameters()) / GIB,
            backend=self.backend.name,
            build_s=time.perf_counter() - start,
            dtype=str(self.plan.dtype),
            latent_grid=[cfg.latent_height, cfg.latent_width],
            tokens_per_frame=cfg.tokens_per_frame,
            dit_weights_gib=sum(p.numel() * p.element_size() for p in self.backend.model.parameters()) / GIB,
            kv_cache_gib={
                p: kv_cache_mb(self.backend, self.run_config(p), self.plan.dtype) / 1024 for p in PIPELINES
            },
        )

    def speed(self, fig: dict, pipeline: str) -> None:
        frames, block = self.plan.speed_frames, self._need_model().model.config.frames_per_block
        fig.update(
            latent_frames=frames,
            warmup_frames=self.plan.warmup_frames[pipeline],
            baseline="TokenTrim off (scored and logged, nothing pruned), FlowMo off",
        )
        configs = {
            "baseline": self.run_config(pipeline, baseline=True),
            "tokentrim": self.run_config(pipeline, ["flowmo.mode=off"]),
            "tokentrim_flowmo": self.run_config(pipeline),
        }
        s = self._measure(
            fig, configs, frames, warmup_runs=1, warmup_frames=self.plan.warmup_frames[pipeline], decode=True
        )
        base = s["baseline"]
        fig.update(
            baseline_fps=base["dit_fps"],
            baseline_end_to_end_fps=base["end_to_end_fps"],
            baseline_decode_s=base["decode_s_median"],
            baseline_first_block_latency_ms=base["first_block_latency_ms_median"],
            baseline_block_latency_ms=base["block_latency_ms_median"],
            tokentrim_overhead=s["tokentrim"]["wall_s_median"] / base["wall_s_median"],
            tokentrim_flowmo_overhead=s["tokentrim_flowmo"]["wall_s_median"] / base["wall_s_median"],
            scoring_share=s["tokentrim"]["scoring_share"],
            scoring_ms_per_block=1000 * s["tokentrim"]["scoring_s_median"] / (frames // block),
            regeneration_rate=s["tokentrim"]["regeneration_rate"],
            peak_memory_mb={n: c["peak_memory_mb"] for n, c in s.items()},
        )

    def memory(self, fig: dict) -> None:
        self._decoded_video_peak(fig)

    def memory_int8(self, fig: dict) -> None:
        """The memory run with the DiT's block linears in int8 (torchao), quantised in place: the last step."""
        from tokentrim.wan.quantize import quantize_dit, weight_bytes

        if importlib.util.find_spec("torchao") is None:
            raise Skip("torchao is not importable here (pip install 'tokentrim[quant]')")
        model = self._need_model().model
        before = weight_bytes(model)
        quantize_dit(model, "int8")
        fig.update(dit_weights_gib_bf16=before / GIB, dit_weights_gib=weight_bytes(model) / GIB)
        self._decoded_video_peak(fig)

    def _decoded_video_peak(self, fig: dict) -> None:
        """Peak memory of a 30 s Rolling Forcing video (TokenTrim + FlowMo), each block decoded as it is final."""
        backend, pipeline, frames = self._need_model(), "rolling_forcing", self.plan.speed_frames
        vae = self.vae
        fig.update(
            pipeline=pipeline,
            latent_frames=frames,
            run="TokenTrim + FlowMo block 0 (the run config)",
            text_encoder="not on the device (random prompt embeddings), as after --offload cpu or free",
            vae_weights_gib=sum(p.numel() * p.element_size() for p in vae.model.parameters()) / GIB,
            decoded_frames=0,
            blocks_decoded=0,
        )
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            fig["goal_gib"] = GOAL_GIB
        run = self.run_config(pipeline)
        # as `tokentrim generate` writes the mp4: each block decoded as it is final, its frames to the host
        for event in run.loop(backend.model, vae).stream(
            run.request(self.embeds, frames, seed=0, decode=True)
        ):
            fig["decoded_frames"] += event.decoded.shape[1]
            fig["blocks_decoded"] += 1
            if cuda:
                fig["peak_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / GIB
                fig["peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / GIB
            if fig["blocks_decoded"] % 5 == 0:
                self.report.save()
        if cuda:
            fig["fits_goal"] = fig["peak_allocated_gib"] <= GOAL_GIB
        else:
            import resource

            fig["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the whole process

    def static_cache(self, fig: dict) -> None:
        """Self Forcing's baseline on both KV-cache layouts, eager, alternating (no decoding)."""
        frames = self.plan.short_frames
        configs = {
            layout: self.run_config("self_forcing", [f"self_forcing.cache={layout}"], baseline=True)
            for layout in ("dynamic", "static")
        }
        fig.update(latent_frames=frames, run="baseline (TokenTrim off, FlowMo off), eager")
        s = self._measure(fig, configs, frames, warmup_runs=1)
        fig.update(
            dynamic_fps=s["dynamic"]["dit_fps"],
            static_fps=s["static"]["dit_fps"],
            static_over_dynamic=s["static"]["wall_s_median"] / s["dynamic"]["wall_s_median"],
        )

    def _vae(self):
        """The Wan2.1 VAE architecture with random weights (GPU), or the tiny preset's VAE (dry run)."""
        from tokentrim.wan.vae import build_random_vae, build_tiny_vae

        if self.plan.preset == "tiny":
            return build_tiny_vae(0, device=self.device, dtype=self.plan.dtype)
        return build_random_vae(0, device=self.device, dtype=self.plan.dtype)

    def attention_flash(self, fig: dict) -> None:
        from tokentrim.wan.attention import flash_available

        if self.device.type != "cuda" or not flash_available():
            raise Skip("flash-attn is not importable here (or no CUDA): only SDPA was measured")
        backend = self._need_model()
        backend.model.attention_backend = "flash"
        try:
            for pipeline in PIPELINES:
                row = fig[pipeline] = {}
                s = self._measure(
                    row,
                    {"baseline": self.run_config(pipeline, baseline=True)},
                    self.plan.speed_frames,
                    warmup_runs=1,
                    warmup_frames=self.plan.warmup_frames[pipeline],
                )
                sdpa = self.report.steps[f"speed_{pipeline}"]["figures"].get("baseline_fps")
                row.update(baseline_fps=s["baseline"]["dit_fps"], sdpa_baseline_fps=sdpa)
        finally:
            backend.model.attention_backend = "sdpa"

    def compile(self, fig: dict) -> None:
        """`tokentrim bench --compile --cache static` for Self Forcing's baseline in its own process: the same runs
        eager, then compiled (no decoding)."""
        frames, out = self.plan.short_frames, self.out_dir / "compile_bench.json"
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # room for the other process
        model = ["--random-weights"] if self.plan.preset is None else ["--preset", self.plan.preset]
        cmd = [sys.executable, "-m", "tokentrim.app.cli", "bench", *model, "--pipeline", "self_forcing",
               "--device", self.plan.device, "--dtype", "bf16" if self.plan.dtype == torch.bfloat16 else "fp32",
               "--latent-frames", str(frames), "--no-tokentrim", "--flowmo", "off", "--no-decode", "--compile",
               "--cache", "static", "--compile-backend", self.plan.compile_backend, "--repeats", "1",
               "--json", str(out)]  # fmt: skip
        fig.update(
            command=" ".join(["tokentrim", *cmd[3:]]),
            backend=self.plan.compile_backend,
            cache="static",
            latent_frames=frames,
        )
        left = self.report.steps["compile"]["budget_s"] - 5  # end it before this step's own budget does
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            raise StepTimeout(f"tokentrim bench --compile ran past {left:.0f} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"tokentrim bench --compile exited {proc.returncode}: {proc.stderr[-800:]}")
        report = json.loads(out.read_text())
        fig.update(
            eager_wall_s=report["eager"]["run"]["wall_s_median"],
            compiled_wall_s=report["run"]["wall_s_median"],
            compile_and_warmup_s=report["warmup_wall_s"],
            compile_s=report["compile_s"],
            compiled_graphs=report["compiled_graphs"],
            speedup=report["compile_speedup"],
        )

    def flowmo(self, fig: dict) -> None:
        frames = self.plan.short_frames
        fig.update(latent_frames=frames, tokentrim="off")
        for pipeline in PIPELINES:
            row = fig[pipeline] = {}
            configs = {
                mode: self.run_config(pipeline, [f"flowmo.mode={mode}", "tokentrim.enabled=false"])
                for mode in ("off", "first_block", "every_block")
            }
            s = self._measure(row, configs, frames, warmup_runs=0)
            off = s["off"]["wall_s_median"]
            row.update(
                first_block_ratio=s["first_block"]["wall_s_median"] / off,
                every_block_ratio=s["every_block"]["wall_s_median"] / off,
            )

    # Order -----------------------------------------------------------------------------------------------------
    def steps(self) -> list[tuple[str, Callable[[dict], None]]]:
        return [
            ("environment", self.environment),
            ("correctness", self.correctness),
            ("host_syncs", self.host_syncs),
            ("model", self.model),
            *[(f"speed_{p}", lambda fig, p=p: self.speed(fig, p)) for p in PIPELINES],
            ("memory", self.memory),
            ("static_cache", self.static_cache),
            ("attention_flash", self.attention_flash),
            ("compile", self.compile),
            ("flowmo", self.flowmo),
            ("memory_int8", self.memory_int8),
        ]

    def run(self) -> bool:
        """Run the steps in order, each guarded; True if none failed, timed out or was stopped."""
        for name, step in self.steps():
            self.report.run(name, step, self.plan.budgets[name])
        self.report.close()
        return all(s["status"] in ("ok", "skipped") for s in self.report.steps.values())


def check_request(dry_run: bool, out_dir: Path) -> None:
    """Raise a UserError unless the check can run here and write `out_dir`; nothing is created."""
    if not dry_run and not torch.cuda.is_available():
        raise UserError(
            f"no CUDA device here (torch {torch.__version__}); run the check on a GPU machine, or "
            "add --dry-run for the same steps on the CPU"
        )
    check_output(out_dir, "OUTDIR", folder=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "out_dir", type=Path, metavar="OUTDIR", help="where gpu_check.json and .md are written"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="the same steps on the CPU, tiny preset (~1 min)"
    )
    args = parser.parse_args(argv)
    # torch's notice about torchao's enums when the int8 step imports it (the CLI hides it the same way)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        check_request(args.dry_run, args.out_dir)
    except UserError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    out_dir = args.out_dir.resolve()
    ok = Check(DRY if args.dry_run else GPU, out_dir).run()
    print(f"[gpu_check] wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
