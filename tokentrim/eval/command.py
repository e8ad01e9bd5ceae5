"""`tokentrim eval VIDEO... --json OUT` and `tokentrim eval --pair BASELINE TREATED --json OUT`.

`register(subparsers)` adds the sub-command; the handler evaluates, writes the JSON atomically and prints a
short table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from tokentrim.errors import UserError
from tokentrim.eval.drift import METRICS, compare_reports
from tokentrim.eval.segments import DEFAULT_SEGMENT_SECONDS, EvalSettings, evaluate_video


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="weight-free drift metrics of videos (per segment, first vs last segment), or a pair verdict",
        description="Drift metrics per segment and first-vs-last-segment drift; with --pair, which of two "
        "videos drifts less, metric by metric and overall. Definitions: docs/metrics.md.",
    )
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="videos to evaluate (mp4)")
    p.add_argument("--pair", nargs=2, metavar=("BASELINE", "TREATED"), help="compare two videos")
    p.add_argument("--json", required=True, metavar="OUT", help="where to write the results (JSON)")
    p.add_argument("--segment-seconds", type=float, default=DEFAULT_SEGMENT_SECONDS,
                   help="segment length in seconds (default %(default)s)")  # fmt: skip
    p.add_argument("--frame-stride", type=int, default=EvalSettings.frame_stride,
                   help="sharpness / flow on every k-th frame of a segment (default %(default)s)")  # fmt: skip
    p.add_argument("--flow-long-side", type=int, default=EvalSettings.flow_long_side,
                   help="optical flow on frames downscaled to this long side (default %(default)s px)")  # fmt: skip
    p.set_defaults(func=cmd_eval)


def check_segment_seconds(seconds: float) -> None:
    if not 0 < seconds < math.inf:
        raise UserError(f"--segment-seconds must be a positive number of seconds, got {seconds}")


def write_json(path: str | Path, data: dict) -> Path:
    """Write `data` as indented JSON to a temporary name beside `path`, then rename it onto `path`."""
    from tokentrim.video import atomic_path

    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


def _timed_report(path: str, segment_seconds: float, settings: EvalSettings) -> dict:
    start = time.perf_counter()
    report = evaluate_video(path, segment_seconds, settings)
    report["eval_seconds"] = round(time.perf_counter() - start, 3)
    return report


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def video_table(report: dict) -> str:
    lines = [f"{report['path']}: {report['duration_s']:.1f} s, {report['segments']} segments of "
             f"{report['segment_seconds']:g} s, {report['eval_seconds']:.1f} s to evaluate",
             f"  {'metric':<16}{'first':>12}{'last':>12}{'drift':>12}"]  # fmt: skip
    for name, m in report["metrics"].items():
        lines.append(f"  {name:<16}{_fmt(m['first']):>12}{_fmt(m['last']):>12}{_fmt(m['drift']):>12}")
    return "\n".join(lines)


def pair_table(result: dict) -> str:
    lines = [f"  {'metric':<16}{'baseline drift':>16}{'treated drift':>16}  less drift"]
    for name, c in result["comparison"].items():
        note = "" if c["votes"] else " (no vote)"
        lines.append(f"  {name:<16}{_fmt(c['baseline_drift']):>16}{_fmt(c['treated_drift']):>16}  "
                     f"{c['less_drift']}{note}")  # fmt: skip
    v = result["votes"]
    lines.append(f"verdict: {result['verdict']} drifts less (votes: baseline {v['baseline']}, "
                 f"treated {v['treated']}, abstained {v['tie']})")  # fmt: skip
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    if bool(args.videos) == bool(args.pair):
        raise UserError("give either VIDEO [VIDEO ...] or --pair BASELINE TREATED (not both, not neither)")
    check_segment_seconds(args.segment_seconds)
    if Path(args.json).is_dir():
        raise UserError(
            f"--json {args.json} is a folder; give a file name such as {Path(args.json) / 'eval.json'}"
        )
    try:
        settings = EvalSettings(frame_stride=args.frame_stride, flow_long_side=args.flow_long_side)
    except ValueError as err:
        raise UserError(f"{err}; see tokentrim eval --help") from err
    common = {"segment_seconds": args.segment_seconds, "metrics": [m.name for m in METRICS]}
    if args.pair:
        baseline = _timed_report(args.pair[0], args.segment_seconds, settings)
        treated = _timed_report(args.pair[1], args.segment_seconds, settings)
        result = compare_reports(baseline, treated)
        out = {**common, "verdict": result["verdict"], "rule": result["rule"], "votes": result["votes"],
               "comparison": result["comparison"], "baseline": baseline, "treated": treated}  # fmt: skip
        print(f"baseline {args.pair[0]}  vs  treated {args.pair[1]}")
        print(pair_table(result))
    else:
        reports = [_timed_report(v, args.segment_seconds, settings) for v in args.videos]
        out = {**common, "videos": reports}
        for report in reports:
            print(video_table(report))
    print(f"wrote {write_json(args.json, out)}")
    return 0
