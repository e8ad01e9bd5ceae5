"""Degraded copies of videos against their sources: is a copy that lost information ever preferred?

For every video (mp4 files, or the synthetic moving scene with --synthetic), builds each degraded copy of
`tokentrim.eval.degrade.DEGRADATIONS` in memory and an H.264 round trip (`tokentrim.video.write_video` at its
default quality, read back), evaluates them like `tokentrim eval`, and compares each with its source both ways
round. Prints a markdown table (verdict with the source as baseline, and swapped; the copy's flags) and the count
of copies preferred over their source, which must be 0; a round trip should be a tie.

    python scripts/eval_degradations.py VIDEO.mp4 ... [--json out.json]
    python scripts/eval_degradations.py --synthetic 96x160 --seconds 8 [--segment-seconds 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tokentrim.eval import compare_reports, evaluate_frames
from tokentrim.eval.degrade import DEGRADATIONS
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


def run(name: str, frames, fps: float, segment_seconds: float) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    source = evaluate_frames(frames, fps, segment_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "copy.mp4", frames, fps=round(fps))
        encoded = evaluate_frames(read_video(path)[0], fps, segment_seconds)
    rows.append({"video": name, "copy": "H.264 round trip", **compare_both(source, encoded)})
    for d in DEGRADATIONS:
        copy, copy_fps = d.make(frames, fps)
        rows.append({"video": name, "copy": d.name, "loss": d.loss, "progressive": d.progressive,
                     **compare_both(source, evaluate_frames(copy, copy_fps, segment_seconds))})  # fmt: skip
    print(f"{name}: {len(rows)} copies in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="*", metavar="VIDEO")
    parser.add_argument("--synthetic", metavar="HxW", help="the synthetic moving scene at this size instead")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic scene")
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--json", metavar="OUT", help="write every row as JSON")
    args = parser.parse_args()
    rows = []
    if args.synthetic:
        h, w = (int(v) for v in args.synthetic.split("x"))
        rows += run(f"scene {h}x{w}", moving_scene(h, w, args.seconds, 16.0), 16.0, args.segment_seconds)
    for video in args.videos:
        frames, fps = read_video(video)
        rows += run(Path(video).stem, frames, fps, args.segment_seconds)
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
