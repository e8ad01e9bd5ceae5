"""Figures from TokenTrim runs: drift severity curves from decision logs, per-token drift heatmaps from latents.

Uses matplotlib's object API (Figure + the Agg canvas), so no pyplot state and no display are involved. PNGs
are written to a temporary name in the target folder and renamed when complete.
`register(subparsers)` adds the `figure drift` / `figure heatmap` commands; each sets `args.func(args) -> int`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tokentrim.errors import UserError
from tokentrim.files import atomic_path
from tokentrim_core import consecutive_block_drift

# Pixel frames per latent frame of the Wan VAE (video T = 1 + 4 (F - 1)); latent frame f is shown as frame 4f.
_VAE_TIME_STRIDE = 4


def _save_png(fig: Figure, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    with atomic_path(out, suffix=".png") as tmp:
        FigureCanvasAgg(fig)
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return out


def _check_log(log: object, name: str) -> dict:
    if not isinstance(log, dict) or not isinstance(log.get("blocks"), list):
        raise UserError(
            f"{name} is not a TokenTrim decision log: expected a JSON object with a 'blocks' list"
        )
    needed = ("block", "action", "severity")
    if any(not isinstance(r, dict) or any(k not in r for k in needed) for r in log["blocks"]):
        raise UserError(f"{name}: every entry of 'blocks' must be a record with the keys {needed}")
    return log


def plot_drift(
    log: dict | Sequence[dict], out_png: str | os.PathLike, labels: Sequence[str] | None = None
) -> Path:
    """`drift_figure` written to `out_png`."""
    return _save_png(drift_figure(log, labels), out_png)


def drift_figure(log: dict | Sequence[dict], labels: Sequence[str] | None = None) -> Figure:
    """Drift severity D_t per block, with the armed band mu..mu + lam·sigma, prune events and warm-up.

    `log` is one decision log ({"config": ..., "blocks": [...]}) or a list of them, overlaid (e.g. baseline vs
    TokenTrim). A prune is drawn as a cross at D_t joined to a hollow circle at the regenerated block's D*;
    a prompt switch as a vertical line before its first block, an injected fault as a line at its block. The figure has an Agg canvas (no pyplot state), so a web page can render it too.
    """
    # 1. The logs, checked, and their names
    logs = [log] if isinstance(log, dict) else list(log)
    if not logs:
        raise UserError("plot_drift needs at least one decision log")
    logs = [_check_log(lg, f"log {i}") for i, lg in enumerate(logs)]
    if labels is None:
        # a log whose every block says "off" is a baseline run (--no-tokentrim)
        labels = [
            "baseline" if all(r.get("action") == "off" for r in lg["blocks"]) else "TokenTrim" for lg in logs
        ]
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    # 2. The warm-up blocks of any run, shaded behind everything
    warm = sorted({r["block"] for lg in logs for r in lg["blocks"] if r.get("action") == "warmup"})
    for i, b in enumerate(warm):
        ax.axvspan(b - 0.5, b + 0.5, color="0.9", zorder=0, label="warm-up" if i == 0 else None)
    # 3. Each run in its colour: the severity curve, the armed band and threshold, the prunes
    named: set[str] = set()  # legend entries given so far: the first marker of a kind, whichever run has it
    for i, (lg, label) in enumerate(zip(logs, labels, strict=True)):
        color = f"C{i}"
        scored = [r for r in lg["blocks"] if r.get("severity") is not None]
        ax.plot(
            [r["block"] for r in scored],
            [r["severity"] for r in scored],
            "o-",
            ms=3,
            color=color,
            label=label,
        )
        _plot_threshold(ax, scored, color, label)
        _plot_prunes(ax, scored, named)
    # 4. Events of the runs: injected faults, prompt switches
    _mark_events(ax, logs)
    # 5. Axes, title, and the legend beside the axes (it hides no marker)
    ax.set_xlabel("block")
    # the token-wise rule: armed records with a threshold and no block mean (its severity is a mean score)
    tokenwise = any(
        r.get("threshold") is not None and r.get("mean") is None for lg in logs for r in lg["blocks"]
    )
    ax.set_ylabel("drift severity D_t" + (" (token-wise rule: mean score)" if tokenwise else ""))
    ax.set_title("TokenTrim drift severity (top-p mean token drift)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    FigureCanvasAgg(fig)
    return fig


def _armed_runs(scored: Sequence[dict]) -> list[list[dict]]:
    """The armed records (those with a threshold) grouped into runs of consecutive blocks: a reset of the
    statistics breaks the band."""
    armed = [r for r in scored if r.get("threshold") is not None]
    runs: list[list[dict]] = []
    for r in armed:
        if runs and r["block"] == runs[-1][-1]["block"] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def _plot_threshold(ax: Axes, scored: Sequence[dict], color: str, label: str) -> None:
    """One run's armed blocks (`scored`: its records with a severity): the band mean μ .. threshold (the paper's
    rule) shaded, and the threshold dashed; a single armed block gets a short band centred on it."""
    for k, run in enumerate(_armed_runs(scored)):
        xs = [r["block"] for r in run]
        if len(run) == 1:  # one block: a short band centred on it
            xs, run = [xs[0] - 0.4, xs[0] + 0.4], run * 2
        if all(r.get("mean") is not None for r in run):  # the paper's rule: mu .. mu + lam sigma
            ax.fill_between(
                xs,
                [r["mean"] for r in run],
                [r["threshold"] for r in run],
                color=color,
                alpha=0.15,
                step="mid",
                label=f"{label}: mean μ .. threshold (shaded)" if k == 0 else None,
            )
        # the token-wise rule keeps no block mean: its threshold is a fixed level of the score
        ax.plot(xs, [r["threshold"] for r in run], "--", color=color, lw=1, drawstyle="steps-mid",
                label=f"{label}: threshold (dashed)" if k == 0 else None)  # fmt: skip


def _legend_once(named: set[str], text: str) -> str | None:
    """`text` the first time it is asked for (a legend entry), None after; `named` holds the texts given."""
    if text in named:
        return None
    named.add(text)
    return text


def _plot_prunes(ax: Axes, scored: Sequence[dict], named: set[str]) -> None:
    """One run's prunes (`scored`: its records with a severity): a red cross at the candidate's D_t and, where the
    block was regenerated, a hollow circle at D* joined to it by a dotted line. `named`: `_legend_once`."""
    pruned = [r for r in scored if r.get("action") == "prune"]
    for r in pruned:
        ax.plot(
            r["block"],
            r["severity"],
            "x",
            color="red",
            ms=9,
            mew=2,
            label=_legend_once(named, "pruned candidate (D_t above the threshold)"),
        )
        if r.get("regenerated_severity") is not None:
            ax.plot([r["block"]] * 2, [r["severity"], r["regenerated_severity"]], ":", color="red", lw=1)
            ax.plot(
                r["block"],
                r["regenerated_severity"],
                "o",
                mfc="none",
                color="red",
                ms=7,
                label=_legend_once(named, "regenerated block (D*), dotted from its candidate"),
            )


def _mark_events(ax: Axes, logs: Sequence[dict]) -> None:
    """Vertical lines for what happened to the runs: an injected fault (tokentrim compare / stress, from a log's
    config) at its block, a prompt switch (--timeline) just before its first block."""
    faults = sorted(
        {
            lg["config"]["fault"]["block"]
            for lg in logs
            if isinstance(lg.get("config"), dict) and isinstance(lg["config"].get("fault"), dict)
        }
    )
    for i, b in enumerate(faults):
        ax.axvline(b, color="purple", lw=1.2, ls="--", label="injected fault" if i == 0 else None)
    switches = sorted({r["block"] for lg in logs for r in lg["blocks"] if r.get("prompt_switch")})
    for i, b in enumerate(switches):
        ax.axvline(b - 0.5, color="green", lw=1.5, ls="-.", label="prompt switch" if i == 0 else None)


def block_drift_maps(
    latents: torch.Tensor, patch: tuple[int, int], frames_per_block: int = 3
) -> torch.Tensor:
    """Per-token drift between consecutive blocks' summaries (Eq. 3–5), as maps on the token grid.

    Frames past the last full block are ignored. Shapes: latents [F, C, H, W] or [1, F, C, H, W]
    -> [n_blocks - 1, H/ph, W/pw]; map i compares block i + 1 with block i.
    """
    if latents.ndim == 5 and latents.shape[0] == 1:
        latents = latents[0]
    if latents.ndim != 4:
        raise UserError(f"latents must be [F, C, H, W] or [1, F, C, H, W], got shape {tuple(latents.shape)}")
    ph, pw = patch
    if frames_per_block < 1 or ph < 1 or pw < 1 or latents.shape[-2] % ph or latents.shape[-1] % pw:
        raise UserError(
            f"latent grid {tuple(latents.shape[-2:])} must split into patches {patch} and frames_per_block must be"
            f" >= 1 (got {frames_per_block})"
        )
    n_blocks = latents.shape[0] // frames_per_block
    if n_blocks < 2:
        raise UserError(
            f"need at least 2 blocks of {frames_per_block} latent frames, got {latents.shape[0]} frames"
        )
    grid = (latents.shape[-2] // ph, latents.shape[-1] // pw)
    return consecutive_block_drift(latents, patch, frames_per_block).reshape(n_blocks - 1, *grid)


def plot_heatmap(
    latents: torch.Tensor,
    patch: tuple[int, int],
    out_png: str | os.PathLike,
    frames_per_block: int = 3,
    frames: np.ndarray | None = None,
) -> Path:
    """A grid of per-token drift heatmaps, one per block transition (the paper's Fig. 2 style).

    With `frames` (decoded video, uint8 [T, H, W, 3]) each map is stretched over the block's last frame (latent
    frame f is video frame min(T - 1, 4f)) and drawn half-transparent on top of it. One colour scale for all.
    """
    maps = block_drift_maps(latents, patch, frames_per_block).numpy()
    n = maps.shape[0]
    ncols = min(n, 6)
    nrows = math.ceil(n / ncols)
    aspect = maps.shape[1] / maps.shape[2] if frames is None else frames.shape[1] / frames.shape[2]
    fig = Figure(figsize=(2.6 * ncols + 1, 2.6 * nrows * aspect + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    vmax = float(maps.max()) or 1.0
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        block = i + 1
        kwargs = {"cmap": "inferno", "vmin": 0.0, "vmax": vmax, "interpolation": "nearest"}
        if frames is not None:
            last_latent = (block + 1) * frames_per_block - 1
            frame = frames[min(frames.shape[0] - 1, _VAE_TIME_STRIDE * last_latent)]
            ax.imshow(frame)
            h, w = frame.shape[:2]
            image = ax.imshow(maps[i], extent=(0, w, h, 0), alpha=0.55, **kwargs)
        else:
            image = ax.imshow(maps[i], **kwargs)
        ax.set_title(f"block {block} vs {block - 1}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="token drift ||Z_t - Z_t-1||")
    return _save_png(fig, out_png)


def plot_frame_strips(
    videos: Sequence[np.ndarray],
    labels: Sequence[str],
    fps: float,
    times_s: Sequence[float],
    out_png: str | os.PathLike,
) -> Path:
    """Rows of frames at the given times, one row per video (the paper's baseline-vs-TokenTrim figures).

    videos: uint8 `[T, H, W, 3]` each; a time past a video's end shows its last frame.
    """
    if not videos or len(videos) != len(labels):
        raise UserError("give one label per video")
    rows, cols = len(videos), len(times_s)
    h, w = videos[0].shape[1:3]
    fig = Figure(figsize=(2.2 * cols * w / max(h, w) + 0.8, 2.2 * rows * h / max(h, w)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (video, label) in enumerate(zip(videos, labels, strict=True)):
        for c, t in enumerate(times_s):
            ax = axes[r][c]
            ax.imshow(video[min(len(video) - 1, round(t * fps))])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{t:g} s", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    return _save_png(fig, out_png)


def _load_log(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"decision log not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; pass a decision log JSON written by a run") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    try:
        log = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path} is not valid JSON ({err}); pass a decision log JSON written by a run"
        ) from None
    return _check_log(log, str(path))


def _png_output(path: Path) -> Path:
    from tokentrim.files import check_output

    if path.suffix.lower() != ".png":
        raise UserError(f"-o must name a .png file, got {path}")
    return check_output(path, "-o")


def _cmd_drift(args: argparse.Namespace) -> int:
    _png_output(args.output)
    logs = [_load_log(p) for p in args.logs]
    plot_drift(logs, args.output, labels=[p.stem for p in args.logs] if len(logs) > 1 else None)
    return 0


def _cmd_heatmap(args: argparse.Namespace) -> int:
    _png_output(args.output)
    if not args.latents.is_file():
        raise UserError(f"latents file not found: {args.latents}")
    try:
        latents = torch.load(args.latents, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a non-tensor or corrupt file
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:100]
        raise UserError(
            f"cannot load {args.latents} as a torch-saved tensor ({detail}); pass the "
            "<video>.latents.pt a run wrote with --save-latents"
        ) from None
    if not isinstance(latents, torch.Tensor):
        raise UserError(f"{args.latents} holds a {type(latents).__name__}, expected a [F, C, H, W] tensor")
    frames = None
    if args.video is not None:
        from tokentrim.video import read_video

        frames, _ = read_video(args.video)
    plot_heatmap(latents.float(), tuple(args.patch), args.output, args.frames_per_block, frames)
    return 0


def _cmd_frames(args: argparse.Namespace) -> int:
    from tokentrim.video import read_video

    _png_output(args.output)
    labels = args.labels or [Path(v).stem for v in args.videos]
    if len(labels) != len(args.videos):
        raise UserError(f"--labels needs {len(args.videos)} names (one per video), got {len(labels)}")
    if args.times is not None and any(not 0 <= t < math.inf for t in args.times):
        raise UserError(f"--times must be seconds >= 0, got {args.times}")
    loaded = [read_video(v) for v in args.videos]
    fps = loaded[0][1]
    times = args.times or [round(i * (len(loaded[0][0]) - 1) / fps / 4, 1) for i in range(5)]
    plot_frame_strips([v for v, _ in loaded], labels, fps, times, args.output)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `figure drift | heatmap | frames` to the CLI; handlers are set as `args.func`."""
    from tokentrim.app.args import POSITIVE_INT

    figure = subparsers.add_parser(
        "figure",
        help="plot drift curves, per-token drift heatmaps or frame strips",
        description="Figures from the files a run writes.",
    )
    kinds = figure.add_subparsers(dest="figure_kind", required=True, metavar="KIND")
    drift = kinds.add_parser(
        "drift",
        help="drift severity per block from decision logs (overlaid)",
        description="Drift severity per block, threshold band and prune events.",
    )
    drift.add_argument("logs", nargs="+", type=Path, help="decision log JSON file(s) written by generate")
    drift.add_argument("-o", "--output", type=Path, required=True, help="output .png")
    drift.set_defaults(func=_cmd_drift)
    heat = kinds.add_parser(
        "heatmap",
        help="per-token drift between consecutive blocks",
        description="Per-token drift maps between consecutive blocks (the paper's Fig. 2).",
    )
    heat.add_argument(
        "latents",
        type=Path,
        help="torch-saved latents [F, C, H, W] or [1, F, C, H, W] (generate --save-latents)",
    )
    heat.add_argument("-o", "--output", type=Path, required=True, help="output .png")
    heat.add_argument("--video", type=Path, default=None, help="decoded video to draw the maps over")
    heat.add_argument(
        "--patch",
        type=POSITIVE_INT,
        nargs=2,
        default=[2, 2],
        metavar=("PH", "PW"),
        help="DiT patch, two integers >= 1 (Wan2.1: 2 2)",
    )
    heat.add_argument(
        "--frames-per-block", type=POSITIVE_INT, default=3, help="latent frames per block, >= 1"
    )
    heat.set_defaults(func=_cmd_heatmap)
    frames = kinds.add_parser(
        "frames",
        help="frames at chosen times, one row per video (baseline vs TokenTrim)",
        description="Frames at chosen times, one row per video.",
    )
    frames.add_argument("videos", nargs="+", type=Path, help="mp4 files")
    frames.add_argument("-o", "--output", type=Path, required=True, help="output .png")
    frames.add_argument("--labels", nargs="+", help="row names, one per video (default: file names)")
    frames.add_argument("--times", nargs="+", type=float, help="seconds >= 0 (default: 5 evenly spaced)")
    frames.set_defaults(func=_cmd_frames)
