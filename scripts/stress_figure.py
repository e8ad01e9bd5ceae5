"""The fault's persistence per block after the injection, the baseline against each detector, from `tokentrim stress`
reports.

One panel per fault kind and block J; one line per method: the squared error against the clean run of the same
method (whole frame, or `--region` inside the fault's region), divided by the injected energy, per measured block,
averaged over the seeds (shaded: ± one standard error). Several reports of one pipeline (chunks of seeds) are
pooled.

    python scripts/stress_figure.py results/stress/self_forcing.json -o docs/toy/stress_persistence.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokentrim.app.figures import _save_png

COLOURS = {"baseline": "tab:blue", "paper": "tab:orange", "tokenwise": "tab:green"}


def mean_curve(rows: list[dict], kind: str, j: str, method: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over seeds of the per-block persistence curves (seeds x blocks)."""
    curves = np.array([r["faults"][kind][j][method][f"{where}_curve"] for r in rows], dtype=float)
    return curves.mean(0), curves.std(0, ddof=1) / np.sqrt(len(curves))


def plot(reports: list[dict], out: Path, where: str = "whole") -> Path:
    from matplotlib.figure import Figure

    rows = [r for report in reports for r in report["per_seed"]]
    settings = reports[0]["settings"]
    methods = ["baseline", *settings["detectors"]]
    cells = [(kind, j) for kind, by_j in rows[0]["faults"].items() for j in by_j]
    fig = Figure(figsize=(3.0 * len(cells), 3.0))
    axes = fig.subplots(1, len(cells), squeeze=False)[0]
    for ax, (kind, j) in zip(axes, cells, strict=True):
        for method in methods:
            mean, se = mean_curve(rows, kind, j, method, where)
            x = np.arange(1, len(mean) + 1)
            ax.plot(x, mean, color=COLOURS.get(method), lw=1.4, label=method)
            ax.fill_between(x, mean - se, mean + se, color=COLOURS.get(method), alpha=0.15, lw=0)
        ax.set_title(f"{kind}, J = {j}", fontsize=10)
        ax.set_xlabel("measured block (1 = first)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(("whole-frame" if where == "whole" else "in-region") + " error / injected")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{settings['pipeline']}: persistence of an injected fault (mean over {len(rows)} seeds, "
                 "± 1 s.e.)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return _save_png(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="tokentrim stress --json reports of one pipeline")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output .png")
    ap.add_argument(
        "--region", action="store_true", help="inside the fault's region instead of the whole frame"
    )
    args = ap.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]
    print(plot(reports, args.output, "region" if args.region else "whole"))


if __name__ == "__main__":
    main()
