"""Running generations: load a backend (preset or model folder), encode prompts, run a pipeline with the
TokenTrim hook, stream-decode into an mp4 and write the decision log. Batch runs over a prompt file are
resumable (finished videos are skipped) and sharded over ranks (rank r takes prompts r, r + W, ...)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tokentrim.errors import UserError
from tokentrim.pipelines import GenerationOutput, RollingForcingPipeline, SelfForcingPipeline
from tokentrim.run_config import RunConfig
from tokentrim.video import DEFAULT_FPS, VideoWriter, atomic_path, write_png_frames
from tokentrim.wan import build_model, load_dit_checkpoint
from tokentrim.wan.model import CausalWanModel
from tokentrim_core.trim import TokenTrim, write_decision_log

logger = logging.getLogger(__name__)
PRESET_NAMES = ("tiny", "toy", "wan2.1-t2v-1.3b")


@dataclass
class Backend:
    """A DiT plus what turns prompts into embeddings and latents into frames."""

    name: str
    model: CausalWanModel
    encoder_factory: object  # tokentrim.wan.text_encoder.TextEncoderFactory
    decoder: object | None  # WanVAE or ToyCodec: decode(latents) -> uint8 [B, T, H, W, 3], streaming()
    fps: int = DEFAULT_FPS


def pick_device(device: str | None) -> torch.device:
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise UserError(f"--device must look like cpu, cuda or cuda:N, got {device!r}") from None
        if chosen.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(
                    f"--device {device} asked for, but no CUDA device is available; use --device cpu"
                )
            if chosen.index is not None and chosen.index >= torch.cuda.device_count():
                raise UserError(
                    f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible"
                )
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bf16 on CUDA (as the reference runs), fp32 on CPU, unless `--dtype` says otherwise."""
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
             "fp16": torch.float16, "float16": torch.float16}  # fmt: skip
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise UserError(f"--dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def load_backend(
    *,
    preset: str | None,
    model_dir: str | None,
    checkpoint: str | None,
    device: torch.device,
    dtype: torch.dtype,
    use_ema: bool = True,
    decoder: bool = True,
    random_weights: bool = False,
) -> Backend:
    """`--preset tiny|toy` (built in), or `--model-dir` + `--checkpoint` (the official files).

    `random_weights` builds the full-size model with random weights and no text encoder or VAE (benchmarks).
    """
    from tokentrim.wan.text_encoder import TextEncoderFactory

    if preset is not None and (model_dir or checkpoint):
        raise UserError(
            f"--preset {preset} uses built-in weights: drop --model-dir / --checkpoint, or drop --preset "
            "to load the official files"
        )
    if preset == "tiny":
        from tokentrim.wan.components import build_tiny_components

        comp = build_tiny_components(0, device=device, dtype=dtype)
        model = build_model("tiny", device=device, dtype=dtype, seed=0)
        return Backend("tiny", model, comp.text_encoder_factory, comp.vae if decoder else None)
    if preset == "toy":
        from tokentrim.toy import load_toy

        model, text, codec = load_toy(device=device, dtype=dtype)
        factory = TextEncoderFactory(
            lambda: text, identity="toy-text", text_len=model.config.text_len, device=device
        )
        return Backend("toy", model, factory, codec if decoder else None, fps=8)
    if preset == "wan2.1-t2v-1.3b" or random_weights:
        if not random_weights:
            raise UserError("--preset wan2.1-t2v-1.3b needs real weights: use --model-dir and --checkpoint")
        model = build_model("wan2.1-t2v-1.3b", device=device, dtype=dtype, seed=0)
        return Backend("wan2.1-t2v-1.3b-random", model, None, None)
    if preset is not None:
        raise UserError(f"--preset must be one of {PRESET_NAMES}, got {preset!r}")
    if not model_dir or not checkpoint:
        raise UserError(
            "give --preset tiny|toy, or both --model-dir (Wan2.1-T2V-1.3B folder) and --checkpoint"
        )
    from tokentrim.wan.components import load_components

    comp = load_components(
        model_dir, device=device, dtype=dtype, dit_weights=False, text_encoder=False, vae=decoder
    )
    model = build_model(comp.dit_config, device="meta")
    model = load_dit_checkpoint(model, checkpoint, use_ema=use_ema, device=device, dtype=dtype)
    return Backend(Path(checkpoint).stem, model, comp.text_encoder_factory, comp.vae)


def make_pipeline(backend: Backend, run: RunConfig):
    if run.pipeline == "self_forcing":
        return SelfForcingPipeline(backend.model, run.self_forcing)
    return RollingForcingPipeline(backend.model, run.rolling_forcing)


def slugify(text: str, limit: int = 60) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_").lower()
    return slug[:limit] or "prompt"


def generate_video(
    backend: Backend,
    run: RunConfig,
    prompt: str,
    prompt_embeds: torch.Tensor,
    *,
    latent_frames: int,
    seed: int,
    out: Path,
    log: Path,
    save_latents: bool = False,
    frames_dir: Path | None = None,
    progress: bool = True,
    extra_log: dict | None = None,
    prefix: torch.Tensor | None = None,
) -> GenerationOutput:
    """One video: stream-decode finished blocks into `out` (mp4, atomic); optionally the latents and PNG frames
    (`frames_dir/00000.png`, ...); the decision log last. `prefix`: observed first latent frames (see the
    pipelines), written to the video like generated ones."""
    model = backend.model
    patch = model.config.patch_size[1:]
    hook = TokenTrim(run.tokentrim, patch)
    writer = VideoWriter(out, fps=backend.fps) if backend.decoder is not None else None
    stream = backend.decoder.streaming() if backend.decoder is not None else None  # WanVAE or the toy codec

    written = 0

    def on_block(start: int, x0: torch.Tensor) -> None:
        nonlocal written
        if writer is not None:
            frames = stream.decode(x0)[0].cpu().numpy()
            writer.append(frames)
            if frames_dir is not None:  # lossless copies of the decoded frames, numbered from 0
                write_png_frames(frames_dir, frames, start=written)
            written += len(frames)

    kwargs = {"regen_noise": run.tokentrim.regen_noise} if run.pipeline == "self_forcing" else {}
    try:
        result = make_pipeline(backend, run)(
            prompt_embeds, latent_frames, seed=seed, hook=hook, flowmo=run.flowmo, on_block=on_block,
            progress=progress, prefix=prefix, **kwargs,
        )  # fmt: skip
    except BaseException:
        if writer is not None:
            writer.close(ok=False)
        raise
    if writer is not None:
        writer.close()
    if save_latents:
        with atomic_path(out.with_suffix(".latents.pt")) as tmp:
            torch.save(result.latents[0].float().cpu(), tmp)
    # The log comes last: a video counts as finished (batch resume) once its log exists.
    config = {"run": run.to_dict(), "prompt": prompt, "seed": seed, "latent_frames": latent_frames,
              "observed_frames": 0 if prefix is None else prefix.shape[1], "backend": backend.name,
              **(extra_log or {})}  # fmt: skip
    write_decision_log(
        log, {"config": config, "blocks": result.records, "flowmo_losses": result.flowmo_losses}
    )
    return result


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UserError(f"{path} holds no prompts (one per line)")
    return prompts


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Rank r of W takes items r, r + W, r + 2W, ... (as the reference's DistributedSampler without shuffle)."""
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world size {world_size}")
    return indices[rank::world_size]


def rank_and_world() -> tuple[int, int]:
    """From torchrun / accelerate environment variables; (0, 1) when not distributed."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def batch_outputs(out_dir: Path, index: int, prompt: str) -> tuple[Path, Path]:
    stem = f"{index:04d}_{slugify(prompt)}"
    return out_dir / f"{stem}.mp4", out_dir / f"{stem}.json"


def encode(backend: Backend, prompts: list[str], offload: str) -> torch.Tensor:
    from tokentrim.wan.text_encoder import encode_prompts

    if backend.encoder_factory is None:
        raise UserError("this backend has no text encoder; use --preset or --model-dir")
    return encode_prompts(prompts, backend.encoder_factory, offload=offload)
