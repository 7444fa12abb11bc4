# pathguard: `make serve` and `make test` set up everything they need, idempotently:
# the Debian package dataset-fashion-mnist, a virtualenv with exactly torch==2.13.0 (shared by
# every clone, under ~/.cache/pathguard), and the .libtorch link that cargo uses to find it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

TORCH_VERSION := 2.13.0
CACHE_DIR ?= $(HOME)/.cache/pathguard
VENV := $(CACHE_DIR)/venv-torch-$(TORCH_VERSION)
VENV_OK := $(VENV)/.installed
NUMPY_OK := $(VENV)/.numpy-installed
# Client libraries for the tests of our Python example and of stock tritonclient, in a
# virtualenv of their own so that nothing touches the torch one.
CLIENTS_VENV := $(CACHE_DIR)/venv-clients
CLIENTS_OK := $(CLIENTS_VENV)/.installed-v2
CLIENT_PACKAGES := grpcio==1.85.3 grpcio-tools==1.85.1 numpy==2.4.6 'tritonclient[grpc,http]==2.41.0' websocket-client==1.8.0
FONT := /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
DATA_DIR := /usr/share/datasets/fashion-mnist
DATA_OK := $(DATA_DIR)/t10k-labels-idx1-ubyte.gz
BIN := target/release/pathguard
CARGO ?= cargo

# Training recipe of the shipped model (see README, "The shipped model"): 15 epochs of joint
# decoupling with noisy gates, then epochs with noise-free hard gates at a low learning rate.
STAGE1_ARGS := --epochs 15 --recipe joint --lambda-sparsity 2e-3 --target-density 0.5 --seed 0
STAGE2_ARGS := --epochs 2 --hard-gate-epochs 2 --lr 3e-4 --lambda-sparsity 2e-3 --target-density 0.5 --seed 1
STAGE3_ARGS := --epochs 1 --hard-gate-epochs 1 --lr 2e-4 --lambda-sparsity 2e-3 --target-density 0.5 --seed 4
STAGE4_ARGS := --epochs 1 --hard-gate-epochs 1 --lr 1.5e-4 --lambda-sparsity 2e-3 --target-density 0.5 --seed 5
# The shipped detector: FGSM, PGD-40 and early-stopped PGD at eps 0.05/0.1/0.2 on the first
# 3,000 training images (20% held out for the threshold); about 15 minutes on 2 cores.
DETECTOR_ARGS := --limit 3000 --eps 0.05,0.1,0.2 --methods fgsm,pgd,pgd-early-stop --seed 0
# The adversarially trained model (models/robust): the shipped model fine-tuned on N-FGSM inputs
# at L-inf eps 0.1 (eps ramped up over 2 epochs), the last epoch with noise-free hard gates;
# about 9 minutes an epoch on 2 cores alone, resumable (a checkpoint per epoch in runs/robust,
# committed, so that a stopped run continues from any clone).
# Real colour images (issue 16): the emoji drawings of two npm packages, 64x64 RGB, nine
# Unicode categories as classes (scripts/emoji_dataset.py), trained at 32x32.
EMOJI_DIR := data/emoji
EMOJI_PACKAGES := emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0
EMOJI_ARGS := --data $(EMOJI_DIR) --image-size 32 --resize shorter-side-crop --epochs 20 --max-shift 2 --seed 0
# Its detector is fitted on 1,000 training images, not the shipped detector's 3,000: the
# 3,000-image fit had not finished after 70 minutes on 2 cores (attacks on a robust model run
# all their steps). Mildly corrupted images count as clean, and the threshold is calibrated on
# the last 5,000 test images (held out from training), so that at most 5% of new clean images
# are flagged: measure it on the test images before them (about 20 minutes).
ROBUST_DETECTOR_ARGS := --limit 1000 --eps 0.05,0.1,0.2 --methods fgsm,pgd,pgd-early-stop --seed 0 \
  --benign-corruptions --calibration-split test --calibration-images 5000
ROBUST_ARGS := --init models/default --epochs 8 --hard-gate-epochs 1 --lr 1e-3 --adversarial n-fgsm \
  --adv-eps 0.1 --adv-eps-warmup-epochs 2 --adv-eval-images 500 --seed 0

.PHONY: help setup data torch fonts browser build bench test serve eval default-model detector distribution evaluate adaptive-report robust-model robust-long robust-report corruption-report benign-detector emoji-data emoji-model emoji-resnet compaction-curve soak clean-venv

help:
	@echo "make serve          set up, build, and start pathguard on models/default"
	@echo "make test           set up, build, and run every test"
	@echo "make default-model  retrain models/default and its detector from scratch (about 75 min on 2 cores)"
	@echo "make detector       refit models/default/detector.json (about 20 min on 2 cores)"
	@echo "make distribution   refit models/default/distribution.json, the distance to the training images (about 1 min)"
	@echo "make evaluate       the detection report of README, with its corruption table (about 65 min on 2 cores)"
	@echo "make adaptive-report  detector-aware attacks against models/default (about 40 min on 2 cores)"
	@echo "make robust-model   adversarially train models/robust and fit its detector (about 90 min; resumable)"
	@echo "make robust-long    a longer fine-tune of models/robust into runs/robust-long, with its detector (about 80 min; resumable)"
	@echo "make robust-report  the adaptive attacks against models/robust, alone and with its detector (about 25 min)"
	@echo "make emoji-data     build data/emoji, a colour image folder from two npm emoji packages (about 2 min)"
	@echo "make emoji-model    train, fit and evaluate a model on data/emoji (about 50 min on 2 cores; resumable)"
	@echo "make emoji-resnet   the same with the ResNet-20 preset (models/emoji-resnet, reports/emoji-resnet)"
	@echo "make compaction-curve  group-sparsity fine-tunes at 6 weights, compacted (reports/compaction-curve, about 35 min)"
	@echo "make corruption-report  benign corruptions against the shipped and the corruption-aware detector (about 15 min)"
	@echo "make benign-detector  fit models/default/detector-benign.json with mildly corrupted images as clean (about 30 min)"
	@echo "make bench          throughput of the shipped model and of attacks"
	@echo "make soak           10 minutes of honest and hostile clients against one server (reports/soak)"

setup: data torch fonts browser $(NUMPY_OK) $(CLIENTS_OK)

$(CLIENTS_OK):
	@echo "creating $(CLIENTS_VENV) with grpcio, grpcio-tools, tritonclient and websocket-client"
	@rm -rf $(CLIENTS_VENV)
	python3 -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install --disable-pip-version-check --quiet $(CLIENT_PACKAGES)
	@touch $@

# Captions of the PNG reports (plotters draws text with this font).
fonts: $(FONT)
$(FONT):
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y fonts-dejavu-core || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y fonts-dejavu-core; }

# Headless Chromium and curl, for the tests of the page and of the HTTP API.
CHROMIUM := /usr/bin/chromium
browser: $(CHROMIUM) /usr/bin/curl
$(CHROMIUM) /usr/bin/curl:
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y chromium curl || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y chromium curl; }

# numpy, for the tests that check our NPY files load in Python as they are (it does not
# touch torch's version).
$(NUMPY_OK): $(VENV_OK)
	$(VENV)/bin/pip install --disable-pip-version-check --quiet numpy
	@touch $@

data: $(DATA_OK)
$(DATA_OK):
	@echo "installing Debian package dataset-fashion-mnist"
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y dataset-fashion-mnist || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y dataset-fashion-mnist; }
	@test -f $@

torch: $(VENV_OK)
	@TORCH_DIR=$$($(VENV)/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null) && \
	  [ -n "$$TORCH_DIR" ] && ln -sfn "$$TORCH_DIR" .libtorch

# The stamp is written only after pip succeeds, so an interrupted install is retried.
$(VENV_OK):
	@echo "creating $(VENV) with torch==$(TORCH_VERSION) (about 2 minutes, 4.7 GB)"
	@rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check --quiet torch==$(TORCH_VERSION)
	@touch $@

build: setup
	$(CARGO) build --release --workspace

test: build
	PATHGUARD_PYTHON=$(VENV)/bin/python PATHGUARD_CLIENT_PYTHON=$(CLIENTS_VENV)/bin/python \
	  $(CARGO) test --release --workspace

serve: build
	$(BIN) serve --model models/default

bench: build
	$(CARGO) bench --bench throughput

eval: build
	$(BIN) eval --model models/default --json

default-model: build
	$(BIN) train --out runs/default-stage1 $(STAGE1_ARGS)
	$(BIN) train --init runs/default-stage1 --out runs/default-stage2 $(STAGE2_ARGS)
	$(BIN) train --init runs/default-stage2 --out runs/default-stage3 $(STAGE3_ARGS)
	$(BIN) train --init runs/default-stage3 --out models/default $(STAGE4_ARGS)
	$(BIN) eval --model models/default --json
	$(MAKE) detector distribution

detector: build
	$(BIN) fit-detector --model models/default $(DETECTOR_ARGS)

# How far each screened image is from the training images (models/default/distribution.json).
distribution: build
	$(BIN) fit-distribution --model models/default

# The README's detection table (report.md, report.json, roc.png in reports/evaluate).
evaluate: build
	$(BIN) evaluate --model models/default --out reports/evaluate

# The adaptive-attack table of README (reports/adaptive): 200 test images, 100 steps per
# attack; `pathguard adaptive-report --help` for the full 1,000-step protocol.
adaptive-report: build
	$(BIN) adaptive-report --model models/default --limit 200 --steps 100 --restarts 1 --targets 1 --out reports/adaptive

# The adversarially trained model. Training resumes where a stopped run left off; the
# checkpoint is copied into models/robust (config last) only once all epochs are done.
robust-model: build
	mkdir -p runs/robust models/robust/training-logs
	set -o pipefail; $(BIN) train --out runs/robust --resume $(ROBUST_ARGS) | tee -a runs/robust/train.log
	cp runs/robust/model.safetensors models/robust/ && cp runs/robust/config.json models/robust/
	cp runs/robust/train.log models/robust/training-logs/train.log
	$(BIN) fit-detector --model models/robust $(ROBUST_DETECTOR_ARGS)
	$(BIN) eval --model models/robust --json

# A candidate successor of models/robust (issue 15): models/robust fine-tuned 8 more N-FGSM
# epochs at a lower peak learning rate (about 7 minutes an epoch on 2 cores alone; resumable,
# runs/robust-long committed), then its detector fitted as models/robust's.
ROBUST_LONG_ARGS := --init models/robust --epochs 8 --hard-gate-epochs 1 --lr 5e-4 --adversarial n-fgsm \
  --adv-eps 0.1 --adv-eval-images 500 --seed 2
robust-long: build
	mkdir -p runs/robust-long
	set -o pipefail; $(BIN) train --out runs/robust-long --resume $(ROBUST_LONG_ARGS) | tee -a runs/robust-long/train.log
	$(BIN) fit-detector --model runs/robust-long $(ROBUST_DETECTOR_ARGS)

# The adaptive attacks of `make adaptive-report` against models/robust, with the same settings
# on the first 100 of its 200 images, at the budgets issue 15 compares (L-inf 0.05, 0.1, 0.2;
# no L2): the default pair (every one of the 200 evaded at these budgets), the robust model
# alone and the robust pair. About 30 minutes on 2 cores: most images resist, so most attacks
# run all their steps.
robust-report: build
	$(BIN) adaptive-report --model models/robust --limit 100 --steps 100 --restarts 1 --targets 1 \
	  --eps 0.05,0.1,0.2 --l2-eps 0 --out reports/adaptive-robust

# The emoji image folder, built from the npm packages (fetched with npm, converted with the
# standard library's Python); written whole or not at all.
emoji-data: $(EMOJI_DIR)/.complete
$(EMOJI_DIR)/.complete:
	@command -v npm >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y npm || { $$SUDO apt-get update && $$SUDO apt-get install -y npm; }; }
	rm -rf $(EMOJI_DIR).tmp && mkdir -p $(EMOJI_DIR).tmp/packages
	npm pack --silent --pack-destination $(EMOJI_DIR).tmp/packages $(EMOJI_PACKAGES)
	cd $(EMOJI_DIR).tmp/packages && for t in *.tgz; do mkdir -p $${t%.tgz} && tar xzf $$t -C $${t%.tgz}; done
	python3 scripts/emoji_dataset.py $(EMOJI_DIR).tmp/packages/*/package $(EMOJI_DIR).tmp/images
	rm -rf $(EMOJI_DIR) && mv $(EMOJI_DIR).tmp/images $(EMOJI_DIR) && rm -rf $(EMOJI_DIR).tmp
	touch $@

# A decoupled model of the shipped architecture on the emoji folder (resumable in runs/emoji),
# its detector, and its evaluation report (reports/emoji).
# $(call emoji_run,NAME,TRAIN ARGS): runs/NAME (resumable) -> models/NAME -> reports/NAME.
define emoji_run
	mkdir -p runs/$(1) models/$(1)/training-logs
	set -o pipefail; $(BIN) train --out runs/$(1) --resume $(2) | tee -a runs/$(1)/train.log
	cp runs/$(1)/model.safetensors models/$(1)/ && cp runs/$(1)/config.json models/$(1)/
	cp runs/$(1)/train.log models/$(1)/training-logs/train.log
	$(BIN) fit-detector --model models/$(1) --data $(EMOJI_DIR) --limit 1000 --eps 0.1 --methods fgsm,pgd,pgd-early-stop --seed 0
	$(BIN) eval --model models/$(1) --data $(EMOJI_DIR) --json
	$(BIN) evaluate --model models/$(1) --data $(EMOJI_DIR) --limit 692 --train-limit 1000 --slow-limit 100 --eps 0.1 \
	  --corruption-limit 0 --out reports/$(1)
endef

emoji-model: build emoji-data
	$(call emoji_run,emoji,$(EMOJI_ARGS))

# The same data with the ResNet-20 preset (gated residual blocks, issue 16 part 3).
emoji-resnet: build emoji-data
	$(call emoji_run,emoji-resnet,$(EMOJI_ARGS) --arch resnet20)

# The benign-corruption tables of README (reports/corruptions*), for the shipped detector, for
# the one fitted with mildly corrupted images as clean (make benign-detector) and for the
# robust model's.
corruption-report: build
	$(BIN) corruption-report --model models/default --out reports/corruptions
	$(BIN) corruption-report --model models/default --detector models/default/detector-benign.json \
	  --out reports/corruptions-benign-detector
	$(BIN) corruption-report --model models/robust --out reports/corruptions-robust

benign-detector: build
	$(BIN) fit-detector --model models/default $(DETECTOR_ARGS) --benign-corruptions \
	  --out models/default/detector-benign.json

# Group-sparsity fine-tunes of models/default and their compaction (issue 17; about 15 min).
compaction-curve: build
	scripts/compaction_curve.sh

# The hostile-input soak of BENCHMARKS.md (about 12 minutes; SOAK_S=seconds to change).
soak: build
	scripts/soak.sh

clean-venv:
	rm -rf $(VENV) .libtorch
