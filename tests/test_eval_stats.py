"""Exact binomial statistics against values computed by hand (with exact fractions) and published values."""

from fractions import Fraction
from math import comb

import pytest

from tokentrim.eval.stats import binomial_cdf, clopper_pearson, sign_test_p, win_summary


def exact_tail(k: int, n: int) -> Fraction:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly: sum of C(n, i) / 2^n."""
    return Fraction(sum(comb(n, i) for i in range(k + 1)), 2**n)


@pytest.mark.parametrize(
    "wins, losses, expected",
    [
        (9, 1, Fraction(2 * (1 + 10), 1024)),  # 2 P(X <= 1), n = 10: 22/1024
        (10, 0, Fraction(2, 1024)),
        (3, 7, Fraction(2 * (1 + 10 + 45 + 120), 1024)),  # 352/1024
        (6, 2, Fraction(2 * (1 + 8 + 28), 256)),  # 74/256
        (5, 5, Fraction(1)),  # 2 P(X <= 5) > 1 -> capped at 1
        (0, 0, Fraction(1)),  # no decisive pair
        (1, 0, Fraction(1)),  # 2 * 1/2
    ],
)  # fmt: skip
def test_sign_test_hand_values(wins, losses, expected):
    assert sign_test_p(wins, losses) == pytest.approx(float(expected), rel=1e-12)
    assert sign_test_p(losses, wins) == pytest.approx(float(expected), rel=1e-12)  # two-sided


def test_sign_test_matches_exact_sum_for_larger_n():
    for wins, losses in [(40, 20), (17, 33), (100, 80)]:
        n = wins + losses
        expected = min(1, 2 * exact_tail(min(wins, losses), n))
        assert sign_test_p(wins, losses) == pytest.approx(float(expected), rel=1e-9)


def test_binomial_cdf_against_exact_fractions():
    assert binomial_cdf(3, 10, 0.5) == pytest.approx(float(exact_tail(3, 10)), rel=1e-12)
    p = Fraction(3, 10)
    exact = sum(comb(12, i) * p**i * (1 - p) ** (12 - i) for i in range(5))
    assert binomial_cdf(4, 12, 0.3) == pytest.approx(float(exact), rel=1e-12)
    assert binomial_cdf(-1, 5, 0.5) == 0.0 and binomial_cdf(5, 5, 0.5) == 1.0


def test_clopper_pearson_closed_forms_and_published_value():
    # all successes: the lower end solves p^n = alpha/2; no successes: (1 - p)^n = alpha/2
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0), abs=1e-9)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)), abs=1e-9)
    # 5 of 10: the commonly tabulated exact 95 % interval (0.1871, 0.8129)
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.1871, abs=1e-4) and high == pytest.approx(0.8129, abs=1e-4)
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(4, 3)


def test_clopper_pearson_end_points_solve_the_defining_equations():
    x, n = 7, 20
    low, high = clopper_pearson(x, n, confidence=0.9)

    def tail_at_least(k, p):  # P(X >= k), exact sum in floats
        return sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    assert tail_at_least(x, low) == pytest.approx(0.05, abs=1e-9)
    assert 1 - tail_at_least(x + 1, high) == pytest.approx(0.05, abs=1e-9)


def test_win_summary_counts():
    s = win_summary(["treated", "treated", "tie", "baseline", "treated"])
    assert (s["pairs"], s["wins"], s["ties"], s["losses"]) == (5, 3, 1, 1)
    assert s["win_rate"] == pytest.approx(0.75)
    assert s["sign_test_p"] == pytest.approx(float(2 * exact_tail(1, 4)))  # 2 * 5/16
    assert s["win_rate_interval"] == pytest.approx(list(clopper_pearson(3, 4)))
    assert win_summary(["tie"])["win_rate"] is None
