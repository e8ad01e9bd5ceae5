"""Causal Forcing frame-wise inference (docs/spec.md#frame-wise): the Self Forcing block loop with blocks of one
latent frame, a step list for every block but the first generated one, which takes its own (the reference's
`denoising_step_list_first_chunk`, the "first-frame 4-step" of the 2- and 1-step models), and a clean pass per
frame. Causal Forcing chunk-wise is the Self Forcing loop itself and its long-video model the Rolling Forcing loop
with a 4-level window (docs/spec.md#chunk-wise, docs/spec.md#long-video): they are run configs of those pipelines
(`configs/causal_forcing/`).

Up to `cache_frames` (21) frames the cache is the reference's global cache; beyond, as for Self Forcing, the
oldest frames after `sink_frames` pinned ones are evicted (the reference stops at 21 frames).
TokenTrim judges each frame (its summary is that one frame). FlowMo's loss needs three frames, so a guided frame
is scored together with the two final frames before it (held fixed); frames with fewer than two predecessors are
not guided. `first_block` guides the frames of the first three-frame chunk that can be scored (frame 2 from text;
frames 1-2 after an image), `every_block` every frame from there on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokentrim.pipelines.common import Rollout
from tokentrim.pipelines.self_forcing import SelfForcingConfig, SelfForcingPipeline
from tokentrim.wan.scheduler import check_sampler_steps

FLOWMO_FRAMES = 3  # motion_variance needs two frame differences (tokentrim_core.flowmo)


@dataclass(frozen=True)
class CausalForcingFramewiseConfig(SelfForcingConfig):
    """Sampler settings (`configs/causal_forcing_dmd_framewise*.yaml` of the reference, plus the rolling cache):
    Self Forcing's, and first_block_steps, the first generated frame's step list (empty: `denoising_steps`),
    warped the same way."""

    first_block_steps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.first_block_steps:
            check_sampler_steps(self.first_block_steps, self.timestep_shift)


class CausalForcingFramewisePipeline(SelfForcingPipeline):
    title = "Causal Forcing frame-wise"
    config_class = CausalForcingFramewiseConfig

    def __init__(self, model, config=None, vae=None, *, cache: str | None = None):
        super().__init__(model, config, vae, cache=cache)
        first = self.config.first_block_steps
        self.first_timesteps = self.warp(first) if first else self.timesteps

    @property
    def frames_per_block(self) -> int:
        return 1

    def block_steps(self, r: Rollout, j: int) -> torch.Tensor:
        """The first generated frame (after any observed ones) takes the first-block list (docs/spec.md#frame-wise)."""
        return self.first_timesteps.to(r.steps.device) if j == r.observed else r.steps

    def guided(self, r: Rollout, j: int) -> bool:
        if j < FLOWMO_FRAMES - 1 or r.flowmo.mode == "off":
            return False
        return r.flowmo.mode == "every_block" or j < FLOWMO_FRAMES  # first_block: the first 3-frame chunk

    def guide(
        self, r: Rollout, x: torch.Tensor, t: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """FlowMo on this frame, scored with the two final frames before it."""
        context = r.output[:, start - (FLOWMO_FRAMES - 1) : start]
        return r.guide(x, t, start, context=context)
