"""Command-line arguments shared by the commands that run a model (generate, bench, ...)."""

from __future__ import annotations

import argparse

from tokentrim.app.backends import PRESETS
from tokentrim.app.run_config import RunConfig, default_config_path, load_run_config
from tokentrim.pipelines import pipeline_names
from tokentrim.wan.attention import BACKENDS


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="built-in model: " + "; ".join(f"{k}: {v.doc}" for k, v in PRESETS.items()))  # fmt: skip
    g.add_argument("--model-dir", help="Wan2.1-T2V-1.3B folder (original or -Diffusers layout)")
    g.add_argument("--checkpoint", help="self_forcing_dmd.pt / rolling_forcing_dmd.pt (or a DiT safetensors)")
    g.add_argument(
        "--no-ema", action="store_true", help="load the checkpoint's 'generator' instead of 'generator_ema'"
    )
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available, else cpu)")
    g.add_argument("--dtype", help="bf16 | fp32 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument(
        "--attention", default="sdpa", choices=list(BACKENDS), help="attention backend (default sdpa)"
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    names = pipeline_names()
    p.add_argument("--pipeline", default=names[0], choices=names, help=f"sampling loop (default {names[0]})")
    p.add_argument(
        "--config", help="run config YAML (default: configs/<pipeline>.yaml; configs/toy/ for the toy)"
    )
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


def run_config_from_args(args: argparse.Namespace, baseline: bool = False) -> RunConfig:
    """The run config of the chosen pipeline: its YAML, `key=value` overrides, then the flags (typed values).
    `baseline`: TokenTrim and FlowMo off whatever the flags say (bench --compare)."""
    tokentrim = {k: v for k, v in {"p": args.p, "lam": args.lam, "warmup": args.warmup,
                                   "max_regen": args.max_regen}.items() if v is not None}  # fmt: skip
    flowmo = {} if args.flowmo is None else {"mode": args.flowmo}
    if args.no_tokentrim or baseline:
        tokentrim["enabled"] = False
        if args.flowmo is None or baseline:
            flowmo["mode"] = "off"
    updates = {"pipeline": args.pipeline, "tokentrim": tokentrim, "flowmo": flowmo}
    return load_run_config(
        args.config or default_config_path(args.pipeline, args.preset), args.overrides, updates
    )
