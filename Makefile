# Two entry points for a newcomer: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use, with the install a user gets:
# `pip install .`, which compiles the request path with mypyc when a C compiler is present.
# It is done in its two steps (`pip wheel .`, then `pip install` of that wheel) so that the wheel
# is compiled once and `make lean` installs the very same one, alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INSTALLED := $(VENV)/.package
SOURCES := setup.py $(shell find src -name '*.py' -o -name '*.js' -o -name '*.css' -o -name '*.html')
# The build `pip install .` makes here: compiled when the compiler setup.py looks for is present.
EXPECT_COMPILED := $(shell command -v "$$($(PYTHON) -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')" >/dev/null 2>&1 && echo 1 || echo 0)

.PHONY: demo test test-pure test-compiled compiled lint lean bench clean

WHEELS := build/wheel
# Where a C compiler is present the wheel must be the compiled build: OMNIXAN_LB_COMPILE=1 turns a
# failed compilation into an error that shows why (pip --quiet would hide setup.py's warning and
# leave a pure Python wheel); elsewhere setup.py decides, as for `pip install .`.
COMPILE_MODE := $(if $(filter 1,$(EXPECT_COMPILED)),1,auto)
BUILD_WHEEL := rm -rf $(WHEELS) && OMNIXAN_LB_COMPILE=$(COMPILE_MODE) $(BIN)/pip wheel --quiet --no-deps -w $(WHEELS) .
WHEEL = $$(ls $(WHEELS)/omnixan_lb-*.whl)

# Everything (the [dev] extra holds [all]: the proxy, redis, metrics, httpx, aiohttp, and the
# tools); then the package alone once more, in case this version was installed already.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BUILD_WHEEL)
	$(BIN)/pip install --quiet "$(WHEEL)[dev]"
	$(BIN)/pip install --quiet --no-deps --force-reinstall "$(WHEEL)"
	touch $(STAMP) $(INSTALLED)

# The package again (not its dependencies) when its source has changed since it was installed
# (not just after $(STAMP) installed it with everything: that would compile it twice).
$(INSTALLED): $(STAMP) $(SOURCES)
	@if [ -n "$$(find $(SOURCES) -newer $(INSTALLED) 2>/dev/null | head -1)" ] || [ ! -e $(INSTALLED) ] \
			|| [ -z "$$(ls $(WHEELS)/omnixan_lb-*.whl 2>/dev/null)" ]; then \
		echo '$(BUILD_WHEEL) && $(BIN)/pip install --quiet --no-deps --force-reinstall "$(WHEEL)"'; \
		$(BUILD_WHEEL) && $(BIN)/pip install --quiet --no-deps --force-reinstall "$(WHEEL)"; \
	fi
	touch $(INSTALLED)

# `pip install omnixan-lb` without extras: the wheel .venv runs, with its declared dependencies
# alone (pydantic, librt), in a fresh venv; tests/lean_smoke.py runs the library, the extras'
# errors and `omnixan-lb serve` there (.ci/run runs this after `make test`).
LEAN := build/lean-venv
lean: $(INSTALLED)
	rm -rf $(LEAN)
	$(PYTHON) -m venv --without-pip $(LEAN)
	$(BIN)/pip --python $(LEAN)/bin/python install --quiet "$(WHEEL)"
	$(LEAN)/bin/python tests/lean_smoke.py
	@echo "site-packages: $$(du -sm $(LEAN)/lib/python*/site-packages | cut -f1) MB lean (the package and" \
		"its dependencies alone), $$(du -sm $(VENV)/lib/python*/site-packages | cut -f1) MB in .venv (everything," \
		"with the dev tools)"

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
