# brix — thin wrapper over CMake. The two commands users rely on are
# `make run` and `make test`; both install what they need first (scripts/setup).
BUILD       ?= build
ASAN_BUILD  ?= build/asan
JOBS        ?= $(shell nproc)
PORT        ?= 8080
FUZZ_SECONDS ?= 60

.PHONY: all setup build build-asan run test fuzz soak bench format clean

all: build

setup:
	@scripts/setup

# Optimised build with debug info: build/brix (used by run and bench).
build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# ASan + UBSan build used by the test suite.
build-asan:
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DBRIX_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

# The local cluster from examples/local.yaml: the controller (API and status
# page on 127.0.0.1:8081), two simulated llama-3-8b replicas with two LoRA
# adapters, and the gateway serving the OpenAI API on 127.0.0.1:$(PORT).
# Ctrl-C stops them all.
run: setup build
	$(BUILD)/brix up -c examples/local.yaml --port $(PORT)

test: setup build-asan
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 300

# Every libFuzzer target in tests/fuzz for FUZZ_SECONDS each (clang, build/fuzz);
# new inputs go to /tmp/brix-fuzz/<target>.corpus, crashes to <target>.findings/,
# never into git.
# FUZZ_TARGETS="fuzz_yaml_objects ..." picks some. make test runs them briefly.
fuzz: setup
	tests/fuzz/run $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# The whole local cluster under mixed traffic (streams, aborts, bad input, adapter
# churn, reloads) for SOAK_SECONDS (600) with ASan+UBSan: RSS must stay flat.
soak: setup build-asan
	BRIX_BIN=$(ASAN_BUILD)/brix python3 tests/soak/soak.py

bench: setup build
	bench/run-all

format:
	@git ls-files '*.c' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD)
