"""Seed summaries of `tokentrim stress` against values worked out by hand."""

import pytest

from tokentrim.app.stress_stats import paired, spread


def test_spread_hand_values():
    s = spread([4.0, 1.0, None, 3.0, 2.0, float("nan")])  # missing and non-finite values are dropped
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5
    assert (s["q25"], s["q75"]) == (1.75, 3.25)  # linear interpolation between order statistics
    lo, hi = s["ci"]
    assert 1.0 <= lo < 2.5 < hi <= 4.0  # a bootstrap mean lies between the smallest and the largest value
    assert spread([])["mean"] is None and spread([7.0])["ci"] == [7.0, 7.0]


def test_paired_hand_values():
    a, b = [1.0, 2.0, 4.0, None], [0.5, 1.0, 2.0, 9.0]  # the last seed has no pair
    p = paired(a, b)
    assert p["n"] == 3 and p["b_lower"] == 3
    assert p["ratio_of_means"] == pytest.approx(3.5 / 7.0) and p["median_ratio"] == pytest.approx(0.5)
    assert p["ratio_ci"] == pytest.approx([0.5, 0.5]) and p["median_ratio_ci"] == pytest.approx([0.5, 0.5])
    assert p["difference"]["mean"] == pytest.approx(-3.5 / 3) and p["difference"]["median"] == pytest.approx(
        -1.0
    )
    lo, hi = p["difference"]["ci"]
    assert -2.0 <= lo < hi <= -0.5


def test_paired_intervals_are_reproducible_and_cover_a_clear_effect():
    a = [1.0 + 0.1 * i for i in range(32)]
    b = [x * 0.4 + (0.05 if i % 2 else -0.05) for i, x in enumerate(a)]
    p, q = paired(a, b), paired(a, b)
    assert p == q  # a fixed generator
    lo, hi = p["ratio_ci"]
    assert lo < p["ratio_of_means"] < hi and hi < 0.45 and lo > 0.35
    assert paired([0.0, 0.0], [1.0, 2.0])["ratio_of_means"] is None
