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

.PHONY: demo test test-slow install bench bench-quality bench-finetune bench-qubo bench-speed bench-backends bench-tt bench-tt-refine bench-tt-budget bench-paper bench-paper-tt bench-paper-fisher bench-paper-fisher-tt bench-ablation bench-peers bench-train bench-scale bench-budgets bench-rounding gpu-bundle train-sidd clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" "numpy>=2.0,<2.0.2"
	$(PIP) install -q -e ".[all,test]" "$(TORCH)"
	$(PIP) install -q --no-deps "$(TVISION)"
	touch $(STAMP)

install: $(STAMP)

# The bundled denoiser at four MACs budgets, every method: out/demo/compare.{md,json,png} (the curve) and figure.png
# (one test image: noisy / unpruned / best QUBO / best greedy / clean). docs/img/ holds the committed run's pictures.
demo: $(STAMP)
	$(VENV)/bin/qprune compare --problem denoise --budget macs=0.9,0.8,0.7,0.6,0.5,0.4 \
	    --methods random,taylor-greedy,fisher-greedy,hybrid-qubo,fisher-qubo --no-remove --figure --out out/demo

test: $(STAMP)
	$(VPY) -m pytest -q -n 2 -p no:cacheprovider

test-slow: $(STAMP)
	$(VPY) -m pytest -q -p no:cacheprovider -m slow

# Every method at equal MACs (0.8/0.6/0.5/0.4) and at 36 % of the units, on the SIDD F = 64 model (default space and
# residual-branch units), the bundled F = 16 denoiser and digits, 5 calibration draws, paired tests; writes
# benchmarks/results/quality.{json,md,png} after every draw and resumes from it (several hours on this CPU).
bench-quality: $(STAMP)
	$(VPY) benchmarks/quality.py

# Does that lead survive recovery fine-tuning? SIDD F = 64 at half the MACs, fisher-qubo vs taylor-greedy, 3 seeds,
# one epoch each (resumable); writes benchmarks/results/finetune_quality.{json,md}.
bench-finetune: $(STAMP)
	$(VPY) benchmarks/finetune_quality.py

bench-qubo: $(STAMP)
	$(VPY) benchmarks/qubo_core.py

bench-speed: $(STAMP)
	$(VPY) benchmarks/pruned_speed.py

bench-backends: $(STAMP)
	$(VPY) benchmarks/backends.py

# Every prune() stage against the number of units (torchvision models, ~700 to ~25,000 units), with
# torch-pruning's global Taylor pruning timed beside it; writes benchmarks/results/scale.{json,md,png}.
bench-scale: $(STAMP)
	$(VPY) benchmarks/scale.py

# Methods at equal MACs budgets (hybrid-qubo, our greedy, torch-pruning's global ranking) on the digits
# classifier and the trained SIDD model; writes benchmarks/results/budgets.{json,md,png}.
bench-budgets: $(STAMP)
	$(VPY) benchmarks/budgets.py

# How fast the TT scores a mask: the old scorer (the code of commit TT_OLD_REF, the last before the fast scorer:
# float32, the whole validation split) against bfloat16, fewer validation images and central crops, on the F = 64
# model's 16-layer problem, with the rank correlation of each against exact scores; writes
# benchmarks/results/tt_scorer.{json,md}. TT_DEVICE=auto scores on a CUDA device when torch sees one.
TT_DEVICE ?= cpu
TT_OLD_REF ?= 5d593bc
TT_OLD_DIR := .bench/qprune-$(TT_OLD_REF)
bench-tt: $(STAMP)
	rm -rf $(TT_OLD_DIR) && mkdir -p $(TT_OLD_DIR) && git archive $(TT_OLD_REF) | tar -x -C $(TT_OLD_DIR)
	ln -s ../backends $(TT_OLD_DIR)/qprune/backends && ln -s ../problems $(TT_OLD_DIR)/qprune/problems
	$(VPY) benchmarks/tt_scorer.py --old-code $(TT_OLD_DIR) --device $(TT_DEVICE)

# The exact scorer against one gated pass per mask, and TT from the hybrid-qubo mask on the sub-problem and the
# chunked full model; writes benchmarks/results/tt_refine.{json,md}.
bench-tt-refine: $(STAMP)
	$(VPY) benchmarks/tt_refine.py --device $(TT_DEVICE)

# One TT run at the paper's 20,000 evaluations on the 16-layer problem, the gain against the evaluation count;
# resumable (a score journal in benchmarks/journals/, committed so that a fresh checkout goes on from it);
# writes benchmarks/results/tt_budget.{json,md,png}.
bench-tt-budget: $(STAMP)
	$(VPY) benchmarks/tt_budget.py

# For a GPU machine that has its own Python, CUDA PyTorch and JAX but no package index: packs the rest
# (wheels for Python GPU_PY, the checkpoint bench-tt would use, its dataset) into .gpu/; copy the
# checkout there and run `bash benchmarks/gpu_tt.sh .gpu OUTDIR`.
GPU_PY ?= 3.12
gpu-bundle: $(STAMP)
	$(VPY) benchmarks/gpu_bundle.py --out .gpu --python $(GPU_PY)

# The paper-size denoiser (F = 64) on the SIDD-Small folder, shipped as problems/checkpoints/denoise_sidd_f64.pt.
# Recipe: Adam 1e-3, batch 16, 128x128 quadrants x3 flips, cosine schedule over 30 epochs (the paper: StepLR
# every 10 epochs, 100 epochs; see problems/checkpoints/README.md). CUDA is used when torch sees one.
# --resume: the state is saved after every epoch, so a stopped run continues where it was
# (on this 2-core CPU one epoch takes about 12 minutes).
SIDD_DATA   ?= ../shared/data/sidd_small_256
SIDD_CKPT   ?= problems/checkpoints/denoise_sidd_f64.pt
SIDD_EPOCHS ?= 30
SIDD_TRAIN   = $(VENV)/bin/qprune train --problem denoise --width 64 --data $(SIDD_DATA) \
	    --epochs $(SIDD_EPOCHS) --schedule cosine --device auto --resume -o $(SIDD_CKPT) \
	    --curves $(SIDD_CKPT:.pt=_curves.png)

train-sidd: $(STAMP)
	$(SIDD_TRAIN)

# The paper tables use the shipped F = 64 SIDD model (train-sidd makes it again). bench-paper-tt then adds the
# hybrid-qubo+tt rows of the 4/8/16-layer sub-problems to that finished file: TT_BUDGET evaluations per run, the
# masks scored in TT_PRECISION on TT_IMAGES validation images, their central TT_CROP x TT_CROP pixels (empty: whole
# images; make bench-tt measures what each costs in ranking), the winner re-scored in float32 on the whole split.
# Resumable: per setting, and each run from its score journal in benchmarks/journals/paper_tables/; a setting whose
# TT rows were made with another budget or scorer is made again. float32: the shipped 8- and 16-layer rows were made
# on a CPU without native bfloat16, where float32 is the faster (TT_PRECISION=bfloat16 on one with AMX).
# TT_SETTINGS runs only some settings; TT_TAKE=file.json takes settings that another such run wrote beside it.
# bench-paper-fisher-tt does the same for the fisher-qubo rows of paper_tables_fisher.json (fisher-qubo+tt).
PAPER_TT ?=
TT_BUDGET ?= 1000
TT_PRECISION ?= float32
TT_SETTINGS ?= 4,8,16
TT_TAKE ?=
TT_IMAGES ?= 36
TT_CROP ?= 80
TT_ARGS = --tt-budget $(TT_BUDGET) --tt-precision $(TT_PRECISION) --tt-images $(TT_IMAGES) $(if $(TT_CROP),--tt-crop $(TT_CROP)) --tt-settings $(TT_SETTINGS) $(foreach f,$(TT_TAKE),--tt-take $(f))
bench-paper: $(STAMP)
	$(VPY) benchmarks/paper_tables.py --checkpoint $(SIDD_CKPT) --vary-calibration --seeds 0,1,2,3,4 --methods taylor-greedy,l1-qubo,hybrid-qubo,random,fisher-qubo --tune 12 $(PAPER_TT)

# the loss-model rows added to the shipped tables (same model, seeds and calibration draws; resumable per
# setting; the run that wrote paper_tables_fisher.json stopped after the full-model setting)
bench-paper-fisher: $(STAMP)
	$(VPY) benchmarks/paper_tables.py --checkpoint $(SIDD_CKPT) --add-to benchmarks/results/paper_tables_fisher.json --methods fisher-qubo --out-name paper_tables_fisher

bench-paper-tt: $(STAMP)
	$(VPY) benchmarks/paper_tables.py --tt-from benchmarks/results/paper_tables.json $(TT_ARGS)

bench-paper-fisher-tt: $(STAMP)
	$(VPY) benchmarks/paper_tables.py --tt-from benchmarks/results/paper_tables_fisher.json --tt-base fisher-qubo --out-name paper_tables_fisher $(TT_ARGS)

# torch-pruning 1.6.1's own criteria (its groups, its MetaPruner) beside taylor-greedy and hybrid-qubo at the
# full-model k of the F = 64 model; writes benchmarks/results/peers.{json,md}. A hybrid row with the weights in
# PEERS_WEIGHTS is added when that file exists.
PEERS_WEIGHTS ?= benchmarks/results/peers.weights.json
bench-peers: $(STAMP)
	$(VPY) benchmarks/peers.py --checkpoint $(SIDD_CKPT) $(if $(wildcard $(PEERS_WEIGHTS)),--weights $(PEERS_WEIGHTS))

# Issue 17's referee checks on the same model: term ablation at 36 %, gamma search vs a quadratic penalty,
# and QUBO energy vs test PSNR over 200+ exact-k masks (Spearman); writes benchmarks/results/ablation.{json,md,png}.
bench-ablation: $(STAMP)
	$(VPY) benchmarks/ablation.py --checkpoint $(SIDD_CKPT) --test-images 8

# Do multiples of 8 channels pay on this CPU, and what do residual-branch units cost? A c -> c 3x3 conv swept
# over c, and the SIDD model at 50/70 % of its MACs, round_to 1 and 8, with and without branch units;
# writes benchmarks/results/rounding.{json,md}.
bench-rounding: $(STAMP)
	$(VPY) benchmarks/rounding.py

# Training step time per setting (layout, precision, compile, threads) and the fp32-vs-bf16 quality check.
bench-train: $(STAMP)
	$(VPY) benchmarks/train_speed.py

bench: bench-quality bench-finetune bench-qubo bench-speed bench-backends bench-tt bench-paper bench-paper-tt bench-peers bench-ablation bench-budgets bench-rounding bench-scale bench-train

clean:
	rm -rf $(VENV) out *.egg-info .gpu .bench
