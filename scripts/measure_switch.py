"""Measure TokenTrim's behaviour across a prompt switch on the toy world model
(docs/longlive.md#4-tokentrim-at-a-switch): LongLive's loop, one switch per video between two random scenes'
prompts, each seed run under every setting compared. Prints a Markdown table and writes JSON.

    PYTHONPATH=. python scripts/measure_switch.py --seeds 8 --json results/switch.json

Per setting: how often the first block after the switch is pruned (the change is the prompt's, so a prune there
is a false trigger), the prune rate over the blocks after it, and over the armed blocks before it (the same runs'
background rate); "after the warm-up blocks" skips the blocks a reset of the statistics spends warming up, so
every setting is compared on the same blocks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from tokentrim.app import backends
from tokentrim.app.api import Pipeline
from tokentrim.app.run_config import default_config_path, load_run_config
from tokentrim.toy.world import sample_scene

SETTINGS = {
    "exempt + reset stats (default)": [],
    "exempt + keep stats": ["tokentrim.switch_stats=keep"],
    "no exemption + reset stats": ["tokentrim.switch_exempt=false"],
    "no exemption + keep stats": ["tokentrim.switch_exempt=false", "tokentrim.switch_stats=keep"],
}


def measure(seeds: int, frames: int, switch: int) -> dict:
    backend = backends.load_backend(preset="toy", model_dir=None, checkpoint=None, device="cpu",
                                    dtype=torch.float32, decoder=False)  # fmt: skip
    path = default_config_path("longlive", "toy")
    block = 3
    j = switch // block  # the first block after the switch
    rows = {}
    for name, overrides in SETTINGS.items():
        run = load_run_config(path, overrides)
        pipe = Pipeline(backend, run, offload="none")
        at, after, late, before, ratio, wall = [], [], [], [], [], 0.0
        for seed in range(seeds):
            prompts = [sample_scene(2 * seed).prompt, sample_scene(2 * seed + 1).prompt]
            embeds = pipe.embed(prompts)
            start = time.perf_counter()
            result = pipe.generate(
                embeds[:1], latent_frames=frames, seed=seed, switches=[(switch, embeds[1:2])]
            )
            wall += time.perf_counter() - start
            recs = result.records
            pruned = [r.action == "prune" for r in recs]
            at.append(pruned[j])
            after.append(statistics.fmean(pruned[j + 1 :]))
            late.append(statistics.fmean(pruned[j + 1 + run.tokentrim.warmup :]))  # armed under every setting
            armed = [p for r, p in zip(recs[:j], pruned[:j], strict=True) if r.threshold is not None]
            before.append(statistics.fmean(armed) if armed else 0.0)
            sev = [r.severity for r in recs]
            ratio.append(
                statistics.fmean(sev[j + 1 :]) / statistics.fmean(sev[1:j])
            )  # the new prompt's drift level
        rows[name] = {"switch_block_pruned": statistics.fmean(at), "prune_rate_after": statistics.fmean(after),
                      "prune_rate_late": statistics.fmean(late), "prune_rate_before": statistics.fmean(before),
                      "prune_rate_late_per_seed": late, "severity_ratio": [min(ratio), statistics.median(ratio), max(ratio)],
                      "wall_s": wall}  # fmt: skip
        print(f"{name}: {rows[name]}", file=sys.stderr)
    return {"seeds": seeds, "latent_frames": frames, "switch_frame": switch, "settings": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--frames", type=int, default=45)
    p.add_argument("--switch", type=int, default=18)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    report = measure(args.seeds, args.frames, args.switch)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "| setting | switch block pruned | prune rate after the switch | after the warm-up blocks (± s.e.) | "
        "before the switch | severity after / before (min, median, max) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in report["settings"].items():
        print(f"| {name} | {r['switch_block_pruned']:.2f} | {r['prune_rate_after']:.2f} | "
              f"{r['prune_rate_late']:.2f} ± {statistics.stdev(r['prune_rate_late_per_seed']) / len(r['prune_rate_late_per_seed']) ** 0.5:.2f} | "
              f"{r['prune_rate_before']:.2f} | {', '.join(f'{v:.2f}' for v in r['severity_ratio'])} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
