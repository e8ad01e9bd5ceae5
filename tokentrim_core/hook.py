"""The one extension point of a sampling loop: `BlockHook`, the typed interface between a loop and the TokenTrim
controller (or anything else that judges or changes blocks, such as an injected fault wrapping it).

A pipeline calls `propose` once per block with the candidate block's final x0, before the block is committed
to the KV cache. If the verdict says prune, the pipeline removes `positions` (spatial indices n = h * grid_w + w)
from the cached frames it is allowed to prune, regenerates the block, and calls `regenerated` with the new x0;
it repeats while that verdict also says prune. Then `accepted` sees the kept block and returns the latents the
pipeline commits to the cache and outputs (TokenTrim returns them unchanged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class Verdict:
    """What the hook asks the pipeline to do with the current block.

    prune: remove `positions` from the temporal KV cache and regenerate the block.
    positions: long [k], sorted spatial token indices to remove, or None when prune is False.
    keep: after regenerations, which attempt to commit (0 = the candidate, i = the i-th regeneration);
    None = the latest one.
    """

    prune: bool
    positions: torch.Tensor | None = None
    keep: int | None = None


@dataclass
class BlockRecord:
    """One block's TokenTrim decision (the rows of a decision log).

    action: "off" (TokenTrim disabled: scored only), "warmup", "accept", "prune" (then regenerated) or "switch"
    (the first block after a prompt switch, taken as the new reference).
    severity: D_t of the candidate (None for the first block: nothing to compare with); mean / std / threshold:
    the statistics it was judged against (threshold None while not armed); triggered: D_t > threshold.
    pruned_positions: the spatial positions removed from the cache (union over regenerations);
    tokens_removed: cache tokens removed per layer; regenerated_severity: D of the last regeneration;
    kept: which attempt was committed; unstable / scores: the candidate's unstable set S_t and the detector's
    score of each of its positions (the paper's rule: the drift d_i; the token-wise rule: z_i), None for a block
    without a drift value.
    """

    block: int
    frames: tuple[int, int]  # latent frames [start, stop)
    action: str = "off"
    triggered: bool = False
    severity: float | None = None
    mean: float | None = None
    std: float | None = None
    threshold: float | None = None
    pruned_positions: list[int] = field(default_factory=list)
    tokens_removed: int = 0
    regenerated_severity: float | None = None
    regenerations: int = 0
    kept: int = 0  # the attempt committed: 0 = the candidate, i = the i-th regeneration
    score_ms: float = 0.0
    prompt_switch: bool = False  # the prompt changed before this block
    unstable: list[int] | None = None  # the candidate's S_t, ascending
    scores: list[float] | None = None  # the detector's score of each position of `unstable`

    def to_dict(self) -> dict:
        """JSON-ready dict (frames as a [start, stop] list)."""
        out = dataclasses.asdict(self)
        out["frames"] = list(self.frames)
        return out


@runtime_checkable
class BlockHook(Protocol):
    """Accept / prune-and-regenerate decisions, one block at a time; a hook serves one video."""

    def propose(self, block: int, frames: range, x0: torch.Tensor) -> Verdict:
        """Judge a candidate block. x0 [B, F_block, C, H, W]: the block's final x0; `frames` its latent frames.

        Called once per block, before the block is committed to the cache.
        """
        ...

    def regenerated(self, block: int, x0: torch.Tensor, tokens_removed: int, regenerations: int) -> Verdict:
        """Judge the block regenerated after pruning; x0 [B, F_block, C, H, W] is the new candidate.

        tokens_removed: cache tokens the pipeline removed for this regeneration (positions x cached frames).
        regenerations: regenerations done for this block so far, this one included (1 for the first).
        Returns prune=True only to prune and regenerate again, which needs regenerations < max_regen.
        """
        ...

    def accepted(self, block: int, x0: torch.Tensor) -> torch.Tensor:
        """The kept attempt of a generated block, before its clean pass: returns the latents to commit and output
        (x0 itself unless the hook changes blocks: an experiment's fault). Observed blocks are not passed here. A
        hook that wraps another passes the changed latents on: they are the reference the next block is judged
        against."""
        ...

    def switched(self, block: int) -> None:
        """The prompt changes before `block` (pipelines with prompt switching call it, then re-cache)."""
        ...

    @property
    def records(self) -> list[BlockRecord]:
        """One record per judged block, in call order."""
        ...
