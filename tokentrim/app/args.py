"""Command-line arguments: the parser class (one-line errors, defaults in every help line), value types that check
ranges, and the options shared by the commands that run a model (generate, bench, reproduce, ...)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from tokentrim.app.backends import PRESETS
from tokentrim.app.run_config import BASELINE, RUN_DEFAULTS, RunConfig, default_config_path, load_run_config
from tokentrim.errors import UserError
from tokentrim.pipelines import REGISTRY, Request, get_pipeline, pipeline_names
from tokentrim.wan.attention import BACKENDS
from tokentrim_core.flowmo import FlowMoConfig
from tokentrim_core.options import Option, options
from tokentrim_core.trim import TokenTrimConfig


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option that takes a value, "(default: none)" when it has none, unless its
    help already says; flags (no value) are off unless given. Lines never break inside a hyphenated word, so a
    pointer like `docs/causal_forcing.md#2-image-and-video-start` stays whole."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or action.nargs == 0
            or not action.option_strings
            or default is argparse.SUPPRESS
            or action.required
        ):
            return text
        if default is None:
            return f"{text} (default: none)"
        if isinstance(default, list | tuple):  # as it is typed: `--patch 2 2`
            return f"{text} (default: {' '.join(map(str, default))})".replace("%", "%%")
        return f"{text} (default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (what to change, then where the help is), exit status 2.
    Options are spelled out: an abbreviation would be taken for whichever option it begins (`--lora` for
    `--lora-alpha`), and a typo then gets the wrong complaint."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see: {self.prog} --help)\n")
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        """argparse's, with an unknown option reported by the (sub)command it was given to (its help lists the
        options there)."""
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = self
            while parser._subparsers is not None:  # down the subcommands `parsed` went through
                chosen = [
                    a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)
                ]
                name = getattr(parsed, chosen[0].dest, None) if chosen else None
                if name not in (chosen[0].choices if chosen else {}):
                    break
                parser = chosen[0].choices[name]
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed


def _number(kind, name: str, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a `kind` (int or float) in [low, high] (open where asked), finite."""
    return option_type(Option("", low, high, low_open, high_open), name, kind)


def option_type(opt: Option, name: str, kind: type):
    """An argparse type from a declared option: the value parsed and checked as `Option.parse` does."""

    def parse(text: str):
        try:
            return opt.parse(name, text, kind)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name
    return parse


SEED = option_type(options(Request)["seed"][0], "the seed", int)  # a seed or a toy scene (their range)
POSITIVE_INT = _number(int, "the value", 1)
NONNEG_INT = _number(int, "the value", 0)
NONNEG_FLOAT = _number(float, "the value", 0.0)
POSITIVE_FLOAT = _number(float, "the value", 0.0, low_open=True)


def add_option(group, cls: type, name: str, dest: str, default=None, help_default=None) -> None:
    """The command-line option declared on field `name` of dataclass `cls` (`tokentrim_core.options`): its flag,
    type and range, help with the range and the default (`help_default`, the run config's, when `default` is
    None: the flag then only overrides the config)."""
    opt, kind, _ = options(cls)[name]
    if default is None:  # the flag overrides the run config: say the config's value
        suffix = "" if help_default is None else f" (config default {help_default})"
    else:  # the formatter appends a value-taking option's default; a --x/--no-x flag says its own
        suffix = f" (default: {default})" if kind is bool else ""
    text = f"{opt.help}; {opt.expected(kind)}{suffix}"
    if kind is bool:
        group.add_argument(
            opt.flag, dest=dest, default=default, action=argparse.BooleanOptionalAction, help=text
        )
    elif opt.choices is not None:
        group.add_argument(opt.flag, dest=dest, default=default, choices=list(opt.choices), help=text)
    else:
        group.add_argument(
            opt.flag,
            dest=dest,
            default=default,
            type=option_type(opt, name, kind),
            help=text,
        )


def run_options() -> list[tuple[str, type, str]]:
    """(section, dataclass, field) of every option with a flag in the run config: TokenTrim's, FlowMo's, and the
    registered samplers' (section "sampler": set on the chosen pipeline's section; one flag per field name)."""
    found, names = [], set()
    sections = [("tokentrim", TokenTrimConfig), ("flowmo", FlowMoConfig)]
    sections += [("sampler", entry.config) for entry in REGISTRY.values()]
    for section, cls in sections:
        for name, (opt, _, _) in options(cls).items():
            if opt.flag is not None and (section, name) not in names:
                names.add((section, name))
                found.append((section, cls, name))
    return found


def flag_names() -> dict[str, str]:
    """Field names as library messages write them (`tokentrim.p`, `latent_frames`) -> their command-line flags."""
    names = {name: opt.flag for name, (opt, _, _) in options(Request).items() if opt.flag}
    return names | {f"{section}.{name}": options(cls)[name][0].flag for section, cls, name in run_options()}


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="built-in model: " + "; ".join(f"{k}: {v.doc}" for k, v in PRESETS.items()),
    )
    g.add_argument(
        "--model-dir", help="Wan2.1-T2V-1.3B folder (original or -Diffusers layout); with --checkpoint"
    )
    g.add_argument(
        "--checkpoint",
        help="self_forcing_dmd.pt / rolling_forcing_dmd.pt (or a DiT .safetensors / "
        "Diffusers folder); with --model-dir",
    )
    ema = g.add_mutually_exclusive_group()
    ema.add_argument(
        "--ema",
        action="store_true",
        help="read the checkpoint's 'generator_ema' entry (default: the entry its release says, see "
        "docs/models.md; unknown files: 'generator_ema' if present)",
    )
    ema.add_argument("--no-ema", action="store_true", help="read the checkpoint's 'generator' entry")
    g.add_argument(
        "--lora",
        help="a PEFT LoRA file (LongLive's lora.pt) merged into the weights at load; or merge "
        "once with `tokentrim merge-lora`",
    )
    g.add_argument(
        "--lora-alpha", type=POSITIVE_FLOAT, help="LoRA alpha (default: the rank r, a scale of 1 as LongLive)"
    )
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available, else cpu)")
    g.add_argument("--dtype", help="bf16 | fp32 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument(
        "--attention",
        default="sdpa",
        choices=list(BACKENDS),
        help="attention kernel: torch SDPA, flash-attn (needs tokentrim[flash]), or auto",
    )


def add_run_args(p: argparse.ArgumentParser, frames: int = 21) -> None:
    """What every command that runs a model takes: the pipeline, its run config, the request's length and seed,
    and every run option with a flag (declared on its dataclass field; they override the config file)."""
    names = pipeline_names()
    p.add_argument("--pipeline", default=names[0], choices=names, help="sampling loop")
    p.add_argument(
        "--config", help="run config YAML (default: configs/<pipeline>.yaml; configs/toy/ for the toy)"
    )
    add_option(p, Request, "latent_frames", "latent_frames", default=frames)
    add_option(p, Request, "seed", "seed", default=0)
    g = p.add_argument_group("TokenTrim, FlowMo and the sampler (override the config file)")
    g.add_argument("--no-tokentrim", action="store_true", help="the baseline: no pruning (and FlowMo off)")
    for section, cls, name in run_options():
        default = getattr(RUN_DEFAULTS.get(section, cls()), name)
        add_option(g, cls, name, f"{section}.{name}", help_default=default)
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides KEY=VALUE, e.g. tokentrim.p=0.05 self_forcing.sink_frames=0",
    )


def run_config_from_args(args: argparse.Namespace, baseline: bool = False) -> RunConfig:
    """The run config of the chosen pipeline: its YAML, `key=value` overrides, then the flags (typed values).
    `baseline`: TokenTrim and FlowMo off whatever the flags say (bench --compare)."""
    updates: dict = {"pipeline": args.pipeline, "tokentrim": {}, "flowmo": {}, args.pipeline: {}}
    sampler = options(get_pipeline(args.pipeline).config)
    for section, cls, name in run_options():
        value = getattr(args, f"{section}.{name}")
        if value is not None and section == "sampler" and name not in sampler:
            raise UserError(f"{options(cls)[name][0].flag} is not a setting of {args.pipeline}")
        if value is not None:
            updates[args.pipeline if section == "sampler" else section][name] = value
    if args.no_tokentrim or baseline:
        updates["tokentrim"] |= BASELINE["tokentrim"]
        if baseline or "mode" not in updates["flowmo"]:
            updates["flowmo"] |= BASELINE["flowmo"]
    path = args.config or default_config_path(args.pipeline, args.preset)
    return load_run_config(path, args.overrides, updates)


def runtime(args: argparse.Namespace) -> tuple:
    """(device, dtype, attention kernel) from --device, --dtype and --attention, checked before anything loads."""
    from tokentrim.app.backends import pick_device, pick_dtype
    from tokentrim.wan.attention import check_backend

    device = pick_device(args.device)
    return device, pick_dtype(args.dtype, device), check_backend(args.attention)


def load_model(args: argparse.Namespace, device, dtype, attention: str, **kwargs):
    """The backend the model options name (--preset, or --model-dir and --checkpoint, --ema, --lora), with the
    attention kernel set; `kwargs` go to `load_backend` (decoder=, text_encoder=, random_weights=)."""
    from tokentrim.app.backends import load_backend

    backend = load_backend(
        preset=args.preset,
        model_dir=args.model_dir,
        checkpoint=args.checkpoint,
        device=device,
        dtype=dtype,
        use_ema=ema_choice(args),
        lora=args.lora,
        lora_alpha=args.lora_alpha,
        **kwargs,
    )
    backend.model.attention_backend = attention
    return backend


def ema_choice(args: argparse.Namespace) -> bool | None:
    """--ema: True, --no-ema: False, neither: None (the checkpoint's documented entry)."""
    return True if args.ema else False if args.no_ema else None
