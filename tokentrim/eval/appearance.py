"""Colour and structure of a segment's mean frame compared with a reference segment's.

A segment is summarised by its mean frame in CIELAB at the working resolution (`[h, w, 3]` float32: L* in
0..100, a*, b* roughly -128..127; sRGB with D65 white, OpenCV's conversion). Colour is compared per tile of a
grid (CIE76 colour difference of the tile means), structure by the contrast-structure term of SSIM on L*.
Both comparisons run on the region the two segments share after compensating a global camera translation
(`overlap`), so a pan over a static scene is not read as a change of colour or structure.
"""

from __future__ import annotations

import cv2
import numpy as np

# SSIM constants of Wang et al. 2004 (IEEE TIP 13(4)), for an 8-bit dynamic range L = 255: C2 = (0.03 L)^2,
# Gaussian window sigma 1.5.
SSIM_C2 = (0.03 * 255.0) ** 2
SSIM_SIGMA = 1.5
L_TO_GREY = 255.0 / 100.0  # L* 0..100 -> 0..255, the range the SSIM constants assume


def srgb_to_lab(frame: np.ndarray) -> np.ndarray:
    """RGB `uint8 [H, W, 3]` -> CIELAB float32 `[H, W, 3]` (sRGB gamma removed, D65)."""
    return cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def mean_chroma(lab: np.ndarray) -> float:
    """Mean CIELAB chroma C*ab = sqrt(a*^2 + b*^2) over pixels: 0 for grey, ~100 for saturated primaries."""
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def overlap(ref: np.ndarray, seg: np.ndarray, shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """The parts of `ref` and `seg` ([h, w, ...]) that show the same content when `seg` is `ref` moved by
    `shift` = (dx, dy) whole pixels (content at (x, y) in `ref` is at (x + dx, y + dy) in `seg`).

    Returns (ref_crop, seg_crop, fraction of the frame they cover); fraction 0 means no common region.
    """
    h, w = ref.shape[:2]
    dx, dy = shift
    if abs(dx) >= w or abs(dy) >= h:
        return ref[:0, :0], seg[:0, :0], 0.0
    rx, sx = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    ry, sy = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    fraction = (w - abs(dx)) * (h - abs(dy)) / (w * h)
    return ref[ry, rx], seg[sy, sx], fraction


def tile_means(lab: np.ndarray, grid: int) -> np.ndarray:
    """Mean colour of each cell of a `grid` x `grid` tiling: float64 [grid, grid, 3].

    Cell edges are at round(i * size / grid); each cell needs at least one pixel (asserted).
    """
    h, w = lab.shape[:2]
    assert h >= grid and w >= grid, (h, w, grid)
    ys = np.round(np.linspace(0, h, grid + 1)).astype(int)
    xs = np.round(np.linspace(0, w, grid + 1)).astype(int)
    sums = np.add.reduceat(np.add.reduceat(lab.astype(np.float64), ys[:-1], axis=0), xs[:-1], axis=1)
    counts = np.outer(np.diff(ys), np.diff(xs))[..., None]
    return sums / counts


def delta_e76(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference: Euclidean distance in CIELAB over the last axis (2.3 ~ one just-noticeable
    difference, Sharma 2003)."""
    return np.sqrt(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).sum(axis=-1))


def local_colour_difference(ref_lab: np.ndarray, seg_lab: np.ndarray, grid: int, quantile: float) -> float:
    """Upper `quantile` over the tiles of a `grid` x `grid` tiling of the CIE76 difference of tile means.

    ref_lab, seg_lab: the aligned crops [h, w, 3]. An upper quantile, not the mean over the frame, so a colour
    cast confined to a few tiles (one object turning orange) is counted at its own size.
    """
    grid = min(grid, *ref_lab.shape[:2])  # a crop smaller than the grid gets one pixel per tile
    d = delta_e76(tile_means(ref_lab, grid), tile_means(seg_lab, grid))
    return float(np.quantile(d, quantile))


def ssim_contrast_structure(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over pixels of SSIM's contrast-structure term (2 s_xy + C2) / (s_x^2 + s_y^2 + C2).

    x, y: grey float [h, w] on a 0..255 scale. Local statistics use a Gaussian window of sigma 1.5 (Wang et al.
    2004). SSIM's luminance term is left out on purpose: brightness changes are colour drift and are measured by
    the CIELAB comparison, so structure is reported separately from colour. 1 = same structure; 0 = unrelated.
    """
    x = x.astype(np.float64)
    y = y.astype(np.float64)

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (0, 0), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    return float(((2.0 * cov + SSIM_C2) / (np.maximum(vx, 0) + np.maximum(vy, 0) + SSIM_C2)).mean())
