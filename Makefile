# Set-up is part of every target: `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# CPU build on a laptop / CI; on a CUDA machine the same pin resolves to the CUDA wheel of that version.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PRESET ?= toy
OUT ?= outputs
# A held-out toy scene: its prompt and observed first block start the demo rollouts.
DEMO_SCENE ?= 20000000
# The toy's matrices are too small to share across threads: one thread ran a 120-frame toy rollout in 18 s on a
# busy 2-core CPU, two threads (torch's default there) in 121 s, waiting on each other.
DEMO_THREADS ?= 1

.PHONY: install test test-slow test-all lint demo reproduce figures clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,demo,quant]"
	touch $@

# Test tiers (README.md#tests). `make test`: the unit and fast integration tests; `make test-slow`: the rest (tests
# marked slow or browser); `make test-all`: both in one run. Tests marked gpu need CUDA and are left out of all three.
# One torch thread per test process (tests/conftest.py); the 15 slowest tests at the end. The fast tier runs in two
# worker processes (pytest-xdist: on a busy machine two processes get twice the share of the cores); the slow tiers
# run in one (their signal and timing tests, the browser).
PYTEST = $(BIN)/python -m pytest --durations=15
test: install
	$(PYTEST) -n 2 -m "not slow and not browser and not gpu"

test-slow: install
	$(PYTEST) -m "(slow or browser) and not gpu"

test-all: install
	$(PYTEST) -m "not gpu"

lint: install
	$(BIN)/ruff check tokentrim tokentrim_core tests scripts tools
	$(BIN)/ruff format --check tokentrim tokentrim_core tests scripts tools

demo: install
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/tokentrim compare --preset toy --scene $(DEMO_SCENE) --latent-frames 120 --seed 0 \
		--fault blob --fault-block 6 --out $(OUT)/demo
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/tokentrim compare --preset toy --scene $(DEMO_SCENE) --latent-frames 120 \
		--seed 0 --out $(OUT)/demo_clean
	@echo "baseline | TokenTrim, same seed, a fault injected at block 6: $(OUT)/demo/compare.mp4 (drift.png, heatmap.png, visibility.json)"
	@echo "the same without a fault: $(OUT)/demo_clean/compare.mp4"

# `make reproduce` (toy, CPU), `make reproduce PRESET=tiny` (a small CPU smoke grid, run by CI), or the real
# weights on a GPU: `make reproduce MODEL_DIR=wan_models/Wan2.1-T2V-1.3B CKPT_SF=... CKPT_RF=...`.
ifeq ($(PRESET),tiny)
REPRO_ARGS ?= --num-prompts 2 --latent-frames 15 --segment-seconds 1
endif
ifdef MODEL_DIR
REPRO_MODEL = --model-dir $(MODEL_DIR) $(if $(CKPT_SF),--checkpoint-sf $(CKPT_SF)) $(if $(CKPT_RF),--checkpoint-rf $(CKPT_RF))
else
REPRO_MODEL = --preset $(PRESET)
endif
RESULTS ?= results

reproduce: install
	$(BIN)/tokentrim reproduce $(REPRO_MODEL) --out $(RESULTS) $(REPRO_ARGS)

clean:
	rm -rf $(VENV) outputs results .pytest_cache
