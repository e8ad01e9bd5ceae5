"""`tokentrim compare`: the baseline and TokenTrim from the same seed, side by side — optionally with the same
injected fault (`tokentrim.app.faults`) — as one two-panel mp4, the drift figure of both runs with the prune
events, and the heat map of the block TokenTrim pruned. `make demo` runs it on the toy world model.
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


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str], marked: set[int] = frozenset(),
                 factor: int = 1) -> np.ndarray:  # fmt: skip
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


def plot_pruned_block(latents: torch.Tensor, block: int, positions: list[int], patch: tuple[int, int], fpb: int,
                      frame: np.ndarray, out_png: Path, fault: tuple[int, ...] = ()) -> Path:  # fmt: skip
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
        right.add_patch(Rectangle(((n % gw) * sx + 1, (n // gw) * sy + 1), sx - 2, sy - 2, fill=False,
                                  edgecolor="white", lw=1.0, ls="--"))  # fmt: skip
    what = "TokenTrim's pruned positions outlined" + ("; fault dashed" if fault else "")
    right.set_title(f"baseline's token drift vs block {block - 1}\n{what}", fontsize=9)
    for ax in (left, right):
        ax.set_axis_off()
    fig.colorbar(shown, ax=right, shrink=0.8, label="||Z_t - Z_t-1||")
    return _save_png(fig, out_png)


def cmd_compare(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app import generate as gen
    from tokentrim.app.faults import Fault, check_tokens, injector, region, token_mask
    from tokentrim.app.figures import plot_drift
    from tokentrim.app.run_config import default_config_path, load_run_config
    from tokentrim.files import check_output, write_json
    from tokentrim.video import write_video

    out = check_output(args.out, "--out", folder=True)
    if (args.scene is None) == (args.prompt is None):
        raise UserError("give exactly one of --scene SEED (toy) or --prompt TEXT")
    if args.scene is not None and args.preset != "toy":
        raise UserError("--scene is for the toy world model: add --preset toy")
    path = args.config or default_config_path(args.pipeline, args.preset)
    flowmo = {} if args.flowmo is None else {"flowmo": {"mode": args.flowmo}}
    runs = {"baseline": load_run_config(path, [], {"pipeline": args.pipeline, "tokentrim": {"enabled": False},
                                                   "flowmo": {"mode": "off"}}),
            "TokenTrim": load_run_config(path, args.overrides, {"pipeline": args.pipeline, **flowmo})}  # fmt: skip
    config = backends.model_config(args.preset, None)
    check_tokens(args.fault_tokens, config.tokens_per_frame, "--fault-tokens")
    prefix = None
    if args.scene is not None:
        from tokentrim.toy import observed_start

        args.prompt, prefix = observed_start(args.scene)
    gen.check_request(config, runs["TokenTrim"], args.latent_frames, 0 if prefix is None else prefix.shape[1])
    block = gen.request_pipeline(config, runs["TokenTrim"]).frames_per_block
    if args.fault is not None and (args.fault_block + 2) * block > args.latent_frames:
        raise UserError(
            f"--fault-block {args.fault_block} leaves no block to watch in {args.latent_frames} frames"
        )
    backend = backends.load_backend(preset=args.preset, model_dir=None, checkpoint=None,
                                    device=backends.pick_device(args.device), dtype=torch.float32)  # fmt: skip
    cfg = backend.model.config
    grid, patch = (cfg.grid_height, cfg.grid_width), cfg.patch_size[1:]
    fault = None
    if args.fault is not None:
        if args.fault == "foreign":
            raise UserError("--fault foreign needs a second rollout: use tokentrim stress for it")
        fault = Fault(args.fault, args.fault_block, region(grid, args.fault_tokens, np.random.default_rng(args.seed)),
                      args.seed)  # fmt: skip
    embeds = gen.encode(backend, [args.prompt], "none")
    results = {}
    for name, run in runs.items():
        alter = None if fault is None else injector(fault, block, token_mask(fault.tokens, grid, patch))
        results[name] = gen.run_video(backend, run, embeds, latent_frames=args.latent_frames, seed=args.seed,
                                      prefix=prefix, progress=False, alter=alter,
                                      settings={"prompt": args.prompt, "fault": None if fault is None else
                                                {"kind": fault.kind, "block": fault.block,
                                                 "tokens": list(fault.tokens)}})  # fmt: skip
    videos = {name: np.concatenate(list(r.frames())) for name, r in results.items()}
    decoder = backend.decoder
    per_block = [decoder.num_frames((b + 1) * block) - decoder.num_frames(b * block) if b else decoder.num_frames(block)
                 for b in range(args.latent_frames // block)]  # fmt: skip
    first_frame = np.cumsum([0, *per_block])
    pruned = [r for r in results["TokenTrim"].records if r.action == "prune"]
    marked = {f for r in pruned for f in range(first_frame[r.block], first_frame[r.block + 1])}
    factor = max(1, -(-MIN_HEIGHT // videos["baseline"].shape[1]))
    # ASCII only: PIL's default font
    what = "" if fault is None else f" - {fault.kind} fault at block {fault.block}"
    video = side_by_side(videos["baseline"], videos["TokenTrim"], (f"baseline{what}", f"TokenTrim{what}"), marked,
                         factor)  # fmt: skip
    write_video(out / "compare.mp4", video, fps=backend.fps)
    logs = {name: r.log() for name, r in results.items()}
    for name, log in logs.items():
        write_json(out / f"{name.lower()}.json", log)
    plot_drift([logs["baseline"], logs["TokenTrim"]], out / "drift.png", labels=["baseline", "TokenTrim"])
    made = [out / "compare.mp4", out / "drift.png"]
    shown = [r for r in pruned if fault is None or r.block > fault.block]  # the prune that answers the fault
    if shown:
        first = shown[0]
        frame = upscale(
            videos["baseline"][first_frame[first.block + 1] - 1 : first_frame[first.block + 1]], factor
        )[0]
        plot_pruned_block(results["baseline"].latents[0].float(), first.block, first.pruned_positions, patch, block,
                          frame, out / "heatmap.png", () if fault is None else fault.tokens)  # fmt: skip
        made.append(out / "heatmap.png")
    prunes = ", ".join(str(r.block) for r in pruned) or "none"
    print(
        f"wrote {', '.join(map(str, made))}  [{video.shape[2]}x{video.shape[1]}, TokenTrim pruned blocks: {prunes}]"
    )
    return 0


def register(subparsers) -> None:
    from tokentrim.app.args import NONNEG_INT, POSITIVE_INT, SEED
    from tokentrim.app.backends import PRESETS
    from tokentrim.app.faults import KINDS
    from tokentrim.pipelines import pipeline_names

    p = subparsers.add_parser("compare", help="baseline and TokenTrim side by side (one mp4, drift, heat map)",
                              description="The baseline and TokenTrim from the same seed, optionally with the same "
                              "injected fault, as a two-panel video with the drift figure and the heat map of "
                              "the first pruned block.")  # fmt: skip
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
    p.add_argument("overrides", nargs="*", help="TokenTrim run's config overrides KEY=VALUE")
    p.set_defaults(func=cmd_compare)
