"""Plain-text tables that `tokentrim eval` prints: one video, one pair, and the summary over many pairs."""

from __future__ import annotations

from tokentrim.eval.drift import CATEGORIES, METRICS
from tokentrim.eval.levels import LEVELS

# Short column labels for the categories, so the five fit side by side in one line.
SHORT = {"colour": "colour", "structure": "structure", "detail": "detail", "temporal_stability": "temporal",
         "motion": "motion"}  # fmt: skip


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def flag_text(flags: list[str]) -> str:
    return ", ".join(flags) if flags else "none"


def short_flag(flag: str) -> str:
    """'less colour from the start: 0 vs 75.1 M' -> 'less colour from the start'."""
    return flag.split(":")[0]


def levels_table(report: dict) -> list[str]:
    lines = [f"  {'level':<22}{'video':>10}{'start':>10}{'late':>10}{'own loss':>10}  unit"]
    for spec in LEVELS:
        e = report["levels"][spec.name]
        lines.append(f"  {spec.name:<22}{_fmt(e['video']):>10}{_fmt(e['start']):>10}{_fmt(e['late']):>10}"
                     f"{_fmt(e['loss']):>10}  {spec.unit}")  # fmt: skip
    return lines


def video_table(report: dict) -> str:
    g = report["guards"]
    lines = [
        f"{report.get('path', 'video')}: {report['duration_s']:.1f} s, {report['segments']} segments of "
        f"{report['segment_seconds']:g} s, {report['eval_seconds']:.1f} s to evaluate",
        f"  flags: {flag_text(report['flags'])} (dynamic degree {g['dynamic_degree']:.2f}, longest still "
        f"{g['longest_still_s']:.2f} s, repeated {g['repeated_s']:.2f} s, blank {g['blank_s']:.2f} s)",
        f"  {'category':<20}{'measure':<22}{'drift':>10}{'max':>10}{'slope/s':>11}{'first_last':>12}",
    ]
    for spec in METRICS:
        m = report["metrics"][spec.name]
        lines.append(f"  {spec.category:<20}{spec.name:<22}{_fmt(m['drift']):>10}{_fmt(m['max']):>10}"
                     f"{_fmt(m['slope']):>11}{_fmt(m['first_last']):>12}")  # fmt: skip
    return "\n".join(lines + levels_table(report))


def pair_table(result: dict) -> str:
    """Flags, the level measures side by side, then the drift measures grouped by category with both drifts, the
    measure's winner and the category's vote, and the verdict."""
    flags = result["flags"]
    lines = [
        f"  flags: baseline {'; '.join(flags['baseline']) or 'none'}; treated {'; '.join(flags['treated']) or 'none'}"
    ]
    lines.append(f"  {'level: start -> late':<22}{'baseline':>22}{'treated':>22}  margin (ln)")
    for spec in LEVELS:
        b, t = (result[side]["levels"][spec.name] for side in ("baseline", "treated"))
        lines.append(f"  {spec.name:<22}{_fmt(b['start']) + ' -> ' + _fmt(b['late']):>22}"
                     f"{_fmt(t['start']) + ' -> ' + _fmt(t['late']):>22}  {spec.margin:.2f}")  # fmt: skip
    lines.append(
        f"  {'category':<20}{'measure':<22}{'baseline':>10}{'treated':>10}  {'less drift':<11}category vote"
    )
    for cat in CATEGORIES:
        for i, name in enumerate(result["categories"][cat]["measures"]):
            c = result["comparison"][name]
            vote = result["categories"][cat]["vote"] if i == 0 else ""
            lines.append(f"  {cat if i == 0 else '':<20}{name:<22}{_fmt(c['baseline_drift']):>10}"
                         f"{_fmt(c['treated_drift']):>10}  {c['less_drift']:<11}{vote}")  # fmt: skip
    votes = "  ".join(f"{SHORT[cat]}={result['categories'][cat]['vote']}" for cat in CATEGORIES)
    lines.append(f"  categories: {votes}")
    lines.append(f"verdict: {result['verdict']} ({result['reason']})")
    return "\n".join(lines)


def pairs_summary_table(results: list[dict], summary: dict) -> str:
    """One row per pair with the category votes side by side, then wins / ties / losses and the statistics."""
    header = f"  {'pair':<6}" + "".join(f"{SHORT[c]:<11}" for c in CATEGORIES) + f"{'flags':<18}verdict"
    lines = [header]
    for i, r in enumerate(results, start=1):
        flags = "; ".join(f"{side[0]}: {', '.join(short_flag(x) for x in f)}" for side, f in r["flags"].items()
                          if f) or "-"  # fmt: skip
        lines.append(f"  {i:<6}" + "".join(f"{r['categories'][c]['vote']:<11}" for c in CATEGORIES)
                     + f"{flags:<18}{r['verdict']}")  # fmt: skip
    s = summary
    low, high = s["win_rate_interval"]
    rate = "n/a" if s["win_rate"] is None else f"{s['win_rate']:.2f}"
    lines.append(f"treated preferred (wins) {s['wins']}, ties {s['ties']}, baseline preferred (losses) "
                 f"{s['losses']}; sign test p = {s['sign_test_p']:.4g} (exact, two-sided, ties dropped); "
                 f"win rate {rate}, {100 * s['confidence']:g} % interval [{low:.3f}, {high:.3f}] "
                 "(Clopper-Pearson)")  # fmt: skip
    return "\n".join(lines)
