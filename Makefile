# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spikebot vpr eval --dataset demo --method sad --seq-len 5 --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

benchmark: $(STAMP)
	$(BIN)/spikebot vpr benchmark --method sad --seq-len 1 --seq-len 5 --seq-len 10 --out runs/benchmark

clean:
	rm -rf $(VENV) runs .pytest_cache
