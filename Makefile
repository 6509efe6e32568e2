# One-command set-up and the project's everyday commands. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install install-browser demo test test-fast lint bench app clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	# autotrain-advanced pins old exact versions that cap Gradio at 5.15: install it without
	# its pins; requirements.txt provides what its trainer code imports (see README).
	$(PY) -m pip install --no-deps autotrain-advanced==0.8.36
	# Make the overlay importable from any directory (see tools/install_overlay.py).
	$(PY) tools/install_overlay.py
	touch $@

# Debian's Chromium for the browser tests (Playwright cannot download its own browser here).
install-browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The embedded default, end to end: sample data -> DatasetDict -> ArcFace training (CPU, offline).
demo: install
	$(PY) -m data_prep sample --out data/sample
	$(PY) -m data_prep build data/sample --out herbarium-arcface/autotrain-data
	$(PY) -m autotrain.trainers.image_classification_custom --training_config config.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not browser"

bench: install
	$(PY) benchmarks/run_all.py

app: install
	$(PY) inference_app/app.py

clean:
	rm -rf outputs bench-out .pytest_cache .ruff_cache
