"""Model directories: detect the layout (Wan original or Diffusers), check the files, load text encoder and VAE.

The DiT itself is built and loaded by `tokentrim.wan.build_model` / `load_dit_checkpoint`; this module only finds its
config and weights. File lists and download commands are documented in docs/models.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tokentrim.errors import UserError
from tokentrim.wan.config import WanConfig, get_preset
from tokentrim.wan.text_encoder import (
    TextEncoder,
    TextEncoderFactory,
    build_tiny_text_encoder,
    load_diffusers_text_encoder,
    load_original_text_encoder,
)
from tokentrim.wan.vae import WanVAE, build_tiny_vae, load_diffusers_vae, load_original_vae

Layout = Literal["original", "diffusers", "tiny"]


@dataclass(frozen=True)
class LayoutFiles:
    """Where each part lives in one layout (paths relative to the model folder; `*_files` may be globs)."""

    repo: str  # Hugging Face repository to download
    config: str  # DiT config.json
    dit: str  # file or folder handed to the DiT loader
    dit_files: tuple[str, ...]
    text_encoder: str  # weights file (original) or folder (Diffusers)
    tokenizer: str  # tokenizer folder
    text_encoder_files: tuple[str, ...]
    vae: str  # weights file (original) or folder (Diffusers)
    vae_files: tuple[str, ...]


# docs/spec.md#model-files (original) and the Wan2.1-T2V-1.3B-Diffusers repository's folders.
LAYOUTS: dict[str, LayoutFiles] = {
    "original": LayoutFiles(
        repo="Wan-AI/Wan2.1-T2V-1.3B",
        config="config.json",
        dit="diffusion_pytorch_model.safetensors",
        dit_files=("diffusion_pytorch_model.safetensors",),
        text_encoder="models_t5_umt5-xxl-enc-bf16.pth",
        tokenizer="google/umt5-xxl",
        text_encoder_files=(
            "models_t5_umt5-xxl-enc-bf16.pth",
            "google/umt5-xxl/tokenizer_config.json",
            "google/umt5-xxl/spiece.model|google/umt5-xxl/tokenizer.json",
        ),
        vae="Wan2.1_VAE.pth",
        vae_files=("Wan2.1_VAE.pth",),
    ),
    "diffusers": LayoutFiles(
        repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        config="transformer/config.json",
        dit="transformer",
        dit_files=("transformer/diffusion_pytorch_model*.safetensors",),
        text_encoder="text_encoder",
        tokenizer="tokenizer",
        text_encoder_files=(
            "text_encoder/config.json",
            "text_encoder/model*.safetensors",
            "tokenizer/tokenizer_config.json",
            "tokenizer/spiece.model|tokenizer/tokenizer.json",
        ),  # fmt: skip
        vae="vae",
        vae_files=("vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
    ),
}


def download_command(layout: str, model_dir: str | os.PathLike) -> str:
    return f"hf download {LAYOUTS[layout].repo} --local-dir {model_dir}"


def detect_layout(model_dir: str | os.PathLike) -> Layout:
    """ "diffusers" if the folder has `model_index.json` or `transformer/`, "original" if it has Wan's files."""
    root = Path(model_dir)
    if not root.is_dir():
        raise UserError(
            f"model folder {root} does not exist. Download it with `{download_command('original', root)}` "
            f"(or `{download_command('diffusers', root)}`) and pass that folder as `model_dir`."
        )
    if (root / "model_index.json").is_file() or (root / "transformer").is_dir():
        return "diffusers"
    orig = LAYOUTS["original"]
    if any((root / name).exists() for name in (orig.config, orig.dit, orig.text_encoder, orig.vae)):
        return "original"
    raise UserError(
        f"{root} is neither a Wan2.1 model folder ({orig.repo}: config.json, Wan2.1_VAE.pth, ...) nor a "
        f"Diffusers one ({LAYOUTS['diffusers'].repo}: model_index.json, transformer/, ...). "
        f"Download one with `{download_command('original', root)}`."
    )


def _missing(root: Path, patterns: tuple[str, ...]) -> list[str]:
    """Patterns (globs; "a|b" = either) with no match, plus shards named by a `*.safetensors.index.json`."""
    missing = [p for p in patterns if not any(any(root.glob(alt)) for alt in p.split("|"))]
    for index in root.glob("*/*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (ValueError, AttributeError):  # not JSON, or not an object: the index itself is broken
            missing.append(f"{index.relative_to(root)} (unreadable)")
            continue
        missing += [
            str((index.parent / s).relative_to(root))
            for s in sorted(shards)
            if not (index.parent / s).is_file()
        ]
    return missing


def file_identity(paths: list[Path]) -> str:
    """A short hash of file names, sizes and modification times: changes when the weights change."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA (as the reference pipelines run), float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@dataclass
class Components:
    """What a model folder provides. `text_encoder` / `vae` are None when not requested.

    `text_encoder_factory` loads the text encoder lazily (for `encode_prompts`, which skips it on cache hits);
    `dit_weights` is the original-layout safetensors file or the Diffusers `transformer/` folder (None: not needed).
    """

    layout: Layout
    dit_config: WanConfig
    dit_weights: Path | None
    text_encoder: TextEncoder | None
    vae: WanVAE | None
    text_encoder_factory: TextEncoderFactory | None


def text_encoder_factory(
    model_dir: str | os.PathLike,
    layout: Layout,
    *,
    text_len: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> TextEncoderFactory:
    """A lazy loader for the folder's umT5 encoder; its identity hashes the weight files' stats and the dtype."""
    root, files = Path(model_dir), LAYOUTS[layout]
    weights, tokenizer = root / files.text_encoder, root / files.tokenizer
    if layout == "original":
        stats = [weights]
        load = lambda: load_original_text_encoder(
            weights, tokenizer, text_len=text_len, device=device, dtype=dtype
        )
    else:
        stats = sorted(weights.glob("*.safetensors"))
        load = lambda: load_diffusers_text_encoder(
            weights, tokenizer, text_len=text_len, device=device, dtype=dtype
        )
    stats += sorted(p for p in tokenizer.iterdir() if p.is_file())
    identity = f"umt5-{layout}-{file_identity(stats)}-{str(dtype).removeprefix('torch.')}"
    return TextEncoderFactory(load, identity=identity, text_len=text_len, device=device)


def load_components(
    model_dir: str | os.PathLike,
    *,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    dit_weights: bool = True,
    text_encoder: bool = True,
    vae: bool = True,
    require_text_encoder: bool = False,
) -> Components:
    """Check a Wan2.1-T2V-1.3B folder (either layout) and load the requested parts.

    Missing files raise one `UserError` naming every missing file and the download command, before anything is
    loaded. `dtype` defaults to bf16 on CUDA and float32 otherwise. With `text_encoder=False` the lazy factory is
    still returned when the encoder's files are present (for `encode_prompts`, which loads it only on a cache
    miss); `require_text_encoder` makes those files required all the same (a run that will encode prompts).
    """
    root = Path(model_dir)
    layout = detect_layout(root)
    files = LAYOUTS[layout]
    wanted = (files.config,) + files.dit_files * dit_weights
    wanted += files.text_encoder_files * (text_encoder or require_text_encoder) + files.vae_files * vae
    missing = _missing(root, wanted)
    if missing:
        raise UserError(
            f"{root} ({layout} layout) is missing: {', '.join(missing)}. "
            f"Download them with `{download_command(layout, root)}`."
        )
    dtype = dtype or default_dtype(device)
    dit_config = WanConfig.from_json(root / files.config)
    factory = None
    if not _missing(root, files.text_encoder_files):
        factory = text_encoder_factory(root, layout, text_len=dit_config.text_len, device=device, dtype=dtype)
    load_vae = load_original_vae if layout == "original" else load_diffusers_vae
    return Components(
        layout=layout,
        dit_config=dit_config,
        dit_weights=root / files.dit if dit_weights else None,
        text_encoder=factory.get() if text_encoder else None,
        vae=load_vae(root / files.vae, device=device, dtype=dtype) if vae else None,
        text_encoder_factory=factory,
    )


def build_tiny_components(
    seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Components:
    """Random-weight text encoder and VAE matching `get_preset("tiny")`; the DiT has no weights file."""
    encoder = build_tiny_text_encoder(seed, device=device, dtype=dtype)
    factory = TextEncoderFactory(
        lambda: encoder,
        identity=f"tiny-umt5-seed{seed}-{str(dtype).removeprefix('torch.')}",
        text_len=encoder.text_len,
        device=device,
    )
    return Components(
        layout="tiny",
        dit_config=get_preset("tiny"),
        dit_weights=None,
        text_encoder=factory.get(),
        vae=build_tiny_vae(seed, device=device, dtype=dtype),
        text_encoder_factory=factory,
    )
