"""PEFT LoRA adapters for the Wan DiT (LongLive-1.3B's `lora.pt`, docs/spec.md#lora), merged into plain
weights: W' = W + (alpha / r) B A for every adapted linear layer, in float32, rounded once to W's dtype.

The adapters cover the 10 linear layers of each of the 30 blocks (self- and cross-attention q, k, v, o and the
two FFN layers): 300 layers, 600 tensors named `base_model.model.blocks.{i}.{module}.lora_{A|B}.weight` (PEFT's
saved names, the adapter name dropped; a `.default` adapter name is accepted too), `lora_A [r, in]` and
`lora_B [out, r]`. Every adapted layer must be there with matching shapes and every tensor must be used: a
missing or mismatched adapter is an error, never a silent base-only model (the reference's bug,
docs/spec.md#upstream-bugs-avoided). The merged weights differ from the reference's unmerged bf16 arithmetic (base
and LoRA branches computed separately in bf16, then added) by rounding.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from tokentrim.errors import UserError

TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
           "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")  # fmt: skip
_NAME = re.compile(
    r"^(?:base_model\.model\.)?(blocks\.\d+\.[a-z_]+(?:\.[a-z0-9]+)?)\.lora_([AB])(?:\.default)?\.weight$"
)


def adapters_of(raw: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The generator's adapters of a read LoRA file: its `generator_lora` entry (LongLive's trainer saves
    {generator_lora, critic_lora, step}) or a bare adapter state dict."""
    if isinstance(raw, dict) and isinstance(raw.get("generator_lora"), dict):
        raw = raw["generator_lora"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(
            f"{path} holds no LoRA adapters (expected a 'generator_lora' entry or lora_A/lora_B tensors)"
        )
    return raw


def dims_of(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(dim, ffn_dim, num_layers) of a Wan DiT state dict."""
    try:
        dim, ffn = state["blocks.0.self_attn.q.weight"].shape[0], state["blocks.0.ffn.0.weight"].shape[0]
    except KeyError as err:
        raise UserError(f"the base checkpoint has no {err.args[0]}: it is not a Wan DiT state dict") from None
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return dim, ffn, layers


def lora_pairs(
    lora: dict[str, torch.Tensor], dim: int, ffn_dim: int, num_layers: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{"blocks.{i}.{module}": (A, B)}` for every adapted layer of the model, shapes checked against the layer."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in lora.items():
        match = _NAME.match(key)
        if match is None:
            unknown.append(key)
            continue
        found.setdefault(match.group(1), {})[match.group(2)] = value
    if unknown:
        raise UserError(
            f"LoRA tensors with unexpected names ({len(unknown)}, e.g. {unknown[0]!r}); expected "
            "base_model.model.blocks.N.<module>.lora_A/lora_B.weight"
        )
    shapes = {"ffn.0": (dim, ffn_dim), "ffn.2": (ffn_dim, dim)}  # (in, out)
    pairs, missing = {}, []
    for i in range(num_layers):
        for module in TARGETS:
            name = f"blocks.{i}.{module}"
            ab = found.pop(name, {})
            if set(ab) != {"A", "B"}:
                missing.append(name)
                continue
            a, b = ab["A"], ab["B"]
            fan_in, fan_out = shapes.get(module, (dim, dim))
            r = a.shape[0]
            if (
                a.dim() != 2
                or b.dim() != 2
                or tuple(a.shape) != (r, fan_in)
                or tuple(b.shape) != (fan_out, r)
            ):
                raise UserError(
                    f"LoRA {name}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the layer "
                    f"({fan_out} x {fan_in}): expected [r, {fan_in}] and [{fan_out}, r]; is it for another model?"
                )
            pairs[name] = (a, b)
    if missing:
        raise UserError(
            f"LoRA adapters missing for {len(missing)} of {num_layers * len(TARGETS)} layers "
            f"(e.g. {missing[0]}); the file does not cover the model"
        )
    if found:
        raise UserError(f"LoRA adapters for layers the model does not have: {sorted(found)[:3]}")
    return pairs


def merge_lora(
    state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], alpha: float | None = None
) -> dict[str, torch.Tensor]:
    """A new state dict (Wan names) with every adapter merged: W + (alpha / r) B A in float32, cast to W's dtype.
    `alpha` defaults to r (scale 1: LongLive's r = alpha = 256; the LoRA file does not store alpha)."""
    pairs = lora_pairs(lora, *dims_of(state))
    merged = dict(state)
    for name, (a, b) in pairs.items():
        key = f"{name}.weight"
        if key not in state:
            raise UserError(f"the base checkpoint has no {key}: it is not a complete Wan DiT")
        scale = (a.shape[0] if alpha is None else alpha) / a.shape[0]
        w = state[key]
        merged[key] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return merged
