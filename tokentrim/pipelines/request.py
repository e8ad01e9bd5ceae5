"""One request in, a stream of blocks out.

* `Request`: everything one video needs besides the loaded pipeline (model, sampler settings, VAE): the prompt,
  the length, the randomness, an observed start, prompt switches, TokenTrim and FlowMo. Frozen; `check(pipe)` is
  the one place these inputs are validated (every front end builds a `Request` and calls it, before any weights
  load: it runs on a pipeline built on the meta device too).
* `BlockEvent`: what `BlockPipeline.stream` yields each time frames become final, in time order.
* `GenerationOutput`: a whole run, collected from its events.

Text prompts and pixel starts (`Start`) are valid in a request, so front ends can check them before loading
anything; a loop itself takes prompt embeddings and latents, which `tokentrim.load(...)` pipelines (and the
commands) make from them with the text encoder and the VAE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from tokentrim.errors import UserError
from tokentrim_core.flowmo import FlowMoConfig
from tokentrim_core.hook import BlockHook, BlockRecord
from tokentrim_core.options import option, options
from tokentrim_core.trim import TokenTrimConfig


class BlockPipeline(Protocol):
    """What `Request.check` reads of a loop (`tokentrim.pipelines.common.BlockPipeline` has it all)."""

    title: str
    switching: bool
    model: Any  # its `.config`: the model's WanConfig
    config: Any  # its sampler config: `denoising_steps`

    @property
    def frames_per_block(self) -> int: ...

    @property
    def min_frames(self) -> int: ...

    def check_num_frames(self, num_frames: int) -> None: ...


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer; the reference's seeds are >= 0


@dataclass(frozen=True, eq=False)
class Start:
    """An observed start in pixels (an image, or the end of a video: `tokentrim.app.inputs`), encoded by the VAE into
    the first latent frames, and how it shows in the written video."""

    frames: np.ndarray  # uint8 [T, H, W, 3] at the model's frame size
    latent_frames: int  # what they encode to (a multiple of the block)
    drop: tuple[int, int] = (0, 0)  # decoded output frames [a, b) that are not shown
    lead: np.ndarray | None = None  # frames shown before the decoded ones
    settings: dict = field(default_factory=dict)  # what they were made from (recorded in the decision log)


@dataclass(frozen=True, eq=False)
class Request:
    """One video. Latents are `[B, F, C, H, W]`; B is the prompt embeddings' batch (1 for a text prompt).

    prompt: text, or its embeddings `[B, <= text_len, text_dim]` (rows past each prompt's tokens zero).
    seed, or noise `[B, F - P, C, H, W]` (the frames to generate) with a generator for the in-loop draws; the
    generator may be a CPU one for a model on another device (draws made on the CPU, copied over: the same video
    on every device). start: P observed first frames, clean latents `[B, P, C, H, W]` (P a multiple of the
    block) or a `Start` in pixels; they are committed as they are and returned unchanged, the last of them is
    shown to the hook, and generation continues after them (the references draw the initial noise for the
    generated frames only, docs/spec.md#rng-order). switches: prompt switches `(first latent frame, prompt)` in
    time order, each a block boundary after the observed frames (loops with `switching`).
    tokentrim: TokenTrim's settings (None: the plain reference loop, nothing judged); hook: another `BlockHook`
    instead (say, a fault wrapped around TokenTrim), serving this one video. decode: each event carries its
    decoded frames (the pipeline's VAE).
    """

    prompt: str | torch.Tensor
    latent_frames: int = option(
        MISSING,
        "latent frames in all, observed ones included (a multiple of the "
        "block; video frames = 1 + 4 (F - 1) with the Wan VAE)",
        low=1,
        flag="--latent-frames",
        label="Latent frames",
    )
    seed: int | None = option(
        None,
        "random seed of the initial noise and the in-loop draws",
        low=0,
        high=MAX_SEED,
        flag="--seed",
        label="Seed",
    )
    noise: torch.Tensor | None = None
    generator: torch.Generator | None = None
    start: torch.Tensor | Start | None = None
    switches: tuple[tuple[int, str | torch.Tensor], ...] = ()
    tokentrim: TokenTrimConfig | None = None
    flowmo: FlowMoConfig = FlowMoConfig()
    hook: BlockHook | None = None
    decode: bool = False

    @property
    def batch(self) -> int:
        return self.prompt.shape[0] if isinstance(self.prompt, torch.Tensor) else 1

    @property
    def observed_frames(self) -> int:
        """P, the observed first frames (0 without a start)."""
        if self.start is None:
            return 0
        return self.start.latent_frames if isinstance(self.start, Start) else self.start.shape[1]

    def check(self, pipe: BlockPipeline) -> None:
        """Raise a `UserError` naming the first input `pipe` cannot run (its model config, block, sampler limits).
        Works on a pipeline built on the meta device, before any weights load."""
        for name, (opt, kind, _) in options(Request).items():
            value = getattr(self, name)
            if not (value is None and name == "seed") and not opt.valid(value, kind):
                raise UserError(f"`{name}` must be {opt.expected(kind)}, got {value!r}", field=name)
        check_prompt(pipe, self.prompt, "prompt")
        pipe.check_num_frames(self.latent_frames)
        observed = self._check_start(pipe)
        self._check_randomness(pipe, observed)
        check_switches(pipe, self, observed)
        levels = len(pipe.config.denoising_steps)
        if self.flowmo.mode != "off" and max(self.flowmo.steps) >= levels:
            raise UserError(
                f"flowmo.steps {list(self.flowmo.steps)} must index the {levels} denoising steps of {pipe.title} "
                f"(0 .. {levels - 1})",
                field="flowmo.steps",
            )
        if self.hook is not None and self.tokentrim is not None:
            raise UserError("give `tokentrim` settings or a `hook` (which may wrap TokenTrim), not both")

    def _check_start(self, pipe: BlockPipeline) -> int:
        """The observed frames against the model and the loop: a multiple of the block, enough frames left."""
        block, minimum, observed = pipe.frames_per_block, pipe.min_frames, self.observed_frames
        if isinstance(self.start, torch.Tensor):
            cfg = pipe.model.config
            shape = (self.batch, cfg.in_dim, cfg.latent_height, cfg.latent_width)
            start = self.start
            if start.dim() != 5 or (start.shape[0], *start.shape[2:]) != shape or start.shape[1] % block:
                raise UserError(
                    f"the observed first frames must be latents [{self.batch}, P, {', '.join(map(str, shape[1:]))}] "
                    f"with P a multiple of {block}, got {list(start.shape)}"
                )
        elif self.start is not None and (observed <= 0 or observed % block):
            raise UserError(
                f"the observed start encodes to {observed} latent frames, not whole {block}-frame blocks"
            )
        if observed and self.latent_frames - observed < minimum:
            raise UserError(
                f"{pipe.title} with {observed} observed frames needs at least {observed + minimum} latent frames "
                f"in all, got {self.latent_frames}",
                field="latent_frames",
            )
        return observed

    def _check_randomness(self, pipe: BlockPipeline, observed: int) -> None:
        if self.seed is None and self.generator is None:
            raise UserError(
                "give a seed, or an initial noise tensor together with a torch.Generator", field="seed"
            )
        if self.seed is not None and self.generator is not None:
            raise UserError("give a seed or a torch.Generator, not both", field="seed")
        if self.noise is not None:
            cfg = pipe.model.config
            shape = [
                self.batch,
                self.latent_frames - observed,
                cfg.in_dim,
                cfg.latent_height,
                cfg.latent_width,
            ]
            if list(self.noise.shape) != shape:
                raise UserError(
                    f"noise must have shape {shape} (the frames to generate), got {list(self.noise.shape)}"
                )


@dataclass(frozen=True, eq=False)
class BlockEvent:
    """Frames that just became final. `latents` is a view of the run's output on the CPU (read it, do not change
    it); `loop_s` is the host time the loop spent on this block (the first event: with the run's set-up), not
    counting the reader's time between events nor the decoding (`decode_s`). On CUDA the host runs ahead of the
    device: synchronise before reading a clock for device time (`tokentrim bench` does)."""

    block: int
    frames: range  # latent frames [start, stop)
    latents: torch.Tensor  # [B, f, C, H, W], the model dtype
    record: BlockRecord | None  # the hook's decision on this block (None: not judged)
    observed: bool = False  # committed as given (a start), not generated
    flowmo_losses: tuple[list[float], ...] = ()  # FlowMo calls since the previous event: loss per iteration
    decoded: torch.Tensor | None = None  # uint8 [B, t, H, W, 3] on the CPU, when the request asks for it
    loop_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class GenerationOutput:
    """A whole run: latents `[B, F, C, H, W]` on the CPU, decoded frames `uint8 [B, T, H, W, 3]` if asked for,
    one decision record per judged block, FlowMo's losses per guidance call, the loop's time (`loop_s` summed)."""

    latents: torch.Tensor
    frames: torch.Tensor | None = None
    records: list[BlockRecord] = field(default_factory=list)
    flowmo_losses: list[list[float]] = field(default_factory=list)
    wall_s: float = 0.0

    @classmethod
    def collect(cls, events: Iterable[BlockEvent], frames: bool = False) -> GenerationOutput:
        """Run `events` (a stream, or a reader's generator around one) to its end; `frames`: keep the decoded
        frames (a whole video of them: writers that stream frames to a file keep none)."""
        latents, decoded, out = [], [], cls(torch.empty(0))
        for event in events:
            latents.append(event.latents)
            if frames and event.decoded is not None:
                decoded.append(event.decoded)
            if event.record is not None:
                out.records.append(event.record)
            out.flowmo_losses += event.flowmo_losses
            out.wall_s += event.loop_s
        out.latents = torch.cat(latents, dim=1)
        out.frames = torch.cat(decoded, dim=1) if decoded else None
        return out


def check_prompt(pipe: BlockPipeline, prompt: str | torch.Tensor, what: str) -> None:
    """A text (non-empty) or prompt embeddings `[B, <= text_len, text_dim]` of this model's text encoder."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"`{what}` is empty; describe the video to generate", field=what)
        return
    cfg = pipe.model.config
    if (
        not isinstance(prompt, torch.Tensor)
        or prompt.dim() != 3
        or prompt.shape[2] != cfg.text_dim
        or (prompt.shape[1] > cfg.text_len)
    ):
        shape = list(prompt.shape) if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise UserError(
            f"prompt_embeds must be [B, <= {cfg.text_len}, {cfg.text_dim}], got {shape}; was it made by the text "
            "encoder of this model?"
        )


def check_switches(pipe: BlockPipeline, request: Request, observed: int) -> None:
    """Prompt switches: a loop that can re-cache, increasing block boundaries after the observed frames and before
    the end, each prompt like the first."""
    if not request.switches:
        return
    if not pipe.switching:
        raise UserError(f"prompt switching is not available for {pipe.title} (its loop cannot re-cache)")
    frames, block, end = [f for f, _ in request.switches], pipe.frames_per_block, request.latent_frames
    if any(f % block or not observed < f < end for f in frames) or frames != sorted(set(frames)):
        raise UserError(
            f"prompt switches must be increasing block boundaries (multiples of {block}) after the observed frames "
            f"and before {end}, got {frames}"
        )
    for _, prompt in request.switches:
        check_prompt(pipe, prompt, "prompt")
        first = request.prompt
        if (
            isinstance(prompt, torch.Tensor)
            and isinstance(first, torch.Tensor)
            and (prompt.shape[0] != first.shape[0] or prompt.shape[2:] != first.shape[2:])
        ):
            raise UserError(
                f"a switch's prompt_embeds must be like the first prompt's, got {list(prompt.shape)}"
            )


def check_frames(num_frames: int, block: int, minimum: int, pipeline: str) -> None:
    """Latent-frame count checks common to every loop. There is no upper limit: RoPE positions past the
    precomputed table are computed exactly (`tokentrim.wan.rope.RopeTable`)."""
    if (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, int)
        or num_frames % block
        or num_frames <= 0
    ):
        raise UserError(
            f"`latent_frames` must be a positive multiple of {block} for {pipeline}, got {num_frames}",
            field="latent_frames",
        )
    if num_frames < minimum:
        raise UserError(
            f"{pipeline} needs at least {minimum} latent frames (one full window), got {num_frames}; "
            f"use `latent_frames` {minimum} or more",
            field="latent_frames",
        )
