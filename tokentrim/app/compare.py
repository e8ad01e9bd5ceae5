"""`tokentrim compare`: the baseline and TokenTrim from the same seed, side by side — optionally with the same
injected fault (`tokentrim.app.faults`) — as one two-panel mp4, the drift figure of both runs with the prune
events, and the heat map of the block TokenTrim pruned. `make demo` runs it on the toy world model.

How visible the difference is, measured (`visibility.json`): per block, the mean absolute difference between the
two panels (0-255 levels); with a fault, both runs are also made without it, and per block after the fault each
panel's difference from its own fault-free run (pixels) and the fault's residual energy (latents, the squared
difference over the block divided by the injected energy; `tokentrim stress` sums it as persistence).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tokentrim.errors import UserError

MIN_HEIGHT = 256  # panels are upscaled (nearest neighbour) to at least this many pixels
LABEL_HEIGHT = 22  # a strip above each panel for its name


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 `[T, H, W, 3]` by an integer factor."""
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def _label(width: int, text: str, colour=(255, 255, 255)) -> np.ndarray:
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, LABEL_HEIGHT), (20, 20, 20))
    ImageDraw.Draw(strip).text((6, 5), text, fill=colour)
    return np.asarray(strip)


def side_by_side(
    left: np.ndarray,
    right: np.ndarray,
    labels: tuple[str, str],
    marked: set[int] = frozenset(),
    factor: int = 1,
) -> np.ndarray:
    """Two videos `[T, H, W, 3]` as one, each upscaled with a label strip above; frames in `marked` get a red
    border on the right panel (TokenTrim pruned and regenerated their block). Sizes stay even for H.264."""
    n = min(len(left), len(right))
    a, b = upscale(left[:n], factor), upscale(right[:n], factor)
    h, w = a.shape[1:3]
    gap = np.full((n, h + LABEL_HEIGHT, 4, 3), 60, dtype=np.uint8)
    head_a, head_b = _label(w, labels[0]), _label(w, labels[1], (255, 200, 80))
    out_a = np.concatenate([np.broadcast_to(head_a, (n, *head_a.shape)), a], axis=1)
    out_b = np.concatenate([np.broadcast_to(head_b, (n, *head_b.shape)), b], axis=1).copy()
    for i in marked:
        if i < n:
            out_b[i, LABEL_HEIGHT : LABEL_HEIGHT + 3], out_b[i, -3:] = (230, 30, 30), (230, 30, 30)
            out_b[i, LABEL_HEIGHT:, :3], out_b[i, LABEL_HEIGHT:, -3:] = (230, 30, 30), (230, 30, 30)
    video = np.concatenate([out_a, gap, out_b], axis=2)
    return video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]


def panel_difference(left: np.ndarray, right: np.ndarray, first_frame) -> list[float]:
    """Per block, the mean absolute difference between two uint8 videos `[T, H, W, 3]` over the block's frames
    `first_frame[b] .. first_frame[b + 1]`, in 0-255 levels."""
    return [float(np.abs(left[a:z].astype(np.int16) - right[a:z].astype(np.int16)).mean())
            for a, z in zip(first_frame[:-1], first_frame[1:], strict=True)]  # fmt: skip


def visibility(videos: dict, first_frame, fault_block: int | None = None, clean_videos: dict | None = None,
               residual: dict | None = None) -> dict:  # fmt: skip
    """What a viewer can see: `panels`, the per-block difference between the two panels (`panel_difference`)
    and its mean and largest value over the blocks after the fault (all blocks without one); with a fault,
    `from_clean` (each panel against its own fault-free run, per block after the fault), `clean_panels` (the
    two fault-free runs against each other) and `residual` (latent energy per block, as given)."""
    names = list(videos)
    after = 0 if fault_block is None else fault_block + 1
    panels = panel_difference(videos[names[0]], videos[names[1]], first_frame)
    out = {"blocks": list(range(after, len(panels))), "panels": panels[after:],
           "panels_mean": float(np.mean(panels[after:])), "panels_max": max(panels[after:])}  # fmt: skip
    if clean_videos is not None:
        clean = panel_difference(clean_videos[names[0]], clean_videos[names[1]], first_frame)
        out["clean_panels"], out["clean_panels_mean"] = clean[after:], float(np.mean(clean[after:]))
        out["from_clean"] = {
            n: panel_difference(videos[n], clean_videos[n], first_frame)[after:] for n in names
        }
        out["from_clean_mean"] = {n: float(np.mean(v)) for n, v in out["from_clean"].items()}
    if residual is not None:
        out["residual"] = residual
        out["residual_total"] = {n: float(sum(v)) for n, v in residual.items()}
    return out


def plot_pruned_block(
    latents: torch.Tensor,
    block: int,
    positions: list[int],
    patch: tuple[int, int],
    fpb: int,
    frame: np.ndarray,
    out_png: Path,
    fault: tuple[int, ...] = (),
) -> Path:
    """The per-token drift of `block` against the block before it (Eq. 3-5) over its last frame, with the positions
    TokenTrim pruned outlined (and the injected fault's tokens, dashed): the paper's Fig. 2 for one decision.
    latents [F, C, H, W]: the baseline's; TokenTrim's candidate is the same block only up to its first prune (the
    candidate itself is not kept), hence the title names the run."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from tokentrim.app.figures import _save_png
    from tokentrim_core import consecutive_block_drift

    pair = latents[(block - 1) * fpb : (block + 1) * fpb]
    ph, pw = patch
    gh, gw = latents.shape[-2] // ph, latents.shape[-1] // pw
    drift = consecutive_block_drift(pair, patch, fpb).reshape(gh, gw).numpy()
    fig = Figure(figsize=(8, 4))
    left, right = fig.subplots(1, 2)
    h, w = frame.shape[:2]
    left.imshow(frame, interpolation="nearest")
    left.set_title(f"block {block} (last frame)", fontsize=9)
    right.imshow(frame, interpolation="nearest")
    shown = right.imshow(drift, extent=(0, w, h, 0), alpha=0.6, cmap="inferno", interpolation="nearest")
    sy, sx = h / gh, w / gw
    for n in positions:
        right.add_patch(
            Rectangle(((n % gw) * sx, (n // gw) * sy), sx, sy, fill=False, edgecolor="cyan", lw=1.2)
        )
    for n in fault:
        right.add_patch(
            Rectangle(
                ((n % gw) * sx + 1, (n // gw) * sy + 1),
                sx - 2,
                sy - 2,
                fill=False,
                edgecolor="white",
                lw=1.0,
                ls="--",
            )
        )
    what = "TokenTrim's pruned positions outlined" + ("; fault dashed" if fault else "")
    right.set_title(f"baseline's token drift vs block {block - 1}\n{what}", fontsize=9)
    for ax in (left, right):
        ax.set_axis_off()
    fig.colorbar(shown, ax=right, shrink=0.8, label="||Z_t - Z_t-1||")
    return _save_png(fig, out_png)


def cmd_compare(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app.figures import plot_drift
    from tokentrim.files import write_json
    from tokentrim.video import write_video

    # 1. Everything checked before weights load
    out, runs, request, fault = compare_plan(args)
    backend = backends.load_preset(args.preset, args.device)
    # 2. Both runs from the same request, the same fault injected into each
    videos, logs, hooks, clean = run_both(backend, runs, request, fault)
    # 3. The two-panel video, TokenTrim's pruned blocks framed red
    first_frame = block_starts(backend, args.latent_frames)
    pruned = [r for r in videos["TokenTrim"].records if r.action == "prune"]
    marked = {f for r in pruned for f in range(first_frame[r.block], first_frame[r.block + 1])}
    base = videos["baseline"].frames
    factor = max(1, -(-MIN_HEIGHT // base.shape[1]))
    # ASCII only: PIL's default font
    what = "" if fault is None else f" - {fault.kind} fault at block {fault.block}"
    labels = (f"baseline{what}", f"TokenTrim{what}")
    video = side_by_side(base, videos["TokenTrim"].frames, labels, marked, factor)
    write_video(out / "compare.mp4", video, fps=backend.fps)
    # 4. How visible the difference is: between the panels; with a fault, against the fault-free runs
    frames = {name: v.frames for name, v in videos.items()}
    if fault is None:
        seen = visibility(frames, first_frame)
    else:
        fpb = backend.model.config.frames_per_block
        residual = fault_residual(videos, clean, hooks, fault.block, fpb, request.latent_frames)
        seen = visibility(frames, first_frame, fault.block, {n: v.frames for n, v in clean.items()}, residual)
    write_json(out / "visibility.json", seen)
    # 5. The logs, the drift figure of both runs, the heat map of the prune that answers the fault
    for name, log in logs.items():
        write_json(out / f"{name.lower()}.json", log)
    plot_drift([logs["baseline"], logs["TokenTrim"]], out / "drift.png", labels=["baseline", "TokenTrim"])
    made = [out / "compare.mp4", out / "drift.png", out / "visibility.json"]
    shown = [r for r in pruned if fault is None or r.block > fault.block]  # the prune that answers the fault
    if shown:
        end = first_frame[shown[0].block + 1]
        frame = upscale(base[end - 1 : end], factor)[0]
        plot_pruned_block(
            videos["baseline"].latents[0].float(),
            shown[0].block,
            shown[0].pruned_positions,
            backend.model.config.patch_size[1:],
            backend.model.config.frames_per_block,
            frame,
            out / "heatmap.png",
            () if fault is None else fault.tokens,
        )
        made.append(out / "heatmap.png")
    # 6. What was written, and how much the panels differ
    prunes = ", ".join(str(r.block) for r in pruned) or "none"
    print(
        f"wrote {', '.join(map(str, made))}  [{video.shape[2]}x{video.shape[1]}, TokenTrim pruned blocks: {prunes}]"
    )
    print(visibility_line(seen, fault, runs))
    return 0


def run_both(backend, runs: dict, request, fault) -> tuple[dict, dict, dict, dict]:
    """Each run of `runs` ({"baseline", "TokenTrim"} run configs) from the same request, with `fault` (or None)
    injected into each: (outputs, decision logs, fault hooks, outputs without the fault), dicts keyed by run name;
    the last two are empty without a fault."""
    from tokentrim.app.api import Pipeline
    from tokentrim.app.generate import decision_log

    videos, logs, hooks, clean = {}, {}, {}, {}
    inputs = {"latent_frames": request.latent_frames, "seed": request.seed, "start": request.start}
    for name, run in runs.items():
        pipe = Pipeline(backend, run, offload="none")
        hook = {} if fault is None else {"hook": fault_hook(backend, run, fault)}
        videos[name] = pipe.generate(request.prompt, **inputs, **hook)
        logs[name] = decision_log(compare_settings(backend, run, request, fault), videos[name])
        if fault is not None:  # the same run without the fault: what the fault left in each panel
            hooks[name], clean[name] = hook["hook"], pipe.generate(request.prompt, **inputs)
    return videos, logs, hooks, clean


def fault_residual(
    videos: dict, clean: dict, hooks: dict, fault_block: int, fpb: int, latent_frames: int
) -> dict[str, list[float]]:
    """Per run, the fault's residual energy in each block after `fault_block`: the squared latent difference from
    the run's fault-free output over the block (`tokentrim.app.stress.energy`, whole frame), divided by the energy
    its hook injected. videos, clean: outputs by run name, latents [1, F, C, H, W]; hooks: `FaultHook`s by run
    name; fpb: latent frames per block."""
    from tokentrim.app.stress import energy

    blocks_after = range(fault_block + 1, latent_frames // fpb)
    return {name: [energy(v.latents, clean[name].latents, b, fpb) / float(hooks[name].applied[0])
                   for b in blocks_after] for name, v in videos.items()}  # fmt: skip


def visibility_line(seen: dict, fault, names) -> str:
    """One line on how much the panels differ (`visibility`'s `seen`); with a fault, also how much it left in each
    run named in `names`: its residual energy and its pixel difference from the fault-free run."""
    where = "all blocks" if fault is None else f"blocks {fault.block + 1}.."
    line = f"panels differ by {seen['panels_mean']:.1f}/255 on average over {where} (largest block {seen['panels_max']:.1f})"
    if fault is not None:
        left = ", ".join(
            f"{n} {seen['residual_total'][n]:.2f} ({seen['from_clean_mean'][n]:.1f}/255)" for n in names
        )
        line += (f"; without the fault they differ by {seen['clean_panels_mean']:.1f}; the fault's residual energy "
                 f"(per injected, whole frame) and pixel difference from the fault-free run: {left}")  # fmt: skip
    return line


def block_starts(backend, latent_frames: int) -> np.ndarray:
    """The first decoded frame of each block, and the frame count at the end (the VAE's 1 + 4 (f - 1), then 4 f)."""
    block, decoder = backend.model.config.frames_per_block, backend.decoder
    per_block = [
        decoder.num_frames((b + 1) * block) - decoder.num_frames(b * block)
        if b
        else decoder.num_frames(block)
        for b in range(latent_frames // block)
    ]
    return np.cumsum([0, *per_block])


def compare_plan(args: argparse.Namespace) -> tuple:
    """(output folder, {"baseline", "TokenTrim"} run configs, the request, the fault or None), all checked. The
    overrides apply to both runs; the baseline has TokenTrim and FlowMo off (`RunConfig.baseline`)."""
    from tokentrim.app import backends
    from tokentrim.app.faults import Fault, check_tokens, region
    from tokentrim.app.run_config import default_config_path, load_run_config
    from tokentrim.files import check_output

    out = check_output(args.out, "--out", folder=True)
    if (args.scene is None) == (args.prompt is None):
        raise UserError("give exactly one of --scene SEED (toy) or --prompt TEXT")
    if args.scene is not None and args.preset != "toy":
        raise UserError("--scene is for the toy world model: add --preset toy")
    path = args.config or default_config_path(args.pipeline, args.preset)
    flowmo = {} if args.flowmo is None else {"flowmo": {"mode": args.flowmo}}
    trimmed = load_run_config(path, args.overrides, {"pipeline": args.pipeline, **flowmo})
    config = backends.model_config(args.preset, None)
    check_tokens(args.fault_tokens, config.tokens_per_frame, "--fault-tokens")
    prompt, start = args.prompt, None
    if args.scene is not None:
        from tokentrim.toy import observed_start

        prompt, start = observed_start(args.scene)
    checker = trimmed.checker(config)
    request = trimmed.request(prompt, args.latent_frames, seed=args.seed, start=start)
    request.check(checker)
    block = checker.frames_per_block
    if args.fault is not None and (args.fault_block + 2) * block > args.latent_frames:
        raise UserError(
            f"--fault-block {args.fault_block} leaves no block to watch in {args.latent_frames} frames"
        )
    if args.fault == "foreign":
        raise UserError("--fault foreign needs a second rollout: use tokentrim stress for it")
    fault = None
    if args.fault is not None:
        grid = (config.grid_height, config.grid_width)
        fault = Fault(
            args.fault,
            args.fault_block,
            region(grid, args.fault_tokens, np.random.default_rng(args.seed)),
            args.seed,
        )
    return out, {"baseline": trimmed.baseline(), "TokenTrim": trimmed}, request, fault


def fault_hook(backend, run, fault):
    """TokenTrim of `run` (scoring only when it is off) with `fault` injected (`tokentrim.app.faults`)."""
    from tokentrim.app.faults import FaultHook, token_mask
    from tokentrim_core.trim import TokenTrim

    cfg = backend.model.config
    mask = token_mask(fault.tokens, (cfg.grid_height, cfg.grid_width), cfg.patch_size[1:])
    return FaultHook(TokenTrim(run.tokentrim, cfg.patch_size[1:]), fault, mask)


def compare_settings(backend, run, request, fault) -> dict:
    """What produced one of the two videos (the decision log's "config")."""
    from tokentrim.app.generate import video_settings

    model = backend.model
    what = None if fault is None else {"kind": fault.kind, "block": fault.block, "tokens": list(fault.tokens)}
    return video_settings(
        run,
        seed=request.seed,
        latent_frames=request.latent_frames,
        observed_frames=request.observed_frames,
        backend=backend.name,
        dtype=model.patch_embedding.weight.dtype,
        attention=model.attention_backend,
        prompt=request.prompt,
        fault=what,
    )


def register(subparsers) -> None:
    from tokentrim.app.args import NONNEG_INT, POSITIVE_INT, SEED
    from tokentrim.app.backends import PRESETS
    from tokentrim.app.faults import KINDS
    from tokentrim.pipelines import pipeline_names

    p = subparsers.add_parser(
        "compare",
        help="baseline and TokenTrim side by side (one mp4, drift, heat map)",
        description="The baseline and TokenTrim from the same seed, optionally with the same "
        "injected fault, as a two-panel video with the drift figure and the heat map of "
        "the first pruned block.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="toy", help="built-in model")
    p.add_argument("--pipeline", choices=pipeline_names(), default="self_forcing", help="sampling loop")
    p.add_argument("--config", help="run config YAML (default: the pipeline's, configs/toy/ for the toy)")
    p.add_argument("--scene", type=SEED, help="toy world: scene SEED's prompt and observed first block")
    p.add_argument("--prompt", help="the text prompt (instead of --scene)")
    p.add_argument("--latent-frames", type=POSITIVE_INT, default=120, help="latent frames, a multiple of 3")
    p.add_argument("--seed", type=SEED, default=0, help="random seed of both runs")
    p.add_argument(
        "--fault", choices=[k for k in KINDS if k != "foreign"], help="inject this fault in both runs"
    )
    p.add_argument(
        "--fault-block", type=NONNEG_INT, default=6, help="block J whose accepted latents are corrupted"
    )
    p.add_argument("--fault-tokens", type=POSITIVE_INT, default=6, help="corrupted tokens, a compact region")
    p.add_argument(
        "--flowmo", choices=["off", "first_block", "every_block"], help="FlowMo in the TokenTrim run"
    )
    p.add_argument("--out", required=True, help="output folder (compare.mp4, drift.png, heatmap.png, logs)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides KEY=VALUE (both runs; the baseline has TokenTrim and FlowMo off)",
    )
    p.set_defaults(func=cmd_compare)
