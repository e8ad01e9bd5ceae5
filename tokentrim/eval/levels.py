"""Level measures: how much colour, detail, spatial and temporal information, distinct frames and content motion a
video carries, over the whole video and per segment; and the pair comparability check built on them.

A drift curve compares a video with its own start, so a copy of a video that lost information from the first
frame (its colour removed, every frame shown twice, blurred, a still picture panned by a camera) drifts no more
than the original. The level measures compare the two videos of a pair directly: a video markedly poorer than its
partner on one of them, from the start or increasingly over time, is never preferred (verdict.py). Definitions,
sources and how each margin was chosen: docs/metrics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tokentrim.eval.guards import STILL_LEVEL

# A frame pair is a repeat when its thumbnails differ by at most this fraction of the typical difference of the
# pairs around it (upper quartile over a 1 s window): a repeated frame differs from the one before only by codec
# and sensor noise, a new frame by motion.
REPEAT_FRACTION = 0.25
REPEAT_WINDOW_SECONDS = 1.0
REPEAT_QUANTILE = 0.75
# A video's starting level is measured over its first half second: inside the first generated block of every
# pipeline here (Self Forcing's first block of 3 latent frames decodes to 9 frames, 0.56 s at 16 fps), before a
# drift fix can act, so seed-matched rollouts share it and a copy degraded from its first frame does not.
START_SECONDS = 0.5
# eps of each measure: its level on a featureless frame (flat grey) carrying noise of NOISE_LEVEL grey levels,
# the guards' "no visible change" level (guards.STILL_LEVEL): differences among levels this low are noise.
NOISE_LEVEL = STILL_LEVEL
# Noise of variance s^2 in R, G and B: var(R - G) = 2 s^2, var((R + G) / 2 - B) = 1.5 s^2.
COLOURFULNESS_EPS = NOISE_LEVEL * math.sqrt(3.5)
# White noise through delta - Gaussian(sigma 1 px): variance gain sum((delta - g)^2) = 0.761.
DETAIL_EPS = NOISE_LEVEL**2 * 0.761
# Sobel x and y of white noise are independent N(0, 12 s^2): the magnitude is Rayleigh, std sqrt(12 (2 - pi/2)) s.
SI_EPS = NOISE_LEVEL * math.sqrt(12.0 * (2.0 - math.pi / 2))
# The difference of two independent noise frames.
TI_EPS = NOISE_LEVEL * math.sqrt(2.0)
# Textured area: blocks of 1/32 of the long side (8 px at the working resolution), textured above NOISE_LEVEL; a
# featureless frame has none, so eps is 1 % of the picture (about 6 of the 576 blocks of a 16:9 frame).
TEXTURE_BLOCK = 8
TEXTURED_AREA_EPS = 0.01
# Content motion: the level measured on a camera panning over a still picture (tokentrim.eval.degrade.still_pan of
# the synthetic scene), 0.13 %/s: flow estimation noise. Effective frame rate: half a frame per second.
CONTENT_MOTION_EPS = 0.15
FRAME_RATE_EPS = 0.5
# Margins (docs/metrics.md#44-how-the-epsilons-and-the-margins-were-chosen): twice the largest spread between
# two equally good videos of the same scene, and never under ln 1.25 (a shortfall of a fifth of the partner's
# level). A spread is the largest |ln ratio| of the start levels or of the own losses between the two 8 s halves
# of a 16 s clip, or between a clip and its H.264 round trip, over 8 renders of tokentrim.eval.scene
# (scripts/eval_margins.py prints them).
MIN_MARGIN = math.log(1.25)


@dataclass(frozen=True)
class LevelSpec:
    name: str  # the measure's name (also its drift measure in drift.METRICS)
    label: str  # how a shortfall reads in a flag: "less colour from the start: 12.1 vs 48 M"
    unit: str
    eps: float  # added to both levels in every ratio: the level of a featureless frame (see above)
    spread: float  # the largest |ln ratio| between equally good videos of one scene (see above)
    same_fps_only: bool = False  # per-frame-pair measures compare only at equal frame rates
    p910: bool = False  # also report ITU-T P.910's whole-video value, the maximum over frames
    description: str = ""

    @property
    def margin(self) -> float:
        """ln ratio beyond which a video is markedly poorer than its partner."""
        return max(MIN_MARGIN, 2.0 * self.spread)


LEVELS: tuple[LevelSpec, ...] = (
    LevelSpec("colourfulness", "less colour", "M", COLOURFULNESS_EPS, 0.074,
              description="Hasler-Suesstrunk colourfulness sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2)"),
    LevelSpec("detail", "less detail", "grey levels^2", DETAIL_EPS, 0.141,
              description="energy of the frame minus its Gaussian-blurred copy (sigma 1 px), full resolution"),
    LevelSpec("textured_area", "less textured area", "share of the frame", TEXTURED_AREA_EPS, 0.002,
              description=f"share of the {TEXTURE_BLOCK}-pixel blocks of the working-resolution grey frame whose "
              f"standard deviation exceeds {NOISE_LEVEL:g} grey levels"),
    LevelSpec("spatial_information", "less spatial information", "grey levels", SI_EPS, 0.054, p910=True,
              description="ITU-T P.910 SI of each frame: std of the Sobel gradient magnitude of the luma"),
    LevelSpec("temporal_information", "less temporal information", "grey levels", TI_EPS, 0.048,
              same_fps_only=True, p910=True,
              description="ITU-T P.910 TI of each frame pair: std of the luma difference"),
    LevelSpec("effective_frame_rate", "lower effective frame rate", "fps", FRAME_RATE_EPS, 0.0,
              description="frame rate times the share of consecutive frames that are not repeats"),
    LevelSpec("content_motion", "less content motion", "%/s", CONTENT_MOTION_EPS, 0.411,
              description="mean length of the optical flow left after removing the camera's affine motion, "
              "in % of the frame's long side per second"),
)  # fmt: skip
LEVEL_SPECS = {spec.name: spec for spec in LEVELS}


def repeated_frames(thumbs: np.ndarray, fps: float) -> np.ndarray:
    """Per consecutive pair (t - 1, t), t = 1..T-1: True when frame t repeats frame t - 1. bool [T - 1].

    thumbs: float32 [T, h, w] grey thumbnails. The pair's RMS difference is compared with REPEAT_FRACTION of
    the upper quartile of the differences over a centred 1 s window, so a slow scene (every pair differs a
    little) has no repeats and a scene shown with doubled or held frames has them wherever it moves at all.
    """
    if len(thumbs) < 2:
        return np.zeros(0, bool)
    d = np.sqrt(((thumbs[1:] - thumbs[:-1]) ** 2).reshape(len(thumbs) - 1, -1).mean(axis=1))
    window = max(3, round(REPEAT_WINDOW_SECONDS * fps))
    typical = np.empty_like(d)
    for t in range(len(d)):
        lo = min(max(0, t - window // 2), max(0, len(d) - window))
        typical[t] = np.quantile(d[lo : lo + window], REPEAT_QUANTILE)
    return d <= REPEAT_FRACTION * typical


def log_ratio(spec: LevelSpec, numerator: float, denominator: float) -> float:
    """ln((numerator + eps) / (denominator + eps))."""
    return math.log((numerator + spec.eps) / (denominator + spec.eps))


def start_window(fps: float, segment_frames: int) -> int:
    """Frames in the start window: START_SECONDS of video, at least 2 (one frame pair), at most one segment."""
    return min(segment_frames, max(2, round(START_SECONDS * fps)))


def late_segments(segments: int) -> slice:
    """The last quarter of the segments (at least one): where a loss that grows over the video is largest."""
    return slice(segments - max(1, segments // 4), segments)


def level_entry(spec: LevelSpec, per_segment: list[list[float]], start_count: int, fps: float) -> dict:
    """A video's level on one measure: the mean over the whole video and per segment, `start` (the mean over the
    start window: the first `start_count` values of segment 0), `late` (the mean of the last quarter of the
    segments) and `loss` = max(0, ln((start + eps) / (late + eps))), its own loss over time; for SI and TI also
    `p910`, the maximum over frames.

    per_segment: the frame (or frame-pair) values of each segment; for effective_frame_rate, 1.0 for a new frame
    and 0.0 for a repeat, scaled by `fps` here. A mean, not P.910's maximum, sets the level, so a single frame (a
    jump after a held frame, a flash) does not.
    """
    scale = fps if spec.name == "effective_frame_rate" else 1.0
    values = [scale * float(np.mean(v)) if len(v) else 0.0 for v in per_segment]
    every = np.array([x for v in per_segment for x in v])
    first = per_segment[0][: max(1, start_count)]
    start = scale * float(np.mean(first)) if first else 0.0
    late = float(np.mean(values[late_segments(len(values))]))
    entry = {"video": scale * float(every.mean()) if every.size else 0.0, "segments": values, "start": start,
             "late": late, "loss": max(0.0, log_ratio(spec, start, late)), "unit": spec.unit}  # fmt: skip
    if spec.p910:
        entry["p910"] = float(every.max()) if every.size else 0.0
    return entry


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def comparability_flags(a: dict, b: dict) -> tuple[list[str], list[dict]]:
    """Where video `a` is markedly poorer than its partner `b` (their reports' `levels`).

    On a measure, `a` is markedly poorer when
    - from the start: ln((b.start + eps) / (a.start + eps)) > margin, the two start windows compared; or
    - increasingly: a.loss - b.loss > margin, i.e. `a` lost more of its own level between its start window and
      its last quarter of segments than `b` did, by more than the margin, and ends markedly poorer than `b`:
      ln((b.late + eps) / (a.late + eps)) > margin. Each video is compared with its own start, so a partner whose
      level rises never makes a steady video look poorer; and a video that keeps more than its partner ever had
      (colour fading in a video against a grey one) is not poorer.
    Returns (flag texts, details).
    """
    flags, details = [], []
    for spec in LEVELS:
        la, lb = a["levels"][spec.name], b["levels"][spec.name]
        if spec.same_fps_only and not math.isclose(a["fps"], b["fps"], rel_tol=0.01):
            continue
        gap = log_ratio(spec, lb["start"], la["start"])
        if gap > spec.margin:
            flags.append(
                f"{spec.label} from the start: {_fmt(la['start'])} vs {_fmt(lb['start'])} {spec.unit}"
            )
            details.append({"measure": spec.name, "kind": "start", "value": la["start"], "partner": lb["start"],
                            "ln_ratio": gap, "margin": spec.margin})  # fmt: skip
        if la["loss"] - lb["loss"] > spec.margin and log_ratio(spec, lb["late"], la["late"]) > spec.margin:
            flags.append(f"increasingly {spec.label}: {_fmt(la['start'])} to {_fmt(la['late'])} vs "
                         f"{_fmt(lb['start'])} to {_fmt(lb['late'])} {spec.unit}")  # fmt: skip
            details.append({"measure": spec.name, "kind": "increasing", "value": la["late"], "partner": lb["late"],
                            "loss": la["loss"], "partner_loss": lb["loss"], "margin": spec.margin})  # fmt: skip
    return flags, details
