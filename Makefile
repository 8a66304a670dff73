# Kiln: the local stack, the tests and the linters. Every target runs in the uv workspace.
#   make up       install what is missing, start Kafka, Triton and the five services, demo account
#                 (PROMETHEUS=1: and a Prometheus on :9090 scraping them all;
#                 DATABASE=postgresql: the services on a PostgreSQL cluster of the stack's own)
#   make down     stop them (the data under .kiln/ is kept)
#   make status   what runs
#   make logs     follow the logs of the local stack
#   make test     the whole test suite (unit, integration, e2e on a stack of its own)
#   make bench    the benchmarks: a table, and bench/results/latest.json (BENCH_ARGS=--smoke ...)
#   make lint     ruff and mypy
#   make proto    regenerate the code of proto/kiln_contracts/v1/*.proto

SHELL := /bin/bash
.DEFAULT_GOAL := help

STACK := uv run python deploy/local/stack.py
STACK_DIR := $(or $(KILN_STACK_DIR),.kiln)
TEST_TIMEOUT_S ?= 2700

.PHONY: help ensure-uv sync install console-assets deploy-tools up down status logs test bench lint proto

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

ensure-uv:
	@command -v uv >/dev/null 2>&1 || { \
		echo "uv is missing: installing it with pip"; \
		python3 -m pip install --quiet uv && { command -v pyenv >/dev/null 2>&1 && pyenv rehash || true; }; \
	}

sync: ensure-uv
	uv sync

# The Debian packages of deploy/local/apt-packages.txt and the Kafka jars, when missing.
install: sync deploy-tools console-assets
	$(STACK) install

# The web console's third-party assets (htmx, uPlot; axe-core for its browser tests) from the
# npm registry, pinned by package-lock.json, copied into the gateway's static folder.
CONSOLE_ASSETS := services/gateway/console-assets
console-assets:
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing: install Node.js and npm (Debian: apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix $(CONSOLE_ASSETS) --no-audit --no-fund --ignore-scripts
	npm run --prefix $(CONSOLE_ASSETS) --silent build

# What tests/deploy runs besides kubectl and promtool (Debian's prometheus): kubeconform, and
# kustomize where kubectl is missing, built from the Go module proxy into .tools/bin.
TOOLS_BIN := $(CURDIR)/.tools/bin
KUBECONFORM_VERSION := v0.7.0
KUSTOMIZE_VERSION := v5.5.0
deploy-tools:
	@test -x $(TOOLS_BIN)/kubeconform || { command -v go >/dev/null 2>&1 || { echo "go is missing: cannot build kubeconform"; exit 1; }; \
		echo "building kubeconform $(KUBECONFORM_VERSION) into $(TOOLS_BIN)"; \
		GOBIN=$(TOOLS_BIN) go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION); }
	@command -v kubectl >/dev/null 2>&1 || test -x $(TOOLS_BIN)/kustomize || { \
		echo "building kustomize $(KUSTOMIZE_VERSION) into $(TOOLS_BIN)"; \
		GOBIN=$(TOOLS_BIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); }

# PROMETHEUS=1 also runs a Prometheus on :9090 scraping every component (deploy/local/kiln_stack/prometheus.py).
# DATABASE=postgresql|sqlite chooses where the services keep their state (later `up`s keep the choice).
up: sync
	$(STACK) up $(if $(PROMETHEUS),--prometheus) $(if $(DATABASE),--database $(DATABASE))

down: ensure-uv
	$(STACK) down

status: ensure-uv
	$(STACK) status

logs:
	tail -n 20 -F $(STACK_DIR)/logs/*.log

# pytest exits 5 when it collected no test: that is not a failure of the suite.
test: install
	timeout $(TEST_TIMEOUT_S) uv run pytest -q -p no:cacheprovider --durations=25 tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

# Each bench starts the stacks it needs in a temporary folder (next to any `make up` stack);
# docs/BENCHMARKS.md says what they measure. About 40 minutes; BENCH_ARGS="--only submit".
bench: install
	PYTHONPATH=. uv run python -m bench $(BENCH_ARGS)

lint: sync
	uv run ruff check .
	uv run mypy libs services proto bench deploy clients

proto: sync
	uv run python proto/generate.py
