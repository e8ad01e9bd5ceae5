"""DiT checkpoint loading: Self Forcing / Rolling Forcing `.pt`, Wan base safetensors, Diffusers transformer folders.

All three end as a flat dict with the original Wan names (docs/spec.md#state-dict-keys) that is loaded strictly
(docs/spec.md#checkpoints-and-loading).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from tokentrim.errors import UserError
from tokentrim.wan.lora import adapters_of, merge_lora

logger = logging.getLogger(__name__)

# Diffusers WanTransformer3DModel name -> original Wan name (the inverse of diffusers' converter,
# docs/spec.md#diffusers-names).
_DIFFUSERS_TO_WAN = [
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"^blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"^blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"^blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
]


def diffusers_to_wan_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _DIFFUSERS_TO_WAN:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise UserError(
            f"cannot read {path} ({str(err)[:120]}); the file is corrupted: download it again"
        ) from err


def check_safetensors(path: str | os.PathLike) -> None:
    """Cheap integrity check of a `.safetensors` file from its header: the 8-byte header length, a JSON header,
    and tensor data that ends inside the file (a truncated download fails here, before anything is loaded)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 0 < n <= size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise UserError(f"{path} is not a valid .safetensors file ({err}); download it again") from None
    if ends and max(ends) > size - 8 - n:
        raise UserError(
            f"{path} is truncated: its header needs {8 + n + max(ends)} bytes, the file has {size}; download it again"
        )


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Before any weights load: the checkpoint exists, is readable and is not obviously truncated."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"DiT checkpoint not found: {path}")
    if path.is_dir():
        return  # a Diffusers transformer folder: its files are checked when read
    if not os.access(path, os.R_OK):
        raise UserError(f"DiT checkpoint {path} is not readable")
    if path.suffix == ".safetensors":
        check_safetensors(path)
        return
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (a truncated one has no central directory); very old files are a pickle
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise UserError(f"{path} is not a PyTorch checkpoint, or it is truncated; download it again")


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A folder with one `*.safetensors` file or a sharded `*.safetensors.index.json`."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise UserError(f"{folder}: shard files missing: {missing}; re-download the transformer folder")
        sd = {}
        for shard in shards:
            sd.update(_read_safetensors(folder / shard))
        return sd
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise UserError(
            f"{folder}: expected one .safetensors file or a shard index, found {len(files)} files"
        )
    return _read_safetensors(files[0])


def read_torch_file(path: str | os.PathLike) -> object:
    """`torch.load(weights_only=True)` on CPU; an unreadable file is one `UserError` that says what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:200]}. "
            "The file is corrupted or not a PyTorch checkpoint; download it again."
        ) from err


def read_lora(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The generator's PEFT adapters of a LoRA file (`.pt` as LongLive saves it, or `.safetensors`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LoRA file {path} not found; give the adapters' .pt or .safetensors file")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else read_torch_file(path)
    return adapters_of(raw, path)


# The state-dict entry each released training checkpoint is meant to be read from
# (docs/spec.md#causal-forcing-checkpoints, docs/spec.md#longlive-files-and-loading; the READMEs' --use_ema
# flags), by the file's last two path components as the download commands lay them out.
CHECKPOINT_KEYS = {
    "checkpoints/self_forcing_dmd.pt": "generator_ema",
    "checkpoints/rolling_forcing_dmd.pt": "generator_ema",
    "chunkwise/causal_forcing.pt": "generator",
    "framewise/causal_forcing.pt": "generator_ema",
    "causal-forcing++/framewise-2step.pt": "generator_ema",
    "causal-forcing++/framewise-1step.pt": "generator_ema",
    "chunkwise/longvideo.pt": "generator_ema",
    "models/longlive_base.pt": "generator",
}


def known_checkpoint_key(path: str | os.PathLike) -> str | None:
    """The entry a known released file is read from: by its folder and name, or by its name alone where that is
    unambiguous (`causal_forcing.pt` is both the chunk-wise and the frame-wise file). None for an unknown file."""
    path = Path(path)
    if f"{path.parent.name}/{path.name}" in CHECKPOINT_KEYS:
        return CHECKPOINT_KEYS[f"{path.parent.name}/{path.name}"]
    keys = {key for name, key in CHECKPOINT_KEYS.items() if name.rpartition("/")[2] == path.name}
    return keys.pop() if len(keys) == 1 else None


def _read_training_checkpoint(path: Path, use_ema: bool | None) -> dict[str, torch.Tensor]:
    """A training checkpoint `.pt`: {"generator_ema" | "generator": wrapper state dict} (or a bare state dict).

    use_ema: True reads `generator_ema` (falling back to `generator` when the file has no EMA), False reads
    `generator`, None (auto) reads the entry the release says for a known file (`CHECKPOINT_KEYS`), else
    `generator_ema` when present, else `generator`."""
    raw = read_torch_file(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} holds a {type(raw).__name__}, not a state dict")
    entries = [k for k in ("generator_ema", "generator") if isinstance(raw.get(k), dict)]
    if not entries and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return raw  # a bare state dict
    if use_ema is None:
        known = known_checkpoint_key(path)
        if known is not None and known not in entries:
            raise UserError(
                f"{path} is read from its {known!r} entry (as its release says), but it holds {sorted(raw)[:6]}; "
                "choose the entry explicitly with `use_ema=True` or `use_ema=False`"
            )
        order = [known] if known else ["generator_ema", "generator"]
    else:
        order = ["generator_ema", "generator"] if use_ema else ["generator"]
    for name in order:
        if name in entries:
            if use_ema and name != "generator_ema":
                logger.warning("%s has no 'generator_ema' entry; loading 'generator'", path)
            logger.info("loading the %r entry of %s", name, path)
            return raw[name]
    wanted = " or ".join(repr(n) for n in order)
    raise UserError(
        f"{path} has no {wanted} entry (it has {sorted(raw)[:6]}). "
        + ("Load with `use_ema=True` to use 'generator_ema'. " if "generator_ema" in entries else "")
        + "Is this a Self Forcing / Rolling Forcing / Causal Forcing / LongLive checkpoint?"
    )


def _strip_wrapper(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FSDP's `_fsdp_wrapped_module.` anywhere in a name and the wrapper's leading `model.` (docs/spec.md#checkpoints-and-loading)."""
    out = {}
    for key, value in sd.items():
        key = key.replace("_fsdp_wrapped_module.", "")
        out[key.removeprefix("model.")] = value
    return out


def read_dit_state_dict(path: str | os.PathLike, use_ema: bool | None = None) -> dict[str, torch.Tensor]:
    """Read any supported DiT checkpoint into original Wan key names."""
    path = Path(path)
    check_checkpoint_file(path)
    if path.is_dir():
        sub = path / "transformer"
        sd = _read_folder(sub if sub.is_dir() else path)
    elif path.suffix == ".safetensors":
        sd = _read_safetensors(path)
    else:
        sd = _strip_wrapper(_read_training_checkpoint(path, use_ema))
    # ComfyUI's "model.diffusion_model." and the training wrapper's "model." (no Wan key starts with "model.")
    sd = {k.removeprefix("model.diffusion_model.").removeprefix("model."): v for k, v in sd.items()}
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in sd):
        sd = diffusers_to_wan_keys(sd)
    return sd


def _summarise(keys: list[str], limit: int = 5) -> str:
    """Collapse block indices so 30 layers of the same key read as one line."""
    patterns: dict[str, int] = {}
    for key in keys:
        pattern = re.sub(r"blocks\.\d+\.", "blocks.*.", key)
        patterns[pattern] = patterns.get(pattern, 0) + 1
    items = [f"{p} (x{n})" if n > 1 else p for p, n in list(patterns.items())[:limit]]
    more = len(patterns) - limit
    return ", ".join(items) + (f", and {more} more" if more > 0 else "")


def check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise one UserError naming missing, unexpected and mis-shaped keys, with the likely cause."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k} {tuple(sd[k].shape)} != {expected[k]}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    if not (missing or unexpected or misshaped):
        return
    parts = [
        f"checkpoint {source} does not match the model ({len(sd)} tensors, model expects {len(expected)})"
    ]
    if missing:
        parts.append(f"missing {len(missing)}: {_summarise(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {_summarise(unexpected)}")
    if misshaped:
        parts.append(f"wrong shape {len(misshaped)}: {', '.join(misshaped[:3])}")
    if misshaped:
        parts.append(
            "likely cause: the checkpoint is for another model size; check `preset` / the config.json"
        )
    elif missing and len(missing) == len(expected):
        parts.append("likely cause: this is not a Wan2.1 DiT checkpoint (e.g. a VAE or text-encoder file)")
    else:
        parts.append("likely cause: a truncated or partial download; download the file again")
    raise UserError("; ".join(parts))


def load_dit_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    use_ema: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    lora: str | os.PathLike | None = None,
    lora_alpha: float | None = None,
) -> nn.Module:
    """Load a checkpoint strictly into `model` (built on the meta device or materialised).

    As in the reference (docs/spec.md#checkpoints-and-loading): the weights are loaded in the checkpoint's precision (fp32 for the released
    files), then the model is cast to `dtype` (round-to-nearest-even) and moved to `device`. `lora`: a PEFT LoRA
    file merged into the weights first (`tokentrim.wan.lora`; LongLive's base + lora.pt).
    """
    sd = read_dit_state_dict(path, use_ema=use_ema)
    if lora is not None:
        sd = merge_lora(sd, read_lora(lora), lora_alpha)
    check_state_dict(model, sd, str(path))
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(sd, strict=True, assign=on_meta)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    return model
