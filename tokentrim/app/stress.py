"""`tokentrim stress`: does TokenTrim find a fault that enters the KV cache, and does pruning cure it?

Per seed: the clean rollout of every method (the baseline, TokenTrim off, and TokenTrim with each detector), then
for every fault kind and every block J the faulted rollout of every method, all from the same seed and (on the
toy) the same held-out scene's observed first block. The fault (`tokentrim.app.faults`) corrupts K tokens of
block J with a set contrast; the faulted latents are what later blocks attend to and what TokenTrim judges the
next block against. In Rolling Forcing it is injected inside the window (after block J's pass at `--level`), so
it spreads through the window's joint passes into the blocks around J, which are judged as they are finalised
(`blocks`). Measured, per kind, J and method:
- detection: the first prune in the judged blocks (Self Forcing: J+1 .. J+H; Rolling Forcing: from the oldest
  block that read the fault to J+H) whose pruned positions overlap the fault; its latency (its block - J),
  recall (fault tokens pruned / K; 0 when none) and precision. `placebo` reads the same off the method's clean
  run (chance and the clean trigger rate alone);
- persistence, whole frame and inside the fault's region: the squared error against the same method's clean run
  over the same blocks, divided by the injected energy; paired against the baseline per seed (difference, ratio
  of means, median of per-seed ratios, with bootstrap 95 % intervals);
- the cost on clean runs: the trigger rate on armed blocks (`false_trigger_rate`, nothing to find), the drift
  measures of `tokentrim eval`, both paired against the paper's rule and the baseline;
- wall time of every rollout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from tokentrim.app.stress_stats import paired, spread
from tokentrim.errors import UserError

HELD_OUT_OTHER = 1000  # the foreign patch comes from scene seed + this (another held-out scene)
RF_LEVEL = 0  # Rolling Forcing: inject into block J's x0 after its first window pass (docs/toy.md)
DETECTORS = ("paper", "tokenwise")


def energy(latents: torch.Tensor, reference: torch.Tensor, block: int, fpb: int, mask=None) -> float:
    """Squared difference over one block's frames, whole frame or inside `mask [H, W]`. latents [B, F, C, H, W]."""
    s = slice(block * fpb, (block + 1) * fpb)
    diff = latents[:, s].float() - reference[:, s].float()
    return float((diff if mask is None else diff[..., mask]).pow(2).sum())


def detection(records, tokens, first: int, last: int) -> dict:
    """The first prune of blocks first..last whose pruned positions overlap `tokens` (a prune elsewhere is not a
    detection); `missed_prunes`: prunes in those blocks before it (or at all) that do not overlap."""
    bad, missed = set(tokens), 0
    for r in records:
        if first <= r.block <= last and r.action == "prune":
            hit = len(bad & set(r.pruned_positions))
            if hit:
                return {"detected": True, "block": r.block, "recall": hit / len(bad),
                        "precision": hit / len(r.pruned_positions), "missed_prunes": missed}  # fmt: skip
            missed += 1
    return {"detected": False, "block": None, "recall": 0.0, "precision": None, "missed_prunes": missed}


def blocks(j: int, level: int | None, levels: int, horizon: int, n_blocks: int) -> tuple[range, range]:
    """(the blocks whose persistence is measured, the blocks where a detection counts) for a fault in block j.

    At acceptance (level None): blocks j+1 .. j+horizon both (block j's own error is the injected energy; block
    j+1 is the first judged against it). Inside a window of `levels` blocks (level L, Rolling Forcing): the
    window at that pass holds blocks j+L-levels+1 .. j, the oldest of them already final, and the others all read
    the fault in their later passes; so both ranges start at j+L-levels+2 (block j itself included) and end at
    j+horizon. Capped at the video's last block."""
    last = min(j + horizon, n_blocks - 1)
    first = j + 1 if level is None else max(0, j + level - levels + 2)
    return range(first, last + 1), range(first, last + 1)


def trigger_rate(records) -> float:
    armed = [r for r in records if r.action in ("accept", "prune")]
    return sum(r.action == "prune" for r in armed) / max(1, len(armed))


@dataclass(frozen=True)
class Setup:
    """What every rollout of a stress run shares: K corrupted tokens at the blocks J, H blocks watched, the
    length, the fault's contrast and where it enters (`level`: None, the accepted block; L, after the window pass
    at level L)."""

    tokens: int
    at_blocks: tuple[int, ...]
    horizon: int
    latent_frames: int
    contrast: float
    level: int | None


def run_seed(pipes: dict, setup: Setup, seed: int, kinds, start) -> dict:
    """Every rollout of one seed and its measures. pipes: method -> `Pipeline` ("baseline" first, TokenTrim off);
    start(seed) -> (prompt, observed first latents or None)."""
    from tokentrim.app.faults import Fault, region, token_mask

    cfg = pipes["baseline"].backend.model.config
    grid, fpb = (cfg.grid_height, cfg.grid_width), cfg.frames_per_block
    cells = region(grid, setup.tokens, np.random.default_rng(seed))
    mask = token_mask(cells, grid, cfg.patch_size[1:])
    walls: dict[str, list[float]] = {}
    clean, foreign = _clean_rollouts(pipes, setup, seed, "foreign" in kinds, start, walls)
    row = {"seed": seed, "tokens": list(cells), "clean": _clean_measures(pipes, clean), "faults": {}}
    n_blocks = setup.latent_frames // fpb
    levels = len(pipes["baseline"].run_config.sampler.denoising_steps)
    for kind in kinds:
        for j in setup.at_blocks:
            fault = Fault(kind, j, cells, seed, setup.contrast, setup.level)
            after, judged = blocks(j, setup.level, levels, setup.horizon, n_blocks)
            entry = {}
            for method, pipe in pipes.items():
                bad, hook = _faulted(method, pipe, setup, seed, fault, mask, foreign, start, walls)
                entry[method] = _fault_measures(bad, hook, clean[method], mask, after, fpb)
                if method != "baseline":
                    for name, records in (("detection", bad.records), ("placebo", clean[method].records)):
                        found = detection(records, cells, judged[0], judged[-1])
                        found["latency_blocks"] = None if found["block"] is None else found["block"] - j
                        entry[method][name] = found
            row["faults"].setdefault(kind, {})[str(j)] = entry
    row["wall_s"] = {m: statistics.fmean(v) for m, v in walls.items()}
    return row


def _timed(walls: dict, name: str, run):
    t0 = time.perf_counter()
    out = run()
    walls.setdefault(name, []).append(time.perf_counter() - t0)
    return out


def _clean_rollouts(pipes: dict, setup: Setup, seed: int, foreign: bool, start, walls: dict) -> tuple:
    """Per method the clean video; the foreign patch's source (another held-out scene, baseline) when asked."""
    prompt, prefix = start(seed)
    inputs = {"latent_frames": setup.latent_frames, "seed": seed, "start": prefix}
    clean = {m: _timed(walls, m, lambda p=p: p.generate(prompt, **inputs)) for m, p in pipes.items()}
    source = None
    if foreign:
        other, other_prefix = start(seed + HELD_OUT_OTHER)
        source = _timed(walls, "foreign_source", lambda: pipes["baseline"].generate(
            other, **{**inputs, "start": other_prefix}, decode=False)).latents  # fmt: skip
    return clean, source


def _faulted(method: str, pipe, setup: Setup, seed: int, fault, mask, foreign, start, walls: dict) -> tuple:
    """One method's faulted video and its `FaultHook` (around the run's TokenTrim, scoring only when off)."""
    from tokentrim.app.faults import FaultHook
    from tokentrim_core.trim import TokenTrim

    prompt, prefix = start(seed)
    patch = pipe.backend.model.config.patch_size[1:]
    hook = FaultHook(TokenTrim(pipe.run_config.tokentrim, patch), fault, mask, foreign)
    inputs = {
        "latent_frames": setup.latent_frames,
        "seed": seed,
        "start": prefix,
        "decode": False,
        "hook": hook,
    }
    return _timed(walls, method, lambda: pipe.generate(prompt, **inputs)), hook


def _clean_measures(pipes: dict, clean: dict) -> dict:
    """Per method: its prunes, its trigger rate (TokenTrim on), the drift measures of `tokentrim eval`."""
    out = {}
    for method, video in clean.items():
        entry = {"prunes": [r.block for r in video.records if r.action == "prune"]}
        if method != "baseline":
            entry["trigger_rate"] = trigger_rate(video.records)
        if video.frames is not None:
            entry["drift"] = _drift(video.frames, pipes[method].backend.fps)
        out[method] = entry
    return out


def _fault_measures(bad, hook, clean, mask, after: range, fpb: int) -> dict:
    """Persistence of one faulted video against the same method's clean one, whole frame and in the region."""
    injected = float(hook.applied[0])
    whole = [energy(bad.latents, clean.latents, b, fpb) / injected for b in after]
    inside = [energy(bad.latents, clean.latents, b, fpb, mask) / injected for b in after]
    return {"injected": injected, "contrast": hook.contrast[0], "whole": sum(whole), "region": sum(inside),
            "whole_curve": whole, "region_curve": inside}  # fmt: skip


def _drift(video: np.ndarray, fps: int) -> dict:
    """`tokentrim eval`'s summary of a clean video."""
    from tokentrim.eval import evaluate_frames
    from tokentrim.eval.summary import summary_row

    return summary_row(evaluate_frames(video, fps, max(2 / fps, len(video) / fps / 4)))


def _detection_summary(found: list[dict]) -> dict:
    hits = [d for d in found if d["detected"]]
    return {"detected": len(hits), "n": len(found), "recall": spread([d["recall"] for d in found]),
            "precision": spread([d["precision"] for d in hits]),
            "latency_blocks": spread([d["latency_blocks"] for d in hits]),
            "missed_prunes": spread([d["missed_prunes"] for d in found])}  # fmt: skip


def summarise(rows: list[dict], methods: list[str]) -> dict:
    """The report's summary: per kind and J, per method; and the clean runs' cost."""
    detectors = [m for m in methods if m != "baseline"]
    out = {"faults": {}, "clean": {}}
    for kind, by_j in rows[0]["faults"].items():
        for j in by_j:
            cells = [r["faults"][kind][j] for r in rows]
            entry = {"contrast": spread([c["baseline"]["contrast"] for c in cells])}
            for where in ("whole", "region"):
                entry[f"persistence_{where}"] = {m: spread([c[m][where] for c in cells]) for m in methods}
                entry[f"vs_baseline_{where}"] = {m: paired([c["baseline"][where] for c in cells],
                                                           [c[m][where] for c in cells]) for m in detectors}  # fmt: skip
            entry["detection"] = {
                m: _detection_summary([c[m]["detection"] for c in cells]) for m in detectors
            }
            entry["placebo"] = {m: _detection_summary([c[m]["placebo"] for c in cells]) for m in detectors}
            if "paper" in detectors:
                entry["vs_paper"] = {m: {"recall": paired([c["paper"]["detection"]["recall"] for c in cells],
                                                          [c[m]["detection"]["recall"] for c in cells]),
                                         "whole": paired([c["paper"]["whole"] for c in cells],
                                                         [c[m]["whole"] for c in cells])}
                                     for m in detectors if m != "paper"}  # fmt: skip
            out["faults"].setdefault(kind, {})[j] = entry
    clean = out["clean"]
    clean["trigger_rate"] = {m: spread([r["clean"][m]["trigger_rate"] for r in rows]) for m in detectors}
    if "paper" in detectors:
        clean["trigger_rate_vs_paper"] = {m: paired([r["clean"]["paper"]["trigger_rate"] for r in rows],
                                                    [r["clean"][m]["trigger_rate"] for r in rows])
                                          for m in detectors if m != "paper"}  # fmt: skip
    if "drift" in rows[0]["clean"]["baseline"]:
        measures = list(rows[0]["clean"]["baseline"]["drift"])
        clean["drift"] = {
            m: {k: spread([r["clean"][m]["drift"][k] for r in rows]) for k in measures} for m in methods
        }
        clean["drift_vs_baseline"] = {m: {k: paired([r["clean"]["baseline"]["drift"][k] for r in rows],
                                                    [r["clean"][m]["drift"][k] for r in rows]) for k in measures}
                                      for m in detectors}  # fmt: skip
        if "paper" in detectors:
            clean["drift_vs_paper"] = {m: {k: paired([r["clean"]["paper"]["drift"][k] for r in rows],
                                                     [r["clean"][m]["drift"][k] for r in rows]) for k in measures}
                                       for m in detectors if m != "paper"}  # fmt: skip
    out["wall_s"] = {k: spread([r["wall_s"][k] for r in rows]) for k in rows[0]["wall_s"]}
    return out


def _fmt(s: dict, digits: int = 2) -> str:
    if not s or s.get("mean") is None:
        return "-"
    lo, hi = s["ci"]
    return f"{s['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] med {s['median']:.{digits}f}"


def _ratio(p: dict) -> str:
    if p["ratio_of_means"] is None:
        return "-"
    ci, mci = p["ratio_ci"] or [float("nan")] * 2, p["median_ratio_ci"] or [float("nan")] * 2
    return (f"{p['ratio_of_means']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}], median {p['median_ratio']:.2f} "
            f"[{mci[0]:.2f}, {mci[1]:.2f}]")  # fmt: skip


def summary_lines(summary: dict) -> list[str]:
    """The summary as text: one line per kind, J and method."""
    lines = []
    for method, s in summary["clean"]["trigger_rate"].items():
        lines.append(f"clean runs, {method}: false trigger rate {_fmt(s, 3)}")
    for method, p in summary["clean"].get("trigger_rate_vs_paper", {}).items():
        lines.append(f"clean runs, {method} - paper: trigger rate {_fmt(p['difference'], 3)}")
    for kind, by_j in summary["faults"].items():
        for j, e in by_j.items():
            base = e["persistence_whole"]["baseline"]
            lines.append(f"{kind} J={j} (contrast {e['contrast']['mean']:.2f}): baseline persistence whole "
                         f"{_fmt(base)}, region {_fmt(e['persistence_region']['baseline'])}")  # fmt: skip
            for m, d in e["detection"].items():
                lines.append(
                    f"  {m}: detected {d['detected']}/{d['n']} (placebo {e['placebo'][m]['detected']}), recall "
                    f"{_fmt(d['recall'])}; whole-frame ratio {_ratio(e['vs_baseline_whole'][m])}; region ratio "
                    f"{_ratio(e['vs_baseline_region'][m])}"
                )
    return lines


def cmd_stress(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app.api import Pipeline
    from tokentrim.files import write_json

    # 1. Everything checked before weights load
    runs, setup, kinds = stress_plan(args)
    # 2. Per seed: the clean rollouts, then per kind and J the faulted ones, every method
    backend = backends.load_preset(args.preset, args.device)
    pipes = {method: Pipeline(backend, run, offload="none") for method, run in runs.items()}
    detectors = [m for m in runs if m != "baseline"]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    settings = {"preset": args.preset, "pipeline": args.pipeline, "seeds": [seeds.start, seeds.stop - 1],
                "kinds": kinds, "at_block": list(setup.at_blocks), "tokens": setup.tokens, "horizon": setup.horizon,
                "contrast": setup.contrast, "level": setup.level, "latent_frames": setup.latent_frames,
                "detectors": detectors, "overrides": list(args.overrides),
                "tokentrim": {d: runs[d].to_dict()["tokentrim"] for d in detectors},
                "sampler": runs["baseline"].to_dict()[args.pipeline]}  # fmt: skip
    rows, start = [], _starts(args.preset)
    for seed in seeds:
        rows.append(run_seed(pipes, setup, seed, kinds, start))
        found = " ".join(f"{k}@{j}:" + "".join("+" if c[m]["detection"]["detected"] else "-" for m in detectors)
                         for k, by_j in rows[-1]["faults"].items() for j, c in by_j.items())  # fmt: skip
        print(f"seed {seed}: detected ({'/'.join(detectors)}) {found}", flush=True)
    summary = summarise(rows, list(runs))
    print("\n".join(summary_lines(summary)))
    if args.json:
        report = {"settings": settings, "summary": summary, "per_seed": rows}
        print(f"wrote {write_json(args.json, report)}")
    return 0


def stress_plan(args: argparse.Namespace) -> tuple:
    """(the run configs by method, "baseline" first, the `Setup`, the fault kinds), every argument checked. FlowMo
    guides block 0, which the toy observes: it is off. The baseline is the run with TokenTrim off
    (`RunConfig.baseline`); each detector's run is the run with `tokentrim.detector` set."""
    from tokentrim.app import backends
    from tokentrim.app.faults import KINDS, check_tokens
    from tokentrim.app.run_config import default_config_path, load_run_config
    from tokentrim.files import check_output

    kinds = list(KINDS) if "all" in args.kind else list(dict.fromkeys(args.kind))
    at_blocks = sorted(set(args.at_block))
    if any(o.split("=", 1)[0].strip() in ("tokentrim.detector", "tokentrim.enabled") for o in args.overrides):
        raise UserError("the runs' detectors are --detectors (the baseline has TokenTrim off): drop "
                        "tokentrim.detector / tokentrim.enabled from the overrides")  # fmt: skip
    if args.json:
        check_output(args.json, "--json")
    path = args.config or default_config_path(args.pipeline, args.preset)
    fixed = {"pipeline": args.pipeline, "flowmo": {"mode": "off"}}
    runs = {"baseline": load_run_config(path, args.overrides, fixed).baseline()}
    for d in dict.fromkeys(args.detectors):
        runs[d] = load_run_config(path, args.overrides, {**fixed, "tokentrim": {"detector": d}})
    config = backends.model_config(args.preset, None)
    check_tokens(args.tokens, config.tokens_per_frame, "--tokens")
    checker = runs["baseline"].checker(config)
    block, observed = checker.frames_per_block, 1 if args.preset == "toy" else 0
    levels = len(runs["baseline"].sampler.denoising_steps)
    window = args.pipeline == "rolling_forcing"
    if not window and args.level is not None:
        raise UserError("--level is for Rolling Forcing (a window of blocks at several noise levels)")
    level = (RF_LEVEL if args.level is None else args.level) if window else None
    if level is not None and not 0 <= level < levels - 1:
        raise UserError(f"--level must be in 0 .. {levels - 2} (a pass before the block's last), got {level}")
    frames = args.latent_frames or block * (at_blocks[-1] + args.horizon + 2)
    start = None if not observed else torch.zeros(1, block, *checker.latent_shape)  # the toy's scene start
    runs["baseline"].request("(the seed's scene)", frames, seed=0, start=start).check(checker)
    # the first block that can trigger; the first judged against the fault (inside a window: the fault's own)
    armed = observed + min(run.tokentrim.warmup for run in runs.values()) + 1
    first_judged = at_blocks[0] if level is not None else at_blocks[0] + 1
    if first_judged < armed:
        raise UserError(f"--at-block must be >= {armed - (level is None)}: block {armed} is the first TokenTrim can "
                        f"prune after the warm-up, got {at_blocks[0]}")  # fmt: skip
    if (at_blocks[-1] + 2) * block > frames:
        raise UserError(f"--latent-frames {frames} leaves no block after --at-block {at_blocks[-1]}")
    setup = Setup(args.tokens, tuple(at_blocks), args.horizon, frames, args.contrast, level)
    return runs, setup, kinds


def _starts(preset: str):
    """seed -> (prompt, observed first block or None): a held-out toy scene, or a fixed prompt."""
    if preset == "toy":
        from tokentrim.toy import HELD_OUT_SCENES, observed_start

        return lambda seed: observed_start(HELD_OUT_SCENES + seed)
    return lambda seed: ("a cat walks on the street", None)


def register(subparsers) -> None:
    from tokentrim.app.args import NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT
    from tokentrim.app.backends import PRESETS
    from tokentrim.app.faults import DEFAULT_CONTRAST, KINDS
    from tokentrim.pipelines import pipeline_names

    p = subparsers.add_parser("stress", help="inject cache-borne faults: does TokenTrim find them and cure them?",
                              description="Corrupt a few tokens of one block, let them enter the KV cache, and "
                              "measure detection, persistence (whole frame and in the region) and the cost on "
                              "clean runs, without TokenTrim and with each detector, over many seeds "
                              "(docs/toy.md).")  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default="toy", help="built-in model")
    p.add_argument("--pipeline", choices=pipeline_names(), default="self_forcing", help="sampling loop")
    p.add_argument("--config", help="run config YAML (default: the pipeline's, configs/toy/ for the toy)")
    p.add_argument("--seeds", type=POSITIVE_INT, default=32, help="number of seeds N (toy: held-out scenes)")
    p.add_argument("--first-seed", type=NONNEG_INT, default=0, help="seeds S .. S+N-1 (choose unseen ones)")
    p.add_argument("--kind", nargs="+", choices=[*KINDS, "all"], default=["blob"], help="fault kinds, or all")
    p.add_argument("--tokens", type=POSITIVE_INT, default=6, help="corrupted tokens K, a compact region")
    p.add_argument(
        "--contrast",
        type=POSITIVE_FLOAT,
        default=DEFAULT_CONTRAST,
        help="fault size in units of the block's per-channel std (blob: shift from the region's mean)",
    )
    p.add_argument("--at-block", type=NONNEG_INT, nargs="+", default=[4, 6, 8],
                   help="blocks J that are corrupted, one faulted rollout each (reported per J)")  # fmt: skip
    p.add_argument("--level", type=NONNEG_INT,
                   help=f"Rolling Forcing: the window pass (noise level) after which block J's x0 is corrupted "
                   f"(default {RF_LEVEL}: its first pass)")  # fmt: skip
    p.add_argument("--horizon", type=POSITIVE_INT, default=8, help="blocks after J that are measured")
    p.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS),
                   help="TokenTrim's detectors to run (tokentrim.detector)")  # fmt: skip
    p.add_argument(
        "--latent-frames", type=POSITIVE_INT, help="rollout length (default: the last J + horizon + 2 blocks)"
    )
    p.add_argument("--json", help="write the report here")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument(
        "overrides", nargs="*", help="config overrides KEY=VALUE for every run (e.g. tokentrim.accept=lower)"
    )
    p.set_defaults(func=cmd_stress)
