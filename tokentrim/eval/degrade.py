"""Degraded copies of a video: losses of colour, detail, resolution, motion, frame rate and content, from the start
or growing over the video. A degraded copy has lost information, so `tokentrim eval --pair` must never prefer it
over its source (tests/test_eval_degradations.py; `scripts/eval_degradations.py` runs them on any mp4s).

Every function takes uint8 frames [T, H, W, 3] and the frame rate and returns (frames, fps); all but `low_fps`
keep the length, size and frame rate. Progressive versions grow linearly from nothing at the first frame to full
strength at the last (`ramp`). Frames are processed one at a time, so a 30 s 480x832 video needs no more than
the input and its copy in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Frames = np.ndarray


def ramp(n: int) -> np.ndarray:
    """0 at the first frame to 1 at the last: float [n]."""
    return np.linspace(0.0, 1.0, n) if n > 1 else np.ones(1)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _blend(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """(1 - w) a + w b for uint8 images, rounded."""
    return cv2.addWeighted(a, 1.0 - float(w), b, float(w), 0.0)


def _saturation(frames: Frames, keep: np.ndarray) -> Frames:
    """Each pixel moved towards its Rec.601 luma: keep[t] = 1 unchanged, 0 grey."""
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        luma = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out[t] = _blend(luma, frame, keep[t])
    return out


def grey(frames: Frames, fps: float):
    """All colour removed (Rec.601 luma in all three channels)."""
    return _saturation(frames, np.zeros(len(frames))), fps


def desaturate(frames: Frames, fps: float):
    """Half the colour: each pixel moved half-way to its luma."""
    return _saturation(frames, np.full(len(frames), 0.5)), fps


def desaturating(frames: Frames, fps: float):
    """Colour fading to grey over the video."""
    return _saturation(frames, 1.0 - ramp(len(frames))), fps


def _blur(frames: Frames, sigmas: np.ndarray) -> Frames:
    return np.stack(
        [f if s <= 0 else cv2.GaussianBlur(f, (0, 0), float(s)) for f, s in zip(frames, sigmas, strict=True)]
    )


def blur(frames: Frames, fps: float):
    """Gaussian blur of 1.5 px."""
    return _blur(frames, np.full(len(frames), 1.5)), fps


def blurring(frames: Frames, fps: float):
    """Gaussian blur growing from 0 to 2 px."""
    return _blur(frames, 2.0 * ramp(len(frames))), fps


def _down_up(frame: np.ndarray, factor: float) -> np.ndarray:
    h, w = frame.shape[:2]
    if factor <= 1.0:
        return frame
    small = cv2.resize(
        frame, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def down_up(frames: Frames, fps: float):
    """Half the resolution: area-downscaled by 2 and scaled back up (bilinear)."""
    return np.stack([_down_up(f, 2.0) for f in frames]), fps


def shrinking(frames: Frames, fps: float):
    """Resolution falling over the video to a third (down by 1..3, back up)."""
    return np.stack([_down_up(f, 1.0 + 2.0 * s) for f, s in zip(frames, ramp(len(frames)), strict=True)]), fps


def _contrast(frames: Frames, keep: np.ndarray) -> Frames:
    """Each frame moved towards its own mean colour: keep[t] = 1 unchanged, 0 a flat frame."""
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        flat = np.empty_like(frame)
        flat[:] = _u8(np.array(cv2.mean(frame)[:3]))
        out[t] = _blend(flat, frame, keep[t])
    return out


def fade(frames: Frames, fps: float):
    """Half the contrast (a washed-out picture)."""
    return _contrast(frames, np.full(len(frames), 0.5)), fps


def fading(frames: Frames, fps: float):
    """Contrast fading to a fifth over the video."""
    return _contrast(frames, 1.0 - 0.8 * ramp(len(frames))), fps


def _mask(frames: Frames, fraction: np.ndarray) -> Frames:
    """The bottom `fraction[t]` of each frame replaced by the video's mean colour (content lost)."""
    colour = _u8(np.mean([cv2.mean(f)[:3] for f in frames], axis=0))
    out = frames.copy()
    h = frames.shape[1]
    for t, f in enumerate(fraction):
        out[t, h - int(round(f * h)) :] = colour
    return out


def masked(frames: Frames, fps: float):
    """The bottom third of the picture replaced by one flat colour."""
    return _mask(frames, np.full(len(frames), 1 / 3)), fps


def masking(frames: Frames, fps: float):
    """A flat region growing from the bottom edge to half the picture."""
    return _mask(frames, 0.5 * ramp(len(frames))), fps


def doubled(frames: Frames, fps: float):
    """Every frame shown twice (half speed, the first half of the content; same length and frame rate)."""
    return frames[np.arange(len(frames)) // 2], fps


def low_fps(frames: Frames, fps: float):
    """Every second frame dropped: half the frame rate, same duration."""
    return frames[::2].copy(), fps / 2


def _retime(frames: Frames, times: np.ndarray) -> Frames:
    """Frames at fractional source times (linear blend of the two nearest frames)."""
    last = len(frames) - 1
    out = np.empty_like(frames)
    for t, source_t in enumerate(times):
        lo = min(int(np.floor(source_t)), last)
        out[t] = _blend(frames[lo], frames[min(lo + 1, last)], source_t - lo)
    return out


def slow(frames: Frames, fps: float):
    """Half speed (in-between frames blended; the first half of the content, no repeated frames)."""
    return _retime(frames, np.arange(len(frames)) / 2.0), fps


def slowing(frames: Frames, fps: float):
    """Speed falling from normal to a stop at the end (source time t - t^2 / (2 T): the content freezes)."""
    t = np.arange(len(frames), dtype=np.float64)
    return _retime(frames, t - t * t / (2.0 * len(frames))), fps


def stuttering(frames: Frames, fps: float):
    """Frames held longer and longer: each frame is held for 1 frame at the start up to 4 at the end."""
    n = len(frames)
    hold = 1.0 + 3.0 * ramp(n)
    starts, t = [], 0.0
    while len(starts) < n:  # the source frame shown advances in steps of `hold`, shown `hold` times
        k = min(int(t), n - 1)
        starts += [k] * int(round(hold[min(len(starts), n - 1)]))
        t += hold[min(len(starts) - 1, n - 1)]
    return frames[np.asarray(starts[:n])], fps


def still_pan(frames: Frames, fps: float):
    """Motion lost, camera kept: the first frame held while a camera pans over it (a crop of 90 % of the frame
    sliding right and down, scaled back to the full size)."""
    n, h, w = frames.shape[:3]
    ch, cw = 0.9 * h, 0.9 * w
    out = np.empty_like(frames)
    for i, s in enumerate(ramp(n)):
        x0, y0 = s * (w - cw), s * 0.5 * (h - ch)
        m = np.float32([[cw / w, 0, x0], [0, ch / h, y0]])  # output pixel -> position in the first frame
        out[i] = cv2.warpAffine(frames[0], m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return out, fps


@dataclass(frozen=True)
class Degradation:
    name: str
    make: Callable[[Frames, float], tuple[Frames, float]]
    loss: str  # what is lost: colour, detail, resolution, motion, frame rate, content
    progressive: bool

    @property
    def description(self) -> str:
        return (self.make.__doc__ or "").strip().split("\n")[0]


DEGRADATIONS: tuple[Degradation, ...] = (
    Degradation("grey", grey, "colour", False),
    Degradation("desaturate", desaturate, "colour", False),
    Degradation("desaturating", desaturating, "colour", True),
    Degradation("blur", blur, "detail", False),
    Degradation("blurring", blurring, "detail", True),
    Degradation("down_up", down_up, "resolution", False),
    Degradation("shrinking", shrinking, "resolution", True),
    Degradation("still_pan", still_pan, "motion", False),
    Degradation("slow", slow, "motion", False),
    Degradation("slowing", slowing, "motion", True),
    Degradation("doubled", doubled, "frame rate", False),
    Degradation("low_fps", low_fps, "frame rate", False),
    Degradation("stuttering", stuttering, "frame rate", True),
    Degradation("fade", fade, "content", False),
    Degradation("fading", fading, "content", True),
    Degradation("masked", masked, "content", False),
    Degradation("masking", masking, "content", True),
)
BY_NAME = {d.name: d for d in DEGRADATIONS}
