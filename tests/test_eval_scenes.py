"""The synthetic suite: a clean moving reference scene against degenerate and drifting versions of
it, each asserting the preferred video or the flag, both ways round (swapping the videos swaps the verdict).

Scenes are generated here (no downloads): a static smooth texture with three bouncing discs and mild sensor noise,
8 s at 16 fps (four 2 s segments), 64 x 112 pixels. Drifts grow linearly from 0 at the start to full strength at
the end. The generators are imported by the other eval tests.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tokentrim.eval import compare_reports, evaluate_frames

FPS = 16
SECONDS = 8
H, W = 64, 112
T = SECONDS * FPS
SENSOR_SIGMA = 1.5


def texture(h: int, w: int, seed: int, blur: float = 3.0) -> np.ndarray:
    """Smooth random RGB texture float [h, w, 3] in 60..190 (room for casts and noise without clipping)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(size=(h, w, 3)).astype(np.float32), (0, 0), blur)
    img = (img - img.min()) / (img.max() - img.min())
    return 60.0 + 130.0 * img


DISCS = (  # (x0, y0, vx, vy, radius, RGB colour)
    (20.0, 16.0, 1.3, 0.7, 7.0, (200.0, 60.0, 60.0)),
    (80.0, 40.0, -1.1, 0.9, 6.0, (50.0, 170.0, 70.0)),
    (55.0, 30.0, 0.6, -1.2, 8.0, (60.0, 80.0, 200.0)),
)


def bounce(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at speed v between walls lo and hi (reflecting), at times t (frames)."""
    span = hi - lo
    x = np.mod(p0 - lo + v * t, 2 * span)
    return lo + np.where(x > span, 2 * span - x, x)


def draw_discs(frames: np.ndarray, discs=DISCS, grow: float = 0.0) -> None:
    """Paint anti-aliased discs in place on float frames [T, h, w, 3]; `grow` adds radius linearly over time."""
    n, h, w = frames.shape[:3]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = np.arange(n, dtype=np.float64)
    for x0, y0, vx, vy, r, colour in discs:
        radius = r + grow * t / (n - 1)
        xs = bounce(x0, vx, t, r, w - 1 - r)
        ys = bounce(y0, vy, t, r, h - 1 - r)
        for i in range(n):
            alpha = np.clip(radius[i] + 0.5 - np.hypot(xx - xs[i], yy - ys[i]), 0.0, 1.0)[..., None]
            frames[i] = (1 - alpha) * frames[i] + alpha * np.asarray(colour)


def finish(frames: np.ndarray, seed: int = 7, sigma: float = SENSOR_SIGMA) -> np.ndarray:
    """Add independent sensor noise and quantise to uint8."""
    rng = np.random.default_rng(seed)
    return (frames + rng.normal(0.0, sigma, frames.shape)).round().clip(0, 255).astype(np.uint8)


def ramp(n: int = T) -> np.ndarray:
    """0 at the first frame to 1 at the last: float [n, 1, 1, 1] for broadcasting over frames."""
    return np.linspace(0.0, 1.0, n)[:, None, None, None]


def reference_float(seed: int = 0, grow: float = 0.0) -> np.ndarray:
    frames = np.repeat(texture(H, W, seed)[None], T, axis=0)
    draw_discs(frames, grow=grow)
    return frames


def reference() -> np.ndarray:
    """The clean moving scene: uint8 [T, H, W, 3]."""
    return finish(reference_float())


def frozen() -> np.ndarray:
    return np.repeat(reference()[:1], T, axis=0)


def frozen_half() -> np.ndarray:
    """Moves for the first half, then stops: stagnation mid-rollout."""
    video = reference()
    video[T // 2 :] = video[T // 2 - 1]
    return video


def looped() -> np.ndarray:
    """The first 2 s played over and over."""
    clip = reference()[: 2 * FPS]
    return np.concatenate([clip] * (T // len(clip)))


def blank_end() -> np.ndarray:
    video = reference()
    video[-2 * FPS :] = 16
    return video


def global_cast() -> np.ndarray:
    """Slowly warmer: red +30, blue -30 grey levels by the end."""
    frames = reference_float()
    frames += ramp() * np.array([30.0, 0.0, -30.0])
    return finish(frames)


def tile_cast() -> np.ndarray:
    """One tile of a 4 x 4 grid (1/16 of the frame) turns orange: red +50, blue -50 by the end."""
    frames = reference_float()
    frames[:, : H // 4, : W // 4] += ramp() * np.array([50.0, 0.0, -50.0])
    return finish(frames)


def progressive_blur() -> np.ndarray:
    """Gaussian blur growing from sigma 0 to 2.5 px."""
    frames = reference_float()
    for i, s in enumerate(np.linspace(0.0, 2.5, T)):
        if s > 0:
            frames[i] = cv2.GaussianBlur(frames[i].astype(np.float32), (0, 0), s)
    return finish(frames)


def progressive_noise() -> np.ndarray:
    """Independent noise per frame growing from the sensor level to sigma 12."""
    frames = reference_float()
    extra = np.random.default_rng(11).normal(size=frames.shape)
    return finish(frames + extra * ramp() * 12.0)


def progressive_texture() -> np.ndarray:
    """A fixed high-frequency texture (a stuck artefact pattern) growing to amplitude 25."""
    frames = reference_float()
    pattern = np.random.default_rng(12).normal(size=(H, W, 1)) * np.ones(3)
    return finish(frames + pattern * ramp() * 25.0)


def shuffled_tiles() -> np.ndarray:
    """Structure collapse: 4 x 4 tiles of the frame swapped in pairs, one more pair every eighth of the video."""
    video = reference()
    th, tw = H // 4, W // 4
    order = np.random.default_rng(5).permutation(16)
    swaps = list(zip(order[::2], order[1::2], strict=True))  # 8 disjoint pairs of tile indices
    out = video.copy()
    for i in range(T):
        for a, b in swaps[: int(len(swaps) * i / T)]:  # none in the first eighth, 7 pairs in the last
            (ay, ax), (by, bx) = divmod(int(a), 4), divmod(int(b), 4)
            tile_a = (i, slice(ay * th, (ay + 1) * th), slice(ax * tw, (ax + 1) * tw))
            tile_b = (i, slice(by * th, (by + 1) * th), slice(bx * tw, (bx + 1) * tw))
            out[tile_a], out[tile_b] = video[tile_b], video[tile_a]
    return out


def pan(cast: float = 0.0) -> np.ndarray:
    """A camera panning over a static scene at (0.5, 0.125) px/frame; optionally a slow warm cast on top."""
    big = texture(H + 24, W + 72, seed=3, blur=2.0).astype(np.float32)
    frames = np.stack([
        cv2.warpAffine(big, np.float32([[1, 0, -4 - 0.5 * i], [0, 1, -4 - 0.125 * i]]), (W, H),
                       flags=cv2.INTER_LINEAR)
        for i in range(T)
    ]).astype(np.float64)  # fmt: skip
    frames = frames + ramp() * np.array([cast, 0.0, -cast])
    return finish(frames)


def growing_content() -> np.ndarray:
    """A legitimate gradual change of content: the discs grow (approach the camera), radius +8 px by the end."""
    return finish(reference_float(grow=8.0))


_REPORTS: dict[str, dict] = {}


def evaluate(video: np.ndarray) -> dict:
    return evaluate_frames(video, FPS)


def report_of(make) -> dict:
    """Report of the scene made by `make()`, computed once per test session."""
    if make.__name__ not in _REPORTS:
        _REPORTS[make.__name__] = evaluate(make())
    return _REPORTS[make.__name__]


@pytest.fixture(scope="module")
def ref_report():
    return report_of(reference)


def verdict_both_ways(a: dict, b: dict) -> str:
    """Verdict with `a` as baseline; asserts that swapping the videos swaps it."""
    flip = {"baseline": "treated", "treated": "baseline", "tie": "tie"}
    forward, backward = compare_reports(a, b), compare_reports(b, a)
    assert backward["verdict"] == flip[forward["verdict"]]
    for cat, c in forward["categories"].items():
        assert backward["categories"][cat]["vote"] == flip[c["vote"]], cat
    return forward["verdict"]


# ---- degenerate videos: flagged, never preferred -------------------------------------------------------------


@pytest.mark.parametrize(
    "make, flag",
    [(frozen, "frozen"), (frozen_half, "frozen"), (looped, "loop"), (blank_end, "blank")],
)  # fmt: skip
def test_degenerate_video_is_flagged_and_never_preferred(ref_report, make, flag):
    bad = report_of(make)
    assert flag in bad["flags"]
    assert ref_report["flags"] == []
    assert verdict_both_ways(ref_report, bad) == "baseline"
    result = compare_reports(ref_report, bad)
    assert result["flags"] == {"baseline": [], "treated": bad["flags"]}
    assert flag in result["reason"]


def test_degenerate_video_would_win_on_drift_alone(ref_report):
    """Why the guards exist: a frozen and a looped video have less drift than the real one in most categories."""
    for make in (frozen, looped):
        bad = report_of(make)
        votes = compare_reports(ref_report, {**bad, "flags": []})["votes"]
        assert votes["treated"] > votes["baseline"], make.__name__


def test_guard_measurements(ref_report):
    g = ref_report["guards"]
    assert (
        g["dynamic_degree"] > 0.5
    )  # the discs move ~1.5 px/frame; threshold at 64 px short side: 3 px/frame
    assert g["longest_still_s"] < 0.5 and g["repeated_s"] == 0 and g["blank_s"] == 0
    assert report_of(frozen)["guards"]["longest_still_s"] == SECONDS
    assert report_of(frozen)["guards"]["dynamic_degree"] == 0.0
    loop = report_of(looped)["guards"]
    assert loop["repeated_s"] == pytest.approx(SECONDS - 2)  # every frame after the first 2 s repeats
    assert loop["longest_repeat"]["source_s"] == 0.0 and not loop["longest_repeat"]["reversed"]
    assert report_of(blank_end)["guards"]["blank_s"] == 2.0


def test_noise_does_not_hide_a_freeze():
    """A held 480 x 832 frame plus fresh noise (sigma 8) in every frame: the frames differ, the content does not.
    The thumbnails average ~170 pixels each and the sliding 0.5 s mean 8 frames, so the noise left is ~0.2 grey
    levels, far under STILL_LEVEL. Thumbnails are made the way segments.py makes them."""
    from tokentrim.eval import guards as G
    from tokentrim.eval import metrics as M

    rng = np.random.default_rng(0)
    held = cv2.resize(texture(120, 208, seed=2), (832, 480), interpolation=cv2.INTER_CUBIC)
    wh, ww, _ = M.scaled_size(480, 832, 256)
    th, tw, _ = M.scaled_size(wh, ww, G.THUMB_LONG_SIDE)
    thumbs = []
    for _ in range(3 * FPS):
        frame = (held + rng.normal(0, 8.0, held.shape)).round().clip(0, 255).astype(np.uint8)
        g = M.grey(M.downscale(frame, wh, ww)).astype(np.float32)
        thumbs.append(M.downscale(g, th, tw))
    thumbs = np.stack(thumbs)
    assert G.longest_still_run(thumbs)[1] < FPS  # frame by frame, the noise looks like change ...
    report = G.guard_report(thumbs, [0.0] * 10, FPS, 480, 832)
    assert "frozen" in report["flags"] and report["longest_still_s"] == 3.0  # ... averaged, it is a freeze


def test_reversed_playback_is_a_loop():
    clip = reference()[: T // 2]
    video = np.concatenate([clip, clip[::-1]])  # forward, then backward: a palindrome
    g = evaluate(video)
    assert "loop" in g["flags"] and g["guards"]["longest_repeat"]["reversed"]


# ---- drift: the clean scene is preferred ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, categories",
    [
        (progressive_blur, {"detail", "structure"}),
        (progressive_noise, {"detail", "temporal_stability"}),
        (progressive_texture, {"detail", "structure"}),
        (shuffled_tiles, {"structure", "colour"}),
    ],
)  # fmt: skip
def test_drifting_video_loses_in_the_expected_categories(ref_report, make, categories):
    drifting = report_of(make)
    assert drifting["flags"] == []  # drift is not degeneracy
    assert verdict_both_ways(ref_report, drifting) == "baseline"
    votes = compare_reports(ref_report, drifting)["categories"]
    for cat in categories:
        assert votes[cat]["vote"] == "baseline", cat
    assert not [c for c, v in votes.items() if v["vote"] == "treated"], votes


@pytest.mark.parametrize("make", [global_cast, tile_cast])
def test_a_drift_one_category_sees_is_not_a_verdict(ref_report, make):
    """A colour cast with nothing else changing: colour votes for the clean scene, but one kind of evidence alone
    does not settle a verdict (two agreeing categories are needed), so the pair is a tie, never the cast."""
    drifting = report_of(make)
    assert drifting["flags"] == []
    result = compare_reports(ref_report, drifting)
    assert result["categories"]["colour"]["vote"] == "baseline"
    assert result["votes"] == {"baseline": 1, "treated": 0, "tie": 4}
    assert verdict_both_ways(ref_report, drifting) == "tie"


def test_tile_cast_is_local_not_global():
    """The cast covers 1/16 of the frame = 4 of the 64 tiles. The 0.95 quantile of 64 values interpolates at rank
    0.95 * 63 = 59.85 (0-based, ascending): 0.85 x the smallest of the 4 cast tiles + 0.15 x the next tile, so a cast of 1/16 of the frame counts at ~85 % of its size. The cast tiles' difference is computed here
    from the texture and the cast ramp directly: segment k's median plate is at frame 32 k + 15 of the ramp."""
    m = report_of(tile_cast)["metrics"]
    patch = texture(H, W, 0)[: H // 4, : W // 4]  # exactly 2 x 2 tiles of the 8 x 8 grid (8 x 14 px each)
    levels = [(32 * k + 15) / (T - 1) for k in (0, 3)]
    labs = [cv2.cvtColor(((patch + lv * np.array([50.0, 0.0, -50.0])) / 255).astype(np.float32), cv2.COLOR_RGB2Lab)
            for lv in levels]  # fmt: skip
    tiles = [lab.reshape(2, 8, 2, 14, 3).mean(axis=(1, 3)) for lab in labs]
    smallest = np.sqrt(((tiles[1] - tiles[0]) ** 2).sum(-1)).min()
    last = m["colour_tiles"]["curve"][-1]
    assert 0.85 * smallest <= last <= smallest  # (the other tiles, moving discs, stay below the cast tiles)
    # colourfulness is a frame-wide statistic, so the same cast barely moves it: below the 5 % floor
    assert m["colourfulness"]["drift"] < 0.05


def test_drift_that_peaks_mid_video_counts(ref_report):
    """A cast that comes and goes between the first and the last segment: first-vs-last does not see it, the
    mean and the maximum of the drift curve do."""
    frames = reference_float()
    L = 2 * FPS
    bump = np.zeros(T)
    bump[L : T - L] = np.sin(np.pi * np.linspace(0, 1, T - 2 * L))
    m = evaluate(finish(frames + bump[:, None, None, None] * np.array([30.0, 0.0, -30.0])))["metrics"]
    ref = ref_report["metrics"]["colour_tiles"]
    assert m["colour_tiles"]["first_last"] == pytest.approx(ref["first_last"], abs=0.5)  # same end segments
    assert m["colour_tiles"]["max"] > ref["max"] + 5 * JND
    assert m["colour_tiles"]["drift"] > ref["drift"] + 3 * JND


JND = 2.3


# ---- real motion and legitimate change -----------------------------------------------------------------------


def test_camera_pan_is_not_drift(ref_report):
    report = report_of(pan)
    assert report["flags"] == []
    shift = report["camera_shift_px"][2]  # segment 2's centre is 2 segments (64 frames) after segment 0's
    assert shift == pytest.approx(
        [-32.0, -8.0], abs=1.5
    )  # content moves left/up as the camera pans right/down
    for name, m in report["metrics"].items():
        assert m["drift"] < m["floor"], name  # every measure: below its noise floor
    assert (
        verdict_both_ways(ref_report, report) != "baseline"
    )  # a pan never drifts more than the moving scene
    # but a cast on top of the pan is still seen: motion compensation does not hide drift
    cast = evaluate(pan(cast=30.0))
    assert verdict_both_ways(report, cast) != "treated"
    assert compare_reports(report, cast)["categories"]["colour"]["vote"] == "baseline"


def test_gradual_content_change_is_not_degenerate_and_beats_a_degraded_copy():
    """Growing discs (approaching the camera) are a legitimate change: not flagged, and preferred over the same
    content with progressive noise. Against an unchanging scene, colour and structure do see the change (a
    weight-free metric cannot tell legitimate change from drift; docs/metrics.md, Limitations)."""
    grow = growing_content()
    clean = evaluate(grow)
    assert clean["flags"] == []
    noise = np.random.default_rng(21).normal(size=grow.shape) * ramp() * 12.0
    degraded = evaluate((grow + noise).round().clip(0, 255).astype(np.uint8))
    assert verdict_both_ways(clean, degraded) == "baseline"
