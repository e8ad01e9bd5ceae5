"""`tokentrim eval VIDEO... | --pair BASELINE TREATED | --pairs FILE --json OUT`.

`register(subparsers)` adds the sub-command; the handler checks every input before evaluating anything, writes
the JSON atomically and prints short tables (flags, categories side by side, verdicts, many-pair statistics).
Warnings (duplicate inputs, pairs that are not seed-matched) go to stderr and into the JSON's `warnings`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tokentrim.errors import UserError
from tokentrim.eval.drift import CATEGORIES, METRICS
from tokentrim.eval.pairs import content_hash, duplicate_warnings, read_pairs_file, seed_warning
from tokentrim.eval.segments import DEFAULT_SEGMENT_SECONDS, EvalSettings, evaluate_video
from tokentrim.eval.stats import win_summary
from tokentrim.eval.tables import pair_table, pairs_summary_table, video_table
from tokentrim.eval.verdict import VERDICT_RULE, compare_reports
from tokentrim.files import check_output


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="weight-free drift evaluation of videos, a pair verdict, or statistics over many pairs",
        description="Drift curves per measure (distance of each segment to the reference segment), level "
        "measures (colourfulness, detail, textured area, SI/TI, effective frame rate, content motion), "
        "degenerate-video flags "
        "(frozen, loop, blank); with --pair, which of two videos drifts less, by category, never a video "
        "markedly poorer than the other on a level measure; with --pairs FILE, a verdict per line 'BASELINE "
        "TREATED' plus wins/ties/losses, an exact sign test and a Clopper-Pearson interval. Definitions: "
        "docs/metrics.md.",
    )
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="videos to evaluate (mp4)")
    p.add_argument("--pair", nargs=2, metavar=("BASELINE", "TREATED"), help="compare two videos")
    p.add_argument("--pairs", metavar="FILE", help="compare many pairs: one 'BASELINE TREATED' line each")
    p.add_argument("--json", required=True, metavar="OUT", help="where to write the results (JSON)")
    p.add_argument("--segment-seconds", type=float, default=DEFAULT_SEGMENT_SECONDS,
                   help="segment length in seconds (default %(default)s)")  # fmt: skip
    p.add_argument("--frame-stride", type=int, default=EvalSettings.frame_stride,
                   help="colour, sharpness and detail on every k-th frame of a segment; motion is measured on "
                   "every frame pair (default %(default)s)")  # fmt: skip
    p.add_argument("--working-long-side", type=int, default=EvalSettings.working_long_side,
                   help="flow, colour and structure on frames downscaled to this long side (default %(default)s px)")  # fmt: skip
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


def _check_videos(paths: list[Path]) -> None:
    """Fail before any work if an input is missing, so a long run never stops half-way on a typo."""
    for p in paths:
        if not Path(p).is_file():
            raise UserError(
                f"video file not found: {p}"
                if not Path(p).exists()
                else f"{p} is not a video file (not a regular file)"
            )


def _warn(messages: list[str]) -> None:
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)


class _Evaluator:
    """Evaluates each distinct file content once (a duplicated input is not decoded twice)."""

    def __init__(self, segment_seconds: float, settings: EvalSettings):
        self.segment_seconds, self.settings = segment_seconds, settings
        self.hashes: dict[Path, str] = {}
        self._reports: dict[str, dict] = {}

    def hash(self, path: Path) -> str:
        if path not in self.hashes:
            self.hashes[path] = content_hash(path)
        return self.hashes[path]

    def __call__(self, path: Path) -> dict:
        h = self.hash(path)
        if h not in self._reports:
            self._reports[h] = evaluate_video(path, self.segment_seconds, self.settings)
        return {**self._reports[h], "path": str(path), "sha256": h}


def _compare(evaluate: _Evaluator, index: int, baseline: Path, treated: Path) -> tuple[dict, list[str]]:
    b, t = evaluate(baseline), evaluate(treated)
    result = compare_reports(b, t)
    warnings = [w for w in [seed_warning(index, b, t)] if w]
    entry = {"verdict": result["verdict"], "reason": result["reason"], "flags": result["flags"],
             "shortfalls": result["shortfalls"], "categories": result["categories"], "votes": result["votes"],
             "comparison": result["comparison"], "baseline": b, "treated": t}  # fmt: skip
    return entry, warnings


def cmd_eval(args: argparse.Namespace) -> int:
    modes = [bool(args.videos), bool(args.pair), args.pairs is not None]
    if sum(modes) != 1:
        raise UserError("give exactly one of: VIDEO [VIDEO ...], --pair BASELINE TREATED, or --pairs FILE")
    check_segment_seconds(args.segment_seconds)
    if Path(args.json).is_dir():
        raise UserError(
            f"--json {args.json} is a folder; give a file name such as {Path(args.json) / 'eval.json'}"
        )
    check_output(args.json, "--json")
    try:
        settings = EvalSettings(frame_stride=args.frame_stride, working_long_side=args.working_long_side)
    except ValueError as err:
        raise UserError(f"{err}; see tokentrim eval --help") from err
    evaluate = _Evaluator(args.segment_seconds, settings)
    common = {"segment_seconds": args.segment_seconds, "metrics": [m.name for m in METRICS],
              "categories": list(CATEGORIES), "rule": VERDICT_RULE}  # fmt: skip
    if args.videos:
        paths = [Path(v) for v in args.videos]
        _check_videos(paths)
        reports = [evaluate(p) for p in paths]
        out = {**common, "videos": reports}
        for report in reports:
            print(video_table(report))
    elif args.pair:
        pair = (Path(args.pair[0]), Path(args.pair[1]))
        _check_videos(list(pair))
        warnings = duplicate_warnings([pair], {p: evaluate.hash(p) for p in pair})
        entry, more = _compare(evaluate, 1, *pair)
        warnings += more
        out = {**common, **entry, "warnings": warnings}
        print(f"baseline {pair[0]}  vs  treated {pair[1]}")
        print(pair_table(entry))
        _warn(warnings)
    else:
        pairs = read_pairs_file(args.pairs)
        _check_videos([p for pair in pairs for p in pair])
        warnings = duplicate_warnings(pairs, {p: evaluate.hash(p) for pair in pairs for p in pair})
        results = []
        for i, (baseline, treated) in enumerate(pairs, start=1):
            entry, more = _compare(evaluate, i, baseline, treated)
            results.append(entry)
            warnings += more
            print(f"pair {i}: baseline {baseline}  vs  treated {treated}")
            print(pair_table(entry))
        summary = win_summary([r["verdict"] for r in results])
        out = {**common, "pairs": results, "summary": summary, "warnings": warnings}
        print(f"summary over {len(results)} pairs")
        print(pairs_summary_table(results, summary))
        _warn(warnings)
    print(f"wrote {write_json(args.json, out)}")
    return 0
