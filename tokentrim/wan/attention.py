"""Attention backends: torch SDPA (default, CPU and GPU) and flash-attn 2/3 when installed and asked for.

No padding or key masks are used at inference (spec §7): every query attends to every key it is given, so a
token removed from the KV cache is simply absent from the key set.
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
    """flash-attn 3 (`flash_attn_interface`) on Hopper, else flash-attn 2, else None."""
    try:
        import flash_attn_interface  # FA3

        name = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else ""
        if "h100" in name or "hopper" in name:  # the reference's rule (spec §7): an H200 runs flash-attn 2
            return lambda q, k, v: _first(flash_attn_interface.flash_attn_func(q, k, v))
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_func  # FA2

        return lambda q, k, v: flash_attn_func(q, k, v)
    except ImportError:
        return None


def _first(out):
    return out[0] if isinstance(out, tuple) else out


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
    use_flash = (
        backend in ("flash", "auto")
        and attn_mask is None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and flash_available()
    )
    if use_flash:
        return _flash_func()(q, k, v).to(q.dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
    )
    return out.transpose(1, 2)
