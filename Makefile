# vst: the two commands a new user needs are `make build` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
BUILD_DIR ?= build
TARGET ?= cortex-m4

.PHONY: install test test-fast build bench clean

install:            ## Python venv + Debian ARM toolchain and QEMU (idempotent)
	@bash scripts/install.sh

test: install       ## the whole test suite (CI runs exactly this)
	$(BIN)/python -m pytest -q

test-fast: install  ## skip tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

build: install      ## the default build: built-in MNIST on cortex-m4
	$(BIN)/vst build --target $(TARGET) --out $(BUILD_DIR)

bench: install      ## benchmarks (JSON + Markdown in benchmarks/results)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(BUILD_DIR) .pytest_cache
