"""Running statistics of the drift severity over accepted blocks (paper Eq. 7)."""

from __future__ import annotations

import math


class RunningStats:
    """Cumulative mean and population standard deviation of the accepted D values (Eq. 7).

    mu = (1/|A|) sum D,  sigma = sqrt((1/|A|) sum (D - mu)^2): a plain cumulative mean and a population std
    (divide by |A|, not |A| - 1), no EMA and no window. `min_std` is an optional floor on sigma (default 0, the
    paper's rule); it keeps a single accepted value from giving a zero-width band. Values are kept as host floats
    (one per block, a few dozen per video) and summed with `math.fsum`.
    """

    def __init__(self, min_std: float = 0.0) -> None:
        if min_std < 0:
            raise ValueError(f"min_std must be >= 0, got {min_std}")
        self.min_std = min_std
        self.values: list[float] = []

    @property
    def count(self) -> int:
        return len(self.values)

    def update(self, value: float) -> None:
        """Add one accepted block's severity."""
        self.values.append(float(value))

    @property
    def mean(self) -> float:
        """mu_t; raises if no value was accepted yet."""
        if not self.values:
            raise ValueError("RunningStats.mean needs at least one accepted value")
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        """max(population sigma_t, min_std); raises if no value was accepted yet."""
        mu = self.mean
        var = math.fsum((v - mu) ** 2 for v in self.values) / len(self.values)
        return max(math.sqrt(var), self.min_std)

    def threshold(self, lam: float) -> float:
        """The trigger level mu_t + lam * sigma_t (Eq. 8)."""
        return self.mean + lam * self.std

    def reset(self) -> None:
        self.values.clear()
