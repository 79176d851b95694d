# padim: make targets for setup, the stages, tests and benchmarks. `make help` lists them.

SHELL := /bin/bash
JOB ?= configs/concrete-crack.toml
SHARD ?= 0/1
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PADIM := $(or $(CARGO_TARGET_DIR),target)/release/padim
LITE0_WEIGHTS := weights/efficientnet-lite0.safetensors
LITE_WEIGHTS := $(LITE0_WEIGHTS) weights/efficientnet-lite1.safetensors weights/efficientnet-lite2.safetensors
PHOTOS := .cache/photos/eagle.jpg
AZURITE_VERSION := 3.35.0
AZURITE := .cache/azurite/node_modules/.bin/azurite-blob
SETUP_STAMP := $(VENV)/.padim-setup-$(shell sha256sum scripts/requirements.txt | cut -c1-12)
# libtorch is the torch wheel's; setup links it at .venv/libtorch whatever the venv's Python version.
export LIBTORCH ?= $(abspath $(VENV))/libtorch
# The Pythons scripts/requirements.txt installs on (torch 2.13.0 and numpy 2.4.6 have wheels for them;
# checked with pip install --dry-run). scripts/find_python.sh picks one; PYTHON3=... names it.
SUPPORTED_PYTHONS := 3.13 3.12 3.11

.PHONY: help setup system weights build run split extract fit score report submit-slurm test lint bench bench-growth bench-e2e image image-test clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: system $(SETUP_STAMP) $(VENV)/libtorch weights $(PHOTOS) $(AZURITE) ## Install everything the build and the tests need (idempotent).

# Debian packages: OpenBLAS (BLAS and LAPACK for the fit and score numerics), DejaVu Sans (the
# font of the report's pictures), and Slurm with munge and iproute2 for the test cluster that
# scripts/slurm-cluster.sh starts in a network namespace.
DEBIAN_PACKAGES := libopenblas-dev fonts-dejavu-core slurm-wlm munge iproute2
system: ## Install the Debian packages the build needs (as root, or with sudo).
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing $$missing"; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -q $$missing; \
	fi

$(SETUP_STAMP): scripts/requirements.txt
	test -x $(PYTHON) || { python3=$$(scripts/find_python.sh $(SUPPORTED_PYTHONS)) && $$python3 -m venv $(VENV); }
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-cache-dir -r scripts/requirements.txt
	rm -f $(VENV)/.padim-setup-* && touch $@

# The wheel's torch folder under a name that does not depend on the venv's Python version.
$(VENV)/libtorch: $(SETUP_STAMP)
	ln -sfn "$$($(PYTHON) -c 'import os, torch; print(os.path.relpath(os.path.dirname(torch.__file__), "$(VENV)"))')" $@

weights: $(LITE_WEIGHTS) ## Export the pretrained EfficientNet-Lite0, -Lite1 and -Lite2 weights to safetensors.

weights/efficientnet-lite%.safetensors: $(SETUP_STAMP) scripts/export_weights.py
	$(PYTHON) scripts/export_weights.py --backbone efficientnet-lite$* --out $@

# Azurite, Microsoft's Azure Blob Storage emulator, for the az:// tests (npm, with the machine's Node.js).
$(AZURITE):
	@command -v npm >/dev/null || { echo "npm (Node.js 18 or later) is needed to install Azurite for the tests"; exit 1; }
	npm install --prefix .cache/azurite --no-audit --no-fund --silent azurite@$(AZURITE_VERSION)

# Real photographs with ImageNet subjects, shipped by Debian's darknet package (only its data is used).
$(PHOTOS):
	mkdir -p .cache/deb .cache/photos
	cd .cache/deb && { ls darknet_*.deb >/dev/null 2>&1 || apt-get download darknet || { apt-get update -qq && apt-get download darknet; }; }
	dpkg-deb -x .cache/deb/darknet_*.deb .cache/deb/root
	cp .cache/deb/root/usr/share/darknet/data/*.jpg .cache/photos/

build: $(SETUP_STAMP) $(VENV)/libtorch ## Build the padim binary (release).
	cargo build --release -p padim-cli

run: setup build ## Run every stage of a job (default: the main job): make run JOB=...
	$(PADIM) run $(JOB)

split: setup build ## Assign seeded train / calibration / test splits: make split JOB=...
	$(PADIM) split $(JOB)

extract: setup build ## Extract embeddings: make extract JOB=... SHARD=i/n
	$(PADIM) extract $(JOB) --shard $(SHARD)

fit: setup build ## Fit the models of every channel subset: make fit JOB=...
	$(PADIM) fit $(JOB)

score: setup build ## Score every image with every model: make score JOB=...
	$(PADIM) score $(JOB)

report: setup build ## Calibrate, evaluate, draw and write the HTML report: make report JOB=...
	$(PADIM) report $(JOB)

SHARDS ?= 4
MODEL_PARTS ?= 1
submit-slurm: build ## Submit a job to Slurm as chained array jobs: make submit-slurm JOB=... SHARDS=4 [MODEL_PARTS=3]
	PADIM=$(PADIM) jobs/slurm/pipeline.sh $(JOB) $(SHARDS) $(MODEL_PARTS)

test: setup ## Run every test (release build: the parity tests run real networks).
	cargo test --release --workspace

lint: ## Formatting and clippy, warnings as errors.
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets --all-features -- -D warnings

bench: setup ## Benchmarks, as ratios against PyTorch in the same run.
	cargo bench --workspace --bench extract
	cargo bench --workspace --bench stages
	cargo bench --workspace --bench distances
	cargo bench --workspace --bench scale
	cargo bench --workspace --bench predict
	cargo bench --workspace --bench sweep
	cargo bench --workspace --bench storage
	cargo bench --workspace --bench pipeline

bench-growth: setup ## Cost as the work grows: 1k/4k/13k images x 1/2/4 shards and a learning curve (tens of minutes).
	cargo bench --workspace --bench growth

# anomalib for the end-to-end comparison, in a venv of its own that reuses the project's torch
# through a .pth line (no second torch download); made by `bench-e2e` only, never by setup or CI.
ANOMALIB_VENV := .cache/bench/anomalib
PY_VERSION = $(shell $(PYTHON) -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
$(ANOMALIB_VENV)/.installed: $(SETUP_STAMP)
	test -x $(ANOMALIB_VENV)/bin/python || python3 -m venv $(ANOMALIB_VENV)
	echo "$(abspath $(VENV))/lib/$(PY_VERSION)/site-packages" > $(ANOMALIB_VENV)/lib/$(PY_VERSION)/site-packages/padim-project-torch.pth
	$(ANOMALIB_VENV)/bin/pip install --quiet --disable-pip-version-check anomalib==2.7.0
	touch $@

bench-e2e: setup $(ANOMALIB_VENV)/.installed ## padim run against the plain PyTorch recipe and anomalib, end to end.
	cargo bench --workspace --bench endtoend

IMAGE ?= padim:latest
image: build ## Build the container image with podman (Debian base via debootstrap): make image [IMAGE=REGISTRY/padim:TAG]
	PADIM=$(PADIM) scripts/image.sh build $(IMAGE)

image-test: setup build ## Run the main job and an s3:// extract shard inside the image, against a run outside: make image-test [IMAGE=...]
	PADIM=$(PADIM) scripts/image.sh test $(IMAGE)

clean: ## Remove build outputs and runs (keeps the Python environment and weights).
	cargo clean
	rm -rf runs
