"""Writing videos as they are generated: `VideoFiles` appends each decoded block to the mp4 (and the PNG
frames) under a temporary name and renames the files when the video is complete, so nothing waits for the end
and no more than a block's frames are held; `write_video_files` runs a stream through it, then writes the latents
and the decision log. Batch runs over a prompt file are resumable and sharded over ranks (rank r takes prompts
r, r + W, ...)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from tokentrim.app import interrupts
from tokentrim.app.api import Shown, Video
from tokentrim.app.run_config import RunConfig
from tokentrim.errors import UserError
from tokentrim.files import atomic_dir, atomic_path, refusals_named
from tokentrim.pipelines import REGISTRY, BlockEvent, GenerationOutput, Start
from tokentrim.video import VideoWriter, write_png_frames

logger = logging.getLogger(__name__)


class VideoFiles:
    """The mp4 and the PNG frames (`frames_dir/00000.png`, ...) of one video, written as its blocks arrive. Both go
    under temporary names beside their destinations and are renamed by `close()` once complete; an error, an
    interrupt or `close(ok=False)` removes them. `start`: how an observed start shows (`Shown`)."""

    def __init__(
        self, video: Path | None, frames_dir: Path | None, fps: int, start: Start | torch.Tensor | None
    ):
        self._stack = contextlib.ExitStack()
        self.shown, self.written = Shown(start), 0
        # the PNG folder entered first, so it is renamed after the mp4's close succeeded (ffmpeg's exit status)
        self.png = self._stack.enter_context(atomic_dir(frames_dir)) if frames_dir is not None else None
        self.writer = self._stack.enter_context(VideoWriter(video, fps=fps)) if video is not None else None

    def add(self, event: BlockEvent) -> None:
        """One block's decoded frames into the files."""
        frames = self.shown.frames(event)
        if self.writer is not None:
            self.writer.append(frames)
        if self.png is not None:  # lossless copies of the decoded frames, numbered from 0
            write_png_frames(self.png, frames, start=self.written)
        self.written += len(frames)

    def written_from(self, events: Iterable[BlockEvent]) -> Iterator[BlockEvent]:
        """`events`, each written before it is passed on."""
        for event in events:
            self.add(event)
            yield event

    def __enter__(self) -> VideoFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._stack.close()
        else:
            self._stack.__exit__(exc_type, exc, tb)


def with_progress(events: Iterable[BlockEvent], blocks: int, desc: str) -> Iterator[BlockEvent]:
    """`events` with a progress bar over blocks on stderr (the command line's; the loops draw none)."""
    from tqdm.auto import tqdm

    with tqdm(total=blocks, desc=desc, unit="block") as bar:
        for event in events:
            interrupts.raise_if_received()  # a Ctrl-C Python lost (it landed in a destructor) stops here
            yield event
            bar.update(1)


def decision_log(settings: dict, out: GenerationOutput | Video) -> dict:
    """The decision log document: {"config", "blocks", "flowmo_losses", "timings"} (timings: the loop's wall
    time, no decoding or writing)."""
    return {
        "config": settings,
        "blocks": [r.to_dict() for r in out.records],
        "flowmo_losses": out.flowmo_losses,
        "timings": {"wall_s": out.wall_s},
    }


def write_video_files(
    events: Iterable[BlockEvent],
    *,
    settings: dict,
    fps: int,
    start: Start | torch.Tensor | None = None,
    video: Path | None = None,
    log: Path | None = None,
    latents: Path | None = None,
    frames_dir: Path | None = None,
) -> GenerationOutput:
    """Run a stream to its end, writing what is asked as it goes: the mp4 and PNG frames block by block (the
    events must carry decoded frames), then the latents of sample 0 and the decision log. All of them are written
    under temporary names and renamed together once every one is complete, the log last (a video counts as
    finished, for batch resume, once its log exists): a failure (a full disk, an interrupt) leaves none of them."""
    with contextlib.ExitStack() as stack:  # entered first, renamed last
        log_tmp = stack.enter_context(atomic_path(log)) if log is not None else None
        latents_tmp = stack.enter_context(atomic_path(latents)) if latents is not None else None
        files = stack.enter_context(VideoFiles(video, frames_dir, fps, start))
        # a stream the writing stopped is closed first (its progress bar ends its line before any message)
        stack.callback(getattr(events, "close", lambda: None))
        out = GenerationOutput.collect(files.written_from(events) if video or frames_dir else events)
        if latents_tmp is not None:
            with refusals_named(latents), open(latents_tmp, "wb") as f:  # torch.save reports the OS's error
                torch.save(out.latents[0].float(), f)
        if log_tmp is not None:
            with refusals_named(log):
                log_tmp.write_text(json.dumps(decision_log(settings, out), indent=2) + "\n", encoding="utf-8")
    return out


def switching_pipelines() -> list[str]:
    """The registered pipelines that can switch prompts."""
    return [name for name, entry in REGISTRY.items() if entry.pipeline.switching]


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
    return {
        "run": run.to_dict(),
        "seed": seed,
        "latent_frames": latent_frames,
        "observed_frames": observed_frames,
        "backend": backend,
        "dtype": str(dtype).removeprefix("torch."),
        "attention": attention,
        **extra,
    }


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


def unfinished(jobs: list[tuple], settings_of: Callable[..., dict], overwrite: bool = False) -> list[tuple]:
    """The batch jobs `(index, prompt, video, log, seed)` still to run (`settings_of(index=, prompt=, seed=)`). A job is finished when its video and its
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
            changes = setting_changes(old, settings_of(index=index, prompt=prompt, seed=seed))
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
