#!/usr/bin/env bash
# rolling_forcing + TokenTrim on the official checkpoint, 30 s. Usage: scripts/run_rolling_forcing.sh "PROMPT" [args]  (see run_pipeline.sh)
exec "$(dirname "$0")/run_pipeline.sh" rolling_forcing "$@"
