# The two commands of the README, and the checks CI runs. Each target sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint typecheck pytest cluster smoke soak bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "boxoffice needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

serve: $(STAMP)  ## run the service (embedded Valkey unless REDIS_URL is set)
	$(BIN)/boxoffice serve

test: lint typecheck pytest  ## everything CI checks

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)  ## the suite, with coverage of service/ and ledger/ (at least 90%)
	$(BIN)/pytest --cov --cov-report=term

CLUSTER_SUITES := tests/test_api.py tests/test_races.py tests/test_model.py tests/test_ledger.py \
	tests/test_faults.py tests/test_ledger_faults.py

cluster: $(STAMP)  ## the contract, race, model, ledger and fault suites again on an embedded cluster, then the full cluster faults
	BOXOFFICE_TEST_CLUSTER=1 $(BIN)/pytest $(CLUSTER_SUITES)
	$(BIN)/pytest -m cluster_full

soak: $(STAMP)  ## the soak test for 120 s (BOXOFFICE_SOAK_SECONDS=... for another length)
	BOXOFFICE_SOAK_SECONDS=$${BOXOFFICE_SOAK_SECONDS:-120} $(BIN)/pytest -m soak -s

smoke: $(STAMP)  ## start `boxoffice serve` with no URLs, book, stop
	bash .ci/smoke $(BIN)/boxoffice

bench: $(STAMP)  ## the benchmark suite (needs wrk); see benchmarks/README.md
	$(BIN)/python -m benchmarks run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage .coverage.*
