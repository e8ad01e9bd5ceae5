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
from dataclasses import dataclass

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


# The memory model of docs/benchmarks.md#memory-model: exact sizes from shapes, measured peaks of live tensors, and
# the device peak of one video as the largest of its three phases.

LENGTHS = {"5 s": 21, "30 s": 120, "5 min": 1200}  # latent frames; 1 + 4 (F - 1) video frames at 16 fps


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def kv_cache_bytes(config, frames: int, dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> int:
    """Self-attention keys and values of `frames` latent frames in every layer."""
    return 2 * batch * config.num_layers * frames * config.tokens_per_frame * config.dim * itemsize(dtype)


def context_bytes(config, dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> int:
    """Cross-attention keys and values of one prompt (`text_len` rows) in every layer, computed once per video."""
    return 2 * batch * config.num_layers * config.text_len * config.dim * itemsize(dtype)


def latent_bytes(config, frames: int, dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> int:
    """`frames` latent frames `[C, H, W]`: the initial noise drawn on the device up front."""
    return batch * frames * config.in_dim * config.latent_height * config.latent_width * itemsize(dtype)


def video_bytes(config, latent_frames: int, dtype: torch.dtype = torch.uint8, spatial: int = 8) -> int:
    """The decoded video of `latent_frames`: 1 + 4 (F - 1) RGB frames at `spatial` times the latent grid."""
    frames = 1 + 4 * (latent_frames - 1)
    pixels = config.latent_height * spatial * config.latent_width * spatial
    return frames * 3 * pixels * itemsize(dtype)


@dataclass(frozen=True)
class VideoMemory:
    """What one video of one pipeline holds on the device, in bytes.

    Exact sizes: `dit`, `vae`, `text_encoder` (weights) and `latent_frame` (one frame of initial noise). Measured
    peaks of live tensors (`PeakLiveBytes`): `text_encoder_forward` (one prompt's encoding), `rollout` (a rollout
    past the cache's capacity: KV cache, text context, activations, `growing` latent buffers of
    `measured_frames` frames each, the initial noise excluded) and `decode` (the VAE's decoder: one streamed
    block, or a whole video at once). `growing`: the latent buffers of the video's length the loop keeps on the
    device (1 for the initial noise; Rolling Forcing adds its buffer of re-noised blocks)."""

    dit: int
    vae: int
    text_encoder: int
    text_encoder_forward: int
    rollout: int
    decode: int
    latent_frame: int
    measured_frames: int
    growing: int = 1

    def phases(
        self, frames: int, *, text_encoder_on_device: bool = False, encode: bool = True
    ) -> dict[str, int]:
        """Device bytes of the phases of a video of `frames` latent frames, as `tokentrim generate` runs it: the
        backend (DiT, VAE) is loaded, the prompt encoded (`encode`; not when its embedding is read from the disk
        cache), the video generated, then decoded. The text encoder leaves the device after encoding (`--offload
        cpu|free`) unless `text_encoder_on_device`."""
        resident = self.dit + self.vae + (self.text_encoder if text_encoder_on_device else 0)
        rollout = self.rollout + self.latent_frame * (
            self.growing * frames - (self.growing - 1) * self.measured_frames
        )
        phases = {"generate": resident + rollout, "decode": resident + self.decode}
        if encode:
            phases = {"encode": self.dit + self.vae + self.text_encoder + self.text_encoder_forward, **phases}
        return phases

    def peak(self, frames: int, *, text_encoder_on_device: bool = False, encode: bool = True) -> int:
        return max(self.phases(frames, text_encoder_on_device=text_encoder_on_device, encode=encode).values())
