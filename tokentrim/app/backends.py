"""Model backends: a DiT plus what turns prompts into embeddings and latents into frames.

`PRESETS` is the one list of built-in models (`--preset`); `load_backend` also loads the official files
(`--model-dir` + `--checkpoint`) and, for benchmarks, the full-size DiT with random weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tokentrim.errors import UserError
from tokentrim.video import DEFAULT_FPS
from tokentrim.wan import WanConfig, build_model, get_preset, load_dit_checkpoint
from tokentrim.wan.model import CausalWanModel


@dataclass
class Backend:
    """A DiT plus what turns prompts into embeddings and latents into frames."""

    name: str
    model: CausalWanModel
    encoder_factory: object | None  # tokentrim.wan.text_encoder.TextEncoderFactory
    decoder: object | None  # WanVAE or ToyCodec: decode(latents) -> uint8 [B, T, H, W, 3], streaming()
    fps: int = DEFAULT_FPS


@dataclass(frozen=True)
class Preset:
    doc: str
    load: Callable[[torch.device, torch.dtype, bool], Backend]  # (device, dtype, with decoder)


def _load_tiny(device: torch.device, dtype: torch.dtype, decoder: bool) -> Backend:
    from tokentrim.wan.components import build_tiny_components

    comp = build_tiny_components(0, device=device, dtype=dtype)
    model = build_model("tiny", device=device, dtype=dtype, seed=0)
    return Backend("tiny", model, comp.text_encoder_factory, comp.vae if decoder else None)


def _load_toy(device: torch.device, dtype: torch.dtype, decoder: bool) -> Backend:
    from tokentrim.toy import load_toy
    from tokentrim.wan.text_encoder import TextEncoderFactory

    model, text, codec = load_toy(device=device, dtype=dtype)
    factory = TextEncoderFactory(
        lambda: text, identity="toy-text", text_len=model.config.text_len, device=device
    )
    return Backend("toy", model, factory, codec if decoder else None, fps=8)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("2-layer random-weight DiT, text encoder and VAE (smoke tests)", _load_tiny),
    "toy": Preset("the shipped toy world model (moving shapes, 32x32 video, CPU)", _load_toy),
}


def pick_device(device: str | None) -> torch.device:
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise UserError(
                f"`device` must look like cpu, cuda or cuda:N, got {device!r}", field="device"
            ) from None
        if chosen.type not in ("cpu", "cuda"):
            raise UserError(f"`device` must be cpu or cuda[:N], got {device!r}", field="device")
        if chosen.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(
                    f"`device` {device} asked for, but no CUDA device is available; use `device` cpu",
                    field="device",
                )
            if chosen.index is not None and chosen.index >= torch.cuda.device_count():
                raise UserError(
                    f"`device` {device}: only {torch.cuda.device_count()} CUDA device(s) are visible",
                    field="device",
                )
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "fp16": torch.float16, "float16": torch.float16}  # fmt: skip


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA (as the reference runs), fp32 on CPU, unless asked otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}", field="dtype")
    return DTYPES[dtype]


def load_backend(
    *,
    preset: str | None,
    model_dir: str | None,
    checkpoint: str | None,
    device: torch.device,
    dtype: torch.dtype,
    use_ema: bool | None = None,
    decoder: bool = True,
    text_encoder: bool = True,
    random_weights: bool = False,
    lora: str | None = None,
    lora_alpha: float | None = None,
) -> Backend:
    """A preset (built in), or `model_dir` + `checkpoint` (the official files). Every file is checked before the
    first one loads; `text_encoder=False` (benchmarks: random embeddings) does not require the encoder's files.

    `random_weights` builds the full-size model with random weights and no text encoder or VAE (benchmarks).
    """
    if random_weights:
        if preset is not None or model_dir or checkpoint:
            raise UserError(
                "`random_weights` builds the full-size DiT by itself: drop `preset` / `model_dir` / `checkpoint`"
            )
        model = build_model("wan2.1-t2v-1.3b", device=device, dtype=dtype, seed=0)
        return Backend(backend_name(None, None, True), model, None, None)
    if preset is not None:
        if model_dir or checkpoint:
            raise UserError(
                f"`preset` {preset} uses built-in weights: drop `model_dir` / `checkpoint`, or drop `preset` "
                "to load the official files",
                field="preset",
            )
        if preset not in PRESETS:
            raise UserError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}", field="preset")
        backend = PRESETS[preset].load(device, dtype, decoder)
        if lora is not None:  # adapters on the built-in weights (tests, small experiments)
            from tokentrim.wan.loading import read_lora
            from tokentrim.wan.lora import merge_lora

            state = merge_lora(backend.model.state_dict(), read_lora(lora), lora_alpha)
            backend.model.load_state_dict(state, strict=True)
            backend.name = backend_name(preset, None, lora=lora)
        return backend
    if not model_dir or not checkpoint:
        raise UserError(
            "give a `preset` (tiny, toy), or both `model_dir` (the Wan2.1-T2V-1.3B folder) and `checkpoint`"
        )
    from tokentrim.wan.components import detect_layout, load_components
    from tokentrim.wan.loading import check_checkpoint_file

    detect_layout(model_dir)
    check_checkpoint_file(checkpoint)
    comp = load_components(
        model_dir,
        device=device,
        dtype=dtype,
        dit_weights=False,
        text_encoder=False,
        vae=decoder,
        require_text_encoder=text_encoder,
    )
    model = build_model(comp.dit_config, device="meta")
    model = load_dit_checkpoint(
        model, checkpoint, use_ema=use_ema, device=device, dtype=dtype, lora=lora, lora_alpha=lora_alpha
    )
    name = backend_name(None, checkpoint, use_ema=use_ema, lora=lora)
    return Backend(name, model, comp.text_encoder_factory, comp.vae)


def load_preset(preset: str, device: str | None) -> Backend:
    """A built-in model in fp32 on `device` (cpu / cuda[:N]; default: CUDA when there is one)."""
    return load_backend(
        preset=preset, model_dir=None, checkpoint=None, device=pick_device(device), dtype=torch.float32
    )


def model_config(preset: str | None, model_dir: str | None, random_weights: bool = False) -> WanConfig:
    """The DiT config a backend will have, without loading any weights (to check a request early)."""
    if random_weights:
        return get_preset("wan2.1-t2v-1.3b")
    if preset == "tiny":
        return get_preset("tiny")
    if preset == "toy":
        from tokentrim.toy import TOY_CONFIG

        return TOY_CONFIG
    if preset is not None:
        raise UserError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}", field="preset")
    if not model_dir:
        raise UserError(
            "give a `preset` (tiny, toy), or both `model_dir` (the Wan2.1-T2V-1.3B folder) and `checkpoint`"
        )
    from tokentrim.wan.components import LAYOUTS, detect_layout

    return WanConfig.from_json(Path(model_dir) / LAYOUTS[detect_layout(model_dir)].config)


def vae_strides(preset: str | None) -> tuple[int, int]:
    """(spatial, temporal) stride of the backend's VAE, known without loading it: Wan2.1's (8, 4)
    (docs/spec.md#shapes; the tiny VAE has the same), the toy codec's (its pixel-unshuffle factor, 1)."""
    if preset == "toy":
        from tokentrim.toy import CODEC

        return CODEC.factor, 1
    return 8, 4


def backend_name(
    preset: str | None,
    checkpoint: str | None,
    random_weights: bool = False,
    use_ema: bool | None = None,
    lora: str | None = None,
) -> str:
    """The name a run records for its weights (known before they load: batch resume compares it); an explicitly
    chosen checkpoint entry and a merged LoRA are part of it."""
    if random_weights:
        return "wan2.1-t2v-1.3b-random"
    adapters = "" if lora is None else f"+{Path(lora).stem}"
    if preset is not None:
        return preset + adapters
    entry = {True: "[generator_ema]", False: "[generator]", None: ""}[use_ema]
    return Path(checkpoint).stem + entry + adapters
