# Outpost: the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.outpost-ready
WHEEL_CACHE ?= $(HOME)/.cache/outpost/wheels
MODEL_CACHE ?= $(HOME)/.cache/outpost/models
export OUTPOST_MODEL_CACHE := $(MODEL_CACHE)

.PHONY: setup demo test lint typecheck unit eval bench clean

$(STAMP): pyproject.toml scripts/bootstrap.py
	$(PYTHON) scripts/bootstrap.py --venv $(VENV) --wheel-cache $(WHEEL_CACHE)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

test: lint typecheck
	$(VENV)/bin/pytest

eval: $(STAMP)
	$(PY) -m evals.rag --check-baseline

bench: $(STAMP)
	$(PY) benchmarks/serving_llm.py
	$(PY) benchmarks/ollama_api.py
	$(PY) benchmarks/serving_structured.py
	$(PY) benchmarks/prompt_lookup.py
	$(PY) benchmarks/agent_install.py
	$(PY) benchmarks/vision.py
	$(PY) benchmarks/rag_retrieval.py
	$(PY) benchmarks/control_plane_fleet.py
	$(PY) benchmarks/telemetry_ingest.py
	$(PY) benchmarks/footprint.py
	$(PY) benchmarks/bundle_install.py
	$(PY) benchmarks/delta_updates.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo
