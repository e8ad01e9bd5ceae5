"""`tokentrim stress`: does TokenTrim find a fault that enters the KV cache, and does pruning stop it spreading?

Per seed, four rollouts from the same seed (and, on the toy, the same held-out scene's observed first block):
clean and faulted, each with TokenTrim off (the baseline) and on. The fault (`tokentrim.app.faults`) corrupts K
tokens of block J's accepted latents before its clean pass. Measured:
- detection, in the faulted TokenTrim run: the first prune after block J within the horizon; its latency in
  blocks, and precision / recall of its pruned positions against the corrupted tokens (undetected: recall 0);
  the same read off the clean TokenTrim run (`placebo`: prunes in the same blocks and overlap with the same tokens
  when nothing was injected) is what chance and the clean trigger rate alone give;
- persistence: the squared error inside the fault's region over blocks J+1 .. J+H against the clean run of the
  same method, divided by the injected error energy; `persistence_ratio` = TokenTrim's mean / the baseline's;
- cost on clean runs: TokenTrim's trigger rate on armed blocks (`false_trigger_rate`, no fault to find) and the
  drift measures of `tokentrim eval` with and without TokenTrim;
- wall time of every rollout.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from tokentrim.errors import UserError

HELD_OUT_OTHER = 1000  # the foreign patch comes from scene seed + this (another held-out scene)


def _spread(values: list[float]) -> dict:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"n": 0, "mean": None, "se": None, "median": None, "q25": None, "q75": None}
    q = np.quantile(xs, [0.25, 0.5, 0.75])
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return {
        "n": len(xs),
        "mean": statistics.fmean(xs),
        "se": se,
        "median": float(q[1]),
        "q25": float(q[0]),
        "q75": float(q[2]),
    }


def region_energy(
    latents: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, block: int, fpb: int
) -> float:
    """Squared difference inside the mask over one block's frames. latents [B, F, C, H, W]."""
    s = slice(block * fpb, (block + 1) * fpb)
    diff = (latents[:, s].float() - reference[:, s].float())[..., mask]
    return float(diff.pow(2).sum())


def _detection(records, fault, horizon: int) -> dict:
    after = [r for r in records if fault.block < r.block <= fault.block + horizon and r.action == "prune"]
    if not after:
        return {"detected": False, "latency_blocks": None, "precision": None, "recall": 0.0}
    first, bad = after[0], set(fault.tokens)
    hit = len(bad & set(first.pruned_positions))
    return {
        "detected": True,
        "latency_blocks": first.block - fault.block,
        "block": first.block,
        "precision": hit / len(first.pruned_positions),
        "recall": hit / len(bad),
    }


@dataclass(frozen=True)
class Setup:
    """What every rollout of a stress run shares: K corrupted tokens at block J, H blocks watched, the length."""

    tokens: int
    at_block: int
    horizon: int
    latent_frames: int


def run_seed(pipes: dict, setup: Setup, seed: int, kind: str, start, shared: dict | None = None) -> dict:
    """The four rollouts of one seed and their measures. pipes: {"baseline", "tokentrim"} -> `Pipeline`;
    start(seed) -> (prompt, observed first latents or None).

    `shared`: a dict kept across calls with the same seed, settings and pipelines; the clean rollouts (and their
    drift measures) do not depend on the fault, so the calls for the other kinds reuse them (deterministic: the
    same seed gives the same rollout)."""
    from tokentrim.app.faults import Fault, region, token_mask

    backend = pipes["baseline"].backend
    cfg, shared = backend.model.config, {} if shared is None else shared
    grid, fpb = (cfg.grid_height, cfg.grid_width), cfg.frames_per_block
    fault = Fault(kind, setup.at_block, region(grid, setup.tokens, np.random.default_rng(seed)), seed)
    mask = token_mask(fault.tokens, grid, cfg.patch_size[1:])
    clean, faulted, walls = _rollouts(pipes, setup, seed, fault, mask, start, shared)
    row = {"seed": seed, "tokens": list(fault.tokens), "wall_s": walls, "persistence": {}}
    for method in pipes:
        bad, hook = faulted[method]
        injected = float(hook.applied[0]) if hook.applied else float("nan")
        last = min(setup.at_block + setup.horizon, bad.latents.shape[1] // fpb - 1)
        curve = [
            region_energy(bad.latents, clean[method].latents, mask, b, fpb) / injected
            for b in range(setup.at_block + 1, last + 1)
        ]
        row["persistence"][method] = {"persistence": float(sum(curve)), "curve": curve, "injected": injected}
    row["detection"] = _detection(faulted["tokentrim"][0].records, fault, setup.horizon)
    row["placebo"] = _detection(clean["tokentrim"].records, fault, setup.horizon)
    armed = [r for r in clean["tokentrim"].records if r.action in ("accept", "prune")]
    row["clean_trigger_rate"] = sum(r.action == "prune" for r in armed) / max(1, len(armed))
    if backend.decoder is not None:
        if "drift" not in shared:
            shared["drift"] = {method: _drift(clean[method].frames, backend.fps) for method in pipes}
        row["clean_drift"] = shared["drift"]
    return row


def _rollouts(pipes: dict, setup: Setup, seed: int, fault, mask: torch.Tensor, start, shared: dict) -> tuple:
    """Per method: the clean video (from `shared` when there), the faulted one with its `FaultHook`, and the wall
    times of the rollouts run."""
    from tokentrim.app.faults import FaultHook
    from tokentrim_core.trim import TokenTrim

    prompt, prefix = start(seed)
    inputs = {"latent_frames": setup.latent_frames, "seed": seed, "start": prefix}
    foreign = None
    if fault.kind == "foreign":
        other, other_prefix = start(seed + HELD_OUT_OTHER)
        foreign = pipes["baseline"].generate(other, **{**inputs, "start": other_prefix}, decode=False).latents
    clean, faulted, walls = {}, {}, {}
    for method, pipe in pipes.items():
        if method not in shared:
            t0 = time.perf_counter()
            shared[method] = (pipe.generate(prompt, **inputs), time.perf_counter() - t0)
        clean[method], walls[method] = shared[method]
        patch = pipe.backend.model.config.patch_size[1:]
        hook = FaultHook(TokenTrim(pipe.run_config.tokentrim, patch), fault, mask, foreign)
        t0 = time.perf_counter()
        faulted[method] = (pipe.generate(prompt, **inputs, decode=False, hook=hook), hook)
        walls[f"{method}_fault"] = time.perf_counter() - t0
    return clean, faulted, walls


def _drift(video: np.ndarray, fps: int) -> dict:
    """`tokentrim eval`'s summary of a clean video."""
    from tokentrim.eval import evaluate_frames
    from tokentrim.eval.summary import summary_row

    return summary_row(evaluate_frames(video, fps, max(2 / fps, len(video) / fps / 4)))


def _detection_summary(detections: list[dict]) -> dict:
    return {
        "detection_rate": statistics.fmean(d["detected"] for d in detections),
        "recall": _spread([d["recall"] for d in detections]),
        "precision": _spread([d["precision"] for d in detections if d["detected"]]),
    }


def aggregate(rows: list[dict]) -> dict:
    detections = [r["detection"] for r in rows]
    base = [r["persistence"]["baseline"]["persistence"] for r in rows]
    trim = [r["persistence"]["tokentrim"]["persistence"] for r in rows]
    ratios = [t / b for t, b in zip(trim, base, strict=True) if b > 0]
    mean_base = statistics.fmean(base) if base else float("nan")
    summary = {
        "recall": statistics.fmean(d["recall"] for d in detections),
        "precision": _spread([d["precision"] for d in detections if d["detected"]])["mean"],
        "detection_rate": statistics.fmean(d["detected"] for d in detections),
        "persistence_ratio": statistics.fmean(trim) / mean_base if mean_base > 0 else None,
        "false_trigger_rate": statistics.fmean(r["clean_trigger_rate"] for r in rows),
        "spreads": {
            "recall": _spread([d["recall"] for d in detections]),
            "precision": _spread([d["precision"] for d in detections if d["detected"]]),
            "latency_blocks": _spread([d["latency_blocks"] for d in detections if d["detected"]]),
            "persistence_baseline": _spread(base),
            "persistence_tokentrim": _spread(trim),
            "persistence_ratio_per_seed": _spread(ratios),
            "false_trigger_rate": _spread([r["clean_trigger_rate"] for r in rows]),
            "placebo": _detection_summary([r["placebo"] for r in rows]),
            "wall_s": {k: _spread([r["wall_s"][k] for r in rows]) for k in rows[0]["wall_s"]},
        },
    }
    if "clean_drift" in rows[0]:
        summary["clean_drift"] = {
            method: {
                m: _spread([r["clean_drift"][method][m] for r in rows])
                for m in rows[0]["clean_drift"][method]
            }
            for method in rows[0]["clean_drift"]
        }
    return summary


def cmd_stress(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app.api import Pipeline
    from tokentrim.files import write_json

    # 1. Everything checked before weights load
    trimmed, setup, kinds = stress_plan(args)
    # 2. Per kind and seed: the four rollouts (the clean ones shared by the kinds)
    backend = backends.load_preset(args.preset, args.device)
    pipes = {
        "baseline": Pipeline(backend, trimmed.baseline(), offload="none"),
        "tokentrim": Pipeline(backend, trimmed, offload="none"),
    }
    settings = {
        "preset": args.preset,
        "pipeline": args.pipeline,
        "seeds": args.seeds,
        "kinds": kinds,
        **dataclasses.asdict(setup),
        "tokentrim": trimmed.to_dict()["tokentrim"],
    }
    report = {"settings": settings, "by_kind": {}}
    all_rows, shared = [], {seed: {} for seed in range(args.seeds)}
    for kind in kinds:
        rows = []
        for seed in range(args.seeds):
            rows.append(run_seed(pipes, setup, seed, kind, _starts(args.preset), shared[seed]))
            d, persistence = rows[-1]["detection"], rows[-1]["persistence"]
            print(
                f"{kind} seed {seed}: detected {d['detected']} recall {d['recall']:.2f}  persistence baseline "
                f"{persistence['baseline']['persistence']:.3f} tokentrim {persistence['tokentrim']['persistence']:.3f}",
                flush=True,
            )
        report["by_kind"][kind] = {**aggregate(rows), "per_seed": rows}
        all_rows += rows
    report.update({k: v for k, v in aggregate(all_rows).items() if k != "spreads"})
    report["spreads"] = aggregate(all_rows)["spreads"]
    print(
        f"recall {report['recall']:.3f}  precision {report['precision'] or float('nan'):.3f}  detection rate "
        f"{report['detection_rate']:.3f}  persistence ratio (TokenTrim / baseline) "
        f"{report['persistence_ratio'] or float('nan'):.3f}  false trigger rate {report['false_trigger_rate']:.3f}"
    )
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return 0


def stress_plan(args: argparse.Namespace) -> tuple:
    """(the TokenTrim run config, the `Setup`, the fault kinds), every argument checked. FlowMo guides block 0,
    which the toy observes: it is off. The baseline is the same run with TokenTrim off (`RunConfig.baseline`)."""
    from tokentrim.app import backends
    from tokentrim.app.faults import KINDS, check_tokens
    from tokentrim.app.run_config import default_config_path, load_run_config
    from tokentrim.files import check_output

    if args.json:
        check_output(args.json, "--json")
    path = args.config or default_config_path(args.pipeline, args.preset)
    trimmed = load_run_config(path, args.overrides, {"pipeline": args.pipeline, "flowmo": {"mode": "off"}})
    config = backends.model_config(args.preset, None)
    check_tokens(args.tokens, config.tokens_per_frame, "--tokens")
    checker = trimmed.checker(config)
    block, observed = checker.frames_per_block, 1 if args.preset == "toy" else 0
    frames = args.latent_frames or block * (args.at_block + args.horizon + 2)
    start = None if not observed else torch.zeros(1, block, *checker.latent_shape)  # the toy's scene start
    trimmed.request("(the seed's scene)", frames, seed=0, start=start).check(checker)
    armed = observed + trimmed.tokentrim.warmup + 1  # the first block that can trigger
    if args.at_block < armed - 1:
        raise UserError(
            f"--at-block must be >= {armed - 1}: block {armed} is the first TokenTrim can prune after "
            f"the warm-up (the fault at block J shows in block J + 1), got {args.at_block}"
        )
    if (args.at_block + 2) * block > frames:
        raise UserError(f"--latent-frames {frames} leaves no block after --at-block {args.at_block}")
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    return trimmed, Setup(args.tokens, args.at_block, args.horizon, frames), kinds


def _starts(preset: str):
    """seed -> (prompt, observed first block or None): a held-out toy scene, or a fixed prompt."""
    if preset == "toy":
        from tokentrim.toy import HELD_OUT_SCENES, observed_start

        return lambda seed: observed_start(HELD_OUT_SCENES + seed)
    return lambda seed: ("a cat walks on the street", None)


def register(subparsers) -> None:
    from tokentrim.app.args import NONNEG_INT, POSITIVE_INT
    from tokentrim.app.backends import PRESETS
    from tokentrim.app.faults import KINDS
    from tokentrim.pipelines import pipeline_names

    p = subparsers.add_parser(
        "stress",
        help="inject cache-borne faults: does TokenTrim find them and stop them?",
        description="Corrupt a few tokens of one block before they enter the KV cache and "
        "measure detection, persistence and the cost on clean runs, with and without "
        "TokenTrim, over many seeds (docs/toy.md).",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="toy", help="built-in model")
    p.add_argument("--pipeline", choices=pipeline_names(), default="self_forcing", help="sampling loop")
    p.add_argument("--config", help="run config YAML (default: the pipeline's, configs/toy/ for the toy)")
    p.add_argument("--seeds", type=POSITIVE_INT, default=32, help="seeds 0 .. N-1 (toy: held-out scenes)")
    p.add_argument("--kind", choices=[*KINDS, "all"], default="blob", help="fault kind, or all four")
    p.add_argument("--tokens", type=POSITIVE_INT, default=6, help="corrupted tokens K, a compact region")
    p.add_argument(
        "--at-block", type=NONNEG_INT, default=4, help="block J whose accepted latents are corrupted"
    )
    p.add_argument("--horizon", type=POSITIVE_INT, default=8, help="blocks after J that are measured")
    p.add_argument(
        "--latent-frames", type=POSITIVE_INT, help="rollout length (default: J + horizon + 2 blocks)"
    )
    p.add_argument("--json", help="write the report here")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides KEY=VALUE, e.g. tokentrim.lam=1 (both runs; the baseline has TokenTrim off)",
    )
    p.set_defaults(func=cmd_stress)
