"""Per-frame and per-frame-pair measurements on decoded video, without any downloaded weights.

Pure functions on numpy arrays. Frames are `uint8 [T, H, W, 3]` RGB; grey frames are `uint8 [H, W]` made with
OpenCV's RGB->grey conversion, i.e. Rec.601 luma Y' = 0.299 R' + 0.587 G' + 0.114 B' on the gamma-encoded
values. `segments.py` runs these over a video; `appearance.py` holds the segment-level colour and structure
comparisons; `guards.py` the degenerate-video checks.
"""

from __future__ import annotations

import cv2
import numpy as np

CAMERA_GRID_STEP = 4  # camera motion is estimated from every 4th flow vector in each direction
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


def colourfulness(frame: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness of an RGB `uint8 [H, W, 3]` frame (0 for grey; ~15 "slightly",
    ~33 "moderately", ~59 "quite", ~109 "extremely colourful" on their perceptual scale).

    M = sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(m_rg^2 + m_yb^2) over pixels, with rg = R - G, yb = (R + G) / 2 - B on
    the gamma-encoded values (s: standard deviation, m: mean).
    """
    x = frame.astype(np.float32)
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    (m_rg,), (s_rg,) = cv2.meanStdDev(rg)
    (m_yb,), (s_yb,) = cv2.meanStdDev(yb)
    return float(np.hypot(s_rg[0], s_yb[0]) + 0.3 * np.hypot(m_rg[0], m_yb[0]))


DETAIL_SIGMA = 1.0  # px: the blurred copy keeps structure wider than ~2 px and drops the finer detail


def detail_energy(grey_frame: np.ndarray) -> float:
    """High-frequency energy relative to a blurred copy: mean (f - G_1 * f)^2 in grey levels^2, with G_1 a
    Gaussian of sigma DETAIL_SIGMA = 1 px (full resolution).

    The energy of what a slight blur removes: blur, lower resolution and lower contrast reduce it, and so does
    losing part of the picture (a flat region contributes nothing), in proportion to the area lost.
    """
    f = grey_frame.astype(np.float32)
    d = f - cv2.GaussianBlur(f, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REFLECT)
    return float(cv2.mean(d * d)[0])


def textured_area(grey_frame: np.ndarray, block: int, threshold: float) -> float:
    """Share of the frame's `block` x `block` pixel blocks whose standard deviation exceeds `threshold` grey levels:
    the part of the picture that shows any visible detail (a region replaced by a flat colour shows none).

    Blocks that do not fit whole at the right and bottom edges are left out; a frame smaller than one block
    counts as a single block.
    """
    h, w = grey_frame.shape
    bh, bw = max(1, h // block), max(1, w // block)
    size_h, size_w = min(h, block), min(w, block)
    blocks = grey_frame[: bh * size_h, : bw * size_w].astype(np.float32).reshape(bh, size_h, bw, size_w)
    return float((blocks.std(axis=(1, 3)) > threshold).mean())


def spatial_information(grey_frame: np.ndarray) -> float:
    """ITU-T P.910 spatial information of one frame: std over pixels of the Sobel gradient magnitude of the luma
    (grey levels). The video's SI is the maximum over frames (P.910); so is a segment's here."""
    f = grey_frame.astype(np.float32)
    gx, gy = cv2.Sobel(f, cv2.CV_32F, 1, 0), cv2.Sobel(f, cv2.CV_32F, 0, 1)
    magnitude = np.sqrt(gx * gx + gy * gy)  # not cv2.magnitude: its result depends on the arrays' alignment
    return float(cv2.meanStdDev(magnitude)[1][0, 0])


def temporal_information(prev: np.ndarray, nxt: np.ndarray) -> float:
    """ITU-T P.910 temporal information of one frame pair: std over pixels of the luma difference nxt - prev
    (grey levels). The video's TI is the maximum over pairs (P.910); so is a segment's here."""
    return float(cv2.meanStdDev(cv2.subtract(nxt, prev, dtype=cv2.CV_16S))[1][0, 0])


def camera_velocity(flow: np.ndarray) -> np.ndarray:
    """Global (camera) motion of a frame pair: the per-axis median of the flow, float64 [2] = (dx, dy) px, over
    every CAMERA_GRID_STEP-th flow vector in each direction.

    The median follows the majority of the pixels, so objects moving over a still background (less than half
    the frame) leave it at 0, and a pan moves it by the pan. Flat regions, where the flow is ~0, pull it towards
    0: a pan over a mostly flat scene is under-compensated, never over-compensated.
    """
    grid = flow[::CAMERA_GRID_STEP, ::CAMERA_GRID_STEP]
    return np.median(grid.reshape(-1, 2), axis=0).astype(np.float64)


CAMERA_MARGIN = 1 / 32  # of the long side: a border where content enters the view and the flow is unreliable


def content_flow(flow: np.ndarray) -> np.ndarray:
    """Per-pixel length of the flow left after removing the camera's motion: float64 [n] over a grid of points
    (every CAMERA_GRID_STEP-th pixel, inside a border of CAMERA_MARGIN of the long side), in flow pixels.

    The camera's motion is the affine flow field u(x, y) = a + B (x, y) (pan, zoom, rotation, shear) fitted by
    least trimmed squares: a least-squares fit, then twice refitted on the half of the points it explains best,
    so objects moving over a still background (under half the frame) do not pull the fit. A camera moving over a
    still picture leaves ~0 everywhere; moving objects leave their own motion.
    """
    h, w = flow.shape[:2]
    m = max(1, round(max(h, w) * CAMERA_MARGIN))
    ys, xs = np.mgrid[m : max(m + 1, h - m) : CAMERA_GRID_STEP, m : max(m + 1, w - m) : CAMERA_GRID_STEP]
    f = flow[ys, xs].reshape(-1, 2).astype(np.float64)
    design = np.stack([np.ones(xs.size), xs.ravel() / w - 0.5, ys.ravel() / h - 0.5], axis=1)
    keep = np.ones(len(f), bool)
    for _ in range(3):
        coef = np.linalg.lstsq(design[keep], f[keep], rcond=None)[0]
        residual = np.hypot(*(f - design @ coef).T)
        keep = residual <= np.median(residual)
    return residual
