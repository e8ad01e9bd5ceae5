"""TokenTrim as a diffusers modular pipeline block (docs/integrations.md, "diffusers modular pipelines").

Real-time tools run autoregressive Wan models (Self Forcing, LongLive, Krea Realtime, ...) as diffusers modular
pipelines, one call per block: a denoise block turns the block's noise `latents` into its x0 (written back as
`latents`) while reading and writing the reference-layout `kv_cache` of the pipeline state, then a cache-update
block re-runs the clean block to write it into the cache. TokenTrim goes between the two:

    blocks = SequentialPipelineBlocks.from_blocks_dict(
        {..., "denoise": with_tokentrim(DenoiseBlock()), "clean_kv_cache": CleanKVCacheBlock(), ...})
    pipe = blocks.init_pipeline()
    pipe.update_components(..., tokentrim=TokenTrimComponent(TokenTrimConfig(), (2, 2), frame_tokens=1560))

`TokenTrimBlock` judges the candidate and, on a prune verdict, removes the unstable positions from the cache;
`TokenTrimRegenerate` (what `with_tokentrim` builds) then runs the denoise block again from the same noise and
random state, so that the cache-update block only ever sees the accepted block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.modular_pipelines import (
    ComponentSpec,
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
    PipelineState,
    SequentialPipelineBlocks,
)

from tokentrim_core.detectors import Detector
from tokentrim_core.hook import BlockRecord, Verdict
from tokentrim_core.ref_cache import CachePruner
from tokentrim_core.trim import TokenTrimConfig, TokenTrimController


class TokenTrimComponent:
    """What TokenTrim keeps from block to block in a modular pipeline: the controller, the cache's bookkeeping
    (`CachePruner`) and the last accepted block. One per video (`reset` between videos).

    patch: the DiT patch (ph, pw); frame_tokens: spatial tokens per latent frame (1560 for Wan2.1 at 480x832);
    sink_frames: the leading cached frames that are never pruned (the sink, or an anchor block); mode: the
    pruner's "remove" (the denoiser needs nothing) or "mask" (the denoiser attends only to
    `pruner.keep_mask(kv_cache)`).
    """

    def __init__(
        self,
        config: TokenTrimConfig,
        patch: tuple[int, int],
        frame_tokens: int,
        sink_frames: int = 0,
        mode: str = "remove",
        detector: Detector | None = None,
    ):
        self.controller = TokenTrimController(config, patch, detector)
        self.pruner = CachePruner(frame_tokens, sink_frames, mode)
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self.controller.reset()
        self.pruner.reset()
        self.previous: torch.Tensor | None = None  # the last accepted block, as judged
        self._attempts: list[torch.Tensor] = []
        self._removed = 0

    @property
    def records(self) -> list[BlockRecord]:
        return self.controller.records

    def step(
        self, kv_cache: Sequence[dict], x0: torch.Tensor, start_frame: int
    ) -> tuple[Verdict, torch.Tensor]:
        """Judge the block at `start_frame` (x0 [B, F, C, H, W]): its candidate, or its regeneration after a prune.
        On a prune verdict the unstable positions leave every cached frame before `start_frame` (the sink
        excepted); otherwise the block is settled. Returns the verdict and the latents to keep."""
        if self.controller.pending is None:
            frames = range(start_frame, start_frame + x0.shape[1])
            verdict = self.controller.judge(self.previous, x0, frames=frames)
        else:
            verdict = self.controller.regenerated(x0, tokens_removed=self._removed)
        self._attempts.append(x0.detach().clone())
        if verdict.prune:
            self._removed = self.pruner.prune(kv_cache, verdict.positions, range(start_frame)).tokens
            return verdict, x0
        self.controller.settle()
        kept = len(self._attempts) - 1 if verdict.keep is None else verdict.keep
        latest = kept == len(self._attempts) - 1
        self.previous, self._attempts = self._attempts[kept], []
        return verdict, x0 if latest else self.previous


class TokenTrimBlock(ModularPipelineBlocks):
    """Judges the denoised block (`latents`) and prunes `kv_cache` in place when TokenTrim says so; sets
    `tokentrim_regenerate` for `TokenTrimRegenerate`, and `tokentrim_decision` / `tokentrim_record`."""

    model_name = None

    @property
    def description(self) -> str:
        return (
            "TokenTrim: judges the denoised block against the last accepted one; on drift, removes the unstable "
            "spatial positions from the KV cache and asks for the block to be regenerated"
        )

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [
            ComponentSpec(
                "tokentrim", TokenTrimComponent, description="TokenTrim's controller and bookkeeping"
            )
        ]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam(
                "latents",
                required=True,
                type_hint=torch.Tensor,
                description="The denoised block x0 [B, F, C, H, W]",
            ),
            InputParam(
                "kv_cache",
                required=True,
                type_hint=list,
                description="Self-attention cache in the reference layout (one dict per layer)",
            ),
            InputParam(
                "current_start_frame",
                required=True,
                type_hint=int,
                description="First latent frame of the block",
            ),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("latents", type_hint=torch.Tensor, description="The block to keep"),
            OutputParam(
                "tokentrim_decision", type_hint=Verdict, description="TokenTrim's verdict on the block"
            ),
            OutputParam("tokentrim_record", type_hint=BlockRecord, description="The block's decision record"),
            OutputParam(
                "tokentrim_regenerate", type_hint=bool, description="Regenerate the block (cache pruned)"
            ),
        ]

    @torch.no_grad()
    def __call__(self, components, state: PipelineState):
        block_state = self.get_block_state(state)
        tokentrim = components.tokentrim
        if tokentrim is None:
            raise ValueError(
                "TokenTrimBlock needs its component: pipe.update_components(tokentrim=TokenTrimComponent(...))"
            )
        verdict, block_state.latents = tokentrim.step(
            block_state.kv_cache, block_state.latents, block_state.current_start_frame
        )
        block_state.tokentrim_decision = verdict
        block_state.tokentrim_record = tokentrim.controller.pending or tokentrim.records[-1]
        block_state.tokentrim_regenerate = verdict.prune
        self.set_block_state(state, block_state)
        return components, state


class TokenTrimRegenerate(SequentialPipelineBlocks):
    """Runs its blocks (a denoise block, then `TokenTrimBlock`) and, while TokenTrim asks for a regeneration, runs
    them again from the same input `latents` and the same state of the `generator` (a torch.Generator or a list
    of them): the regenerated block differs from the candidate only through the pruned cache. (A denoise block
    that draws from the global random state instead gets fresh re-noising draws.)"""

    block_classes = []
    block_names = []

    @property
    def description(self) -> str:
        return (
            "A denoise block followed by TokenTrimBlock, run again from the same noise while TokenTrim prunes"
        )

    def __call__(self, components, state: PipelineState):
        noise = state.get("latents")
        generator = state.get("generator")
        generators = [
            g
            for g in (generator if isinstance(generator, list) else [generator])
            if isinstance(g, torch.Generator)
        ]
        rng = [g.get_state() for g in generators]
        while True:
            components, state = super().__call__(components, state)
            if not state.get("tokentrim_regenerate"):
                return components, state
            state.set("latents", noise)
            for g, s in zip(generators, rng, strict=True):
                g.set_state(s)


def with_tokentrim(denoise: ModularPipelineBlocks) -> TokenTrimRegenerate:
    """`denoise` followed by `TokenTrimBlock`, regenerated while TokenTrim prunes: the drop-in for the denoise
    block of a modular pipeline (its component `tokentrim`: a `TokenTrimComponent`)."""
    return TokenTrimRegenerate.from_blocks_dict({"denoise": denoise, "tokentrim": TokenTrimBlock()})
