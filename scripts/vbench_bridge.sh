#!/usr/bin/env bash
# VBench on folders of videos, in VBench's own virtual environment, then the paper-style table.
#
#   scripts/vbench_bridge.sh VIDEO_DIR [VIDEO_DIR ...]
#
# Each VIDEO_DIR holds one method's mp4s and becomes one table column (named after the folder). VBench runs in
# custom-input mode: the prompt of `a cat plays-0.mp4` is "a cat plays" (the file stem minus a trailing -N),
# or give a prompt file with VBENCH_ARGS="--prompt_file prompts.json" ({"video path": "prompt", ...}).
# vbench 0.1.5 pins transformers==4.33.2 and numpy<2, so it cannot share TokenTrim's environment; its launcher
# hard-codes a CUDA device, and the first run downloads ~12 weight files into $VBENCH_CACHE_DIR
# (default ~/.cache/vbench). Finished dimensions are skipped on a rerun.
#
# Environment (defaults in brackets):
#   VBENCH_VENV        virtual environment for vbench [.vbench-venv], created when missing
#   VBENCH_PYTHON      interpreter that creates it [python3]; vbench's old pins suggest Python 3.10 or 3.11
#   VBENCH_VERSION     vbench version [0.1.5]
#   VBENCH_TORCH       pip requirement(s) for torch, which vbench does not declare [torch torchvision]
#   VBENCH_OUT         results folder [vbench_results]; VBench's JSON lands in $VBENCH_OUT/<column>/<dimension>/
#   VBENCH_DIMENSIONS  dimensions to run [the ten VBench accepts in custom-input mode]
#   VBENCH_EVALUATE    evaluate command [$VBENCH_VENV/bin/vbench evaluate]
#   VBENCH_ARGS        extra arguments for every evaluate call []
#   VBENCH_AGGREGATE   vbench (VBench's normalisation) | mean (plain mean) [vbench]
#   PYTHON             interpreter for the converter, standard library only, Python >= 3.10 [python3]
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

VBENCH_VENV=${VBENCH_VENV:-.vbench-venv}
VBENCH_PYTHON=${VBENCH_PYTHON:-python3}
VBENCH_VERSION=${VBENCH_VERSION:-0.1.5}
VBENCH_TORCH=${VBENCH_TORCH:-torch torchvision}
VBENCH_OUT=${VBENCH_OUT:-vbench_results}
# Custom-input mode refuses object_class, multiple_objects, scene, appearance_style, color and
# spatial_relationship (they need VBench's own prompt suite and its per-prompt metadata).
VBENCH_DIMENSIONS=${VBENCH_DIMENSIONS:-subject_consistency background_consistency temporal_flickering \
motion_smoothness dynamic_degree aesthetic_quality imaging_quality human_action temporal_style overall_consistency}
VBENCH_EVALUATE=${VBENCH_EVALUATE:-$VBENCH_VENV/bin/vbench evaluate}
VBENCH_ARGS=${VBENCH_ARGS:-}
VBENCH_AGGREGATE=${VBENCH_AGGREGATE:-vbench}
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)

for dir in "$@"; do
    [ -d "$dir" ] || { echo "error: $dir is not a folder of videos" >&2; exit 2; }
done

# 1. VBench's environment (once).
if [ ! -x "$VBENCH_VENV/bin/vbench" ] && [ "$VBENCH_EVALUATE" = "$VBENCH_VENV/bin/vbench evaluate" ]; then
    "$VBENCH_PYTHON" -m venv "$VBENCH_VENV"
    "$VBENCH_VENV/bin/pip" install --upgrade pip
    # shellcheck disable=SC2086  # VBENCH_TORCH is a list of requirements
    "$VBENCH_VENV/bin/pip" install $VBENCH_TORCH
    "$VBENCH_VENV/bin/pip" install "vbench==$VBENCH_VERSION"
fi
# vbench's launcher runs `python -m torch.distributed.run`, so the venv's python must come first on PATH.
export PATH="$VBENCH_VENV/bin:$PATH"

# 2. One evaluate call per column and dimension (the CLI takes one dimension at a time).
runs=()
for dir in "$@"; do
    column=$(basename "$(cd "$dir" && pwd)")
    for dim in $VBENCH_DIMENSIONS; do
        out="$VBENCH_OUT/$column/$dim"
        if compgen -G "$out/*_eval_results.json" > /dev/null; then
            echo "[$column] $dim: done before, skipped"
            continue
        fi
        mkdir -p "$out"
        echo "[$column] $dim"
        # shellcheck disable=SC2086  # VBENCH_EVALUATE and VBENCH_ARGS are word lists
        $VBENCH_EVALUATE --dimension "$dim" --videos_path "$dir" --mode=custom_input --output_path "$out/" $VBENCH_ARGS
    done
    runs+=(--run "$column=$VBENCH_OUT/$column")
done

# 3. The paper's layout: per-dimension rows, Semantic / Quality / Final.
"$PYTHON" "$HERE/vbench_bridge.py" "${runs[@]}" --aggregate "$VBENCH_AGGREGATE" \
    --md "$VBENCH_OUT/table.md" --csv "$VBENCH_OUT/table.csv"
cat "$VBENCH_OUT/table.md"
echo "wrote $VBENCH_OUT/table.md and $VBENCH_OUT/table.csv"
