"""The token-wise detector (docs/tokentrim.md#5-beyond-the-paper-the-token-wise-detector) on hand-made latent sequences; expected values worked out by hand.

The blocks are those of test_core_trim.py: 4 tokens (n = 2*row + col) whose summary is a_n * ones(16), so the drift
of token n is d_n = 4 |delta a_n|. With p = 0.5 the unstable set holds ceil(0.5 * 4) = 2 positions.
"""

import math

import pytest
import torch
from test_core_trim import recs, run

from tokentrim_core import TokenTrim, TokenTrimConfig, TokenwiseRule
from tokentrim_core.detectors import TOKENWISE_EPS

A0 = [0.0, 0.0, 0.0, 0.0]
B1 = [1.0, 0.0, 0.0, 0.0]  # d = [4, 0, 0, 0]
B2 = [1.0, 0.5, 0.0, 0.0]  # d = [0, 2, 0, 0]      history m = [2, 1, 0, 0], s = [2, 1, 0, 0]
B3 = [1.5, 0.5, 0.25, 0.125]  # d = [2, 0, 1, 0.5]
B4 = [1.5, 0.5, 0.375, 1.125]  # d = [0, 0, 0.5, 4]: a quiet token moves
B4R = [1.5, 0.5, 0.25, 0.125]  # regenerated: equal to B3, d = 0
B5 = [1.5, 0.5, 0.25, 0.625]  # vs B4R: d = [0, 0, 0, 2]

CFG = dict(p=0.5, warmup=2, max_regen=1, detector="tokenwise", tokenwise_level=4.0, tokenwise_floor=0.5)


def z_scores(history, d, floor):
    """The definition, by hand: population mean and deviation per token, floored at floor * mean of the means."""
    n = len(history)
    m = [sum(h[i] for h in history) / n for i in range(len(d))]
    s = [math.sqrt(sum((h[i] - m[i]) ** 2 for h in history) / n) for i in range(len(d))]
    f = floor * sum(m) / len(m)
    return [(d[i] - m[i]) / max(s[i], f, TOKENWISE_EPS) for i in range(len(d))]


def test_hand_computed_sequence():
    tt = TokenTrim(TokenTrimConfig(**CFG), (2, 2))
    verdicts = run(tt, [A0, B1, B2, B3, B4, B5], {4: [B4R]})
    rec = recs(tt)
    assert [r["action"] for r in rec] == ["warmup", "warmup", "warmup", "accept", "prune", "accept"]
    # block 1: no history yet, every score 0; block 2: one accepted drift, s = 0, floor 0.5 * mean(4, 0, 0, 0)
    assert rec[1]["severity"] == 0.0 and rec[1]["scores"] == [0.0, 0.0] and rec[1]["unstable"][0] == 0
    # z = [(0 - 4) / 0.5, (2 - 0) / 0.5, 0, 0]: position 1, then one of the tied 2 and 3
    assert rec[2]["unstable"][0] == 1 and rec[2]["scores"] == pytest.approx([4.0, 0.0])
    assert rec[2]["severity"] == pytest.approx(2.0)
    # block 3: m = [2, 1, 0, 0], s = [2, 1, 0, 0], floor 0.5 * 0.75 = 0.375 -> z = [0, -1, 2.667, 1.333]
    assert rec[3]["unstable"] == [2, 3] and rec[3]["scores"] == pytest.approx([1 / 0.375, 0.5 / 0.375])
    assert rec[3]["severity"] == pytest.approx(2.0) and rec[3]["threshold"] == 4.0
    assert rec[3]["mean"] is None and rec[3]["std"] is None
    # block 4: m = [2, 2/3, 1/3, 1/6], s = [1.633, 0.943, 0.471, 0.236], floor 0.5 * 19/24 = 0.3958
    # z = [-1.225, -0.707, 0.354, 9.684]: S = [2, 3], severity 5.019 > 4 -> prune
    z4 = z_scores([[4, 0, 0, 0], [0, 2, 0, 0], [2, 0, 1, 0.5]], [0, 0, 0.5, 4], 0.5)
    assert z4 == pytest.approx([-1.2247449, -0.7071068, 0.3535534, 9.6842105])
    assert rec[4]["unstable"] == [2, 3] and rec[4]["scores"] == pytest.approx(z4[2:])
    assert rec[4]["severity"] == pytest.approx(5.0188820) and rec[4]["pruned_positions"] == [2, 3]
    assert verdicts[4].prune and verdicts[4].positions.tolist() == [2, 3]
    # the regenerated block (d = 0) scores (-0.4211 - 0.7071) / 2 and is accepted (R = 1); its drift, not the
    # candidate's, enters the history (stats_after_regen = regenerated)
    assert rec[4]["regenerated_severity"] == pytest.approx((-(1 / 6) / 0.3958333 - 0.7071068) / 2)
    # block 5 against B4R: history [4,0,0,0] [0,2,0,0] [2,0,1,0.5] [0,0,0,0]; token 3: m = 0.125, s = 0.2165 <
    # floor 0.5 * 0.59375 = 0.296875 -> z3 = 1.875 / 0.296875 = 6.316; severity (6.316 - 0.577) / 2 = 2.869
    z5 = z_scores([[4, 0, 0, 0], [0, 2, 0, 0], [2, 0, 1, 0.5], [0, 0, 0, 0]], [0, 0, 0, 2], 0.5)
    assert z5[3] == pytest.approx(1.875 / 0.296875)
    assert rec[5]["severity"] == pytest.approx((z5[3] + max(z5[:3])) / 2) == pytest.approx(2.8692, abs=1e-4)
    assert rec[5]["action"] == "accept"


def test_paper_rule_accepts_the_block_the_token_wise_rule_prunes():
    """The motivation in one line: block 4 moves a quiet token by 4, as much as token 0 moved in block 1. The
    paper's severity (mean of the top-2 drifts, 2.25) stays under mu + 2 sigma of [2, 1, 1.5] = 2.3165."""
    tt = TokenTrim(TokenTrimConfig(p=0.5, lam=2.0, warmup=2), (2, 2))
    run(tt, [A0, B1, B2, B3, B4], {})
    r4 = recs(tt)[4]
    assert r4["severity"] == pytest.approx(2.25)
    assert r4["threshold"] == pytest.approx(1.5 + 2 * math.sqrt(1 / 6))
    assert r4["action"] == "accept" and r4["scores"] == pytest.approx([0.5 * 4 / 4, 4.0])


def test_running_moments_match_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    rule = TokenwiseRule(p=0.1, level=3.0, floor=0.25)
    history = [torch.rand(2, 30, generator=gen) * 5 for _ in range(7)]
    for d in history:
        rule.update(0.0, d)
    stacked = torch.stack([h.double().mean(0) for h in history])  # the batch shares one cache: its mean drift
    m, s = stacked.mean(0), stacked.std(0, unbiased=False)
    d = torch.rand(2, 30, generator=gen) * 5
    expected = (d.double().mean(0) - m) / torch.maximum(s, 0.25 * m.mean())
    assert torch.allclose(rule.scores(d).double(), expected, atol=1e-6)
    positions, severity, scores = rule.select(d)
    top = torch.topk(expected, 3).indices.sort().values  # ceil(0.1 * 30) = 3
    assert positions.tolist() == top.tolist()
    assert float(severity) == pytest.approx(float(expected[top].mean()), abs=1e-6)
    assert scores.tolist() == pytest.approx(expected[top].tolist(), abs=1e-6)


def test_static_history_keeps_scores_finite():
    rule = TokenwiseRule(p=0.5, level=4.0, floor=0.5)
    rule.update(0.0, torch.zeros(1, 4))
    rule.update(0.0, torch.zeros(1, 4))
    z = rule.scores(torch.tensor([[0.0, 0.0, 0.0, 1e-3]]))
    assert z.tolist() == pytest.approx([0.0, 0.0, 0.0, 1e-3 / TOKENWISE_EPS])
    rule.reset()
    assert not rule.armed
    with pytest.raises(ValueError, match="accepted block"):
        rule.scores(torch.zeros(1, 4))


def test_disabled_tokenwise_records_scores_and_never_prunes():
    tt = TokenTrim(TokenTrimConfig(**{**CFG, "enabled": False}), (2, 2))
    run(tt, [A0, B1, B2, B3, B4], {})
    rec = recs(tt)
    assert all(r["action"] == "off" for r in rec) and rec[4]["severity"] == pytest.approx(5.0188820)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("detector", "zscore", "detector must be one of"),
        ("tokenwise_level", -1.0, "tokenwise_level must be"),
        ("tokenwise_floor", math.inf, "tokenwise_floor must be"),
        ("tokenwise_floor", True, "tokenwise_floor must be"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        TokenTrimConfig(**{field: value})


def test_default_detector_is_the_papers():
    assert TokenTrimConfig().detector == "paper"
    assert type(TokenTrim(TokenTrimConfig(), (2, 2)).controller.detector).__name__ == "PaperRule"
    assert isinstance(
        TokenTrim(TokenTrimConfig(detector="tokenwise"), (2, 2)).controller.detector, TokenwiseRule
    )
