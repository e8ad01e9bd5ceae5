#!/usr/bin/env bash
# The GPU check: environment; correctness (the tiny preset in fp32 on CUDA vs the CPU, both pipelines, TokenTrim
# pruning, the static KV cache too; bf16 finite); host syncs per block; speed of both pipelines at 480x832 with the
# full-size DiT (random weights, bf16, 120 latent frames = 30 s): the loop's fps, end-to-end fps with the VAE's
# decoding timed apart, block and first-block latency, TokenTrim and TokenTrim + FlowMo overheads (alternating in
# one process), scoring share; peak memory of a 30 s video with VAE decoding and no text encoder on the device,
# against 24 GiB; the static against the dynamic KV cache; flash-attn (if it imports) and torch.compile on the
# static cache against SDPA in eager mode; FlowMo on every block; the memory run again with int8 DiT weights.
#
#   scripts/gpu_check.sh OUTDIR               # on a CUDA machine: under 8 minutes on one H100 / H200
#   scripts/gpu_check.sh --dry-run OUTDIR     # the same steps on the CPU, tiny preset, about a minute (CI)
#   scripts/gpu_check.sh --requirements       # the project's dependencies except torch (for pip, see below)
#
# Writes OUTDIR/gpu_check.json and OUTDIR/gpu_check.md (and OUTDIR/compile_bench.json), rewritten after every step
# and as a step measures, so what was measured is on disk even if a later step fails, hangs or the slot ends.
# Exit status: 0 when every step passed or was skipped, 1 when one failed or ran out of time, 2 for bad usage.
#
# Time budgets on the GPU, in seconds (`GPU.budgets` in tools/gpu_check/check.py; a step that runs out is
# stopped and keeps what it measured). Expected: estimates (FLOP counts; the model build timed on a CPU), not yet
# measured on a GPU.
#   step                   budget  expected
#   environment                15         2
#   correctness                60        20   tiny preset; includes CUDA start-up
#   host_syncs                 45        10   tiny preset
#   model                      60        25   seeded initialisation of 1.42 B parameters on the CPU, copy to the GPU
#   speed_self_forcing        100        75   3 runs of 120 latent frames, each block decoded; 3 short warm-ups
#   speed_rolling_forcing     120       100   the same
#   memory                     90        60   one Rolling Forcing run, VAE decode of 477 frames at 480x832
#   static_cache               40        25   Self Forcing baseline, dynamic and static cache, 30 latent frames
#   attention_flash            70        55   skipped unless flash-attn imports
#   compile                   150       120   process start, model build, eager runs, inductor compilation, compiled runs
#   flowmo                    100      rest   FlowMo off / first block / every block, 30 latent frames
#   memory_int8                60      rest   the memory run with int8 DiT weights (skipped without torchao)
# The Python part stops starting steps at 450 s; `timeout` below ends it at 470 s in any case (SIGKILL at 480 s).
#
# Running it on a GPU machine
# ---------------------------
# Nothing needs installing: this script puts the project on PYTHONPATH (so does `PYTHONPATH=/path/to/repo
# python -m tools.gpu_check OUTDIR`). It runs $PYTHON if set, else .venv/bin/python if there is one, else
# python3; that Python needs torch with CUDA and the project's other dependencies (checked first). A machine with
# torch preinstalled and no network gets the others as wheels downloaded beforehand:
#
#   # 1. on a machine with network (Python >= 3.11), for the GPU machine's Python and platform, e.g. CPython 3.12:
#   scripts/gpu_check.sh --requirements > requirements-gpu.txt
#   python3 -m pip download -d wheels/ -r requirements-gpu.txt --only-binary=:all: \
#       --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
#   # 2. copy wheels/, requirements-gpu.txt and this repository over; on the GPU machine:
#   python3 -m pip install --no-index --find-links wheels/ -r requirements-gpu.txt
#   #    or, where site-packages cannot be written: add --target /tmp/site, then export PYTHONPATH=/tmp/site
#   # 3. optional: flash-attn, the same way, if a wheel exists for that torch and CUDA
#   # 4. run it and keep OUTDIR:
#   PYTHON=python3 scripts/gpu_check.sh gpu_check_out
#
# Then commit OUTDIR's files under docs/benchmarks/ and put the figures into docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

usage() { echo "$0: ${1:+$1; }usage: $0 [--dry-run] OUTDIR | --requirements" >&2; exit 2; }

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3
fi
command -v "$PY" >/dev/null || { echo "$0: no Python at $PY; set PYTHON to one with torch" >&2; exit 2; }

# The project's dependencies, read from pyproject.toml: `requirements` prints them except torch; `missing` the
# names of those not installed.
deps() {
    "$PY" - "$ROOT/pyproject.toml" "$1" <<'EOF'
import importlib.metadata, re, sys, tomllib

deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
named = [(re.match(r"[A-Za-z0-9_.-]+", d).group(), d) for d in deps]
if sys.argv[2] == "requirements":
    print("\n".join(d for name, d in named if name != "torch"))
else:
    def installed(name):
        try:
            return bool(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            return False
    print(" ".join(name for name, _ in named if not installed(name)))
EOF
}

DRY=()
case "${1:-}" in
    --requirements) [[ $# -eq 1 ]] || usage; deps requirements; exit 0 ;;
    --dry-run) DRY=(--dry-run); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
[[ $# -eq 1 ]] || usage
OUTDIR="$1"
[[ "$OUTDIR" != -* ]] || usage "unknown option $OUTDIR"

MISSING="$(deps missing)"
if [[ -n "$MISSING" ]]; then
    echo "$0: $PY lacks $MISSING; install them (the header of $0 says how without network) or set PYTHON" >&2
    exit 2
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LIMIT=470
if [[ ${#DRY[@]} -gt 0 ]]; then
    LIMIT=1260  # the dry run takes about a minute; it stops starting steps at 1200 s (a CPU shared with others)
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny models gain nothing from threads; shared cores lose
fi
exec timeout -k 10 "$LIMIT" "$PY" -m tools.gpu_check "${DRY[@]}" "$OUTDIR"
