#!/usr/bin/env bash
# One pipeline on Wan2.1-T2V-1.3B + TokenTrim, 30 s (120 latent frames). Needs the downloaded weights (README).
# Usage: scripts/run_pipeline.sh self_forcing|rolling_forcing "PROMPT" [extra generate args / key=value overrides]
#   NO_TOKENTRIM=1  the baseline;  MODEL_DIR, CKPT, OUT, SEED, FRAMES override the defaults below.
set -euo pipefail
PIPELINE="${1:?usage: $0 self_forcing|rolling_forcing \"PROMPT\" [args...]}"; shift
PROMPT="${1:?usage: $0 $PIPELINE \"PROMPT\" [args...]}"; shift
MODEL_DIR="${MODEL_DIR:-wan_models/Wan2.1-T2V-1.3B}"
CKPT="${CKPT:-checkpoints/${PIPELINE}_dmd.pt}"
FRAMES="${FRAMES:-120}"
SEED="${SEED:-0}"
OUT="${OUT:-outputs/$PIPELINE}"
EXTRA=()
if [[ -n "${NO_TOKENTRIM:-}" ]]; then EXTRA+=(--no-tokentrim); OUT="${OUT}_baseline"; fi
exec tokentrim generate --pipeline "$PIPELINE" --model-dir "$MODEL_DIR" --checkpoint "$CKPT" \
    --prompt "$PROMPT" --latent-frames "$FRAMES" --seed "$SEED" \
    --out "$OUT/seed${SEED}.mp4" --save-latents "${EXTRA[@]}" "$@"
