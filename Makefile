# `make run` serves the default `local` distribution; `make test` runs `make lint` (ruff and mypy), then the whole
# suite; `make format` rewrites the tree as `make lint` wants it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes with the torch/embeddings extras, pinned in pyproject.toml to a range torch==2.13.0 satisfies.
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: run lint format test test-quick fuzz bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip "setuptools>=77" wheel

# Stamp files: reinstall only when the project's metadata changes.
$(VENV)/.installed-run: pyproject.toml setup.py | $(BIN)/python
	$(PIP_INSTALL) -e ".[llama-cpp,torch,embeddings,faiss,math,code-shield,datasets]"
	touch $@

$(VENV)/.installed-test: pyproject.toml setup.py | $(BIN)/python
	$(PIP_INSTALL) -e ".[llama-cpp,torch,embeddings,faiss,pgvector,math,code-shield,datasets,test,lint]"
	touch $@

install: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/llama-stack run local $(ARGS)

# mypy checks the providers too, so it needs their libraries: the test install has them all.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck.py
	$(BIN)/mypy tools

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick subset for iterating: no real model, no server subprocesses, no lint.
test-quick: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# A longer fuzz run than make test's: FUZZ_EXAMPLES per route, the coverage phase, a fresh seed (FUZZ_SEED=n replays one).
FUZZ_EXAMPLES ?= 300
fuzz: $(VENV)/.installed-test
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz.py -p no:cacheprovider $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python bench/llama_cpp_server.py
	$(BIN)/python bench/torch_batch.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/agents.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/synthetic_data.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
