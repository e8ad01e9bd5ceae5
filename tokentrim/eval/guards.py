"""Degenerate-video guards: frozen runs, loops, blank frames, and the motion level (dynamic degree).

A video that does not move, repeats itself or goes blank shows little drift by construction, so a drift
comparison would prefer it over any real video. These checks flag such videos; a flagged video is never the
preferred video of a pair (verdict.py).

The checks work on thumbnails: grey frames area-averaged to THUMB_LONG_SIDE pixels on the long side (a 480x832
frame becomes 37x64, each thumbnail pixel averaging ~170 pixels). Averaging removes codec and sensor noise, so
"no visible change" can be tested with a small tolerance, while an object of 1/64 of the frame width still moves
whole thumbnail pixels. Levels are grey levels on the 0..255 scale.
"""

from __future__ import annotations

import numpy as np

THUMB_LONG_SIDE = 64
# "No visible change": 2 grey levels is below the ~1-2 % Weber contrast threshold at mid grey (128). H.264 (as
# tokentrim.video writes it) keeps a repeated frame within 0.2 levels at this scale.
STILL_LEVEL = 2.0
FROZEN_SECONDS = 2.0  # a still run as long as one VBench-Long clip; single repeated frames are legitimate
# The still test runs on thumbnails averaged over a sliding 0.5 s window (a quarter of FROZEN_SECONDS): zero-mean
# noise added to a held frame averages out (/sqrt(8) at 16 fps), so it cannot hide a freeze; real change persists.
STILL_WINDOW_SECONDS = 0.5
BLANK_STD = 2.0  # a frame whose thumbnail varies by less than this (std) shows nothing but one colour
BLANK_SECONDS = 1.0  # a blank second is already a visible defect in a rollout
LOOP_RMS = 2.0  # frames this close (RMS over the thumbnail) are repeats of each other
LOOP_MOTION_RMS = 4 * LOOP_RMS  # ... of a stretch that itself moves at least this much (not a still scene)
LOOP_SECONDS = 2.0  # a repeated stretch of at least one segment (2 s), at least that far back
# VBench dynamic degree (vbench/dynamic_degree.py): a frame pair sampled at 8 fps moves when the mean of its 5 %
# largest RAFT flow lengths exceeds 6 px at a 256-pixel short side (scaled with the short side).
DYNAMIC_TOP_FRACTION = 0.05
DYNAMIC_FPS = 8.0
DYNAMIC_PX_AT_256 = 6.0


def longest_still_run(thumbs: np.ndarray) -> tuple[int, int]:
    """Longest run of frames in which no thumbnail pixel differs from the run's first frame by more than
    STILL_LEVEL (runs are formed greedily from frame 0). thumbs: float32 [T, h, w]. Returns (start, length).
    guard_report applies it to `sliding_mean` thumbnails.

    Comparing with the run's first frame, not only the previous frame, keeps a slow but steady change (melting
    frost) from counting as still.
    """
    best, start = (0, 1), 0
    for t in range(1, len(thumbs) + 1):
        if t == len(thumbs) or np.abs(thumbs[t] - thumbs[start]).max() > STILL_LEVEL:
            if t - start > best[1]:
                best = (start, t - start)
            start = t
    return best


def sliding_mean(thumbs: np.ndarray, window: int) -> np.ndarray:
    """Mean of each frame's thumbnail and its neighbours over `window` frames (centred, shrunk at the ends).

    thumbs: float32 [T, h, w] -> float32 [T, h, w]; window 1 returns the input.
    """
    if window <= 1:
        return thumbs
    csum = np.concatenate([np.zeros((1,) + thumbs.shape[1:]), np.cumsum(thumbs, axis=0, dtype=np.float64)])
    t = np.arange(len(thumbs))
    lo = np.clip(t - window // 2, 0, len(thumbs))
    hi = np.clip(t - window // 2 + window, 0, len(thumbs))
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None, None]).astype(np.float32)


def blank_mask(thumbs: np.ndarray) -> np.ndarray:
    """Per frame: the thumbnail is (nearly) one uniform level. thumbs: [T, h, w] -> bool [T]."""
    return thumbs.reshape(len(thumbs), -1).std(axis=1) < BLANK_STD


def rms_distances(thumbs: np.ndarray) -> np.ndarray:
    """RMS difference between every pair of thumbnails: float64 [T, T], from one Gram matrix."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    x = x - x.mean(axis=0)  # centring does not change differences and keeps the Gram products small
    sq = (x * x).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return np.sqrt(np.clip(d2, 0.0, None) / x.shape[1])


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of every run of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def find_loops(thumbs: np.ndarray, min_frames: int) -> list[dict]:
    """Stretches of >= `min_frames` frames that repeat earlier frames at least `min_frames` back.

    Forward loops (frame t matches t - P for a run of t) and reversed playback (t matches c - t) are searched
    along the diagonals and anti-diagonals of the thumbnail distance matrix. A stretch counts only if it moves
    (some frame in it is LOOP_MOTION_RMS from its first frame): a still scene trivially resembles itself and is
    the frozen guard's business. Returns dicts with frame indices `start`, `end` (exclusive), `source` (the frame
    matching `start`) and `reversed`.
    """
    d = rms_distances(thumbs)
    n = len(thumbs)
    near = d <= LOOP_RMS
    found = []
    t_all = np.arange(n)
    for lag in range(min_frames, n - min_frames + 1):  # t matches t - lag
        for a, b in _runs(np.diagonal(near, offset=-lag)):  # entry i is (t = lag + i, s = i)
            if b - a >= min_frames and d[lag + a : lag + b, lag + a].max() >= LOOP_MOTION_RMS:
                found.append({"start": lag + a, "end": lag + b, "source": a, "reversed": False})
    flipped = near[:, ::-1]  # anti-diagonal t + s = c becomes a diagonal
    for c in range(min_frames, 2 * n - 1):
        offset = n - 1 - c  # flipped[t, n - 1 - s] with s = c - t
        t0 = max(0, c - (n - 1))
        ts = t_all[t0 : t0 + len(np.diagonal(flipped, offset=offset))]
        ok = np.diagonal(flipped, offset=offset) & (2 * ts - c >= min_frames)  # t - s >= min_frames
        for a, b in _runs(ok):
            start, end = ts[a], ts[b - 1] + 1
            if end - start >= min_frames and d[start:end, start].max() >= LOOP_MOTION_RMS:
                found.append(
                    {"start": int(start), "end": int(end), "source": int(c - start), "reversed": True}
                )
    return found


def dynamic_threshold(height: int, width: int, fps: float) -> float:
    """Top-5 % flow length (px per frame, original resolution) above which a consecutive pair counts as moving.

    VBench's 6 px per 1/8 s at a 256-px short side, scaled to this short side and to one frame at `fps`
    (assumes the motion is steady over 1/8 s).
    """
    return DYNAMIC_PX_AT_256 * min(height, width) / 256.0 * DYNAMIC_FPS / fps


def guard_report(thumbs: np.ndarray, pair_scores: list[float], fps: float, height: int, width: int) -> dict:
    """Measurements and flags of the degenerate-video guards.

    thumbs: float32 [T, h, w] thumbnails of every frame; pair_scores: the top-5 % flow length of each measured
    frame pair (px/frame, original resolution). Flags: "frozen", "loop", "blank".
    """
    still_start, still_len = longest_still_run(sliding_mean(thumbs, round(STILL_WINDOW_SECONDS * fps)))
    blank = blank_mask(thumbs)
    loops = find_loops(thumbs, max(2, round(LOOP_SECONDS * fps)))
    repeated = np.zeros(len(thumbs), bool)
    for loop in loops:
        repeated[loop["start"] : loop["end"]] = True
    longest = max(loops, key=lambda lp: lp["end"] - lp["start"], default=None)
    threshold = dynamic_threshold(height, width, fps)
    flags = []
    if still_len >= FROZEN_SECONDS * fps:
        flags.append("frozen")
    if loops:
        flags.append("loop")
    if blank.sum() >= BLANK_SECONDS * fps:
        flags.append("blank")
    return {
        "flags": flags,
        "dynamic_degree": float(np.mean(np.asarray(pair_scores) > threshold)) if pair_scores else 0.0,
        "dynamic_threshold_px": threshold,
        "longest_still_s": still_len / fps,
        "longest_still_start_s": still_start / fps,
        "blank_s": float(blank.sum() / fps),
        "repeated_s": float(repeated.sum() / fps),
        "longest_repeat": None if longest is None else {
            "start_s": longest["start"] / fps, "seconds": (longest["end"] - longest["start"]) / fps,
            "source_s": longest["source"] / fps, "reversed": longest["reversed"],
        },
    }  # fmt: skip
