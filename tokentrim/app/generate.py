"""Running a video: `run_video` generates in memory and returns a `VideoResult` (latents, records, timings,
a frame iterator); `write_outputs` turns one into files (mp4, PNG frames, latents, decision log). Batch runs
over a prompt file are resumable and sharded over ranks (rank r takes prompts r, r + W, ...)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokentrim.app.backends import Backend
from tokentrim.app.inputs import Observation
from tokentrim.app.run_config import RunConfig
from tokentrim.errors import UserError
from tokentrim.files import atomic_dir, atomic_path, write_json
from tokentrim.pipelines import REGISTRY, BlockPipeline
from tokentrim.pipelines.common import BlockTransform
from tokentrim.video import VideoWriter, write_png_frames
from tokentrim.wan import WanConfig, build_model
from tokentrim_core.hook import BlockRecord
from tokentrim_core.trim import TokenTrim

logger = logging.getLogger(__name__)


@dataclass
class BlockEvent:
    """Frames that just became final, with every decision so far (for live displays)."""

    start: int  # first latent frame
    latents: torch.Tensor  # [B, f, C, H, W]
    records: list[BlockRecord]


@dataclass
class VideoResult:
    """One generated video, in memory."""

    latents: torch.Tensor  # [B, F, C, H, W] on the CPU, the model dtype
    records: list[BlockRecord]
    flowmo_losses: list[list[float]]
    settings: dict  # what produced it (the decision log's "config")
    timings: dict = field(default_factory=dict)  # wall_s (generation, no decoding)
    decoder: object | None = None
    fps: int = 16
    frames_per_block: int = 3
    drop: tuple[int, int] = (0, 0)  # decoded frames [a, b) not shown (an image start's repeats, a given clip)
    lead: np.ndarray | None = None  # uint8 frames shown before the decoded ones (--keep-init)

    def frames(self, sample: int = 0) -> Iterator[np.ndarray]:
        """The video's uint8 frames `[t, H, W, 3]` of one sample: `lead`, then the latents decoded block by block
        (a streaming decode, equal to decoding all latents at once) without the `drop` range."""
        if self.decoder is None:
            raise UserError("this backend has no decoder: only latents and the decision log can be written")
        if self.lead is not None:
            yield self.lead
        stream = self.decoder.streaming()
        device = getattr(self.decoder, "device", torch.device("cpu"))
        latents = self.latents[sample : sample + 1]
        first = 0  # index of the chunk's first decoded frame
        for s in range(0, latents.shape[1], self.frames_per_block):
            chunk = stream.decode(latents[:, s : s + self.frames_per_block].to(device))[0].cpu().numpy()
            keep = [i for i in range(len(chunk)) if not self.drop[0] <= first + i < self.drop[1]]
            first += len(chunk)
            if keep:
                yield chunk if len(keep) == len(chunk) else chunk[keep]

    def log(self) -> dict:
        """The decision log document: {"config", "blocks", "flowmo_losses", "timings"}."""
        return {"config": self.settings, "blocks": [r.to_dict() for r in self.records],
                "flowmo_losses": self.flowmo_losses, "timings": self.timings}  # fmt: skip


def make_pipeline(backend: Backend, run: RunConfig) -> BlockPipeline:
    return run.entry.pipeline(backend.model, run.sampler)


def switching_pipelines() -> list[str]:
    """The registered pipelines that can switch prompts."""
    return [name for name, entry in REGISTRY.items() if entry.pipeline.switching]


def request_pipeline(config: WanConfig, run: RunConfig) -> BlockPipeline:
    """The run's pipeline on a meta-device model (no weights): its checks and block size before anything loads."""
    return run.entry.pipeline(build_model(config, device="meta"), run.sampler)


def check_request(config: WanConfig, run: RunConfig, latent_frames: int, observed_frames: int = 0) -> None:
    """The frame counts against the model and the pipeline's limits, before any weights load."""
    pipe = request_pipeline(config, run)
    pipe.check_num_frames(latent_frames)
    if observed_frames and latent_frames - observed_frames < pipe.min_frames:
        raise UserError(
            f"{pipe.title} with {observed_frames} observed frames needs at least {observed_frames + pipe.min_frames} "
            f"latent frames in all, got {latent_frames}",
            field="num_frames",
        )


def video_settings(
    run: RunConfig,
    *,
    seed: int,
    latent_frames: int,
    observed_frames: int,
    backend: str,
    dtype: torch.dtype,
    attention: str,
    **extra,
) -> dict:
    """What produces a video (the decision log's "config"): equal settings give the same video, so a batch may
    skip a prompt whose finished outputs carry the same settings."""
    return {"run": run.to_dict(), "seed": seed, "latent_frames": latent_frames, "observed_frames": observed_frames,
            "backend": backend, "dtype": str(dtype).removeprefix("torch."), "attention": attention, **extra}  # fmt: skip


def setting_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two settings dicts, as "key: old -> new"."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(none)"), new.get(key, "(none)")
        if isinstance(a, dict) and isinstance(b, dict):
            changes += setting_changes(a, b, f"{prefix}{key}.")
        elif json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
            changes.append(f"{prefix}{key}: {a} -> {b}")
    return changes


def run_video(
    backend: Backend,
    run: RunConfig,
    prompt_embeds: torch.Tensor,
    *,
    latent_frames: int,
    seed: int,
    prefix: torch.Tensor | None = None,
    observation: Observation | None = None,
    on_block: Callable[[BlockEvent], None] | None = None,
    progress: bool = True,
    settings: dict | None = None,
    alter: BlockTransform | None = None,
    switches: Sequence[tuple[int, torch.Tensor]] = (),
) -> VideoResult:
    """One video in memory: the pipeline of `run` with the TokenTrim hook (and FlowMo) of `run`.

    prompt_embeds `[1, <= text_len, text_dim]`; prefix: observed first latent frames (see the pipelines), or an
    `observation` (image / video start, `tokentrim.app.inputs`) that the backend's VAE encodes into them;
    on_block: called as frames become final; settings: extra entries for the record of what produced it;
    alter: changes accepted blocks before they are committed (`tokentrim.app.faults`); switches: prompt switches
    `(first latent frame, prompt_embeds)` (`tokentrim.app.timeline`), re-cached as `run.tokentrim.switch_pruning`
    says."""
    if observation is not None:
        if prefix is not None or backend.decoder is None:
            raise UserError("give either latents (`prefix`) or an observation, with a backend that has a VAE")
        prefix = backend.decoder.encode(torch.from_numpy(observation.frames)[None])
        assert prefix.shape[1] == observation.latent_frames
        settings = {**(settings or {}), "init": observation.settings}
    hook = TokenTrim(run.tokentrim, backend.model.config.patch_size[1:])
    callback = None if on_block is None else (lambda s, x0: on_block(BlockEvent(s, x0, hook.records)))
    pipe = make_pipeline(backend, run)
    start = time.perf_counter()
    out = pipe(
        prompt_embeds, latent_frames, seed=seed, hook=hook, flowmo=run.flowmo, regen_noise=run.tokentrim.regen_noise,
        on_block=callback, progress=progress, prefix=prefix, alter=alter, switches=switches,
        switch_pruning=run.tokentrim.switch_pruning,
    )  # fmt: skip
    wall = time.perf_counter() - start
    model = backend.model
    config = video_settings(run, seed=seed, latent_frames=latent_frames, observed_frames=0 if prefix is None else
                            prefix.shape[1], backend=backend.name, dtype=model.patch_embedding.weight.dtype,
                            attention=model.attention_backend, **(settings or {}))  # fmt: skip
    shown = {} if observation is None else {"drop": observation.drop, "lead": observation.lead}
    return VideoResult(out.latents.cpu(), out.records, out.flowmo_losses, config, {"wall_s": wall}, backend.decoder,
                       backend.fps, pipe.frames_per_block, **shown)  # fmt: skip


def write_outputs(
    result: VideoResult,
    *,
    video: Path | None = None,
    log: Path | None = None,
    latents: Path | None = None,
    frames_dir: Path | None = None,
) -> None:
    """Write what is asked: the mp4 (and PNG frames `frames_dir/00000.png`, ...), the latents of sample 0, and
    the decision log last (a video counts as finished, for batch resume, once its log exists)."""
    if video is not None or frames_dir is not None:
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(VideoWriter(video, fps=result.fps)) if video is not None else None
            png = stack.enter_context(atomic_dir(frames_dir)) if frames_dir is not None else None
            written = 0
            for frames in result.frames():
                if writer is not None:
                    writer.append(frames)
                if png is not None:  # lossless copies of the decoded frames, numbered from 0
                    write_png_frames(png, frames, start=written)
                written += len(frames)
    if latents is not None:
        with atomic_path(latents) as tmp:
            torch.save(result.latents[0].float(), tmp)
    if log is not None:
        write_json(log, result.log())


def unfinished(jobs: list[tuple], settings_of: Callable[..., dict], overwrite: bool = False) -> list[tuple]:
    """The batch jobs `(index, prompt, video, log, seed)` still to run. A job is finished when its video and its
    log (written last) exist and the log records the settings this run would use; finished outputs made with
    other settings are a `UserError` unless `overwrite` (then they are regenerated)."""
    todo = []
    for job in jobs:
        index, prompt, video, log, seed = job
        if not (video.exists() and log.exists()):
            todo.append(job)
            continue
        try:
            old = json.loads(log.read_text(encoding="utf-8"))["config"]
            changes = setting_changes(old, settings_of(index, prompt, seed))
        except (ValueError, KeyError, TypeError):
            changes = ["its decision log is unreadable"]
        if changes and not overwrite:
            raise UserError(
                f"{log} was made with other settings ({'; '.join(changes[:3])}"
                f"{f'; and {len(changes) - 3} more' if len(changes) > 3 else ''}); use another `out_dir`, or "
                "`overwrite` to regenerate"
            )
        if changes:
            todo.append(job)
    return todo


def slugify(text: str, limit: int = 60) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_").lower()
    return slug[:limit] or "prompt"


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line (UTF-8 text); blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not a UTF-8 text file (byte {err.start}); give one prompt per line"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    prompts = [line.strip() for line in text.splitlines()]
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
        raise UserError("this backend has no text encoder; use a preset or a model folder")
    return encode_prompts(prompts, backend.encoder_factory, offload=offload)
