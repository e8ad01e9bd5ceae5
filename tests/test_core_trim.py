"""The TokenTrim controller on hand-made latent sequences; expected values are worked out by hand below.

Blocks are 1x3x4x4x4 latents with patch 2x2: 4 tokens (n = 2*row + col) of dimension 16. Every entry of token n
equals a_n averaged over the 3 frames (frames hold a-1, a+3, a-2), so the summary of token n is a_n * ones(16)
and its drift is d_n = sqrt(16) * |a_n - a'_n| = 4 |delta a_n|. With p = 0.5, |S| = ceil(0.5 * 4) = 2 and
D = mean of the two largest d_n.
"""

import json
import math

import pytest
import torch

from tokentrim_core import BlockHook, BlockRecord, TokenTrim, TokenTrimConfig, Verdict

PATCH = (2, 2)
A0 = [0.0, 0.0, 0.0, 0.0]
A1 = [1.0, 0.0, 0.0, 0.0]  # d = [4, 0, 0, 0]      D = 2
A2 = [1.0, 0.5, 0.0, 0.0]  # d = [0, 2, 0, 0]      D = 1
A3 = [1.75, 1.0, 0.0, 0.0]  # d = [3, 2, 0, 0]     D = 2.5 == mu + 2 sigma of [2, 1] = 1.5 + 2 * 0.5 -> accept
A4 = [1.75, 1.0, 2.0, 1.0]  # d = [0, 0, 8, 4]     D = 6 -> prune positions {2, 3}
A4R = [1.75, 1.0, 0.25, 0.0]  # regenerated: d = [0, 0, 1, 0]  D* = 0.5
A5 = [2.0, 1.0, 0.25, 0.0]  # vs A4R: d = [1, 0, 0, 0]  D = 0.5 (vs the rejected A4 it would be 5.5)
A6 = [2.0, 1.0, 1.0, 0.75]  # d = [0, 0, 3, 3]     D = 3


def block(a):
    x = torch.empty(1, 3, 4, 4, 4)
    for n, value in enumerate(a):
        r, c = 2 * (n // 2), 2 * (n % 2)
        for f, offset in enumerate((-1.0, 3.0, -2.0)):
            x[0, f, :, r : r + 2, c : c + 2] = value + offset
    return x


def pop_threshold(values, lam):
    mu = sum(values) / len(values)
    sigma = math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))
    return mu, sigma, mu + lam * sigma


def recs(tt):
    """The records as their JSON dicts."""
    return [r.to_dict() for r in tt.records]


def run(tt, blocks, regen):
    """Drive the hook like a pipeline; regen maps block -> list of regenerated latents."""
    verdicts = []
    for b, a in enumerate(blocks):
        v = tt.propose(b, range(3 * b, 3 * b + 3), block(a))
        verdicts.append(v)
        attempts = iter(regen.get(b, []))
        r = 0
        while v.prune:
            r += 1
            v = tt.regenerated(b, block(next(attempts)), tokens_removed=10 * r, regenerations=r)
            verdicts.append(v)
    return verdicts


def test_satisfies_protocol():
    assert isinstance(TokenTrim(TokenTrimConfig(), PATCH), BlockHook)


@pytest.mark.parametrize("mode", ["regenerated", "candidate", "skip"])
def test_oracle_sequence(mode):
    cfg = TokenTrimConfig(p=0.5, lam=2.0, warmup=2, max_regen=1, stats_after_regen=mode)
    tt = TokenTrim(cfg, PATCH)
    verdicts = run(tt, [A0, A1, A2, A3, A4, A5, A6], {4: [A4R], 6: [A6]})
    rec = recs(tt)
    assert [r["block"] for r in rec] == list(range(7))
    assert rec[3]["frames"] == [9, 12]

    # blocks 0-2: warm-up, block 0 without a severity
    assert [r["action"] for r in rec[:3]] == ["warmup"] * 3
    assert rec[0]["severity"] is None and rec[0]["mean"] is None
    assert rec[1]["severity"] == pytest.approx(2.0)
    assert rec[2]["severity"] == pytest.approx(1.0)
    assert rec[2]["mean"] == pytest.approx(2.0) and rec[2]["std"] == 0.0
    assert all(r["threshold"] is None for r in rec[:3])

    # block 3: D = 2.5 equals the threshold exactly -> accept (the trigger is strict)
    assert rec[3]["severity"] == 2.5 and rec[3]["threshold"] == 2.5
    assert rec[3]["mean"] == 1.5 and rec[3]["std"] == 0.5
    assert rec[3]["action"] == "accept" and not rec[3]["triggered"]

    # block 4: stats [2, 1, 2.5]; D = 6 -> prune the two top tokens, regenerate once, D* = 0.5
    mu, sigma, thr = pop_threshold([2.0, 1.0, 2.5], 2.0)
    assert rec[4]["mean"] == pytest.approx(mu) and rec[4]["std"] == pytest.approx(sigma)
    assert rec[4]["threshold"] == pytest.approx(thr)  # 1.8333 + 2 * 0.6236 = 3.0806
    assert rec[4]["action"] == "prune" and rec[4]["severity"] == pytest.approx(6.0)
    assert rec[4]["pruned_positions"] == [2, 3]
    assert verdicts[4].prune and verdicts[4].positions.tolist() == [2, 3]
    assert verdicts[4].positions.dtype == torch.long
    assert not verdicts[5].prune and verdicts[5].positions is None
    assert rec[4]["regenerated_severity"] == pytest.approx(0.5)
    assert rec[4]["regenerations"] == 1 and rec[4]["tokens_removed"] == 10

    # block 5 is compared with the regenerated block 4, not the rejected candidate (that would give 5.5)
    assert rec[5]["severity"] == pytest.approx(0.5)
    after_regen = {"regenerated": [0.5], "candidate": [6.0], "skip": []}[mode]
    stats5 = [2.0, 1.0, 2.5] + after_regen
    assert rec[5]["threshold"] == pytest.approx(pop_threshold(stats5, 2.0)[2])
    assert rec[5]["action"] == "accept"

    # block 6: D = 3; thresholds: regenerated 1.3 + 2 * 0.8124 = 2.925 -> prune; candidate 2.4 + 2 * 1.934 =
    # 6.27 -> accept; skip 1.5 + 2 * 0.7906 = 3.081 -> accept
    stats6 = stats5 + [0.5]
    thr6 = pop_threshold(stats6, 2.0)[2]
    assert rec[6]["threshold"] == pytest.approx(thr6)
    assert rec[6]["severity"] == pytest.approx(3.0)
    expected = "prune" if 3.0 > thr6 else "accept"
    assert expected == {"regenerated": "prune", "candidate": "accept", "skip": "accept"}[mode]
    assert rec[6]["action"] == expected
    if expected == "prune":
        # R = 1: the regenerated block (identical, still above the threshold) is accepted as is
        assert rec[6]["regenerated_severity"] == pytest.approx(3.0)
        assert not verdicts[-1].prune
        assert tt.stats.values == pytest.approx(stats6 + [3.0])
    else:
        assert rec[6]["regenerated_severity"] is None and rec[6]["regenerations"] == 0
        assert tt.stats.values == pytest.approx(stats6 + [3.0])
    assert all(r["score_ms"] >= 0.0 for r in rec)
    json.dumps(rec)  # plain python types only


def test_max_regen_two_prunes_again_then_accepts():
    cfg = TokenTrimConfig(p=0.5, lam=2.0, warmup=2, max_regen=2)
    tt = TokenTrim(cfg, PATCH)
    # block 4: first regeneration A4 again (D* = 6, still above) -> prune again; second one A4R (D* = 0.5)
    verdicts = run(tt, [A0, A1, A2, A3, A4, A5], {4: [A4, A4R]})
    r4 = recs(tt)[4]
    assert [v.prune for v in verdicts[4:7]] == [True, True, False]
    assert verdicts[5].positions.tolist() == [2, 3]
    assert r4["regenerations"] == 2 and r4["tokens_removed"] == 10 + 20
    assert r4["regenerated_severity"] == pytest.approx(0.5)
    assert recs(tt)[5]["severity"] == pytest.approx(0.5)
    assert tt.stats.values == pytest.approx([2.0, 1.0, 2.5, 0.5, 0.5])  # D* of block 4, then block 5


def test_disabled_scores_but_never_prunes():
    tt = TokenTrim(TokenTrimConfig(enabled=False, p=0.5), PATCH)
    verdicts = run(tt, [A0, A1, A2, A3, A4, A5], {})
    assert not any(v.prune for v in verdicts)
    rec = recs(tt)
    assert [r["action"] for r in rec] == ["off"] * 6
    assert [r["severity"] for r in rec] == pytest.approx([None, 2.0, 1.0, 2.5, 6.0, 5.5])
    assert all(r["threshold"] is None and r["pruned_positions"] == [] for r in rec)


def test_warmup_zero_and_detection_only():
    tt = TokenTrim(TokenTrimConfig(p=0.5, warmup=0), PATCH)
    run(tt, [A0, A1, A2], {})
    # block 1 has nothing accepted to compare with -> warmup; block 2 is armed with stats [2]: 1 <= 2 -> accept
    assert [r["action"] for r in recs(tt)] == ["warmup", "warmup", "accept"]
    assert recs(tt)[2]["threshold"] == 2.0

    tt = TokenTrim(TokenTrimConfig(p=0.5, max_regen=0), PATCH)
    verdicts = run(tt, [A0, A1, A2, A3, A4], {})
    assert not any(v.prune for v in verdicts)
    assert recs(tt)[4]["action"] == "accept" and recs(tt)[4]["triggered"]
    assert tt.stats.values == pytest.approx([2.0, 1.0, 2.5, 6.0])


def test_batch_shares_one_position_set():
    tt = TokenTrim(TokenTrimConfig(p=0.25, warmup=0), PATCH)
    first = torch.cat([block(A0), block(A0)])
    second = torch.cat([block([1.0, 0.0, 0.0, 0.0]), block([0.0, 0.0, 0.0, 0.5])])
    tt.propose(0, range(0, 3), first)
    tt.propose(1, range(3, 6), second)
    # per-sample drift [4,0,0,0] and [0,0,0,2] -> batch mean [2,0,0,1]; k = 1 -> D = 2
    assert recs(tt)[1]["severity"] == pytest.approx(2.0)


def test_protocol_misuse_and_reset():
    tt = TokenTrim(TokenTrimConfig(p=0.5), PATCH)
    with pytest.raises(RuntimeError, match="no block is waiting"):
        tt.regenerated(0, block(A0), tokens_removed=0, regenerations=1)
    run(tt, [A0, A1], {})
    tt.reset()
    assert recs(tt) == [] and tt.stats.count == 0
    tt.propose(0, range(0, 3), block(A1))
    assert recs(tt)[0]["severity"] is None
    assert Verdict(prune=False).positions is None
    with pytest.raises(ValueError, match="patch"):
        TokenTrim(TokenTrimConfig(), (2, 0))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("p", 0.0, "p must be a finite number > 0 and < 1, got 0.0"),
        ("p", 1.0, "p must be a finite number > 0 and < 1, got 1.0"),
        ("lam", -0.5, "lam must be"),
        ("lam", math.inf, "lam must be"),
        ("warmup", -1, "warmup must be an int >= 0"),
        ("warmup", 1.5, "warmup must be an int >= 0"),
        ("max_regen", -1, "max_regen must be an int >= 0"),
        ("stats_after_regen", "both", "stats_after_regen must be one of"),
        ("min_std", -1e-3, "min_std must be"),
        ("enabled", 1, "enabled must be a bool"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        TokenTrimConfig(**{field: value})


def test_config_defaults_are_the_papers():
    cfg = TokenTrimConfig()
    assert (cfg.p, cfg.lam, cfg.warmup, cfg.max_regen) == (0.1, 2.0, 2, 1)


def test_records_are_typed_and_serialise_to_the_log_keys():
    tt = TokenTrim(TokenTrimConfig(p=0.5), PATCH)
    run(tt, [A0, A1, A2, A3, A4], {4: [A4R]})
    assert all(isinstance(r, BlockRecord) for r in tt.records)
    row = json.loads(json.dumps(tt.records[4].to_dict()))
    assert list(row) == [
        "block",
        "frames",
        "action",
        "triggered",
        "severity",
        "mean",
        "std",
        "threshold",
        "pruned_positions",
        "tokens_removed",
        "regenerated_severity",
        "regenerations",
        "kept",
        "score_ms",
        "prompt_switch",
        "unstable",
        "scores",
    ]
    assert row["action"] == "prune" and row["frames"] == [12, 15] and row["pruned_positions"] == [2, 3]
    # the paper's rule scores a position by its drift: A4 against A3 gives d = [0, 0, 8, 4]
    assert row["unstable"] == [2, 3] and row["scores"] == pytest.approx([8.0, 4.0])
    assert recs(tt)[0]["unstable"] is None and recs(tt)[0]["scores"] is None  # block 0: no drift


def test_accept_lower_keeps_the_attempt_with_the_lowest_severity():
    """accept="lower": block 4's candidate (D = 6) is regenerated twice, D* = 6 then 7 (worse): the lowest is the
    candidate's (a tie with the first regeneration goes to the later attempt, 1); statistics and Z_prev follow."""
    A4W = [1.75, 1.0, 2.0, 1.25]  # d = [0, 0, 8, 5] -> D* = 6.5
    cfg = TokenTrimConfig(p=0.5, lam=2.0, warmup=2, max_regen=2, accept="lower")
    tt = TokenTrim(cfg, PATCH)
    verdicts = run(tt, [A0, A1, A2, A3, A4], {4: [A4, A4W]})
    assert [v.prune for v in verdicts[4:7]] == [True, True, False]
    r4 = recs(tt)[4]
    assert r4["kept"] == 1 and verdicts[6].keep == 1 and r4["regenerated_severity"] == pytest.approx(6.5)
    assert tt.stats.values[-1] == pytest.approx(6.0)  # the kept attempt's D
    tt.propose(5, range(15, 18), block(A4))  # the same latents as the kept attempt: no drift
    assert recs(tt)[5]["severity"] == pytest.approx(0.0)
    default = TokenTrim(TokenTrimConfig(p=0.5, max_regen=2), PATCH)
    verdicts = run(default, [A0, A1, A2, A3, A4], {4: [A4, A4W]})
    assert recs(default)[4]["kept"] == 2 and verdicts[6].keep == 2  # the paper's rule: the last regeneration
    with pytest.raises(ValueError, match="accept must be one of"):
        TokenTrimConfig(accept="best")
