"""Attention backends: torch SDPA (default, CPU and GPU) and flash-attn 2/3 when installed and asked for.

No padding or key masks are used at inference (docs/spec.md#attention): every query attends to every key it is
given, so a token removed from the KV cache is simply absent from the key set.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from tokentrim.errors import UserError

logger = logging.getLogger(__name__)
BACKENDS = ("sdpa", "flash", "auto")


@functools.cache
def _flash_func():
    """The reference's choice (docs/spec.md#attention): flash-attn 3 (`flash_attn_interface`) when GPU 0's name
    says H100 / Hopper, else flash-attn 2, else None. Returns a varlen function `(q, k, v, cu_q, cu_k, max_q,
    max_k)`."""
    try:
        import flash_attn_interface  # FA3

        name = torch.cuda.get_device_name(0).lower() if torch.cuda.is_available() else ""
        if "h100" in name or "hopper" in name:  # the reference's rule: an H200 runs flash-attn 2
            return lambda q, k, v, cu_q, cu_k, mq, mk: _first(
                flash_attn_interface.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk)
            )
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_varlen_func  # FA2

        return lambda q, k, v, cu_q, cu_k, mq, mk: flash_attn_varlen_func(
            q, k, v, cu_q, cu_k, mq, mk, dropout_p=0.0, causal=False, window_size=(-1, -1)
        )
    except ImportError:
        return None


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reference's `flash_attention` call: batch flattened to varlen form with full lengths, non-half inputs
    cast to bf16, output cast back to q's dtype. q `[B, Lq, H, D]`, k/v `[B, Lk, H, D]` -> `[B, Lq, H, D]`."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)  # on device: no host sync
    cu_k = torch.arange(0, (b + 1) * lk, lk, dtype=torch.int32, device=q.device)
    out = _flash_func()(
        q.reshape(b * lq, h, d).to(half),
        k.reshape(b * lk, h, d).to(half),
        v.reshape(b * lk, h, d).to(half),
        cu_q,
        cu_k,
        lq,
        lk,
    )
    return out.reshape(b, lq, h, d).to(q.dtype)


def flash_available() -> bool:
    return _flash_func() is not None


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UserError(f"attention backend {name!r} is unknown; choose one of {BACKENDS}")
    if name == "flash" and not flash_available():
        raise UserError(
            "attention backend 'flash' needs flash-attn: pip install 'tokentrim[flash]' (CUDA only)"
        )
    return name


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str = "sdpa",
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with scale 1/sqrt(D).

    q `[B, Lq, H, D]`, k and v `[B, Lk, H, D]`, optional boolean `attn_mask [Lq, Lk]` (True = attend).
    Returns `[B, Lq, H, D]` in q's dtype.
    """
    use_flash = backend in ("flash", "auto") and attn_mask is None and q.is_cuda and flash_available()
    if use_flash:
        return flash_varlen(q, k, v)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
    )
    return out.transpose(1, 2)
