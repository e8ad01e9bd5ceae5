"""Split a video into fixed-length segments, measure each one in a single pass, and report drift curves.

Segments are consecutive, non-overlapping runs of round(segment_seconds * fps) frames starting at frame 0; the
remainder (less than one segment) at the end is not used by the drift measures (`frames_unused`), but is by the
degenerate-video guards. What is measured at which resolution (also recorded in the report's `settings`):
- working resolution (frames area-downscaled so the long side is <= `working_long_side`, default 256 px):
  CIELAB, colourfulness and textured area of every `frame_stride`-th frame of a segment (the CIELAB per-pixel
  median for the colour tiles, its mean L* for structure); Farneback flow, warp error and content motion on
  every consecutive frame pair, and the camera translation as the median flow of a segment's pairs;
- full resolution: Laplacian variance (sharpness) and detail energy of every `frame_stride`-th frame, P.910 SI
  of every frame and TI of every pair, because downscaling is a low-pass filter and would remove what they
  measure;
- 64-px thumbnails of every frame: the guards (guards.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from tokentrim.errors import UserError
from tokentrim.eval import appearance as A
from tokentrim.eval import metrics as M
from tokentrim.eval.drift import METRICS, SPECS, level_curve, summarise
from tokentrim.eval.guards import DYNAMIC_TOP_FRACTION, THUMB_LONG_SIDE, guard_report
from tokentrim.eval.levels import (
    LEVELS,
    NOISE_LEVEL,
    TEXTURE_BLOCK,
    level_entry,
    repeated_frames,
    start_window,
)

DEFAULT_SEGMENT_SECONDS = 2.0  # VBench-Long's fixed clip length


@dataclass(frozen=True)
class EvalSettings:
    frame_stride: int = 2  # CIELAB, colourfulness, sharpness and detail: every k-th frame of a segment
    working_long_side: int = 256  # flow, colour and structure on frames downscaled to this long side (speed)
    tile_grid: int = 8  # colour tiles: grid x grid cells (an 8x8 cell of a 480x832 frame is 60x104 px)
    tile_quantile: float = 0.95  # upper quantile over the tiles (64 tiles: the 4th largest counts ~85 %)
    min_overlap: float = 0.5  # a reference segment must still show this fraction of the segment's view

    def __post_init__(self):
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.working_long_side < 16:
            raise ValueError(f"working_long_side must be >= 16, got {self.working_long_side}")
        if self.tile_grid < 1:
            raise ValueError(f"tile_grid must be >= 1, got {self.tile_grid}")
        if not 0.0 <= self.tile_quantile <= 1.0:
            raise ValueError(f"tile_quantile must be in [0, 1], got {self.tile_quantile}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {self.min_overlap}")


@dataclass(frozen=True)
class SegmentLayout:
    segment_frames: int
    segments: int
    frames_unused: int

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.segment_frames, (k + 1) * self.segment_frames


def segment_layout(num_frames: int, fps: float, segment_seconds: float, name: str = "video") -> SegmentLayout:
    """Fixed-length segments from frame 0; raises UserError unless there are >= 2 segments of >= 2 frames."""
    if not segment_seconds > 0:
        raise UserError(f"--segment-seconds must be > 0, got {segment_seconds}")
    if not fps > 0:
        raise UserError(f"{name} reports a frame rate of {fps}; re-encode it with a valid frame rate")
    seconds = num_frames / fps
    segment_frames = round(segment_seconds * fps)
    if segment_frames < 2:
        raise UserError(f"--segment-seconds {segment_seconds} is under 2 frames at {fps:g} fps; "
                        f"use --segment-seconds {2 / fps:.3g} or more")  # fmt: skip
    segments = num_frames // segment_frames
    if segments < 2:
        longest = math.floor(100 * seconds / 2) / 100
        raise UserError(f"{name} is {seconds:.2f} s ({num_frames} frames at {fps:g} fps), shorter than two "
                        f"{segment_seconds:g} s segments; use --segment-seconds {longest:g} or less")  # fmt: skip
    return SegmentLayout(segment_frames, segments, num_frames - segments * segment_frames)


@dataclass
class Features:
    """What the single pass over the frames collects. Per-segment lists are indexed by segment and hold one value
    per sampled frame or per frame pair; a pair (t - 1, t) belongs to the segment of frame t."""

    lab_median: list[np.ndarray]  # per-pixel median of the sampled CIELAB frames [h, w, 3] (colour tiles)
    lightness_mean: list[np.ndarray]  # mean L* of the sampled frames [h, w] (structure)
    colourfulness: list[list[float]]  # Hasler-Suesstrunk, sampled frames (working resolution)
    sharpness: list[list[float]]  # Laplacian variance, sampled frames (full resolution)
    detail: list[list[float]]  # high-frequency energy, sampled frames (full resolution)
    textured_area: list[list[float]]  # share of textured blocks, sampled frames (working resolution)
    spatial_information: list[list[float]]  # P.910 SI, every frame (full resolution)
    temporal_information: list[list[float]]  # P.910 TI, every pair (full resolution)
    motion: list[list[float]]  # mean flow length, every pair (px/frame, original resolution)
    content_motion: list[list[float]]  # mean content flow, every pair (% of the long side per second)
    warp: list[list[float]]  # warp error, every pair (grey levels, working resolution)
    camera: list[list[np.ndarray]]  # camera velocity (dx, dy), every pair (working px/frame)
    effective_frame_rate: list[list[float]]  # every pair: 1.0 for a new frame, 0.0 for a repeat
    start_counts: dict[str, int]  # level measure -> how many of segment 0's values lie in the start window
    pair_scores: list[float]  # top-5 % flow length of every pair in a segment (px/frame, original resolution)
    thumbs: np.ndarray  # float32 [T, th, tw] grey thumbnails of every frame
    scale: float  # working resolution / original resolution


def extract_features(
    frames: np.ndarray, fps: float, layout: SegmentLayout, settings: EvalSettings
) -> Features:
    """One pass over `frames` (uint8 [T, H, W, 3]) collecting everything the measures and guards need.

    Every consecutive frame pair inside the segments is measured (flow, warp error, content motion, TI), so
    frames repeated in step with a sampling phase cannot hide motion; appearance is sampled every
    `settings.frame_stride`-th frame of a segment.
    """
    T, H, W = frames.shape[:3]
    S, L, stride = layout.segments, layout.segment_frames, settings.frame_stride
    wh, ww, scale = M.scaled_size(H, W, settings.working_long_side)
    th, tw, _ = M.scaled_size(wh, ww, THUMB_LONG_SIDE)
    per_segment = ("colourfulness", "sharpness", "detail", "textured_area", "spatial_information",
                   "temporal_information", "motion", "content_motion", "warp", "camera",
                   "effective_frame_rate")  # fmt: skip
    f = Features(lab_median=[], lightness_mean=[], **{name: [[] for _ in range(S)] for name in per_segment},
                 start_counts={}, pair_scores=[], thumbs=np.empty((T, th, tw), np.float32), scale=scale)  # fmt: skip
    start_frames = start_window(fps, L)
    labs = np.empty((len(range(0, L, stride)), wh, ww, 3), np.float32)  # the segment's sampled CIELAB frames
    to_percent_per_second = 100.0 * fps / max(wh, ww)  # working px per pair -> % of the long side per second
    prev_grey = prev_full = None
    for t in range(T):
        small = M.downscale(frames[t], wh, ww)
        g = M.grey(small)
        f.thumbs[t] = M.downscale(g.astype(np.float32), th, tw)
        k, i = divmod(t, L)
        if k < S:
            full = M.grey(frames[t])
            f.spatial_information[k].append(M.spatial_information(full))
            if i % stride == 0:
                labs[i // stride] = A.srgb_to_lab(small)
                f.colourfulness[k].append(M.colourfulness(small))
                f.sharpness[k].append(M.laplacian_variance(full))
                f.detail[k].append(M.detail_energy(full))
                f.textured_area[k].append(M.textured_area(g, TEXTURE_BLOCK, NOISE_LEVEL))
            if i == L - 1:  # the median plate drops objects that cross a pixel in under half the segment
                f.lab_median.append(np.median(labs, axis=0))
                f.lightness_mean.append(labs[..., 0].mean(axis=0))
            if t >= 1:  # the pair (t - 1, t)
                flow = M.optical_flow(prev_grey, g)
                lengths = M.flow_lengths(flow) / scale  # pixels of the original resolution
                f.motion[k].append(float(lengths.mean()))
                f.content_motion[k].append(float(M.content_flow(flow).mean()) * to_percent_per_second)
                f.warp[k].append(M.warp_error(prev_grey, g, flow))
                f.temporal_information[k].append(M.temporal_information(prev_full, full))
                f.pair_scores.append(M.top_fraction_mean(lengths, DYNAMIC_TOP_FRACTION))
                f.camera[k].append(M.camera_velocity(flow))
            prev_full = full
            if t == start_frames - 1:  # values so far come from the start window
                f.start_counts = {spec.name: len(getattr(f, spec.name)[0]) for spec in LEVELS}
        prev_grey = g
    repeats = repeated_frames(f.thumbs[: S * L], fps)  # pair (t - 1, t) at index t - 1
    for t in range(1, S * L):
        f.effective_frame_rate[t // L].append(0.0 if repeats[t - 1] else 1.0)
    f.start_counts["effective_frame_rate"] = start_frames - 1
    return f


def segment_positions(velocity: np.ndarray, segment_frames: int) -> np.ndarray:
    """Camera position (x, y) at the middle of each segment from its mean velocity [S, 2] (px/frame): the
    displacement of all earlier segments plus half of this one's. [S, 2], working px, segment 0 at 0."""
    moved = velocity * segment_frames  # displacement over each segment
    return np.cumsum(moved, axis=0) - moved / 2 - moved[0] / 2


def reference_segments(camera: np.ndarray, height: int, width: int, min_overlap: float):
    """Per segment: its reference segment and the whole-pixel shift (dx, dy) of its content relative to it.

    camera: [S, 2] mean camera position of each segment (working px). The reference of segment k is the
    earliest segment whose view still overlaps k's by >= `min_overlap` after the shift; if no earlier one does
    (the camera moved more than that within one segment), the previous segment, compared unaligned.
    """
    refs, shifts = [0], [(0, 0)]
    for k in range(1, len(camera)):
        for j in range(k):
            dx, dy = (int(v) for v in np.round(camera[k] - camera[j]))
            inside = abs(dx) < width and abs(dy) < height
            if inside and (width - abs(dx)) * (height - abs(dy)) >= min_overlap * width * height:
                refs.append(j)
                shifts.append((dx, dy))
                break
        else:
            refs.append(k - 1)
            shifts.append((0, 0))
    return refs, shifts


def drift_entries(
    f: Features, fps: float, layout: SegmentLayout, settings: EvalSettings, segment_seconds: float
):
    """Per-measure JSON entries (drift.summarise), the level measures (levels.level_entry), and the reference
    segments and shifts used."""
    S, L = layout.segments, layout.segment_frames
    camera = segment_positions(np.array([np.mean(c, axis=0) for c in f.camera]), L)
    h, w = f.lightness_mean[0].shape
    refs, shifts = reference_segments(camera, h, w, settings.min_overlap)
    tiles, structure = [0.0], [0.0]
    for k in range(1, S):
        ref, seg, _ = A.overlap(f.lab_median[refs[k]], f.lab_median[k], shifts[k])
        tiles.append(A.local_colour_difference(ref, seg, settings.tile_grid, settings.tile_quantile))
        ref, seg, _ = A.overlap(f.lightness_mean[refs[k]], f.lightness_mean[k], shifts[k])
        cs = A.ssim_contrast_structure(ref * A.L_TO_GREY, seg * A.L_TO_GREY)
        structure.append(max(0.0, 1.0 - cs))
    levels = {spec.name: level_entry(spec, getattr(f, spec.name), f.start_counts[spec.name], fps)
              for spec in LEVELS}  # fmt: skip
    values = {name: entry["segments"] for name, entry in levels.items()}
    for name, attr in (("sharpness", "sharpness"), ("warp_error", "warp"), ("motion", "motion")):
        values[name] = [float(np.mean(v)) for v in getattr(f, attr)]
    curves = {"colour_tiles": (tiles, tiles), "structure": (structure, structure)}
    for name, v in values.items():
        curves[name] = (v, level_curve(SPECS[name], v, refs))
    entries = {spec.name: summarise(spec, *curves[spec.name], segment_seconds) for spec in METRICS}
    return entries, levels, refs, [[dx / f.scale, dy / f.scale] for dx, dy in shifts]


def evaluate_frames(
    frames: np.ndarray,
    fps: float,
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    settings: EvalSettings = EvalSettings(),
    name: str = "video",
) -> dict:
    """Drift curves of every measure in `drift.METRICS`, the guards' measurements and flags.

    frames: uint8 [T, H, W, 3]. Returns a JSON-ready dict; `report["metrics"][name]` holds `values` (one per
    segment), `curve` (distance to the reference segment, d_0 = 0), `drift` (mean of d_1.., lower is better),
    `max`, `slope`, `first_last`; `report["flags"]` lists the degenerate-video flags (guards.py).
    """
    start = time.perf_counter()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"{name}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    layout = segment_layout(len(frames), fps, segment_seconds, name)
    if settings.frame_stride >= layout.segment_frames:
        raise UserError(f"--frame-stride {settings.frame_stride} samples a single frame of a "
                        f"{layout.segment_frames}-frame segment; use at most {layout.segment_frames - 1}")  # fmt: skip
    features = extract_features(frames, fps, layout, settings)
    metrics, levels, refs, shifts = drift_entries(features, fps, layout, settings, segment_seconds)
    guards = guard_report(features.thumbs, features.pair_scores, fps, *frames.shape[1:3])
    first_tiles = A.tile_means(A.srgb_to_lab(frames[0]), min(settings.tile_grid, *frames.shape[1:3]))
    first_thumb = M.downscale(
        M.grey(frames[0]).astype(np.float32), *M.scaled_size(*frames.shape[1:3], 32)[:2]
    )
    return {
        "fps": float(fps),
        "frames": int(len(frames)),
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "duration_s": len(frames) / fps,
        "segment_seconds": segment_seconds,
        **dataclasses.asdict(layout),
        "settings": {
            **dataclasses.asdict(settings),
            "thumb_long_side": THUMB_LONG_SIDE,
            "colour": "CIELAB (sRGB, D65), CIE76",
            "flow": "OpenCV Farneback",
            "farneback": M.FARNEBACK,
        },  # fmt: skip
        "flags": guards.pop("flags"),
        "guards": guards,
        "reference_segments": refs,
        "camera_shift_px": shifts,
        "first_frame_lab_tiles": first_tiles.round(3).tolist(),  # for the seed-match check (pairs.py)
        "first_frame_thumb": first_thumb.round(2).tolist(),
        "levels": levels,
        "metrics": metrics,
        "eval_seconds": round(time.perf_counter() - start, 3),
    }


def evaluate_video(
    path: str | os.PathLike,
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    settings: EvalSettings = EvalSettings(),
) -> dict:
    """`evaluate_frames` on a video file read with `tokentrim.video.read_video`; adds its `path`, and
    `eval_seconds` then includes decoding (`decode_seconds` alone); `cpu_seconds` is the processor time of this
    process and of the decoder it ran (wall time on a shared machine overstates the work)."""
    from tokentrim.video import read_video

    start, cpu = time.perf_counter(), _cpu_seconds()
    frames, fps = read_video(path)  # one-line errors (the decoder's log is cut there)
    decoded = time.perf_counter()
    report = evaluate_frames(frames, fps, segment_seconds, settings, name=str(path))
    report["decode_seconds"] = round(decoded - start, 3)
    report["eval_seconds"] = round(time.perf_counter() - start, 3)
    report["cpu_seconds"] = round(_cpu_seconds() - cpu, 3)
    return {"path": str(path), **report}


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (the ffmpeg decoder)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
