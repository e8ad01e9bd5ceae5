"""Weight-free drift metrics on decoded videos: per segment, first-vs-last-segment drift, pair verdicts.

See docs/metrics.md for the definitions, directions, subsampling and what they say about real videos.
"""

from tokentrim.eval.drift import METRICS, VERDICT_RULE, MetricSpec, compare_reports
from tokentrim.eval.segments import (
    DEFAULT_SEGMENT_SECONDS,
    EvalSettings,
    evaluate_frames,
    evaluate_video,
    segment_layout,
)

__all__ = [
    "DEFAULT_SEGMENT_SECONDS",
    "METRICS",
    "VERDICT_RULE",
    "EvalSettings",
    "MetricSpec",
    "compare_reports",
    "evaluate_frames",
    "evaluate_video",
    "segment_layout",
]
