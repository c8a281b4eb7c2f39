# Parcel Crop Classifier: the two commands a user needs are `make demo` and `make test`.
# Each installs what is missing first (Debian packages, then a venv), and skips what is there.

SHELL := /bin/bash
.DEFAULT_GOAL := help

SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# Extra pip arguments, e.g. PIP_ARGS="--index-url <your CPU torch wheel index>" elsewhere.
PIP_ARGS ?=
APT_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-geopandas xvfb proj-data python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEPS_STAMP := $(VENV)/.deps-installed
DIST := dist
PLUGIN_ZIP := $(DIST)/parcel_crop_classifier.zip

export QT_QPA_PLATFORM ?= offscreen
export PROJ_DATA ?= /usr/share/proj
export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)

.PHONY: help apt deps test test-core test-plugin lint format package demo bench models clean

help:
	@echo "make demo     install what is missing, then run the plugin headless on the bundled sample"
	@echo "make test     install what is missing, then run lint and every test"
	@echo "make package  build $(PLUGIN_ZIP) for QGIS's 'Install from ZIP'"
	@echo "make models   retrain the bundled models (resources/models) from the real sample, on CPU"
	@echo "make lint | format | bench | clean"

# Debian packages: ask dpkg which are missing (fast), install only those.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

$(PY): | apt
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)

# Pins numpy and the GDAL stack to the system's so pip can never replace them.
$(VENV)/constraints.txt: scripts/write_constraints.py | $(PY)
	$(SYSTEM_PYTHON) scripts/write_constraints.py $@

$(DEPS_STAMP): requirements.txt requirements-dev.txt $(VENV)/constraints.txt | $(PY)
	$(PY) -m pip install --quiet $(PIP_ARGS) -c $(VENV)/constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) scripts/check_env.py
	touch $@

deps: apt $(DEPS_STAMP)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Core tests run without the QGIS pytest plugin (no QGIS start-up, proves the core is QGIS-free);
# plugin tests run headless QGIS through pytest-qgis.
test-core: deps
	$(PY) -m pytest -p no:qgis tests/core

test-plugin: deps
	$(PY) -m pytest tests/plugin

test: lint test-core test-plugin

package: deps
	$(PY) scripts/plugin_zip.py --out $(PLUGIN_ZIP)

demo: package
	$(PY) scripts/demo.py --zip $(PLUGIN_ZIP)

# Retrain every bundled model from scratch on the real Flanders sample: sub-parcels, extraction,
# 5-fold CV and the shipped model per architecture (scripts/build_models.py). Deterministic: one
# CPU thread per model, MODEL_JOBS models at once (the results do not depend on it). On demand
# only, never part of `make test`; about 40 minutes on 2 cores.
MODEL_JOBS ?= 2
models: deps
	nice -n 5 $(PY) scripts/build_models.py --jobs $(MODEL_JOBS)

bench: deps
	@if ls benchmarks/bench_*.py >/dev/null 2>&1; then \
	  for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done; \
	else echo "no benchmarks yet"; fi

clean:
	rm -rf $(DIST) build .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
