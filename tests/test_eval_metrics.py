"""Weight-free drift metrics on synthetic videos with known answers: formulas on hand-built frames, a static
video, noise appearing in the last segment, a colour shift, a camera pan; drift kinds and the verdict rule."""

import math

import cv2
import numpy as np
import pytest

from tokentrim.errors import UserError
from tokentrim.eval import EvalSettings, compare_reports, evaluate_frames, segment_layout
from tokentrim.eval import metrics as M
from tokentrim.eval.drift import SPECS, MetricSpec, compare_drift, drift

FPS = 16
H, W = 48, 64
SEG = 32  # frames in a 2 s segment at 16 fps


def texture(h, w, seed=0, blur=2.0):
    """Smooth random RGB texture with values inside 60..190 (no clipping when noise or shifts are added)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(size=(h, w, 3)).astype(np.float32), (0, 0), blur)
    img = (img - img.min()) / (img.max() - img.min())
    return (60 + 130 * img).round().astype(np.uint8)


def static_video(seconds=6, seed=0):
    return np.repeat(texture(H, W, seed)[None], seconds * FPS, axis=0)


def noisy_tail(video, sigma, seed=1):
    """Independent Gaussian noise of std `sigma` on every frame of the last 2 s segment."""
    rng = np.random.default_rng(seed)
    out = video.astype(np.float64)
    out[-SEG:] += rng.normal(0, sigma, size=out[-SEG:].shape)
    return out.round().clip(0, 255).astype(np.uint8)


# ---- formulas on hand-built frames -------------------------------------------------------------------------


def test_flicker_score_is_vbench_formula():
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1] = 51  # |0 - 51| = 51 either way round: (255 - 51) / 255 = 0.8
    np.testing.assert_allclose(M.flicker_scores(frames), [0.8, 0.8])
    frames[2, :2] = 51  # half the pixels still differ by 51 from frame 1 -> mean 25.5 -> 0.9
    np.testing.assert_allclose(M.flicker_scores(frames), [0.8, 0.9])


def test_colour_stats_on_two_colour_frame():
    frame = np.zeros((2, 4, 3), np.uint8)
    frame[0] = (255, 0, 0)
    frame[1] = (0, 0, 255)
    s = M.colour_stats(frame)
    np.testing.assert_allclose(s["mean"], [127.5, 0, 127.5])
    np.testing.assert_allclose(s["std"], [127.5, 0, 127.5])  # population std of {0, 255}
    assert s["saturation"] == pytest.approx(1.0)  # pure colours: (max - min) / max = 1
    assert s["luminance"] == pytest.approx(0.299 * 127.5 + 0.114 * 127.5)


def test_bhattacharyya_distance_hand_values():
    same = np.array([[1.0, 3.0]])
    assert M.bhattacharyya_distance(same, 2 * same) == pytest.approx(0.0, abs=1e-7)  # counts are normalised
    assert M.bhattacharyya_distance(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2): sqrt(1 - sqrt(1/2))
    assert M.bhattacharyya_distance(np.array([[4.0, 0.0]]), np.array([[1.0, 1.0]])) == pytest.approx(
        math.sqrt(1 - math.sqrt(0.5))
    )
    # rows (channels) are averaged
    p = np.array([[1.0, 0.0], [1.0, 1.0]])
    q = np.array([[0.0, 1.0], [1.0, 1.0]])
    assert M.bhattacharyya_distance(p, q) == pytest.approx(0.5)


def test_laplacian_variance_of_white_noise():
    # Kernel [[0,1,0],[1,-4,1],[0,1,0]] on iid noise of variance s^2: (4 * 1 + 16) s^2 = 20 s^2.
    rng = np.random.default_rng(0)
    sigma = 10.0
    g = (128 + rng.normal(0, sigma, (256, 256))).round().clip(0, 255).astype(np.uint8)
    expected = 20 * (sigma**2 + 1 / 12)  # rounding to integers adds uniform noise of variance 1/12
    assert M.laplacian_variance(g) == pytest.approx(expected, rel=0.05)
    assert M.laplacian_variance(np.full((32, 32), 77, np.uint8)) == 0.0


def test_high_frequency_fraction_white_noise_and_smooth():
    rng = np.random.default_rng(0)
    noise = (128 + rng.normal(0, 20, (128, 160))).round().astype(np.uint8)
    # Flat spectrum: the share of the [-1/2, 1/2]^2 frequency square outside radius 1/4 is 1 - pi/16.
    assert M.high_frequency_fraction(noise, 0.25) == pytest.approx(1 - math.pi / 16, abs=0.02)
    smooth = cv2.cvtColor(texture(128, 160, blur=4.0), cv2.COLOR_RGB2GRAY)
    assert M.high_frequency_fraction(smooth, 0.25) < 0.02
    assert M.high_frequency_fraction(np.full((16, 16), 9, np.uint8), 0.25) == 0.0


# ---- whole-video evaluation ----------------------------------------------------------------------------------


def test_static_video_has_no_drift():
    report = evaluate_frames(static_video(), FPS)
    assert (report["segments"], report["segment_frames"], report["frames_unused"]) == (3, SEG, 0)
    m = report["metrics"]
    assert m["flicker"]["values"] == [1.0, 1.0, 1.0]
    assert max(m["flow_magnitude"]["values"]) < 0.01
    assert max(m["warp_error"]["values"]) < 0.01
    assert m["hist_distance"]["values"] == [0.0, 0.0, 0.0]
    for name, entry in m.items():
        assert entry["drift"] == pytest.approx(0.0, abs=1e-9), name


def test_noise_in_last_segment_raises_flicker_sharpness_and_hf_drift():
    sigma = 20.0
    report = evaluate_frames(noisy_tail(static_video(), sigma), FPS)
    m = report["metrics"]
    # |n_t - n_t+1| with n ~ N(0, s^2) iid has mean 2 s / sqrt(pi): flicker = 1 - 2 s / (sqrt(pi) 255).
    expected_last = 1 - 2 * sigma / math.sqrt(math.pi) / 255
    assert m["flicker"]["values"][:2] == [1.0, 1.0]
    assert m["flicker"]["last"] == pytest.approx(expected_last, abs=0.004)
    assert m["flicker"]["drift"] == pytest.approx(1 - expected_last, abs=0.004)
    for name in ("laplacian_var", "hf_energy"):
        assert m[name]["delta"] > 0, name  # noise raises both
        assert m[name]["drift"] > 1.0, name  # |ln ratio| > 1: more than e times
    assert m["warp_error"]["drift"] > 5.0  # noise cannot be predicted by warping the previous frame
    assert m["hist_distance"]["drift"] > 0.05
    # colour means barely move: the noise is zero-mean
    assert m["rgb_mean_shift"]["drift"] < 1.0


def test_colour_shift_in_last_segment_has_the_right_sign():
    video = static_video().astype(np.int16)
    video[-SEG:, ..., 0] += 30  # red +30 in the last segment only (values stay <= 220)
    report = evaluate_frames(video.astype(np.uint8), FPS)
    m = report["metrics"]
    np.testing.assert_allclose(m["rgb_mean_shift"]["channel_delta"], [30, 0, 0], atol=1e-9)
    assert m["rgb_mean_shift"]["values"] == pytest.approx([0, 0, 30])
    assert m["luminance"]["delta"] == pytest.approx(0.299 * 30)
    assert m["luminance"]["drift"] == pytest.approx(0.299 * 30)
    assert m["hist_distance"]["values"][1] == 0.0 and m["hist_distance"]["last"] > 0.1
    # the shift happens between segments, so no consecutive pair inside a segment flickers
    assert m["flicker"]["values"] == [1.0, 1.0, 1.0]


def pan_video(dx, dy, frames, h, w, seed=3):
    big = texture(h + dy * frames + 8, w + dx * frames + 8, seed, blur=1.5)
    return np.stack([big[4 + t * dy : 4 + t * dy + h, 4 + t * dx : 4 + t * dx + w] for t in range(frames)])


@pytest.mark.parametrize(
    "dx, dy, size, long_side",
    [(2, 1, (H, W), 256),  # no downscaling
     (4, 2, (2 * H, 2 * W), W)],  # flow at half resolution, reported in original pixels
)  # fmt: skip
def test_camera_pan_flow_magnitude_and_warp_error(dx, dy, size, long_side):
    video = pan_video(dx, dy, 4 * FPS, *size)
    report = evaluate_frames(video, FPS, settings=EvalSettings(flow_long_side=long_side))
    m = report["metrics"]
    shift = math.hypot(dx, dy)  # px per frame, the true flow everywhere
    for value in m["flow_magnitude"]["values"]:
        assert value == pytest.approx(shift, rel=0.05)
    assert m["flow_magnitude"]["drift"] < SPECS["flow_magnitude"].floor
    assert max(m["warp_error"]["values"]) < 0.5  # grey levels: the warp explains the change
    # a static video of the same texture has far larger error if the motion is ignored
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


def test_bad_frames_raise_user_error():
    with pytest.raises(UserError, match="uint8"):
        evaluate_frames(np.zeros((64, 8, 8), np.uint8), FPS)


# ---- drift kinds and the verdict ------------------------------------------------------------------------------


def test_drift_kinds():
    spec = dict(unit="", floor=0.0, votes=True)
    assert drift(MetricSpec("a", kind="decrease", **spec), 0.9, 0.7) == pytest.approx(0.2)
    assert drift(MetricSpec("a", kind="decrease", **spec), 0.7, 0.9) == 0.0  # improvement is not drift
    assert drift(MetricSpec("a", kind="increase", **spec), 2.0, 5.0) == 3.0
    assert drift(MetricSpec("a", kind="increase", **spec), 5.0, 2.0) == 0.0
    assert drift(MetricSpec("a", kind="two-sided", **spec), 5.0, 2.0) == 3.0
    log_ratio = MetricSpec("a", kind="log-ratio", eps=1.0, **spec)
    # doubling and halving count the same: |ln((x + eps) / (y + eps))|
    assert drift(log_ratio, 3.0, 7.0) == pytest.approx(math.log(2))
    assert drift(log_ratio, 7.0, 3.0) == pytest.approx(math.log(2))
    assert drift(MetricSpec("a", kind="distance", **spec), 0.0, 0.4) == 0.4


def test_compare_drift_margin_and_floor():
    spec = MetricSpec("m", unit="", kind="two-sided", floor=0.1, votes=True)
    assert compare_drift(spec, 1.0, 2.0) == "baseline"
    assert compare_drift(spec, 2.0, 1.0) == "treated"
    assert compare_drift(spec, 1.0, 1.05) == "tie"  # within 10 % of the larger drift
    assert compare_drift(spec, 0.05, 0.09) == "tie"  # both below the floor
    assert compare_drift(spec, 0.0, 0.15) == "baseline"  # 0.15 is above floor and margin


def test_pair_verdict_prefers_clean_video_and_is_symmetric():
    clean = evaluate_frames(static_video(), FPS)
    noisy = evaluate_frames(noisy_tail(static_video(), 20.0), FPS)
    result = compare_reports(noisy, clean)
    assert result["verdict"] == "treated"
    for name in ("flicker", "warp_error", "laplacian_var", "hf_energy", "hist_distance"):
        assert result["comparison"][name]["less_drift"] == "treated", name
    swapped = compare_reports(clean, noisy)
    assert swapped["verdict"] == "baseline"
    assert swapped["votes"] == {"baseline": result["votes"]["treated"], "treated": result["votes"]["baseline"],
                                "tie": result["votes"]["tie"]}  # fmt: skip
    assert compare_reports(clean, clean)["verdict"] == "tie"
