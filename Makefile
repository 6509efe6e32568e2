# One-command set-up and the project's everyday commands. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install constraints install-browser demo test test-fast lint bench app clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints.txt pins every package at the versions tested together, so pip resolves at once
	# instead of backtracking (regenerate with `make constraints`).
	$(PY) -m pip install -c constraints.txt -r requirements.txt -r requirements-dev.txt
	# autotrain-advanced pins old exact versions that cap Gradio at 5.15: install it without
	# its pins; requirements.txt provides what its trainer code imports (see README).
	$(PY) -m pip install -c constraints.txt --no-deps autotrain-advanced==0.8.36
	# This project, editable: only the packages named in pyproject.toml become importable,
	# the trainer as autotrain.trainers.image_classification_custom (see README).
	$(PY) -m pip install -c constraints.txt --no-deps -e .
	# an environment set up before the editable install has a .pth that put the whole checkout on sys.path
	rm -f $(VENV)/lib/python*/site-packages/herbarium_arcface_overlay.pth
	touch $@

# Rewrite constraints.txt from the working environment (after a deliberate upgrade).
constraints: install
	{ echo "# pip freeze of a working environment (make constraints); make install passes it with -c"; \
	  $(PY) -m pip freeze --exclude herbarium-arcface; } > constraints.txt

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
