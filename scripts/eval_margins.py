"""How far apart the level measures of two equally good videos are: the spreads the margins of
`tokentrim.eval.levels.LEVELS` are chosen from (docs/metrics.md#44-how-the-epsilons-and-the-margins-were-chosen).

Renders the synthetic moving scene (`tokentrim.eval.scene`) with several seeds, 16 s each, and measures, per level
measure, the two statistics the comparability check uses on pairs that show the same scene equally well:
- the two 8 s halves of a clip as a pair (another stretch of the same scene): |start gap| and |loss difference|;
- a clip and its H.264 round trip (`tokentrim.video.write_video`, read back): the same.
Prints one markdown row per measure: the largest spread, twice it, and the margin in use.

    python scripts/eval_margins.py [--seeds 8] [--size 96x160]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from tokentrim.eval import evaluate_frames
from tokentrim.eval.levels import LEVELS, log_ratio
from tokentrim.eval.scene import moving_scene
from tokentrim.video import read_video, write_video

FPS = 16


def spreads(a: dict, b: dict) -> dict[str, tuple[float, float]]:
    """Per level measure: (|start gap|, |loss difference|) between two reports."""
    out = {}
    for spec in LEVELS:
        la, lb = a["levels"][spec.name], b["levels"][spec.name]
        out[spec.name] = (abs(log_ratio(spec, la["start"], lb["start"])), abs(la["loss"] - lb["loss"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--size", default="96x160", help="HxW of the rendered clips")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {
        s.name: {"halves": [], "encode": []} for s in LEVELS
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            clip = moving_scene(h, w, 16.0, FPS, seed)
            half = len(clip) // 2
            first, second = evaluate_frames(clip[:half], FPS), evaluate_frames(clip[half:], FPS)
            path = Path(tmp) / f"{seed}.mp4"
            write_video(path, clip[:half], fps=FPS)
            encoded = evaluate_frames(read_video(path)[0], FPS)
            for name, value in spreads(first, second).items():
                rows[name]["halves"].append(value)
            for name, value in spreads(first, encoded).items():
                rows[name]["encode"].append(value)
            print(f"seed {seed} done", flush=True)
    print(
        f"\n{args.seeds} renders of {h}x{w}, 16 s at {FPS} fps; spreads are |ln ratio|, largest over the renders\n"
    )
    print(
        "| measure | halves: start | halves: loss | re-encode: start | re-encode: loss | 2 x largest | margin |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in LEVELS:
        hs, hl = np.max(rows[spec.name]["halves"], axis=0)
        es, el = np.max(rows[spec.name]["encode"], axis=0)
        largest = max(hs, hl, es, el)
        print(
            f"| {spec.name} | {hs:.3f} | {hl:.3f} | {es:.3f} | {el:.3f} | {2 * largest:.3f} | {spec.margin:.3f} |"
        )


if __name__ == "__main__":
    main()
