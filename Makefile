# FasterSeg, reproduced. On a fresh clone `make report` and `make test` are all a newcomer needs:
# both build the environment first (`make setup`, idempotent; a second run takes a moment).
#
#   make report [PROFILE=camvid-cpu] [OVERRIDES='{"teacher.epochs": 2}'] [HARDWARE_TAG=x] [FORCE=1]
#   make test | make results | make lab | make tensorboard | make lint | make data | make clean-outputs | make strip-notebooks

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= camvid-cpu
OVERRIDES ?=
HARDWARE_TAG ?=
FORCE ?=
PYTEST_ARGS ?=
LAB_ARGS ?=
PORT ?= 6006

# Exact pins, installed before the package so that `pip install -e .` (which only asks for >= ranges)
# reuses them instead of resolving another multi-GB torch build (see ../shared/docs/toolchain.md §1).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# What the report needs from the system: headless Chromium prints the PDF, poppler renders PDF pages
# for the tests, Liberation gives metric-compatible fonts.
SYSTEM_PACKAGES := chromium poppler-utils fonts-liberation
# Offline JavaScript for the HTML report (widgets, require.js, MathJax), installed into build/ and
# copied next to each report; never committed.
JS_PACKAGES := @jupyter-widgets/html-manager@1.0.15 requirejs@2.3.8 mathjax@2.7.7

# glibc's allocator pinned for JupyterLab's kernels, as the pipeline pins it for its stage kernels and the
# training commands for themselves (fasterseg_core/machine.py STABLE_MALLOC, which tests/test_runs.py
# holds this line to): steadier timings, and training steps up to ~10 % faster (benchmarks/allocator.py).
STABLE_MALLOC_ENV := MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1000000000

SETUP_STAMP := $(VENV)/.fasterseg-setup
JS_STAMP := build/.js-assets-html-manager-1.0.15-requirejs-2.3.8-mathjax-2.7.7

# Data next to the checkout (CI and the project machines have ../shared/data); otherwise the profiles
# read <repo>/data/<dataset>, which `make data` fills.
ifneq ($(wildcard ../shared/data),)
FASTERSEG_DATA ?= $(abspath ../shared/data)
endif
ifneq ($(FASTERSEG_DATA),)
export FASTERSEG_DATA
endif
ifneq ($(wildcard ../shared/data/camvid),)
CAMVID_SOURCE ?= ../shared/data/camvid
endif

.PHONY: help setup system-packages js-assets data test report results lab tensorboard lint clean-outputs strip-notebooks

help:
	@echo "make report [PROFILE=$(PROFILE)] [OVERRIDES='{\"teacher.epochs\": 2}'] [HARDWARE_TAG=...] [FORCE=1]"
	@echo "make test        run the test suite (builds .venv first)"
	@echo "make setup       .venv, system packages for the PDF, offline JS for the HTML report"
	@echo "make data        put CamVid under data/camvid (CAMVID_SOURCE=folder copies a local copy)"
	@echo "make results     the newest benchmark record per benchmark and machine (benchmarks/results/)"
	@echo "make lab         JupyterLab on notebooks/ with the project's environment"
	@echo "make tensorboard [PROFILE=...] [PORT=6006]  live curves of every stage of the profile"
	@echo "make lint        ruff"
	@echo "make clean-outputs | make strip-notebooks"

setup: $(SETUP_STAMP) system-packages js-assets

$(SETUP_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e ".[dev]"
	@touch $@

# Installs the missing packages when run as root on Debian/Ubuntu; otherwise says what to install.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v pdftoppm >/dev/null 2>&1 || missing="$$missing poppler-utils"; \
	ls -d /usr/share/fonts/truetype/liberation* >/dev/null 2>&1 || missing="$$missing fonts-liberation"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	else \
		echo "make setup: the PDF report and the browser tests need:$$missing. Install them with:"; \
		echo "    sudo apt-get install -y --no-install-recommends$$missing"; \
		echo "(until then the browser tests are skipped and 'make report' stops before the PDF)"; \
	fi

js-assets: $(JS_STAMP)

$(JS_STAMP):
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "make setup: npm not found; the HTML report will load widget/MathJax scripts from public CDNs."; \
		echo "    install npm (e.g. sudo apt-get install -y npm) and rerun 'make setup' for an offline report"; \
	else \
		mkdir -p build && cd build && npm install --no-audit --no-fund --loglevel=error $(JS_PACKAGES) \
		&& touch ../$@; \
	fi

data: $(SETUP_STAMP)
	$(PY) -m fasterseg_core data camvid --dest data/camvid $(if $(CAMVID_SOURCE),--source $(CAMVID_SOURCE))

# pytest exit code 5 means "no tests collected": not a failure for an empty selection.
test: setup
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test: no tests collected"; rc=0; fi; exit $$rc

report: setup
	@if [[ "$(PROFILE)" == camvid* && -z "$(FASTERSEG_DATA)" && ! -d data/camvid ]]; then $(MAKE) data; fi
	$(PY) -m fasterseg_core report --profile $(PROFILE) \
		$(if $(OVERRIDES),--overrides '$(OVERRIDES)') \
		$(if $(HARDWARE_TAG),--hardware-tag '$(HARDWARE_TAG)') \
		$(if $(filter 1 yes true,$(FORCE)),--force)

# The newest record per benchmark and machine; `python -m fasterseg_core results --readme README.md` rewrites the
# README's measured rows from the same records.
results: $(SETUP_STAMP)
	$(PY) -m fasterseg_core results

# The venv's own "python3" kernel: the same parameters cell and load_config call as under papermill.
# Containers and CI machines run as root, which JupyterLab refuses without --allow-root.
lab: setup
	cd notebooks && env $(STABLE_MALLOC_ENV) ../$(VENV)/bin/jupyter lab --notebook-dir=. $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

# Live curves: TensorBoard on the profile's output folder (as the config resolves it, OVERRIDES included),
# where each run folder's tensorboard/ is one run; on this machine only (127.0.0.1).
tensorboard: $(SETUP_STAMP)
	$(PY) -m fasterseg_core tensorboard --profile $(PROFILE) $(if $(OVERRIDES),--overrides '$(OVERRIDES)') \
		--host 127.0.0.1 --port $(PORT)

lint: $(SETUP_STAMP)
	$(PY) -m ruff check .

clean-outputs:
	find outputs -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +

# Notebooks are committed without outputs; executed copies live under outputs/<profile>/notebooks/.
strip-notebooks: $(SETUP_STAMP)
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/[0-9][0-9]_*.ipynb notebooks/control.ipynb
