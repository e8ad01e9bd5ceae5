#!/usr/bin/env bash
# self_forcing + TokenTrim on the official checkpoint, 30 s. Usage: scripts/run_self_forcing.sh "PROMPT" [args]  (see run_pipeline.sh)
exec "$(dirname "$0")/run_pipeline.sh" self_forcing "$@"
