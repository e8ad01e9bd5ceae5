"""The drift measures, their categories, and how a per-segment drift curve is summarised.

Every measure gives one number per segment k: its distance d_k >= 0 to the segment's reference (the first
segment, or for a moving camera the earliest segment that still shows at least half of the same view; see
segments.py). d_0 = 0. How d_k is formed from the per-segment values depends on the measure's kind:
- "distance": the value already is a distance to the reference (tile colour difference, 1 - SSIM structure);
- "log-ratio": ratio-scale levels that go wrong both ways (noise raises sharpness, blur lowers it; a rollout can
  stagnate or jitter): d_k = |ln((v_k + eps) / (v_ref + eps))|;
- "log-increase": a level where only a rise is bad (warp error): d_k = max(0, ln((v_k + eps) / (v_ref + eps)));
- "log-decrease": a level where only a fall is bad (effective frame rate): d_k = max(0, ln((v_ref + eps) /
  (v_k + eps))).

The level measures of levels.py (colourfulness, detail, SI, TI, effective frame rate, content motion) are drift
measures too: a video that fades, blurs, desaturates, slows down or freezes its content over time drifts.

The curve d_1..d_{S-1} is summarised by its mean (the area under the drift curve per segment; the number the
verdict compares and `report["metrics"][name]["drift"]`), its maximum, a robust (Theil-Sen) slope, and, for
continuity with first-vs-last-segment drift, d_{S-1} (`first_last`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tokentrim.eval.levels import LEVEL_SPECS

Kind = Literal["distance", "log-ratio", "log-increase", "log-decrease"]
Category = Literal["colour", "structure", "detail", "temporal_stability", "motion"]
CATEGORIES: tuple[Category, ...] = ("colour", "structure", "detail", "temporal_stability", "motion")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    category: Category
    kind: Kind  # how the drift curve is formed from the per-segment values, see the module docstring
    unit: str  # unit of the drift curve
    value_unit: str  # unit of the per-segment values
    floor: float  # drift below this is measurement noise: counted as 0, and differences below it are ties
    eps: float = 0.0  # log kinds only: added to both levels so near-zero levels do not explode the ratio
    description: str = ""

    def __post_init__(self):
        if self.floor < 0:
            raise ValueError(f"floor must be >= 0, got {self.floor}")
        if self.kind != "distance" and not self.eps > 0:
            raise ValueError(f"eps must be > 0 for kind {self.kind!r}, got {self.eps}")


JND_DELTA_E = 2.3  # CIE76 just-noticeable difference (Sharma 2003, Digital Color Imaging Handbook)
# Laplacian variance of uint8 rounding noise: the kernel's squared weights sum to 20, uniform rounding error has
# variance 1/12. Below this level a frame has no measurable detail.
LAPLACIAN_QUANTISATION = 20.0 / 12.0
RELATIVE_FLOOR = 0.05  # 5 % relative change: below it a ratio-scale level has not visibly changed


def _level(name: str, category: Category, kind: Kind = "log-ratio") -> MetricSpec:
    """The drift measure of a level measure (levels.LEVELS): its per-segment level against the reference's."""
    spec = LEVEL_SPECS[name]
    unit, change = (
        ("|ln ratio|", "relative change") if kind == "log-ratio" else ("ln ratio (falls only)", "fall")
    )
    return MetricSpec(name, category, kind, unit, spec.unit, RELATIVE_FLOOR, eps=spec.eps,
                      description=f"{spec.description}; {change} vs the reference segment")  # fmt: skip


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("colour_tiles", "colour", "distance", "delta E76", "delta E76", JND_DELTA_E,
               description="upper quantile over an N x N tile grid of the CIE76 difference between the tile's "
               "mean CIELAB colour and the reference segment's (aligned for camera translation)"),
    _level("colourfulness", "colour"),
    MetricSpec("structure", "structure", "distance", "1 - SSIM_cs", "1 - SSIM_cs", 0.01,
               description="1 - SSIM contrast-structure term between the segment's mean L* frame and the "
               "reference segment's, at the working resolution, aligned for camera translation"),
    MetricSpec("sharpness", "detail", "log-ratio", "|ln ratio|", "grey levels^2", RELATIVE_FLOOR,
               eps=LAPLACIAN_QUANTISATION,
               description="variance of the Laplacian of the grey frame (full resolution), relative change"),
    _level("detail", "detail"),
    _level("textured_area", "detail"),
    _level("spatial_information", "detail"),
    MetricSpec("warp_error", "temporal_stability", "log-increase", "ln ratio (rises only)", "grey levels",
               RELATIVE_FLOOR, eps=0.5,
               description="mean |f_t - warp(f_t+1, flow)|: frame-to-frame change the motion does not explain"),
    MetricSpec("motion", "motion", "log-ratio", "|ln ratio|", "px/frame", RELATIVE_FLOOR, eps=0.1,
               description="mean Farneback flow length in pixels of the original resolution per frame; "
               "stagnation and jitter both count"),
    _level("content_motion", "motion"),
    _level("temporal_information", "motion"),
    _level("effective_frame_rate", "motion", "log-decrease"),
)  # fmt: skip
SPECS = {spec.name: spec for spec in METRICS}


def level_curve(spec: MetricSpec, values: list[float], refs: list[int]) -> list[float]:
    """Drift curve d_k of a level measure: segment k's value vs its reference segment refs[k]'s."""
    assert spec.kind != "distance", spec
    out = []
    for k, v in enumerate(values):
        ratio = math.log((v + spec.eps) / (values[refs[k]] + spec.eps))
        if spec.kind == "log-increase":
            ratio = max(0.0, ratio)
        elif spec.kind == "log-decrease":
            ratio = max(0.0, -ratio)
        out.append(abs(ratio))
    return out


def theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Median of the slopes (y_j - y_i) / (x_j - x_i) over all pairs i < j (Theil 1950, Sen 1968).

    Robust to a few outlying segments (a single bad segment moves a least-squares slope, not this one).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    i, j = np.triu_indices(len(x), k=1)
    if len(i) == 0:
        return 0.0
    return float(np.median((y[j] - y[i]) / (x[j] - x[i])))


def summarise(spec: MetricSpec, values: list[float], curve: list[float], segment_seconds: float) -> dict:
    """JSON entry of one measure: per-segment values and drift curve, and the curve's summaries.

    `drift` = mean of d_1..d_{S-1} (the area under the drift curve per segment), `max`, `slope` (Theil-Sen,
    per second, over all segments including d_0 = 0), `first_last` = d_{S-1}.
    """
    assert len(values) == len(curve) >= 2 and curve[0] == 0.0, (values, curve)
    later = curve[1:]
    centres = (np.arange(len(curve)) + 0.5) * segment_seconds
    return {
        "category": spec.category,
        "values": values,
        "first": values[0],
        "last": values[-1],
        "delta": values[-1] - values[0],
        "curve": curve,
        "drift": float(np.mean(later)),
        "max": float(np.max(later)),
        "slope": theil_sen_slope(centres, curve),
        "first_last": curve[-1],
        "kind": spec.kind,
        "unit": spec.unit,
        "value_unit": spec.value_unit,
        "floor": spec.floor,
        "description": spec.description,
    }
