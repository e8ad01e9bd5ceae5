"""Per-frame and per-frame-pair measurements on decoded video, without any downloaded weights.

Pure functions on numpy arrays. Frames are `uint8 [T, H, W, 3]` RGB; grey frames are `uint8 [H, W]` made with
OpenCV's RGB→grey conversion, i.e. Rec.601 luma Y' = 0.299 R' + 0.587 G' + 0.114 B' on the gamma-encoded
values, the same weights as `LUMA_601` below. `segments.py` aggregates these per segment; `drift.py` turns the
segment values into first-vs-last-segment drift.
"""

from __future__ import annotations

import cv2
import numpy as np

# Rec.601 luma weights (ITU-R BT.601), the ones cv2.COLOR_RGB2GRAY uses, so luminance and the grey frames agree.
LUMA_601 = np.array([0.299, 0.587, 0.114])

# Farneback parameters: OpenCV's documented example values (pyramid scale, levels, window, iterations, poly_n,
# poly_sigma). Three pyramid levels at <= 256 px cover motions up to roughly 30 px per frame.
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2}


def grey(frame: np.ndarray) -> np.ndarray:
    """RGB `uint8 [H, W, 3]` -> Rec.601 luma `uint8 [H, W]`."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def flicker_scores(frames: np.ndarray) -> np.ndarray:
    """VBench temporal-flickering score of each consecutive pair: (255 - mean|f_t - f_{t+1}|) / 255.

    frames: uint8 [T, H, W, 3] -> float64 [T - 1]; 1 means identical frames, lower means more flicker.
    """
    diffs = [cv2.absdiff(frames[t], frames[t + 1]).mean() for t in range(len(frames) - 1)]
    return (255.0 - np.asarray(diffs, dtype=np.float64)) / 255.0


def colour_stats(frame: np.ndarray) -> dict[str, np.ndarray | float]:
    """One frame's colour statistics.

    Returns `mean` and `std` per RGB channel (float64 [3], grey levels 0..255), `saturation` (mean HSV S in
    0..1, S = (max - min) / max per pixel) and `luminance` (mean Rec.601 luma, 0..255).
    """
    mean, std = (v.ravel() for v in cv2.meanStdDev(frame))  # population std (divides by the pixel count)
    saturation = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255.0
    return {"mean": mean, "std": std, "saturation": float(saturation), "luminance": float(LUMA_601 @ mean)}


def channel_histograms(frame: np.ndarray, bins: int) -> np.ndarray:
    """Pixel counts per RGB channel in `bins` equal bins over 0..255: float64 [3, bins]."""
    hists = [cv2.calcHist([frame], [c], None, [bins], [0, 256]).ravel() for c in range(3)]
    return np.stack(hists).astype(np.float64)


def bhattacharyya_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Bhattacharyya (Hellinger) distance sqrt(1 - sum sqrt(p q)) between histograms, averaged over rows.

    p, q: [C, bins] counts; each row is normalised to sum 1 first. 0 = identical, 1 = disjoint support.
    """
    p = p / p.sum(axis=1, keepdims=True)
    q = q / q.sum(axis=1, keepdims=True)
    coefficient = np.sqrt(p * q).sum(axis=1)
    return float(np.sqrt(np.clip(1.0 - coefficient, 0.0, None)).mean())


def laplacian_variance(grey_frame: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of a grey frame (grey levels^2)."""
    return float(cv2.Laplacian(grey_frame, cv2.CV_64F, ksize=1).var())


def high_frequency_fraction(grey_frame: np.ndarray, cutoff: float) -> float:
    """Fraction of spectral energy at radial frequency above `cutoff` cycles/pixel (Nyquist = 0.5).

    The frame minus its mean is multiplied by a 2-D Hann window (so the image border does not leak energy
    into every frequency) and transformed with a real FFT. For white noise the spectrum is flat, so the
    fraction is the area of the [-0.5, 0.5]^2 frequency square outside the radius: 1 - pi cutoff^2.
    """
    h, w = grey_frame.shape
    x = grey_frame.astype(np.float64)
    x = (x - x.mean()) * np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.rfft2(x)) ** 2  # [H, W // 2 + 1]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    # Columns strictly between 0 and Nyquist stand for two mirrored columns of the full spectrum.
    weight = np.full(fx.shape, 2.0)
    weight[0, 0] = 1.0
    if w % 2 == 0:
        weight[0, -1] = 1.0
    power = power * weight
    total = power.sum()
    if total <= 0.0:
        return 0.0
    return float(power[np.hypot(fx, fy) > cutoff].sum() / total)


def working_grey(frame: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """Grey frame area-downscaled so its long side is at most `long_side`; also the scale factor (<= 1)."""
    g = grey(frame)
    scale = min(1.0, long_side / max(g.shape))
    if scale < 1.0:
        size = (max(1, round(g.shape[1] * scale)), max(1, round(g.shape[0] * scale)))
        g = cv2.resize(g, size, interpolation=cv2.INTER_AREA)
    return g, scale


def optical_flow(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Farneback flow from `prev` to `nxt` (grey uint8 [H, W]): float32 [H, W, 2] (dx, dy) in pixels, with
    prev(y, x) ~ nxt(y + dy, x + dx)."""
    return cv2.calcOpticalFlowFarneback(prev, nxt, None, flags=0, **FARNEBACK)


def warp_error(prev: np.ndarray, nxt: np.ndarray, flow: np.ndarray) -> float:
    """Mean |prev - nxt warped back by `flow`| in grey levels, over pixels whose source lies inside the frame."""
    h, w = prev.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    warped = cv2.remap(nxt, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    if not inside.any():
        return 0.0
    return float(np.abs(warped.astype(np.float64) - prev.astype(np.float64))[inside].mean())


def flow_magnitude(flow: np.ndarray) -> float:
    """Mean per-pixel flow length sqrt(dx^2 + dy^2) in pixels."""
    return float(np.hypot(flow[..., 0], flow[..., 1]).mean())
