#!/usr/bin/env bash
# Causal Forcing on Wan2.1-T2V-1.3B + TokenTrim. Needs the Wan folder and the Causal Forcing checkpoints (README):
#   hf download zhuhz22/Causal-Forcing --local-dir checkpoints
# Usage: scripts/run_causal_forcing.sh chunkwise|framewise|framewise_2step|framewise_1step|longvideo "PROMPT" [args]
#   Frame-wise and chunk-wise default to 21 latent frames (the models' training length), long video to 252.
#   NO_TOKENTRIM=1  the baseline;  MODEL_DIR, CKPT, OUT, SEED, FRAMES override the defaults below.
#   Extra args go to `tokentrim generate`, e.g. --init-image IMG (image-to-video) or --init-video VIDEO.
set -euo pipefail
SETUP="${1:?usage: $0 chunkwise|framewise|framewise_2step|framewise_1step|longvideo \"PROMPT\" [args...]}"; shift
PROMPT="${1:?usage: $0 $SETUP \"PROMPT\" [args...]}"; shift
case "$SETUP" in  # checkpoint and its state-dict entry (docs/spec.md#causal-forcing-checkpoints)
  chunkwise)       CK=chunkwise/causal_forcing.pt;          ENTRY=--no-ema; PIPE=self_forcing;             F=21 ;;
  framewise)       CK=framewise/causal_forcing.pt;          ENTRY=--ema;    PIPE=causal_forcing_framewise; F=21 ;;
  framewise_2step) CK=causal-forcing++/framewise-2step.pt;  ENTRY=--ema;    PIPE=causal_forcing_framewise; F=21 ;;
  framewise_1step) CK=causal-forcing++/framewise-1step.pt;  ENTRY=--ema;    PIPE=causal_forcing_framewise; F=21 ;;
  longvideo)       CK=chunkwise/longvideo.pt;               ENTRY=--ema;    PIPE=rolling_forcing;          F=252 ;;
  *) echo "error: unknown setup '$SETUP'; choose chunkwise, framewise, framewise_2step, framewise_1step or longvideo" >&2
     exit 2 ;;
esac
CONFIG="$(dirname "$0")/../configs/causal_forcing/$SETUP.yaml"
MODEL_DIR="${MODEL_DIR:-wan_models/Wan2.1-T2V-1.3B}"
CKPT="${CKPT:-checkpoints/$CK}"
FRAMES="${FRAMES:-$F}"
SEED="${SEED:-0}"
OUT="${OUT:-outputs/causal_forcing_$SETUP}"
EXTRA=()
if [[ -n "${NO_TOKENTRIM:-}" ]]; then EXTRA+=(--no-tokentrim); OUT="${OUT}_baseline"; fi
exec tokentrim generate --pipeline "$PIPE" --config "$CONFIG" --model-dir "$MODEL_DIR" --checkpoint "$CKPT" $ENTRY \
    --prompt "$PROMPT" --latent-frames "$FRAMES" --seed "$SEED" --out "$OUT/seed${SEED}.mp4" --save-latents \
    "${EXTRA[@]}" "$@"
