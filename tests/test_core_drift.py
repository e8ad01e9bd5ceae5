"""Scoring functions and running statistics against hand-computed values (paper Eq. 3–7)."""

import math
from fractions import Fraction

import pytest
import torch

from tokentrim_core import RunningStats, latent_summary, num_unstable, token_drift, unstable_set


def test_latent_summary_frame_mean_and_token_order():
    # B=1, F=3, C=2, H=4, W=6, patch 2x3 -> grid 2x2, N=4, D=2*2*3=12
    x = torch.arange(3 * 2 * 4 * 6, dtype=torch.float64).reshape(1, 3, 2, 4, 6)
    x[0, 1] += 30.0
    x[0, 2] -= 60.0  # frame offsets 0, +30, -60 average to -10
    z = latent_summary(x, (2, 3))
    assert z.shape == (1, 4, 12) and z.dtype == torch.float32
    for gh in range(2):
        for gw in range(2):
            n = gh * 2 + gw  # row-major over the patch grid
            expected = []
            for c in range(2):
                for i in range(2):
                    for j in range(3):
                        h, w = gh * 2 + i, gw * 3 + j
                        frames = [float(x[0, f, c, h, w]) for f in range(3)]
                        expected.append(sum(frames) / 3)
            assert z[0, n].tolist() == pytest.approx(expected)


def test_latent_summary_rejects_bad_shapes():
    with pytest.raises(ValueError, match="not divisible"):
        latent_summary(torch.zeros(1, 3, 4, 5, 4), (2, 2))
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        latent_summary(torch.zeros(3, 4, 4, 4), (2, 2))


def test_token_drift_is_l2_over_token_dim():
    z_prev = torch.zeros(2, 3, 3)
    z = torch.tensor([[[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], [[0.0, 0.0, 1.0]] * 3])
    d = token_drift(z, z_prev)
    assert d.shape == (2, 3)
    assert d.flatten().tolist() == pytest.approx([3.0, 0.0, 5.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="shapes differ"):
        token_drift(z, torch.zeros(2, 3, 4))


@pytest.mark.parametrize(
    "p, n",
    [
        (0.1, 1560),
        (0.05, 1560),
        (0.2, 1560),
        (0.07, 100),
        (0.3, 10),
        (0.1, 4),
        (0.26, 4),
        (0.999, 4),
        (0.1, 30),
    ],
)
def test_num_unstable_is_exact_ceil(p, n):
    expected = math.ceil(Fraction(str(p)) * n)  # exact decimal arithmetic
    assert num_unstable(p, n) == expected


def test_num_unstable_named_cases_and_errors():
    assert num_unstable(0.1, 1560) == 156
    assert num_unstable(0.07, 100) == 7  # 0.07 * 100 == 7.000000000000001 in floats
    assert num_unstable(0.001, 10) == 1  # never empty
    for p in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="0 < p < 1"):
            num_unstable(p, 10)


def test_unstable_set_topk_and_severity():
    d = torch.tensor([0.5, 4.0, 1.0, 3.0, 0.0, 2.0, 0.1, 0.2, 0.3, 0.4])
    idx, sev = unstable_set(d, 0.3)  # k = 3: values 4, 3, 2 at 1, 3, 5
    assert idx.dtype == torch.long and idx.tolist() == [1, 3, 5]
    assert sev.ndim == 0 and float(sev) == pytest.approx((4.0 + 3.0 + 2.0) / 3)


def test_unstable_set_averages_batch_first():
    d = torch.tensor([[1.0, 5.0, 0.0, 2.0], [3.0, 1.0, 0.0, 0.0]])  # batch mean [2, 3, 0, 1]
    idx, sev = unstable_set(d, 0.5)
    assert idx.tolist() == [0, 1]
    assert float(sev) == pytest.approx(2.5)


def test_running_stats_population_std_and_threshold():
    s = RunningStats()
    for v in [2, 4, 4, 4, 5, 5, 7, 9]:  # textbook example: mean 5, population std 2 (sample std 2.138)
        s.update(v)
    assert s.count == 8
    assert s.mean == pytest.approx(5.0)
    assert s.std == pytest.approx(2.0)
    assert s.threshold(2.0) == pytest.approx(9.0)


def test_running_stats_single_value_and_floor():
    s = RunningStats()
    s.update(1.5)
    assert s.std == 0.0 and s.threshold(2.0) == 1.5
    floored = RunningStats(min_std=0.25)
    floored.update(1.5)
    assert floored.threshold(2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least one"):
        RunningStats().threshold(2.0)
    with pytest.raises(ValueError, match="min_std"):
        RunningStats(min_std=-1.0)
