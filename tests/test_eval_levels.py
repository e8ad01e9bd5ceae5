"""The level measures and the pair comparability check against hand-computed values: Hasler-Suesstrunk
colourfulness, detail energy, P.910 SI / TI of white noise (closed forms), the content flow of an affine camera
field with a moving object, repeated-frame detection, the level summary of a video, comparability flags and the
verdict rule that no flagged video is preferred."""

import math

import numpy as np
import pytest

from tokentrim.eval import compare_reports
from tokentrim.eval import levels as LV
from tokentrim.eval import metrics as M
from tokentrim.eval.drift import METRICS
from tokentrim.eval.levels import LEVEL_SPECS, LEVELS, comparability_flags, level_entry, repeated_frames


def noise(sigma: float, shape, seed: int, mean: float = 128.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(mean + rng.normal(0.0, sigma, shape)), 0, 255).astype(np.uint8)


# ---- frame measures ---------------------------------------------------------------------------------------------


def test_colourfulness_hand_values():
    # half pure red, half pure green: rg = +-255 (mean 0, std 255), yb = 127.5 everywhere -> 255 + 0.3 * 127.5
    frame = np.zeros((4, 8, 3), np.uint8)
    frame[:, :4, 0] = 255
    frame[:, 4:, 1] = 255
    assert M.colourfulness(frame) == pytest.approx(255 + 0.3 * 127.5)
    # one flat colour (200, 100, 50): no spread, mean rg = 100, mean yb = 150 - 50 = 100 -> 0.3 * 100 * sqrt(2)
    assert M.colourfulness(np.full((4, 4, 3), (200, 100, 50), np.uint8)) == pytest.approx(30 * math.sqrt(2))
    assert M.colourfulness(np.full((4, 4, 3), 77, np.uint8)) == 0.0


def test_detail_energy_of_white_noise_and_of_flat_and_blurred_frames():
    # f - G*f for white noise of variance v has variance v * sum((delta - g)^2); for a unit-sum Gaussian of sigma
    # 1 px the sum is 1 - 2 g(0) + sum(g^2) ~ 1 - 2 / (2 pi) + 1 / (4 pi) = 0.761 (continuous approximation)
    gain = 1 - 1 / math.pi + 1 / (4 * math.pi)
    frame = noise(10.0, (300, 300), seed=0)
    assert M.detail_energy(frame) == pytest.approx(gain * (100 + 1 / 12), rel=0.03)
    assert M.detail_energy(np.full((32, 32), 90, np.uint8)) == pytest.approx(0.0, abs=1e-6)
    import cv2

    blurred = cv2.GaussianBlur(frame, (0, 0), 2.0)
    assert M.detail_energy(blurred) < 0.05 * M.detail_energy(frame)


def test_spatial_information_of_white_noise():
    # Sobel x and y of white noise (variance v) are independent N(0, 12 v) (kernel weights squared sum to 12, their
    # product sums to 0), so the gradient magnitude is Rayleigh with std sqrt(12 v (2 - pi / 2))
    v = 100 + 1 / 12
    frame = noise(10.0, (300, 300), seed=1)
    assert M.spatial_information(frame) == pytest.approx(math.sqrt(12 * v * (2 - math.pi / 2)), rel=0.03)
    assert M.spatial_information(np.full((16, 16), 5, np.uint8)) == 0.0


def test_textured_area_counts_blocks_with_visible_detail():
    frame = np.full((32, 64), 100, np.uint8)  # 4 x 8 blocks of 8 px
    frame[:8, :16] += (np.indices((8, 16)).sum(0) % 2 * 10).astype(np.uint8)  # 2 blocks: std 5
    frame[8:16, :8] += (np.indices((8, 8)).sum(0) % 2 * 3).astype(np.uint8)  # 1 block: std 1.5, under 2
    assert M.textured_area(frame, 8, 2.0) == pytest.approx(2 / 32)
    assert M.textured_area(frame, 8, 1.0) == pytest.approx(3 / 32)
    assert M.textured_area(frame[:, :60], 8, 2.0) == pytest.approx(
        2 / 28
    )  # partial blocks at the edge left out
    assert M.textured_area(noise(LV.NOISE_LEVEL, (64, 64), seed=7), 8, 3 * LV.NOISE_LEVEL) == 0.0


def test_temporal_information_of_two_noise_frames():
    a, b = noise(10.0, (200, 200), seed=2), noise(10.0, (200, 200), seed=3)
    assert M.temporal_information(a, b) == pytest.approx(math.sqrt(2 * (100 + 1 / 12)), rel=0.03)
    assert M.temporal_information(a, a) == 0.0


def test_eps_are_the_levels_of_a_featureless_noisy_frame():
    """Each eps is the level of flat grey plus noise of NOISE_LEVEL grey levels (closed forms in levels.py)."""
    s = LV.NOISE_LEVEL
    rgb, grey = noise(s, (400, 400, 3), seed=4), noise(s, (400, 400), seed=5)
    rounding = math.sqrt(1 + 1 / (12 * s * s))  # uint8 rounding adds variance 1/12
    assert M.colourfulness(rgb) == pytest.approx(LV.COLOURFULNESS_EPS * rounding, rel=0.03)
    assert M.detail_energy(grey) == pytest.approx(LV.DETAIL_EPS * rounding**2, rel=0.03)
    assert M.spatial_information(grey) == pytest.approx(LV.SI_EPS * rounding, rel=0.03)
    assert M.temporal_information(grey, noise(s, (400, 400), seed=6)) == pytest.approx(
        LV.TI_EPS * rounding, rel=0.03
    )


def test_content_flow_removes_the_affine_camera_and_keeps_a_moving_object():
    h, w = 64, 96
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    flow = np.stack(
        [0.5 + 0.02 * xs - 0.01 * ys, -0.3 + 0.01 * xs + 0.02 * ys], axis=-1
    )  # pan, zoom, rotation
    flow[20:40, 30:50] += (3.0, -4.0)  # an object moving 5 px relative to the scene
    residual = M.content_flow(flow)
    m = round(max(h, w) * M.CAMERA_MARGIN)
    gy, gx = np.mgrid[m : h - m : M.CAMERA_GRID_STEP, m : w - m : M.CAMERA_GRID_STEP]
    inside = ((gy >= 20) & (gy < 40) & (gx >= 30) & (gx < 50)).ravel()
    assert residual.shape == inside.shape
    np.testing.assert_allclose(residual[~inside], 0.0, atol=1e-4)
    np.testing.assert_allclose(residual[inside], 5.0, atol=1e-4)
    assert M.content_flow(flow[..., :] * 0 + (2.0, 1.0)).max() < 1e-9  # a pure pan leaves nothing


# ---- repeated frames --------------------------------------------------------------------------------------------


def moving_thumbs(n: int, seed: int = 0) -> np.ndarray:
    """Thumbnails of a random pattern moving one pixel per frame: every pair differs."""
    big = np.random.default_rng(seed).uniform(0, 255, (20, 20 + n)).astype(np.float32)
    return np.stack([big[:, t : t + 20] for t in range(n)])


def test_repeated_frames_doubled_held_and_slow():
    thumbs = moving_thumbs(48)
    assert not repeated_frames(thumbs, 16).any()
    doubled = thumbs[np.arange(48) // 2]  # pairs (2k, 2k + 1) repeat
    np.testing.assert_array_equal(repeated_frames(doubled, 16), np.arange(1, 48) % 2 == 1)
    held = thumbs[np.arange(48) // 3]  # 2 of every 3 pairs repeat
    assert repeated_frames(held, 16).sum() == 48 - 16
    noisy = doubled + np.random.default_rng(1).normal(0, 1.0, doubled.shape).astype(np.float32)
    np.testing.assert_array_equal(
        repeated_frames(noisy, 16), np.arange(1, 48) % 2 == 1
    )  # fresh noise on a repeat
    slow = np.stack(
        [thumbs[0] + 0.5 * t for t in range(48)]
    )  # a slow steady change: every pair differs a little
    assert not repeated_frames(slow, 16).any()


def test_level_entry_start_late_loss_and_p910():
    spec = LEVEL_SPECS["spatial_information"]
    per_segment = [
        [10.0, 12.0, 20.0],
        [8.0],
        [6.0],
        [4.0, 6.0],
    ]  # 4 segments: the last quarter is the last one
    e = level_entry(spec, per_segment, start_count=2, fps=16.0)
    assert e["segments"] == [14.0, 8.0, 6.0, 5.0] and e["video"] == pytest.approx(66 / 7)
    assert e["start"] == 11.0 and e["late"] == 5.0 and e["p910"] == 20.0
    assert e["loss"] == pytest.approx(math.log((11 + spec.eps) / (5 + spec.eps)))
    rate = level_entry(LEVEL_SPECS["effective_frame_rate"], [[1, 0, 1, 0], [1, 1, 1, 1]], 4, 16.0)
    assert rate["start"] == 8.0 and rate["late"] == 16.0 and rate["loss"] == 0.0 and "p910" not in rate
    assert LV.start_window(16, 32) == 8 and LV.start_window(2, 32) == 2 and LV.start_window(16, 4) == 4


# ---- comparability and the verdict -------------------------------------------------------------------------------


def report(levels: dict[str, tuple[float, float]] | None = None, drifts=None, fps: float = 16.0) -> dict:
    """A report whose level measures go start -> late (default 50 -> 50) and whose drifts are given."""
    entries = {}
    for spec in LEVELS:
        start, late = (levels or {}).get(spec.name, (50.0, 50.0))
        loss = max(0.0, math.log((start + spec.eps) / (late + spec.eps)))
        entries[spec.name] = {"start": start, "late": late, "loss": loss}
    return {"fps": fps, "flags": [], "levels": entries,
            "metrics": {s.name: {"drift": (drifts or {}).get(s.name, 0.0), "max": 0.0} for s in METRICS}}  # fmt: skip


def test_flags_from_the_start_and_increasingly_name_the_measure_and_both_values():
    source = report()
    grey = report({"colourfulness": (0.0, 0.0)})
    texts, details = comparability_flags(grey, source)
    assert texts == ["less colour from the start: 0 vs 50 M"] and details[0]["measure"] == "colourfulness"
    assert comparability_flags(source, grey) == ([], [])  # the richer video is not flagged
    fading = report({"detail": (50.0, 20.0)})
    texts, _ = comparability_flags(fading, source)
    assert texts == ["increasingly less detail: 50 to 20 vs 50 to 50 grey levels^2"]


def test_flags_respect_the_margin_and_ignore_a_partners_rise():
    spec = LEVEL_SPECS["detail"]
    below = 50.0 * math.exp(-0.9 * spec.margin)  # start gap just under the margin: not flagged
    assert comparability_flags(report({"detail": (below, below)}), report()) == ([], [])
    above = (50.0 + spec.eps) * math.exp(-1.1 * spec.margin) - spec.eps
    assert comparability_flags(report({"detail": (above, above)}), report())[0]
    noisy = report({"detail": (50.0, 200.0)})  # the partner's detail rises (noise): the steady video is fine
    assert comparability_flags(report(), noisy) == ([], [])
    both_lose = report({"detail": (50.0, 20.0)}), report({"detail": (50.0, 21.0)})  # the same loss: no flag
    assert comparability_flags(*both_lose) == ([], [])
    # a colourful video that fades still ends richer than a grey partner: it lost more, but is not poorer
    fading, grey = report({"colourfulness": (80.0, 40.0)}), report({"colourfulness": (0.0, 0.0)})
    assert comparability_flags(fading, grey) == ([], [])
    assert comparability_flags(grey, fading)[0] == ["less colour from the start: 0 vs 80 M"]


def test_temporal_information_compares_only_at_the_same_frame_rate():
    slow = report({"temporal_information": (2.0, 2.0)})
    assert comparability_flags(slow, report())[0]
    at_8_fps = report(
        {"temporal_information": (2.0, 2.0)}, fps=8.0
    )  # per-pair change grows with the frame step
    assert comparability_flags(at_8_fps, report())[0] == []


def test_a_flagged_video_is_never_preferred_even_when_the_categories_favour_it():
    source = report(
        drifts={"colour_tiles": 20.0, "sharpness": 1.0, "motion": 1.0}
    )  # drifts in three categories
    grey = report({"colourfulness": (0.0, 0.0)})  # no drift at all, but no colour
    forward, backward = compare_reports(source, grey), compare_reports(grey, source)
    assert forward["votes"]["treated"] == 3 and forward["verdict"] == "tie"
    assert backward["verdict"] == "tie"
    assert forward["flags"] == {"baseline": [], "treated": ["less colour from the start: 0 vs 50 M"]}
    assert "treated is markedly poorer (less colour" in forward["reason"]
    assert forward["shortfalls"]["treated"][0]["measure"] == "colourfulness"
    # the flagged video does not win; the other one still can, by the categories
    clean = report()
    assert (
        compare_reports(
            clean, report({"colourfulness": (0.0, 0.0)}, drifts={"structure": 1.0, "sharpness": 1.0})
        )["verdict"]
        == "baseline"
    )
    # a degenerate flag still hands the verdict to the other video, and is what `flags` shows
    frozen = {**report({"content_motion": (0.0, 0.0)}), "flags": ["frozen"]}
    result = compare_reports(clean, frozen)
    assert result["verdict"] == "baseline" and result["flags"]["treated"] == ["frozen"]
