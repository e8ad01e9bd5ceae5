"""`tokentrim merge-lora BASE LORA -o OUT.safetensors`: merge a PEFT LoRA into a DiT checkpoint once, so that
later runs load plain weights (`--checkpoint OUT.safetensors`) instead of merging at every start (`--lora`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokentrim.app.args import POSITIVE_FLOAT, ema_choice
from tokentrim.errors import UserError


def cmd_merge_lora(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from tokentrim.files import atomic_path, check_output
    from tokentrim.wan.loading import check_checkpoint_file, read_dit_state_dict, read_lora
    from tokentrim.wan.lora import TARGETS, dims_of, merge_lora

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise UserError(f"-o must name a .safetensors file, got {out}")
    for path, what in ((args.base, "BASE"), (args.lora, "LORA")):
        if not Path(path).is_file():
            raise UserError(f"{what} {path} not found")
    check_checkpoint_file(args.base)
    check_output(out, "-o")
    base = read_dit_state_dict(args.base, use_ema=ema_choice(args))
    merged = merge_lora(base, read_lora(args.lora), args.lora_alpha)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, None: None}[args.dtype]
    tensors = {
        k: (v if dtype is None or not v.is_floating_point() else v.to(dtype)).contiguous()
        for k, v in merged.items()
    }
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"merged_lora": Path(args.lora).name})
    layers = dims_of(base)[2] * len(TARGETS)
    print(f"wrote {out}  [{len(tensors)} tensors, {layers} layers merged]; use it as --checkpoint {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge-lora",
        help="merge a LoRA (LongLive's lora.pt) into a DiT checkpoint, written as .safetensors",
        description="Merge a PEFT LoRA into a DiT checkpoint: W + (alpha / r) B A for every adapted layer, in "
        "float32, rounded once. The result loads with --checkpoint (docs/longlive.md).",
    )
    p.add_argument("base", help="the base checkpoint (LongLive: models/longlive_base.pt)")
    p.add_argument("lora", help="the LoRA file (LongLive: models/lora.pt)")
    p.add_argument("-o", "--output", required=True, help="merged weights, .safetensors")
    p.add_argument("--lora-alpha", type=POSITIVE_FLOAT, help="LoRA alpha (default: the rank r, a scale of 1)")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        help="store the weights in this precision (default: "
        "the base checkpoint's, fp32 for the released files; runs cast to --dtype when loading)",
    )
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--ema", action="store_true", help="read the base's 'generator_ema' entry")
    ema.add_argument("--no-ema", action="store_true", help="read the base's 'generator' entry")
    p.set_defaults(func=cmd_merge_lora)
