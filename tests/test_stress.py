"""`tokentrim stress` and `tokentrim compare`: the fault goes where stated, the runs share their seed, the report's
fields exist and are finite, and the side-by-side video has the stated size."""

import json
import math

import numpy as np
import pytest
import torch

from tokentrim.app.api import Pipeline
from tokentrim.app.backends import PRESETS
from tokentrim.app.cli import main
from tokentrim.app.faults import Fault, FaultHook, corrupt, region, token_mask
from tokentrim.app.run_config import default_config_path, load_run_config
from tokentrim.toy import HELD_OUT_SCENES, observed_start
from tokentrim.wan.model import CausalWanModel
from tokentrim_core.trim import TokenTrim


@pytest.fixture(scope="module")
def toy():
    return PRESETS["toy"].load(torch.device("cpu"), torch.float32, True)


def test_regions_are_compact_and_seeded():
    rng = np.random.default_rng(0)
    cells = region((8, 8), 6, rng)
    rows, cols = {n // 8 for n in cells}, {n % 8 for n in cells}
    assert len(cells) == 6 and len(rows) * len(cols) == 6  # a 2 x 3 rectangle
    assert region((8, 8), 6, np.random.default_rng(0)) == cells
    mask = token_mask(cells, (8, 8), (2, 2))
    assert mask.shape == (16, 16) and int(mask.sum()) == 6 * 4


@pytest.mark.parametrize("kind", ["blob", "noise", "cast", "foreign"])
def test_corruption_stays_inside_the_region(kind):
    x0 = torch.randn(1, 3, 12, 16, 16, generator=torch.Generator().manual_seed(1))
    other = torch.randn(1, 3, 12, 16, 16, generator=torch.Generator().manual_seed(2))
    fault = Fault(kind, 2, (9, 10, 17, 18), seed=3)
    mask = token_mask(fault.tokens, (8, 8), (2, 2))
    bad = corrupt(fault, x0, mask, other if kind == "foreign" else None)
    assert torch.equal(bad[..., ~mask], x0[..., ~mask]) and not torch.equal(bad[..., mask], x0[..., mask])
    if kind == "foreign":
        assert torch.equal(bad[..., mask], other[..., mask])
    if kind == "blob":  # saturated: every channel at its block mean + 3 std
        want = x0.mean(dim=(1, 3, 4)) + 3 * x0.std(dim=(1, 3, 4))
        torch.testing.assert_close(bad[0, 0, :, 2, 2], want[0])


def test_the_fault_enters_through_the_commit_of_block_j_only(toy, monkeypatch):
    """Denoising calls see no fault; block J's clean pass (and only it) gets the corrupted latents; before J the
    runs are identical, so the clean and the faulted run share their seed."""
    calls, forward = [], CausalWanModel.forward

    def recording(self, x, t, context, cache=None, plan=None, start_frame=0, attn_mask=None):
        calls.append((start_frame, plan is not None and plan.commit, x.clone()))
        return forward(
            self, x, t, context, cache=cache, plan=plan, start_frame=start_frame, attn_mask=attn_mask
        )

    monkeypatch.setattr(CausalWanModel, "forward", recording)
    run = load_run_config(
        default_config_path("self_forcing", "toy"), ["tokentrim.enabled=false", "flowmo.mode=off"]
    )
    prompt, prefix = observed_start(HELD_OUT_SCENES)
    pipe = Pipeline(toy, run)
    fault = Fault("blob", 3, region((8, 8), 6, np.random.default_rng(0)), 0)
    mask = token_mask(fault.tokens, (8, 8), (2, 2))
    clean = pipe.generate(prompt, latent_frames=18, seed=4, start=prefix, decode=False)
    clean_calls = list(calls)
    calls.clear()
    hook = FaultHook(TokenTrim(run.tokentrim, (2, 2)), fault, mask)
    bad = pipe.generate(prompt, latent_frames=18, seed=4, start=prefix, decode=False, hook=hook)
    assert torch.equal(bad.latents[:, :9], clean.latents[:, :9])  # blocks 0..2
    diff = bad.latents[:, 9:12] - clean.latents[:, 9:12]
    assert diff[..., ~mask].abs().max() == 0 and diff[..., mask].abs().max() > 0  # block J: the region only
    assert len(calls) == len(clean_calls) and float(hook.applied[0]) > 0
    assert [r.to_dict() | {"score_ms": 0} for r in bad.records[:4]] == [
        r.to_dict() | {"score_ms": 0} for r in clean.records[:4]
    ]  # the wrapped TokenTrim decides as it would alone, up to the fault
    for (s, commit, x), (s0, commit0, x0) in zip(calls, clean_calls, strict=True):
        assert (s, commit) == (s0, commit0)
        if s < 9 or (s == 9 and not commit):  # up to block J's denoising: the very same inputs
            assert torch.equal(x, x0)
        if s == 9 and commit:  # block J's clean pass: the corrupted block
            assert torch.equal(x, bad.latents[:, 9:12])


@pytest.mark.slow
def test_clean_runs_are_shared_by_the_kinds_and_change_nothing(toy, monkeypatch):
    """The clean rollouts do not depend on the fault: a seed's later kinds reuse them and get the very rows a
    fresh run of that kind gets (wall times aside)."""
    from tokentrim.app import stress

    trimmed = load_run_config(default_config_path("self_forcing", "toy"), ["flowmo.mode=off"])
    pipes = {"baseline": Pipeline(toy, trimmed.baseline()), "tokentrim": Pipeline(toy, trimmed)}
    start = stress._starts("toy")
    setup = stress.Setup(tokens=6, at_block=3, horizon=2, latent_frames=18)
    fresh = stress.run_seed(pipes, setup, 1, "noise", start)
    shared: dict = {}
    stress.run_seed(pipes, setup, 1, "blob", start, shared)
    calls, real = [], Pipeline.generate
    monkeypatch.setattr(Pipeline, "generate", lambda *a, **k: calls.append(k.get("hook")) or real(*a, **k))
    again = stress.run_seed(pipes, setup, 1, "noise", start, shared)
    assert len(calls) == 2 and all(hook is not None for hook in calls)  # the faulted runs only
    fresh.pop("wall_s"), again.pop("wall_s")
    assert again == fresh


@pytest.mark.slow
def test_stress_report_fields_are_finite(tmp_path, capsys):
    out = tmp_path / "stress.json"
    assert main(["stress", "--preset", "toy", "--seeds", "2", "--kind", "blob", "--at-block", "3",
                 "--horizon", "3", "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    for key in ("recall", "precision", "persistence_ratio", "false_trigger_rate", "detection_rate"):
        assert report[key] is None and key == "precision" or math.isfinite(report[key]), key
    rows = report["by_kind"]["blob"]["per_seed"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert set(rows[0]["wall_s"]) == {"baseline", "baseline_fault", "tokentrim", "tokentrim_fault"}
    assert all(len(r["persistence"]["baseline"]["curve"]) == 3 for r in rows)
    assert set(rows[0]["clean_drift"]) == {"baseline", "tokentrim"}
    placebo = report["spreads"]["placebo"]  # the clean run's prunes in the same blocks, same tokens
    assert 0.0 <= placebo["detection_rate"] <= 1.0 and placebo["recall"]["n"] == 2
    assert all(r["placebo"]["detected"] == (r["placebo"]["latency_blocks"] is not None) for r in rows)
    assert 0.0 <= report["recall"] <= 1.0 and 0.0 <= report["false_trigger_rate"] <= 1.0


@pytest.mark.slow
def test_compare_writes_a_two_panel_video(tmp_path, capsys):
    from tokentrim.video import read_video

    out = tmp_path / "demo"
    assert main(["compare", "--preset", "toy", "--scene", str(HELD_OUT_SCENES), "--latent-frames", "24", "--fault",
                 "blob", "--fault-block", "4", "--out", str(out), "tokentrim.lam=0"]) == 0  # fmt: skip
    video, fps = read_video(out / "compare.mp4")
    assert video.shape == (24, 256 + 22, 2 * 256 + 4, 3) and fps == 8  # 32 px frames x 8, a label strip
    assert (out / "drift.png").is_file() and (out / "heatmap.png").is_file()
    log = json.loads((out / "tokentrim.json").read_text())
    assert log["config"]["fault"]["block"] == 4 and any(b["action"] == "prune" for b in log["blocks"])
    left, right = video[:, 22:, :256], video[:, 22:, 260:]
    assert np.abs(left[:12].astype(int) - right[:12].astype(int)).mean() < 3  # the same seed: same start
