"""The fault's persistence per block after the injection, baseline against TokenTrim, from `tokentrim stress` reports.

One panel per fault kind, one line pair per report (pipeline): the squared error inside the fault's region against
the clean run of the same method, divided by the injected energy, for blocks J+1 .. J+H, averaged over the seeds
(shaded: ± one standard error).

    python scripts/stress_figure.py results/stress/self_forcing.json results/stress/rolling_forcing.json \
        -o docs/toy/stress_persistence.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokentrim.app.figures import _save_png


def mean_curve(rows: list[dict], method: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over seeds of the per-block persistence curves (seeds x blocks)."""
    curves = np.array([r["persistence"][method]["curve"] for r in rows], dtype=float)
    return curves.mean(0), curves.std(0, ddof=1) / np.sqrt(len(curves))


def plot(reports: list[dict], out: Path) -> Path:
    from matplotlib.figure import Figure

    kinds = list(reports[0]["by_kind"])
    fig = Figure(figsize=(3.2 * len(kinds), 3.0))
    axes = fig.subplots(1, len(kinds), sharey=False, squeeze=False)[0]
    colours = {"baseline": "tab:blue", "tokentrim": "tab:orange"}
    for ax, kind in zip(axes, kinds, strict=True):
        for report, style in zip(reports, ("-", "--", ":"), strict=False):
            rows = report["by_kind"][kind]["per_seed"]
            for method in ("baseline", "tokentrim"):
                mean, se = mean_curve(rows, method)
                x = np.arange(1, len(mean) + 1)
                name = "TokenTrim" if method == "tokentrim" else method
                label = f"{report['settings']['pipeline']}, {name}"
                ax.plot(x, mean, style, color=colours[method], lw=1.4, label=label)
                ax.fill_between(x, mean - se, mean + se, color=colours[method], alpha=0.15, lw=0)
        ax.set_title(f"{kind} fault", fontsize=10)
        ax.set_xlabel("blocks after the fault")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error in the region / injected")
    axes[-1].legend(fontsize=7)
    seeds = reports[0]["settings"]["seeds"]
    fig.suptitle(f"persistence of an injected fault (mean over {seeds} seeds, ± 1 s.e.)", fontsize=10)
    fig.tight_layout()
    return _save_png(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="tokentrim stress --json reports")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output .png")
    args = ap.parse_args()
    print(plot([json.loads(p.read_text()) for p in args.reports], args.output))


if __name__ == "__main__":
    main()
