"""The pair verdict: degenerate-video flags first, then one vote per category of drift measures, and no verdict for
a video markedly poorer than the other on a level measure (levels.py).

Symmetric by construction: swapping the two videos swaps every measure's winner, every category's vote, every
flag and the verdict.
"""

from __future__ import annotations

from tokentrim.eval.drift import CATEGORIES, METRICS, MetricSpec
from tokentrim.eval.levels import comparability_flags

# Two drifts closer than this fraction of the larger one are a tie for that measure.
RELATIVE_TIE_MARGIN = 0.10
# A verdict needs at least this many categories in its favour: one kind of evidence alone (a colour change with
# nothing else moving) is as often a change of content as drift.
MIN_DECIDING_CATEGORIES = 2
SIDES = ("baseline", "treated")
OTHER = {"baseline": "treated", "treated": "baseline"}

VERDICT_RULE = (
    "1. A video flagged degenerate (frozen, loop, blank) is never preferred: if exactly one video is flagged, the "
    "other is preferred; if both are, the verdict is 'tie'. "
    "2. Otherwise each measure compares the two videos' drift (the mean over segments of the distance to the "
    "reference segment; a drift below the measure's floor counts as 0): the smaller drift wins unless the two "
    f"differ by no more than max(floor, {RELATIVE_TIE_MARGIN:g} x the larger), which is a tie. "
    "3. Each category (colour, structure, detail, temporal_stability, motion) casts at most one vote: for the "
    "video more of its measures favour; equal counts abstain. "
    "4. The verdict is the video favoured by a majority of the deciding (non-abstaining) categories and by at "
    f"least {MIN_DECIDING_CATEGORIES} of them; otherwise 'tie'. "
    "5. A video markedly poorer than the other on a level measure (colourfulness, detail, textured area, "
    "spatial or temporal information, effective frame rate, content motion) is flagged and never preferred: a "
    "verdict for it becomes 'tie'. Markedly poorer: its level over the first half second is lower by more than "
    "the measure's margin (a log ratio), or it lost more of its own level from then to the last quarter of the "
    "segments than the other did, by more than the margin, and ends lower by more than the margin."
)


def compare_drift(spec: MetricSpec, baseline: float, treated: float) -> str:
    """Which video drifts less on one measure: "baseline", "treated" or "tie" (rule step 2)."""
    b = baseline if baseline >= spec.floor else 0.0
    t = treated if treated >= spec.floor else 0.0
    if abs(b - t) <= max(spec.floor, RELATIVE_TIE_MARGIN * max(b, t)):
        return "tie"
    return "baseline" if b < t else "treated"


def category_vote(winners: list[str]) -> str:
    """One category's vote from its measures' winners (rule step 3)."""
    b, t = winners.count("baseline"), winners.count("treated")
    return "tie" if b == t else ("baseline" if b > t else "treated")


def majority(votes: dict[str, str]) -> str:
    """The verdict from the category votes (rule step 4)."""
    b = sum(v == "baseline" for v in votes.values())
    t = sum(v == "treated" for v in votes.values())
    if max(b, t) < MIN_DECIDING_CATEGORIES or b == t:
        return "tie"
    return "baseline" if b > t else "treated"


def compare_reports(baseline: dict, treated: dict) -> dict:
    """Measure-by-measure and category comparison of two `evaluate_video` reports, and the verdict.

    Returns {"rule", "verdict" ("baseline" | "treated" | "tie"), "reason", "flags" {side: [flag, ...]} (why a
    video cannot be preferred: its degenerate-video flags, or else its level shortfalls as text), "shortfalls"
    {side: [{"measure", "kind" ("start" | "increasing"), values, "margin"}]} (levels.comparability_flags),
    "categories" {category: {"vote", "measures"}}, "votes" {"baseline", "treated", "tie"} (category counts;
    "tie" = abstaining categories), "comparison" {measure: {...}}}.
    """
    reports = {"baseline": baseline, "treated": treated}
    comparison = {}
    for spec in METRICS:
        b, t = (reports[s]["metrics"][spec.name] for s in SIDES)
        comparison[spec.name] = {
            "category": spec.category, "baseline_drift": b["drift"], "treated_drift": t["drift"],
            "less_drift": compare_drift(spec, b["drift"], t["drift"]), "difference": b["drift"] - t["drift"],
            "baseline_max": b["max"], "treated_max": t["max"], "unit": spec.unit, "floor": spec.floor,
        }  # fmt: skip
    categories = {}
    for cat in CATEGORIES:
        names = [spec.name for spec in METRICS if spec.category == cat]
        categories[cat] = {
            "vote": category_vote([comparison[n]["less_drift"] for n in names]),
            "measures": names,
        }
    cat_votes = {cat: c["vote"] for cat, c in categories.items()}
    votes = {s: sum(v == s for v in cat_votes.values()) for s in SIDES}
    votes["tie"] = len(CATEGORIES) - votes["baseline"] - votes["treated"]

    degenerate = {s: list(reports[s].get("flags", [])) for s in SIDES}
    shortfalls = {s: comparability_flags(reports[s], reports[OTHER[s]]) for s in SIDES}
    flags = {s: degenerate[s] or shortfalls[s][0] for s in SIDES}  # why a video cannot be preferred
    flagged = [s for s in SIDES if degenerate[s]]
    if len(flagged) == 2:
        verdict, reason = "tie", "both videos are degenerate: neither can be preferred"
    elif flagged:
        (bad,) = flagged
        verdict = OTHER[bad]
        reason = f"{bad} is degenerate ({', '.join(flags[bad])}): it is never preferred"
    else:
        verdict = majority(cat_votes)
        reason = (f"categories: baseline {votes['baseline']}, treated {votes['treated']}, "
                  f"abstained {votes['tie']}")  # fmt: skip
        if verdict != "tie" and flags[verdict]:
            reason += (
                f"; but {verdict} is markedly poorer ({'; '.join(flags[verdict])}): it is never preferred"
            )
            verdict = "tie"
    return {"rule": VERDICT_RULE, "verdict": verdict, "reason": reason, "flags": flags,
            "shortfalls": {s: shortfalls[s][1] for s in SIDES}, "categories": categories, "votes": votes,
            "comparison": comparison}  # fmt: skip
