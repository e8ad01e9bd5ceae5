"""TokenTrimController's loop-agnostic calls (judge / regenerated / settle), its misuse errors, and the pluggable
detector; the hand-made blocks and their drift values are those of tests/test_core_trim.py."""

import pytest
import torch
from test_core_trim import A0, A1, A2, A3, A4, A4R, A5, PATCH, block

from tokentrim_core import Detector, PaperRule, TokenTrim, TokenTrimConfig, TokenTrimController

CONFIG = TokenTrimConfig(p=0.5, lam=2.0, warmup=2)


def rows(records):
    return [{k: v for k, v in r.to_dict().items() if k != "score_ms"} for r in records]


def test_a_loop_of_its_own_makes_the_hooks_decisions():
    """A loop that keeps its own previous block and calls the three methods gets the hook's records."""
    blocks = [A0, A1, A2, A3, A4, A5]
    hook = TokenTrim(CONFIG, PATCH)
    for b, a in enumerate(blocks):
        if hook.propose(b, range(3 * b, 3 * b + 3), block(a)).prune:
            hook.regenerated(b, block(A4R), tokens_removed=7, regenerations=1)
    tt, previous = TokenTrimController(CONFIG, PATCH), None
    for a in blocks:
        candidate = block(a)
        decision = tt.judge(previous, candidate)
        if decision.prune:
            assert decision.positions.tolist() == [2, 3]
            candidate = block(A4R)
            decision = tt.regenerated(candidate, tokens_removed=7)
            assert not decision.prune and decision.keep == 1
        assert tt.settle() is tt.records[-1]
        previous = candidate
    assert rows(tt.records) == rows(hook.records)
    assert [r.frames for r in tt.records] == [(3 * b, 3 * b + 3) for b in range(6)]  # numbered by default
    assert tt.detector.stats.values == hook.stats.values == pytest.approx([2.0, 1.0, 2.5, 0.5, 0.5])


def test_settle_is_where_the_statistics_move():
    tt = TokenTrimController(CONFIG, PATCH)
    for previous, a in [(None, A0), (A0, A1), (A1, A2), (A2, A3)]:
        tt.judge(None if previous is None else block(previous), block(a))
        count = tt.detector.stats.count
        tt.settle()
    assert count == 2 and tt.detector.stats.count == 3  # block 3's D entered at settle, not at judge
    assert tt.judge(block(A3), block(A4)).prune  # D = 6 > 3.08
    tt.regenerated(block(A4R), tokens_removed=3)
    record = tt.settle(kept=0)  # the loop kept the candidate after all: the statistics take its D
    assert record.kept == 0 and tt.detector.stats.values[-1] == pytest.approx(6.0)


def test_misuse_is_refused_with_the_call_to_make():
    tt = TokenTrimController(CONFIG, PATCH)
    with pytest.raises(RuntimeError, match="no block was judged"):
        tt.settle()
    with pytest.raises(RuntimeError, match="no block is waiting"):
        tt.regenerated(block(A0))
    tt.judge(None, block(A0))
    with pytest.raises(RuntimeError, match="call settle\\(\\)"):
        tt.judge(block(A0), block(A1))
    with pytest.raises(RuntimeError, match="is open"):
        tt.switched()
    with pytest.raises(ValueError, match="kept must name an attempt 0..0"):
        tt.settle(kept=1)
    tt.settle()
    for previous, a in [(A0, A1), (A1, A2), (A2, A3)]:
        tt.judge(block(previous), block(a))
        tt.settle()
    assert tt.judge(block(A3), block(A4)).prune
    with pytest.raises(RuntimeError, match="call regenerated\\(\\) first"):
        tt.judge(block(A4), block(A5))
    with pytest.raises(RuntimeError, match="regenerate it and call regenerated\\(\\) before settle"):
        tt.settle()
    with pytest.raises(ValueError, match="patch"):
        TokenTrimController(CONFIG, (0, 2))


class FixedRule:
    """A detector that always names positions [1] with severity 9 and a threshold of 5, and counts updates."""

    def __init__(self):
        self.updates = []

    def select(self, drift):
        return (
            torch.tensor([1], device=drift.device),
            torch.tensor(9.0, device=drift.device),
            torch.tensor([9.0]),
        )

    @property
    def armed(self):
        return True

    def threshold(self):
        return 5.0

    def statistics(self):
        return 1.0, 2.0

    def update(self, severity, drift):
        self.updates.append((severity, tuple(drift.shape)))

    def reset(self):
        self.updates.clear()


def test_the_detector_is_pluggable():
    assert isinstance(PaperRule(0.1, 2.0), Detector) and isinstance(FixedRule(), Detector)
    rule = FixedRule()
    tt = TokenTrimController(TokenTrimConfig(warmup=0), PATCH, detector=rule)
    tt.judge(None, block(A0))
    tt.settle()
    decision = tt.judge(block(A0), block(A1))  # armed: 9 > 5 -> prune the rule's positions
    assert decision.prune and decision.positions.tolist() == [1]
    tt.regenerated(block(A1), tokens_removed=1)
    record = tt.settle()
    assert (record.action, record.mean, record.std, record.threshold) == ("prune", 1.0, 2.0, 5.0)
    assert rule.updates == [(9.0, (1, 4))]  # the regenerated attempt's severity and its drift [B, N]
