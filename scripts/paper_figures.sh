#!/usr/bin/env bash
# Regenerate the paper-style figures from a `tokentrim reproduce` output folder:
#   Fig. 1/3/4 style: baseline vs FlowMo vs TokenTrim frames over time, per prompt and pipeline;
#   Fig. 2 style: per-token drift heatmaps of the baseline over its decoded frames;
#   drift curves: severity per block, baseline vs TokenTrim.
# Usage: scripts/paper_figures.sh [RESULTS_DIR=results] [OUT=RESULTS_DIR/figures]
set -euo pipefail
RESULTS="${1:-results}"
OUT="${2:-$RESULTS/figures}"
TT="${TOKENTRIM:-tokentrim}"
mkdir -p "$OUT"
for pipe_dir in "$RESULTS"/videos/*/; do
  pipe=$(basename "$pipe_dir")
  for base in "$pipe_dir"baseline/*.mp4; do
    [[ -e "$base" ]] || continue
    name=$(basename "$base" .mp4)
    rows=("$base"); labels=(baseline)
    for variant in flowmo_every_block tokentrim; do
      if [[ -e "$pipe_dir$variant/$name.mp4" ]]; then rows+=("$pipe_dir$variant/$name.mp4"); labels+=("$variant"); fi
    done
    "$TT" figure frames "${rows[@]}" --labels "${labels[@]}" -o "$OUT/${pipe}_${name}_frames.png"
    if [[ -e "$pipe_dir"baseline/$name.latents.pt ]]; then
      "$TT" figure heatmap "$pipe_dir"baseline/$name.latents.pt --video "$base" -o "$OUT/${pipe}_${name}_heatmap.png"
    fi
    if [[ -e "$pipe_dir"tokentrim/$name.json ]]; then
      "$TT" figure drift "$pipe_dir"baseline/$name.json "$pipe_dir"tokentrim/$name.json -o "$OUT/${pipe}_${name}_drift.png"
    fi
  done
done
echo "figures in $OUT"
