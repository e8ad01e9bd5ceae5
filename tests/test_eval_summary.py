"""The per-video summary row for tables: one value per measure plus `degenerate`, lower is better, and its
caption."""

import pytest
from test_eval_scenes import frozen, global_cast, report_of

from tokentrim.eval import METRICS
from tokentrim.eval.summary import SUMMARY_COLUMNS, summary_caption, summary_row


def test_summary_row_is_the_drift_of_each_measure_and_the_flag():
    cast = report_of(global_cast)
    row = summary_row(cast)
    assert list(row) == [c.name for c in SUMMARY_COLUMNS] == [m.name for m in METRICS] + ["degenerate"]
    for m in METRICS:
        curve = cast["metrics"][m.name]["curve"]
        assert row[m.name] == pytest.approx(sum(curve[1:]) / (len(curve) - 1))  # mean over later segments
    assert row["degenerate"] == 0.0 and summary_row(report_of(frozen))["degenerate"] == 1.0
    assert all(isinstance(v, float) and v >= 0 for v in row.values())


def test_caption_names_every_column_with_unit_and_direction():
    text = summary_caption(2.0)
    assert "Lower is better" in text and "2 s segments" in text
    for c in SUMMARY_COLUMNS:
        assert f"`{c.name}` ({c.category}; {c.unit})" in text
