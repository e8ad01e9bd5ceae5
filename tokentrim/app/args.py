"""Command-line arguments: the parser class (one-line errors, defaults in every help line), value types that check
ranges, and the options shared by the commands that run a model (generate, bench, reproduce, ...)."""

from __future__ import annotations

import argparse
import math
import sys

from tokentrim.app.backends import PRESETS
from tokentrim.app.run_config import RunConfig, default_config_path, load_run_config
from tokentrim.pipelines import pipeline_names
from tokentrim.wan.attention import BACKENDS

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer; the reference's seeds are >= 0


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to options that have a default worth stating."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        if isinstance(default, list | tuple):  # as it is typed: `--patch 2 2`
            return f"{text} (default: {' '.join(map(str, default))})".replace("%", "%%")
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (what to change, then where the help is), exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see: {self.prog} --help)\n")
        sys.exit(2)


def _number(kind, name: str, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a `kind` (int or float) in [low, high] (open where asked), finite."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text[:40]!r}") from None  # fmt: skip
        bad = (kind is float and not math.isfinite(value)) or (low is not None and (value < low or low_open and
               value == low)) or (high is not None and (value > high or high_open and value == high))  # fmt: skip
        if bad:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            raise argparse.ArgumentTypeError(
                f"{name} must be {' and '.join(x for x in (lo, hi) if x)}, got {text}"
            )
        return value

    parse.__name__ = name
    return parse


SEED = _number(int, "the seed", 0, MAX_SEED)
POSITIVE_INT = _number(int, "the value", 1)
NONNEG_INT = _number(int, "the value", 0)
FRACTION = _number(float, "p", 0.0, 1.0, low_open=True, high_open=True)
NONNEG_FLOAT = _number(float, "the value", 0.0)
POSITIVE_FLOAT = _number(float, "the value", 0.0, low_open=True)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="built-in model: " + "; ".join(f"{k}: {v.doc}" for k, v in PRESETS.items()))  # fmt: skip
    g.add_argument(
        "--model-dir", help="Wan2.1-T2V-1.3B folder (original or -Diffusers layout); with --checkpoint"
    )
    g.add_argument("--checkpoint", help="self_forcing_dmd.pt / rolling_forcing_dmd.pt (or a DiT .safetensors / "
                   "Diffusers folder); with --model-dir")  # fmt: skip
    ema = g.add_mutually_exclusive_group()
    ema.add_argument("--ema", action="store_true",
                     help="read the checkpoint's 'generator_ema' entry (default: the entry its release says, see "
                     "docs/models.md; unknown files: 'generator_ema' if present)")  # fmt: skip
    ema.add_argument("--no-ema", action="store_true", help="read the checkpoint's 'generator' entry")
    g.add_argument("--lora", help="a PEFT LoRA file (LongLive's lora.pt) merged into the weights at load; or merge "
                   "once with `tokentrim merge-lora`")  # fmt: skip
    g.add_argument(
        "--lora-alpha", type=POSITIVE_FLOAT, help="LoRA alpha (default: the rank r, a scale of 1 as LongLive)"
    )
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available, else cpu)")
    g.add_argument("--dtype", help="bf16 | fp32 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--attention", default="sdpa", choices=list(BACKENDS),
                   help="attention kernel: torch SDPA, flash-attn (needs tokentrim[flash]), or auto")  # fmt: skip


def add_run_args(p: argparse.ArgumentParser, frames: int = 21) -> None:
    names = pipeline_names()
    p.add_argument("--pipeline", default=names[0], choices=names, help="sampling loop")
    p.add_argument(
        "--config", help="run config YAML (default: configs/<pipeline>.yaml; configs/toy/ for the toy)"
    )
    p.add_argument("--latent-frames", type=POSITIVE_INT, default=frames,
                   help="latent frames, a multiple of 3 (video frames = 1 + 4 (F - 1); Rolling Forcing: >= 15)")  # fmt: skip
    p.add_argument("--seed", type=SEED, default=0, help=f"random seed, 0 .. {MAX_SEED}")
    g = p.add_argument_group("TokenTrim (override the config file)")
    g.add_argument("--no-tokentrim", action="store_true", help="the baseline: no pruning (and FlowMo off)")
    g.add_argument("--p", type=FRACTION, help="pruning fraction, 0 < p < 1 (config default 0.1)")
    g.add_argument(
        "--lam", type=NONNEG_FLOAT, help="threshold mean + lam * std, lam >= 0 (config default 2.0)"
    )
    g.add_argument(
        "--warmup", type=NONNEG_INT, help="blocks that only feed the statistics, >= 0 (config default 2)"
    )
    g.add_argument("--max-regen", type=NONNEG_INT, help="regenerations per block, >= 0 (config default 1)")
    g.add_argument("--flowmo", choices=["off", "first_block", "every_block"],
                   help="FlowMo guidance (config default first_block)")  # fmt: skip
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides KEY=VALUE, e.g. tokentrim.p=0.05 self_forcing.sink_frames=0",
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


def ema_choice(args: argparse.Namespace) -> bool | None:
    """--ema: True, --no-ema: False, neither: None (the checkpoint's documented entry)."""
    return True if args.ema else False if args.no_ema else None
