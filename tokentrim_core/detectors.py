"""Drift detectors: which tokens are unstable, how severe a block's drift is, and when that is too much.

The controller (`tokentrim_core.trim.TokenTrimController`) owns the block lifecycle (warm-up, regenerations, the
accepted attempt, records); a detector owns the scoring rule and its statistics, so another rule plugs in beside
the paper's without touching the lifecycle. The paper's rule (`PaperRule`, the default) is Eq. 6–8.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .drift import unstable_set
from .stats import RunningStats


@runtime_checkable
class Detector(Protocol):
    """The scoring rule of a `TokenTrimController`.

    `select` runs on the device and must not synchronise with the host (the controller copies its result in one
    transfer). The controller compares a candidate's severity with `threshold()` once `armed`, and reports each
    accepted block's severity (and drift) to `update`.
    """

    def select(self, drift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unstable positions and severity of a candidate from its per-token drift.

        Shapes: drift [B, N] float32 -> (positions long [k] ascending, severity float32 0-dim), on drift's device.
        """
        ...

    @property
    def armed(self) -> bool:
        """Whether accepted blocks were seen, so that `threshold` is defined."""
        ...

    def threshold(self) -> float:
        """The trigger level: a severity strictly above it is drift."""
        ...

    def statistics(self) -> tuple[float | None, float | None]:
        """(mean, std) for the decision record; (None, None) while nothing was accepted."""
        ...

    def update(self, severity: float, drift: torch.Tensor) -> None:
        """An accepted block's severity (and its drift [B, N]) enters the statistics."""
        ...

    def reset(self) -> None:
        """Forget the statistics."""
        ...


class PaperRule:
    """The paper's detector (Eq. 6–8): S_t = the top-ceil(pN) tokens by drift, D_t = their mean drift, drift when
    D_t > mu + lam * sigma of the accepted blocks' D (population sigma, floored at `min_std`)."""

    def __init__(self, p: float, lam: float, min_std: float = 0.0) -> None:
        self.p, self.lam = p, lam
        self.stats = RunningStats(min_std=min_std)

    def select(self, drift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return unstable_set(drift, self.p)

    @property
    def armed(self) -> bool:
        return self.stats.count > 0

    def threshold(self) -> float:
        return self.stats.threshold(self.lam)

    def statistics(self) -> tuple[float | None, float | None]:
        if self.stats.count == 0:
            return None, None
        return self.stats.mean, self.stats.std

    def update(self, severity: float, drift: torch.Tensor) -> None:
        self.stats.update(severity)

    def reset(self) -> None:
        self.stats.reset()
