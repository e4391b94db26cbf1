# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
STAMP   := $(VENV)/.installed
# A CPU build of torch 2.13.0 is what pip finds on this machine; anything else pulls a CUDA build.
TORCH   := torch==2.13.0
# torchvision is test-only (real third-party architectures). Its C ops are built against CUDA torch,
# so it goes in without deps; tests/conftest.py defines the two op schemas its import needs.
TVISION := torchvision==0.28.0

.PHONY: demo test test-slow install bench bench-qubo bench-speed bench-backends bench-tt bench-paper train-sidd clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" "numpy>=2.0,<2.0.2"
	$(PIP) install -q -e ".[all,test]" "$(TORCH)"
	$(PIP) install -q --no-deps "$(TVISION)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qprune compare --problem denoise --sparsity 0.36 \
	    --methods random,l1-greedy,taylor-greedy,l1-qubo,hybrid-qubo --tune 20 --out out/demo

test: $(STAMP)
	$(VPY) -m pytest -q -n 2 -p no:cacheprovider

test-slow: $(STAMP)
	$(VPY) -m pytest -q -p no:cacheprovider -m slow

bench-qubo: $(STAMP)
	$(VPY) benchmarks/qubo_core.py

bench-speed: $(STAMP)
	$(VPY) benchmarks/pruned_speed.py

bench-backends: $(STAMP)
	$(VPY) benchmarks/backends.py

bench-tt: $(STAMP)
	$(VPY) benchmarks/tt_refine.py

bench-paper: $(STAMP)
	$(VPY) benchmarks/paper_tables.py

bench: bench-qubo bench-speed bench-backends bench-tt bench-paper

# The paper-size denoiser (F = 64) on the SIDD-Small folder; the checkpoint is cached outside git.
# Paper recipe: Adam, StepLR every 10 epochs, 100 epochs; CUDA is used when torch sees one
# (on 2 CPU cores an epoch takes about a quarter of an hour). Override e.g. SIDD_EPOCHS=1.
SIDD_DATA   ?= ../shared/data/sidd_small_256
SIDD_CKPT   ?= $(HOME)/.cache/qprune/denoise_sidd_f64.pt
SIDD_EPOCHS ?= 100

train-sidd: $(STAMP)
	$(VENV)/bin/qprune train --problem denoise --width 64 --data $(SIDD_DATA) --epochs $(SIDD_EPOCHS) \
	    --schedule step --device auto -o $(SIDD_CKPT)

clean:
	rm -rf $(VENV) out *.egg-info
