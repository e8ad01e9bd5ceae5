#!/usr/bin/env bash
# LongLive-1.3B on Wan2.1-T2V-1.3B + TokenTrim (docs/longlive.md). Needs the Wan folder and LongLive's files:
#   hf download Efficient-Large-Model/LongLive --local-dir longlive_models
# Usage: scripts/run_longlive.sh single|infinite "PROMPT" [args]     one prompt (infinite: slot RoPE)
#        scripts/run_longlive.sh interactive TIMELINE.yaml [args]     prompt switches (--timeline)
#   Defaults as LongLive's configs: single 120 latent frames, seed 0; interactive 240, seed 1; infinite 1050, seed 0.
#   The LoRA is merged once into $MERGED (tokentrim merge-lora) and reused.
#   NO_TOKENTRIM=1  the baseline;  MODEL_DIR, LL_DIR, MERGED, OUT, SEED, FRAMES override the defaults below.
set -euo pipefail
MODE="${1:?usage: $0 single|infinite \"PROMPT\" | interactive TIMELINE [args...]}"; shift
WHAT="${1:?usage: $0 $MODE \"PROMPT\" | TIMELINE [args...]}"; shift
case "$MODE" in
  single)      INPUT=(--prompt "$WHAT");   F=120;  S=0; CONFIG=longlive.yaml ;;
  interactive) INPUT=(--timeline "$WHAT"); F=240;  S=1; CONFIG=longlive.yaml ;;
  infinite)    INPUT=(--prompt "$WHAT");   F=1050; S=0; CONFIG=longlive_infinite.yaml ;;
  *) echo "error: unknown mode '$MODE'; choose single, interactive or infinite" >&2; exit 2 ;;
esac
MODEL_DIR="${MODEL_DIR:-wan_models/Wan2.1-T2V-1.3B}"
LL_DIR="${LL_DIR:-longlive_models}"
MERGED="${MERGED:-$LL_DIR/models/longlive_merged.safetensors}"
FRAMES="${FRAMES:-$F}"
SEED="${SEED:-$S}"
OUT="${OUT:-outputs/longlive_$MODE}"
if [[ ! -f "$MERGED" ]]; then
  tokentrim merge-lora "$LL_DIR/models/longlive_base.pt" "$LL_DIR/models/lora.pt" -o "$MERGED"
fi
EXTRA=()
if [[ -n "${NO_TOKENTRIM:-}" ]]; then EXTRA+=(--no-tokentrim); OUT="${OUT}_baseline"; fi
exec tokentrim generate --pipeline longlive --config "$(dirname "$0")/../configs/$CONFIG" --model-dir "$MODEL_DIR" \
    --checkpoint "$MERGED" "${INPUT[@]}" --latent-frames "$FRAMES" --seed "$SEED" --out "$OUT/seed${SEED}.mp4" \
    --save-latents "${EXTRA[@]}" "$@"
