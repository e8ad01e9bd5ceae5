"""Weight-free drift evaluation of decoded videos: drift curves per measure, degenerate-video guards, pair
verdicts by category, many-pair statistics, and the per-video summary row for tables.

See docs/metrics.md for the definitions, the rule, the reasons for each choice and measured results.
"""

from tokentrim.eval.drift import CATEGORIES, METRICS, MetricSpec
from tokentrim.eval.segments import (
    DEFAULT_SEGMENT_SECONDS,
    EvalSettings,
    evaluate_frames,
    evaluate_video,
    segment_layout,
)
from tokentrim.eval.verdict import VERDICT_RULE, compare_reports

__all__ = [
    "CATEGORIES",
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
