"""Time `tokentrim.eval.evaluate_video` (decoding included) on mp4 files and on a synthesised 30 s 480x832 clip.

Prints, per video, `eval_seconds` (wall), `decode_seconds` and `cpu_seconds` (this process and its ffmpeg
decoder), with the machine's load averages before and after, since wall time on a shared machine overstates the
work. Pin it to one core to measure the one-core figure:

    OMP_NUM_THREADS=1 taskset -c 0 python scripts/eval_timing.py [VIDEO.mp4 ...] [--synthetic-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tokentrim.eval import evaluate_video
from tokentrim.eval.scene import moving_scene
from tokentrim.video import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="*", metavar="VIDEO")
    parser.add_argument("--synthetic-seconds", type=float, default=30.0, help="0 skips the synthetic clip")
    args = parser.parse_args()
    print(f"cores usable: {len(os.sched_getaffinity(0))}; load average before: {os.getloadavg()}")
    print("| video | eval_seconds | decode_seconds | cpu_seconds |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        videos = [Path(v) for v in args.videos]
        if args.synthetic_seconds > 0:
            clip = Path(tmp) / "scene_480x832.mp4"
            write_video(clip, moving_scene(480, 832, args.synthetic_seconds, 16.0), fps=16)
            videos.append(clip)
        for video in videos:
            r = evaluate_video(video)
            print(
                f"| {video.name} | {r['eval_seconds']:.1f} | {r['decode_seconds']:.1f} | {r['cpu_seconds']:.1f} |"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
