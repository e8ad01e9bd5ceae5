"""VBench results -> the TokenTrim paper's Table 3 (per dimension) and Table 1 (Semantic / Quality / Final) layout.

    python scripts/vbench_bridge.py --run "Self Forcing=vbench_results/self" \
        --run "+ TokenTrim=vbench_results/ours" --md table.md --csv table.csv [--aggregate vbench|mean]

Each run is a VBench output folder (searched recursively for `*_eval_results.json`, the files `vbench evaluate`
writes: {dimension: [score, per-video details]}) or one such file. When a dimension appears in several files,
the file whose name sorts last wins (VBench names them results_<date-time>_eval_results.json, so the newest).

Aggregates (`--aggregate vbench`, the default) follow VBench's published normalisation: each dimension score is
mapped to (score - min) / (max - min) with VBench's min/max table, weighted (Dynamic Degree 0.5, others 1), and
averaged with those weights over the Quality and Semantic dimensions. Final = (Semantic + Quality) / 2 as in
the TokenTrim paper; VBench's own Total = (4 Quality + Semantic) / 5 is listed too. A group missing some
dimensions (custom-input mode cannot run six Semantic dimensions) is averaged over those present and marked.
`--aggregate mean` is a plain, unweighted mean of the raw scores instead, labelled as such.

Standard library only, so it runs in any environment, including VBench's own.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

# (key, paper row name, group) in the order of the paper's Table 3 (VBench's dimension order).
DIMENSIONS = [
    ("subject_consistency", "Subject Consistency", "quality"),
    ("background_consistency", "Background Consistency", "quality"),
    ("temporal_flickering", "Temporal Flickering", "quality"),
    ("motion_smoothness", "Motion Smoothness", "quality"),
    ("dynamic_degree", "Dynamic Degree", "quality"),
    ("aesthetic_quality", "Aesthetic Quality", "quality"),
    ("imaging_quality", "Imaging Quality", "quality"),
    ("object_class", "Object Class", "semantic"),
    ("multiple_objects", "Multiple Objects", "semantic"),
    ("human_action", "Human Action", "semantic"),
    ("color", "Color", "semantic"),
    ("spatial_relationship", "Spatial Relationship", "semantic"),
    ("scene", "Scene", "semantic"),
    ("appearance_style", "Appearance Style", "semantic"),
    ("temporal_style", "Temporal Style", "semantic"),
    ("overall_consistency", "Overall Consistency", "semantic"),
]
# VBench's published normalisation (Vchitect/VBench scripts/constant.py, NORMALIZE_DIC): (min, max); dimensions
# not listed use (0, 1).
NORMALISATION = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
WEIGHT = {"dynamic_degree": 0.5}  # same source, DIM_WEIGHT; all others 1
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4, 1  # VBench Total = (4 Quality + 1 Semantic) / 5
KNOWN = {key for key, _, _ in DIMENSIONS}


class BridgeError(Exception):
    """A bad input to the converter; main() prints it and exits with status 2."""


def result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.rglob("*_eval_results.json"), key=lambda p: (p.name, str(p)))
        if files:
            return files
        raise BridgeError(f"no *_eval_results.json under {path}; run scripts/vbench_bridge.sh first")
    raise BridgeError(f"{path} does not exist")


def load_scores(path: str | os.PathLike) -> dict[str, float]:
    """Dimension -> score (0..1) from a VBench output folder or results file."""
    scores: dict[str, float] = {}
    for file in result_files(Path(path)):
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise BridgeError(f"cannot read {file} as JSON: {err}") from err
        if not isinstance(data, dict):
            raise BridgeError(f"{file}: expected a JSON object {{dimension: [score, details]}}")
        for dim, value in data.items():
            if dim not in KNOWN:
                raise BridgeError(f"{file}: unknown VBench dimension {dim!r}")
            score = value[0] if isinstance(value, list) else value
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise BridgeError(f"{file}: {dim} has no numeric score (got {value!r:.80})")
            scores[dim] = float(score)
    return scores


def normalised(dim: str, score: float) -> float:
    low, high = NORMALISATION.get(dim, (0.0, 1.0))
    return (score - low) / (high - low)


def group_score(scores: dict[str, float], group: str, mode: str) -> tuple[float | None, int, int]:
    """(score or None, dimensions present, dimensions in the group) for group "quality" or "semantic"."""
    dims = [key for key, _, g in DIMENSIONS if g == group]
    present = [d for d in dims if d in scores]
    if not present:
        return None, 0, len(dims)
    if mode == "mean":
        return sum(scores[d] for d in present) / len(present), len(present), len(dims)
    weights = [WEIGHT.get(d, 1.0) for d in present]
    value = sum(w * normalised(d, scores[d]) for d, w in zip(present, weights, strict=True)) / sum(weights)
    return value, len(present), len(dims)


def aggregates(scores: dict[str, float], mode: str = "vbench") -> dict[str, dict]:
    """Semantic, Quality, Final = (Semantic + Quality) / 2 and VBench Total = (4 Q + S) / 5, each with coverage."""
    if mode not in ("vbench", "mean"):
        raise BridgeError(f"--aggregate must be vbench or mean, got {mode!r}")
    sem, n_sem, of_sem = group_score(scores, "semantic", mode)
    qual, n_qual, of_qual = group_score(scores, "quality", mode)
    both = sem is not None and qual is not None
    final = (sem + qual) / 2 if both else None
    total = (
        (QUALITY_WEIGHT * qual + SEMANTIC_WEIGHT * sem) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT) if both else None
    )
    coverage = n_sem + n_qual, of_sem + of_qual
    return {
        "semantic": {"value": sem, "dims": n_sem, "of": of_sem},
        "quality": {"value": qual, "dims": n_qual, "of": of_qual},
        "final": {"value": final, "dims": coverage[0], "of": coverage[1]},
        "total": {"value": total, "dims": coverage[0], "of": coverage[1]},
    }


AGGREGATE_ROWS = [
    ("semantic", "Semantic Score"),
    ("quality", "Quality Score"),
    ("final", "Final Score = (Semantic + Quality) / 2"),
    ("total", "VBench Total = (4 Quality + Semantic) / 5"),
]


def table_rows(
    runs: list[tuple[str, dict[str, float]]], mode: str
) -> list[tuple[str, list[float | None], list[str]]]:
    """(row name, value in % per run or None, coverage note per run) for the 16 dimensions and the aggregates."""
    rows = [(name, [100 * s[key] if key in s else None for _, s in runs], [""] * len(runs))
            for key, name, _ in DIMENSIONS]  # fmt: skip
    aggs = [aggregates(s, mode) for _, s in runs]
    suffix = "" if mode == "vbench" else " (plain mean)"
    for key, name in AGGREGATE_ROWS:
        values = [None if a[key]["value"] is None else 100 * a[key]["value"] for a in aggs]
        notes = [
            "" if a[key]["dims"] == a[key]["of"] else f"{a[key]['dims']}/{a[key]['of']} dims" for a in aggs
        ]
        rows.append((name + suffix, values, notes))
    return rows


def render(runs: list[tuple[str, dict[str, float]]], mode: str = "vbench") -> tuple[str, str]:
    """Markdown and CSV text of the table (values in %, two decimals in markdown)."""
    rows = table_rows(runs, mode)
    labels = [label for label, _ in runs]
    how = {
        "vbench": "VBench normalisation (published per-dimension min-max table, Dynamic Degree weight 0.5)",
        "mean": "PLAIN MEAN of the raw dimension scores (not VBench's normalisation)",
    }[mode]
    md = [f"Aggregates: {how}. Values in %; '–' = dimension not evaluated; 'k/n dims' = aggregate over the "
          "k of n dimensions present.", "", "| Dimension | " + " | ".join(labels) + " |",
          "|---|" + "---|" * len(labels)]  # fmt: skip
    for name, values, notes in rows:
        cells = [
            "–" if v is None else f"{v:.2f}" + (f" ({n})" if n else "")
            for v, n in zip(values, notes, strict=True)
        ]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", *labels, *(f"{label} coverage" for label in labels)])
    for name, values, notes in rows:
        writer.writerow([name, *("" if v is None else f"{v:.4f}" for v in values), *notes])
    return "\n".join(md) + "\n", buf.getvalue()


def write_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def parse_run(spec: str) -> tuple[str, str]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise BridgeError(f"--run takes LABEL=PATH, got {spec!r}")
    return label, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=PATH",
                        help="a column: VBench output folder or *_eval_results.json (repeatable)")  # fmt: skip
    parser.add_argument("--md", help="write the markdown table here (default: print it)")
    parser.add_argument("--csv", help="write the CSV table here")
    parser.add_argument("--aggregate", default="vbench", choices=["vbench", "mean"])
    args = parser.parse_args(argv)
    try:
        runs = [(label, load_scores(path)) for label, path in map(parse_run, args.run)]
        md, csv_text = render(runs, args.aggregate)
        if args.md:
            write_atomic(args.md, md)
        else:
            sys.stdout.write(md)
        if args.csv:
            write_atomic(args.csv, csv_text)
    except BridgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
