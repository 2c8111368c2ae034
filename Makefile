# Two entry points for a newcomer: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-compiled compiled lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/omnixan-lb demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest
	$(MAKE) test-compiled

# The compiled build (setup.py, OMNIXAN_LB_COMPILE=1: mypyc) in a copy of the tree, so that the
# editable install in .venv stays pure Python; PYTHONPATH=$(COMPILED)/src runs it.
COMPILED := build/compiled
$(COMPILED)/.built: $(STAMP) setup.py $(shell find src -name '*.py')
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	cp -r src setup.py pyproject.toml README.md $(COMPILED)/
	cd $(COMPILED) && OMNIXAN_LB_COMPILE=1 $(abspath $(BIN))/python setup.py -q build_ext --inplace >build.log 2>&1 \
		|| { tail -40 build.log; exit 1; }
	touch $@

compiled: $(COMPILED)/.built

# The whole suite once more, against the compiled modules.
test-compiled: compiled
	OMNIXAN_EXPECT_COMPILED=1 PYTHONPATH=$(COMPILED)/src $(BIN)/pytest -q -p no:cacheprovider

# The whole benchmark suite (about 8 minutes on 2 cores); rewrites docs/benchmarks.md
# and docs/img/bench/. BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--skip proxy" etc.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) compiled
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
