"""Per-frame and per-frame-pair measurements on decoded video, without any downloaded weights.

Pure functions on numpy arrays. Frames are `uint8 [T, H, W, 3]` RGB; grey frames are `uint8 [H, W]` made with
OpenCV's RGB->grey conversion, i.e. Rec.601 luma Y' = 0.299 R' + 0.587 G' + 0.114 B' on the gamma-encoded
values. `segments.py` runs these over a video; `appearance.py` holds the segment-level colour and structure
comparisons; `guards.py` the degenerate-video checks.
"""

from __future__ import annotations

import cv2
import numpy as np

# Farneback parameters: OpenCV's documented example values (pyramid scale, levels, window, iterations, poly_n,
# poly_sigma). Three pyramid levels at <= 256 px cover motions up to roughly 30 px per frame.
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2}


def grey(frame: np.ndarray) -> np.ndarray:
    """RGB `uint8 [H, W, 3]` -> Rec.601 luma `uint8 [H, W]`."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def scaled_size(height: int, width: int, long_side: int) -> tuple[int, int, float]:
    """(height, width, scale) of an image area-downscaled so its long side is at most `long_side` (scale <= 1)."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale)), scale


def downscale(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average `image` ([H, W] or [H, W, C]) to `height` x `width`; unchanged when already that size."""
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


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
    """Variance of the 4-neighbour Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of a grey frame (grey levels^2).

    The focus measure of Pech-Pacheco et al. (ICPR 2000): blur lowers it, noise and artefact textures raise it.
    """
    _, std = cv2.meanStdDev(cv2.Laplacian(grey_frame, cv2.CV_32F, ksize=1))  # population std, float64
    return float(std[0, 0] ** 2)


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


def flow_lengths(flow: np.ndarray) -> np.ndarray:
    """Per-pixel flow length sqrt(dx^2 + dy^2): float32 [H, W] in pixels."""
    return np.hypot(flow[..., 0], flow[..., 1])


def top_fraction_mean(values: np.ndarray, fraction: float) -> float:
    """Mean of the largest `fraction` of `values` (at least one value).

    VBench's dynamic degree scores a frame pair by the mean of its largest 5 % flow lengths, so that a small
    moving subject on a still background still counts as motion.
    """
    flat = values.ravel()
    k = max(1, int(flat.size * fraction))
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())


def camera_velocity(flow: np.ndarray) -> np.ndarray:
    """Global (camera) motion of a frame pair: the per-axis median of the flow, float64 [2] = (dx, dy) px.

    The median follows the majority of the pixels, so objects moving over a still background (less than half
    the frame) leave it at 0, and a pan moves it by the pan. Flat regions, where the flow is ~0, pull it towards
    0: a pan over a mostly flat scene is under-compensated, never over-compensated.
    """
    return np.median(flow.reshape(-1, 2), axis=0).astype(np.float64)
