"""Drift detectors: which tokens are unstable, how severe a block's drift is, and when that is too much.

The controller (`tokentrim_core.trim.TokenTrimController`) owns the block lifecycle (warm-up, regenerations, the
accepted attempt, records); a detector owns the scoring rule and its statistics, so another rule plugs in beside
the paper's without touching the lifecycle. The paper's rule (`PaperRule`, the default) is Eq. 6–8;
`TokenwiseRule` (beyond the paper, docs/tokentrim.md#5-beyond-the-paper-the-token-wise-detector) scores each token's drift against its own history.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .drift import num_unstable
from .stats import RunningStats

# Keeps a token-wise score finite when every accepted drift so far was exactly 0 (a static video).
TOKENWISE_EPS = 1e-6


@runtime_checkable
class Detector(Protocol):
    """The scoring rule of a `TokenTrimController`.

    `select` runs on the device and must not synchronise with the host (the controller copies its result in one
    transfer). The controller compares a candidate's severity with `threshold()` once `armed`, and reports each
    accepted block's severity (and drift) to `update`.
    """

    def select(self, drift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unstable positions, severity, and the positions' scores of a candidate from its per-token drift.

        Shapes: drift [B, N] float32 -> (positions long [k] ascending, severity float32 0-dim, scores float32
        [k] in the order of the positions), on drift's device.
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


def batch_mean(drift: torch.Tensor) -> torch.Tensor:
    """One value per position: a KV cache is shared by the batch, so drift [B, N] is averaged over B -> [N]."""
    if drift.ndim == 2:
        return drift.float().mean(dim=0)
    if drift.ndim != 1:
        raise ValueError(f"drift must be [B, N] or [N], got shape {tuple(drift.shape)}")
    return drift.float()


def top_positions(scores: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ceil(pN) positions of the largest scores [N] (Eq. 6): (positions ascending, their mean score, their
    scores in the positions' order). Ties are broken by `torch.topk`; the mean does not depend on them.
    Shapes: [N] -> (long [k], float32 0-dim, float32 [k])."""
    values, indices = torch.topk(scores, num_unstable(p, scores.shape[0]), sorted=False)
    order = torch.argsort(indices)
    return indices[order], values.mean(), values[order]


class PaperRule:
    """The paper's detector (Eq. 6–8): S_t = the top-ceil(pN) tokens by drift, D_t = their mean drift, drift when
    D_t > mu + lam * sigma of the accepted blocks' D (population sigma, floored at `min_std`)."""

    def __init__(self, p: float, lam: float, min_std: float = 0.0) -> None:
        self.p, self.lam = p, lam
        self.stats = RunningStats(min_std=min_std)

    def select(self, drift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return top_positions(batch_mean(drift), self.p)

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


class TokenwiseRule:
    """Beyond the paper (docs/tokentrim.md#5-beyond-the-paper-the-token-wise-detector): each token's drift is scored against its own history.

    Over the accepted blocks, every spatial position i keeps the running mean m_i and population deviation s_i
    of its drift d_i (Eq. 5, averaged over the batch). A candidate's score is

        z_i = (d_i - m_i) / max(s_i, floor * mean_j(m_j), TOKENWISE_EPS)

    the deviation floored at `floor` times the mean drift of a token, so a position with a short or flat
    history cannot turn a small change into a large score. S_t = the top-ceil(pN) positions by z (Eq. 6 on z),
    the severity is their mean score, and the block is drift when it exceeds `level` (a fixed level: the scores
    are already relative to each token's history). Before any accepted block there is no history: S_t is the
    top-ceil(pN) by drift and every score is 0 (such a block is always in the warm-up).
    """

    def __init__(self, p: float, level: float, floor: float) -> None:
        self.p, self.level, self.floor = p, level, floor
        self.reset()

    def scores(self, drift: torch.Tensor) -> torch.Tensor:
        """z [N] of a candidate's drift [B, N] (or [N]) against the accepted history; needs one accepted block."""
        if self.count == 0:
            raise ValueError("TokenwiseRule.scores needs at least one accepted block")
        d = batch_mean(drift).double()
        std = (self._m2 / self.count).sqrt()
        floor = torch.clamp(self.floor * self._mean.mean(), min=TOKENWISE_EPS)
        return ((d - self._mean) / torch.maximum(std, floor)).float()

    def select(self, drift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = batch_mean(drift)
        if self.count == 0:  # no history: the raw drift ranks the positions, every score is 0 (NaN stays NaN)
            positions, _, _ = top_positions(d, self.p)
            scores = d[positions] * 0.0
            return positions, scores.mean(), scores
        return top_positions(self.scores(d), self.p)

    @property
    def armed(self) -> bool:
        return self.count > 0

    def threshold(self) -> float:
        return self.level

    def statistics(self) -> tuple[float | None, float | None]:
        return None, None  # per position, on the device; the record carries the unstable set's scores

    def update(self, severity: float, drift: torch.Tensor) -> None:
        """Welford's update of every position's mean and squared deviations, in float64."""
        d = batch_mean(drift).double()
        self.count += 1
        if self.count == 1:
            self._mean, self._m2 = d.clone(), torch.zeros_like(d)
            return
        delta = d - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (d - self._mean)

    def reset(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
