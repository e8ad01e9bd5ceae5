"""Split a video into fixed-length segments, measure each segment, and report first-vs-last-segment drift.

Segments are consecutive, non-overlapping runs of round(segment_seconds * fps) frames starting at frame 0; the
remainder (less than one segment) at the end is not used and is reported as `frames_unused`. Flicker and the
colour statistics use every frame. Sharpness and high-frequency energy use every `frame_stride`-th frame of a
segment at full resolution (downscaling is a low-pass filter and would remove what they measure). Optical flow
uses the pairs (t, t + 1) for every `frame_stride`-th t of a segment, on grey frames area-downscaled to at most
`flow_long_side` pixels on the long side; flow lengths are rescaled to pixels of the original resolution.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np

from tokentrim.errors import UserError
from tokentrim.eval import metrics as M
from tokentrim.eval.drift import METRICS, SPECS, drift

DEFAULT_SEGMENT_SECONDS = 2.0  # VBench-Long's fixed clip length


@dataclass(frozen=True)
class EvalSettings:
    frame_stride: int = 2  # sharpness / HF frames and flow pairs: every k-th frame of a segment
    flow_long_side: int = 256  # flow runs on grey frames downscaled to this long side (speed)
    hist_bins: int = 32  # per-channel histogram bins (8 grey levels each)
    hf_cutoff: float = 0.25  # cycles/pixel, half the Nyquist frequency

    def __post_init__(self):
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.flow_long_side < 16:
            raise ValueError(f"flow_long_side must be >= 16, got {self.flow_long_side}")
        if not 2 <= self.hist_bins <= 256:
            raise ValueError(f"hist_bins must be in 2..256, got {self.hist_bins}")
        if not 0.0 < self.hf_cutoff < 0.5:
            raise ValueError(f"hf_cutoff must be in (0, 0.5) cycles/pixel, got {self.hf_cutoff}")


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


def measure_segment(frames: np.ndarray, settings: EvalSettings) -> dict:
    """Raw measurements of one segment `uint8 [L, H, W, 3]` (L >= 2): scalars plus RGB vectors and histograms."""
    stats = [M.colour_stats(f) for f in frames]
    hist = sum(M.channel_histograms(f, settings.hist_bins) for f in frames)
    sampled = [M.grey(f) for f in frames[:: settings.frame_stride]]
    magnitudes, errors = [], []
    for t in range(0, len(frames) - 1, settings.frame_stride):
        prev, scale = M.working_grey(frames[t], settings.flow_long_side)
        nxt, _ = M.working_grey(frames[t + 1], settings.flow_long_side)
        flow = M.optical_flow(prev, nxt)
        magnitudes.append(M.flow_magnitude(flow) / scale)
        errors.append(M.warp_error(prev, nxt, flow))
    return {
        "flicker": float(M.flicker_scores(frames).mean()),
        "warp_error": float(np.mean(errors)),
        "flow_magnitude": float(np.mean(magnitudes)),
        "laplacian_var": float(np.mean([M.laplacian_variance(g) for g in sampled])),
        "hf_energy": float(np.mean([M.high_frequency_fraction(g, settings.hf_cutoff) for g in sampled])),
        "saturation": float(np.mean([s["saturation"] for s in stats])),
        "luminance": float(np.mean([s["luminance"] for s in stats])),
        "rgb_mean": np.mean([s["mean"] for s in stats], axis=0),
        "rgb_std": np.mean([s["std"] for s in stats], axis=0),
        "hist": hist,
    }


def _entry(name: str, values: list[float], **extra) -> dict:
    spec = SPECS[name]
    first, last = values[0], values[-1]
    return {
        "values": values, "first": first, "last": last, "delta": last - first, "drift": drift(spec, first, last),
        "kind": spec.kind, "unit": spec.unit, "votes": spec.votes, "description": spec.description, **extra,
    }  # fmt: skip


def evaluate_frames(
    frames: np.ndarray,
    fps: float,
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    settings: EvalSettings = EvalSettings(),
    name: str = "video",
) -> dict:
    """Per-segment values and first-vs-last-segment drift of every metric in `drift.METRICS`.

    frames: uint8 [T, H, W, 3]. Returns a JSON-ready dict; `report["metrics"][name]` holds `values` (one per
    segment), `first`, `last`, `delta` = last - first, and `drift` (>= 0, see `drift.py`).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"{name}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    layout = segment_layout(len(frames), fps, segment_seconds, name)
    raw = [measure_segment(frames[slice(*layout.bounds(k))], settings) for k in range(layout.segments)]

    def series(key: str) -> list[float]:
        return [r[key] for r in raw]

    def shift(key: str) -> dict:
        vectors = [r[key] for r in raw]
        distances = [float(np.linalg.norm(v - vectors[0])) for v in vectors]
        return _entry(f"{key}_shift", distances, channels=[v.tolist() for v in vectors],
                      channel_delta=(vectors[-1] - vectors[0]).tolist())  # fmt: skip

    hists = series("hist")
    hist_distances = [0.0] + [M.bhattacharyya_distance(hists[0], h) for h in hists[1:]]
    entries = {
        "rgb_mean_shift": shift("rgb_mean"),
        "rgb_std_shift": shift("rgb_std"),
        "hist_distance": _entry("hist_distance", hist_distances),
    }
    metrics = {spec.name: entries.get(spec.name) or _entry(spec.name, series(spec.name)) for spec in METRICS}
    return {
        "fps": float(fps),
        "frames": int(len(frames)),
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "duration_s": len(frames) / fps,
        "segment_seconds": segment_seconds,
        **dataclasses.asdict(layout),
        "settings": {
            **dataclasses.asdict(settings),
            "luma": "Rec.601 (0.299 R' + 0.587 G' + 0.114 B')",
            "flow": "OpenCV Farneback",
            "farneback": M.FARNEBACK,
            "histogram": "Bhattacharyya",
        },  # fmt: skip
        "metrics": metrics,
    }


def evaluate_video(
    path: str | os.PathLike,
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    settings: EvalSettings = EvalSettings(),
) -> dict:
    """`evaluate_frames` on a video file read with `tokentrim.video.read_video`; adds its `path`."""
    from tokentrim.video import read_video

    frames, fps = read_video(path)
    report = evaluate_frames(frames, fps, segment_seconds, settings, name=str(path))
    return {"path": str(path), **report}
