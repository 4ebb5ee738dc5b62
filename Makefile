# Every target bootstraps .venv when it is missing, so a fresh machine needs only `make run` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

# Python's bytecode caches on, whatever the environment says: a test run starts many Python processes (two xdist
# workers a phase, the `edm worker`, `edm serve` and `edm` processes the acceptance and browser tests spawn), and
# with PYTHONDONTWRITEBYTECODE set (CI's environment sets it) each one compiled EDM and its dependencies from source
# again (~3 s CPU of a process's start) and pytest rewrote every test module again (collection 13 s CPU -> 4 s).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# uv resolves and installs in ~5 s where pip takes ~20 s (a clean clone in CI installs every time); pip is the
	# fallback when uv cannot be had.
	($(BIN)/pip install -q uv >/dev/null 2>&1 && $(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]') \
		|| $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/edm demo

# Both cores (each xdist worker gets its own PostgreSQL database) with the 20 slowest tests at the end; then,
# alone, the few tests marked `serial` (latency bounds that another test process on the same cores would break);
# then the browser tests in processes of their own (Playwright's sync API keeps an event loop running in the
# thread that drives the browser, which the async tests of the same process could no longer start), last, so
# that no browser or server they started is still winding down beside a latency bound.
# Exit code 5 of a run means none of its tests was selected (e.g. PYTEST_ARGS=tests/unit).
TEST_WORKERS ?= 2
# The later phases collect only the files they run (collecting all ~3,900 tests costs ~10 s a phase): the files that
# mark tests `serial`, and tests/browser. PYTEST_ARGS, when given, selects for every phase instead.
SERIAL_TESTS = $(shell grep -rl "mark.serial" tests --include="*.py")

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not serial and not browser" --durations=20 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m serial $(or $(PYTEST_ARGS),$(SERIAL_TESTS)) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "browser and not serial" $(or $(PYTEST_ARGS),tests/browser) || [ $$? -eq 5 ]

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) var .pytest_cache
