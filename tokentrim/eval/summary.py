"""One video report as a row of numbers for tables (`make reproduce`), with the caption that explains them.

    from tokentrim.eval.summary import SUMMARY_COLUMNS, summary_caption, summary_row
    row = summary_row(evaluate_video(path))   # {"colour_tiles": 1.7, ..., "degenerate": 0.0}

Every value is >= 0 and lower is better, so a table of means over prompts reads the same way in every column.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokentrim.eval.drift import METRICS


@dataclass(frozen=True)
class SummaryColumn:
    name: str  # key in summary_row's dict and table header
    category: str  # drift category, or "guards"
    unit: str
    description: str


SUMMARY_COLUMNS: tuple[SummaryColumn, ...] = tuple(
    SummaryColumn(spec.name, spec.category, spec.unit, f"{spec.description}; mean over segments of the drift curve")
    for spec in METRICS
) + (
    SummaryColumn("degenerate", "guards", "0 or 1",
                  "1 if the video is flagged frozen, loop or blank (a mean over videos is the flagged fraction)"),
)  # fmt: skip


def summary_row(report: dict) -> dict[str, float]:
    """Per-video summary: each measure's drift (mean over segments of the distance to the reference segment)
    and `degenerate` (1.0 if any guard flag is set). Keys and order follow SUMMARY_COLUMNS; lower is better."""
    row = {spec.name: float(report["metrics"][spec.name]["drift"]) for spec in METRICS}
    row["degenerate"] = 1.0 if report.get("flags") else 0.0
    return row


def summary_caption(segment_seconds: float | None = None) -> str:
    """Caption text for a table whose columns are SUMMARY_COLUMNS: what each column is, its unit, and that lower
    is better."""
    seg = f"{segment_seconds:g} s" if segment_seconds else "fixed-length"
    lines = [
        f"Drift per video: each video is cut into {seg} segments; every column except `degenerate` is the mean "
        "over segments of that measure's distance to the reference (first) segment, i.e. the area under its "
        "drift curve. Lower is better in every column (0 = no drift). Definitions: docs/metrics.md.",
    ]
    lines += [f"- `{c.name}` ({c.category}; {c.unit}): {c.description}." for c in SUMMARY_COLUMNS]
    return "\n".join(lines)
