"""The effect of int8 weight-only quantisation on the toy world model's output (docs/benchmarks.md#weight-quantisation).

For each held-out scene and pipeline, the shipped toy run config (TokenTrim on) from the scene's observed first
block, the same seed, once with the fp32 DiT and once with the transformer blocks' linear weights in int8
(`tokentrim.wan.quantize`). Per pair: the latents' relative error (RMS of the difference over RMS of the fp32
latents; the first generated block and the whole video), whether TokenTrim made the same decisions, and per
video the weight-free drift of `tokentrim.eval` and the toy's distance to the true world (as
scripts/toy_study.py measures it). Prints medians with their ranges and writes JSON.

    PYTHONPATH=. python scripts/quant_effect.py --seeds 8 --json results/quant_effect.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from tokentrim.app.backends import PRESETS
from tokentrim.app.run_config import default_config_path, load_run_config
from tokentrim.eval import evaluate_frames
from tokentrim.toy import HELD_OUT_SCENES, observed_start, sample_scene
from tokentrim.wan.quantize import quantize_dit, weight_bytes

sys.path.insert(0, str(Path(__file__).parent))
from toy_study import FPS, truth_distance  # noqa: E402  (the same ground-truth measure)

SEGMENT_SECONDS = 2.0


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--latent-frames", type=int, default=120)
    ap.add_argument("--pipelines", nargs="+", default=["self_forcing", "rolling_forcing"])
    ap.add_argument("--json")
    args = ap.parse_args()
    backends = {
        mode: PRESETS["toy"].load(torch.device("cpu"), torch.float32, True) for mode in ("fp32", "int8")
    }
    quantize_dit(backends["int8"].model, "int8")
    sizes = {mode: weight_bytes(b.model) for mode, b in backends.items()}
    text = backends["fp32"].encoder_factory.get()
    block = backends["fp32"].model.config.frames_per_block
    rows = []
    for seed in range(args.seeds):
        scene = sample_scene(HELD_OUT_SCENES + seed)
        prompt, prefix = observed_start(HELD_OUT_SCENES + seed)
        embeds = text.encode([prompt])
        truth = scene.render(args.latent_frames)
        for pipeline in args.pipelines:
            run = load_run_config(default_config_path(pipeline, "toy"))
            out = {}
            for mode, backend in backends.items():
                request = run.request(embeds, args.latent_frames, seed=seed, start=prefix)
                result = run.loop(backend.model)(request)
                video = backend.decoder.decode(result.latents)[0].cpu().numpy()
                report = evaluate_frames(video, FPS, SEGMENT_SECONDS, name=f"{mode}{seed}")
                out[mode] = (result, {k: m["drift"] for k, m in report["metrics"].items()},
                             float(np.mean(truth_distance(video, truth, int(SEGMENT_SECONDS * FPS)))))  # fmt: skip
            (ref, ref_drift, ref_truth), (got, drift, got_truth) = out["fp32"], out["int8"]
            first = slice(block, 2 * block)  # the first generated block (block 0 is observed)
            rows.append({
                "seed": seed, "pipeline": pipeline,
                "latent_error_first_block": relative_error(got.latents[:, first], ref.latents[:, first]),
                "latent_error_video": relative_error(got.latents, ref.latents),
                "same_decisions": [r.action for r in got.records] == [r.action for r in ref.records],
                "prunes": [sum(r.action == "prune" for r in x.records) for x in (ref, got)],
                "drift_fp32": ref_drift, "drift_int8": drift, "truth_fp32": ref_truth, "truth_int8": got_truth,
            })  # fmt: skip
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("drift")}), flush=True)
    summary = {
        "weights_bytes": sizes,
        "seeds": args.seeds,
        "latent_frames": args.latent_frames,
        "by_pipeline": {},
    }
    for pipeline in args.pipelines:
        mine = [r for r in rows if r["pipeline"] == pipeline]

        def med(xs):
            return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

        metrics = sorted(mine[0]["drift_fp32"])
        summary["by_pipeline"][pipeline] = {
            "latent_error_first_block": med([r["latent_error_first_block"] for r in mine]),
            "latent_error_video": med([r["latent_error_video"] for r in mine]),
            "same_decisions": sum(r["same_decisions"] for r in mine),
            "truth_distance_fp32": med([r["truth_fp32"] for r in mine]),
            "truth_distance_int8": med([r["truth_int8"] for r in mine]),
            "truth_distance_int8_minus_fp32": med([r["truth_int8"] - r["truth_fp32"] for r in mine]),
            "drift_int8_minus_fp32": {m: med([r["drift_int8"][m] - r["drift_fp32"][m] for r in mine]) for m in metrics},
            "drift_fp32": {m: med([r["drift_fp32"][m] for r in mine]) for m in metrics},
        }  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
