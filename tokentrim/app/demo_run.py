"""The runs behind `tokentrim demo`, without the web page: the page's values are checked, each run is a stream of
blocks (baseline and TokenTrim read one block in turn, from one seed, in side-by-side mode), and the page gets a
stream of `DemoUpdate`s — the newest frame of each panel, the decision records so far, a status line. Videos and
decision logs are written into the folder the caller gives, for the page's downloads, as the blocks come.

The page's run settings are the options declared with a `label` (`PAGE_OPTIONS`): their widgets, defaults and
checks come from the declarations. Nothing here imports a web framework, so the tests drive
`DemoRunner.stream` directly.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokentrim.app.api import Pipeline
from tokentrim.app.backends import Backend
from tokentrim.app.generate import decision_log, video_settings
from tokentrim.app.run_config import RUN_DEFAULTS, RunConfig, default_config_path, load_run_config
from tokentrim.errors import UserError, shorten
from tokentrim.files import write_json
from tokentrim.pipelines import BlockEvent, GenerationOutput, Request, pipeline_names
from tokentrim.pipelines.request import MAX_SEED
from tokentrim.video import VideoWriter
from tokentrim_core.flowmo import FlowMoConfig
from tokentrim_core.hook import BlockRecord
from tokentrim_core.options import Option, options
from tokentrim_core.trim import TokenTrimConfig

logger = logging.getLogger(__name__)

# Pixels: a video whose short side is smaller is shown upscaled (nearest neighbour) to this size.
DISPLAY_SIZE = 256
PRUNE_BORDER = 4  # display pixels of the red frame around the preview of a pruned-and-regenerated block
PRUNE_RED = (230, 30, 30)
# The page's own inputs besides the declared options, with their labels.
PAGE_LABELS = {
    "pipeline": "Pipeline",
    "prompt": "Prompt",
    "scene": "Toy scene",
    "side_by_side": "Side by side",
}


@dataclass(frozen=True)
class PageOption:
    """A run option on the page: its key in the page's values ("latent_frames", "tokentrim.p"), the declaration,
    its type and the default the page starts with."""

    key: str
    option: Option
    kind: type
    default: Any


def page_options() -> list[PageOption]:
    """The options declared with a label: the request's (length, seed), then TokenTrim's and FlowMo's, whose page
    defaults are the run config's (`RUN_DEFAULTS`)."""
    found = [
        PageOption(name, opt, kind, default)
        for name, (opt, kind, default) in options(Request).items()
        if opt.label
    ]
    for section, cls in (("tokentrim", TokenTrimConfig), ("flowmo", FlowMoConfig)):
        for name, (opt, kind, _) in options(cls).items():
            if opt.label:
                found.append(PageOption(f"{section}.{name}", opt, kind, getattr(RUN_DEFAULTS[section], name)))
    return found


PAGE_OPTIONS = page_options()
SCENE = PageOption(
    "scene",
    Option("a held-out scene: its prompt and observed first block", low=0, high=MAX_SEED, label="Toy scene"),
    int,
    None,
)
# Library messages name fields in backticks; the page shows the labels of its inputs instead (cli_message's twin).
LABELS = PAGE_LABELS | {o.key: o.option.label for o in PAGE_OPTIONS}


def page_message(err: UserError) -> str:
    """The error text with `field` names replaced by the page's labels (other quoted text stays)."""
    return re.sub(r"`([^`]+)`", lambda m: LABELS.get(m.group(1), m.group(0)), str(err))


def page_value(opt: PageOption, value: Any) -> Any:
    """A page value as its option's type (numbers arrive as floats, None when a field is empty), never rounded."""
    label = opt.option.label
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{label} is empty: enter {opt.option.expected(opt.kind)}")
    try:
        return opt.option.parse(label, value, opt.kind)
    except ValueError as err:
        raise UserError(str(err)) from None


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


class Cancelled(Exception):
    """The page's Cancel button was pressed."""


@dataclass
class Run:
    """One panel's run: its request, the stream of its blocks, its files and what its log needs."""

    label: str
    pipe: Pipeline
    request: Request
    settings: dict
    stream: Iterator[BlockEvent] | None = None
    # the mp4 for download, and an upscaled one for display
    writers: list[VideoWriter] = field(default_factory=list)
    scale: int = 0  # display factor, known at the first decoded block
    out: GenerationOutput = field(default_factory=lambda: GenerationOutput(torch.empty(0)))


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


class DemoRunner:
    """Checks page values and streams their runs on one loaded backend. One run at a time: the page's queue
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

    def check(self, values: dict[str, Any]) -> list[Run]:
        """The runs the page's values ask for (keys: the `PAGE_OPTIONS`' and `PAGE_LABELS`'; a missing one takes
        its default); a `UserError` names what to change."""
        names = pipeline_names()
        pipeline = values.get("pipeline", names[0])
        if pipeline not in names:
            raise UserError(f"Pipeline must be one of {', '.join(names)}, got {shorten(pipeline, 40)}")
        if self.backend.encoder_factory is None or self.backend.decoder is None:
            raise UserError(
                "the demo needs a text encoder and a decoder: start it with a preset or a model folder"
            )
        got = {o.key: page_value(o, values.get(o.key, o.default)) for o in PAGE_OPTIONS}
        if got["latent_frames"] > self.max_latent_frames:
            raise UserError(
                f"Latent frames must be at most {self.max_latent_frames} on this server, "
                f"got {got['latent_frames']}"
            )
        prompt, start, inputs = self._inputs(values)
        updates = {"pipeline": pipeline, "tokentrim": {}, "flowmo": {}}
        for key, value in got.items():
            if "." in key:
                section, name = key.split(".")
                updates[section][name] = value
        run = load_run_config(default_config_path(pipeline, self.preset), [], updates)
        chosen = [("TokenTrim" if run.tokentrim.enabled else "baseline", run)]
        if values.get("side_by_side"):  # the baseline of the paper's comparisons (and bench's), and TokenTrim
            trimmed = load_run_config(
                default_config_path(pipeline, self.preset),
                [],
                {**updates, "tokentrim": {**updates["tokentrim"], "enabled": True}},
            )
            chosen = [("baseline", trimmed.baseline()), ("TokenTrim", trimmed)]
        runs = []
        for label, run in chosen:
            pipe = Pipeline(self.backend, run, offload="cpu", embed_cache=self.embed_cache)
            request = pipe.request(prompt, latent_frames=got["latent_frames"], seed=got["seed"], start=start)
            pipe.check(request)
            runs.append(Run(label, pipe, request, self._settings(run, request, inputs)))
        return runs

    def _inputs(self, values: dict) -> tuple[str, torch.Tensor | None, dict]:
        """(prompt, observed first latents or None, what the log records about them)."""
        if self.toy:
            from tokentrim.toy import observed_start

            scene = page_value(SCENE, values.get("scene"))
            prompt, start = observed_start(scene)
            return prompt, start, {"prompt": prompt, "scene": scene}
        prompt = (values.get("prompt") or "").strip()
        if not prompt:
            raise UserError("Prompt is empty: describe the video to generate")
        return prompt, None, {"prompt": prompt}

    def _settings(self, run: RunConfig, request: Request, inputs: dict) -> dict:
        model = self.backend.model
        return video_settings(
            run,
            seed=request.seed,
            latent_frames=request.latent_frames,
            observed_frames=request.observed_frames,
            backend=self.backend.name,
            dtype=model.patch_embedding.weight.dtype,
            attention=model.attention_backend,
            **inputs,
        )

    def stream(self, values: dict[str, Any], out_dir: Path, cancel: threading.Event) -> Iterator[DemoUpdate]:
        """Run what the page asks for, yielding an update per decoded block and a last one that says how it ended.
        Never raises for bad values or a failed run: the last update's status says what happened."""
        panels: list[Panel] = []
        try:
            runs = self.check(values)
            # Never wait here: the page's queue already serialises runs, and a wait could be forever if a
            # reader dropped a stream without closing it.
            if not self._lock.acquire(blocking=False):
                raise UserError("another run is in progress on this server; try again when it has finished")
            try:
                panels = [Panel(run.label) for run in runs]
                yield from self._generate(runs, panels, out_dir, cancel)
            finally:
                self._lock.release()
        except Cancelled:
            done = ", ".join(f"{p.label} {len(p.records)} blocks" for p in panels)
            yield DemoUpdate(
                _snapshot(panels), f"Cancelled ({done}); the unfinished video was not saved.", "cancelled"
            )
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
        self, runs: list[Run], panels: list[Panel], out_dir: Path, cancel: threading.Event
    ) -> Iterator[DemoUpdate]:
        """The runs, one block of each in turn (a round robin over their streams), into their panels and files."""
        start, frames = time.perf_counter(), runs[0].request.latent_frames
        try:
            for run in runs:
                run.stream = run.pipe.run(run.request)
            active = list(zip(runs, panels, strict=True))
            while active:
                for run, panel in list(active):
                    if cancel.is_set():
                        raise Cancelled
                    event = next(run.stream, None)
                    if event is None:
                        active.remove((run, panel))
                        self._finish(run, panel, out_dir)
                        continue
                    self._show(run, panel, event, out_dir)
                    yield DemoUpdate(_snapshot(panels), _progress(panels, frames, self.backend), "running")
        except BaseException:
            for run in runs:  # unfinished videos are dropped (their temporary files removed)
                for writer in run.writers:
                    writer.close(ok=False)
            raise
        finally:
            for run in runs:
                if run.stream is not None:
                    run.stream.close()
        yield DemoUpdate(_snapshot(panels), _summary(panels, time.perf_counter() - start), "done")

    def _show(self, run: Run, panel: Panel, event: BlockEvent, out_dir: Path) -> None:
        """A decoded block into the panel (preview, records) and the panel's videos."""
        decoded = event.decoded[0].numpy()
        if not run.writers:  # first block: the frame size is known now
            h, w = decoded.shape[1:3]
            run.scale = max(1, DISPLAY_SIZE // min(h, w))
            stem = out_dir / panel.label.lower()
            panel.video = stem.with_suffix(".mp4")
            panel.display_video = stem.with_name(f"{stem.name}_display.mp4") if run.scale > 1 else panel.video
            run.writers.append(VideoWriter(panel.video, fps=self.backend.fps))
            if run.scale > 1:
                run.writers.append(VideoWriter(panel.display_video, fps=self.backend.fps))
        run.writers[0].append(decoded)
        if run.scale > 1:
            run.writers[1].append(upscale(decoded, run.scale))
        if event.record is not None:
            run.out.records.append(event.record)
        run.out.flowmo_losses += event.flowmo_losses
        run.out.wall_s += event.loop_s
        panel.records = list(run.out.records)
        panel.frames += len(decoded)
        preview = upscale(decoded[-1], run.scale)
        panel.preview = mark_pruned(preview) if event.block in panel.pruned else preview

    def _finish(self, run: Run, panel: Panel, out_dir: Path) -> None:
        for writer in run.writers:
            writer.close()
        run.writers.clear()
        panel.log = write_json(out_dir / f"{panel.label.lower()}.json", decision_log(run.settings, run.out))


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
