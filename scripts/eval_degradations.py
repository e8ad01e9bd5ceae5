"""Degraded copies of videos against their sources: is a copy that lost information ever preferred?

For every video (mp4 files, or the synthetic moving scene with --synthetic), builds each degraded copy of
`tokentrim.eval.degrade.DEGRADATIONS` in memory and an H.264 round trip (`tokentrim.video.write_video` at its
default quality, read back), evaluates them like `tokentrim eval`, and compares each with its source both ways
round. Prints a markdown table (verdict with the source as baseline, and swapped; the copy's flags) and the count
of copies preferred over their source, which must be 0; a round trip should be a tie. With --encode every copy is
also written as an H.264 mp4 (in a temporary folder, deleted after use) and read back before it is evaluated, as a
user comparing two files would; without it the copies are evaluated as they were built, in memory.

    python scripts/eval_degradations.py VIDEO.mp4 ... [--only grey,doubled] [--encode] [--json out.json]
    python scripts/eval_degradations.py --synthetic 96x160 --seconds 8 [--segment-seconds 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tokentrim.eval import compare_reports, evaluate_frames
from tokentrim.eval.degrade import BY_NAME, DEGRADATIONS
from tokentrim.eval.scene import moving_scene
from tokentrim.video import read_video, write_video


def short(flag: str) -> str:
    """'less colour from the start: 0 vs 75 M' -> 'less colour from the start'."""
    return flag.split(":")[0]


def compare_both(source: dict, copy: dict) -> dict:
    forward, backward = compare_reports(source, copy), compare_reports(copy, source)
    name = {"baseline": "source", "treated": "copy", "tie": "tie"}
    flip = {"baseline": "copy", "treated": "source", "tie": "tie"}
    return {"verdict": name[forward["verdict"]], "swapped": flip[backward["verdict"]],
            "copy_flags": forward["flags"]["treated"], "source_flags": forward["flags"]["baseline"],
            "votes": forward["votes"]}  # fmt: skip


def round_trip(frames, fps: float, tmp: str):
    """The frames written as an H.264 mp4 at `tokentrim.video`'s default quality and read back; the file is
    deleted."""
    path = write_video(Path(tmp) / "copy.mp4", frames, fps=round(fps))
    try:
        return read_video(path)[0]
    finally:
        path.unlink(missing_ok=True)


def run(name: str, frames, fps: float, segment_seconds: float, kinds, encode: bool) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    source = evaluate_frames(frames, fps, segment_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        encoded = evaluate_frames(round_trip(frames, fps, tmp), fps, segment_seconds)
        rows.append(
            {"video": name, "copy": "H.264 round trip", "encoded": True, **compare_both(source, encoded)}
        )
        for d in kinds:
            copy, copy_fps = d.make(frames, fps)
            if encode:
                copy = round_trip(copy, copy_fps, tmp)
            rows.append({"video": name, "copy": d.name, "loss": d.loss, "progressive": d.progressive,
                         "encoded": encode,
                         **compare_both(source, evaluate_frames(copy, copy_fps, segment_seconds))})  # fmt: skip
            del copy
    print(f"{name}: {len(rows)} copies in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="*", metavar="VIDEO")
    parser.add_argument("--synthetic", metavar="HxW", help="the synthetic moving scene at this size instead")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic scene")
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--only", metavar="KINDS", help="comma-separated copies to build (default: all)")
    parser.add_argument(
        "--encode", action="store_true", help="write each copy as H.264 and read it back first"
    )
    parser.add_argument("--json", metavar="OUT", help="write every row as JSON")
    args = parser.parse_args()
    kinds = DEGRADATIONS
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(BY_NAME))
        if unknown:
            parser.error(f"unknown copies {unknown}; choose from {', '.join(BY_NAME)}")
        kinds = tuple(BY_NAME[k] for k in args.only.split(","))
    rows = []
    if args.synthetic:
        h, w = (int(v) for v in args.synthetic.split("x"))
        rows += run(
            f"scene {h}x{w}",
            moving_scene(h, w, args.seconds, 16.0),
            16.0,
            args.segment_seconds,
            kinds,
            args.encode,
        )
    for video in args.videos:
        frames, fps = read_video(video)
        rows += run(Path(video).stem, frames, fps, args.segment_seconds, kinds, args.encode)
        del frames
        if args.json:  # after every video, so a long run can be read before it ends
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| video | copy | categories for source : copy | source as baseline | swapped | the copy's flags | "
          "the source's flags |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        copy_flags = ", ".join(short(f) for f in r["copy_flags"]) or "–"
        source_flags = ", ".join(short(f) for f in r["source_flags"]) or "–"
        votes = f"{r['votes']['baseline']} : {r['votes']['treated']}"
        print(f"| {r['video']} | {r['copy']} | {votes} | {r['verdict']} | {r['swapped']} | {copy_flags} | "
              f"{source_flags} |")  # fmt: skip
    preferred = [
        r for r in rows if "copy" in (r["verdict"], r["swapped"]) and r["copy"] != "H.264 round trip"
    ]
    trips = [r for r in rows if r["copy"] == "H.264 round trip"]
    print(f"\ndegraded copies preferred over their source: {len(preferred)} of {len(rows) - len(trips)}; "
          f"round trips that are a tie both ways: {sum(r['verdict'] == r['swapped'] == 'tie' for r in trips)} "
          f"of {len(trips)}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
