"""Many pairs: the `--pairs FILE` list, duplicate and seed-match checks, and the summary over verdicts.

A pairs file has one pair per line, `BASELINE TREATED` (two paths separated by white space; quote a path that
contains spaces, shell style). Blank lines and lines starting with `#` are skipped. Relative paths are relative to
the folder of the pairs file.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import numpy as np

from tokentrim.errors import UserError
from tokentrim.eval.appearance import delta_e76

# Seed-matched rollouts share their initial noise, so their first frames show the same picture (identical up to
# codec noise when the first block is generated the same way). Two first frames are different pictures when
# their tile colours differ by more than 10 CIE76 units on average (about four just-noticeable differences
# everywhere), or when their grey 32-px thumbnails correlate below 0.8 (they share under 64 % of their variance:
# a different layout in the same palette, e.g. two different swarms of birds on a grey sky).
SEED_MATCH_DELTA_E = 10.0
SEED_MATCH_CORRELATION = 0.8


def read_pairs_file(path: str | Path) -> list[tuple[Path, Path]]:
    """Parse a pairs file into (baseline, treated) paths; raises UserError naming the bad line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pairs file not found: {path}")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = shlex.split(line)
        except ValueError as err:
            raise UserError(
                f"{path}:{number}: {err}; write BASELINE TREATED, quoting paths with spaces"
            ) from err
        if len(fields) != 2:
            raise UserError(
                f"{path}:{number}: expected two paths 'BASELINE TREATED', got {len(fields)} field(s)"
            )
        pairs.append(tuple(p if p.is_absolute() else path.parent / p for p in map(Path, fields)))
    if not pairs:
        raise UserError(f"{path} lists no pairs; write one 'BASELINE TREATED' line per pair")
    return pairs


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def duplicate_warnings(pairs: list[tuple[Path, Path]], hashes: dict[Path, str]) -> list[str]:
    """One warning per group of input files with the same content (the same file listed twice included)."""
    where: dict[str, list[str]] = {}
    for i, pair in enumerate(pairs, start=1):
        for side, p in zip(("baseline", "treated"), pair, strict=True):
            where.setdefault(hashes[p], []).append(f"pair {i} {side} {p}")
    return [f"identical content (sha256 {h[:12]}) at: {'; '.join(places)}: a duplicated video counts twice"
            for h, places in where.items() if len(places) > 1]  # fmt: skip


def first_frame_distance(baseline: dict, treated: dict) -> float:
    """Mean over tiles of the CIE76 difference between the two videos' first frames (`first_frame_lab_tiles`,
    tile by tile); infinity when the tile grids differ (a video smaller than the grid), i.e. not seed-matched."""
    a, b = (np.asarray(r["first_frame_lab_tiles"]) for r in (baseline, treated))
    if a.shape != b.shape:
        return float("inf")
    return float(delta_e76(a, b).mean())


def first_frame_correlation(baseline: dict, treated: dict) -> float:
    """Pearson correlation of the two first frames' grey thumbnails (`first_frame_thumb`); 1.0 when either is
    flat (no layout to compare: the colour check decides), -1.0 when their shapes differ."""
    a, b = (np.asarray(r["first_frame_thumb"], np.float64) for r in (baseline, treated))
    if a.shape != b.shape:
        return -1.0
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return 1.0 if norm == 0 else float((a * b).sum() / norm)


def seed_warning(index: int, baseline: dict, treated: dict) -> str | None:
    """A warning when a pair's first frames are too different to come from the same seed and prompt."""
    d = first_frame_distance(baseline, treated)
    r = first_frame_correlation(baseline, treated)
    if d <= SEED_MATCH_DELTA_E and r >= SEED_MATCH_CORRELATION:
        return None
    return (f"pair {index}: first frames differ (mean tile delta E {d:.1f}, limit {SEED_MATCH_DELTA_E:g}; "
            f"thumbnail correlation {r:.2f}, limit {SEED_MATCH_CORRELATION:g}): not seed-matched? A pair compares "
            "like with like only with the same prompt and seed")  # fmt: skip
