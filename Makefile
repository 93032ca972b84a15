# Everything a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench bench-classify bench-watermark soak capacity helm-policies clean vllm-check

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e .
	touch $@

# The ml extra pins torch==2.13.0 (give pip PyTorch's CPU-only index where it would pick
# the multi-GB CUDA build; see the Dockerfile's TORCH_INDEX_URL); the embedding classifier's tests
# need it, and CI sets GATEWAY_REQUIRE_ML=1 so they fail rather than skip without it.
$(VENV)/.test-installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e '.[test,ml,redis,otel]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/gateway serve

lint: $(VENV)/.test-installed
	$(BIN)/ruff check gateway tests bench vllm_check
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python bench/proxy.py

# Real vLLM (CPU build) behind the gateway, and a new recording for the simulator's
# fidelity test: see vllm_check/README.md. Not part of `make test`: a multi-GB install.
vllm-check:
	VLLM_VENV=.vllm-venv PYTHON=$(PYTHON) bash vllm_check/setup_cpu.sh
	VLLM_PYTHON=.vllm-venv/bin/python bash vllm_check/run.sh

bench-classify: $(VENV)/.test-installed
	$(BIN)/python bench/classify.py

bench-watermark: $(VENV)/.test-installed
	$(BIN)/python bench/watermark.py

# Minutes of steady streams and requests through the full pipeline; fails on growth of
# memory, descriptors or tasks after the warm-up, or on any error (bench/soak.py --help).
soak: $(VENV)/.test-installed
	$(BIN)/python bench/soak.py

# Highest request rate and most concurrent streams under 50 ms p99 overhead, full
# pipeline and bare proxy side by side (about half an hour; bench/capacity.py --help).
capacity: $(VENV)/.test-installed
	$(BIN)/python bench/capacity.py

# The chart ships a copy of policies/; a test fails when the copy is stale.
helm-policies:
	cp policies/*.yaml helm/gateway/files/policies/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
