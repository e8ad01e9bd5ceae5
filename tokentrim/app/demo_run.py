"""The runs behind `tokentrim demo`, without the web page: a request is checked, generated in memory block by
block (baseline and TokenTrim alternating blocks, from one seed, in side-by-side mode) and reported as a stream
of `DemoUpdate`s — the newest frame of each panel, the decision records so far, a status line — that the page
renders. Videos and decision logs are written into the folder the caller gives, for the page's downloads.

Nothing here imports a web framework, so the tests drive `DemoRunner.stream` directly.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokentrim.app.args import MAX_SEED
from tokentrim.app.backends import Backend
from tokentrim.app.block_stream import BlockStream, Cancelled
from tokentrim.app.generate import BlockEvent, VideoResult, check_request, run_video
from tokentrim.app.run_config import RunConfig, default_config_path, load_run_config
from tokentrim.errors import UserError, shorten
from tokentrim.files import write_json
from tokentrim.pipelines import pipeline_names
from tokentrim.video import VideoWriter
from tokentrim_core.hook import BlockRecord

logger = logging.getLogger(__name__)

# Pixels: a video whose short side is smaller is shown upscaled (nearest neighbour) to this size.
DISPLAY_SIZE = 256
PRUNE_BORDER = 4  # display pixels of the red frame around the preview of a pruned-and-regenerated block
PRUNE_RED = (230, 30, 30)
FLOWMO_MODES = ("off", "first_block", "every_block")
# Library messages name fields in backticks; the page shows the labels of its inputs instead (cli_message's twin).
LABELS = {"num_frames": "Latent frames", "pipeline": "Pipeline", "tokentrim.p": "p", "tokentrim.lam": "λ",
          "flowmo.mode": "FlowMo", "seed": "Seed", "prompt": "Prompt", "scene": "Toy scene"}  # fmt: skip


def page_message(err: UserError) -> str:
    """The error text with `field` names replaced by the page's labels (other quoted text stays)."""
    return re.sub(r"`([^`]+)`", lambda m: LABELS.get(m.group(1), m.group(0)), str(err))


@dataclass(frozen=True)
class DemoRequest:
    """What the page asks for. Numbers arrive as the page sends them (floats, None when a field is empty) and
    are checked by `DemoRunner.check`, never rounded."""

    pipeline: str
    latent_frames: float | None
    seed: float | None
    tokentrim: bool = True
    p: float | None = 0.1
    lam: float | None = 2.0
    flowmo: str = "first_block"
    side_by_side: bool = False
    prompt: str | None = None  # models that read text
    scene: float | None = None  # the toy world model: a scene seed (its prompt and observed first block)


@dataclass
class Panel:
    """One video being generated: what the page shows of it, and its files once finished."""

    label: str  # "baseline" or "TokenTrim"
    records: list[BlockRecord] = field(default_factory=list)  # every decision so far
    preview: np.ndarray | None = None  # uint8 [h, w, 3]: the newest frame, upscaled for display
    frames: int = 0  # video frames decoded so far
    video: Path | None = None  # the finished mp4 at the model's resolution (download)
    display_video: Path | None = None  # the same, upscaled for the page's player (the same file when large)
    log: Path | None = None  # the decision log

    @property
    def pruned(self) -> list[int]:
        return [r.block for r in self.records if r.action == "prune"]


@dataclass
class DemoUpdate:
    panels: list[Panel]  # snapshots: later updates do not change them
    status: str  # one line for the page
    state: str  # "running" | "done" | "cancelled" | "error"


def _whole(value: object, label: str, low: int, high: int) -> int:
    """A page number that must be an integer in [low, high], as an int (10.0 is 10; 10.5 is an error)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{label} is empty: enter a whole number from {low} to {high}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a whole number, got {shorten(value, 40)}") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{label} must be a whole number, got {value}")
    if not low <= number <= high:
        raise UserError(f"{label} must be from {low} to {high}, got {int(number)}")
    return int(number)


def _real(value: object, label: str, check: Callable[[float], bool], expected: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{label} is empty: enter a number {expected}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a number {expected}, got {shorten(value, 40)}") from None
    if not math.isfinite(number) or not check(number):
        raise UserError(f"{label} must be a number {expected}, got {value}")
    return number


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 frames `[..., h, w, 3]` by an integer factor."""
    if factor == 1:
        return frame
    return frame.repeat(factor, axis=-3).repeat(factor, axis=-2)


def mark_pruned(frame: np.ndarray) -> np.ndarray:
    """The frame with a red border: the block it belongs to was pruned and regenerated."""
    framed = frame.copy()
    b = PRUNE_BORDER
    framed[:b], framed[-b:], framed[:, :b], framed[:, -b:] = PRUNE_RED, PRUNE_RED, PRUNE_RED, PRUNE_RED
    return framed


@dataclass
class _Output:
    """Where one panel's video goes as it is decoded: the mp4 for download and an upscaled one for display."""

    decoder: object  # the backend decoder's streaming() state
    writers: list[VideoWriter]
    scale: int = 0  # display factor, known at the first decoded block


class DemoRunner:
    """Checks page requests and streams their runs on one loaded backend. One run at a time: the page's queue
    serialises requests, and a lock makes sure of it for other callers."""

    def __init__(self, backend: Backend, preset: str | None, max_latent_frames: int, embed_cache: Path):
        self.backend = backend
        self.preset = preset
        self.max_latent_frames = max_latent_frames
        self.embed_cache = embed_cache  # prompt embeddings, inside the demo's own folder
        self._lock = threading.Lock()

    @property
    def toy(self) -> bool:
        return self.backend.name == "toy"

    def check(self, request: DemoRequest) -> list[tuple[str, RunConfig]]:
        """The runs a request asks for, as (panel label, run config); a `UserError` names what to change."""
        names = pipeline_names()
        if request.pipeline not in names:
            raise UserError(
                f"Pipeline must be one of {', '.join(names)}, got {shorten(request.pipeline, 40)}"
            )
        frames = _whole(request.latent_frames, "Latent frames", 1, self.max_latent_frames)
        _whole(request.seed, "Seed", 0, MAX_SEED)
        if request.flowmo not in FLOWMO_MODES:
            raise UserError(
                f"FlowMo must be one of {', '.join(FLOWMO_MODES)}, got {shorten(request.flowmo, 40)}"
            )
        if self.toy:
            _whole(request.scene, "Toy scene", 0, MAX_SEED)
        elif not (request.prompt or "").strip():
            raise UserError("Prompt is empty: describe the video to generate")
        trim = {"p": _real(request.p, "p", lambda x: 0 < x < 1, "with 0 < p < 1"),
                "lam": _real(request.lam, "λ", lambda x: x >= 0, ">= 0")}  # fmt: skip
        # (panel label, TokenTrim on, FlowMo mode); side by side, the baseline of the paper's comparisons (and
        # bench's): TokenTrim and FlowMo off
        chosen = [("TokenTrim" if request.tokentrim else "baseline", request.tokentrim, request.flowmo)]
        if request.side_by_side:
            chosen = [("baseline", False, "off"), ("TokenTrim", True, request.flowmo)]
        runs = []
        for label, enabled, flowmo in chosen:
            updates = {"pipeline": request.pipeline, "tokentrim": {**trim, "enabled": enabled},
                       "flowmo": {"mode": flowmo}}  # fmt: skip
            run = load_run_config(default_config_path(request.pipeline, self.preset), [], updates)
            observed = self.backend.model.config.frames_per_block if self.toy else 0
            check_request(self.backend.model.config, run, frames, observed)
            runs.append((label, run))
        return runs

    def inputs(self, request: DemoRequest) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """(prompt embeddings `[1, text_len, text_dim]`, observed prefix latents or None, recorded settings)."""
        from tokentrim.wan.text_encoder import encode_prompts

        prefix, settings = None, {}
        if self.toy:
            from tokentrim.toy import observed_start

            scene = int(request.scene)
            prompt, prefix = observed_start(scene)
            settings["scene"] = scene
        else:
            prompt = request.prompt.strip()
        if self.backend.encoder_factory is None or self.backend.decoder is None:
            raise UserError(
                "the demo needs a text encoder and a decoder: start it with a preset or a model folder"
            )
        embeds = encode_prompts([prompt], self.backend.encoder_factory, self.embed_cache, offload="cpu")
        return embeds, prefix, {"prompt": prompt, **settings}

    def stream(self, request: DemoRequest, out_dir: Path, cancel: threading.Event) -> Iterator[DemoUpdate]:
        """Run a request, yielding an update per decoded block and a last one that says how it ended. Never
        raises for a bad request or a failed run: the last update's status says what happened."""
        panels: list[Panel] = []
        try:
            runs = self.check(request)
            # Never wait here: the page's queue already serialises runs, and a wait could be forever if a
            # reader dropped a stream without closing it.
            if not self._lock.acquire(blocking=False):
                raise UserError("another run is in progress on this server; try again when it has finished")
            try:
                embeds, prefix, settings = self.inputs(request)
                panels = [Panel(label) for label, _ in runs]
                yield from self._generate(request, runs, panels, embeds, prefix, settings, out_dir, cancel)
            finally:
                self._lock.release()
        except Cancelled:
            done = ", ".join(f"{p.label} {len(p.records)} blocks" for p in panels)
            yield DemoUpdate(_snapshot(panels), f"Cancelled ({done}); the unfinished video was not saved.",
                             "cancelled")  # fmt: skip
        except UserError as err:
            yield DemoUpdate(_snapshot(panels), page_message(err), "error")
        except FloatingPointError as err:  # non-finite latents (tokentrim_core)
            yield DemoUpdate(_snapshot(panels), str(err), "error")
        except Exception as err:  # logged with its traceback; the page gets one line and keeps serving
            logger.exception("demo run failed")
            what = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
            yield DemoUpdate(
                _snapshot(panels), f"Internal error ({what}); the server log has the details.", "error"
            )

    def _generate(
        self,
        request: DemoRequest,
        runs: list[tuple[str, RunConfig]],
        panels: list[Panel],
        embeds: torch.Tensor,
        prefix: torch.Tensor | None,
        settings: dict,
        out_dir: Path,
        cancel: threading.Event,
    ) -> Iterator[DemoUpdate]:
        """The runs of a request, one block of each in turn, into their panels and files."""
        backend, frames, seed = self.backend, int(request.latent_frames), int(request.seed)
        device = getattr(backend.decoder, "device", torch.device("cpu"))
        start = time.perf_counter()

        def launch(run: RunConfig) -> BlockStream:
            return BlockStream(lambda on_block: run_video(backend, run, embeds, latent_frames=frames, seed=seed,
                               prefix=prefix, on_block=on_block, progress=False, settings=settings))  # fmt: skip

        streams = [launch(run) for _, run in runs]
        outputs = [_Output(backend.decoder.streaming(), []) for _ in runs]
        try:
            active = list(range(len(runs)))
            while active:
                for i in list(active):  # one block of each run in turn
                    if cancel.is_set():
                        raise Cancelled
                    event = streams[i].next_block()
                    if event is None:
                        active.remove(i)
                        self._finish(panels[i], outputs[i], streams[i].result, out_dir)
                        continue
                    with torch.inference_mode():
                        decoded = outputs[i].decoder.decode(event.latents.to(device))[0].cpu().numpy()
                    self._show(panels[i], outputs[i], event, decoded, out_dir)
                    yield DemoUpdate(_snapshot(panels), _progress(panels, frames, backend), "running")
        except BaseException:
            for output in outputs:  # unfinished videos are dropped (their temporary files removed)
                for writer in output.writers:
                    writer.close(ok=False)
            raise
        finally:
            for s in streams:
                s.close()
        wall = time.perf_counter() - start
        yield DemoUpdate(_snapshot(panels), _summary(panels, wall), "done")

    def _show(
        self, panel: Panel, output: _Output, event: BlockEvent, decoded: np.ndarray, out_dir: Path
    ) -> None:
        """A decoded block into the panel (preview, records) and the panel's videos."""
        if not output.writers:  # first block: the frame size is known now
            h, w = decoded.shape[1:3]
            output.scale = max(1, DISPLAY_SIZE // min(h, w))
            stem = out_dir / panel.label.lower()
            panel.video = stem.with_suffix(".mp4")
            panel.display_video = (
                stem.with_name(f"{stem.name}_display.mp4") if output.scale > 1 else panel.video
            )
            output.writers.append(VideoWriter(panel.video, fps=self.backend.fps))
            if output.scale > 1:
                output.writers.append(VideoWriter(panel.display_video, fps=self.backend.fps))
        output.writers[0].append(decoded)
        if output.scale > 1:
            output.writers[1].append(upscale(decoded, output.scale))
        block = event.start // self.backend.model.config.frames_per_block
        panel.records = event.records
        panel.frames += len(decoded)
        preview = upscale(decoded[-1], output.scale)
        panel.preview = mark_pruned(preview) if block in panel.pruned else preview

    def _finish(self, panel: Panel, output: _Output, result: VideoResult, out_dir: Path) -> None:
        for writer in output.writers:
            writer.close()
        output.writers.clear()
        panel.records = list(result.records)
        panel.log = write_json(out_dir / f"{panel.label.lower()}.json", result.log())


def _snapshot(panels: list[Panel]) -> list[Panel]:
    return [copy.copy(p) for p in panels]


def _progress(panels: list[Panel], latent_frames: int, backend: Backend) -> str:
    blocks = latent_frames // backend.model.config.frames_per_block
    parts = [f"{p.label}: block {len(p.records)}/{blocks}{_pruned_text(p)}" for p in panels]
    return "Generating: " + "; ".join(parts)


def block_list(blocks: list[int]) -> str:
    """Some block numbers in words: block 4, or blocks 3, 4."""
    return f"block{'s' if len(blocks) > 1 else ''} {', '.join(map(str, blocks))}"


def _pruned_text(panel: Panel) -> str:
    if panel.label == "baseline":
        return ""
    pruned = panel.pruned
    return f", {len(pruned)} pruned" + (f" ({block_list(pruned)})" if pruned else "")


def _summary(panels: list[Panel], wall: float) -> str:
    parts = [f"{p.label} {len(p.records)} blocks{_pruned_text(p)}" for p in panels]
    return f"Done in {wall:.1f} s: {'; '.join(parts)}. The videos and decision logs can be downloaded below."
