"""A synthetic moving scene with known content, for testing and calibrating the evaluation without video files.

`moving_scene(height, width, seconds, fps, seed)` renders a camera panning slowly over a still, detailed world
(fine noise texture, smooth colour fields and hard-edged coloured rectangles) while textured discs move over it
and bounce off the frame's edges, plus sensor noise: every kind of information the level measures look at
(colour, fine detail, edges, camera motion, content motion, distinct frames) is present, and every scale is set
relative to the frame size so the same scene renders at 96x160 for tests and 480x832 for timing.
"""

from __future__ import annotations

import cv2
import numpy as np

SENSOR_SIGMA = 1.5  # grey levels of independent noise per pixel and frame (a clean camera)
PAN = (
    0.35,
    0.12,
)  # camera velocity in (x, y) per frame, in 1/160 of the frame width (0.35 px/frame at 160 px)
DISCS = 5


def _field(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field [h, w, 3] (Gaussian-blurred white noise)."""
    f = cv2.GaussianBlur(rng.normal(size=(h, w, 3)).astype(np.float32), (0, 0), sigma)
    return (f - f.mean()) / f.std()


def world(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    """The still background, float32 RGB [h, w, 3] in about 20..235: a colour field, fine texture and rectangles.

    unit: pixels per 1/160 of the frame width (scales the coarse structure with the frame size; the fine texture
    stays at pixel scale, where blur and downscaling remove it).
    """
    base = rng.uniform(90, 160, 3).astype(np.float32)
    img = base + 28 * _field(rng, h, w, 10 * unit) + 10 * _field(rng, h, w, 0.8)
    for _ in range(int(0.02 * h * w / unit**2)):  # a rectangle per ~50 square units
        rh, rw = (rng.uniform(3, 14, 2) * unit).astype(int) + 1
        y, x = rng.integers(0, h - rh), rng.integers(0, w - rw)
        img[y : y + rh, x : x + rw] = 0.4 * img[y : y + rh, x : x + rw] + 0.6 * rng.uniform(20, 235, 3)
    return np.clip(img, 0, 255)


def moving_scene(height: int = 96, width: int = 160, seconds: float = 8.0, fps: float = 16.0,
                 seed: int = 0) -> np.ndarray:  # fmt: skip
    """Render the scene: uint8 [round(seconds * fps), height, width, 3], one frame at a time."""
    rng = np.random.default_rng(seed)
    n = round(seconds * fps)
    unit = width / 160.0
    vx, vy = PAN[0] * unit, PAN[1] * unit
    pad = int(np.ceil(max(abs(vx), abs(vy)) * n)) + 4
    big = world(rng, height + pad, width + pad, unit)
    t = np.arange(n, dtype=np.float64)
    discs = []  # (texture patch, alpha, x(t), y(t)) of each textured disc
    for _ in range(DISCS):
        r = rng.uniform(0.08, 0.14) * height
        size = int(2 * r) + 5
        patch = world(rng, size, size, unit)
        yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
        alpha = np.clip(r + 0.5 - np.hypot(xx, yy), 0, 1).astype(np.float32)
        speed, angle = rng.uniform(0.6, 1.6) * unit, rng.uniform(0, 2 * np.pi)
        xs = _bounce(rng.uniform(r, width - r), speed * np.cos(angle), t, r, width - 1 - r)
        ys = _bounce(rng.uniform(r, height - r), speed * np.sin(angle), t, r, height - 1 - r)
        discs.append((patch, alpha, xs, ys))
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        # the camera moves by (vx, vy) per frame: the content by (-vx, -vy)
        camera = np.float32([[1, 0, -2 - vx * i], [0, 1, -2 - vy * i]])
        frame = cv2.warpAffine(big, camera, (width, height), flags=cv2.INTER_CUBIC)
        for patch, alpha, xs, ys in discs:
            _paste(frame, patch, alpha, xs[i], ys[i])
        frame += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(SENSOR_SIGMA)
        out[i] = np.clip(np.rint(frame), 0, 255)
    return out


def _paste(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: float, y: float) -> None:
    """Blend `patch` ([s, s, 3]) with coverage `alpha` ([s, s]) into `frame` in place, centred at (x, y) with
    sub-pixel precision (the patch is shifted by the fractional part, placed at the integer part)."""
    h, w = frame.shape[:2]
    size = patch.shape[0]
    x0, y0 = int(np.floor(x)) - size // 2, int(np.floor(y)) - size // 2
    shift = np.float32([[1, 0, x - np.floor(x)], [0, 1, y - np.floor(y)]])
    p = cv2.warpAffine(patch, shift, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    a = cv2.warpAffine(alpha, shift, (size, size), flags=cv2.INTER_LINEAR)[..., None]
    ya, xa, yb, xb = max(0, y0), max(0, x0), min(h, y0 + size), min(w, x0 + size)
    if yb <= ya or xb <= xa:
        return
    crop = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
    frame[ya:yb, xa:xb] = (1 - a[crop]) * frame[ya:yb, xa:xb] + a[crop] * p[crop]


def _bounce(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at speed v between walls lo and hi (reflecting), at times t (frames)."""
    span = hi - lo
    x = np.mod(p0 - lo + v * t, 2 * span)
    return lo + np.where(x > span, 2 * span - x, x)
