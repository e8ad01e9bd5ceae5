"""The building blocks of the drift evaluation against hand-computed values: frame measures, CIELAB colour
differences, SSIM's contrast-structure term, drift curves and their summaries, the guards, the verdict rule."""

import math

import cv2
import numpy as np
import pytest

from tokentrim.errors import UserError
from tokentrim.eval import EvalSettings, compare_reports, evaluate_frames, segment_layout
from tokentrim.eval import appearance as A
from tokentrim.eval import guards as G
from tokentrim.eval import metrics as M
from tokentrim.eval.drift import METRICS, SPECS, MetricSpec, level_curve, summarise, theil_sen_slope
from tokentrim.eval.levels import LEVELS
from tokentrim.eval.verdict import category_vote, compare_drift, majority

FPS = 16


def texture(h, w, seed=0, blur=2.0):
    """Smooth random grey-ish RGB texture uint8 with values inside 60..190."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(size=(h, w, 3)).astype(np.float32), (0, 0), blur)
    img = (img - img.min()) / (img.max() - img.min())
    return (60 + 130 * img).round().astype(np.uint8)


# ---- frame measures ---------------------------------------------------------------------------------------------


def test_laplacian_variance_of_white_noise():
    # Kernel [[0,1,0],[1,-4,1],[0,1,0]] on iid noise of variance s^2: (4 * 1 + 16) s^2 = 20 s^2.
    rng = np.random.default_rng(0)
    sigma = 10.0
    g = (128 + rng.normal(0, sigma, (256, 256))).round().clip(0, 255).astype(np.uint8)
    expected = 20 * (sigma**2 + 1 / 12)  # rounding to integers adds uniform noise of variance 1/12
    assert M.laplacian_variance(g) == pytest.approx(expected, rel=0.05)
    assert M.laplacian_variance(np.full((32, 32), 77, np.uint8)) == 0.0


def test_bhattacharyya_distance_hand_values():
    same = np.array([[1.0, 3.0]])
    assert M.bhattacharyya_distance(same, 2 * same) == pytest.approx(0.0, abs=1e-7)  # counts are normalised
    assert M.bhattacharyya_distance(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2): sqrt(1 - sqrt(1/2))
    assert M.bhattacharyya_distance(np.array([[4.0, 0.0]]), np.array([[1.0, 1.0]])) == pytest.approx(
        math.sqrt(1 - math.sqrt(0.5))
    )


def test_top_fraction_mean():
    values = np.arange(100, dtype=np.float32)  # the largest 5 % are 95..99
    assert M.top_fraction_mean(values, 0.05) == pytest.approx(97.0)
    assert M.top_fraction_mean(np.array([3.0, 1.0]), 0.05) == 3.0  # at least one value


def test_camera_velocity_is_median_flow_of_a_pan():
    big = texture(80, 120, seed=4)
    prev = M.grey(big[10:58, 10:90])
    nxt = M.grey(big[11:59, 13:93])  # nxt(y, x) = prev(y + 1, x + 3): content moves by (-3, -1)
    v = M.camera_velocity(M.optical_flow(prev, nxt))
    np.testing.assert_allclose(v, [-3.0, -1.0], atol=0.25)  # flow maps prev(y, x) to nxt(y + dy, x + dx)


def test_scaled_size():
    assert M.scaled_size(480, 832, 256) == (148, 256, 256 / 832)
    assert M.scaled_size(64, 112, 256) == (64, 112, 1.0)  # never upscaled


# ---- colour and structure -----------------------------------------------------------------------------------


def test_cielab_of_srgb_primaries_and_delta_e():
    # Published sRGB (D65) values: red = (53.24, 80.09, 67.20), mid grey 0.5 = L* 53.39, white = L* 100.
    px = np.array([[[255, 0, 0], [128, 128, 128], [255, 255, 255], [0, 0, 0]]], np.uint8)
    lab = A.srgb_to_lab(px)[0]
    np.testing.assert_allclose(lab[0], [53.24, 80.09, 67.20], atol=0.05)
    assert lab[1][0] == pytest.approx(53.59, abs=0.05)  # 128/255 = 0.502, a shade above 0.5
    np.testing.assert_allclose(lab[2], [100, 0, 0], atol=0.01)
    assert A.delta_e76(lab[0], lab[3]) == pytest.approx(math.sqrt(53.24**2 + 80.09**2 + 67.20**2), abs=0.1)
    assert A.mean_chroma(lab[None, :1]) == pytest.approx(math.hypot(80.09, 67.20), abs=0.1)


def test_tile_means_and_local_quantile():
    lab = np.zeros((4, 6, 3), np.float32)
    lab[:2, :3] = (10, 0, 0)  # top-left tile of a 2 x 2 grid
    np.testing.assert_allclose(A.tile_means(lab, 2)[..., 0], [[10, 0], [0, 0]])
    # one of four tiles differs by 10: the maximum sees it, the median does not; q = 0.95 interpolates at rank
    # 0.95 * 3 = 2.85 between 0 (rank 2) and 10 (rank 3): 8.5
    ref = np.zeros_like(lab)
    assert A.local_colour_difference(ref, lab, 2, 1.0) == pytest.approx(10.0)
    assert A.local_colour_difference(ref, lab, 2, 0.5) == pytest.approx(0.0)
    assert A.local_colour_difference(ref, lab, 2, 0.95) == pytest.approx(8.5)


def test_overlap_crops():
    ref = np.arange(20).reshape(4, 5)
    seg = np.roll(ref, shift=(1, 2), axis=(0, 1))  # content moved by dx = 2, dy = 1 (wrapped parts excluded)
    a, b, fraction = A.overlap(ref, seg, (2, 1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 3) and fraction == pytest.approx(9 / 20)
    a, b, _ = A.overlap(seg, ref, (-2, -1))
    np.testing.assert_array_equal(a, b)
    assert A.overlap(ref, seg, (5, 0))[2] == 0.0


def test_ssim_contrast_structure_hand_cases():
    x = texture(48, 64)[..., 0].astype(np.float64)
    assert A.ssim_contrast_structure(x, x) == pytest.approx(1.0)
    assert A.ssim_contrast_structure(x, x + 40) == pytest.approx(1.0)  # brightness is colour, not structure
    assert A.ssim_contrast_structure(x, 255 - x) < 0  # inverted structure: negative correlation
    flat = np.full((16, 16), 100.0)
    assert A.ssim_contrast_structure(flat, flat + 7) == pytest.approx(1.0)  # C2 / C2
    rng = np.random.default_rng(0)
    a, b = rng.normal(128, 30, (2, 128, 128))
    # independent noise: covariance ~0, local variances ~s^2 (slightly less in a finite window): ~C2 / (2 s^2 + C2)
    assert A.ssim_contrast_structure(a, b) < 3 * A.SSIM_C2 / (2 * 30.0**2 + A.SSIM_C2)


# ---- drift curves and summaries --------------------------------------------------------------------------------


def test_level_curve_kinds():
    two_sided = MetricSpec("a", "detail", "log-ratio", "", "", 0.0, eps=1.0)
    rising = MetricSpec("b", "temporal_stability", "log-increase", "", "", 0.0, eps=1.0)
    values = [3.0, 7.0, 1.0]  # (7 + 1) / (3 + 1) = 2 and (1 + 1) / (3 + 1) = 1/2
    np.testing.assert_allclose(level_curve(two_sided, values, [0, 0, 0]), [0, math.log(2), math.log(2)])
    np.testing.assert_allclose(level_curve(rising, values, [0, 0, 0]), [0, math.log(2), 0])
    np.testing.assert_allclose(level_curve(two_sided, values, [0, 0, 1]), [0, math.log(2), math.log(4)])
    with pytest.raises(ValueError, match="eps"):
        MetricSpec("c", "motion", "log-ratio", "", "", 0.0)


def test_theil_sen_slope_ignores_an_outlier():
    # pairwise slopes of (0,0) (1,1) (2,2) (3,10): 1, 1, 10/3, 1, 9/2, 8 -> median (1 + 10/3) / 2 = 13/6
    assert theil_sen_slope([0, 1, 2, 3], [0, 1, 2, 10]) == pytest.approx(13 / 6)
    assert theil_sen_slope([0, 1, 2, 3, 4], [0, 1, 2, 3, 40]) == pytest.approx(1.0)
    assert theil_sen_slope([0], [5]) == 0.0


def test_summarise_mean_max_slope_first_last():
    spec = SPECS["structure"]
    entry = summarise(spec, [0.0, 0.3, 0.1, 0.2], [0.0, 0.3, 0.1, 0.2], segment_seconds=2.0)
    assert entry["drift"] == pytest.approx(0.2)  # mean of the segments after the reference
    assert entry["max"] == 0.3 and entry["first_last"] == 0.2 and entry["category"] == "structure"
    # pairwise slopes over centres 1, 3, 5, 7 s: .3/2, .1/4, .2/6, -.2/2, -.1/4, .1/2; sorted -.1, -.025, .025,
    # 1/30, .05, .15 -> median (0.025 + 1/30) / 2
    assert entry["slope"] == pytest.approx((0.025 + 1 / 30) / 2)


def test_every_category_has_a_measure():
    assert {s.category for s in METRICS} == {"colour", "structure", "detail", "temporal_stability", "motion"}


# ---- guards ----------------------------------------------------------------------------------------------------


def test_longest_still_run_compares_with_the_run_start():
    thumbs = np.zeros((10, 4, 4), np.float32)
    thumbs[:, 0, 0] = [0, 1, 2, 3, 4, 4, 4, 4, 4, 9]  # creeping by 1 level per frame, then still, then a jump
    # from frame 0: frames 0..2 are within 2 levels; frame 3 starts a new run 3..8 (3, 4, 4, 4, 4, 4); 9 alone
    assert G.longest_still_run(thumbs) == (3, 6)
    assert G.longest_still_run(np.zeros((5, 2, 2), np.float32)) == (0, 5)


def test_sliding_mean_window():
    thumbs = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    # window 4 centred as [t - 2, t + 2): frame 0 -> mean(0, 1) = 0.5, frame 2 -> mean(0..3) = 1.5, frame 5 ->
    # mean(3, 4, 5) = 4
    np.testing.assert_allclose(G.sliding_mean(thumbs, 4)[:, 0, 0], [0.5, 1.0, 1.5, 2.5, 3.5, 4.0])
    assert G.sliding_mean(thumbs, 1) is thumbs


def test_blank_mask_and_rms_distances():
    thumbs = np.zeros((3, 4, 4), np.float32)
    thumbs[1, :2] = 100.0  # half the pixels at 100: std 50
    thumbs[2] = 1.0
    np.testing.assert_array_equal(G.blank_mask(thumbs), [True, False, True])
    d = G.rms_distances(thumbs)
    # frame 0 vs 1: half the pixels differ by 100 -> RMS sqrt(100^2 / 2); 0 vs 2: 1; 1 vs 2: sqrt((99^2 + 1) / 2)
    np.testing.assert_allclose(d, [[0, 100 / math.sqrt(2), 1], [100 / math.sqrt(2), 0, math.sqrt((99**2 + 1) / 2)],
                                   [1, math.sqrt((99**2 + 1) / 2), 0]], atol=1e-4)  # fmt: skip


def test_find_loops_needs_motion_and_distance():
    rng = np.random.default_rng(0)
    clip = rng.uniform(0, 255, (6, 4, 4)).astype(np.float32)  # 6 very different frames
    assert [
        (lp["start"], lp["end"], lp["source"]) for lp in G.find_loops(np.concatenate([clip, clip]), 6)
    ] == [(6, 12, 0)]
    assert G.find_loops(np.concatenate([clip, clip]), 7) == []  # the repeat is shorter than required
    still = np.repeat(clip[:1], 12, axis=0)
    assert (
        G.find_loops(still, 6) == []
    )  # a still video repeats itself but does not move: the frozen guard's case


def test_dynamic_threshold_scales_vbench():
    # 6 px per 1/8 s at a 256 short side -> at 480 x 832 and 16 fps: 6 * 480 / 256 / 2 = 5.625 px per frame
    assert G.dynamic_threshold(480, 832, 16.0) == pytest.approx(5.625)


# ---- whole-video evaluation -------------------------------------------------------------------------------------


def test_static_video_has_no_drift_and_is_frozen():
    report = evaluate_frames(np.repeat(texture(48, 64)[None], 6 * FPS, axis=0), FPS)
    assert (report["segments"], report["segment_frames"], report["frames_unused"]) == (3, 32, 0)
    for name, entry in report["metrics"].items():
        assert entry["curve"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9), name
        assert entry["drift"] == pytest.approx(0.0, abs=1e-9), name
    assert report["flags"] == ["frozen"] and report["guards"]["longest_still_s"] == 6.0
    assert report["reference_segments"] == [0, 0, 0]


def test_camera_pan_motion_and_warp_error():
    dx, dy, h, w = 2, 1, 48, 64
    big = texture(h + dy * 64 + 8, w + dx * 64 + 8, seed=3, blur=1.5)
    video = np.stack([big[4 + t * dy : 4 + t * dy + h, 4 + t * dx : 4 + t * dx + w] for t in range(64)])
    m = evaluate_frames(video, FPS)["metrics"]
    for value in m["motion"]["values"]:
        assert value == pytest.approx(math.hypot(dx, dy), rel=0.05)  # px per frame, the true flow everywhere
    assert max(m["warp_error"]["values"]) < 0.5  # grey levels: the warp explains the change
    no_motion = np.abs(np.diff(video[:2].astype(float), axis=0)).mean()
    assert no_motion > 3 * max(m["warp_error"]["values"])


def test_segment_layout_remainder_and_errors():
    layout = segment_layout(100, 16, 2.0)
    assert (layout.segment_frames, layout.segments, layout.frames_unused) == (32, 3, 4)
    assert layout.bounds(2) == (64, 96)
    with pytest.raises(UserError, match=r"1\.50 s \(24 frames at 16 fps\).*--segment-seconds 0\.75"):
        segment_layout(24, 16, 2.0)
    with pytest.raises(UserError, match="under 2 frames"):
        segment_layout(100, 16, 0.05)
    with pytest.raises(UserError, match="must be > 0"):
        segment_layout(100, 16, 0.0)


def test_bad_frames_and_settings_raise():
    with pytest.raises(UserError, match="uint8"):
        evaluate_frames(np.zeros((64, 8, 8), np.uint8), FPS)
    with pytest.raises(UserError, match="--frame-stride 32"):
        evaluate_frames(np.zeros((64, 8, 8, 3), np.uint8), FPS, settings=EvalSettings(frame_stride=32))
    with pytest.raises(ValueError, match="tile_quantile"):
        EvalSettings(tile_quantile=1.5)


# ---- the verdict rule -------------------------------------------------------------------------------------------


def test_compare_drift_margin_and_floor():
    spec = MetricSpec("m", "colour", "distance", "", "", floor=0.1)
    assert compare_drift(spec, 1.0, 2.0) == "baseline"
    assert compare_drift(spec, 2.0, 1.0) == "treated"
    assert compare_drift(spec, 1.0, 1.05) == "tie"  # within 10 % of the larger drift
    assert compare_drift(spec, 0.05, 0.09) == "tie"  # both below the floor
    assert compare_drift(spec, 0.0, 0.15) == "baseline"  # 0.15 is above floor and margin


def test_category_votes_and_majority():
    assert category_vote(["baseline", "tie"]) == "baseline"
    assert category_vote(["baseline", "treated"]) == "tie"  # measures of one category disagree: abstain
    assert majority({"a": "treated", "b": "treated", "c": "baseline", "d": "tie", "e": "tie"}) == "treated"
    assert majority({"a": "treated", "b": "baseline", "c": "tie"}) == "tie"
    assert majority({"a": "tie"}) == "tie"
    # one deciding category alone does not settle a verdict; two against none, or two against one, do
    assert majority({"a": "treated", "b": "tie", "c": "tie", "d": "tie", "e": "tie"}) == "tie"
    assert majority({"a": "baseline", "b": "baseline", "c": "tie"}) == "baseline"
    assert majority({"a": "treated", "b": "treated", "c": "baseline", "d": "baseline"}) == "tie"


def fake_report(
    drifts: dict[str, float], flags=(), levels: dict[str, tuple[float, float]] | None = None
) -> dict:
    """A report with the given drifts and flags; levels {measure: (start, late)} default to 10 -> 10."""
    levels = levels or {}
    entries = {}
    for spec in LEVELS:
        start, late = levels.get(spec.name, (10.0, 10.0))
        loss = max(0.0, math.log((start + spec.eps) / (late + spec.eps)))
        entries[spec.name] = {"start": start, "late": late, "loss": loss}
    return {
        "fps": 16.0,
        "flags": list(flags),
        "levels": entries,
        "metrics": {s.name: {"drift": drifts.get(s.name, 0.0), "max": 0.0} for s in METRICS},
    }


def test_verdict_one_vote_per_category_and_flags_override():
    colour_heavy = fake_report({"colour_tiles": 20.0, "colourfulness": 1.0})  # two colour measures drift
    detail_motion = fake_report({"sharpness": 1.0, "motion": 1.0})  # two categories drift
    result = compare_reports(colour_heavy, detail_motion)
    assert result["categories"]["colour"]["vote"] == "treated"
    assert result["votes"] == {"baseline": 2, "treated": 1, "tie": 2}  # colour counts once, not twice
    assert result["verdict"] == "baseline"
    flagged = compare_reports(fake_report({}, ["frozen"]), detail_motion)  # the frozen one drifts less ...
    assert flagged["verdict"] == "treated" and "baseline is degenerate (frozen)" in flagged["reason"]
    both = compare_reports(fake_report({}, ["loop"]), fake_report({}, ["blank"]))
    assert both["verdict"] == "tie" and both["flags"] == {"baseline": ["loop"], "treated": ["blank"]}
