"""Weight-only quantisation of the DiT's transformer linear layers with torchao (the optional `quant` extra).

The linear layers of the transformer blocks (self- and cross-attention q, k, v, o and the feed-forward pair) hold
98 % of Wan2.1-1.3B's parameters; their weights are stored as int8 or fp8 (e4m3) with one scale per output row,
and dequantised inside the matmul. Activations, the KV cache, norms, modulation, the embeddings and the head keep
the model dtype. Modes:
- "int8": torchao's `Int8WeightOnlyConfig`, CPU and GPU.
- "fp8": torchao's `Float8WeightOnlyConfig`; its kernels need a CUDA GPU of compute capability 8.9 or later
  (Ada, Hopper).

The weights shrink from 2 bytes (bf16) to 1 byte per parameter plus the scales (the memory figures and the effect
on the toy model's output: docs/benchmarks.md#weight-quantisation).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tokentrim.errors import UserError
from tokentrim.wan.model import CausalWanModel

QUANT_MODES = ("none", "int8", "fp8")


def _torchao():
    """torchao's quantisation API. Its import logs a line per CUDA extension a CPU build of torch cannot load,
    and torch a deprecation notice about one of its enums: not the user's business."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UserError("weight quantisation needs torchao: pip install 'tokentrim[quant]'") from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return quantize_, Int8WeightOnlyConfig, Float8WeightOnlyConfig


def check_quantize(mode: str, device: torch.device) -> None:
    """Raise a UserError if `mode` cannot run on `device` (before any weights load)."""
    if mode not in QUANT_MODES:
        raise UserError(f"`quantize` must be one of {QUANT_MODES}, got {mode!r}", field="quantize")
    if mode == "fp8":
        capable = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        if not capable:
            raise UserError("fp8 weights need a CUDA GPU of compute capability 8.9 or later (Ada, Hopper); "
                            "use int8 here", field="quantize")  # fmt: skip
    if mode != "none":
        _torchao()


def quantize_dit(model: CausalWanModel, mode: str) -> CausalWanModel:
    """Quantise the weights of the transformer blocks' linear layers in place ("none": unchanged)."""
    check_quantize(mode, model.patch_embedding.weight.device)
    if mode == "none":
        return model
    quantize_, int8, fp8 = _torchao()
    config = int8(set_inductor_config=False) if mode == "int8" else fp8(set_inductor_config=False)
    quantize_(
        model,
        config,
        filter_fn=lambda module, name: isinstance(module, nn.Linear) and name.startswith("blocks."),
    )
    return model


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores, counting the inner tensors of a tensor subclass (a quantised weight's data and
    scales) rather than its logical dtype."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and type(t) is not nn.Parameter:
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(inner) for inner in (getattr(t, name) for name in names) if inner is not None)
    return t.numel() * t.element_size()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers as stored."""
    return sum(tensor_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())
