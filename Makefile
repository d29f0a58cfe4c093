# Every target sets up .venv itself, so a fresh clone needs nothing but Python 3.10+.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# KeOps compiles formulas on first use; keep its cache inside the ignored build folder.
export KEOPS_CACHE_FOLDER := $(CURDIR)/build/keops
export MPLBACKEND := Agg

.PHONY: test demo bench clean

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/ddmetrics distill --dataset digits --method wmdd --loss wasserstein --ipc 10 --out runs/demo

bench: $(STAMP)
	$(BIN)/python benchmarks/metric_speed.py

clean:
	rm -rf $(VENV) build runs
