# Every target sets up .venv itself, so a fresh clone needs nothing but Python 3.10+.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# KeOps compiles formulas on first use; keep its cache inside the ignored build folder.
export KEOPS_CACHE_FOLDER := $(CURDIR)/build/keops
export MPLBACKEND := Agg

.PHONY: test test-kernels demo bench clean

# One stamp per set of extras (setup.cfg): each target installs what it runs, into the same
# .venv, and reinstalls when setup.cfg, constraints.txt or pyproject.toml change.
#   test  -> .[dev]       everything tests/ imports
#   demo  -> .  (core)    WMDD as released but for its budget (200 iterations, 100 student epochs) and
#                         its teacher (ConvNet-BN by our recipe; docs/fidelity.md); the grid PNG by Pillow
#   bench -> .[sinkhorn]  benchmarks/metric_speed.py compares against GeomLoss
# Every pip install goes through constraints.txt (torch pinned to a CPU build).
$(VENV)/.installed-%: setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.$(if $(filter core,$*),,[$*])'
	touch $@

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# The suite again on other CPUs' vector kernels, emulated with ATen's generic ones and its AVX2
# ones (ATEN_CPU_CAPABILITY; on an AVX2-only machine the second is the first pass's). Float
# rounding differs between them, so a test comparing bits of different computations fails here.
KERNELS ?= default avx2
test-kernels: $(VENV)/.installed-dev
	@for cap in $(KERNELS); do \
		echo "== ATEN_CPU_CAPABILITY=$$cap"; \
		ATEN_CPU_CAPABILITY=$$cap $(BIN)/python -m pytest -q || exit 1; \
	done

demo: $(VENV)/.installed-core
	$(BIN)/ddmetrics distill --dataset digits --method wmdd --ipc 10 --iterations 200 --no-full --out runs/demo --overwrite \
		--set teacher_arch=convnet_bn teacher_recipe=ours teacher_epochs=30 eval_epochs=100

bench: $(VENV)/.installed-sinkhorn
	$(BIN)/python benchmarks/metric_speed.py

clean:
	rm -rf $(VENV) build runs
