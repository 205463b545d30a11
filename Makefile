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

data/synthfacs/synthfacs.json: | $(STAMP)
	$(BIN)/distmtl data synth --out data/synthfacs --preset demo --seed 0

demo: $(STAMP) data/synthfacs/synthfacs.json
	$(BIN)/distmtl compare --config configs/synthfacs_demo.yaml --seeds 1 --jobs 2 --out runs/demo --quiet

# BENCHMARKS.md, reduced: speed, memory and index scaling at one size, and the quality study's
# regime (a) with 1 seed and 300 steps (single, plain MTL, +both, oracle): under 10 minutes on 2 cores.
bench-quick: $(STAMP) data/synthfacs/synthfacs.json
	$(BIN)/python benchmarks/synthfacs_render.py --n 1000
	$(BIN)/python benchmarks/speed.py --batch-sizes 32 --image-sizes 64 --repeats 3
	$(BIN)/python benchmarks/predict_speed.py --repeats 3
	$(BIN)/python benchmarks/memory.py --batch-sizes 32 --image-sizes 64
	$(BIN)/python benchmarks/scaling.py --rows 100000 --no-profile
	$(BIN)/python benchmarks/quality.py --quick --jobs 2 --out runs/bench-quick

clean:
	rm -rf runs .pytest_cache

# Fashion-MNIST (real data for the beyond-faces study) comes from Debian's package.
FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = "0" ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or pass root: DIR in the config)"; exit 1; fi
