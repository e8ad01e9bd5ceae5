"""Memory accounting: the peak of live tensors during a run, on any device, and the exact size of model parts.

`PeakLiveBytes` follows every tensor the code inside it creates, by its storage (views and in-place results are
the storage they alias, counted once), and records the most bytes alive at once. On the meta device a tensor has a
size and no memory, so a full-size run can be measured on any machine: what a GPU's allocator would have to hold
at once, before its rounding and caching (CUDA's `max_memory_allocated` rounds each block up to 512 bytes).
On the meta device SDPA has no fused kernel and would materialise every attention matrix; `fused_attention`
stands in for the kernels a GPU (flash, memory-efficient) or a CPU runs, which allocate only their output and one
log-sum-exp per query and head. docs/benchmarks.md#memory-model builds its memory model from these figures and checks them against a
measured peak RSS on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 2**30


class PeakLiveBytes(TorchDispatchMode):
    """Context manager: `peak` = the most bytes of tensors created inside it alive at the same time, `current` =
    those still alive. Tensors that existed before (weights, say) are not counted, nor are results that alias an
    operation's inputs (views, in-place updates)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}  # storage id -> (weak ref, bytes)
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        self._sweep()
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:
                continue
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers in their dtypes (meta modules included)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class _FusedAttention(torch.autograd.Function):
    """The memory of a fused attention kernel, without values: the output `[B, Lq, H, D]` and an fp32
    log-sum-exp `[B, H, Lq]` kept for the backward, which returns the gradients of q, k and v."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(
            q, k, v, out, q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
        )
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Inside: the DiT's attention on meta tensors allocates what a fused kernel does (`_FusedAttention`);
    on other devices it runs as usual."""
    from tokentrim.wan import model

    original = model.attention

    def attention(q, k, v, backend="sdpa", attn_mask=None):
        return _FusedAttention.apply(q, k, v) if q.is_meta else original(q, k, v, backend, attn_mask)

    model.attention = attention
    try:
        yield
    finally:
        model.attention = original
