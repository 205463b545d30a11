PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench-quick lint clean fashion-mnist

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

demo: $(STAMP)
	$(BIN)/distmtl data synth --out data/synthfacs --preset demo --seed 0
	$(BIN)/distmtl compare --config configs/synthfacs_demo.yaml --seeds 3 --out runs/demo

clean:
	rm -rf runs .pytest_cache
