"""Summaries over seeds for `tokentrim stress`: means with medians and quartiles beside them, and paired 95 %
intervals from a percentile bootstrap over seeds (a fixed generator, so a report is reproducible).

Pairs are per seed: the same scene, sampler seed and fault with two methods. The bootstrap resamples seeds, so the
pairing is kept: a resample draws whole seeds, both methods' values with them.
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP = 4000  # resamples; the interval's end points move by < 1 % of its width between generator seeds
CONFIDENCE = 0.95


def _finite(values) -> np.ndarray:
    xs = np.asarray([v for v in values if v is not None], dtype=float)
    return xs[np.isfinite(xs)]


def _interval(samples: np.ndarray) -> list[float] | None:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    lo, hi = np.quantile(samples, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return [float(lo), float(hi)]


def _resamples(n: int) -> np.ndarray:
    """BOOTSTRAP x n seed indices drawn with replacement (generator seed 0)."""
    return np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP, n))


def spread(values) -> dict:
    """n, mean with its 95 % bootstrap interval, median, quartiles of the finite values (None where empty)."""
    xs = _finite(values)
    if xs.size == 0:
        return {"n": 0, "mean": None, "ci": None, "median": None, "q25": None, "q75": None}
    q25, med, q75 = np.quantile(xs, [0.25, 0.5, 0.75])
    ci = _interval(xs[_resamples(xs.size)].mean(axis=1)) if xs.size > 1 else [float(xs[0])] * 2
    return {"n": int(xs.size), "mean": float(xs.mean()), "ci": ci, "median": float(med), "q25": float(q25),
            "q75": float(q75)}  # fmt: skip


def paired(a, b) -> dict:
    """Method b against method a, paired by seed (entries where either is missing are dropped):
    - `difference`: b - a per seed: mean with its 95 % interval, median;
    - `ratio_of_means`: mean(b) / mean(a) with its 95 % interval (None when mean(a) is 0);
    - `median_ratio`: the median over seeds of b / a (seeds with a > 0), with its 95 % interval;
    - `b_lower`: the seeds where b < a, out of n."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    pairs = np.asarray([p for p in pairs if math.isfinite(p[0]) and math.isfinite(p[1])], dtype=float)
    if pairs.size == 0:
        return {"n": 0, "difference": spread([]), "ratio_of_means": None, "ratio_ci": None, "median_ratio": None,
                "median_ratio_ci": None, "b_lower": 0}  # fmt: skip
    x, y = pairs[:, 0], pairs[:, 1]
    idx = _resamples(len(x))
    out = {"n": int(len(x)), "difference": spread(y - x), "b_lower": int((y < x).sum())}
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = y[idx].mean(axis=1) / x[idx].mean(axis=1)
        out["ratio_of_means"] = float(y.mean() / x.mean()) if x.mean() > 0 else None
        out["ratio_ci"] = _interval(boot) if x.mean() > 0 and len(x) > 1 else None
    pos = x > 0
    if pos.any():
        ratios = y[pos] / x[pos]
        out["median_ratio"] = float(np.median(ratios))
        out["median_ratio_ci"] = (
            _interval(np.median(ratios[_resamples(len(ratios))], axis=1)) if len(ratios) > 1 else None
        )
    else:
        out["median_ratio"], out["median_ratio_ci"] = None, None
    return out
