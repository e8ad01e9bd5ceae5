"""Exact binomial statistics for many pair verdicts: the sign test and the Clopper-Pearson interval.

Standard library only (no scipy): binomial probabilities are summed in log space with `math.lgamma`, and the
interval's end points are found by bisection on the binomial tail, which is monotone in p.
"""

from __future__ import annotations

import math


def binomial_pmf(k: int, n: int, p: float) -> float:
    """P(X = k) for X ~ Binomial(n, p)."""
    if p <= 0.0 or p >= 1.0:
        return float(k == (0 if p <= 0.0 else n))
    log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return math.exp(log + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p); 0 for k < 0, 1 for k >= n."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, math.fsum(binomial_pmf(i, n, p) for i in range(k + 1)))


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: ties are dropped, and under H0 wins ~ Binomial(wins + losses, 1/2).

    p = min(1, 2 P(X <= min(wins, losses))), the doubled smaller tail (the distribution is symmetric, so this
    equals the sum over all outcomes as or less likely than the observed one). No decisive pair gives p = 1.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf(min(wins, losses), n, 0.5))


def _bisect(f, target: float, increasing: bool) -> float:
    """p in [0, 1] with f(p) = target for a monotone f, to machine precision."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) confidence interval for a binomial proportion successes / n.

    Lower end: the p with P(X >= successes | p) = alpha / 2 (0 when successes = 0); upper end: the p with
    P(X <= successes | p) = alpha / 2 (1 when successes = n). n = 0 gives (0, 1).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    lower = (
        0.0 if successes == 0 else _bisect(lambda p: 1.0 - binomial_cdf(successes - 1, n, p), alpha / 2, True)
    )
    upper = 1.0 if successes == n else _bisect(lambda p: binomial_cdf(successes, n, p), alpha / 2, False)
    return lower, upper


def win_summary(verdicts: list[str], confidence: float = 0.95) -> dict:
    """Wins ("treated" preferred), ties and losses ("baseline" preferred) over pair verdicts, the sign-test
    p-value and the Clopper-Pearson interval for the win rate among decisive pairs."""
    wins, losses = verdicts.count("treated"), verdicts.count("baseline")
    ties = len(verdicts) - wins - losses
    n = wins + losses
    low, high = clopper_pearson(wins, n, confidence)
    return {
        "pairs": len(verdicts), "wins": wins, "ties": ties, "losses": losses,
        "win_rate": wins / n if n else None, "sign_test_p": sign_test_p(wins, losses),
        "win_rate_interval": [low, high], "confidence": confidence,
        "test": "exact two-sided binomial sign test over decisive pairs (ties dropped); Clopper-Pearson interval",
    }  # fmt: skip
