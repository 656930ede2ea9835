# glioseg: `make repro` runs the pipeline, `make test` runs the tests; both set up what they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup repro test test-fast ui app server server-stop bench bench-ceiling bench-pipeline gpu-kit clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# check-params first: DVC reads params.yaml before any stage runs, so only glioseg names a bad one in one line.
repro: setup
	$(BIN)/glioseg check-params params.yaml > /dev/null
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

ui: setup
	$(BIN)/glioseg ui

app: setup
	$(BIN)/glioseg serve

# A team's tracking server: PostgreSQL + MLflow on 127.0.0.1 (docs/how-to/team-setup.md).
server: setup
	$(BIN)/glioseg server start

server-stop: setup
	$(BIN)/glioseg server stop

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.run

bench-ceiling: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.ceiling --compile --json benchmarks/ceiling.json

bench-pipeline: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.pipeline

# The kit for a lent GPU machine (gpu/README.md): wheels and the real LGG slices in carry/gpu.
gpu-kit: setup
	test -d /tmp/lgg/kaggle_3m || $(BIN)/python ../shared/lgg/restore.py /tmp/lgg
	$(BIN)/python -m gpu.pack --lgg /tmp/lgg/kaggle_3m

clean-venv:
	rm -rf $(VENV)
