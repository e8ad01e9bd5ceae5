"""The Python API: `tokentrim.load(...)` gives a `Pipeline` — a model with its loop, its run settings, its text
encoder and its VAE — that turns a prompt into a video in one call, or block by block::

    pipe = tokentrim.load("self_forcing", preset="toy")       # or model_dir=..., checkpoint=...
    video = pipe.generate("a red circle bounces", latent_frames=30, seed=0)
    video.frames                                              # uint8 [T, H, W, 3]; .latents, .records
    for block in pipe.stream("a red circle bounces", latent_frames=30, seed=0):
        block.decoded, block.record                           # frames and TokenTrim's decision, as they come

Text encoding (with the encoder offloaded after it, `offload`), the VAE encoding of an image or video start and
the decoding of each block happen inside. The commands (`tokentrim generate`, `demo`, `compare`, ...) use the
same class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokentrim.app.backends import Backend, load_backend, pick_device, pick_dtype
from tokentrim.app.run_config import RunConfig, default_config_path, load_run_config
from tokentrim.errors import UserError
from tokentrim.pipelines import BlockEvent, GenerationOutput, Request, Start
from tokentrim_core.hook import BlockRecord


@dataclass
class Video:
    """One generated video: `frames` uint8 `[T, H, W, 3]` of the first sample as it is shown (an image start once,
    a kept video start before it; None without a VAE), `latents` `[B, F, C, H, W]` on the CPU, one TokenTrim
    decision per judged block, FlowMo's losses per guidance call, the loop's time in seconds."""

    frames: np.ndarray | None
    latents: torch.Tensor
    records: list[BlockRecord] = field(default_factory=list)
    flowmo_losses: list[list[float]] = field(default_factory=list)
    wall_s: float = 0.0


class Shown:
    """The frames of a video as it is shown, from its decoded blocks: a start's frames `[a, b)` of `drop` left
    out, its `lead` first (`Start`). One sample; holds nothing but a frame count."""

    def __init__(self, start: Start | torch.Tensor | None):
        self.drop = start.drop if isinstance(start, Start) else (0, 0)
        self.lead = start.lead if isinstance(start, Start) else None
        self.decoded = 0  # frames decoded so far

    def frames(self, event: BlockEvent, sample: int = 0) -> np.ndarray:
        """The shown frames of one event's decoded block (uint8 `[t, H, W, 3]`, possibly empty)."""
        chunk = event.decoded[sample].numpy()
        keep = [i for i in range(len(chunk)) if not self.drop[0] <= self.decoded + i < self.drop[1]]
        self.decoded += len(chunk)
        shown = chunk if len(keep) == len(chunk) else chunk[keep]
        if self.lead is not None:
            shown, self.lead = np.concatenate([self.lead, shown]), None
        return shown


class Pipeline:
    """A loaded model with its loop (`loop`, a `BlockPipeline` with the VAE), run settings (`run`), text encoder
    and VAE. `request(...)` makes a `Request` with the run's TokenTrim and FlowMo settings; `run(request)` streams
    any request (text and pixel starts encoded first); `stream(prompt, ...)` and `generate(prompt, ...)` do both."""

    def __init__(
        self, backend: Backend, run: RunConfig, offload: str = "cpu", embed_cache: Path | None = None
    ):
        self.backend, self.run_config = backend, run
        self.loop = run.loop(backend.model, backend.decoder)
        self.offload, self.embed_cache = offload, embed_cache

    @property
    def name(self) -> str:
        """The weights' name, as decision logs record it."""
        return self.backend.name

    @property
    def fps(self) -> int:
        return self.backend.fps

    def request(
        self, prompt: str | torch.Tensor, *, latent_frames: int, seed: int | None = 0, **fields
    ) -> Request:
        """A `Request` with this pipeline's TokenTrim and FlowMo settings, decoding when there is a VAE; `fields`
        set its other fields (start=, switches=, tokentrim=, flowmo=, hook=, noise= with generator= and seed=None,
        decode=)."""
        fields.setdefault("decode", self.backend.decoder is not None)
        return self.run_config.request(prompt, latent_frames, seed=seed, **fields)

    def check(self, request: Request) -> None:
        request.check(self.loop)

    def encode(self, requests: Sequence[Request]) -> list[Request]:
        """The requests with their text prompts as embeddings (every text of every request in one pass of the
        text encoder, then offloaded) and their pixel starts as latents (the VAE)."""
        texts = [r.prompt for r in requests if isinstance(r.prompt, str)]
        texts += [p for r in requests for _, p in r.switches if isinstance(p, str)]
        embeds = dict(zip(texts, self.embed(texts), strict=True)) if texts else {}

        def embedded(prompt):
            return embeds[prompt][None] if isinstance(prompt, str) else prompt

        out = []
        for r in requests:
            start = r.start
            if isinstance(start, Start):
                if self.backend.decoder is None:
                    raise UserError("an image or video start needs a backend with a VAE")
                start = self.backend.decoder.encode(torch.from_numpy(start.frames)[None])
                assert start.shape[1] == r.start.latent_frames, "the start encodes to the frames it said"
            switches = tuple((f, embedded(p)) for f, p in r.switches)
            out.append(dataclasses.replace(r, prompt=embedded(r.prompt), start=start, switches=switches))
        return out

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Prompt embeddings `[len(texts), text_len, text_dim]` (one pass of the text encoder, then offloaded)."""
        from tokentrim.wan.text_encoder import encode_prompts

        if self.backend.encoder_factory is None:
            raise UserError(
                "this backend has no text encoder: give prompt embeddings, or load a preset or a model folder"
            )
        return encode_prompts(texts, self.backend.encoder_factory, self.embed_cache, offload=self.offload)

    def run(self, request: Request) -> Iterator[BlockEvent]:
        """Stream a request: its text and pixel start encoded, then `BlockPipeline.stream`."""
        self.check(request)
        return self.loop.stream(self.encode([request])[0])

    def stream(
        self, prompt: str | torch.Tensor, *, latent_frames: int, seed: int | None = 0, **fields
    ) -> Iterator[BlockEvent]:
        """The blocks of a video as they become final (see `request` for the arguments)."""
        return self.run(self.request(prompt, latent_frames=latent_frames, seed=seed, **fields))

    def generate(
        self, prompt: str | torch.Tensor, *, latent_frames: int, seed: int | None = 0, **fields
    ) -> Video:
        """A whole video (see `request` for the arguments)."""
        request = self.request(prompt, latent_frames=latent_frames, seed=seed, **fields)
        shown, frames = Shown(request.start), []

        def showing(events):
            for event in events:
                if event.decoded is not None:
                    frames.append(shown.frames(event))
                yield event

        out = GenerationOutput.collect(showing(self.run(request)))
        video = np.concatenate(frames) if frames else None
        return Video(video, out.latents, out.records, out.flowmo_losses, out.wall_s)


def load(
    pipeline: str = "self_forcing",
    *,
    preset: str | None = None,
    model_dir: str | None = None,
    checkpoint: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    dtype: str | None = None,
    use_ema: bool | None = None,
    lora: str | None = None,
    lora_alpha: float | None = None,
    attention: str = "sdpa",
    offload: str = "cpu",
    decoder: bool = True,
    random_weights: bool = False,
) -> Pipeline:
    """A pipeline ready to generate: the weights of a `preset` ("toy", "tiny") or of the official files
    (`model_dir` = the Wan2.1-T2V-1.3B folder, `checkpoint` = the pipeline's DiT checkpoint), with the run config
    of `pipeline` (`config`: another YAML file; `overrides`: "key=value" strings, e.g. "tokentrim.p=0.05").
    device: cpu / cuda[:N] (default: CUDA when there is one); dtype: bf16 / fp32 / fp16 (default: bf16 on CUDA,
    fp32 on the CPU); offload: what happens to the text encoder after encoding (none, cpu, free); decoder: load the
    VAE; random_weights: the full-size DiT with random weights and neither text encoder nor VAE (benchmarks)."""
    from tokentrim.wan.attention import check_backend

    run = load_run_config(
        config or default_config_path(pipeline, preset), list(overrides), {"pipeline": pipeline}
    )
    chosen = pick_device(device)
    backend = load_backend(
        preset=preset,
        model_dir=model_dir,
        checkpoint=checkpoint,
        device=chosen,
        dtype=pick_dtype(dtype, chosen),
        use_ema=use_ema,
        decoder=decoder,
        lora=lora,
        lora_alpha=lora_alpha,
        random_weights=random_weights,
    )
    backend.model.attention_backend = check_backend(attention)
    return Pipeline(backend, run, offload=offload)
