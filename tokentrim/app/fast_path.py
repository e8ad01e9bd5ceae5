"""How the DiT runs: eager or compiled, and how its linear weights are stored.

Declared once (`tokentrim_core.options`): `generate` and `bench` take them as `--compile` and `--quantize`; the KV
cache's layout, which the compiled graphs depend on, is a sampler setting (`--cache`, `SamplerConfig.cache`).
`FastPath.check` refuses what cannot run here in one line before any weights load; `apply` quantises and compiles
a loaded DiT. What each does and costs: docs/benchmarks.md (compiled DiT, weight quantisation, static-shape KV
cache).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import torch

from tokentrim.wan.compile import check_compile, compile_dit
from tokentrim.wan.quantize import QUANT_MODES, check_quantize, quantize_dit
from tokentrim_core.options import check_options, option, options


@dataclass(frozen=True)
class FastPath:
    compile: bool = option(
        False, "torch.compile the DiT's blocks (inductor; on the CPU it needs g++)", flag="--compile"
    )
    quantize: str = option(
        "none",
        "the DiT blocks' linear weights: int8 (CPU or GPU) or fp8 (CUDA, compute capability >= 8.9); "
        "needs tokentrim[quant]",
        choices=QUANT_MODES,
        flag="--quantize",
    )

    def __post_init__(self) -> None:
        check_options(self)

    def check(self, device: torch.device, compile_backend: str = "inductor") -> None:
        """Raise a UserError if this cannot run on `device`: fp8 without a CUDA GPU of compute capability 8.9,
        quantisation without torchao, inductor on the CPU without a C++ compiler."""
        check_quantize(self.quantize, device)
        if self.compile:
            check_compile(compile_backend, device)

    def apply(self, model, cache: str, compile_backend: str = "inductor"):
        """Quantise, then compile `model` in place for calls on a `cache` ("dynamic" | "static") KV cache (what
        `check` allowed). Returns it."""
        quantize_dit(model, self.quantize)
        if self.compile:
            compile_dit(model, cache, compile_backend)
        return model

    def settings(self) -> dict:
        """What differs from the defaults, for the record of what produced a video."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(FastPath(), k)}


def add_fast_path_args(p: argparse.ArgumentParser) -> None:
    from tokentrim.app.args import add_option

    g = p.add_argument_group("how the DiT runs (docs/benchmarks.md)")
    for name, (_, _, default) in options(FastPath).items():
        add_option(g, FastPath, name, f"fast_path.{name}", default=default)


def fast_path_from_args(args: argparse.Namespace) -> FastPath:
    return FastPath(**{name: getattr(args, f"fast_path.{name}") for name in options(FastPath)})
