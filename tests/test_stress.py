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
from tokentrim.app.stress import blocks as stress_blocks
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
    if kind == "blob":  # flat: the region's own mean, 3 block stds away from the block mean, per channel
        for c in range(12):
            local, mean, std = (
                float(x0[0, :, c][:, mask].mean()),
                float(x0[0, :, c].mean()),
                float(x0[0, :, c].std()),
            )
            want = local - 3 * std if local > mean else local + 3 * std
            assert float(bad[0, 1, c, 2, 2]) == pytest.approx(want, rel=1e-5)


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


def test_tokentrim_judges_the_next_block_against_the_faulted_one(toy):
    """The faulted block is the reference: block J + 1's recorded severity is the paper's D of its drift against
    the corrupted block J as committed (detection only, so the output holds the judged candidates)."""
    from tokentrim_core import consecutive_block_drift, unstable_set

    run = load_run_config(
        default_config_path("self_forcing", "toy"), ["flowmo.mode=off", "tokentrim.max_regen=0"]
    )
    prompt, prefix = observed_start(HELD_OUT_SCENES)
    pipe = Pipeline(toy, run)
    fault = Fault("blob", 3, region((8, 8), 6, np.random.default_rng(0)), 0)
    hook = FaultHook(TokenTrim(run.tokentrim, (2, 2)), fault, token_mask(fault.tokens, (8, 8), (2, 2)))
    bad = pipe.generate(prompt, latent_frames=18, seed=4, start=prefix, decode=False, hook=hook)
    drift = consecutive_block_drift(
        bad.latents[0, 9:15].float(), (2, 2), 3
    )  # block 4 against faulted block 3
    assert bad.records[4].severity == pytest.approx(float(unstable_set(drift, 0.1)[1]), rel=1e-6)
    clean = pipe.generate(prompt, latent_frames=18, seed=4, start=prefix, decode=False)
    assert clean.records[4].severity != pytest.approx(bad.records[4].severity)


class RecordingFaultHook(FaultHook):
    """A `FaultHook` that notes where the loop offered it block J's latents: (block, level or None)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = []

    def accepted(self, block, x0):
        self.seen.append((block, None))
        return super().accepted(block, x0)

    def denoised(self, block, level, x0):
        self.seen.append((block, level))
        return super().denoised(block, level, x0)


def test_rolling_forcing_fault_enters_inside_the_window(toy):
    """With a level, the fault is applied once, to block J's x0 after its pass at that level (before re-noising).
    The window is denoised jointly, so every block in it at that moment reads the fault in the following passes:
    with 5 levels, J = 6 and level 1 the window holds blocks 3..7 and block 3 was final before the fault; blocks
    0..3 are unchanged, blocks 4.. (J - 2 onward) differ."""
    run = load_run_config(
        default_config_path("rolling_forcing", "toy"), ["tokentrim.enabled=false", "flowmo.mode=off"]
    )
    prompt, prefix = observed_start(HELD_OUT_SCENES + 2)
    pipe = Pipeline(toy, run)
    cells = region((8, 8), 6, np.random.default_rng(2))
    fault = Fault("blob", 6, cells, 0, level=1)
    hook = RecordingFaultHook(TokenTrim(run.tokentrim, (2, 2)), fault, token_mask(cells, (8, 8), (2, 2)))
    clean = pipe.generate(prompt, latent_frames=30, seed=1, start=prefix, decode=False)
    bad = pipe.generate(prompt, latent_frames=30, seed=1, start=prefix, decode=False, hook=hook)
    assert len(hook.applied) == 1 and hook.contrast[0] > 0
    assert {(6, 0), (6, 1), (6, 2), (6, 3), (6, None)} <= set(hook.seen)  # every level and the acceptance
    assert torch.equal(bad.latents[:, :12], clean.latents[:, :12])
    for b in range(4, 10):
        assert not torch.equal(bad.latents[:, 3 * b : 3 * b + 3], clean.latents[:, 3 * b : 3 * b + 3]), b
    assert stress_blocks(6, 1, 5, 8, 10) == (range(4, 10), range(4, 10))


def test_the_window_hook_point_changes_nothing_unused(toy):
    """A hook without `denoised` and one whose `denoised` returns its input give the very same rollout."""
    run = load_run_config(default_config_path("rolling_forcing", "toy"), ["flowmo.mode=off"])
    prompt, prefix = observed_start(HELD_OUT_SCENES + 2)
    pipe = Pipeline(toy, run)
    plain = TokenTrim(run.tokentrim, (2, 2))
    offered = []

    class Watching(TokenTrim):
        def denoised(self, block, level, x0):
            offered.append(level)
            return x0

    a = pipe.generate(prompt, latent_frames=24, seed=3, start=prefix, decode=False, hook=plain)
    b = pipe.generate(
        prompt, latent_frames=24, seed=3, start=prefix, decode=False, hook=Watching(run.tokentrim, (2, 2))
    )
    assert offered and set(offered) == {0, 1, 2, 3} and torch.equal(a.latents, b.latents)


def test_detection_needs_an_overlap():
    from types import SimpleNamespace as R

    from tokentrim.app.stress import detection

    records = [R(block=4, action="prune", pruned_positions=[0, 1, 2]), R(block=5, action="accept", pruned_positions=[]),
               R(block=6, action="prune", pruned_positions=[9, 10, 40, 41]),
               R(block=9, action="prune", pruned_positions=[10, 11])]  # fmt: skip
    d = detection(records, (9, 10, 11, 17, 18, 19), 5, 8)
    assert d["detected"] and d["block"] == 6 and d["missed_prunes"] == 0
    assert d["recall"] == pytest.approx(2 / 6) and d["precision"] == pytest.approx(2 / 4)
    miss = detection(records, (30, 31), 4, 9)  # three prunes, none on the fault
    assert not miss["detected"] and miss["recall"] == 0.0 and miss["missed_prunes"] == 3


@pytest.mark.slow
def test_stress_report_fields_are_finite(tmp_path, capsys):
    out = tmp_path / "stress.json"
    assert main(["stress", "--preset", "toy", "--seeds", "2", "--first-seed", "5", "--kind", "blob", "--at-block",
                 "3", "4", "--horizon", "2", "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert report["settings"]["seeds"] == [5, 6] and report["settings"]["detectors"] == ["paper", "tokenwise"]
    rows = report["per_seed"]
    assert [r["seed"] for r in rows] == [5, 6]
    assert set(rows[0]["faults"]["blob"]) == {"3", "4"}
    cell = rows[0]["faults"]["blob"]["3"]
    assert set(cell) == {"baseline", "paper", "tokenwise"}
    assert len(cell["baseline"]["whole_curve"]) == 2 and cell["baseline"]["contrast"] >= 3.0 - 1e-6
    assert cell["baseline"]["whole"] >= cell["baseline"]["region"] >= 0.0
    summary = report["summary"]
    e = summary["faults"]["blob"]["3"]
    for where in ("whole", "region"):
        for m in ("baseline", "paper", "tokenwise"):
            assert math.isfinite(e[f"persistence_{where}"][m]["mean"])
    assert e["detection"]["tokenwise"]["n"] == 2 and "tokenwise" in e["vs_paper"]
    for m in ("paper", "tokenwise"):
        assert 0.0 <= summary["clean"]["trigger_rate"][m]["mean"] <= 1.0
    assert "tokenwise" in summary["clean"]["drift_vs_paper"]
    text = capsys.readouterr().out
    assert "false trigger rate" in text and "blob J=3" in text


def test_stress_refuses_detector_overrides(capsys):
    assert main(["stress", "--preset", "toy", "--seeds", "1", "tokentrim.detector=tokenwise"]) == 2
    assert "--detectors" in capsys.readouterr().err


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
    seen = json.loads((out / "visibility.json").read_text())
    assert seen["blocks"] == [5, 6, 7]
    inner = (slice(None), slice(3, -3), slice(3, -3))  # inside the red border of pruned blocks
    for k, b in enumerate(seen["blocks"]):  # the panels as the mp4 shows them (H.264: within a level or two)
        frames = slice(3 * b, 3 * b + 3)
        shown = np.abs(left[frames][inner].astype(int) - right[frames][inner].astype(int)).mean()
        assert shown == pytest.approx(seen["panels"][k], abs=2.0)
    for name in ("baseline", "TokenTrim"):
        assert len(seen["residual"][name]) == 3 and min(seen["residual"][name]) >= 0.0
        assert seen["residual_total"][name] == pytest.approx(sum(seen["residual"][name]))
    assert seen["residual"]["baseline"][0] > 0.0  # the fault's remainder in the block after it


def test_panel_difference_and_visibility_by_hand():
    from tokentrim.app.compare import panel_difference, visibility

    zeros = np.zeros((4, 1, 1, 3), np.uint8)
    right = np.array([0, 3, 6, 9], np.uint8)[:, None, None, None].repeat(3, axis=3)
    first_frame = [0, 1, 4]  # block 0: frame 0; block 1: frames 1-3
    assert panel_difference(zeros, right, first_frame) == [0.0, 6.0]
    assert panel_difference(right, zeros, first_frame) == [0.0, 6.0]  # no uint8 wrap-around
    seen = visibility(
        {"a": zeros, "b": right}, first_frame, 0, {"a": zeros, "b": zeros}, {"a": [0.5], "b": [0.25]}
    )
    assert seen["blocks"] == [1] and seen["panels"] == [6.0] and seen["panels_max"] == 6.0
    assert seen["clean_panels"] == [0.0] and seen["from_clean"] == {"a": [0.0], "b": [6.0]}
    assert seen["residual_total"] == {"a": 0.5, "b": 0.25}
    whole = visibility({"a": zeros, "b": right}, first_frame)
    assert whole["blocks"] == [0, 1] and whole["panels_mean"] == 3.0 and "residual" not in whole
