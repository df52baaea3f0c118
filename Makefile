# `make test` and `make demo` set up what is missing (venv, pinned torch, the package, the
# bundled Fashion-MNIST data) and then run. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.condnet-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=
LINTED := condnet tests benchmarks experiments tools

.PHONY: setup data kernels test demo lint clean

setup: $(STAMP) data kernels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $(STAMP)

data:
	@bash scripts/install-data.sh $(FASHION_MNIST)

# CondConv's compiled CPU kernel (condnet/models/native): built once here (`condnet kernels`),
# kept under ~/.cache/condnet/kernels; without a compiler CondConv runs its portable forms.
kernels: $(STAMP)
	@$(BIN)/condnet kernels >/dev/null || true

# Lint and format first: a finding fails the test run before any test starts.
# pytest exits 5 when it collects nothing (a wrong path or -k, a broken conftest): that fails too.
test: lint
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failed" >&2; fi; \
	exit $$rc

# The paper's three networks in miniature on Fashion-MNIST; a second run reuses finished runs.
demo: setup
	$(BIN)/condnet reproduce --config configs/demo.yaml --out runs/demo

# ruff is pinned in pyproject.toml's test extra (ruff==0.17.6), so every setup lints alike.
lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
