# The two set-up commands: `make install` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install test lint bench bench-plan bench-spoken bench-synth bench-run bench-publish bench-quality bench-formats bench-fidelity bench-gpu demo demo-csm clean

install: $(VENV)/.installed

# pip compiles narrate/_textcore.cpp (g++ and the Python headers); editing it reinstalls.
$(VENV)/.installed: pyproject.toml narrate/_textcore.cpp
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check narrate tests bench
	$(VENV)/bin/ruff format --check narrate tests bench

bench: bench-plan bench-spoken bench-synth bench-run bench-publish bench-quality bench-formats

bench-plan: install
	$(PY) bench/plan_scale.py

bench-spoken: install
	$(PY) bench/spoken.py

bench-synth: install
	$(PY) bench/synth_batching.py

bench-run: install
	$(PY) bench/pipeline_overlap.py

bench-publish: install
	$(PY) bench/publish.py
	$(PY) bench/publish_db.py
	$(PY) bench/publish_run.py

bench-quality: install
	$(PY) bench/quality.py

bench-formats: install
	$(PY) bench/formats.py

# narrate's frame loop against transformers' generate at CSM-1B's real shape (random weights):
# a few frames on the CPU (FIDELITY_ARGS="--device cuda --frames 32" on a GPU).
FIDELITY_ARGS ?=
bench-fidelity: install
	$(PY) bench/fidelity.py $(FIDELITY_ARGS)

# CsmEngine end to end at CSM-1B's shape (random weights) on a CUDA GPU, B = 1, 16, 64, eager
# and CUDA graphs, then bench-fidelity's figures there (GPU_ARGS=--dry-run: the CPU, tiny).
GPU_ARGS ?=
bench-gpu: install
	$(PY) bench/gpu_synth.py $(GPU_ARGS)

# The demos skip the AudioSeal watermark: its weights cannot be downloaded on a fresh offline
# machine, and a watermark from untrained weights would mean nothing. The opt-out is logged and
# recorded in each file's metadata; real runs keep the watermark. To include it once the
# weights are cached: make demo DEMO_WATERMARK=
DEMO_WATERMARK ?= --no-watermark
DEMO_RUN = $(VENV)/bin/narrate run manifests/demo.jsonl $(DEMO_WATERMARK)
CSM_MODEL ?= sesame/csm-1b

# eSpeak NG (the preview engine) on the CPU: no model download, renders in seconds.
demo: install
	$(DEMO_RUN) --engine preview --devices cpu --out out --report out/report.json
	@echo "listen: $(CURDIR)/out/report.html (the review page; files: out/*.wav, records: out/status.json, report: out/report.json)"

# Sesame CSM-1B, on every GPU (the CPU works, slowly). The model is gated: accept its terms on
# Hugging Face and set HF_TOKEN; this target may download it (CSM_MODEL=DIR for a local copy).
demo-csm: export HF_HUB_OFFLINE := 0
demo-csm: install
	$(DEMO_RUN) --engine csm --model $(CSM_MODEL) --out out/csm --report out/csm/report.json
	@echo "listen: $(CURDIR)/out/csm/report.html (the review page; files: out/csm/*.wav, records: out/csm/status.json)"

clean:
	rm -rf $(VENV) .narrate out .pytest_cache build narrate/*.so
