"""`torch.compile` of the DiT, one transformer block at a time, and the count of what it compiled.

Each `WanBlock`'s forward is compiled with the cache's per-call view traced inside it (`LayerKV.attend`), without
graph breaks (`fullgraph=True`). The blocks are instances of one class with the same code, so they share their
graphs: the graph count is per call kind, not per layer, and compiling costs one block's time rather than the whole
model's. Patch and time embeddings, RoPE tables and the head stay eager (a few small ops per call).

How many graphs a video compiles depends on the KV cache's layout:
- static (`tokentrim.wan.static_cache`): every call of a kind has the same shapes, so the blocks are compiled
  with `dynamic=False` and a whole rollout compiles one graph per call kind (frames per call, writing or not,
  reading raw keys or not). A new kind (say, a Rolling Forcing head window of 6 frames) compiles once.
- dynamic (`tokentrim.wan.kv_cache`): the key length changes as the cache fills, rolls and loses pruned tokens.
  The first call of a kind compiles with its shapes fixed; the first change recompiles it with those sizes
  symbolic (dynamo's automatic dynamic shapes), and that graph serves the rest. Not `dynamic=True`: in torch
  2.13 it compiled graphs with the cache write's row specialised to 0 that inductor's FX graph cache then served
  for other rows (wrong keys from the second block on; docs/benchmarks.md#compiled-dit).

`COMPILE_LIMIT` bounds the recompilations of a block (dynamo's `recompile_limit`); `compile_counts` reads dynamo's
counters so that a benchmark can report the graphs a run compiled.
"""

from __future__ import annotations

import warnings

import torch

from tokentrim.errors import UserError
from tokentrim.wan.model import CausalWanModel

COMPILE_LIMIT = 32  # graphs per block before dynamo falls back to eager; a rollout compiles far fewer
# inductor: the fast one; the others trace only (checks)
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def check_compile(backend: str, device) -> None:
    """Raise a UserError, before any weights load, if the DiT cannot be compiled with `backend` on `device`: an
    unknown backend, or inductor on the CPU without the C++ compiler it generates code for."""
    if backend not in COMPILE_BACKENDS:
        raise UserError(
            f"`compile_backend` must be one of {COMPILE_BACKENDS}, got {backend!r}", field="compile"
        )
    if backend == "inductor" and torch.device(device).type == "cpu":
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()  # what inductor will run: config.cpp.cxx, from $CXX or g++
        except exc.InvalidCxxCompiler:
            raise UserError("compiling on the CPU needs a C++ compiler for inductor: install g++ "
                            "(apt-get install -y g++) or set CXX, or run without --compile", field="compile") from None  # fmt: skip


def compile_dit(model: CausalWanModel, cache_layout: str, backend: str = "inductor") -> CausalWanModel:
    """Compile every transformer block of `model` in place for calls on a `cache_layout` ("static" | "dynamic")
    KV cache. Returns the model. The first call of each kind compiles; later calls reuse the graph."""
    check_compile(backend, model.patch_embedding.weight.device)
    # RoPE rotates keys as complex numbers, which inductor leaves to eager kernels; it warns once per process.
    warnings.filterwarnings("ignore", "Torchinductor does not support code generation for complex operators")
    dynamic = False if cache_layout == "static" else None
    for block in model.blocks:
        block.compile(fullgraph=True, dynamic=dynamic, backend=backend, recompile_limit=COMPILE_LIMIT)
    return model


def compile_counts() -> dict[str, float]:
    """Dynamo's process-wide counts so far: `graphs` compiled (one per call kind and recompilation) and
    `compile_s` spent compiling. Take the difference of two readings for one run."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    return {
        "graphs": counters["stats"]["unique_graphs"],
        "compile_s": sum(compilation_time_metrics.get("_compile.compile_inner", [])),
    }


def counts_since(before: dict[str, float]) -> dict[str, float]:
    """`compile_counts()` minus an earlier reading."""
    now = compile_counts()
    return {key: now[key] - before[key] for key in now}
