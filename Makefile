# The two set-up commands: `make install` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: install test lint bench bench-plan bench-synth bench-run bench-publish demo demo-csm clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check narrate tests bench
	$(VENV)/bin/ruff format --check narrate tests bench

bench: bench-plan bench-synth bench-run bench-publish

bench-plan: install
	$(PY) bench/plan_scale.py

bench-publish: install
	$(PY) bench/publish.py

clean:
	rm -rf $(VENV) .narrate out .pytest_cache
