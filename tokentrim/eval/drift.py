"""What counts as drift for each metric, and the pair verdict.

Drift is always measured between the first and the last segment of one video and is >= 0 (0 = no drift):
- "decrease" / "increase" metrics have one bad direction; a change the other way counts as no drift;
- "two-sided" levels (colour) drift by |last - first|;
- "log-ratio" metrics are ratio-scale quantities (sharpness, spectral energy, motion) that can go wrong both
  ways (noise raises them, blur or stagnation lowers them): drift = |ln((last + eps) / (first + eps))|;
- "distance" metrics are already a distance to the first segment: drift = the last segment's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["decrease", "increase", "two-sided", "log-ratio", "distance"]

# Two drifts closer than this fraction of the larger one are a tie for that metric.
RELATIVE_TIE_MARGIN = 0.10


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    kind: Kind  # which change is bad, see the module docstring
    floor: float  # drift below this is measurement noise: counted as 0, and differences below it are ties
    votes: bool  # takes part in the pair verdict
    eps: float = 0.0  # log-ratio only: added to both values so near-zero levels do not explode the ratio
    description: str = ""


# One grey level is the uint8 quantisation step; the floors of the grey-level metrics derive from it.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("flicker", "score 0..1", "decrease", 0.5 / 255, True,
               description="VBench temporal flickering: mean over pairs of (255 - mean|f_t - f_t+1|) / 255"),
    MetricSpec("warp_error", "grey levels", "increase", 0.5, True,
               description="mean |f_t - warp(f_t+1, flow)| at the flow resolution (unpredictable change)"),
    MetricSpec("flow_magnitude", "px/frame", "log-ratio", 0.05, True, eps=0.1,
               description="mean Farneback flow length, in pixels of the original resolution per frame"),
    MetricSpec("laplacian_var", "grey levels^2", "log-ratio", 0.05, True, eps=1.0,
               description="variance of the 4-neighbour Laplacian of the grey frame (full resolution)"),
    MetricSpec("hf_energy", "fraction", "log-ratio", 0.05, True, eps=1e-4,
               description="fraction of Hann-windowed spectral energy above 0.25 cycles/pixel (full resolution)"),
    MetricSpec("rgb_mean_shift", "grey levels", "distance", 1.0, True,
               description="Euclidean distance of the segment's RGB channel means from the first segment's"),
    MetricSpec("rgb_std_shift", "grey levels", "distance", 1.0, True,
               description="Euclidean distance of the segment's RGB channel stds (contrast) from the first's"),
    MetricSpec("saturation", "0..1", "two-sided", 1.0 / 255, True,
               description="mean HSV saturation (max - min) / max"),
    MetricSpec("hist_distance", "0..1", "distance", 0.01, True,
               description="Bhattacharyya distance of per-channel 32-bin histograms to the first segment's"),
    MetricSpec("luminance", "grey levels", "two-sided", 1.0, False,
               description="mean Rec.601 luma; reported only: it is a fixed mix of the RGB means"),
)  # fmt: skip
SPECS = {spec.name: spec for spec in METRICS}

VERDICT_RULE = (
    "Each metric with votes=true compares the two videos' first-vs-last-segment drifts (>= 0, 0 = none; drift "
    "below the metric's floor counts as 0). The video with the smaller drift gets the metric's vote, unless the "
    f"drifts differ by no more than max(floor, {RELATIVE_TIE_MARGIN:g} x the larger drift), in which case the "
    "metric abstains. Verdict: the video with more votes drifts less; equal votes give 'tie'."
)


def drift(spec: MetricSpec, first: float, last: float) -> float:
    """First-vs-last-segment drift of one metric, >= 0, following `spec.kind`."""
    if spec.kind == "decrease":
        return max(0.0, first - last)
    if spec.kind == "increase":
        return max(0.0, last - first)
    if spec.kind == "two-sided":
        return abs(last - first)
    if spec.kind == "log-ratio":
        return abs(math.log((last + spec.eps) / (first + spec.eps)))
    assert spec.kind == "distance", spec
    return last  # the first segment's distance to itself is 0


def compare_drift(spec: MetricSpec, baseline: float, treated: float) -> str:
    """Which video drifts less on one metric: "baseline", "treated" or "tie" (see VERDICT_RULE)."""
    b = baseline if baseline >= spec.floor else 0.0
    t = treated if treated >= spec.floor else 0.0
    if abs(b - t) <= max(spec.floor, RELATIVE_TIE_MARGIN * max(b, t)):
        return "tie"
    return "baseline" if b < t else "treated"


def compare_reports(baseline: dict, treated: dict) -> dict:
    """Metric-by-metric comparison of two `evaluate_video` reports and the overall verdict.

    Returns {"rule", "comparison": {metric: {...}}, "votes": {"baseline", "treated", "tie"}, "verdict"}.
    """
    comparison, votes = {}, {"baseline": 0, "treated": 0, "tie": 0}
    for spec in METRICS:
        b, t = baseline["metrics"][spec.name]["drift"], treated["metrics"][spec.name]["drift"]
        winner = compare_drift(spec, b, t)
        comparison[spec.name] = {
            "baseline_drift": b, "treated_drift": t, "less_drift": winner,
            "difference": b - t, "votes": spec.votes, "kind": spec.kind,
        }  # fmt: skip
        if spec.votes:
            votes[winner] += 1
    if votes["baseline"] == votes["treated"]:
        verdict = "tie"
    else:
        verdict = "baseline" if votes["baseline"] > votes["treated"] else "treated"
    return {"rule": VERDICT_RULE, "comparison": comparison, "votes": votes, "verdict": verdict}
