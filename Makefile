# Two entry points for a newcomer: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use, with the install a user gets:
# `pip install .`, which compiles the request path with mypyc when a C compiler is present.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INSTALLED := $(VENV)/.package
SOURCES := setup.py $(shell find src -name '*.py' -o -name '*.js' -o -name '*.css' -o -name '*.html')
# The build `pip install .` makes here: compiled when the compiler setup.py looks for is present.
EXPECT_COMPILED := $(shell command -v "$$($(PYTHON) -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')" >/dev/null 2>&1 && echo 1 || echo 0)

.PHONY: demo test test-pure test-compiled compiled lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '.[dev]'
	touch $(STAMP) $(INSTALLED)

# The package again (not its dependencies) when its source has changed since it was installed
# (not just after $(STAMP) installed it with everything: that would compile it twice).
$(INSTALLED): $(STAMP) $(SOURCES)
	@if [ -n "$$(find $(SOURCES) -newer $(INSTALLED) 2>/dev/null | head -1)" ] || [ ! -e $(INSTALLED) ]; then \
		echo "$(BIN)/pip install --quiet --no-deps --force-reinstall ."; \
		$(BIN)/pip install --quiet --no-deps --force-reinstall .; \
	fi
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/omnixan-lb demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	MYPYPATH=src $(BIN)/mypy --strict examples
	PYTHONPATH=src $(BIN)/lint-imports

# The suite against the installed build, then against the pure Python source (the fallback).
test: lint $(INSTALLED)
	OMNIXAN_EXPECT_COMPILED=$(EXPECT_COMPILED) $(BIN)/pytest
	$(MAKE) test-pure

test-pure: $(STAMP)
	OMNIXAN_EXPECT_COMPILED=0 PYTHONPATH=src $(BIN)/pytest -q -p no:cacheprovider

# The compiled build in a copy of the tree (OMNIXAN_LB_COMPILE=1: mypyc), for an environment whose
# install is pure Python: the benchmarks run it then (PYTHONPATH=$(COMPILED)/src).
COMPILED := build/compiled
$(COMPILED)/.built: $(STAMP) $(SOURCES)
	rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	cp -r src setup.py pyproject.toml README.md $(COMPILED)/
	cd $(COMPILED) && OMNIXAN_LB_COMPILE=1 $(abspath $(BIN))/python setup.py -q build_ext --inplace >build.log 2>&1 \
		|| { tail -40 build.log; exit 1; }
	touch $@

compiled: $(COMPILED)/.built

# The whole suite once more, against that copy.
test-compiled: compiled
	OMNIXAN_EXPECT_COMPILED=1 PYTHONPATH=$(COMPILED)/src $(BIN)/pytest -q -p no:cacheprovider

# The whole benchmark suite (about 8 minutes on 2 cores); rewrites docs/benchmarks.md
# and docs/img/bench/. BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--skip proxy" etc.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet '.[dev,bench]'
	touch $(BENCH_STAMP) $(INSTALLED)

bench: $(BENCH_STAMP) $(INSTALLED)
	PYTHONPATH=src $(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
